import assert from "node:assert/strict";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { waitFor } from "../harness/cli.ts";
import { streamEnv } from "../harness/stream_env.ts";
import { liveRows, replayedRows } from "../harness/replay_check.ts";

/** The port the stream process logged when it started serving metrics. */
function metricsPort(stderr: string): number {
  const m = /"msg":"serving metrics".*?"port":(\d+)/.exec(stderr);
  return m ? Number(m[1]) : 0;
}

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, body: await res.text() };
}

function metricValue(text: string, name: string): number | null {
  const line = text.split("\n").find((l) => l.startsWith(name + " ") || l.startsWith(name + "{"));
  return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : null;
}

for (const version of testMajors()) {
  Deno.test(`stream serves metrics and readiness that follow PostgreSQL stopping and returning (PG ${version})`, async () => {
    await using w = await streamEnv(version);
    await w.db.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
    await w.db.query("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 500) g");
    await w.init();
    const p = w.stream();
    const port = await waitFor("the metrics port", () => metricsPort(p.stderr));
    await w.caughtUp(); // the initial export is registered: what follows is streamed
    await w.db.query("INSERT INTO t SELECT g, 'y' FROM generate_series(1000, 1999) g");
    await w.caughtUp();
    await waitFor("a streaming batch", async () => {
      const m = await get(port, "/metrics");
      return (metricValue(m.body, 'cdc_files_written_total{type="streaming"}') ?? 0) >= 1;
    });
    const metrics = (await get(port, "/metrics")).body;
    assert.equal(metricValue(metrics, "cdc_slot_active"), 1);
    assert.equal(metricValue(metrics, 'cdc_files_written_total{type="full_reload"}'), 1);
    assert.ok((metricValue(metrics, "cdc_rows_written_total") ?? 0) >= 1000);
    assert.ok((metricValue(metrics, "cdc_compression_ratio") ?? 0) > 1);
    assert.ok((metricValue(metrics, 'cdc_wal_position_bytes{kind="durable"}') ?? 0) > 0);
    assert.equal(metricValue(metrics, 'cdc_table_mode{table="public.t",mode="streaming"}'), 1);
    // One mode series per table: the others are removed, not kept at 0.
    assert.doesNotMatch(
      metrics,
      /cdc_table_mode\{table="public\.t",mode="(reloading|pending_reload|dropped)"\}/,
    );
    assert.match(metrics, /cdc_batch_duration_seconds_count \d+/);
    assert.match(metrics, /cdc_replication_lag_bytes \d+/);
    assert.equal((await get(port, "/healthz")).status, 200);
    await waitFor("ready", async () => (await get(port, "/readyz")).status === 200);

    // PostgreSQL goes away: not ready within seconds, still alive.
    await w.db.end();
    await w.cluster.stopServer("fast");
    const stoppedAt = Date.now();
    await waitFor("not ready", async () => (await get(port, "/readyz")).status === 503, 15_000);
    assert.ok(Date.now() - stoppedAt < 15_000);
    assert.equal((await get(port, "/healthz")).status, 200);

    // It comes back: ready again, and streaming resumes with nothing lost.
    await w.cluster.startServer();
    await waitFor("ready again", async () => (await get(port, "/readyz")).status === 200, 60_000);
    const db = new pg.Client({ connectionString: w.cluster.url() });
    await db.connect();
    try {
      await db.query("INSERT INTO t SELECT g, 'z' FROM generate_series(3000, 3499) g");
      await db.query("UPDATE t SET v = 'after restart' WHERE id < 100");
      const target = (await db.query("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0].l;
      await waitFor("the slot to catch up after the restart", async () =>
        (await db.query(
          "SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
          [target],
        )).rows[0]?.ok, 60_000);
      const after = (await get(port, "/metrics")).body;
      assert.ok((metricValue(after, "cdc_recovery_attempts_total") ?? 0) >= 1);
      assert.equal(await p.stop(), 0);
      assert.deepEqual(
        await replayedRows(db, w.dataDir, "public", "t"),
        await liveRows(db, "public", "t"),
      );
    } finally {
      await db.end().catch(() => {});
    }
  });

  Deno.test(`stream advances an idle slot while another database writes (PG ${version})`, async () => {
    await using w = await streamEnv(version);
    await w.db.query("CREATE TABLE t (id int PRIMARY KEY)");
    await w.db.query("CREATE DATABASE other");
    await w.init();
    const p = w.stream({ CDC_HEARTBEAT_INTERVAL: "1s" });
    await w.caughtUp();
    const before = (await w.db.query(
      "SELECT confirmed_flush_lsn::text AS l FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
    )).rows[0].l;
    const other = new pg.Client({ connectionString: w.cluster.url("other") });
    await other.connect();
    try {
      await other.query("CREATE TABLE busy (id int, pad text)");
      await other.query(
        "INSERT INTO busy SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g",
      );
      const target = (await other.query("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0].l;
      await waitFor(
        "the idle slot to pass the other database's writes",
        async () =>
          (await w.db.query(
            "SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
            [target],
          )).rows[0]?.ok,
        60_000,
      );
      const after = (await w.db.query(
        "SELECT confirmed_flush_lsn::text AS l, (SELECT checkpoint_lsn FROM cdc_registry.checkpoint) >= confirmed_flush_lsn AS held FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
      )).rows[0];
      assert.notEqual(after.l, before);
      assert.equal(after.held, true, "confirmed_flush_lsn must not pass the registry checkpoint");
      assert.equal(await p.stop(), 0);
    } finally {
      await other.end();
    }
  });
}
