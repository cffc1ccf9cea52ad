import assert from "node:assert/strict";
import { basename, dirname, join, normalize } from "node:path";
import {
  batchTimestamp,
  MAX_TABLE_DIR_BYTES,
  parseBatchTimestamp,
  parseTableDirName,
  tableDirName,
} from "../../src/write/table_dir.ts";

const ROOT = "/srv/cdc/data";

/** The name is safe: joined to the root it is a direct child, whatever it contains. */
function assertSafe(name: string): void {
  const joined = normalize(join(ROOT, name));
  assert.equal(dirname(joined), ROOT, name);
  assert.equal(basename(joined), name, name);
  assert.ok(!name.startsWith("."), name);
  assert.ok(!name.includes("/") && !name.includes("\\") && !name.includes("\0"), name);
  assert.ok(new TextEncoder().encode(name).length <= MAX_TABLE_DIR_BYTES, name);
}

const TRICKY: [string, string][] = [
  ["public", "orders"],
  ["public", "order items"],
  ["public", 'we"ird'],
  ["public", "a,b"],
  ["public", "a.b"],
  ["public.a", "b"],
  ["public", "a/b"],
  ["..", ".."],
  [".", "."],
  ["public", ".."],
  ["public", "%41"],
  ["public", "A"],
  ["public", "100%"],
  ["public", "ünïcödé"],
  ["public", "日本語"],
  ["public", "😀"],
  ["public", "~"],
  ["public", "a~b"],
  ["public", "-"],
  ["public", "\\"],
  ["public", "new\nline"],
  ["public", "t".repeat(63)],
  ["s".repeat(63), "t".repeat(63)],
  ["ü".repeat(31), "é".repeat(31)],
  ["public", "ü".repeat(31) + "x"],
  ["s".repeat(63), "ü".repeat(31)],
  ["s".repeat(63), "ü".repeat(30) + "x"],
];

Deno.test("tableDirName keeps plain names readable", () => {
  assert.equal(tableDirName("public", "orders"), "public.orders");
  assert.equal(tableDirName("Sales_2026", "line-items"), "Sales_2026.line-items");
});

Deno.test("tableDirName percent-encodes every other byte in upper-case hex", () => {
  assert.equal(tableDirName("my schema", "a.b"), "my%20schema.a%2Eb");
  assert.equal(tableDirName("public", "100%"), "public.100%25");
  assert.equal(tableDirName("..", ".."), "%2E%2E.%2E%2E");
  assert.equal(tableDirName("public", "a/b"), "public.a%2Fb");
  assert.equal(tableDirName("public", "ü"), "public.%C3%BC");
  assert.equal(tableDirName("public", 'q"t,x'), "public.q%22t%2Cx");
});

Deno.test("tableDirName keeps 63-byte ASCII names unhashed", () => {
  const name = tableDirName("s".repeat(63), "t".repeat(63));
  assert.equal(name, "s".repeat(63) + "." + "t".repeat(63));
  assert.deepEqual(parseTableDirName(name), { schema: "s".repeat(63), table: "t".repeat(63) });
});

Deno.test("tableDirName maps tricky names to distinct names inside the data dir", () => {
  const names = TRICKY.map(([s, t]) => tableDirName(s, t));
  names.forEach(assertSafe);
  assert.equal(new Set(names).size, names.length);
});

Deno.test("tableDirName shortens long names to a prefix, ~ and 32 hex digits", () => {
  const schema = "ü".repeat(31);
  const table = "é".repeat(31);
  const name = tableDirName(schema, table);
  assert.match(name, /^[A-Za-z0-9_.%-]+~[0-9a-f]{32}$/);
  assert.ok(name.length <= MAX_TABLE_DIR_BYTES);
  assert.ok(name.startsWith("%C3%BC%C3%BC"));
  // The prefix never ends in a cut escape.
  assert.match(name.split("~")[0], /(?:^|[^%])(?:%[0-9A-F]{2})*[A-Za-z0-9_.-]*$/);
  assert.doesNotMatch(name.split("~")[0], /%[0-9A-F]?$/);
  assert.equal(parseTableDirName(name), null);
  assert.equal(tableDirName(schema, table), name, "deterministic");
});

Deno.test("tableDirName hashes schema and table separately", () => {
  // Same concatenation, different split: the hash input has a NUL between them.
  const a = tableDirName("ü".repeat(31), "é".repeat(31) + "x");
  const b = tableDirName("ü".repeat(31) + "é", "é".repeat(30) + "x");
  assert.notEqual(a, b);
});

Deno.test("tableDirName is injective over a generated set of identifiers", () => {
  const pieces = ["a", "A", ".", "%", "%2E", "2E", "/", " ", "~", "ü", "-", "_", "..", "é", "😀"];
  const idents: string[] = [];
  for (const x of pieces) {
    idents.push(x);
    for (const y of pieces) idents.push(x + y);
  }
  // Long ones that get hashed.
  for (const x of pieces) {
    idents.push(x.repeat(Math.floor(63 / new TextEncoder().encode(x).length)));
  }
  const seen = new Map<string, string>();
  for (const s of idents) {
    for (const t of idents) {
      const name = tableDirName(s, t);
      const key = JSON.stringify([s, t]);
      const before = seen.get(name);
      assert.equal(before ?? key, key, `${before} and ${key} both map to ${name}`);
      seen.set(name, key);
      assertSafe(name);
      const parsed = parseTableDirName(name);
      if (!name.includes("~")) assert.deepEqual(parsed, { schema: s, table: t });
      else assert.equal(parsed, null);
    }
  }
  assert.ok(seen.size > 50_000);
});

Deno.test("tableDirName rejects empty identifiers", () => {
  assert.throws(() => tableDirName("", "t"), RangeError);
  assert.throws(() => tableDirName("s", ""), RangeError);
});

Deno.test("parseTableDirName inverts tableDirName", () => {
  for (const [s, t] of TRICKY) {
    const name = tableDirName(s, t);
    if (name.includes("~")) continue;
    assert.deepEqual(parseTableDirName(name), { schema: s, table: t });
  }
});

Deno.test("parseTableDirName returns null for names tableDirName does not produce", () => {
  for (
    const dir of [
      "",
      ".",
      "..",
      "public",
      "a.b.c",
      ".b",
      "a.",
      "%41.b", // non-canonical for "A"
      "a.%2e", // lower-case hex
      "a.%2",
      "a.%ZZ",
      "a.%FF", // not UTF-8
      "a b.c",
      "a~0123.b",
      ".tmp-x",
    ]
  ) {
    assert.equal(parseTableDirName(dir), null, dir);
  }
});

Deno.test("batchTimestamp formats UTC with milliseconds", () => {
  assert.equal(batchTimestamp(new Date("2026-11-24T17:05:00.123Z")), "20261124T170500.123Z");
  assert.equal(batchTimestamp(new Date("2026-01-02T03:04:05.006Z")), "20260102T030405.006Z");
});

Deno.test("batchTimestamp uses the clock when it moved past the last batch", () => {
  assert.equal(
    batchTimestamp(new Date("2026-11-24T17:10:00.000Z"), "20261124T170500.123Z"),
    "20261124T171000.000Z",
  );
});

Deno.test("batchTimestamp stays strictly increasing under a stuck clock", () => {
  const stuck = new Date("2026-11-24T17:05:00.999Z");
  let last: string | undefined;
  const names: string[] = [];
  for (let i = 0; i < 2000; i++) {
    const next = batchTimestamp(stuck, last);
    if (last !== undefined) assert.ok(next > last, `${next} > ${last}`);
    names.push(next);
    last = next;
  }
  assert.equal(new Set(names).size, names.length);
  assert.equal(names[1], "20261124T170501.000Z"); // carries into the next second
  assert.equal(parseBatchTimestamp(names[1999]) - parseBatchTimestamp(names[0]), 1999);
});

Deno.test("batchTimestamp bumps by 1 ms when the clock went backwards", () => {
  assert.equal(
    batchTimestamp(new Date("2026-11-24T16:00:00.000Z"), "20261124T170500.123Z"),
    "20261124T170500.124Z",
  );
  assert.equal(
    batchTimestamp(new Date("2026-12-31T23:59:59.999Z"), "20261231T235959.999Z"),
    "20270101T000000.000Z",
  );
});

Deno.test("batchTimestamp rejects an invalid last name or date", () => {
  assert.throws(() => batchTimestamp(new Date(), "2026-11-24"), SyntaxError);
  assert.throws(() => batchTimestamp(new Date(), "20261324T170500.123Z"), SyntaxError);
  assert.throws(() => batchTimestamp(new Date(Number.NaN)), RangeError);
});

Deno.test("parseBatchTimestamp inverts batchTimestamp", () => {
  const ms = Date.UTC(2026, 10, 24, 17, 5, 0, 123);
  assert.equal(parseBatchTimestamp(batchTimestamp(new Date(ms))), ms);
});
