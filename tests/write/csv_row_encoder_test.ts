import assert from "node:assert/strict";
import { CsvRowEncoder, encodeCsvHeader } from "../../src/write/csv_row_encoder.ts";

const utf8 = new TextEncoder();
const text = new TextDecoder();

/** Encodes rows of (string | null) through `field` (bytes) and returns the CSV text. */
function encodeRows(rows: (string | null)[][], via: "field" | "fieldText" = "field"): string {
  const csv = new CsvRowEncoder({ initialCapacity: 64 });
  for (const row of rows) {
    for (const value of row) {
      if (via === "field") csv.field(value === null ? null : utf8.encode(value));
      else csv.fieldText(value);
    }
    csv.endRow();
  }
  return text.decode(csv.takeChunk());
}

/**
 * A tiny reference parser for PostgreSQL's CSV: quoted fields may hold
 * anything (`""` is a quote), an unquoted empty field is NULL.
 */
function parseCsv(input: string): (string | null)[][] {
  const rows: (string | null)[][] = [];
  let row: (string | null)[] = [];
  let i = 0;
  while (i < input.length) {
    let value: string | null;
    if (input[i] === '"') {
      let v = "";
      i++;
      while (true) {
        if (i >= input.length) throw new SyntaxError("unterminated quoted field");
        if (input[i] === '"') {
          if (input[i + 1] === '"') {
            v += '"';
            i += 2;
          } else {
            i++;
            break;
          }
        } else {
          v += input[i++];
        }
      }
      value = v;
    } else {
      let v = "";
      while (i < input.length && input[i] !== "," && input[i] !== "\n") {
        if (input[i] === '"' || input[i] === "\r") throw new SyntaxError(`bare ${input[i]}`);
        v += input[i++];
      }
      value = v === "" ? null : v;
    }
    row.push(value);
    if (input[i] === ",") {
      i++;
    } else if (input[i] === "\n") {
      rows.push(row);
      row = [];
      i++;
    } else {
      throw new SyntaxError(`unexpected ${JSON.stringify(input[i])} at ${i}`);
    }
  }
  if (row.length > 0) throw new SyntaxError("last row not terminated");
  return rows;
}

const TRICKY: (string | null)[] = [
  "plain",
  "",
  null,
  "a,b",
  'say "hi"',
  '"',
  '""',
  "line1\nline2",
  "cr\rhere",
  "crlf\r\n",
  "\n",
  ",",
  " leading and trailing ",
  "\\N",
  "\\.",
  "tab\there",
  "ünïcödé ✓ 😀 日本語",
  '😀,"😀"\n',
  "NULL",
  "0/16B3748",
  '{"a":[1,2]}',
  "x".repeat(100_000),
  'q"'.repeat(10_000),
];

Deno.test("CsvRowEncoder writes a plain value unquoted", () => {
  assert.equal(
    encodeRows([["abc", "123", "2026-11-24 17:05:00.123456+00"]]),
    "abc,123,2026-11-24 17:05:00.123456+00\n",
  );
});

Deno.test("CsvRowEncoder writes NULL as an unquoted empty field", () => {
  assert.equal(encodeRows([[null, "a", null]]), ",a,\n");
});

Deno.test("CsvRowEncoder quotes the empty string", () => {
  assert.equal(encodeRows([["", null, ""]]), '"",,""\n');
});

Deno.test("CsvRowEncoder quotes a value that contains a comma", () => {
  assert.equal(encodeRows([["a,b", "c"]]), '"a,b",c\n');
});

Deno.test("CsvRowEncoder quotes a value that contains a quote and doubles the quote", () => {
  assert.equal(encodeRows([['say "hi"', '"']]), '"say ""hi""",""""\n');
});

Deno.test("CsvRowEncoder quotes a value that contains a newline", () => {
  assert.equal(encodeRows([["a\nb"]]), '"a\nb"\n');
});

Deno.test("CsvRowEncoder quotes a value that contains a carriage return", () => {
  assert.equal(encodeRows([["a\rb", "x"]]), '"a\rb",x\n');
});

Deno.test("CsvRowEncoder leaves spaces, tabs, backslashes and \\N unquoted like COPY", () => {
  assert.equal(encodeRows([[" a ", "\t", "\\N", "c:\\x"]]), " a ,\t,\\N,c:\\x\n");
});

Deno.test("CsvRowEncoder quotes \\. only when the row has a single column", () => {
  assert.equal(encodeRows([["\\."]]), '"\\."\n');
  assert.equal(encodeRows([["\\."]], "fieldText"), '"\\."\n');
  assert.equal(encodeRows([["\\.", "x"]]), "\\.,x\n");
  assert.equal(encodeRows([["x", "\\."]]), "x,\\.\n");
  assert.equal(encodeRows([["\\.x"]]), "\\.x\n");
  assert.equal(encodeRows([["\\."], ["a", "\\."], ["\\."]]), '"\\."\na,\\.\n"\\."\n');
});

Deno.test("CsvRowEncoder copies UTF-8 bytes unchanged", () => {
  const value = "ünïcödé ✓ 😀";
  const csv = new CsvRowEncoder();
  csv.field(utf8.encode(value));
  csv.endRow();
  assert.deepEqual(csv.takeChunk(), utf8.encode(value + "\n"));
});

Deno.test("CsvRowEncoder round-trips tricky values through a reference parser", () => {
  const rows = [TRICKY, [...TRICKY].reverse(), ...TRICKY.map((v) => [v]), [null], [""]];
  for (const via of ["field", "fieldText"] as const) {
    assert.deepEqual(parseCsv(encodeRows(rows, via)), rows);
  }
});

Deno.test("CsvRowEncoder field and fieldText produce identical bytes", () => {
  const rows = [TRICKY, ["a", "\\.", "", null]];
  assert.equal(encodeRows(rows, "field"), encodeRows(rows, "fieldText"));
});

Deno.test("CsvRowEncoder round-trips random values", () => {
  const alphabet = ["a", "Z", "0", ",", '"', "\n", "\r", " ", "\\", ".", "é", "😀", "\t"];
  let seed = 7;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const rows: (string | null)[][] = [];
  for (let r = 0; r < 500; r++) {
    const row: (string | null)[] = [];
    const width = 1 + rand(5);
    for (let c = 0; c < width; c++) {
      if (rand(8) === 0) {
        row.push(null);
        continue;
      }
      let v = "";
      const len = rand(12);
      for (let k = 0; k < len; k++) v += alphabet[rand(alphabet.length)];
      row.push(v);
    }
    rows.push(row);
  }
  assert.deepEqual(parseCsv(encodeRows(rows)), rows);
});

Deno.test("CsvRowEncoder.takeChunk returns complete rows and keeps an unfinished row", () => {
  const csv = new CsvRowEncoder();
  csv.fieldText("a");
  csv.endRow();
  csv.fieldText("\\.");
  assert.equal(csv.byteLength, 4);
  assert.equal(text.decode(csv.takeChunk()), "a\n");
  assert.equal(csv.byteLength, 2);
  csv.endRow();
  assert.equal(text.decode(csv.takeChunk()), '"\\."\n');
  assert.equal(csv.byteLength, 0);
  assert.equal(csv.takeChunk().length, 0);
  assert.equal(csv.rowCount, 2);
});

Deno.test("CsvRowEncoder.takeChunk returns a copy the encoder no longer touches", () => {
  const csv = new CsvRowEncoder({ initialCapacity: 64 });
  csv.fieldText("first");
  csv.endRow();
  const chunk = csv.takeChunk();
  csv.fieldText("second");
  csv.endRow();
  assert.equal(text.decode(chunk), "first\n");
  assert.equal(text.decode(csv.takeChunk()), "second\n");
});

Deno.test("CsvRowEncoder grows for large values and drops an oversized buffer after takeChunk", () => {
  const csv = new CsvRowEncoder({ initialCapacity: 64, maxRetainedCapacity: 1024 });
  const big = new Uint8Array(1 << 20).fill(0x61);
  big[500_000] = 0x22; // one quote in the middle
  csv.field(big);
  csv.fieldText("tail");
  csv.endRow();
  const out = text.decode(csv.takeChunk());
  assert.equal(out.length, (1 << 20) + 1 + 2 + ",tail\n".length);
  assert.deepEqual(parseCsv(out), [[text.decode(big), "tail"]]);
  // Still usable afterwards.
  csv.fieldText("x");
  csv.endRow();
  assert.equal(text.decode(csv.takeChunk()), "x\n");
});

Deno.test("CsvRowEncoder output equals the concatenation of its chunks", () => {
  const whole = new CsvRowEncoder();
  const chunked = new CsvRowEncoder({ initialCapacity: 64 });
  const parts: Uint8Array[] = [];
  for (let i = 0; i < 1000; i++) {
    for (const enc of [whole, chunked]) {
      enc.fieldText(String(i));
      enc.field(utf8.encode(TRICKY[i % TRICKY.length]?.slice(0, 50) ?? ""));
      enc.endRow();
    }
    if (i % 7 === 0) parts.push(chunked.takeChunk());
  }
  parts.push(chunked.takeChunk());
  const joined = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    joined.set(p, at);
    at += p.length;
  }
  assert.deepEqual(joined, whole.takeChunk());
});

Deno.test("encodeCsvHeader quotes column names like COPY ... HEADER", () => {
  assert.equal(
    text.decode(encodeCsvHeader(["_cdc_op", "id", "a,b", 'q"t', "new\nline", "ü"])),
    '_cdc_op,id,"a,b","q""t","new\nline",ü\n',
  );
  assert.equal(text.decode(encodeCsvHeader(["\\."])), '"\\."\n');
});
