import assert from "node:assert/strict";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { runCli } from "../harness/cli.ts";
import { streamEnv } from "../harness/stream_env.ts";

async function publishedTables(
  w: { db: { query: (sql: string) => Promise<{ rows: { t: string }[] }> } },
) {
  const res = await w.db.query(
    `SELECT schemaname || '.' || tablename AS t FROM pg_publication_tables
     WHERE pubname = 'cdc_egress' ORDER BY 1`,
  );
  return res.rows.map((r) => r.t);
}

for (const version of testMajors()) {
  Deno.test(`init --dry-run prints the plan and changes nothing (PG ${version})`, async () => {
    await using w = await streamEnv(version);
    await w.db.query("CREATE TABLE orders (id int PRIMARY KEY)");
    const r = await runCli(["init", "--dry-run"], w.env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /dry run: would/);
    assert.match(r.stdout, /apply registry migrations/);
    assert.match(r.stdout, /create publication "cdc_egress"/);
    assert.match(r.stdout, /create logical replication slot "cdc_egress"/);
    const state = (await w.db.query(
      `SELECT to_regnamespace('cdc_registry') IS NULL AS no_schema,
              NOT EXISTS (SELECT 1 FROM pg_replication_slots) AS no_slot,
              NOT EXISTS (SELECT 1 FROM pg_publication) AS no_pub,
              NOT EXISTS (SELECT 1 FROM pg_event_trigger) AS no_trigger`,
    )).rows[0];
    assert.deepEqual(state, { no_schema: true, no_slot: true, no_pub: true, no_trigger: true });
  });

  Deno.test(`init is idempotent and keeps the slot (PG ${version})`, async () => {
    await using w = await streamEnv(version);
    await w.db.query("CREATE TABLE orders (id int PRIMARY KEY)");
    await w.init();
    const slot = (await w.db.query(
      "SELECT restart_lsn::text AS l FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
    )).rows[0].l;
    await w.db.query("CREATE TABLE customers (id int PRIMARY KEY)");
    const again = await runCli(["init"], w.env);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /slot "cdc_egress" exists \(kept\)/);
    assert.doesNotMatch(again.stdout, /apply registry migrations/);
    assert.deepEqual(await publishedTables(w), [
      "cdc_registry.ddl_history",
      "public.customers",
      "public.orders",
    ]);
    const after = (await w.db.query(
      "SELECT restart_lsn::text AS l, count(*) OVER () AS n FROM pg_replication_slots",
    )).rows[0];
    assert.equal(after.l, slot);
    assert.equal(Number(after.n), 1);
    const dry = await runCli(["init", "--dry-run"], w.env);
    assert.equal(dry.code, 0, dry.stderr);
    assert.doesNotMatch(dry.stdout, /create /);
  });

  Deno.test(`init selects tables by pattern and leaves out keyless tables without replica identity (PG ${version})`, async () => {
    await using w = await streamEnv(version);
    await w.db.query(`
      CREATE SCHEMA sales;
      CREATE TABLE public.orders (id int PRIMARY KEY);
      CREATE TABLE public.tmp_scratch (id int PRIMARY KEY);
      CREATE TABLE sales.items (id int PRIMARY KEY);
      CREATE TABLE sales.notes (body text);
      CREATE TABLE sales.full_log (body text);
      ALTER TABLE sales.full_log REPLICA IDENTITY FULL;
      INSERT INTO sales.notes VALUES ('a'), ('b');`);
    const r = await runCli(
      ["init", "--tables", "public.*,sales.*", "--exclude", "public.tmp_*"],
      w.env,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      /warning: "sales"\."notes" has no primary key and REPLICA IDENTITY DEFAULT or NOTHING.*ALTER TABLE "sales"\."notes" REPLICA IDENTITY FULL/,
    );
    assert.deepEqual(await publishedTables(w), [
      "cdc_registry.ddl_history",
      "public.orders",
      "sales.full_log",
      "sales.items",
    ]);
    // The user's writes on the keyless table keep working.
    await w.db.query("UPDATE sales.notes SET body = 'c' WHERE body = 'a'");
    await w.db.query("DELETE FROM sales.notes WHERE body = 'b'");
  });
}
