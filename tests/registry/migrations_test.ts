/**
 * Migrations per side: an installation made before migrations had sides
 * (one `schema_migrations` row per version, every part applied) upgrades in
 * place through `init`, in both layouts.
 */

import assert from "node:assert/strict";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { MIGRATIONS } from "../../src/registry/migrations.ts";
import { runCli } from "../harness/cli.ts";
import { connectTo } from "../harness/export_world.ts";
import { startRegistryCluster, streamEnv } from "../harness/stream_env.ts";

/** What `init` did before sides existed: versions 1 and 2, both parts, one row each. */
async function oldStyleInstall(db: pg.Client): Promise<void> {
  await db.query("CREATE SCHEMA cdc_registry");
  await db.query(`CREATE TABLE cdc_registry.schema_migrations (
    version integer PRIMARY KEY, name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())`);
  for (const m of MIGRATIONS.filter((m) => m.version <= 2)) {
    await db.query((m.sql ?? "") + (m.source ?? ""));
    await db.query("INSERT INTO cdc_registry.schema_migrations VALUES ($1, $2)", [
      m.version,
      m.name,
    ]);
  }
}

async function tables(db: pg.Client): Promise<string[]> {
  const res = await db.query(
    `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'cdc_registry' AND c.relkind = 'r' ORDER BY 1`,
  );
  return res.rows.map((r) => r.relname);
}

async function sides(db: pg.Client): Promise<string[]> {
  const res = await db.query(
    "SELECT version || ':' || side AS v FROM cdc_registry.schema_migrations ORDER BY version, side",
  );
  return res.rows.map((r) => r.v);
}

const LATER = MIGRATIONS.filter((m) => m.version > 2).map((m) => m.version);

for (const version of testMajors()) {
  Deno.test(`init upgrades a registry in the source made before migrations had sides (PG ${version})`, async () => {
    await using w = await streamEnv(version, {}, { separateRegistry: false });
    await w.db.query("CREATE TABLE public.t (id int PRIMARY KEY)");
    await oldStyleInstall(w.db);
    await w.db.query(
      "INSERT INTO cdc_registry.ddl_history (command_tag, command) VALUES ('x', 'y')",
    );
    const r = await runCli(["init"], w.env);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, new RegExp(`apply registry migrations ${LATER.join(", ")} \\(`));
    assert.deepEqual(await sides(w.db), [
      "1:both",
      "2:both",
      ...LATER.flatMap((v) => [`${v}:registry`, `${v}:source`]),
    ]);
    assert.ok((await tables(w.db)).includes("slot_owner"));
    // The DDL history survived, and a second init has nothing to do.
    const kept = await w.db.query(
      "SELECT count(*)::int AS n FROM cdc_registry.ddl_history WHERE command_tag = 'x'",
    );
    assert.equal(kept.rows[0].n, 1);
    const again = await runCli(["init"], w.env);
    assert.doesNotMatch(again.stdout, /apply .*migrations/);
    const status = await runCli(["status"], w.env);
    assert.equal(status.code, 0, status.stderr);
  });

  Deno.test(`init upgrades a separate registry made before migrations had sides (PG ${version})`, async () => {
    await using w = await streamEnv(version, {}, { separateRegistry: false });
    await using registry = await startRegistryCluster(version);
    const reg = await connectTo(registry.url());
    try {
      await w.db.query("CREATE TABLE public.t (id int PRIMARY KEY)");
      // The old init applied every migration on both databases.
      await oldStyleInstall(w.db);
      await oldStyleInstall(reg);
      const env = { ...w.env, CDC_REGISTRY_URL: registry.url() };
      const r = await runCli(["init"], env);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, new RegExp(`apply source migrations ${LATER.join(", ")} \\(`));
      assert.match(r.stdout, new RegExp(`apply registry migrations ${LATER.join(", ")} \\(`));
      assert.deepEqual(await sides(w.db), ["1:both", "2:both", ...LATER.map((v) => `${v}:source`)]);
      assert.deepEqual(await sides(reg), [
        "1:both",
        "2:both",
        ...LATER.map((v) => `${v}:registry`),
      ]);
      // New registry tables go to the registry only.
      assert.ok(!(await tables(w.db)).includes("slot_owner"));
      assert.ok((await tables(reg)).includes("slot_owner"));
      const again = await runCli(["init"], env);
      assert.doesNotMatch(again.stdout, /apply .*migrations/);
      const status = await runCli(["status"], env);
      assert.equal(status.code, 0, status.stderr);
    } finally {
      await reg.end().catch(() => {});
    }
  });
}
