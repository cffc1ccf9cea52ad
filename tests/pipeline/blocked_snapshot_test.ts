/**
 * Snapshots off the hot path: a reload's snapshot waits for every running
 * transaction that has an xid, and for prepared transactions, maybe for
 * hours. Meanwhile the stream keeps writing other tables' changes into
 * registered files within the batch interval, answers the walsender (no
 * reconnect under `wal_sender_timeout = 10s`), says what the export waits
 * for, and stops within seconds on SIGTERM. The reload finishes once the
 * blocking transaction ends.
 */

import assert from "node:assert/strict";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { runCli, waitFor } from "../harness/cli.ts";
import { checkDataDir, connectTo, startStream, stopCleanly } from "../harness/export_world.ts";
import { streamEnv } from "../harness/stream_env.ts";

const INTERVAL_MS = 1000;

/** Reload requests not done yet. */
async function pendingReloads(db: pg.Client): Promise<number> {
  const res = await db.query(
    `SELECT count(*)::int AS n FROM cdc_registry.reload_operations
     WHERE state IN ('requested', 'exporting')`,
  );
  return res.rows[0].n;
}

/**
 * For `seconds`, writes a row to public.live every two seconds and checks
 * that a registered file holds it within the batch interval plus 5 s.
 */
async function liveKeepsFlowing(
  db: pg.Client,
  registry: pg.Client,
  seconds: number,
  from: number,
): Promise<void> {
  const until = Date.now() + seconds * 1000;
  let id = from;
  while (Date.now() < until) {
    const before = (await db.query("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0].l;
    await db.query("INSERT INTO public.live VALUES ($1, 'x')", [id++]);
    const written = Date.now();
    await waitFor(
      `row ${id - 1} of public.live in a registered file`,
      async () =>
        (await registry.query(
          `SELECT 1 FROM cdc_registry.file_log WHERE table_name = 'live'
           AND file_type = 'streaming' AND end_lsn >= $1::pg_lsn`,
          [before],
        )).rowCount! > 0,
      INTERVAL_MS + 5000,
    );
    const took = Date.now() - written;
    assert.ok(took <= INTERVAL_MS + 5000, `row registered after ${took} ms`);
    await new Promise((r) => setTimeout(r, 2000));
  }
}

async function walsenderPid(db: pg.Client): Promise<number | null> {
  const res = await db.query(
    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
  );
  return res.rows[0]?.active_pid ?? null;
}

for (const version of testMajors()) {
  Deno.test({
    name:
      `blocked snapshot: an open and a prepared transaction never stall the stream (PG ${version})`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    await using w = await streamEnv(version, {
      wal_sender_timeout: "'10s'",
      max_prepared_transactions: 4,
    });
    await w.db.query(`
      CREATE TABLE public.blocker (id int PRIMARY KEY);
      CREATE TABLE public.reloaded (id int PRIMARY KEY, v text);
      INSERT INTO public.reloaded SELECT g, 'r' FROM generate_series(1, 1000) g;
      CREATE TABLE public.live (id int PRIMARY KEY, v text);`);
    await w.init();
    let stream = await startStream(w);
    await w.caughtUp();
    const pid = await walsenderPid(w.db);

    // 1. An open write transaction (it has an xid) for 60 s.
    const holder = await connectTo(w.cluster.url());
    await holder.query("BEGIN");
    await holder.query("INSERT INTO public.blocker VALUES (1)");
    const holderPid = (await holder.query("SELECT pg_backend_pid() AS p")).rows[0].p;
    assert.equal((await runCli(["reload", "public.reloaded"], w.env)).code, 0);
    await w.db.query("UPDATE public.reloaded SET v = 'during' WHERE id <= 10");
    await liveKeepsFlowing(w.db, w.registry, 60, 1);
    assert.equal(await pendingReloads(w.registry), 1, "the reload waits for the open transaction");
    const status = await runCli(["status", "--json"], w.env);
    assert.equal(status.code, 0, status.stderr);
    const waiting = JSON.parse(status.stdout).pending_reloads[0];
    assert.match(waiting.waiting_for, new RegExp(`pid ${holderPid}\\b`), JSON.stringify(waiting));
    assert.match(stream.stderr, /export waits for a snapshot/);
    await holder.query("COMMIT");
    await waitFor(
      "the reload to finish",
      async () => (await pendingReloads(w.registry)) === 0,
      60_000,
    );
    assert.equal(await walsenderPid(w.db), pid, "the walsender was never replaced");
    assert.doesNotMatch(stream.stderr, /reconnecting/);

    // 2. A prepared transaction: the stream flows, and SIGTERM ends it within seconds.
    await holder.query("BEGIN");
    await holder.query("INSERT INTO public.blocker VALUES (2)");
    await holder.query("PREPARE TRANSACTION 'cdc_test_blocker'");
    assert.equal((await runCli(["reload", "public.reloaded"], w.env)).code, 0);
    await liveKeepsFlowing(w.db, w.registry, 25, 1000);
    assert.equal(
      await pendingReloads(w.registry),
      1,
      "the reload waits for the prepared transaction",
    );
    const status2 = JSON.parse((await runCli(["status", "--json"], w.env)).stdout);
    assert.match(status2.pending_reloads[0].waiting_for, /prepared transaction 'cdc_test_blocker'/);
    const stopping = Date.now();
    await stopCleanly(stream);
    assert.ok(Date.now() - stopping < 10_000, `SIGTERM took ${Date.now() - stopping} ms`);
    await w.db.query("COMMIT PREPARED 'cdc_test_blocker'");
    stream = await startStream(w);
    await waitFor(
      "the reload to finish",
      async () => (await pendingReloads(w.registry)) === 0,
      60_000,
    );
    await w.caughtUp();
    await stopCleanly(stream);
    await holder.end();

    await checkDataDir(w);
    for (const t of ["blocker", "reloaded", "live"]) await w.assertReplayEquals("public", t);
  });
}
