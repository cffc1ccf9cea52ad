/**
 * Registry sessions against a real cluster: the session settings of each
 * kind of connection (`connect()`), the per-slot uniqueness of file_log paths
 * (migration 6), the file totals status reads (migration 7), and the takeover of a slot lock whose holder is dead.
 */

import assert from "node:assert/strict";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { startCluster, testMajors } from "../../scripts/embedded_postgres.ts";
import { applyMigrations, BOTH_SIDES, MIGRATIONS } from "../../src/registry/migrations.ts";
import { Registry, REGISTRY_APPLICATION_NAME } from "../../src/registry/registry.ts";
import { connect } from "../../src/source/connect.ts";

async function settings(client: pg.Client, names: string[]): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const n of names) out[n] = (await client.query(`SHOW ${n}`)).rows[0][n];
  return out;
}

const KEEPALIVES = ["tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count"];

for (const version of testMajors()) {
  Deno.test(`connect() session settings per connection kind (PG ${version})`, async () => {
    await using cluster = await startCluster({ version });
    const url = cluster.url();
    const registry = await connect(url, { registry: true, applicationName: "t/registry" });
    const source = await connect(url);
    const replication = await connect(url, { replication: true });
    try {
      assert.deepEqual(
        await settings(registry, ["statement_timeout", "synchronous_commit", ...KEEPALIVES]),
        {
          statement_timeout: "1min",
          synchronous_commit: "on",
          tcp_keepalives_idle: "20",
          tcp_keepalives_interval: "10",
          tcp_keepalives_count: "3",
        },
      );
      // The cluster runs with synchronous_commit = off: only the registry pins it on.
      assert.deepEqual(await settings(source, ["statement_timeout", "synchronous_commit"]), {
        statement_timeout: "0",
        synchronous_commit: "off",
      });
      assert.equal((await settings(source, KEEPALIVES)).tcp_keepalives_idle, "20");
      assert.equal((await settings(replication, ["statement_timeout"])).statement_timeout, "0");
      assert.equal((await settings(replication, KEEPALIVES)).tcp_keepalives_count, "3");
    } finally {
      for (const c of [registry, source, replication]) await c.end().catch(() => {});
    }
  });

  Deno.test(`migration 6 makes file_log paths unique per slot (PG ${version})`, async () => {
    await using cluster = await startCluster({ version });
    const db = await connect(cluster.url());
    try {
      await applyMigrations(db, BOTH_SIDES);
      const insert = (slot: string) =>
        db.query(
          `INSERT INTO cdc_registry.file_log (slot_name, schema_name, table_name, table_dir,
             batch_ts, path, file_type, start_lsn, end_lsn, row_count, byte_size, sha256)
           VALUES ($1, 'public', 't', 'public.t', '20260101T000000.000Z',
                   'public.t/20260101T000000.000Z/streaming.csv.gz', 'streaming',
                   '0/1', '0/2', 1, 10, 'x')`,
          [slot],
        );
      await insert("slot_a");
      await insert("slot_b");
      await assert.rejects(insert("slot_a"), /file_log_slot_path_key/);
      // Applying again changes nothing.
      assert.deepEqual(await applyMigrations(db, BOTH_SIDES), []);
    } finally {
      await db.end();
    }
  });

  Deno.test(`migration 7 fills file_totals from existing files and keeps it on insert, update, delete (PG ${version})`, async () => {
    await using cluster = await startCluster({ version });
    const db = await connect(cluster.url());
    try {
      // A registry at migration 6 with files, as a deployment upgrading has.
      await db.query("CREATE SCHEMA cdc_registry");
      await db.query(`CREATE TABLE cdc_registry.schema_migrations (version integer NOT NULL,
        name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
        side text NOT NULL DEFAULT 'both')`);
      for (const m of MIGRATIONS.filter((m) => m.version <= 6)) {
        await db.query((m.source ?? "") + (m.sql ?? ""));
        await db.query(
          "INSERT INTO cdc_registry.schema_migrations (version, name) VALUES ($1, $2)",
          [
            m.version,
            m.name,
          ],
        );
      }
      const insert = (slot: string, table: string, from: number, to: number) =>
        db.query(
          `INSERT INTO cdc_registry.file_log (slot_name, schema_name, table_name, table_dir,
             batch_ts, path, file_type, start_lsn, end_lsn, row_count, byte_size, sha256)
           SELECT $1, 'public', $2, 'public.' || $2, '20260101T000000.000Z',
                  'public.' || $2 || '/' || g || '/streaming.csv.gz', 'streaming',
                  '0/1', '0/2', g, 10 * g, 'x'
           FROM generate_series($3::int, $4::int) g`,
          [slot, table, from, to],
        );
      await insert("a", "t", 1, 10);
      await insert("a", "u", 1, 3);
      await insert("b", "t", 1, 2);
      // 7 and every later migration.
      assert.equal((await applyMigrations(db, BOTH_SIDES))[0], 7);
      // file_totals equals the aggregate over file_log, whatever happened to file_log.
      const check = async () => {
        const totals = await db.query(
          `SELECT slot_name, table_name, file_count::int, row_count::int, byte_size::int
           FROM cdc_registry.file_totals ORDER BY 1, 2`,
        );
        const expected = await db.query(
          `SELECT slot_name, table_name, count(*)::int AS file_count, sum(row_count)::int AS row_count,
                  sum(byte_size)::int AS byte_size
           FROM cdc_registry.file_log GROUP BY 1, 2 ORDER BY 1, 2`,
        );
        assert.deepEqual(totals.rows, expected.rows);
        return totals.rows.length;
      };
      assert.equal(await check(), 3);
      await insert("a", "t", 11, 20);
      await insert("b", "v", 1, 1);
      assert.equal(await check(), 4);
      await db.query("UPDATE cdc_registry.file_log SET table_name = 'w' WHERE table_name = 'u'");
      await db.query(
        "UPDATE cdc_registry.file_log SET row_count = row_count + 1 WHERE slot_name = 'b'",
      );
      assert.equal(await check(), 4);
      await db.query("DELETE FROM cdc_registry.file_log WHERE slot_name = 'b'");
      assert.equal(await check(), 2);
      // A failed insert (a duplicate path) leaves no trace in the totals.
      await assert.rejects(insert("a", "t", 5, 25), /file_log_slot_path_key/);
      assert.equal(await check(), 2);
      await db.query("TRUNCATE cdc_registry.file_log");
      assert.equal(await check(), 0);
    } finally {
      await db.end();
    }
  });

  Deno.test(`Registry.lockSlot() takes over only a dead-looking holder (PG ${version})`, async (t) => {
    await using cluster = await startCluster({ version });
    const url = cluster.url();
    const admin = await connect(url);
    await applyMigrations(admin, BOTH_SIDES);
    const holderClient = (applicationName: string) =>
      connect(url, { registry: true, applicationName });
    // The registry keeps its connection private; the test needs it to play dead.
    const clients = new Map<Registry, pg.Client>();
    const registryOf = async () => {
      const client = await holderClient(REGISTRY_APPLICATION_NAME);
      const registry = new Registry(client, "s1");
      clients.set(registry, client);
      return registry;
    };
    const clientOf = (r: Registry) => clients.get(r)!;
    const inactive = () => Promise.resolve(false);
    try {
      await t.step("an idle registry session with the slot inactive is terminated", async () => {
        const dead = await registryOf();
        assert.equal(await dead.lockSlot(), null);
        const deadPid = (await clientOf(dead).query("SELECT pg_backend_pid() AS p")).rows[0].p;
        const waited: number[] = [];
        const taken: number[] = [];
        const live = await registryOf();
        const started = Date.now();
        const holder = await live.lockSlot({
          slotActive: inactive,
          staleAfterMs: 1500,
          onWait: (pid) => waited.push(pid),
          onTakeOver: (pid) => taken.push(pid),
        });
        assert.equal(holder, null);
        assert.ok(Date.now() - started >= 1000, "took over before the grace period");
        assert.deepEqual(waited, [deadPid]);
        assert.deepEqual(taken, [deadPid]);
        await assert.rejects(clientOf(dead).query("SELECT 1"));
        await clientOf(dead).end().catch(() => {});
        await clientOf(live).end();
      });

      await t.step("a holder is left alone while the slot has a walsender", async () => {
        const first = await registryOf();
        assert.equal(await first.lockSlot(), null);
        const firstPid = (await clientOf(first).query("SELECT pg_backend_pid() AS p")).rows[0].p;
        const second = await registryOf();
        const holder = await second.lockSlot({
          slotActive: () => Promise.resolve(true),
          staleAfterMs: 0,
        });
        assert.equal(holder, firstPid);
        assert.equal((await clientOf(first).query("SELECT 1 AS one")).rows[0].one, 1);
        // Without a way to see the slot (registry elsewhere), never taken over.
        assert.equal(await second.lockSlot({ staleAfterMs: 0 }), firstPid);
        await clientOf(first).end();
        await clientOf(second).end();
      });

      await t.step(
        "a holder of another application or in a transaction is left alone",
        async () => {
          for (const setup of ["other application", "open transaction"]) {
            const client = await holderClient(
              setup === "other application" ? "someone-else" : REGISTRY_APPLICATION_NAME,
            );
            const first = new Registry(client, "s1");
            assert.equal(await first.lockSlot(), null);
            if (setup === "open transaction") await client.query("BEGIN; SELECT 1");
            const pid = (await client.query("SELECT pg_backend_pid() AS p")).rows[0].p;
            await new Promise((r) => setTimeout(r, 300));
            const second = await registryOf();
            assert.equal(
              await second.lockSlot({ slotActive: inactive, staleAfterMs: 100 }),
              pid,
              setup,
            );
            assert.equal((await client.query("SELECT 1 AS one")).rows[0].one, 1, setup);
            await client.end();
            await clientOf(second).end();
          }
        },
      );
    } finally {
      await admin.end();
    }
  });
}
