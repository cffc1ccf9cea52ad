/**
 * copyTable() with a held-export budget: small exports wait in memory until
 * placed, within the budget; the rest take the staging-file path. Either
 * way the placed file is the table's COPY output, byte for byte.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { createHash } from "node:crypto";
import { startCluster } from "../../scripts/embedded_postgres.ts";
import { ZERO_LSN } from "../../src/lsn.ts";
import { connect } from "../../src/source/connect.ts";
import { copyOut } from "../../src/source/copy_out.ts";
import { HeldExportBudget } from "../../src/pipeline/held_export_budget.ts";
import { copyTable, FULL_RELOAD_FILE, type StagedExport } from "../../src/pipeline/table_export.ts";
import { DurableBatch } from "../../src/write/durable_batch.ts";

const TABLES = 12;

Deno.test("copyTable() holds small exports within the budget and stages the rest in files (PG 18)", async () => {
  await using cluster = await startCluster({ version: 18 });
  const db = await connect(cluster.url());
  const dataDir = await Deno.makeTempDir({ prefix: "cdc-table-export-" });
  try {
    // md5 text compresses to about half: each table is tens of KiB of gzip,
    // and the last one is larger than one held export may be.
    for (let i = 0; i < TABLES; i++) {
      const rows = i === TABLES - 1 ? 3000 : 500;
      await db.query(`CREATE TABLE t${i} (id int PRIMARY KEY, a text, b text);
        INSERT INTO t${i} SELECT g, md5(random()::text) || md5(random()::text), NULLIF(md5(g::text), md5('7'))
        FROM generate_series(1, ${rows}) g`);
    }
    const oids = (await db.query(
      `SELECT relname, oid::int8 AS oid FROM pg_class WHERE relname ~ '^t[0-9]+$' AND relkind = 'r'`,
    )).rows.reduce((m, r) => m.set(r.relname, Number(r.oid)), new Map<string, number>());
    const stageDir = join(dataDir, ".stage");
    await Deno.mkdir(stageDir);
    const budget = new HeldExportBudget(64 * 1024, 32 * 1024);

    await db.query("BEGIN ISOLATION LEVEL REPEATABLE READ");
    const staged: StagedExport[] = [];
    for (let i = 0; i < TABLES; i++) {
      const copied = await copyTable(
        db,
        oids.get(`t${i}`)!,
        ZERO_LSN,
        dataDir,
        stageDir,
        () => {},
        undefined,
        {
          held: budget,
        },
      );
      staged.push(await copied.seal());
    }
    // What the budget should have taken, export by export, in order.
    let held = 0;
    let inMemory = 0;
    for (const s of staged) {
      if (s.byteSize <= 32 * 1024 && held + s.byteSize <= 64 * 1024) {
        held += s.byteSize;
        inMemory++;
      }
    }
    assert.ok(inMemory >= 1 && inMemory < TABLES - 1, `held in memory: ${inMemory}`);
    assert.equal(budget.held, held);
    const stagedFiles = (await Array.fromAsync(Deno.readDir(stageDir))).length;
    assert.equal(stagedFiles, TABLES - inMemory, "the exports past the budget are staging files");

    const batch = new DurableBatch();
    const paths: string[] = [];
    for (let i = 0; i < TABLES; i++) {
      paths.push(await staged[i].place(`public.t${i}`, "20261129T200000.000Z", null, batch));
    }
    assert.equal(budget.held, 0, "placing releases what was held");
    await batch.flush();
    for (const s of staged) await s.publish(batch);
    assert.deepEqual((await Array.fromAsync(Deno.readDir(stageDir))).length, 0);

    for (let i = 0; i < TABLES; i++) {
      assert.equal(paths[i], `public.t${i}/20261129T200000.000Z/${FULL_RELOAD_FILE}`);
      const bytes = await Deno.readFile(join(dataDir, paths[i]));
      assert.equal(bytes.length, staged[i].byteSize);
      assert.equal(createHash("sha256").update(bytes).digest("hex"), staged[i].sha256);
      let expected = "";
      for await (
        const chunk of copyOut(db, `COPY t${i} (id, a, b) TO STDOUT (FORMAT csv, HEADER)`)
      ) expected += new TextDecoder().decode(chunk);
      assert.equal(new TextDecoder().decode(gunzipSync(bytes)), expected, `t${i}`);
      const yml = await Deno.readTextFile(
        join(dataDir, `public.t${i}/20261129T200000.000Z/schema.yml`),
      );
      assert.match(yml, new RegExp(`t${i}`));
    }
    await db.query("COMMIT");
  } finally {
    await db.end();
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("HeldExportBudget() takes what fits and gives it back", () => {
  const budget = new HeldExportBudget(100, 60);
  assert.equal(budget.tryTake(61), false, "larger than one export may be");
  assert.equal(budget.tryTake(60), true);
  assert.equal(budget.tryTake(41), false, "over the total");
  assert.equal(budget.tryTake(40), true);
  assert.equal(budget.held, 100);
  budget.release(60);
  assert.equal(budget.held, 40);
  assert.throws(() => new HeldExportBudget(-1), RangeError);
});
