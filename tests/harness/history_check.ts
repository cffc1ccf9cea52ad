/**
 * Checks of a table's whole history in the files (DESIGN §3 "Complete
 * history" and "Folder order is LSN order"), shared by the lifecycle tests.
 */

import assert from "node:assert/strict";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { runCli } from "./cli.ts";
import { fileLog, lsnValue, readRegisteredCsv } from "./export_world.ts";
import { liveRows, replayedRows } from "./replay_check.ts";
import type { StreamEnv } from "./stream_env.ts";

/** Every streaming row of a relation (metadata first), over all its names. */
export async function relationRows(
  w: StreamEnv,
  oid: number,
): Promise<(string | null)[][]> {
  const res = await w.registry.query(
    `SELECT path FROM cdc_registry.file_log WHERE relation_oid = $1 AND file_type = 'streaming'
     ORDER BY start_lsn, start_seq`,
    [oid],
  );
  const rows: (string | null)[][] = [];
  for (const f of res.rows) rows.push(...(await readRegisteredCsv(w.dataDir, f.path)).rows);
  return rows;
}

/** The relation a name means now. */
export async function oidOf(db: pg.Client, qualified: string): Promise<number> {
  const res = await db.query("SELECT to_regclass($1)::oid::int8 AS oid", [qualified]);
  assert.ok(res.rows[0].oid !== null, `${qualified} does not exist`);
  return Number(res.rows[0].oid);
}

/**
 * Replay from the newest full_reload and from the first one (with every
 * streaming row after it) both equal the live table.
 */
export async function assertBothReplaysEqual(
  w: StreamEnv,
  schema: string,
  table: string,
): Promise<void> {
  const live = await liveRows(w.db, schema, table);
  for (const from of ["newest", "first"] as const) {
    const replayed = await replayedRows(
      w.registry,
      w.dataDir,
      schema,
      table,
      "cdc_egress",
      from,
      w.db,
    );
    if (JSON.stringify(replayed) !== JSON.stringify(live)) {
      const r = new Set(replayed);
      const l = new Set(live);
      assert.fail(
        `replay of ${schema}.${table} from the ${from} full_reload differs: ${replayed.length} rows replayed, ${live.length} live; missing ${
          JSON.stringify(live.filter((x) => !r.has(x)).slice(0, 3))
        }; extra ${JSON.stringify(replayed.filter((x) => !l.has(x)).slice(0, 3))}`,
      );
    }
  }
}

/**
 * For every relation, its folders (DDL and export folders included) sort by
 * the position their content is valid from, within each table dir.
 */
export async function assertFolderOrder(w: StreamEnv): Promise<void> {
  const files = await fileLog(w.registry);
  const oids = await w.registry.query(
    "SELECT id::int8, relation_oid::int8 AS oid, table_dir FROM cdc_registry.file_log",
  );
  const meta = new Map(oids.rows.map((r) => [Number(r.id), r]));
  const groups = new Map<string, typeof files>();
  for (const f of files) {
    const m = meta.get(f.id)!;
    const key = `${m.oid}/${m.table_dir}`;
    groups.set(key, [...(groups.get(key) ?? []), f]);
  }
  for (const [key, list] of groups) {
    // An export's content is valid from just before any change at its LSN.
    const seq = (f: (typeof files)[number]) => (f.fileType === "full_reload" ? -1 : f.startSeq!);
    const byLsn = [...list].sort((a, b) => {
      const d = lsnValue(a.startLsn) - lsnValue(b.startLsn);
      return d < 0n ? -1 : d > 0n ? 1 : seq(a) - seq(b);
    });
    const byName = [...list].sort((a, b) => a.batchTs.localeCompare(b.batchTs));
    assert.deepEqual(
      byName.map((f) => f.path),
      byLsn.map((f) => f.path),
      `folder order of relation/table dir ${key} is not LSN order`,
    );
  }
}

/** `cdc-egress verify --deep` exits 0, replaying from the newest and from the first full_reload. */
export async function assertVerifyDeep(w: StreamEnv): Promise<void> {
  for (const from of ["newest", "first"]) {
    const r = await runCli(["verify", "--deep", "--from", from], w.env);
    assert.equal(r.code, 0, `verify --deep --from ${from}: ${r.stdout}${r.stderr}`);
  }
}

/** Every change of transaction `xid` on a relation is in its files: none was cut off. */
export async function assertWholeTransaction(
  w: StreamEnv,
  oid: number,
  xid: string,
  changes: number,
): Promise<void> {
  const rows = await relationRows(w, oid);
  const mine = rows.filter((r) => r[4] === xid).length;
  assert.equal(mine, changes, `changes of transaction ${xid} in the files of relation ${oid}`);
}
