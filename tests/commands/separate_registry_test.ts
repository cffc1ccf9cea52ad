/**
 * The registry in a second PostgreSQL (`--registry-url`): it rides out
 * registry restarts under writes, one registry serves two sources (two
 * databases, two slots, one data dir root), the operator commands report an
 * unreachable registry in one line, and `init` names the side that lacks a
 * privilege.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { startCluster, testMajors } from "../../scripts/embedded_postgres.ts";
import { CliProcess, runCli, waitFor } from "../harness/cli.ts";
import {
  assertChangesOnce,
  checkDataDir,
  connectTo,
  createMixedTables,
  MIXED_TABLES,
  startStream,
  stopCleanly,
  Workload,
} from "../harness/export_world.ts";
import { liveRows, replayedRows } from "../harness/replay_check.ts";
import { startRegistryCluster, streamEnv } from "../harness/stream_env.ts";

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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function streamingFiles(registry: pg.Client, slot = "cdc_egress"): Promise<number> {
  const res = await registry.query(
    "SELECT count(*)::int AS n FROM cdc_registry.file_log WHERE slot_name = $1 AND file_type = 'streaming'",
    [slot],
  );
  return res.rows[0].n;
}

/** A few changes to crm's orders, in separate transactions. */
async function s1Writes(db: pg.Client): Promise<void> {
  for (let i = 0; i < 20; i++) {
    await db.query("UPDATE public.orders SET who = who || '.' WHERE id = $1", [100 + i]);
  }
}

for (const version of testMajors()) {
  Deno.test({
    name:
      `stream rides out two registry restarts (-m immediate) under concurrent writes (PG ${version})`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    await using w = await streamEnv(version, {}, { separateRegistry: true });
    await createMixedTables(w.db, 3000);
    await w.init();
    await using workload = await Workload.start(w.cluster.url(), 0x12 + version, 3000);
    const p = await startStream(w);
    const port = await waitFor("the metrics port", () => metricsPort(p.stderr));
    await w.caughtUp();
    await waitFor("ready", async () => (await get(port, "/readyz")).status === 200);
    assert.equal(metricValue((await get(port, "/metrics")).body, "cdc_registry_up"), 1);

    for (let outage = 1; outage <= 2; outage++) {
      const before = await streamingFiles(w.registry);
      await waitFor(
        "new streaming files before the outage",
        async () => (await streamingFiles(w.registry)) > before,
      );
      await w.registryCluster.stopServer("immediate");
      const stoppedAt = Date.now();
      // The stream notices within its registry poll and the readiness probe follows.
      await waitFor("not ready", async () => (await get(port, "/readyz")).status === 503, 15_000);
      const down = (await get(port, "/metrics")).body;
      assert.equal(metricValue(down, "cdc_registry_up"), 0);
      assert.equal(metricValue(down, "cdc_registry_outages_total"), outage);
      const ready = JSON.parse((await get(port, "/readyz")).body);
      assert.equal(ready.registryUp, false);
      assert.equal((await get(port, "/healthz")).status, 200);
      // The outage itself lasts 6 s: the scenario, not a wait for a condition.
      await sleep(Math.max(0, 6000 - (Date.now() - stoppedAt)));
      const exited = await Promise.race([p.exited(), sleep(0).then(() => null)]);
      assert.equal(exited, null, `stream exited during the outage: ${p.stderr.slice(-2000)}`);
      await workload.check();
      await w.registryCluster.startServer();
      await w.reconnectRegistry();
      await waitFor("ready again", async () => (await get(port, "/readyz")).status === 200, 60_000);
      assert.equal(metricValue((await get(port, "/metrics")).body, "cdc_registry_up"), 1);
    }
    await workload.check();
    await workload.stop();
    await w.caughtUp();
    const metrics = (await get(port, "/metrics")).body;
    assert.equal(metricValue(metrics, "cdc_registry_outages_total"), 2);
    await stopCleanly(p);
    assert.match(p.stderr, /registry unreachable: acknowledgements held, sealed files kept/);

    for (const t of MIXED_TABLES) await w.assertReplayEquals(t.schema, t.table);
    await assertChangesOnce(w, MIXED_TABLES);
    await checkDataDir(w);
    const verify = await runCli(["verify", "--deep"], w.env);
    assert.equal(verify.code, 0, verify.stdout + verify.stderr);
  });

  Deno.test({
    name: `two sources share one registry and one data dir root (PG ${version})`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    // One source cluster with two databases (two sources, two slots) and the
    // same table names in both, one registry cluster, one data root.
    await using w = await streamEnv(version, {}, { separateRegistry: true });
    const root = w.dataDir;
    const sources = ["shop", "crm"].map((db) => ({
      db,
      slot: `cdc_${db}`,
      url: w.cluster.url(db),
      // The worst case of a shared root: crm's data dir nested inside shop's.
      dataDir: db === "shop" ? root : join(root, "cdc_crm"),
      env: {} as Record<string, string>,
      client: null as pg.Client | null,
      process: null as CliProcess | null,
    }));
    for (const s of sources) {
      await w.db.query(`CREATE DATABASE ${s.db}`);
      s.client = await connectTo(s.url);
      await s.client.query(`
        CREATE TABLE public.orders (id int PRIMARY KEY, who text);
        INSERT INTO public.orders SELECT g, '${s.db} ' || g FROM generate_series(1, 200) g;`);
      s.env = {
        ...w.env,
        CDC_SOURCE_URL: s.url,
        CDC_SLOT: s.slot,
        CDC_PUBLICATION: s.slot,
        CDC_DATA_DIR: s.dataDir,
      };
      const init = await runCli(["init"], s.env);
      assert.equal(init.code, 0, init.stderr + init.stdout);
    }
    try {
      for (const s of sources) s.process = new CliProcess(["stream"], s.env);
      // Changes in both while both stream, same keys on purpose.
      for (const s of sources) {
        await waitFor(`the initial export of ${s.slot}`, async () =>
          (await w.registry.query(
            `SELECT 1 FROM cdc_registry.table_state WHERE slot_name = $1
               AND reload_lsn IS NOT NULL AND mode = 'streaming'`,
            [s.slot],
          )).rowCount === 1);
      }
      for (let i = 0; i < 5; i++) {
        for (const s of sources) {
          await s.client!.query(
            `INSERT INTO public.orders SELECT g, '${s.db} new' FROM generate_series($1::int, $1::int + 49) g`,
            [1000 + i * 50],
          );
          await s.client!.query("UPDATE public.orders SET who = who || '+' WHERE id % 7 = $1", [i]);
          await s.client!.query("DELETE FROM public.orders WHERE id = $1", [10 + i]);
        }
      }
      for (const s of sources) {
        const target = (await s.client!.query("SELECT pg_current_wal_insert_lsn()::text AS l"))
          .rows[0].l;
        await waitFor(`${s.slot} to confirm ${target}`, async () =>
          (await w.db.query(
            `SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots
             WHERE slot_name = $2`,
            [target, s.slot],
          )).rows[0]?.ok, 90_000);
      }

      // A third stream pointed at a data dir that belongs to another slot is refused.
      const wrongDir = await runCli(["stream"], {
        ...sources[1].env,
        CDC_DATA_DIR: sources[0].dataDir,
      });
      assert.equal(wrongDir.code, 1);
      assert.match(
        wrongDir.stderr,
        /Cannot stream into data dir ".*": it holds the files of slot "cdc_shop" \(database "shop"\); give each source its own --data-dir/,
      );
      // shop's verify --quarantine and a kill -9 + restart of shop (start-up
      // recovery) while crm streams with open batches under writes: neither
      // touches crm's nested data dir.
      await s1Writes(sources[1].client!);
      const shopVerify = await runCli(["verify", "--quarantine"], sources[0].env);
      assert.equal(shopVerify.code, 0, shopVerify.stdout + shopVerify.stderr);
      await sources[0].process!.stop("SIGKILL");
      await waitFor("shop's backends to exit", async () =>
        (await w.db.query(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'cdc_shop'",
          )).rows[0].active_pid === null &&
        (await w.registry.query(
            `SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory'
             AND objid = hashtext('cdc_shop')::oid`,
          )).rows[0].n === 0);
      sources[0].process = new CliProcess(["stream"], sources[0].env);
      await waitFor(
        "shop to stream again",
        () => sources[0].process!.stderr.includes('"msg":"streaming"'),
      );
      await s1Writes(sources[1].client!);
      for (const s of sources) {
        const target = (await s.client!.query("SELECT pg_current_wal_insert_lsn()::text AS l"))
          .rows[0].l;
        await waitFor(`${s.slot} to confirm ${target}`, async () =>
          (await w.db.query(
            `SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots
             WHERE slot_name = $2`,
            [target, s.slot],
          )).rows[0]?.ok, 90_000);
      }
      // A slot name of one source cannot be taken by a source on another server that
      // shares the registry (on the same server the slot check already refuses it).
      await using otherServer = await startCluster({ version });
      const wrongSlot = await runCli(["init"], {
        ...sources[1].env,
        CDC_SOURCE_URL: otherServer.url(),
        CDC_SLOT: "cdc_shop",
        CDC_DATA_DIR: join(root, "other"),
      });
      assert.equal(wrongSlot.code, 2, wrongSlot.stdout + wrongSlot.stderr);
      // Refused before anything changed on that server.
      const otherDb = await connectTo(otherServer.url());
      const touched = await otherDb.query(
        `SELECT to_regnamespace('cdc_registry') IS NOT NULL AS schema,
                (SELECT count(*)::int FROM pg_replication_slots) AS slots`,
      );
      await otherDb.end();
      assert.deepEqual(touched.rows[0], { schema: false, slots: 0 });
      assert.match(
        wrongSlot.stderr,
        /^error: Cannot use slot "cdc_shop": the registry records it for another source \(database "shop", system identifier \d+\); give each source its own --slot, or check --source$/m,
      );

      for (const s of sources) assert.equal(await s.process!.stop("SIGTERM"), 0, s.process!.stderr);
      for (const s of sources) {
        // Each source's files replay to its own table.
        const replayed = await replayedRows(w.registry, s.dataDir, "public", "orders", s.slot);
        const live = await liveRows(s.client!, "public", "orders");
        assert.equal(replayed.length, live.length);
        assert.deepEqual(replayed, live, `replay of ${s.slot}`);
        assert.ok(live.some((r) => r.includes(`${s.db} new`)));
        const verify = await runCli(["verify", "--deep", "--quarantine"], s.env);
        assert.equal(verify.code, 0, verify.stdout + verify.stderr);
        const status = await runCli(["status", "--json"], s.env);
        assert.equal(status.code, 0, status.stderr);
        const doc = JSON.parse(status.stdout);
        assert.equal(doc.slot.name, s.slot);
        assert.deepEqual(doc.tables.map((t: { name: string }) => t.name), ["public.orders"]);
        assert.ok(doc.tables[0].files >= 2);
        const other = sources.find((o) => o !== s)!;
        assert.deepEqual(doc.other_slots, [{ slot: other.slot, database: other.db }]);
        const text = await runCli(["status"], s.env);
        assert.match(text.stdout, new RegExp(`other slots in this registry: ${other.slot}`));
      }
      // verify --quarantine of one source moved nothing of the other.
      const top = await Array.fromAsync(Deno.readDir(root)).then((es) =>
        es.map((e) => e.name).sort()
      );
      // No .quarantine: nothing of crm's was taken for shop's orphan.
      assert.deepEqual(top.filter((n) => n !== ".spool"), [
        ".cdc-egress-owner.json",
        "cdc_crm",
        "public.orders",
      ]);
      const rows = await w.registry.query(
        "SELECT slot_name, count(*)::int AS n FROM cdc_registry.file_log GROUP BY 1 ORDER BY 1",
      );
      assert.deepEqual(rows.rows.map((r) => r.slot_name), ["cdc_crm", "cdc_shop"]);
    } finally {
      for (const s of sources) {
        await s.process?.stop("SIGKILL");
        await s.client?.end().catch(() => {});
      }
    }
  });

  Deno.test({
    name:
      `status, verify and reload say in one line that the registry is unreachable (PG ${version})`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    await using w = await streamEnv(version, {}, { separateRegistry: true });
    await w.db.query("CREATE TABLE public.t (id int PRIMARY KEY)");
    await w.init();
    await w.registryCluster.stopServer("immediate");
    const port = new URL(w.env.CDC_REGISTRY_URL).port;
    for (const args of [["status"], ["status", "--json"], ["verify"], ["reload", "public.t"]]) {
      const r = await runCli(args, w.env);
      assert.notEqual(r.code, 0, `${args.join(" ")} exited 0`);
      const lines = r.stderr.trim().split("\n");
      assert.equal(lines.length, 1, `${args.join(" ")}: ${r.stderr}`);
      assert.match(
        lines[0],
        new RegExp(
          `Cannot connect to registry PostgreSQL at 127\\.0\\.0\\.1:${port}/postgres: connection refused`,
        ),
      );
      assert.ok(!r.stderr.includes(w.registryCluster.password), "password in the output");
    }
  });

  Deno.test({
    name:
      `init sets up source and registry and names the side that lacks a privilege (PG ${version})`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    await using w = await streamEnv(version, {}, { separateRegistry: false });
    await using registry = await startRegistryCluster(version);
    const admin = await connectTo(registry.url());
    try {
      await admin.query("CREATE ROLE reg LOGIN PASSWORD 'regpw'");
      await w.db.query("CREATE TABLE public.t (id int PRIMARY KEY)");
      const env = { ...w.env, CDC_REGISTRY_URL: registry.url("postgres", "reg", "regpw") };
      const denied = await runCli(["init"], env);
      assert.equal(denied.code, 1, denied.stdout + denied.stderr);
      assert.equal(
        denied.stderr.trim(),
        `error: Cannot set up the registry at 127.0.0.1:${registry.port}/postgres: role "reg" needs CREATE on database "postgres" (GRANT CREATE ON DATABASE "postgres" TO "reg")`,
      );
      assert.ok(!denied.stderr.includes("regpw"));
      // Nothing was half done on the source either.
      const slots = await w.db.query("SELECT count(*)::int AS n FROM pg_replication_slots");
      assert.equal(slots.rows[0].n, 0);

      await admin.query('GRANT CREATE ON DATABASE postgres TO "reg"');
      const ok = await runCli(["init"], env);
      assert.equal(ok.code, 0, ok.stdout + ok.stderr);
      assert.match(
        ok.stdout,
        /apply source migrations 1, 2, [\d, ]+ \(schema cdc_registry in the source\)/,
      );
      assert.match(
        ok.stdout,
        /apply registry migrations 1, 2, [\d, ]+ \(schema cdc_registry in the registry\)/,
      );
      // Each side holds only its part: DDL capture in the source, the rest in the registry.
      const src = await w.db.query(
        `SELECT to_regclass('cdc_registry.ddl_history') IS NOT NULL AS ddl,
                to_regclass('cdc_registry.file_log') IS NOT NULL AS files`,
      );
      assert.deepEqual(src.rows[0], { ddl: true, files: false });
      const reg = await admin.query(
        `SELECT to_regclass('cdc_registry.ddl_history') IS NOT NULL AS ddl,
                to_regclass('cdc_registry.file_log') IS NOT NULL AS files`,
      );
      assert.deepEqual(reg.rows[0], { ddl: false, files: true });
      const again = await runCli(["init"], env);
      assert.equal(again.code, 0, again.stderr);
      assert.doesNotMatch(again.stdout, /apply .* migrations/);
    } finally {
      await admin.end().catch(() => {});
    }
  });
}
