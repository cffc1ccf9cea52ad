/**
 * BaseRowFilter and TouchedKeys: the full_reload filter of a rebuild must
 * pass every row whose key the changes did not touch byte for byte, and
 * drop exactly the touched ones, however the bytes are split into chunks.
 */

import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { parseCsv } from "../../src/replay/csv_reader.ts";
import type { TableShape } from "../../src/replay/folder_schema.ts";
import { BaseRowFilter } from "../../src/materialize/base_row_filter.ts";
import { TouchedKeys } from "../../src/materialize/touched_keys.ts";
import { CsvRowEncoder, encodeCsvHeader } from "../../src/write/csv_row_encoder.ts";
import { prng } from "../harness/prng.ts";

function shape(keyTypes: [string, number][], width: number): TableShape {
  const columns = Array.from({ length: width }, (_v, i) => {
    const key = keyTypes.find(([, at]) => at === i);
    return { name: `c${i}`, type: key ? key[0] : "text", attnum: i + 1, isKey: Boolean(key) };
  });
  return { columns, keyed: true, primaryKey: [] };
}

function encode(rows: (string | null)[][], header: string[]): Uint8Array {
  const csv = new CsvRowEncoder();
  const parts = [encodeCsvHeader(header)];
  for (const r of rows) {
    for (const v of r) csv.fieldText(v);
    csv.endRow();
  }
  parts.push(csv.takeChunk());
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

async function filtered(
  bytes: Uint8Array,
  cuts: number[],
  keyCols: number[],
  keys: TouchedKeys,
): Promise<{ out: Uint8Array; filter: BaseRowFilter }> {
  const chunks: Uint8Array[] = [];
  let from = 0;
  for (const c of [...cuts, bytes.length]) {
    if (c > from) chunks.push(bytes.slice(from, c));
    from = c;
  }
  const filter = new BaseRowFilter(keyCols, keys);
  const parts: Uint8Array[] = [];
  for await (const p of Readable.from(chunks).pipe(filter)) parts.push(p as Uint8Array);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return { out, filter };
}

const AWKWARD = [
  "",
  "plain",
  'quote " inside',
  "comma, inside",
  "line\nbreak",
  "cr\rinside",
  "crlf\r\nx",
  '""',
  '"',
  "\\.",
  "ünïcödé ✓",
];

Deno.test("BaseRowFilter() drops touched keys and passes the other rows byte-exact, at any chunking", async () => {
  const rng = prng(7);
  // Key columns in the middle and at the end, one of them text that needs quoting.
  const s = shape([["text", 1], ["integer", 3]], 5);
  const keyCols = [1, 3];
  const rows: (string | null)[][] = [];
  for (let i = 0; i < 300; i++) {
    const pick = () => AWKWARD[Math.floor(rng() * AWKWARD.length)];
    rows.push([
      rng() < 0.2 ? null : pick(),
      `${pick()}#${i}`,
      rng() < 0.1 ? "x".repeat(5000) : pick(),
      String(i - 150),
      rng() < 0.3 ? null : pick(),
    ]);
  }
  const keys = new TouchedKeys(s);
  const kept: (string | null)[][] = [];
  for (const r of rows) {
    if (rng() < 0.4) keys.add([r[1], r[3]]);
    else kept.push(r);
  }
  const header = s.columns.map((c) => c.name);
  const bytes = encode(rows, header);
  const expected = encode(kept, header);
  const cutSets: number[][] = [
    [],
    Array.from({ length: 200 }, () => Math.floor(rng() * bytes.length)).sort((a, b) => a - b),
    // Every byte a chunk of its own for the first 3000 bytes.
    Array.from({ length: 3000 }, (_v, i) => i + 1),
  ];
  for (const cuts of cutSets) {
    const { out, filter } = await filtered(bytes, cuts, keyCols, keys);
    assert.deepEqual(out, expected, `cuts: ${cuts.length}`);
    assert.equal(filter.rowsRead, rows.length);
    assert.equal(filter.rowsKept, kept.length);
  }
});

Deno.test("BaseRowFilter() passes a value of many MB spanning many chunks, and a last row without a line break", async () => {
  const s = shape([["bigint", 0]], 2);
  const big = 'a,"\n'.repeat(1 << 20); // 4 MiB of characters that need quoting
  const rows = [["1", big], ["2", "small"], ["3", big]];
  const keys = new TouchedKeys(s);
  keys.add(["2"]);
  const bytes = encode(rows, ["c0", "c1"]);
  const cuts = Array.from({ length: Math.floor(bytes.length / 65536) }, (_v, i) => (i + 1) * 65536);
  const { out } = await filtered(bytes.subarray(0, bytes.length - 1), cuts, [0], keys);
  const got = parseCsv(new TextDecoder().decode(out));
  assert.deepEqual(got, [["c0", "c1"], ["1", big], ["3", big]]);
});

Deno.test("BaseRowFilter() rejects an unclosed quote at the end", async () => {
  const s = shape([["integer", 0]], 2);
  const bytes = new TextEncoder().encode('c0,c1\n1,"open\n');
  await assert.rejects(
    () => filtered(bytes, [], [0], new TouchedKeys(s)),
    SyntaxError,
  );
});

Deno.test("TouchedKeys() tells integer keys apart exactly and counts its memory", () => {
  const ints = new TouchedKeys(shape([["bigint", 0]], 2));
  for (let i = 0; i < 200_000; i++) ints.add([String(i * 3)]);
  assert.equal(ints.size, 200_000);
  assert.ok(ints.has(["0"]) && ints.has(["599997"]) && !ints.has(["599998"]));
  // Beyond 2^53 a double would merge neighbours: such keys are kept as text.
  ints.add(["9007199254740993"]);
  assert.ok(ints.has(["9007199254740993"]));
  assert.ok(!ints.has(["9007199254740992"]));
  assert.ok(ints.bytes >= 200_000 * 8 && ints.bytes < 200_000 * 64);
  const texts = new TouchedKeys(shape([["text", 0]], 2));
  texts.add(["7"]);
  assert.ok(texts.has(["7"]) && !texts.has(["07"]) && !texts.has([" 7"]));
  const pair = new TouchedKeys(shape([["integer", 0], ["text", 1]], 3));
  pair.add(["1", "a,b"]);
  assert.ok(pair.has(["1", "a,b"]) && !pair.has(["1", "a"]) && !pair.has(["1,a", "b"]));
  ints.clear();
  assert.equal(ints.size, 0);
  assert.equal(ints.bytes, 0);
  assert.ok(!ints.has(["3"]));
});
