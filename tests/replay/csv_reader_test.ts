import assert from "node:assert/strict";
import {
  ChangeLineParser,
  CsvChunkParser,
  type CsvField,
  csvFields,
  parseCsv,
} from "../../src/replay/csv_reader.ts";
import { CsvRowEncoder } from "../../src/write/csv_row_encoder.ts";

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

Deno.test("ChangeLineParser() splits rows into metadata and the values' CSV text, at every split point", () => {
  const rows = randomRows(7, 40, 5);
  // Rows without values (a table with no columns) and a CRLF line end too.
  rows.push(["I", "x"]);
  const csv = new CsvRowEncoder();
  for (const row of rows) {
    for (const v of row) csv.fieldText(v);
    csv.endRow();
  }
  const text = new TextDecoder().decode(csv.takeChunk()) + 'U,"q""",a,"b\r\nc"\r\n1,2,3,4,5';
  const whole = parseCsv(text);
  const check = (lines: { meta: CsvField[]; values: string }[], what: string) => {
    assert.equal(lines.length, whole.length, what);
    lines.forEach((l, i) => {
      const want = whole[i];
      assert.deepEqual(l.meta, want.slice(0, 2), `${what} row ${i} meta`);
      assert.deepEqual(
        want.length > 2 ? csvFields(l.values, want.length - 2) : [],
        want.slice(2),
        `${what} row ${i} values`,
      );
      if (want.length === 2) assert.equal(l.values, "", `${what} row ${i}`);
    });
  };
  for (const step of [1, 2, 7, 64, text.length]) {
    const p = new ChangeLineParser(2);
    const lines = [];
    for (let at = 0; at < text.length; at += step) lines.push(...p.push(text.slice(at, at + step)));
    lines.push(...p.end());
    check(lines, `step ${step}`);
  }
  // The values' text is the file's: encoded again, it gives the same bytes.
  const p = new ChangeLineParser(2);
  const lines = [...p.push(text), ...p.end()];
  const again = new CsvRowEncoder();
  for (const l of lines.slice(0, rows.length - 1)) {
    for (const v of l.meta) again.fieldText(v);
    again.encodedFields(l.values);
    again.endRow();
  }
  const original = new CsvRowEncoder();
  for (const row of rows.slice(0, -1)) {
    for (const v of row) original.fieldText(v);
    original.endRow();
  }
  assert.deepEqual(again.takeChunk(), original.takeChunk());
});

Deno.test("ChangeLineParser() rejects an unclosed quote at the end, and a stray character after a quote", () => {
  const p = new ChangeLineParser(1);
  p.push('I,1,"open\n');
  assert.throws(() => p.end(), SyntaxError);
  assert.throws(() => new ChangeLineParser(1).push('"a"b,c\n'), SyntaxError);
  assert.throws(() => new ChangeLineParser(1).push('I,"a"b,c\n'), SyntaxError);
});

Deno.test("csvFields() decodes the first fields of a row's text, NULL beyond its end", () => {
  assert.deepEqual(csvFields('1,"a,""b""",,""', 5), ["1", 'a,"b"', null, "", null]);
  assert.deepEqual(csvFields("", 1), [null]);
  assert.deepEqual(csvFields('""', 1), [""]);
  assert.deepEqual(csvFields("7,x", 1), ["7"]);
});

Deno.test("ChangeLineParser() reads a value longer than many pieces, and rows held back until the end", () => {
  const big = 'a"b,\n'.repeat(20_000);
  const csv = new CsvRowEncoder();
  const rows = [["U", "0/1", "x", big, null], ["I", "0/2", "y", "", "z"]];
  for (const row of rows) {
    for (const v of row) csv.fieldText(v);
    csv.endRow();
  }
  const text = new TextDecoder().decode(csv.takeChunk());
  for (const step of [4096, 65_536]) {
    const p = new ChangeLineParser(2);
    const lines = [];
    for (let at = 0; at < text.length; at += step) lines.push(...p.push(text.slice(at, at + step)));
    lines.push(...p.end());
    assert.deepEqual(
      lines.map((l) => [...l.meta, ...csvFields(l.values, 3)]),
      rows,
      `step ${step}`,
    );
  }
});
