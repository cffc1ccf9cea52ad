import assert from "node:assert/strict";
import {
  type ChangeLine,
  ChangeLineParser,
  CsvChunkParser,
  type CsvField,
  csvFields,
  parseCsv,
} from "../../src/replay/csv_reader.ts";
import { CsvRowEncoder } from "../../src/write/csv_row_encoder.ts";
import { parseLsn } from "../../src/lsn.ts";

Deno.test("CsvChunkParser() gives the rows of parseCsv() at every split point", () => {
  const text = 'h1,h2,h3\n1,"a,b",\n2,"",""""\n3,"multi\nline\r\nvalue","x"\r\n4,,"end"';
  const whole = parseCsv(text);
  for (let cut = 0; cut <= text.length; cut++) {
    for (const step of [1, 3, text.length]) {
      const p = new CsvChunkParser();
      const rows = [...p.push(text.slice(0, cut))];
      for (let at = cut; at < text.length; at += step) {
        rows.push(...p.push(text.slice(at, at + step)));
      }
      rows.push(...p.end());
      assert.deepEqual(rows, whole, `cut ${cut} step ${step}`);
    }
  }
  // NULL (unquoted empty) and the empty string ("") stay apart.
  assert.deepEqual(whole[2], ["2", "", '"']);
  assert.deepEqual(whole[1], ["1", "a,b", null]);
});

Deno.test("CsvChunkParser() rejects a stray character after a closing quote", () => {
  const p = new CsvChunkParser();
  assert.throws(() => p.push('"a"b,c\n'), SyntaxError);
});

/** Random rows of fields: NULL, "", and values with commas, quotes, CR, LF and non-ASCII. */
function randomRows(seed: number, rows: number, width: number): CsvField[][] {
  let x = seed;
  const rnd = (k: number) => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return (x >>> 8) % k;
  };
  const pieces = ["a", "1", ",", '"', "\n", "\r", "\r\n", "ü", "😀", " ", "\\.", '{"k": 1}'];
  const out: CsvField[][] = [];
  for (let r = 0; r < rows; r++) {
    const row: CsvField[] = [];
    for (let c = 0; c < width; c++) {
      const kind = rnd(6);
      if (kind === 0) row.push(null);
      else if (kind === 1) row.push("");
      else {
        let v = "";
        for (let k = 1 + rnd(6); k > 0; k--) v += pieces[rnd(pieces.length)];
        row.push(v);
      }
    }
    out.push(row);
  }
  return out;
}

/** Change rows (7 metadata columns, then `width` values) as a file's bytes, header first. */
function changeFile(
  values: CsvField[][],
  crlf = false,
): { bytes: Uint8Array; rows: CsvField[][] } {
  const rows = values.map((v, i) => [
    ["I", "U", "D", "T"][i % 4],
    `${(i >> 3).toString(16).toUpperCase()}/${(i * 77).toString(16).toUpperCase()}`,
    String(i),
    "2026-01-01T00:00:00.000000Z",
    String(700 + i),
    i % 5 === 1 ? '["b","c"]' : null,
    i % 7 === 2 ? '{"a":"x,"y""}' : null,
    ...v,
  ]);
  const csv = new CsvRowEncoder();
  for (const h of ["_cdc_op", "_cdc_lsn", "_cdc_seq", "_cdc_commit_ts", "_cdc_xid", "a"]) {
    csv.fieldText(h);
  }
  csv.endRow();
  for (const row of rows) {
    for (const v of row) csv.fieldText(v);
    csv.endRow();
  }
  let bytes = csv.takeChunk();
  if (crlf) {
    // The encoder ends rows with LF: end every row with CRLF instead.
    const text = new TextDecoder().decode(bytes);
    const whole = parseCsv(text);
    let out = "";
    for (const row of whole) {
      const enc = new CsvRowEncoder();
      for (const v of row) enc.fieldText(v);
      enc.endRow();
      const one = new TextDecoder().decode(enc.takeChunk());
      out += one.slice(0, -1) + "\r\n";
    }
    bytes = new TextEncoder().encode(out);
  }
  return { bytes, rows };
}

function parseAll(bytes: Uint8Array, step: number): ChangeLine[] {
  const p = new ChangeLineParser(7);
  const lines: ChangeLine[] = [];
  for (let at = 0; at < bytes.length; at += step) {
    lines.push(...p.push(bytes.slice(at, at + step)));
  }
  lines.push(...p.end());
  return lines;
}

Deno.test("ChangeLineParser() splits change rows into metadata and the values' CSV bytes, at every split point", () => {
  for (const crlf of [false, true]) {
    const { bytes, rows } = changeFile(randomRows(7, 40, 5), crlf);
    for (const step of [1, 2, 7, 64, bytes.length]) {
      const lines = parseAll(bytes, step);
      const what = `step ${step}${crlf ? " crlf" : ""}`;
      assert.equal(lines.length, rows.length, what);
      lines.forEach((l, i) => {
        const want = rows[i];
        assert.equal(l.op, want[0], `${what} row ${i} op`);
        assert.equal(l.lsn, parseLsn(want[1]!), `${what} row ${i} lsn`);
        assert.equal(l.seq, Number(want[2]), `${what} row ${i} seq`);
        assert.equal(l.unchanged, want[5], `${what} row ${i} unchanged`);
        assert.equal(l.oldKey, want[6], `${what} row ${i} old key`);
        assert.equal(l.metaCount, 7);
        assert.deepEqual(l.meta(), want.slice(0, 7), `${what} row ${i} meta`);
        assert.deepEqual(csvFields(l.text(), 5), want.slice(7), `${what} row ${i} values`);
        assert.deepEqual(l.fields(2), want.slice(7, 9), `${what} row ${i} first values`);
      });
    }
  }
  // The values' bytes are the file's: written again after their metadata, they give the file.
  const { bytes, rows } = changeFile(randomRows(11, 30, 4));
  const again = new CsvRowEncoder();
  for (const h of ["_cdc_op", "_cdc_lsn", "_cdc_seq", "_cdc_commit_ts", "_cdc_xid", "a"]) {
    again.fieldText(h);
  }
  again.endRow();
  parseAll(bytes, 100).forEach((l, i) => {
    for (const v of rows[i].slice(0, 7)) again.fieldText(v);
    again.encodedFields(l.bytes.subarray(l.valuesStart, l.valuesEnd));
    again.endRow();
  });
  assert.deepEqual(again.takeChunk(), bytes);
});

Deno.test("ChangeLineParser() rejects broken rows with a SyntaxError that names the offset", () => {
  const enc = (text: string) => new TextEncoder().encode(text);
  const head = "_cdc_op,_cdc_lsn,_cdc_seq\n";
  const p = new ChangeLineParser(7);
  p.push(enc(head + 'I,0/1,1,,,,,"open\n'));
  assert.throws(() => p.end(), /unclosed quote/);
  const bad = (row: string, pattern: RegExp) =>
    assert.throws(() => {
      const q = new ChangeLineParser(7);
      q.push(enc(head + row));
      q.end();
    }, (e: Error) => e instanceof SyntaxError && pattern.test(e.message));
  bad('I,"0/1"x,1\n', /unexpected character after quote at offset 33/);
  bad("I,zz,1,,,,,5\n", /Cannot parse _cdc_lsn "zz" at offset 28/);
  bad("I,0/1,1x,,,,,5\n", /_cdc_seq at offset 32: expected an integer/);
  bad("I,0/1\n", /change row at offset 26: expected _cdc_op, _cdc_lsn and _cdc_seq/);
  // A row without a line break at the very end is still a row.
  const q = new ChangeLineParser(7);
  const lines = [...q.push(enc(head + "D,0/2,3,,,,,9")), ...q.end()];
  assert.deepEqual(lines.map((l) => [l.op, l.seq, l.text()]), [["D", 3, "9"]]);
});

Deno.test("csvFields() decodes the first fields of a row's text, NULL beyond its end", () => {
  assert.deepEqual(csvFields('1,"a,""b""",,""', 5), ["1", 'a,"b"', null, "", null]);
  assert.deepEqual(csvFields("", 1), [null]);
  assert.deepEqual(csvFields('""', 1), [""]);
  assert.deepEqual(csvFields("7,x", 1), ["7"]);
});

Deno.test("ChangeLineParser() reads a value longer than many pieces", () => {
  const big = 'a"b,\n'.repeat(20_000);
  const { bytes, rows } = changeFile([["x", big, null], ["y", "", "z"]]);
  for (const step of [4096, 65_536]) {
    assert.deepEqual(
      parseAll(bytes, step).map((l) => [...l.meta(), ...csvFields(l.text(), 3)]),
      rows,
      `step ${step}`,
    );
  }
});
