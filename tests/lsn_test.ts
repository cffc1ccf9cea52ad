import assert from "node:assert/strict";
import {
  compareLsn,
  formatLsn,
  type Lsn,
  maxLsn,
  minLsn,
  parseLsn,
  toLsn,
  ZERO_LSN,
} from "../src/lsn.ts";

Deno.test("parseLsn() and formatLsn() round-trip PostgreSQL's pg_lsn text", () => {
  for (const text of ["0/0", "0/9", "0/10", "0/16B3748", "16/B374D848", "FFFFFFFF/FFFFFFFF"]) {
    assert.equal(formatLsn(parseLsn(text)), text);
  }
  assert.equal(parseLsn("16/B374D848"), 0x16_b374d848n);
  assert.equal(parseLsn("FFFFFFFF/FFFFFFFF"), (1n << 64n) - 1n);
  assert.equal(parseLsn("0/0"), ZERO_LSN);
});

Deno.test("formatLsn() prints upper-case hex without padding", () => {
  assert.equal(formatLsn(parseLsn("0a/00000b")), "A/B");
  assert.equal(formatLsn(parseLsn("deadbeef/cafe")), "DEADBEEF/CAFE");
  assert.equal(formatLsn(toLsn(1n << 32n)), "1/0");
});

Deno.test("compareLsn() orders numerically, not as text", () => {
  const a = parseLsn("0/9");
  const b = parseLsn("0/10");
  assert.ok("0/9" > "0/10"); // the trap the Lsn type exists for
  assert.ok(compareLsn(a, b) < 0);
  assert.ok(compareLsn(b, a) > 0);
  assert.equal(compareLsn(a, parseLsn("0/09")), 0);
  assert.ok(compareLsn(parseLsn("0/FFFFFFFF"), parseLsn("1/0")) < 0);
  const sorted = ["1/0", "0/10", "0/9", "0/A"].map(parseLsn).sort(compareLsn).map(formatLsn);
  assert.deepStrictEqual(sorted, ["0/9", "0/A", "0/10", "1/0"]);
  assert.equal(maxLsn(a, b), b);
  assert.equal(minLsn(a, b), a);
});

Deno.test("parseLsn() throws SyntaxError on malformed text", () => {
  for (
    const text of [
      "",
      "0",
      "0/",
      "/0",
      "0/0/0",
      "g/0",
      "0/-1",
      " 0/0",
      "0/0 ",
      "123456789/0",
      "0x1/0",
    ]
  ) {
    assert.throws(() => parseLsn(text), SyntaxError, JSON.stringify(text));
  }
});

Deno.test("toLsn() throws RangeError outside 0..2^64-1", () => {
  assert.throws(() => toLsn(-1n), RangeError);
  assert.throws(() => toLsn(1n << 64n), RangeError);
  assert.equal(toLsn(0n), ZERO_LSN);
  const max: Lsn = toLsn((1n << 64n) - 1n);
  assert.equal(formatLsn(max), "FFFFFFFF/FFFFFFFF");
});
