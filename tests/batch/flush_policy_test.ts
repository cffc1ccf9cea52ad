import assert from "node:assert/strict";
import { flushDecision, type FlushLimits, type FlushReason } from "../../src/batch/flush_policy.ts";

const LIMITS: FlushLimits = { maxRows: 1000, maxBytes: 1_000_000, intervalMs: 300_000 };

const CASES: {
  name: string;
  rows: number;
  bytes: number;
  ageMs: number;
  shuttingDown?: boolean;
  want: FlushReason | null;
}[] = [
  { name: "empty buffer", rows: 0, bytes: 0, ageMs: 0, want: null },
  { name: "empty buffer at shutdown", rows: 0, bytes: 0, ageMs: 0, shuttingDown: true, want: null },
  { name: "empty buffer past every limit", rows: 0, bytes: 5e6, ageMs: 1e9, want: null },
  { name: "below every limit", rows: 999, bytes: 999_999, ageMs: 299_999, want: null },
  {
    name: "one row at shutdown",
    rows: 1,
    bytes: 10,
    ageMs: 0,
    shuttingDown: true,
    want: "shutdown",
  },
  {
    name: "shutdown wins over every limit",
    rows: 5000,
    bytes: 5e6,
    ageMs: 1e9,
    shuttingDown: true,
    want: "shutdown",
  },
  { name: "rows at the limit", rows: 1000, bytes: 1, ageMs: 0, want: "rows" },
  { name: "rows over the limit", rows: 1001, bytes: 1, ageMs: 0, want: "rows" },
  { name: "bytes at the limit", rows: 1, bytes: 1_000_000, ageMs: 0, want: "bytes" },
  { name: "interval reached", rows: 1, bytes: 1, ageMs: 300_000, want: "interval" },
  { name: "rows win over bytes", rows: 1000, bytes: 1_000_000, ageMs: 0, want: "rows" },
  { name: "bytes win over interval", rows: 1, bytes: 1_000_000, ageMs: 300_000, want: "bytes" },
  { name: "rows win over interval", rows: 1000, bytes: 1, ageMs: 300_000, want: "rows" },
];

for (const c of CASES) {
  Deno.test(`flushDecision: ${c.name} -> ${c.want}`, () => {
    const state = {
      rows: c.rows,
      bytes: c.bytes,
      ageMs: c.ageMs,
      shuttingDown: c.shuttingDown ?? false,
    };
    assert.equal(flushDecision(state, LIMITS), c.want);
  });
}

Deno.test("flushDecision treats Infinity as a disabled limit", () => {
  const limits = { maxRows: Infinity, maxBytes: Infinity, intervalMs: 1000 };
  assert.equal(
    flushDecision({ rows: 1e9, bytes: 1e12, ageMs: 999, shuttingDown: false }, limits),
    null,
  );
  assert.equal(
    flushDecision({ rows: 1, bytes: 1, ageMs: 1000, shuttingDown: false }, limits),
    "interval",
  );
});

Deno.test("flushDecision rejects limits that are not positive numbers", () => {
  const state = { rows: 1, bytes: 1, ageMs: 1, shuttingDown: false };
  for (const bad of [0, -1, Number.NaN]) {
    assert.throws(() => flushDecision(state, { ...LIMITS, maxRows: bad }), RangeError);
    assert.throws(() => flushDecision(state, { ...LIMITS, maxBytes: bad }), RangeError);
    assert.throws(() => flushDecision(state, { ...LIMITS, intervalMs: bad }), RangeError);
  }
});
