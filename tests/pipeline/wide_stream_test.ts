/**
 * Thousands of tables, each with a change in the same interval, under
 * `ulimit -n 1024` (systemd's default soft limit): open batches must not
 * hold a file descriptor or a deflate context each. The table count comes
 * from CDC_TEST_WIDE_TABLES (default 2,000).
 */

import assert from "node:assert/strict";
import { CliProcess, waitFor } from "../harness/cli.ts";
import { streamEnv } from "../harness/stream_env.ts";
import { stopCleanly } from "../harness/export_world.ts";

const TABLES = Number(Deno.env.get("CDC_TEST_WIDE_TABLES") ?? 2000);
const MiB = 1024 * 1024;

/** VmHWM (peak RSS) of a running process, in bytes; 0 once it is gone. */
async function peakRss(pid: number): Promise<number> {
  try {
    const status = await Deno.readTextFile(`/proc/${pid}/status`);
    const kb = Number(/^VmHWM:\s+(\d+) kB/m.exec(status)?.[1] ?? 0);
    return kb * 1024;
  } catch {
    return 0;
  }
}

/** Open descriptors of a running process; 0 once it is gone. */
async function openFds(pid: number): Promise<number> {
  try {
    return (await Array.fromAsync(Deno.readDir(`/proc/${pid}/fd`))).length;
  } catch {
    return 0;
  }
}

/** One change in each table, a hundred tables per transaction. */
async function touchEveryTable(db: { query(sql: string): Promise<unknown> }, round: number) {
  for (let from = 0; from < TABLES; from += 100) {
    const to = Math.min(TABLES, from + 100) - 1;
    await db.query(
      `DO $$ BEGIN FOR i IN ${from}..${to} LOOP
         EXECUTE format('INSERT INTO wide.t%s VALUES (%s, %L)', i, ${round}, repeat('r${round}', 20));
       END LOOP; END $$`,
    );
  }
}

Deno.test({
  name: `stream registers a change in each of ${TABLES} tables under ulimit -n 1024 (PG 18)`,
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  await using w = await streamEnv(18, { max_locks_per_transaction: 256 });
  await w.db.query("CREATE SCHEMA wide");
  await w.db.query(
    `DO $$ BEGIN FOR i IN 0..${TABLES - 1} LOOP
       EXECUTE format('CREATE TABLE wide.t%s (id int PRIMARY KEY, v text)', i);
     END LOOP; END $$`,
  );
  await w.init();
  const interval = 20;
  const p = new CliProcess(["stream"], { ...w.env, CDC_BATCH_INTERVAL: `${interval}s` }, {
    fdLimit: 1024,
  });
  let peak = 0;
  let fds = 0;
  const sampler = setInterval(async () => {
    peak = Math.max(peak, await peakRss(p.child.pid));
    fds = Math.max(fds, await openFds(p.child.pid));
  }, 250);
  try {
    const t0 = Date.now();
    const phase = async (what: string) =>
      console.log(
        `${what}: ${Math.round((Date.now() - t0) / 1000)} s, peak RSS ${
          Math.round(Math.max(peak, await peakRss(p.child.pid)) / MiB)
        } MiB, fds ${fds}`,
      );
    await w.caughtUp(300_000);
    await phase("initial export done");
    const countFiles = async () =>
      Number(
        (await w.registry.query(
          `SELECT count(*) AS n FROM cdc_registry.file_log
           WHERE file_type = 'streaming' AND schema_name = 'wide'`,
        )).rows[0].n,
      );
    const before = await countFiles();
    assert.equal(before, 0);
    // Round 1: every table gets a change within one interval; the interval closes them all.
    const started = Date.now();
    await touchEveryTable(w.db, 1);
    const touched = Date.now() - started;
    assert.ok(touched < interval * 1000, `the changes took ${touched} ms, more than one interval`);
    await waitFor(
      `${TABLES} streaming files at the interval`,
      async () => (await countFiles()) >= TABLES,
      180_000,
    );
    await phase("round 1 registered");
    // Round 2: changes still open when SIGTERM comes are registered on the way out.
    await touchEveryTable(w.db, 2);
    await waitFor("the slot to receive round 2", async () => {
      const r = await w.db.query(
        `SELECT pg_current_wal_insert_lsn() - sent_lsn <= 0 AS ok FROM pg_stat_replication`,
      );
      return r.rows[0]?.ok;
    }, 120_000);
    await phase("round 2 received");
    await stopCleanly(p);
    assert.ok(!/Too many open files|EMFILE/.test(p.stderr), p.stderr.slice(-2000));
    assert.equal(await countFiles(), 2 * TABLES);
    const perTable = await w.registry.query(
      `SELECT table_name, sum(row_count)::int AS rows FROM cdc_registry.file_log
       WHERE file_type = 'streaming' AND schema_name = 'wide' GROUP BY table_name`,
    );
    assert.equal(perTable.rows.length, TABLES);
    for (const r of perTable.rows) assert.equal(r.rows, 2, `${r.table_name}: ${r.rows} rows`);
    assert.ok(peak > 0 && peak <= 256 * MiB, `peak RSS ${Math.round(peak / MiB)} MiB`);
    assert.ok(fds < 1024);
    // The slowest interval flush, from the log: each registered batch says how long its flush took.
    let flushMs = 0;
    for (const line of p.stderr.split("\n")) {
      if (!line.includes('"batch registered"') || !line.includes('"interval"')) continue;
      flushMs = Math.max(flushMs, JSON.parse(line).ms ?? 0);
    }
    console.log(
      `${TABLES} tables: peak RSS ${Math.round(peak / MiB)} MiB, peak fds ${fds}, ` +
        `interval flush ${flushMs} ms`,
    );
    // Replay equals the source, for a spread of tables (every file is checked above).
    for (let i = 0; i < TABLES; i += Math.max(1, Math.floor(TABLES / 10))) {
      await w.assertReplayEquals("wide", `t${i}`);
    }
  } finally {
    clearInterval(sampler);
    await p.stop("SIGKILL");
  }
});
