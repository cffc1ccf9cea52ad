/**
 * `kill -9` of `stream` while it exports (DESIGN §5, §8): during the initial
 * export of a fresh slot, then during `reload`s, under a concurrent
 * workload. Right after each kill every CSV file under its final name is
 * registered and every registered file is there (under its final or temp
 * name); after a restart the export starts again from a fresh snapshot. At
 * the end, after one clean run, replay equals the source, every change is in
 * one file, every reload is done, and the data dir holds exactly:
 * - the registered files, each complete (size, sha256, gzip, row count);
 * - a `schema.yml` in each folder that holds a registered file;
 * - an empty `.spool/`.
 * Nothing else: no `.tmp-*` file, no unregistered `ddl.sql` or `schema.yml`,
 * no folder without a registered file (see `checkDataDir`).
 *
 * `CDC_EXPORT_CRASH_SEED` replays a run (the seed is printed on failure);
 * `CDC_EXPORT_CRASH_ROUNDS` changes the number of kills (default 10).
 */

import assert from "node:assert/strict";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { type CliProcess, runCli, waitFor } from "../harness/cli.ts";
import {
  assertChangesOnce,
  assertNoStraddle,
  checkDataDir,
  createMixedTables,
  fileLog,
  listTree,
  MIXED_TABLES,
  prng,
  startStream,
  stopCleanly,
  waitForBackendsGone,
  Workload,
} from "../harness/export_world.ts";
import { layoutSuffix, type StreamEnv, streamEnv } from "../harness/stream_env.ts";

const BIG_ROWS = 1_000_000;
const ROUNDS = Number(Deno.env.get("CDC_EXPORT_CRASH_ROUNDS") ?? 10);
const RELOADED = ["public.big", "public.parted", "public.keyless"];
// With a bucket, small parts: the big table's export goes up in several while it runs.
const STREAM_ENV = {
  CDC_EXPORT_WORKERS: "2",
  CDC_BATCH_INTERVAL: "300ms",
  CDC_S3_PART_SIZE: "5MiB",
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Whether an export is pending: a table never exported or a reload not done. */
async function exportPending(w: StreamEnv): Promise<boolean> {
  const res = await w.registry.query(
    `SELECT EXISTS (SELECT 1 FROM cdc_registry.reload_operations
                    WHERE state IN ('requested', 'exporting'))
         OR (SELECT count(DISTINCT (schema_name, table_name)) FROM cdc_registry.file_log
             WHERE file_type = 'full_reload') < $1 AS pending`,
    [MIXED_TABLES.length],
  );
  return res.rows[0].pending;
}

/** Throws if the stream process has exited. */
async function assertRunning(p: CliProcess): Promise<void> {
  const exited = await Promise.race([p.exited(), sleep(0).then(() => null)]);
  if (exited !== null) throw new Error(`stream exited with ${exited}: ${p.stderr.slice(-3000)}`);
}

/** Waits until an export is under way: its COPY runs or its temp file exists. */
async function exportRunning(w: StreamEnv, p: CliProcess): Promise<void> {
  await waitFor("an export to run", async () => {
    await assertRunning(p);
    const copy = await w.db.query(
      `SELECT 1 FROM pg_stat_activity WHERE application_name = 'cdc-egress/export'
         AND state = 'active' AND query ILIKE 'COPY%'`,
    );
    return copy.rowCount! > 0 ||
      (await listTree(w.dataDir)).some((f) => f.endsWith("/.tmp-full_reload.csv.gz"));
  }, 60_000);
}

/** Waits until the COPY of the big table has sent `rows` rows (pg_stat_progress_copy). */
async function bigCopyAt(w: StreamEnv, p: CliProcess, rows: number): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    await assertRunning(p);
    const res = await w.db.query(
      `SELECT c.tuples_processed FROM pg_stat_progress_copy c
       JOIN pg_stat_activity a ON a.pid = c.pid
       WHERE a.application_name = 'cdc-egress/export'
         AND (a.query LIKE 'COPY "public"."big" %' OR a.query LIKE '%FROM ONLY "public"."big"%')`,
    );
    if (res.rowCount && Number(res.rows[0].tuples_processed) >= rows) return;
    await sleep(5);
  }
  throw new Error(`Timed out waiting for the big table's COPY to reach ${rows} rows`);
}

/**
 * Right after a kill: every CSV file under its final name is registered,
 * and every registered file exists under its final or its temp name (the
 * crash may fall between the registry commit and the rename).
 */
async function checkAfterKill(w: StreamEnv): Promise<void> {
  const registered = new Set((await fileLog(w.registry)).map((f) => f.path));
  await w.syncFiles();
  const tree = new Set(await listTree(w.dataDir));
  // In a bucket an object uploaded but not registered has its intent (the next start deletes it).
  const intents = new Set(
    (await w.registry.query("SELECT path FROM cdc_registry.upload_intent")).rows.map((r) => r.path),
  );
  const unregistered = [...tree].filter((f) => f.endsWith(".csv.gz") && !registered.has(f))
    .filter((f) => !f.split("/").pop()!.startsWith(".tmp-") && !intents.has(f));
  assert.deepEqual(unregistered, [], "CSV files under their final name but not registered");
  const missing = [...registered].filter((f) =>
    !tree.has(f) && !tree.has(f.replace(/[^/]+$/, (name) => `.tmp-${name}`))
  );
  assert.deepEqual(missing, [], "registered files missing after a kill");
}

for (const version of testMajors()) {
  Deno.test({
    name:
      `export crash: kill -9 during the initial export and reloads (PG ${version}${layoutSuffix()})`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    const seed = Number(Deno.env.get("CDC_EXPORT_CRASH_SEED") ?? 0xe8c + version);
    const started = Date.now();
    await using w = await streamEnv(version);
    await createMixedTables(w.db, BIG_ROWS);
    await w.init();
    await using workload = await Workload.start(w.cluster.url(), seed ^ 0x5eed, BIG_ROWS);
    const random = prng(seed);
    let current: CliProcess | null = null;
    const kills = { initial: 0, reload: 0 };
    try {
      for (let round = 0; round < ROUNDS; round++) {
        // The first half of the rounds kill the initial export; the rest
        // kill reloads, some after they finished.
        const exported = async () =>
          new Set(
            (await fileLog(w.registry)).filter((f) => f.fileType === "full_reload").map((f) =>
              f.table
            ),
          );
        let initial = round < ROUNDS / 2 && (await exported()).size < MIXED_TABLES.length;
        let request: "before" | "while" | null = null;
        if (!initial && !(await exportPending(w))) request = random() < 0.5 ? "before" : "while";
        if (request === "before") {
          const r = await runCli(["reload", ...RELOADED], w.env);
          assert.equal(r.code, 0, `reload: ${r.stderr}`);
        }
        current = await startStream(w, STREAM_ENV);
        if (!initial) {
          await waitFor("the initial export", async () => {
            await workload.check();
            return (await exported()).size === MIXED_TABLES.length;
          }, 120_000);
          if (!(await exportPending(w))) request = "while";
        }
        if (request === "while") {
          // Let the stream run a little first, so batches are open when the reload cuts them.
          await sleep(random() * 1500);
          const r = await runCli(["reload", ...RELOADED], w.env);
          assert.equal(r.code, 0, `reload: ${r.stderr}`);
        }
        if (initial) {
          // Somewhere inside the big table's COPY, wherever its speed.
          await bigCopyAt(w, current, Math.floor(random() * 0.95 * BIG_ROWS));
        } else {
          // Anywhere from a COPY's start to past the end of the reload.
          await exportRunning(w, current);
          await sleep(random() * 4000);
        }
        await current.stop("SIGKILL");
        current = null;
        initial = (await exported()).size < MIXED_TABLES.length;
        if (initial) kills.initial++;
        else kills.reload++;
        await workload.check();
        await waitForBackendsGone(w.db, w.registry);
        await checkAfterKill(w);
      }
      assert.deepEqual(
        kills,
        { initial: Math.ceil(ROUNDS / 2), reload: ROUNDS - Math.ceil(ROUNDS / 2) },
        "kills during the initial export and during reloads",
      );

      current = await startStream(w, STREAM_ENV);
      await w.caughtUp(120_000);
      const transactions = await workload.stop();
      await w.caughtUp(120_000);
      await stopCleanly(current);

      for (const t of MIXED_TABLES) await w.assertReplayEquals(t.schema, t.table);
      await w.syncFiles();
      const files = await checkDataDir(w);
      if (w.s3) {
        const intents = await w.registry.query("SELECT path FROM cdc_registry.upload_intent");
        assert.deepEqual(intents.rows, [], "upload intents left");
        assert.deepEqual(await w.s3.incompleteUploads("cdc"), [], "incomplete multipart uploads");
      }
      await assertNoStraddle(w.registry);
      await assertChangesOnce(w, MIXED_TABLES);
      const ops = await w.registry.query(
        "SELECT id, schema_name, table_name, state, error FROM cdc_registry.reload_operations",
      );
      assert.deepEqual(ops.rows.filter((o) => o.state !== "done"), [], "unfinished reloads");
      const modes = await w.registry.query(
        "SELECT schema_name, table_name, mode FROM cdc_registry.table_state WHERE mode <> 'streaming'",
      );
      assert.deepEqual(modes.rows, [], "tables not streaming");
      // The temporary export slots went with their sessions.
      const slots = await w.db.query("SELECT slot_name FROM pg_replication_slots");
      assert.deepEqual(slots.rows, [{ slot_name: "cdc_egress" }], "replication slots left");
      const exports = files.filter((f) => f.fileType === "full_reload");
      console.log(
        `PG ${version}, seed ${seed}: ${kills.initial} kills in the initial export, ${kills.reload} in reloads, ${exports.length} exports, ${transactions} workload transactions, ${files.length} files, ${
          Math.round((Date.now() - started) / 1000)
        } s`,
      );
    } catch (error) {
      console.error(`export crash test failed with CDC_EXPORT_CRASH_SEED=${seed}`);
      if (current) console.error(`stderr of the last stream:\n${current.stderr.slice(-6000)}`);
      throw error;
    }
  });
}
