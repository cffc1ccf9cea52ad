/**
 * `materialize` against real PostgreSQL, on every major of testMajors(): a
 * world with every common type, unchanged TOAST, key changes, a keyless FULL
 * table with duplicates, TRUNCATE and column DDL, changed by concurrent
 * writers during reloads, is materialized into PostgreSQL, csv: and duckdb:
 * and compared with the source; then --as-of an LSN captured under a
 * REPEATABLE READ snapshot, incremental reruns, kill -9 during a run and a
 * rerun, --follow until SIGTERM, and every bad input.
 */

import assert from "node:assert/strict";
import { basename, dirname, join } from "node:path";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { CliProcess, type CliResult, runCli, waitFor } from "../harness/cli.ts";
import {
  canonicalFloats,
  duckdbColumns,
  duckdbRows,
  parquetColumns,
  parquetRows,
} from "../harness/duckdb_rows.ts";
import { startStream, stopCleanly } from "../harness/export_world.ts";
import {
  allRows,
  assertCsvTarget,
  assertSameRows,
  changeRound,
  createTables,
  tableRows,
  TABLES,
} from "../harness/materialize_world.ts";
import { prng } from "../harness/prng.ts";
import { type StreamEnv, streamEnv } from "../harness/stream_env.ts";

function ok(r: CliResult, what: string): CliResult {
  assert.equal(r.code, 0, `${what} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return r;
}

/** Asserts a failed run: the exit code and exactly one `error:` line matching `re`. */
function refused(r: CliResult, code: number, re: RegExp): void {
  assert.equal(r.code, code, `expected exit ${code}, got ${r.code}:\n${r.stdout}\n${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `expected one line:\n${r.stderr}`);
  assert.match(lines[0], /^error: /);
  assert.match(lines[0], re);
}

async function clientOf(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  return c;
}

async function assertPostgresTarget(
  url: string,
  expected: Map<string, string[]>,
  what: string,
): Promise<void> {
  const c = await clientOf(url);
  try {
    for (const [table, rows] of expected) {
      assertSameRows(await tableRows(c, "public", table), rows, `${what} ${table}`);
    }
  } finally {
    await c.end();
  }
}

async function assertDuckdbTarget(
  path: string,
  expected: Map<string, string[]>,
  what: string,
): Promise<void> {
  for (const [table, rows] of expected) {
    const cols = await duckdbColumns(path, "public", table);
    assertSameRows(
      await duckdbRows(path, "public", table),
      canonicalFloats(rows, cols),
      `${what} ${table}`,
    );
  }
}

/** Runs the writer rounds in the background until `stop` resolves. */
function writer(url: string, seed: number, first: number, count: number) {
  const rng = prng(seed);
  return (async () => {
    const c = await clientOf(url);
    try {
      for (let r = first; r < first + count; r++) await changeRound(c, rng, r);
    } finally {
      await c.end();
    }
  })();
}

async function reload(w: StreamEnv, ...tables: string[]): Promise<void> {
  ok(await runCli(["reload", ...tables, "--wait", "--timeout", "2m"], w.env), "reload");
}

function materialize(w: StreamEnv, ...args: string[]): Promise<CliResult> {
  return runCli(["materialize", ...args], w.env);
}

for (const version of testMajors()) {
  Deno.test(`materialize rebuilds tables exactly into postgres, csv and duckdb (PG ${version})`, async (t) => {
    await using w = await streamEnv(version);
    await createTables(w.db);
    await w.db.query("CREATE DATABASE target");
    await w.db.query("CREATE DATABASE target_asof");
    await w.db.query("CREATE DATABASE foreign_db");
    const out = await Deno.makeTempDir({ prefix: "cdc-materialize-" });
    const pgTarget = w.cluster.url("target");
    const duck = join(out, "t.duckdb");
    const csvDir = join(out, "csv");
    await w.init();
    const stream = await startStream(w);
    await w.caughtUp();

    // Changes from two writers while two tables are reloaded.
    const writes = Promise.all([writer(w.cluster.url(), 1, 0, 2)]);
    await reload(w, "public.keys_t", "public.toast_t");
    await writes;
    await w.db.query("UPDATE big_t SET v = v + 1 WHERE id % 10 = 0");

    // The as-of point: no writer runs, so the snapshot and the LSN agree.
    const snap = await clientOf(w.cluster.url());
    await snap.query("BEGIN ISOLATION LEVEL REPEATABLE READ");
    const asOf = (await snap.query("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0].l;
    const atAsOf = await allRows(snap);
    await snap.query("COMMIT");
    await snap.end();

    const more = writer(w.cluster.url(), 2, 2, 2);
    await reload(w, "public.types_t");
    await more;
    await w.caughtUp();

    await t.step("postgres, csv and duckdb equal the source", async () => {
      const source = await allRows(w.db);
      const r = ok(await materialize(w, "--to", pgTarget), "materialize postgres");
      for (const table of TABLES) assert.match(r.stdout, new RegExp(`public\\.${table}: rebuilt`));
      await assertPostgresTarget(pgTarget, source, "postgres");
      ok(await materialize(w, "--to", `csv:${csvDir}`), "materialize csv");
      for (const table of TABLES) await assertCsvTarget(csvDir, w.cluster.url(), table);
      ok(await materialize(w, "--to", `duckdb:${duck}`), "materialize duckdb");
      await assertDuckdbTarget(duck, source, "duckdb");
      // What fits stays native; BC dates, NaN numerics, money, intervals stay VARCHAR.
      const types = new Map(
        (await duckdbColumns(duck, "public", "types_t")).map((c) => [c.name, c.type]),
      );
      assert.equal(types.get("i8"), "BIGINT");
      assert.equal(types.get("ts3"), "TIMESTAMP");
      assert.equal(types.get("tstz"), "TIMESTAMP WITH TIME ZONE");
      assert.equal(types.get("ba"), "BLOB");
      assert.equal(types.get("u"), "UUID");
      assert.equal(types.get("dbc"), "VARCHAR");
      assert.equal(types.get("n"), "VARCHAR");
      assert.equal(types.get("nb"), "VARCHAR");
      assert.equal(types.get("m"), "VARCHAR");
      assert.equal(types.get("iv"), "VARCHAR");
    });

    await t.step("parquet: equals the source, with DuckDB's types", async () => {
      const dir = join(out, "parquet");
      ok(await materialize(w, "--to", `parquet:${dir}`), "materialize parquet");
      const source = await allRows(w.db);
      for (const table of TABLES) {
        const file = join(dir, `public.${table}.parquet`);
        assertSameRows(
          await parquetRows(file),
          canonicalFloats(source.get(table)!, await parquetColumns(file)),
          `parquet ${table}`,
        );
      }
    });

    await t.step("--as-of an LSN in the middle equals the source at that LSN", async () => {
      ok(await materialize(w, "--to", w.cluster.url("target_asof"), "--as-of", asOf), "as-of pg");
      await assertPostgresTarget(w.cluster.url("target_asof"), atAsOf, "as-of postgres");
      const asOfDuck = join(out, "asof.duckdb");
      ok(await materialize(w, "--to", `duckdb:${asOfDuck}`, "--as-of", asOf), "as-of duckdb");
      await assertDuckdbTarget(asOfDuck, atAsOf, "as-of duckdb");
    });

    await t.step("reruns apply only new files and stay exact", async () => {
      const again = ok(await materialize(w, "--to", pgTarget), "rerun");
      assert.doesNotMatch(again.stdout, /rebuilt|updated/);
      await writer(w.cluster.url(), 3, 4, 2);
      await w.caughtUp();
      const source = await allRows(w.db);
      const r = ok(await materialize(w, "--to", pgTarget), "incremental postgres");
      assert.match(r.stdout, /public\.keys_t: updated/);
      await assertPostgresTarget(pgTarget, source, "incremental postgres");
      ok(await materialize(w, "--to", `duckdb:${duck}`), "incremental duckdb");
      await assertDuckdbTarget(duck, source, "incremental duckdb");
      ok(await materialize(w, "--to", `csv:${csvDir}`), "incremental csv");
      for (const table of TABLES) await assertCsvTarget(csvDir, w.cluster.url(), table);
    });

    await t.step("kill -9 during a run, then a rerun, is exact", async () => {
      for (let i = 0; i < 4; i++) await w.db.query("UPDATE big_t SET v = v + 1, pad = md5(pad)");
      await w.caughtUp();
      const source = await allRows(w.db);
      const target = await clientOf(pgTarget);
      try {
        const p = new CliProcess(["materialize", "--to", pgTarget], w.env);
        await waitFor("materialize to write into the target", async () =>
          (await target.query(
            `SELECT count(*)::int AS n FROM pg_stat_activity
             WHERE application_name = 'cdc-egress/materialize' AND state = 'active'`,
          )).rows[0].n > 0);
        await p.stop("SIGKILL");
      } finally {
        await target.end();
      }
      ok(await materialize(w, "--to", pgTarget), "rerun after kill (postgres)");
      await assertPostgresTarget(pgTarget, source, "postgres after kill");

      const d = new CliProcess(["materialize", "--to", `duckdb:${duck}`], w.env);
      // Staged changes: the staging file of a delta, or the parts of a rebuild's.
      await waitFor("materialize to stage changes for duckdb", async () => {
        for await (const e of Deno.readDir(dirname(duck))) {
          if (e.name.startsWith(`${basename(duck)}.cdc-stage.csv`)) return true;
        }
        return false;
      });
      await d.stop("SIGKILL");
      ok(await materialize(w, "--to", `duckdb:${duck}`), "rerun after kill (duckdb)");
      await assertDuckdbTarget(duck, source, "duckdb after kill");
    });

    await t.step("--follow applies new files until SIGTERM", async () => {
      const p = new CliProcess(["materialize", "--to", pgTarget, "--follow"], w.env);
      await writer(w.cluster.url(), 4, 6, 1);
      await w.caughtUp();
      const source = await allRows(w.db);
      await waitFor("follow to catch up", async () => {
        await assertPostgresTarget(pgTarget, source, "follow");
        return true;
      });
      // A second run into the same database is refused while the first one writes.
      refused(await materialize(w, "--to", pgTarget), 1, /another materialize is writing/);
      assert.equal(await p.stop("SIGTERM"), 0, p.stderr);
    });

    await t.step("bad input: one line, non-zero exit, nothing written", async () => {
      refused(await materialize(w, "nope", "--to", pgTarget), 1, /"nope": no such table/);
      refused(
        await materialize(w, "--to", "postgres://postgres@127.0.0.1:1/x"),
        1,
        /127\.0\.0\.1:1/,
      );
      refused(await materialize(w, "--to", "mysql://x"), 2, /expected duckdb:PATH/);
      refused(await materialize(w, "--to", pgTarget, "--as-of", "zz"), 2, /--as-of "zz"/);
      refused(
        await materialize(w, "--to", pgTarget, "--as-of", "0/1"),
        2,
        /as of 0\/1: its oldest full_reload is at/,
      );
      const foreign = w.cluster.url("foreign_db");
      const f = await clientOf(foreign);
      await f.query("CREATE TABLE public.keys_t (x int); INSERT INTO public.keys_t VALUES (42)");
      refused(await materialize(w, "--to", foreign), 2, /did not create \(use --replace/);
      assert.deepEqual(await tableRows(f, "public", "keys_t"), ['["42"]']);
      assert.equal(
        (await f.query("SELECT to_regclass('public.types_t') AS r")).rows[0].r,
        null,
        "a refused run created other tables",
      );
      ok(await materialize(w, "--to", foreign, "--replace", "keys_t"), "--replace");
      assertSameRows(
        await tableRows(f, "public", "keys_t"),
        await tableRows(w.db, "public", "keys_t"),
        "--replace",
      );
      await f.end();
    });

    await stopCleanly(stream);
    await Deno.remove(out, { recursive: true });
  });
}
