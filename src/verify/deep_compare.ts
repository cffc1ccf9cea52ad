/** `verify --deep`: replay each table from its files and compare with the live table. */

import type { LayoutFiles } from "../storage/layout_files.ts";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import type { Config } from "../config.ts";
import type { Registry } from "../registry/registry.ts";
import { replayTable } from "../replay/replay_files.ts";
import { connect } from "../source/connect.ts";
import { qualifiedName, quoteIdent } from "../source/table_selection.ts";
import type { DeepResult, TableReport, VerifyReport } from "./verify_report.ts";

const DIFF_KEYS = 5;
const RAW_TYPES = { getTypeParser: () => (v: string) => v } as unknown as pg.CustomTypesConfig;

/**
 * Replays each table and compares it with the live table. All live tables
 * are read in one REPEATABLE READ transaction, i.e. one snapshot.
 */
export async function deepCompare(
  config: Config,
  dataDir: string | LayoutFiles,
  registry: Registry,
  tables: TableReport[],
  report: VerifyReport,
  clients: pg.Client[],
  from: "newest" | "first",
): Promise<void> {
  const live = await connect(config.sourceUrl, {
    role: "source",
    applicationName: "cdc-egress/verify",
  });
  clients.push(live);
  await live.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
  try {
    const snap = await live.query("SELECT pg_current_wal_lsn()::text AS lsn");
    report.deep_snapshot_lsn = snap.rows[0].lsn;
    if (report.stream_running) {
      report.notes.push(
        "a stream is running: --deep compares the files with the live tables as of now, so changes not yet in registered files show up as differences",
      );
    }
    for (const t of tables) {
      t.deep = await deepTable(registry, live, dataDir, t, report, from);
    }
  } finally {
    await live.query("COMMIT").catch(() => {});
  }
}

function emptyDeep(skipped: string): DeepResult {
  return {
    replayed_rows: 0,
    live_rows: 0,
    matching_rows: 0,
    missing_rows: 0,
    extra_rows: 0,
    differing_keys: [],
    skipped,
  };
}

async function deepTable(
  registry: Registry,
  live: pg.Client,
  dataDir: string | LayoutFiles,
  t: TableReport,
  report: VerifyReport,
  from: "newest" | "first",
): Promise<DeepResult> {
  if (t.mode === "dropped") return emptyDeep("table dropped");
  const liveRel = await live.query("SELECT to_regclass($1)::oid::int8 AS oid", [qualifiedName(t)]);
  const oid = liveRel.rows[0]?.oid == null ? null : Number(liveRel.rows[0].oid);
  if (oid === null) return emptyDeep("live table not found");
  if (!(await registry.hasDataFiles(oid))) return emptyDeep("no data files registered yet");
  const cols = await live.query(
    `SELECT a.attname AS name FROM pg_attribute a
     WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attgenerated = '' ORDER BY a.attnum`,
    [qualifiedName(t)],
  );
  if (cols.rowCount === 0) return emptyDeep("live table not found");
  const liveColumns = cols.rows.map((r) => r.name as string);

  let replay;
  try {
    replay = (await replayTable(registry, dataDir, t.schema, t.table, { oid, from })).replay;
  } catch (error) {
    report.problems.push({
      kind: "deep_error",
      table: t.name,
      path: null,
      detail: `cannot replay the files: ${(error as Error).message.split("\n")[0]}`,
    });
    return emptyDeep("replay failed");
  }
  if (!replay) return emptyDeep("no data files registered yet");
  // Compare on the columns both sides have: a column added or dropped by DDL
  // reaches the files only with the next changed row.
  const common = replay.columns.filter((c) => liveColumns.includes(c));
  const onlyFiles = replay.columns.filter((c) => !liveColumns.includes(c));
  const onlyLive = liveColumns.filter((c) => !replay.columns.includes(c));
  const project = common.map((c) => replay.columns.indexOf(c));
  const identity = project.length === replay.columns.length && project.every((v, i) => v === i);
  const keyNames = replay.keyColumns.map((i) => replay.columns[i]).filter((c) =>
    common.includes(c)
  );
  const keyIdx = (keyNames.length > 0 ? keyNames : common).map((c) => common.indexOf(c));
  const keyOf = (row: (string | null)[]) => JSON.stringify(keyIdx.map((i) => row[i] ?? null));

  const counts = new Map<string, number>();
  let replayed = 0;
  for (const json of replay.sortedRows()) {
    const row = identity ? json : JSON.stringify(project.map((i) => JSON.parse(json)[i] ?? null));
    counts.set(row, (counts.get(row) ?? 0) + 1);
    replayed++;
  }
  const result = await live.query({
    text: `SELECT ${common.map(quoteIdent).join(", ") || "NULL"} FROM ${qualifiedName(t)}`,
    rowMode: "array",
    types: RAW_TYPES,
  });
  let matching = 0;
  const missingKeys = new Set<string>();
  for (const r of result.rows as (string | null)[][]) {
    const row = JSON.stringify(common.length ? r : []);
    const n = counts.get(row) ?? 0;
    if (n > 0) {
      matching++;
      if (n === 1) counts.delete(row);
      else counts.set(row, n - 1);
    } else {
      missingKeys.add(keyOf(common.length ? r : []));
    }
  }
  const extraKeys = new Set<string>();
  let extra = 0;
  for (const [row, n] of counts) {
    extra += n;
    extraKeys.add(keyOf(JSON.parse(row)));
  }
  const liveCount = result.rows.length;
  const keys = [...new Set([...missingKeys, ...extraKeys])].sort().slice(0, DIFF_KEYS);
  const deep: DeepResult = {
    replayed_rows: replayed,
    live_rows: liveCount,
    matching_rows: matching,
    missing_rows: liveCount - matching,
    extra_rows: extra,
    differing_keys: keys.map((k) => {
      const values = JSON.parse(k) as (string | null)[];
      const key: Record<string, string | null> = {};
      keyIdx.forEach((ci, i) => key[common[ci]] = truncate(values[i]));
      return {
        key,
        side: missingKeys.has(k) && extraKeys.has(k)
          ? "both"
          : missingKeys.has(k)
          ? "live"
          : "files",
      };
    }),
  };
  if (onlyFiles.length + onlyLive.length > 0) {
    deep.note = `compared on the common columns; only in the files: ${
      onlyFiles.join(", ") || "none"
    }; only in the live table: ${onlyLive.join(", ") || "none"}`;
    report.problems.push({
      kind: "deep_columns",
      table: t.name,
      path: null,
      detail: `columns not compared: only in the files: ${
        onlyFiles.join(", ") || "none"
      }; only in the live table: ${onlyLive.join(", ") || "none"}`,
    });
  }
  if (deep.missing_rows + deep.extra_rows > 0) {
    report.problems.push({
      kind: "deep_mismatch",
      table: t.name,
      path: null,
      detail:
        `replay of the files gives ${replayed} rows, the live table has ${liveCount}: ${deep.missing_rows} live rows not in the files, ${deep.extra_rows} replayed rows not live; differing keys: ${
          deep.differing_keys.map((d) => `${JSON.stringify(d.key)} (${sideText(d.side)})`).join(
            ", ",
          )
        }`,
    });
  }
  return deep;
}

function truncate(v: string | null): string | null {
  return v !== null && v.length > 64 ? v.slice(0, 61) + "..." : v;
}

function sideText(side: "live" | "files" | "both"): string {
  return side === "both" ? "values differ" : side === "live" ? "only live" : "only in files";
}
