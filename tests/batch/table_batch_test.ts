import assert from "node:assert/strict";
import { gunzipSync } from "node:zlib";
import { join } from "node:path";
import { SPILL_BYTES, TableBatch } from "../../src/batch/table_batch.ts";
import { relationInfo } from "../../src/pipeline/relation_catalog.ts";
import { WriterPool } from "../../src/write/writer_pool.ts";
import { toLsn, ZERO_LSN } from "../../src/lsn.ts";

const rel = (oid: number, name: string) =>
  relationInfo({
    type: "relation",
    relationId: oid,
    namespace: "public",
    name,
    replicaIdentity: "d",
    columns: [{ flags: 1, name: "id", typeOid: 23, typeModifier: -1 }],
  });

const schema = {
  schema: "public",
  table: "t",
  relationOid: 1,
  replicaIdentity: "default",
  primaryKey: ["id"],
  columns: [],
};

/** Appends `n` one-field rows numbered from `from`. */
function addRows(batch: TableBatch, from: number, n: number): void {
  for (let i = from; i < from + n; i++) {
    batch.encoder.fieldText(`row ${i} ${"x".repeat(40)}`);
    batch.encoder.endRow();
    batch.noteRow({ lsn: toLsn(BigInt(i + 1)), seq: 0 });
  }
}

Deno.test("TableBatch stays in memory until SPILL_BYTES, then shares a pool of one with another", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const pool = new WriterPool(1);
    const a = new TableBatch(rel(1, "a"), "20261129T000000.000Z", dir, ZERO_LSN);
    const b = new TableBatch(rel(2, "b"), "20261129T000000.000Z", dir, ZERO_LSN);
    addRows(a, 0, 10);
    await a.maybeDrain(pool);
    assert.equal(a.spilled, false);
    assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), [], "nothing on disk yet");
    // Past the threshold both get files; with one slot they take turns.
    let n = 10;
    while (a.encoder.byteLength < SPILL_BYTES) addRows(a, n++, 1);
    await a.maybeDrain(pool);
    addRows(b, 0, 20_000);
    await b.maybeDrain(pool);
    addRows(a, n, 20_000);
    await a.maybeDrain(pool);
    assert.ok(a.spilled && b.spilled);
    assert.equal(pool.openCount, 1);
    assert.ok(pool.suspensions >= 2, "the batches took turns in the pool");
    const expectA = a.bytes;
    const sealed = await a.finish(pool, schema as never, null);
    assert.equal(sealed.uncompressedBytes, expectA);
    assert.equal(a.bytes, expectA, "bytes stay what was compressed");
    const text = new TextDecoder().decode(gunzipSync(await Deno.readFile(sealed.tempPath)));
    const lines = text.trimEnd().split("\n");
    assert.equal(lines.length, 1 + n + 20_000, "header and every row, in order");
    assert.equal(lines[1], `row 0 ${"x".repeat(40)}`);
    assert.equal(lines.at(-1), `row ${n + 20_000 - 1} ${"x".repeat(40)}`);
    const { files, dirs } = a.durablePaths();
    assert.deepEqual(files, [sealed.tempPath, join(a.absDir, "schema.yml")]);
    assert.ok(dirs.includes(a.absDir) && dirs.includes(join(dir, a.relation.tableDir)));
    await b.abort(pool);
    assert.equal(pool.openCount, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("TableBatch.finish compresses a batch still in memory and counts its bytes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const pool = new WriterPool(1);
    const a = new TableBatch(rel(1, "a"), "20261129T000000.000Z", dir, ZERO_LSN);
    addRows(a, 0, 3);
    const before = a.bytes;
    const sealed = await a.finish(pool, schema as never, null);
    assert.equal(pool.openCount, 0, "a short-lived file outside the pool");
    assert.equal(sealed.uncompressedBytes, before);
    assert.equal(a.bytes, before);
    const text = new TextDecoder().decode(gunzipSync(await Deno.readFile(sealed.tempPath)));
    assert.equal(text.split("\n").length, 5);
    await a.publish();
    assert.ok((await Deno.stat(join(a.absDir, "streaming.csv.gz"))).isFile);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
