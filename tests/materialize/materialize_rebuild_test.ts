/**
 * A rebuild loads the full_reload after the changes and leaves out the rows
 * they replaced. Against real PostgreSQL: a table of multi-MB TOAST values
 * larger than the 256 MB memory budget, with unchanged TOAST (which makes
 * the rebuild load the full_reload mid-way), key changes, deletes and
 * inserts, next to a text-keyed table of many rows; the PostgreSQL target
 * must equal the source, also after a kill -9 while the full_reload is being
 * loaded; DuckDB gets the text-keyed table (it cannot hold 2048 rows of
 * 14 MB within its memory limit).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { CliProcess, type CliResult, runCli, waitFor } from "../harness/cli.ts";
import { canonicalFloats, duckdbColumns, duckdbRows } from "../harness/duckdb_rows.ts";
import { startStream, stopCleanly } from "../harness/export_world.ts";
import { assertSameRows, tableRows } from "../harness/materialize_world.ts";
import { streamEnv } from "../harness/stream_env.ts";

const MB = 1024 * 1024;
const TABLES = ["huge_t", "many_t"];

function ok(r: CliResult, what: string): CliResult {
  assert.equal(r.code, 0, `${what} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return r;
}

async function rowsOf(url: string): Promise<Map<string, string[]>> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const out = new Map<string, string[]>();
    for (const t of TABLES) out.set(t, await tableRows(c, "public", t));
    return out;
  } finally {
    await c.end();
  }
}

async function assertDuckdb(path: string, source: Map<string, string[]>, what: string) {
  for (const [table, rows] of source) {
    const cols = await duckdbColumns(path, "public", table);
    assertSameRows(
      await duckdbRows(path, "public", table),
      canonicalFloats(rows, cols),
      `${what} ${table}`,
    );
  }
}

function assertSame(actual: Map<string, string[]>, expected: Map<string, string[]>, what: string) {
  for (const [table, rows] of expected) {
    assertSameRows(actual.get(table)!, rows, `${what} ${table}`);
  }
}

for (const version of testMajors()) {
  Deno.test(`materialize rebuilds multi-MB TOAST rows beyond the memory budget exactly, also after kill -9 mid-load (PG ${version})`, async (t) => {
    await using w = await streamEnv(version);
    await w.db.query(`
      CREATE TABLE huge_t (id int PRIMARY KEY, big text, small int);
      ALTER TABLE huge_t ALTER COLUMN big SET STORAGE EXTERNAL;
      CREATE TABLE many_t (k text PRIMARY KEY, v int, pad text);
    `);
    await w.db.query("CREATE DATABASE target");
    await w.db.query("CREATE DATABASE target_killed");
    // 20 rows of 14 MB: 280 MB of values, more than the 256 MB budget.
    for (let i = 0; i < 20; i++) {
      await w.db.query(
        `INSERT INTO huge_t VALUES ($1::int, repeat(md5($1::int::text), $2::int), $1::int)`,
        [i, (14 * MB) / 32],
      );
    }
    await w.db.query(
      `INSERT INTO many_t SELECT 'k' || g, g, md5(g::text) FROM generate_series(1, 400000) g`,
    );
    await w.init();
    const stream = await startStream(w);
    await w.caughtUp(120_000);
    // After the full_reload: unchanged TOAST, new values, a delete, a key change, an insert.
    await w.db.query("UPDATE huge_t SET small = small + 100 WHERE id % 3 = 0");
    await w.db.query(
      "UPDATE huge_t SET big = repeat(md5((id + 100)::text), $1) WHERE id % 3 = 1",
      [(11 * MB) / 32],
    );
    await w.db.query("DELETE FROM huge_t WHERE id = 2");
    await w.db.query("UPDATE huge_t SET id = id + 1000 WHERE id = 5");
    await w.db.query("INSERT INTO huge_t VALUES (99, repeat('z', $1), 1)", [9 * MB]);
    await w.db.query("UPDATE many_t SET v = v + 1 WHERE v % 2 = 0");
    await w.db.query("DELETE FROM many_t WHERE v % 7 = 0");
    await w.db.query("UPDATE many_t SET k = k || 'x' WHERE v % 11 = 0");
    await w.db.query("INSERT INTO many_t SELECT 'n' || g, g, '' FROM generate_series(1, 5000) g");
    await w.caughtUp(120_000);
    await stopCleanly(stream);
    const source = await rowsOf(w.cluster.url());
    const out = await Deno.makeTempDir({ prefix: "cdc-materialize-rebuild-" });

    await t.step("postgres and duckdb equal the source", async () => {
      ok(await runCli(["materialize", "--to", w.cluster.url("target")], w.env), "postgres");
      assertSame(await rowsOf(w.cluster.url("target")), source, "postgres");
      // DuckDB works in vectors of 2048 rows: twenty 14 MB values do not fit its 128 MB
      // memory limit (a known limit, see README), so only many_t goes there.
      ok(
        await runCli(["materialize", "many_t", "--to", `duckdb:${join(out, "t.duckdb")}`], w.env),
        "duckdb",
      );
      await assertDuckdb(
        join(out, "t.duckdb"),
        new Map([["many_t", source.get("many_t")!]]),
        "duckdb",
      );
    });

    await t.step("kill -9 while the full_reload loads, then a rerun, is exact", async () => {
      const url = w.cluster.url("target_killed");
      const watch = new pg.Client({ connectionString: url });
      await watch.connect();
      try {
        const p = new CliProcess(["materialize", "--to", url, "many_t"], w.env);
        // The full_reload's COPY is the one with a header.
        await waitFor("materialize to load the full_reload", async () =>
          (await watch.query(
            `SELECT count(*)::int AS n FROM pg_stat_activity
             WHERE application_name = 'cdc-egress/materialize' AND query LIKE 'COPY %HEADER%'`,
          )).rows[0].n > 0);
        await p.stop("SIGKILL");
      } finally {
        await watch.end();
      }
      const r = ok(await runCli(["materialize", "--to", url], w.env), "rerun after kill");
      for (const table of TABLES) assert.match(r.stdout, new RegExp(`public\\.${table}: rebuilt`));
      assertSame(await rowsOf(url), source, "postgres after kill");
    });

    await Deno.remove(out, { recursive: true });
  });
}
