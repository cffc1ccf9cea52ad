/**
 * `cdc-egress reload` (DESIGN §5): re-exports of a keyed, a keyless
 * (REPLICA IDENTITY FULL) and a partitioned table while `stream` runs and a
 * workload writes to them; the new exports sit at one exact WAL boundary
 * that no streaming file straddles, and replay equals the source. Bad input
 * is one `error:` line, a non-zero exit and no reload request.
 */

import assert from "node:assert/strict";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { runCli, waitFor } from "../harness/cli.ts";
import {
  assertChangesOnce,
  assertNoStraddle,
  checkDataDir,
  createMixedTables,
  exportLsns,
  fileLog,
  lsnValue,
  MIXED_TABLES,
  startStream,
  stopCleanly,
  Workload,
} from "../harness/export_world.ts";
import { layoutSuffix, type StreamEnv, streamEnv } from "../harness/stream_env.ts";

const BIG_ROWS = 300_000;
const RELOADED = ["public.big", "public.keyless", "public.parted"];

/** What a failed `reload` must leave alone: requests and table modes. */
async function reloadState(w: StreamEnv): Promise<string> {
  const res = await w.registry.query(
    `SELECT (SELECT count(*) FROM cdc_registry.reload_operations)::int AS ops,
            (SELECT string_agg(schema_name || '.' || table_name || '=' || mode, ','
                               ORDER BY schema_name, table_name)
               FROM cdc_registry.table_state) AS modes`,
  );
  return JSON.stringify(res.rows[0]);
}

/** Runs `reload` with bad input and checks the failure contract. */
async function expectReloadError(
  w: StreamEnv,
  args: string[],
  code: number,
  message: string | RegExp,
): Promise<void> {
  const before = await reloadState(w);
  const r = await runCli(["reload", ...args], w.env);
  const what = `cdc-egress reload ${args.join(" ")}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
  assert.equal(r.code, code, `exit code of ${what}`);
  assert.equal(r.stdout, "", `nothing on stdout from ${what}`);
  const lines = r.stderr.split("\n");
  assert.equal(lines.length, 2, `exactly one stderr line from ${what}`);
  assert.equal(lines[1], "", what);
  if (typeof message === "string") assert.equal(lines[0], message, what);
  else assert.match(lines[0], message, what);
  assert.ok(!r.stderr.includes(w.cluster.password), `a password leaked from ${what}`);
  assert.equal(await reloadState(w), before, `registry changed by ${what}`);
}

for (const version of testMajors()) {
  Deno.test({
    name:
      `reload: keyed, keyless and partitioned tables under writes, and bad input (PG ${version}${layoutSuffix()})`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    const started = Date.now();
    await using w = await streamEnv(version);
    await createMixedTables(w.db, BIG_ROWS);
    // No key and REPLICA IDENTITY DEFAULT: init leaves it out of the publication.
    await w.db.query("CREATE TABLE public.unpublished (a int)");
    await w.init();
    const stream = await startStream(w);
    await using workload = await Workload.start(w.cluster.url(), 0x7e1 + version, BIG_ROWS);
    await w.caughtUp(120_000);
    const initial = await exportLsns(w.registry);
    assert.equal(initial.size, MIXED_TABLES.length);

    /** Waits until each table has a streaming file registered after its newest export. */
    const streamedAfter = (lsns: Map<string, string>, what: string) =>
      waitFor(what, async () => {
        await workload.check();
        const files = await fileLog(w.registry);
        return RELOADED.every((t) =>
          files.some((f) =>
            `${f.schema}.${f.table}` === t && f.fileType === "streaming" &&
            lsnValue(f.startLsn) > lsnValue(lsns.get(t)!)
          )
        );
      }, 60_000);
    await streamedAfter(initial, "streaming after the initial exports");

    // Bad input, while everything runs: nothing is requested.
    await expectReloadError(w, ["x"], 1, 'error: Cannot reload "x": no such table');
    await expectReloadError(
      w,
      ["public.unpublished"],
      1,
      'error: Cannot reload "public.unpublished": it is not in publication "cdc_egress"',
    );
    // Registry tables are never exported, ddl_history (published to carry DDL) included.
    for (const t of ["cdc_registry.file_log", "cdc_registry.ddl_history"]) {
      // With a separate registry the source holds only ddl_history.
      const why = w.separateRegistry && t === "cdc_registry.file_log"
        ? "no such table"
        : "it is a registry table";
      await expectReloadError(w, [t], 1, `error: Cannot reload "${t}": ${why}`);
    }
    await expectReloadError(
      w,
      [],
      2,
      "error: Cannot reload: name at least one table (cdc-egress reload public.orders)",
    );
    await expectReloadError(
      w,
      ['"unclosed'],
      1,
      'error: Cannot reload ""unclosed": invalid name syntax',
    );
    // One bad name among good ones: none of them is requested.
    await expectReloadError(
      w,
      ["public.big", "public.nosuch", "keyless"],
      1,
      'error: Cannot reload "public.nosuch": no such table',
    );

    // The reload itself, while the workload goes on.
    const r = await runCli(
      ["reload", "public.big", "keyless", '"public"."parted"', "--wait", "--timeout", "2m"],
      w.env,
    );
    assert.equal(r.code, 0, `reload exited with ${r.code}: ${r.stderr}${r.stdout}`);
    assert.equal(r.stderr, "");
    const done = new Map<string, string>();
    for (const t of RELOADED) {
      assert.match(r.stdout, new RegExp(`^requested reload \\d+ of ${t}$`, "m"), r.stdout);
      const m = new RegExp(`^reload \\d+ of ${t} done at ([0-9A-F]+/[0-9A-F]+)$`, "m").exec(
        r.stdout,
      );
      assert.ok(m, `no "done" line for ${t}:\n${r.stdout}`);
      done.set(t, m[1]);
    }
    assert.equal(r.stdout.trim().split("\n").length, 2 * RELOADED.length, r.stdout);
    const reloaded = await exportLsns(w.registry);
    for (const t of RELOADED) {
      assert.equal(reloaded.get(t), done.get(t), `${t}: printed LSN is the registered export's`);
      assert.ok(
        lsnValue(reloaded.get(t)!) > lsnValue(initial.get(t)!),
        `${t}: reload at ${reloaded.get(t)} is not after the initial export ${initial.get(t)}`,
      );
    }
    // Requested together, exported from one snapshot.
    assert.equal(new Set(done.values()).size, 1, `one boundary: ${[...done.values()]}`);
    await streamedAfter(reloaded, "streaming after the reloads");
    const transactions = await workload.stop();
    await w.caughtUp(120_000);
    await stopCleanly(stream);

    for (const t of MIXED_TABLES) await w.assertReplayEquals(t.schema, t.table);
    const files = await checkDataDir(w);
    await assertNoStraddle(w.registry);
    await assertChangesOnce(w, MIXED_TABLES);
    for (const t of MIXED_TABLES) {
      const name = `${t.schema}.${t.table}`;
      const exports = files.filter((f) =>
        f.fileType === "full_reload" && `${f.schema}.${f.table}` === name
      );
      assert.equal(exports.length, RELOADED.includes(name) ? 2 : 1, `exports of ${name}`);
    }
    const state = await w.registry.query(
      `SELECT schema_name || '.' || table_name AS t, mode, reload_lsn::text AS lsn
       FROM cdc_registry.table_state WHERE schema_name || '.' || table_name = ANY($1)`,
      [RELOADED],
    );
    for (const s of state.rows) {
      assert.deepEqual([s.mode, s.lsn], ["streaming", done.get(s.t)], `table_state of ${s.t}`);
    }
    const ops = await w.registry.query(
      `SELECT schema_name || '.' || table_name AS t, state, consistent_lsn::text AS lsn, error
       FROM cdc_registry.reload_operations ORDER BY id`,
    );
    assert.equal(ops.rowCount, MIXED_TABLES.length + RELOADED.length, "reload requests");
    for (const op of ops.rows) assert.equal(op.state, "done", JSON.stringify(op));
    for (const op of ops.rows.slice(MIXED_TABLES.length)) {
      assert.equal(op.lsn, done.get(op.t), JSON.stringify(op));
    }

    // With no stream running, --wait gives up at --timeout; the request stays
    // and the next stream carries it out.
    await w.db.query("UPDATE public.small SET v = v || '!' WHERE id = 1");
    const late = await runCli(["reload", "public.small", "--wait", "--timeout", "1s"], w.env);
    assert.equal(late.code, 1, `${late.stdout}${late.stderr}`);
    assert.match(late.stdout, /^requested reload \d+ of public\.small\n$/);
    assert.equal(
      late.stderr,
      'error: Cannot confirm the reload: still pending after the timeout; is "cdc-egress stream" running for slot "cdc_egress"?\n',
    );
    const before = (await exportLsns(w.registry)).get("public.small")!;
    const restarted = await startStream(w);
    await w.caughtUp();
    await stopCleanly(restarted);
    const after = (await exportLsns(w.registry)).get("public.small")!;
    assert.ok(lsnValue(after) > lsnValue(before), `reload of public.small: ${before} -> ${after}`);
    await w.assertReplayEquals("public", "small");
    await checkDataDir(w);
    console.log(
      `PG ${version}: ${transactions} workload transactions, ${files.length} files, ${
        Math.round((Date.now() - started) / 1000)
      } s`,
    );
  });
}
