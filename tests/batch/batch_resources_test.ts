import assert from "node:assert/strict";
import { planBatchResources } from "../../src/batch/batch_resources.ts";
import { reservedDescriptors } from "../../src/write/open_file_limit.ts";
import { WRITER_MEMORY_BYTES } from "../../src/write/writer_pool.ts";

const MiB = 1024 * 1024;

Deno.test("planBatchResources() gives the defaults their pool and the rest of the budget to buffers", () => {
  const r = planBatchResources(
    { maxOpenFiles: 128, memoryBudget: 128 * MiB, exportWorkers: 4 },
    null,
  );
  assert.equal(r.maxOpenFiles, 128);
  assert.equal(r.bufferBytes, 128 * MiB - 128 * WRITER_MEMORY_BYTES);
  assert.equal(r.lowered, null);
});

Deno.test("planBatchResources() lets open files take at most half the memory budget", () => {
  const r = planBatchResources(
    { maxOpenFiles: 1000, memoryBudget: 64 * MiB, exportWorkers: 4 },
    null,
  );
  assert.equal(r.maxOpenFiles, Math.floor(32 * MiB / WRITER_MEMORY_BYTES));
  assert.equal(r.lowered, "memory");
  assert.ok(r.bufferBytes >= 32 * MiB);
});

Deno.test("planBatchResources() fits the pool to the free descriptors", () => {
  const r = planBatchResources(
    { maxOpenFiles: 128, memoryBudget: 128 * MiB, exportWorkers: 2 },
    reservedDescriptors(2) + 40,
  );
  assert.equal(r.maxOpenFiles, 40);
  assert.equal(r.lowered, "ulimit");
});
