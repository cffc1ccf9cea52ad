/**
 * The initial export of many small tables (issue 9): workers export many
 * tables per snapshot transaction and the stream registers many exports per
 * registry transaction. An adversary drops, renames, swaps and writes to
 * tables while the export runs; `kill -9` hits the stream in the middle of
 * it. Afterwards every table that exists has exactly one full_reload (none
 * lost, none exported twice), the data dir matches the registry, and
 * `verify --deep` replays every table equal to the source.
 *
 * `CDC_TEST_MANY_TABLES` sets the table count (default 1000).
 */

import assert from "node:assert/strict";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { type CliProcess, runCli, waitFor } from "../harness/cli.ts";
import {
  assertNoStraddle,
  checkDataDir,
  connectTo,
  prng,
  startStream,
  stopCleanly,
  waitForBackendsGone,
} from "../harness/export_world.ts";
import { layoutSuffix, type StreamEnv, streamEnv } from "../harness/stream_env.ts";

const TABLES = Number(Deno.env.get("CDC_TEST_MANY_TABLES") ?? 1000);
const OPTS = { sanitizeOps: false, sanitizeResources: false };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `m_00042`. */
function tableName(i: number): string {
  return `m_${String(i).padStart(5, "0")}`;
}

/** Creates `n` small tables `public.m_*` with two rows each (before init). */
async function createTables(db: pg.Client, n: number): Promise<void> {
  for (let i = 0; i < n; i += 250) {
    const sql: string[] = [];
    for (let k = i; k < Math.min(n, i + 250); k++) {
      const t = `public.${tableName(k)}`;
      sql.push(`CREATE TABLE ${t} (id int PRIMARY KEY, v text);
                INSERT INTO ${t} VALUES (1, 'one ${k}'), (2, NULL);`);
    }
    await db.query(sql.join("\n"));
  }
}

/**
 * Writes to random tables of `tables` (that still exist) until stopped;
 * some transactions roll back. Modest on purpose: open batches of thousands
 * of tables are the stream write path's business, not the export's.
 */
function writer(url: string, seed: number, tables: string[]) {
  let stop = false;
  let committed = 0;
  const random = prng(seed);
  let lost: unknown = null;
  const run = (async () => {
    const db = await connectTo(url);
    // Nothing here may end this session: say so if something does.
    db.on("error", (error) => lost ??= error);
    try {
      let next = 100;
      while (!stop && lost === null) {
        const picks = [0, 1, 2].map(() => tables[Math.floor(random() * tables.length)]);
        try {
          await db.query("BEGIN");
          for (const t of picks) {
            const r = random();
            if (r < 0.4) await db.query(`INSERT INTO public.${t} VALUES ($1, 'w')`, [next++]);
            else if (r < 0.8) {
              await db.query(`UPDATE public.${t} SET v = coalesce(v, '') || '+' WHERE id = 1`);
            } else await db.query(`DELETE FROM public.${t} WHERE id = 2`);
          }
          if (random() < 0.1) await db.query("ROLLBACK");
          else {
            await db.query("COMMIT");
            committed++;
          }
        } catch {
          // A table the adversary dropped or renamed meanwhile: fine.
          await db.query("ROLLBACK").catch(() => {});
        }
        await sleep(10);
      }
    } finally {
      await db.end().catch(() => {});
    }
  })();
  return {
    async stop(): Promise<number> {
      stop = true;
      await run;
      if (lost !== null) throw new Error(`the writer's session ended: ${lost}`);
      return committed;
    },
    async [Symbol.asyncDispose]() {
      stop = true;
      await run.catch(() => {});
    },
  };
}

/** Runs `fn`; on failure, adds the stream's log lines that are not routine to the error. */
async function explained<T>(p: CliProcess, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    const routine = /"(batch registered|export registered|export progress)"/;
    const lines = p.stderr.split("\n").filter((l) => l && !routine.test(l));
    throw new Error(`${(error as Error).message}\nstream log:\n${lines.slice(-60).join("\n")}`);
  }
}

/** Throws if the stream process has exited. */
async function assertRunning(p: CliProcess): Promise<void> {
  const exited = await Promise.race([p.exited(), sleep(0).then(() => null)]);
  if (exited !== null) throw new Error(`stream exited with ${exited}: ${p.stderr.slice(-3000)}`);
}

/** Registered full_reload files per relation. */
async function exportsPerRelation(w: StreamEnv): Promise<Map<number, number>> {
  const res = await w.registry.query(
    `SELECT relation_oid::int8 AS oid, count(*)::int AS n FROM cdc_registry.file_log
     WHERE file_type = 'full_reload' GROUP BY 1`,
  );
  return new Map(res.rows.map((r) => [Number(r.oid), r.n]));
}

/** The user tables that exist now: `public.m_*` by OID. */
async function liveTables(w: StreamEnv): Promise<Map<number, string>> {
  const res = await w.db.query(
    `SELECT c.oid::int8 AS oid, c.relname FROM pg_class c
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND c.relname LIKE 'm\\_%'`,
  );
  return new Map(res.rows.map((r) => [Number(r.oid), r.relname]));
}

/** verify --deep (replay of every table against the source) exits 0. */
async function assertVerifyDeep(w: StreamEnv): Promise<void> {
  const r = await runCli(["verify", "--deep"], w.env);
  assert.equal(r.code, 0, `verify --deep: ${r.stdout.slice(-3000)}${r.stderr.slice(-3000)}`);
}

for (const version of testMajors()) {
  Deno.test({
    ...OPTS,
    name:
      `initial export: ${TABLES} small tables while tables are dropped, renamed, swapped and written (PG ${version}${layoutSuffix()})`,
  }, async () => {
    const started = Date.now();
    await using w = await streamEnv(version);
    await createTables(w.db, TABLES);
    await w.init();
    const names = Array.from({ length: TABLES }, (_, i) => tableName(i));
    // The adversary works on the tables exported last (the queue goes by
    // name among equal sizes), so its DDL meets exports that are under way.
    const dropped = names.filter((_, i) => i % 97 === 50);
    const renamed = names.filter((_, i) => i % 89 === 40);
    const swapped = names.filter((_, i) => i % 83 === 30 && i + 1 < TABLES && i % 97 !== 49);
    const quiet = names.filter((n) => ![...dropped, ...renamed].includes(n));
    const p = await startStream(w, { CDC_EXPORT_WORKERS: "3" });
    await using writes = writer(
      w.cluster.url(),
      0x9a + version,
      quiet.filter((_, i) => i % 5 === 0),
    );
    await waitFor("the export to start", () => {
      return p.stderr.includes('"export started"');
    }, 60_000);
    const ddl = await connectTo(w.cluster.url());
    try {
      for (const t of [...dropped].reverse()) await ddl.query(`DROP TABLE public.${t}`);
      for (const t of [...renamed].reverse()) {
        await ddl.query(`ALTER TABLE public.${t} RENAME TO ${t}_renamed`);
      }
      for (const t of [...swapped].reverse()) {
        const other = tableName(Number(t.slice(2)) + 1);
        await ddl.query(`BEGIN;
          ALTER TABLE public.${t} RENAME TO swap_tmp;
          ALTER TABLE public.${other} RENAME TO ${t};
          ALTER TABLE public.swap_tmp RENAME TO ${other};
          COMMIT`);
      }
    } finally {
      await ddl.end();
    }
    const duringExport = await w.registry.query(
      "SELECT count(*)::int AS n FROM cdc_registry.file_log WHERE file_type = 'full_reload'",
    );
    await explained(p, () => w.caughtUp(120_000));
    const transactions = await writes.stop();
    await explained(p, () => w.caughtUp(120_000));
    await assertRunning(p);
    await stopCleanly(p);

    // Every table that exists has its export; one only, unless a swap gave
    // its name to an already exported relation (a new history, DESIGN §3).
    const live = await liveTables(w);
    const perRelation = await exportsPerRelation(w);
    const swapNames = new Set(swapped.flatMap((t) => [t, tableName(Number(t.slice(2)) + 1)]));
    const wrong: string[] = [];
    for (const [oid, name] of live) {
      const n = perRelation.get(oid) ?? 0;
      if (n === 1 || (n === 2 && swapNames.has(name))) continue;
      wrong.push(`${name} (oid ${oid}): ${n} full_reload files`);
    }
    assert.deepEqual(wrong, [], "tables without exactly one export");
    assert.equal(live.size, TABLES - dropped.length);
    const modes = await w.registry.query(
      `SELECT relation_oid::int8 AS oid, mode FROM cdc_registry.table_state
       WHERE mode <> 'streaming'`,
    );
    for (const r of modes.rows) {
      assert.ok(!live.has(Number(r.oid)), `live table ${live.get(Number(r.oid))} is ${r.mode}`);
    }
    await checkDataDir(w);
    await assertNoStraddle(w.registry);
    await assertVerifyDeep(w);
    const retried = p.stderr.split("\n").filter((l) => l.includes("export failed")).length;
    console.log(
      `PG ${version}: ${TABLES} tables, ${duringExport.rows[0].n} exported when the DDL ended, ` +
        `${retried} export attempts failed and were retried, ${transactions} transactions, ` +
        `${Math.round((Date.now() - started) / 1000)} s`,
    );
  });

  Deno.test({
    ...OPTS,
    name:
      `initial export: kill -9 in the middle of a ${TABLES}-table export, then restart (PG ${version}${layoutSuffix()})`,
  }, async () => {
    const started = Date.now();
    await using w = await streamEnv(version);
    await createTables(w.db, TABLES);
    await w.init();
    const names = Array.from({ length: TABLES }, (_, i) => tableName(i));
    await using writes = writer(
      w.cluster.url(),
      0x9b + version,
      names.filter((_, i) => i % 10 === 3),
    );
    const env = { CDC_EXPORT_WORKERS: "2" };
    let p = await startStream(w, env);
    // Kill once some exports are registered and others are not.
    let atKill = 0;
    await waitFor("part of the export to be registered", async () => {
      await assertRunning(p);
      const res = await w.registry.query(
        "SELECT count(*)::int AS n FROM cdc_registry.file_log WHERE file_type = 'full_reload'",
      );
      atKill = res.rows[0].n;
      return atKill >= TABLES / 10;
    }, 120_000);
    await p.stop("SIGKILL");
    await waitForBackendsGone(w.db, w.registry);
    const afterKill = Number(
      (await w.registry.query(
        "SELECT count(*)::int AS n FROM cdc_registry.file_log WHERE file_type = 'full_reload'",
      )).rows[0].n,
    );
    assert.ok(afterKill < TABLES, `the export had finished before the kill (${afterKill})`);

    p = await startStream(w, env);
    const restarted = p;
    await explained(restarted, () => w.caughtUp(120_000));
    const transactions = await writes.stop();
    await explained(restarted, () => w.caughtUp(120_000));
    await stopCleanly(p);

    const perRelation = await exportsPerRelation(w);
    const live = await liveTables(w);
    assert.equal(live.size, TABLES);
    const wrong = [...live].filter(([oid]) => perRelation.get(oid) !== 1)
      .map(([oid, name]) => `${name}: ${perRelation.get(oid) ?? 0}`);
    assert.deepEqual(wrong, [], "tables without exactly one export");
    assert.equal(perRelation.size, TABLES);
    await checkDataDir(w);
    await assertNoStraddle(w.registry);
    await assertVerifyDeep(w);
    console.log(
      `PG ${version}: killed with ${afterKill} of ${TABLES} exports registered, ` +
        `${transactions} transactions, ${Math.round((Date.now() - started) / 1000)} s`,
    );
  });
}
