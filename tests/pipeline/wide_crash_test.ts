/**
 * kill -9 while many tables' batches are flushed together: a flush of
 * hundreds of batches writes all their files, fsyncs them, registers them in
 * one transaction and then renames them. Whatever moment the process dies
 * at, after restarts every change is in exactly one registered file.
 */

import assert from "node:assert/strict";
import { CliProcess, waitFor } from "../harness/cli.ts";
import { streamEnv } from "../harness/stream_env.ts";
import {
  checkDataDir,
  fileLog,
  readRegisteredCsv,
  stopCleanly,
  waitForBackendsGone,
} from "../harness/export_world.ts";
import { prng } from "../harness/prng.ts";

const TABLES = Number(Deno.env.get("CDC_TEST_WIDE_CRASH_TABLES") ?? 300);
const KILLS = 6;

Deno.test({
  name:
    `crash: kill -9 during flushes of ${TABLES} tables' batches loses and doubles nothing (PG 18)`,
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  await using w = await streamEnv(18, { max_locks_per_transaction: 256 });
  await w.db.query("CREATE SCHEMA wide");
  await w.db.query(
    `DO $$ BEGIN FOR i IN 0..${TABLES - 1} LOOP
       EXECUTE format('CREATE TABLE wide.t%s (id serial PRIMARY KEY, round int)', i);
     END LOOP; END $$`,
  );
  await w.init();
  const rand = prng(9);
  // A small pool of open files, so the flushes also reopen suspended batch files.
  const env = { CDC_BATCH_INTERVAL: "1s", CDC_MAX_OPEN_FILES: "16" };
  let p = new CliProcess(["stream"], { ...w.env, ...env });
  await w.caughtUp(180_000);
  // Rounds of one change in every table, while the stream is killed and restarted.
  let round = 0;
  let writing = true;
  const writer = (async () => {
    while (writing) {
      round++;
      for (let from = 0; from < TABLES; from += 100) {
        const to = Math.min(TABLES, from + 100) - 1;
        await w.db.query(
          `DO $$ BEGIN FOR i IN ${from}..${to} LOOP
             EXECUTE format('INSERT INTO wide.t%s (round) VALUES (%s)', i, ${round});
           END LOOP; END $$`,
        );
      }
    }
  })();
  try {
    for (let k = 0; k < KILLS; k++) {
      // Let a few flushes happen, then die at an arbitrary moment of one.
      const before = (await fileLog(w.registry)).length;
      await waitFor(
        "a flush to register files",
        async () => (await fileLog(w.registry)).length > before,
        120_000,
      );
      await new Promise((r) => setTimeout(r, Math.floor(rand() * 1500)));
      await p.stop("SIGKILL");
      await waitForBackendsGone(w.db, w.registry);
      p = new CliProcess(["stream"], { ...w.env, ...env });
    }
  } finally {
    writing = false;
    await writer;
  }
  await w.caughtUp(180_000);
  await stopCleanly(p);

  // Each table: every inserted row exactly once in its streaming files.
  const files = (await fileLog(w.registry)).filter((f) =>
    f.schema === "wide" && f.fileType === "streaming"
  );
  const ids = new Map<string, string[]>();
  for (const f of files) {
    const { header, rows } = await readRegisteredCsv(w.dataDir, f.path);
    const id = header.indexOf("id");
    const list = ids.get(f.table) ?? [];
    for (const r of rows) list.push(r[id]!);
    ids.set(f.table, list);
  }
  const live = await w.db.query(
    `SELECT c.relname AS t, (xpath('/row/n/text()',
       query_to_xml(format('SELECT count(*) AS n FROM wide.%I', c.relname), false, true, '')))[1]::text::int AS n
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'wide' AND c.relkind = 'r'`,
  );
  assert.equal(live.rows.length, TABLES);
  for (const r of live.rows) {
    const got = ids.get(r.t) ?? [];
    assert.equal(new Set(got).size, got.length, `${r.t}: a change registered twice`);
    assert.equal(got.length, r.n, `${r.t}: ${got.length} changes registered, ${r.n} rows`);
  }
  assert.ok(round > KILLS, `only ${round} rounds of writes`);
  await checkDataDir(w);
  for (const i of [0, Math.floor(TABLES / 2), TABLES - 1]) {
    await w.assertReplayEquals("wide", `t${i}`);
  }
});
