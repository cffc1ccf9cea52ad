/**
 * Registry sessions against a real cluster: the session settings of each
 * kind of connection (`connect()`), the per-slot uniqueness of file_log paths
 * (migration 6), and the takeover of a slot lock whose holder is dead.
 */

import assert from "node:assert/strict";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { startCluster, testMajors } from "../../scripts/embedded_postgres.ts";
import { applyMigrations, BOTH_SIDES } from "../../src/registry/migrations.ts";
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
