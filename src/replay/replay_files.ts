/**
 * Rebuilds a table from its registered files, the way README tells
 * consumers to: the newest full_reload (its LSN C), then every streaming
 * row with `_cdc_lsn` >= C in (`_cdc_lsn`, `_cdc_seq`) order.
 */

import { join } from "node:path";
import { gunzipSync } from "node:zlib";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { parse as parseYaml } from "yaml";
import { type Lsn, parseLsn } from "../lsn.ts";
import { type CsvField, parseCsv } from "./csv_reader.ts";
import { TableReplay } from "./table_replay.ts";

/** One registered file as replay needs it. */
export interface ReplayFile {
  path: string;
  fileType: "streaming" | "full_reload" | "ddl";
  startLsn: Lsn;
}

/** Reads a gzip CSV file into rows (header first). */
export async function readCsvGz(path: string): Promise<CsvField[][]> {
  return parseCsv(new TextDecoder().decode(gunzipSync(await Deno.readFile(path))));
}

async function folderSchema(
  dataDir: string,
  path: string,
): Promise<{ columns: string[]; keys: number[]; attnums: (number | null)[] }> {
  const yml = parseYaml(
    await Deno.readTextFile(join(dataDir, path.replace(/[^/]+$/, "schema.yml"))),
  ) as { columns: { name: string; is_key: boolean; attnum?: number }[] };
  return {
    columns: yml.columns.map((c) => c.name),
    keys: yml.columns.flatMap((c, i) => c.is_key ? [i] : []),
    attnums: yml.columns.map((c) => c.attnum ?? null),
  };
}

/** Where replay starts. */
export interface ReplayOptions {
  /**
   * `newest` (default): the newest full_reload, the fastest start.
   * `first`: the first full_reload of the table's current history (after
   * the newest reload forced by DDL that changed rows or by a name that came
   * to mean this relation), then every streaming row: the complete history.
   */
  from?: "newest" | "first";
  /** The relation; by default the one that has the name in the registry now. */
  oid?: number;
}

/** The relation (OID) that a table name means in the registry, or null. */
export async function registeredOid(
  registry: pg.Client,
  slot: string,
  schema: string,
  table: string,
): Promise<number | null> {
  const res = await registry.query(
    `SELECT relation_oid::int8 AS oid FROM cdc_registry.table_state
     WHERE slot_name = $1 AND schema_name = $2 AND table_name = $3
     ORDER BY mode <> 'dropped' DESC, updated_at DESC LIMIT 1`,
    [slot, schema, table],
  );
  return res.rows[0] ? Number(res.rows[0].oid) : null;
}

/**
 * The files of one relation in replay order: a full_reload (see
 * {@linkcode ReplayOptions}), then the streaming files that reach past it.
 */
export async function replayFiles(
  registry: pg.Client,
  slot: string,
  oid: number,
  from: "newest" | "first" = "newest",
): Promise<ReplayFile[]> {
  const res = await registry.query(
    `WITH reloads AS (
       SELECT start_lsn, reload_reason FROM cdc_registry.file_log
       WHERE slot_name = $1 AND relation_oid = $2 AND file_type = 'full_reload'),
     base AS (
       SELECT CASE WHEN $3 = 'first'
         THEN COALESCE((SELECT max(start_lsn) FROM reloads WHERE reload_reason IN ('ddl', 'rename')),
                       (SELECT min(start_lsn) FROM reloads))
         ELSE (SELECT max(start_lsn) FROM reloads) END AS lsn)
     SELECT f.path, f.file_type, f.start_lsn::text AS start_lsn
     FROM cdc_registry.file_log f, base
     WHERE f.slot_name = $1 AND f.relation_oid = $2
       AND ((f.file_type = 'full_reload' AND f.start_lsn = base.lsn)
         OR (f.file_type = 'streaming' AND (base.lsn IS NULL OR f.end_lsn >= base.lsn))
         OR (f.file_type = 'ddl' AND base.lsn IS NOT NULL AND f.start_lsn >= base.lsn))
     ORDER BY f.start_lsn, COALESCE(f.start_seq, -1)`,
    [slot, oid, from],
  );
  return res.rows.map((r) => ({
    path: r.path,
    fileType: r.file_type,
    startLsn: parseLsn(r.start_lsn),
  }));
}

/** Replays a table's files from `dataDir`; returns the rebuilt table. */
export async function replayTable(
  registry: pg.Client,
  dataDir: string,
  slot: string,
  schema: string,
  table: string,
  options: ReplayOptions = {},
): Promise<{ replay: TableReplay | null; files: number; rows: number }> {
  const oid = options.oid ?? await registeredOid(registry, slot, schema, table);
  if (oid === null) return { replay: null, files: 0, rows: 0 };
  const files = await replayFiles(registry, slot, oid, options.from);
  let replay: TableReplay | null = null;
  let base: Lsn | null = null;
  let rows = 0;
  for (const f of files) {
    if (f.fileType === "ddl") {
      // Columns added or dropped by DDL exist from here on, even before a
      // changed row shows them.
      const shape = await folderSchema(dataDir, f.path).catch(() => null);
      if (replay && shape && replay.differs(shape.columns, shape.attnums)) {
        replay.remap(shape.columns, shape.keys, shape.attnums);
      }
      continue;
    }
    const parsed = await readCsvGz(join(dataDir, f.path));
    const header = parsed[0] as string[];
    const columns = f.fileType === "full_reload" ? header : header.slice(7);
    const { keys, attnums } = await folderSchema(dataDir, f.path);
    if (!replay) replay = new TableReplay(columns, keys, attnums);
    else if (replay.differs(columns, attnums)) replay.remap(columns, keys, attnums);
    if (f.fileType === "full_reload") {
      base = f.startLsn;
      replay.load(parsed.slice(1));
      rows += parsed.length - 1;
      continue;
    }
    for (let i = 1; i < parsed.length; i++) {
      const row = parsed[i];
      if (base !== null && parseLsn(row[1] as string) < base) continue;
      replay.apply(row);
      rows++;
    }
  }
  return { replay, files: files.length, rows };
}
