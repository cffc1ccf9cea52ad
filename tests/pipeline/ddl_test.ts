/**
 * DDL while streaming (DESIGN §3, §4): ADD COLUMN, DROP COLUMN, RENAME
 * COLUMN and a type change, with rows written between them. Every DDL is a
 * registered `ddl.sql` at its position; every column set has its own
 * folders, whose schema.yml names the columns of their files; replay
 * follows the columns across the changes. A table created while streaming
 * joins the publication, is exported and streamed; a dropped table is
 * marked dropped.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { parse as parseYaml } from "yaml";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { waitFor } from "../harness/cli.ts";
import {
  checkDataDir,
  connectTo,
  fileLog,
  type LoggedFile,
  lsnValue,
  readRegisteredCsv,
  startStream,
  stopCleanly,
} from "../harness/export_world.ts";
import { layoutSuffix, type StreamEnv, streamEnv } from "../harness/stream_env.ts";

const META_COLUMNS = 7;

interface SchemaYml {
  table: string;
  valid_from_lsn: string;
  columns: { name: string; type: string }[];
}

async function schemaOf(w: StreamEnv, f: LoggedFile): Promise<SchemaYml> {
  return parseYaml(
    await Deno.readTextFile(join(w.dataDir, f.path.replace(/[^/]+$/, "schema.yml"))),
  ) as SchemaYml;
}

/** Writes a few transactions of inserts, updates and deletes to public.t. */
async function writeRows(db: pg.Client, step: number, columns: string[]): Promise<void> {
  const base = 1000 + step * 100;
  const values = (id: number) =>
    columns.map((c) => {
      if (c === "id") return id;
      if (c === "a") return step >= 4 ? 3_000_000_000 + id : id * 2;
      if (c === "b") return `b,"${id}"`;
      if (c === "d") return id % 3 === 0 ? null : `d${id}`;
      return id * 3; // c, c2
    });
  const placeholders = columns.map((_c, i) => `$${i + 1}`).join(", ");
  for (let i = 1; i <= 5; i++) {
    await db.query(
      `INSERT INTO public.t (${columns.join(", ")}) VALUES (${placeholders})`,
      values(base + i),
    );
  }
  await db.query("BEGIN");
  await db.query("UPDATE public.t SET id = id + 50 WHERE id = $1", [base + 1]);
  const other = columns.find((c) => c !== "id" && c !== "a")!;
  await db.query(`UPDATE public.t SET ${other} = NULL WHERE id = $1`, [base + 2]);
  await db.query("DELETE FROM public.t WHERE id = $1", [base + 3]);
  // A row written before the change, updated after it.
  if (step > 0) await db.query("UPDATE public.t SET a = a + 1 WHERE id = $1", [base - 96]);
  await db.query("COMMIT");
}

for (const version of testMajors()) {
  Deno.test({
    name:
      `ddl: column changes, new and dropped tables while streaming (PG ${version}${layoutSuffix()})`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    const started = Date.now();
    await using w = await streamEnv(version);
    await w.db.query(`
      CREATE TABLE public.t (id int PRIMARY KEY, a int, b text, c int);
      CREATE TABLE public.other (id int PRIMARY KEY, v text);
      INSERT INTO public.t SELECT g, g, 'b' || g, g FROM generate_series(1, 50) g;
      INSERT INTO public.other SELECT g, 'o' || g FROM generate_series(1, 20) g;`);
    await w.init();
    const stream = await startStream(w);
    await w.caughtUp();

    // Another session keeps writing to another table throughout.
    const writer = await connectTo(w.cluster.url());
    let stopWriter = false;
    const writing = (async () => {
      let n = 1000;
      while (!stopWriter) {
        await writer.query("INSERT INTO public.other VALUES ($1, 'w')", [n++]);
        await writer.query("UPDATE public.other SET v = v || '.' WHERE id = $1", [1 + (n % 20)]);
        await new Promise((r) => setTimeout(r, 5));
      }
    })();

    const ddl = [
      {
        sql: "ALTER TABLE public.t ADD COLUMN d text",
        columns: ["id", "a", "b", "c", "d"],
        typeOfA: "integer",
      },
      {
        sql: "ALTER TABLE public.t DROP COLUMN b",
        columns: ["id", "a", "c", "d"],
        typeOfA: "integer",
      },
      {
        sql: "ALTER TABLE public.t RENAME COLUMN c TO c2",
        columns: ["id", "a", "c2", "d"],
        typeOfA: "integer",
      },
      {
        sql: "ALTER TABLE public.t ALTER COLUMN a TYPE bigint",
        columns: ["id", "a", "c2", "d"],
        typeOfA: "bigint",
      },
    ];
    await writeRows(w.db, 0, ["id", "a", "b", "c"]);
    for (const [i, step] of ddl.entries()) {
      await w.db.query(step.sql);
      await writeRows(w.db, i + 1, step.columns);
    }

    // A table created while streaming (and one created with rows in the same
    // transaction) joins the publication, is exported, then streamed.
    await w.db.query("CREATE TABLE public.t_new (id int PRIMARY KEY, v text)");
    await w.db.query("INSERT INTO public.t_new VALUES (1, 'before the export')");
    await w.db.query(`BEGIN;
      CREATE TABLE public.t_new2 (k text, n int, PRIMARY KEY (k, n));
      INSERT INTO public.t_new2 VALUES ('same txn', 1), ('same txn', 2);
      COMMIT`);
    // No key and no replica identity: left out of the publication.
    await w.db.query("CREATE TABLE public.t_nokey (a int)");
    let n = 2;
    await waitFor("the new tables to be exported and streamed", async () => {
      await w.db.query("INSERT INTO public.t_new VALUES ($1, $2)", [n, `v${n}`]);
      await w.db.query("UPDATE public.t_new SET v = v || '+' WHERE id = $1", [n - 1]);
      await w.db.query("INSERT INTO public.t_new2 VALUES ('later', $1)", [n++]);
      const files = await fileLog(w.registry);
      return ["t_new", "t_new2"].every((t) => {
        const exp = files.find((f) => f.table === t && f.fileType === "full_reload");
        return exp && files.some((f) =>
          f.table === t && f.fileType === "streaming" &&
          lsnValue(f.startLsn) > lsnValue(exp.startLsn)
        );
      });
    }, 60_000);
    await w.db.query("DELETE FROM public.t_new WHERE id = 1");

    stopWriter = true;
    await writing;
    await writer.end();
    // DROP TABLE: the table's mode becomes dropped.
    await w.db.query("DROP TABLE public.other");
    await w.caughtUp();
    await stopCleanly(stream);

    for (const t of ["t", "t_new", "t_new2"]) await w.assertReplayEquals("public", t);
    const files = await checkDataDir(w);

    // Every streaming file's columns are its folder's schema.yml columns.
    for (const f of files.filter((f) => f.fileType === "streaming")) {
      const { header } = await readRegisteredCsv(w.dataDir, f.path);
      const yml = await schemaOf(w, f);
      assert.deepEqual(
        header.slice(META_COLUMNS),
        yml.columns.map((c) => c.name),
        `header of ${f.path} against its schema.yml`,
      );
    }

    // Each DDL is a registered ddl.sql holding the statement, at its position,
    // with the table's columns as they were right after it.
    const ddlFiles = files.filter((f) => f.fileType === "ddl" && f.table === "t");
    assert.equal(ddlFiles.length, ddl.length, ddlFiles.map((f) => f.path).join("\n"));
    const tStreaming = files.filter((f) => f.fileType === "streaming" && f.table === "t");
    for (const [i, step] of ddl.entries()) {
      const f = ddlFiles[i];
      assert.ok(f.path.endsWith("/ddl.sql"), f.path);
      assert.equal(f.hasDdl, true, f.path);
      assert.equal(f.startLsn, f.endLsn, f.path);
      const text = await Deno.readTextFile(join(w.dataDir, f.path));
      assert.ok(text.includes(step.sql), `${f.path} does not hold "${step.sql}":\n${text}`);
      const yml = await schemaOf(w, f);
      assert.deepEqual(yml.columns.map((c) => c.name), step.columns, `schema.yml of ${f.path}`);
      assert.equal(yml.columns[1].type, step.typeOfA, `schema.yml of ${f.path}`);
      // No streaming file spans the DDL; the files before it have the old
      // columns, the first one after it the new.
      const d = lsnValue(f.startLsn);
      const spanning = tStreaming.filter((s) =>
        lsnValue(s.startLsn) <= d && d <= lsnValue(s.endLsn)
      );
      assert.deepEqual(spanning.map((s) => s.path), [], `files spanning ${step.sql}`);
      const next = tStreaming.find((s) => lsnValue(s.startLsn) > d)!;
      const nextYml = await schemaOf(w, next);
      assert.deepEqual(nextYml.columns.map((c) => c.name), step.columns, next.path);
      assert.equal(nextYml.columns[1].type, step.typeOfA, next.path);
      const prev = tStreaming.findLast((s) => lsnValue(s.endLsn) < d)!;
      const prevColumns = i === 0 ? ["id", "a", "b", "c"] : ddl[i - 1].columns;
      assert.deepEqual((await schemaOf(w, prev)).columns.map((c) => c.name), prevColumns);
    }

    // New tables: one export each, streaming after it; the keyless one is not published.
    for (const t of ["t_new", "t_new2"]) {
      const exports = files.filter((f) => f.table === t && f.fileType === "full_reload");
      assert.equal(exports.length, 1, `exports of ${t}`);
    }
    const pub = await w.db.query(
      `SELECT tablename FROM pg_publication_tables WHERE pubname = 'cdc_egress'
       AND schemaname = 'public' ORDER BY 1`,
    );
    assert.deepEqual(pub.rows.map((r) => r.tablename), ["t", "t_new", "t_new2"]);

    // The dropped table: a registered DROP TABLE ddl.sql and mode 'dropped'.
    const drop = files.filter((f) => f.table === "other" && f.fileType === "ddl");
    assert.equal(drop.length, 1, drop.map((f) => f.path).join("\n"));
    assert.ok(
      (await Deno.readTextFile(join(w.dataDir, drop[0].path))).includes(
        "DROP TABLE public.other",
      ),
    );
    const modes = await w.registry.query(
      "SELECT table_name, mode FROM cdc_registry.table_state ORDER BY 1",
    );
    assert.deepEqual(modes.rows, [
      { table_name: "other", mode: "dropped" },
      { table_name: "t", mode: "streaming" },
      { table_name: "t_new", mode: "streaming" },
      { table_name: "t_new2", mode: "streaming" },
    ]);

    // A restart neither registers the DDL again nor re-exports anything.
    const again = await startStream(w);
    await w.db.query("INSERT INTO public.t (id, a, c2, d) VALUES (9999, 1, 2, 'after restart')");
    await w.caughtUp();
    await stopCleanly(again);
    const after = await fileLog(w.registry);
    assert.deepEqual(
      after.filter((f) => f.fileType !== "streaming").map((f) => f.path),
      files.filter((f) => f.fileType !== "streaming").map((f) => f.path),
      "ddl and export files after a restart",
    );
    await w.assertReplayEquals("public", "t");
    await checkDataDir(w);
    console.log(
      `PG ${version}: ${after.length} files, ${Math.round((Date.now() - started) / 1000)} s`,
    );
  });
}
