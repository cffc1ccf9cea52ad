/**
 * `stream` fails loudly, not in a quiet loop: with a regular file where a
 * table's directory must be (a fault that stops root too), every session
 * fails the same way. After FAILURES_BEFORE_ALARM of them without progress
 * it logs at error level with the cause and the fix, counts
 * `cdc_errors_total{type="repeated_failure"}` and the fault's own type, sets
 * `cdc_stream_failing` and fails `/readyz`, while it keeps retrying; once
 * the file is moved away it registers the change, and /readyz is ready again.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { FAILURES_BEFORE_ALARM } from "../../src/observe/failure_streak.ts";
import { waitFor } from "../harness/cli.ts";
import { layoutSuffix, streamEnv } from "../harness/stream_env.ts";

function metricsPort(stderr: string): number {
  const m = /"msg":"serving metrics".*?"port":(\d+)/.exec(stderr);
  return m ? Number(m[1]) : 0;
}

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, body: await res.text() };
}

/** The value of one exact series (`name` or `name{labels}`), or null. */
function metricValue(text: string, series: string): number | null {
  const line = text.split("\n").find((l) => l.startsWith(series + " "));
  return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : null;
}

// deno-lint-ignore no-explicit-any
type Doc = any;

function logRecords(stderr: string): Doc[] {
  return stderr.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
}

for (const version of testMajors()) {
  Deno.test(`stream fails loudly when a session fails the same way without progress (PG ${version}${layoutSuffix()})`, async () => {
    await using w = await streamEnv(version);
    await w.db.query("CREATE TABLE orders (id int PRIMARY KEY, note text)");
    await w.db.query("INSERT INTO orders SELECT g, 'o' || g FROM generate_series(1, 20) g");
    await w.init();
    const p = w.stream();
    const port = await waitFor("the metrics port", () => metricsPort(p.stderr));
    await w.caughtUp();
    await waitFor("ready", async () => (await get(port, "/readyz")).status === 200);

    // The fault: the table's directory moved away, a regular file in its place.
    const dir = join(w.dataDir, "public.orders");
    const aside = join(w.dataDir, "..", `orders-aside-${crypto.randomUUID()}`);
    await Deno.rename(dir, aside);
    await Deno.writeTextFile(dir, "not a directory\n");
    await w.db.query("INSERT INTO orders VALUES (100, 'after the fault')");

    const alarm = await waitFor(
      "the error line",
      () =>
        logRecords(p.stderr).find((r) =>
          r.level === "error" && /^stream keeps failing the same way/.test(r.msg)
        ),
      120_000,
    );
    assert.equal(
      alarm.msg,
      "stream keeps failing the same way without progress (a file is where the data dir needs a directory); reconnecting, but this needs a fix",
    );
    assert.equal(alarm.failures, FAILURES_BEFORE_ALARM);
    assert.equal(alarm.type, "not_a_directory");
    assert.match(alarm.fix, /move away the file named in the error/);
    assert.match(alarm.error, /public\.orders/);
    assert.ok(!p.stderr.includes(w.cluster.password));
    // Before the alarm, the same failures were warnings.
    const warned = logRecords(p.stderr).filter((r) =>
      r.level === "warn" && /^stream session failed \(a file is where/.test(r.msg)
    );
    assert.equal(warned.length, FAILURES_BEFORE_ALARM - 1);

    const metrics = (await get(port, "/metrics")).body;
    assert.equal(metricValue(metrics, 'cdc_errors_total{type="repeated_failure"}'), 1);
    assert.ok(
      (metricValue(metrics, 'cdc_errors_total{type="not_a_directory"}') ?? 0) >=
        FAILURES_BEFORE_ALARM,
      metrics,
    );
    assert.equal(metricValue(metrics, "cdc_stream_failing"), 1);
    const ready = await get(port, "/readyz");
    assert.equal(ready.status, 503);
    const state = JSON.parse(ready.body);
    assert.equal(state.failing.reason, "a file is where the data dir needs a directory");
    assert.ok(state.failing.failures >= FAILURES_BEFORE_ALARM);
    // Nothing was acknowledged past the change that cannot be written.
    const registered = await w.registry.query(
      `SELECT count(*)::int AS n FROM cdc_registry.file_log
       WHERE table_name = 'orders' AND file_type = 'streaming'`,
    );
    assert.equal(registered.rows[0].n, 0);

    // Remove the fault: it keeps retrying, so it recovers by itself.
    await Deno.remove(dir);
    await Deno.rename(aside, dir);
    await waitFor("ready again", async () => (await get(port, "/readyz")).status === 200, 90_000);
    const after = (await get(port, "/metrics")).body;
    assert.equal(metricValue(after, "cdc_stream_failing"), 0);
    assert.ok(
      logRecords(p.stderr).some((r) =>
        r.level === "info" && r.msg === "stream is making progress again"
      ),
    );
    await w.caughtUp();
    await w.assertReplayEquals("public", "orders");
    assert.equal(await p.stop(), 0, p.stderr);
  });
}
