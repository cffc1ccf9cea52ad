import assert from "node:assert/strict";
import client from "prom-client";
import { SpoolBudget } from "../../src/storage/spool_budget.ts";

const MiB = 1024 * 1024;

function budget(max: number, state: { pending: number; exports: number; held: number }) {
  const gauge = new client.Gauge({
    name: `spool_test_${crypto.randomUUID().slice(0, 8)}`,
    help: "t",
    registers: [],
  });
  const b = new SpoolBudget(
    max,
    {
      get pendingBytes() {
        return state.pending;
      },
      evict: () => Promise.resolve(),
    },
    gauge,
    {
      get localBytes() {
        return state.exports;
      },
    },
  );
  b.countHeld(() => state.held);
  return { b, gauge };
}

Deno.test("SpoolBudget.full() counts open batches, pending uploads and export parts", () => {
  const state = { pending: 10 * MiB, exports: 0, held: 0 };
  const { b } = budget(100 * MiB, state);
  assert.equal(b.full(80 * MiB), false);
  assert.equal(b.full(90 * MiB), true);
  state.exports = 30 * MiB;
  assert.equal(b.full(60 * MiB), true, "export parts take their share of the bound");
  assert.equal(b.full(55 * MiB), false);
});

Deno.test("SpoolBudget.full() leaves open batches a quarter of the bound when exports hold more", () => {
  const state = { pending: 0, exports: 90 * MiB, held: 0 };
  const { b } = budget(100 * MiB, state);
  // Over the bound, but closing batches of a few bytes again and again would not help.
  assert.equal(b.full(1 * MiB), false);
  assert.equal(b.full(24 * MiB), false);
  assert.equal(b.full(25 * MiB), true);
});

Deno.test("SpoolBudget shows held changes and open transactions in the gauge, outside the bound", async () => {
  const state = { pending: 1 * MiB, exports: 2 * MiB, held: 500 * MiB };
  const { b, gauge } = budget(100 * MiB, state);
  assert.equal(b.full(3 * MiB), false, "held bytes do not close batches");
  assert.equal((await gauge.get()).values[0].value, 506 * MiB);
  assert.equal(b.report(), 6 * MiB);
});
