/**
 * The early warning: while `stream` runs and the slot is healthy
 * (wal_status reserved), a safe_wal_size under `--wal-warn-bytes` logs a
 * warning, sets cdc_slot_wal_warning and fails /readyz; with an unlimited
 * max_slot_wal_keep_size it clears again. And a slot invalidated while
 * `stream` runs (a long open transaction pins it): `stream` stops with
 * exit 3 instead of reconnecting forever.
 */

import assert from "node:assert/strict";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { waitFor } from "../harness/cli.ts";
import { streamEnv } from "../harness/stream_env.ts";

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
  Deno.test(`stream warns and fails /readyz while safe_wal_size is under --wal-warn-bytes (PG ${version})`, async () => {
    await using w = await streamEnv(version, { max_slot_wal_keep_size: "'64MB'" });
    await w.db.query("CREATE TABLE t (id int PRIMARY KEY)");
    await w.init();
    // 64 MB of keep size is always under a 1000 GiB threshold.
    const p = w.stream({ CDC_WAL_WARN_BYTES: "1000GiB" });
    const port = await waitFor("the metrics port", () => metricsPort(p.stderr));
    await w.caughtUp();
    const ready = await waitFor("/readyz to fail on the warning", async () => {
      const r = await get(port, "/readyz");
      return r.status === 503 && JSON.parse(r.body).walWarning ? JSON.parse(r.body) : null;
    });
    assert.equal(ready.walStatus, "reserved", "the warning must come before the slot is at risk");
    assert.equal(ready.streaming, true);
    assert.match(ready.walWarning, /^safe_wal_size is \d+ bytes, under the warning threshold/);
    assert.match(p.stderr, /"msg":"replication slot WAL is at risk: safe_wal_size is \d+ bytes/);
    const metrics = (await get(port, "/metrics")).body;
    assert.equal(metricValue(metrics, "cdc_slot_wal_warning"), 1);
    assert.ok((metricValue(metrics, "cdc_slot_safe_wal_size_bytes") ?? 0) > 0);
    assert.equal(metricValue(metrics, 'cdc_slot_wal_status{status="reserved"}'), 1);

    // No limit: no safe_wal_size, no warning.
    await w.db.query("ALTER SYSTEM SET max_slot_wal_keep_size = -1");
    await w.db.query("SELECT pg_reload_conf()");
    await waitFor("/readyz to pass again", async () => (await get(port, "/readyz")).status === 200);
    assert.equal(metricValue((await get(port, "/metrics")).body, "cdc_slot_wal_warning"), 0);
    assert.match(p.stderr, /"msg":"replication slot WAL is no longer at risk"/);
    assert.equal(await p.stop(), 0, p.stderr);
  });

  Deno.test(`stream with the default threshold does not warn on a healthy slot with a small keep size (PG ${version})`, async () => {
    await using w = await streamEnv(version, { max_slot_wal_keep_size: "'64MB'" });
    await w.db.query("CREATE TABLE t (id int PRIMARY KEY)");
    await w.init();
    const p = w.stream();
    const port = await waitFor("the metrics port", () => metricsPort(p.stderr));
    await w.caughtUp();
    await waitFor("ready", async () => (await get(port, "/readyz")).status === 200);
    // The warning is decided in the same sample that sets safe_wal_size.
    const samples = await waitFor("a sample with safe_wal_size", async () => {
      const m = (await get(port, "/metrics")).body;
      return (metricValue(m, "cdc_slot_safe_wal_size_bytes") ?? 0) > 0 ? m : null;
    });
    assert.equal(metricValue(samples!, "cdc_slot_wal_warning"), 0);
    assert.equal((await get(port, "/readyz")).status, 200);
    assert.doesNotMatch(p.stderr, /WAL is at risk/);
    assert.equal(await p.stop(), 0, p.stderr);
  });

  Deno.test(`a slot invalidated while stream runs stops it with exit 3 (PG ${version})`, async () => {
    await using w = await streamEnv(version);
    await w.db.query("CREATE TABLE t (id int PRIMARY KEY)");
    await w.init();
    const p = w.stream();
    await w.caughtUp();
    // A long open transaction keeps the slot's restart_lsn where it started.
    const holder = new pg.Client({ connectionString: w.cluster.url() });
    await holder.connect();
    try {
      await holder.query("BEGIN");
      await holder.query("INSERT INTO t VALUES (1)");
      await w.db.query("INSERT INTO t VALUES (2)");
      await w.caughtUp(30_000).catch(() => {}); // the open transaction holds the checkpoint
      await w.db.query("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'");
      await w.db.query("SELECT pg_reload_conf()");
      await waitFor("the slot to be invalidated", async () => {
        await w.db.query("SELECT pg_logical_emit_message(false, 'filler', repeat('x', 10000))");
        await w.db.query("SELECT pg_switch_wal()");
        await w.db.query("CHECKPOINT");
        const r = await w.db.query(
          "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
        );
        return r.rows[0]?.wal_status === "lost";
      }, 60_000);
      const code = await waitFor("stream to exit", async () => {
        const status = await Promise.race([
          p.exited(),
          new Promise<null>((r) => setTimeout(() => r(null), 200)),
        ]);
        return status === null ? null : { status };
      }, 60_000);
      // It was streaming when PostgreSQL terminated it, reconnected once, and stopped.
      assert.equal(
        p.stderr.match(/"msg":"stream session failed \(.*?\); reconnecting"/g)?.length,
        1,
        p.stderr,
      );
      assert.equal(code!.status, 3, p.stderr);
      const errors = p.stderr.split("\n").filter((l) => l.startsWith("error:"));
      assert.equal(errors.length, 1, p.stderr);
      assert.match(
        errors[0],
        /^error: Replication slot "cdc_egress" is lost: .*init --recreate-slot/,
      );
    } finally {
      await holder.query("ROLLBACK").catch(() => {});
      await holder.end().catch(() => {});
    }
  });
}
