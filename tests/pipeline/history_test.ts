/**
 * Complete history through reloads (DESIGN §3): reloads requested right
 * behind a 50k-change transaction, while other sessions write, and a reload
 * requested while `stream` is down with changes behind the slot. The
 * streaming files keep every change exactly once (no transaction cut by a
 * reload), so replay from the newest and from the first full_reload both
 * equal the source, and folders sort in LSN order.
 */

import assert from "node:assert/strict";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { runCli, waitFor } from "../harness/cli.ts";
import {
  assertChangesOnce,
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
  assertWholeTransaction,
  oidOf,
} from "../harness/history_check.ts";
import { streamEnv } from "../harness/stream_env.ts";

const TABLES = ["hist_a", "hist_b", "hist_c"];
const BIG_TXN = 50_000;

/** One transaction of `BIG_TXN` changes on `table`; returns its xid. */
async function bigTransaction(db: pg.Client, table: string, from: number): Promise<string> {
  await db.query("BEGIN");
  const xid = (await db.query("SELECT txid_current()::text AS x")).rows[0].x;
  await db.query(
    `INSERT INTO public.${table} (id, v, t)
     SELECT g, g % 97, repeat('x', g % 50) FROM generate_series($1::int, $2::int) g`,
    [from, from + BIG_TXN / 2 - 1],
  );
  await db.query(`UPDATE public.${table} SET v = v + 1 WHERE id BETWEEN $1 AND $2`, [
    from,
    from + BIG_TXN / 2 - 1,
  ]);
  await db.query("COMMIT");
  return xid;
}

/** Reload requests that are not done yet. */
async function pendingReloads(db: pg.Client): Promise<number> {
  const res = await db.query(
    `SELECT count(*)::int AS n FROM cdc_registry.reload_operations
     WHERE state IN ('requested', 'exporting')`,
  );
  return res.rows[0].n;
}

for (const version of testMajors()) {
  Deno.test({
    name: `history: reloads behind a backlog keep every change exactly once (PG ${version})`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    await using w = await streamEnv(version);
    for (const t of TABLES) {
      await w.db.query(`CREATE TABLE public.${t} (id int PRIMARY KEY, v int, t text)`);
      await w.db.query(
        `INSERT INTO public.${t} SELECT g, g, 'seed' FROM generate_series(1, 2000) g`,
      );
    }
    // A keyless table replays as a multiset.
    await w.db.query("ALTER TABLE public.hist_c DROP CONSTRAINT hist_c_pkey");
    await w.db.query("ALTER TABLE public.hist_c REPLICA IDENTITY FULL");
    await w.init();
    let stream = await startStream(w);
    await w.caughtUp();

    // Small concurrent writes to every table throughout.
    const writer = await connectTo(w.cluster.url());
    const random = prng(7);
    let stop = false;
    const writing = (async () => {
      let n = 10_000_000;
      while (!stop) {
        const t = TABLES[Math.floor(random() * TABLES.length)];
        const id = 1 + Math.floor(random() * 2000);
        const op = random();
        if (op < 0.4) await writer.query(`INSERT INTO public.${t} VALUES ($1, 1, 'w')`, [n++]);
        else if (op < 0.8) {
          await writer.query(`UPDATE public.${t} SET v = v + 1 WHERE id = $1`, [id]);
        } else await writer.query(`DELETE FROM public.${t} WHERE id = $1`, [id]);
      }
    })();

    // Each reload right behind a big transaction: its C lies ahead of the stream.
    const xids = new Map<string, string[]>();
    for (const [i, t] of TABLES.entries()) {
      const xid = await bigTransaction(w.db, t, 100_000 + i * BIG_TXN);
      xids.set(t, [xid]);
      const r = await runCli(["reload", `public.${t}`], w.env);
      assert.equal(r.code, 0, r.stderr);
    }
    await waitFor(
      "the reloads to finish",
      async () => (await pendingReloads(w.registry)) === 0,
      180_000,
    );
    stop = true;
    await writing;
    await writer.end();
    await w.caughtUp(180_000);
    await stopCleanly(stream);

    // A reload requested while stream is down, with changes behind the slot.
    const xid = await bigTransaction(w.db, "hist_a", 400_000);
    xids.get("hist_a")!.push(xid);
    await w.db.query("UPDATE public.hist_a SET t = 'after' WHERE id % 10 = 0");
    const r = await runCli(["reload", "public.hist_a"], w.env);
    assert.equal(r.code, 0, r.stderr);
    await w.db.query("DELETE FROM public.hist_a WHERE id % 7 = 0");
    stream = await startStream(w);
    await waitFor(
      "the offline reload to finish",
      async () => (await pendingReloads(w.registry)) === 0,
      180_000,
    );
    await w.caughtUp(180_000);
    await stopCleanly(stream);

    await checkDataDir(w);
    await assertNoStraddle(w.registry);
    await assertChangesOnce(w, TABLES.map((table) => ({ schema: "public", table })));
    await assertFolderOrder(w);
    for (const t of TABLES) {
      const reloads = await w.registry.query(
        `SELECT count(*)::int AS n FROM cdc_registry.file_log
         WHERE table_name = $1 AND file_type = 'full_reload'`,
        [t],
      );
      assert.ok(reloads.rows[0].n >= 2, `${t} has its initial export and a reload`);
      await assertBothReplaysEqual(w, "public", t);
      for (const x of xids.get(t)!) {
        await assertWholeTransaction(w, await oidOf(w.db, `public.${t}`), x, BIG_TXN);
      }
    }
    await assertVerifyDeep(w);
  });
}
