/**
 * Schema evolution under writes (DESIGN §3): columns added (nullable, with
 * a constant default, with a volatile default), dropped, renamed and
 * retyped (int to numeric(10,2), text to varchar); a table dropped and
 * created again under its name; a table renamed; two tables swapping
 * names; CREATE TABLE AS. DDL that changes existing rows without row events
 * is followed by a new full_reload; a name that comes to mean another
 * relation starts a new history. Replay of every table equals the source,
 * folders sort in LSN order and `verify --deep` exits 0.
 */

import assert from "node:assert/strict";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { waitFor } from "../harness/cli.ts";
import {
  assertNoStraddle,
  checkDataDir,
  connectTo,
  prng,
  startStream,
  stopCleanly,
} from "../harness/export_world.ts";
import {
  assertBothReplaysEqual,
  assertFolderOrder,
  assertVerifyDeep,
} from "../harness/history_check.ts";
import { streamEnv } from "../harness/stream_env.ts";

const STEPS = [
  "ALTER TABLE public.evo ADD COLUMN n1 text",
  "ALTER TABLE public.evo ADD COLUMN d1 text NOT NULL DEFAULT 'x'",
  "ALTER TABLE public.evo ADD COLUMN d2 timestamptz DEFAULT clock_timestamp()",
  "ALTER TABLE public.evo DROP COLUMN n1",
  "ALTER TABLE public.evo RENAME COLUMN t TO t2",
  "ALTER TABLE public.evo ALTER COLUMN a TYPE numeric(10,2)",
  "ALTER TABLE public.evo ALTER COLUMN t2 TYPE varchar",
  `DROP TABLE public.recreated;
   CREATE TABLE public.recreated (id int PRIMARY KEY, label text, n numeric);
   INSERT INTO public.recreated SELECT g, 'new' || g, g / 3.0 FROM generate_series(1, 300) g`,
  "ALTER TABLE public.ren_src RENAME TO ren_dst",
  `BEGIN;
   ALTER TABLE public.sw_a RENAME TO sw_a_old;
   ALTER TABLE public.sw_b RENAME TO sw_a;
   COMMIT`,
  `BEGIN;
   CREATE TABLE public.ctas AS SELECT id, a * 2 AS a2, 'c' || id AS c FROM public.evo;
   ALTER TABLE public.ctas ADD PRIMARY KEY (id);
   COMMIT`,
];

const LIVE_TABLES = ["evo", "recreated", "ren_dst", "sw_a", "sw_a_old", "ctas", "bystander"];

for (const version of testMajors()) {
  Deno.test({
    name:
      `schema evolution: value-changing DDL, re-created, renamed and swapped tables (PG ${version})`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    await using w = await streamEnv(version);
    await w.db.query(`
      CREATE TABLE public.evo (id int PRIMARY KEY, a int, t text);
      INSERT INTO public.evo SELECT g, g, 't' || g FROM generate_series(1, 500) g;
      CREATE TABLE public.recreated (id int PRIMARY KEY, v text);
      INSERT INTO public.recreated SELECT g, 'old' || g FROM generate_series(1, 200) g;
      CREATE TABLE public.ren_src (id int PRIMARY KEY, v text);
      INSERT INTO public.ren_src SELECT g, 'r' || g FROM generate_series(1, 100) g;
      CREATE TABLE public.sw_a (id int PRIMARY KEY, v text);
      INSERT INTO public.sw_a SELECT g, 'a' || g FROM generate_series(1, 100) g;
      CREATE TABLE public.sw_b (id int PRIMARY KEY, v text, extra int);
      INSERT INTO public.sw_b SELECT g, 'b' || g, g FROM generate_series(1, 150) g;
      CREATE TABLE public.bystander (id int PRIMARY KEY, v int);`);
    await w.init();
    const stream = await startStream(w);
    await w.caughtUp();

    // Writes to tables whose names stay put, all the way through; they
    // touch only columns every step keeps (id, a).
    const writer = await connectTo(w.cluster.url());
    const random = prng(11);
    let stop = false;
    const writing = (async () => {
      let n = 1_000_000;
      while (!stop) {
        const id = 1 + Math.floor(random() * 500);
        const op = random();
        if (op < 0.3) await writer.query("INSERT INTO public.evo (id, a) VALUES ($1, 7)", [n++]);
        else if (op < 0.6) {
          await writer.query("UPDATE public.evo SET a = a + 1 WHERE id = $1", [id]);
        } else if (op < 0.7) await writer.query("DELETE FROM public.evo WHERE id = $1", [id]);
        else await writer.query("INSERT INTO public.bystander VALUES ($1, 1)", [n++]);
      }
    })();

    for (const [i, sql] of STEPS.entries()) {
      await w.db.query(sql);
      // Changes right after each step, to the tables it touched.
      await w.db.query("UPDATE public.evo SET a = a + 10 WHERE id % 17 = $1", [i]);
      if (i >= 7) {
        await w.db.query("UPDATE public.recreated SET label = label || '.' WHERE id % 5 = $1", [
          i % 5,
        ]);
      }
      if (i >= 8) await w.db.query("UPDATE public.ren_dst SET v = v || '!' WHERE id < 10");
      if (i >= 9) {
        await w.db.query("INSERT INTO public.sw_a VALUES ($1, 'after swap', 1)", [1000 + i]);
        await w.db.query("UPDATE public.sw_a_old SET v = 'old a' WHERE id = $1", [i]);
      }
      if (i >= 10) await w.db.query("UPDATE public.ctas SET c = 'changed' WHERE id < 5");
    }
    stop = true;
    await writing;
    await writer.end();
    await waitFor("every reload to finish", async () =>
      (await w.registry.query(
        `SELECT count(*)::int AS n FROM cdc_registry.reload_operations
         WHERE state IN ('requested', 'exporting')`,
      )).rows[0].n === 0, 180_000);
    await w.caughtUp(180_000);
    await stopCleanly(stream);

    await checkDataDir(w);
    await assertNoStraddle(w.registry);
    await assertFolderOrder(w);
    const reasons = await w.registry.query(
      `SELECT table_name, reload_reason, count(*)::int AS n FROM cdc_registry.file_log
       WHERE file_type = 'full_reload' GROUP BY 1, 2`,
    );
    const reason = (t: string, r: string) =>
      reasons.rows.find((x) => x.table_name === t && x.reload_reason === r)?.n ?? 0;
    assert.ok(
      reason("evo", "ddl") >= 1,
      `evo was reloaded after DDL: ${JSON.stringify(reasons.rows)}`,
    );
    assert.ok(reason("sw_a", "rename") >= 1, `sw_a was reloaded after the swap`);
    assert.ok(reason("ctas", "initial") >= 1, `CREATE TABLE AS was exported`);
    const recreated = await w.registry.query(
      `SELECT count(DISTINCT relation_oid)::int AS n FROM cdc_registry.table_state
       WHERE table_name = 'recreated'`,
    );
    assert.equal(recreated.rows[0].n, 2, "the re-created table is a second relation");
    const renamed = await w.registry.query(
      `SELECT previous_table FROM cdc_registry.table_state WHERE table_name = 'ren_dst'`,
    );
    assert.equal(renamed.rows[0]?.previous_table, "ren_src");
    for (const t of LIVE_TABLES) await assertBothReplaysEqual(w, "public", t);
    await assertVerifyDeep(w);
  });
}
