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
  fileType: "streaming" | "full_reload";
  startLsn: Lsn;
}

/** Reads a gzip CSV file into rows (header first). */
export async function readCsvGz(path: string): Promise<CsvField[][]> {
  return parseCsv(new TextDecoder().decode(gunzipSync(await Deno.readFile(path))));
}

async function folderSchema(
  dataDir: string,
  path: string,
): Promise<{ keys: number[]; attnums: (number | null)[] }> {
  const yml = parseYaml(
    await Deno.readTextFile(join(dataDir, path.replace(/[^/]+$/, "schema.yml"))),
  ) as { columns: { is_key: boolean; attnum?: number }[] };
  return {
    keys: yml.columns.flatMap((c, i) => c.is_key ? [i] : []),
    attnums: yml.columns.map((c) => c.attnum ?? null),
  };
}

/** The files of one table in replay order: the newest full_reload, then later streaming files. */
export async function replayFiles(
  registry: pg.Client,
  slot: string,
  schema: string,
  table: string,
): Promise<ReplayFile[]> {
  const res = await registry.query(
    `WITH base AS (
       SELECT max(start_lsn) AS lsn FROM cdc_registry.file_log
       WHERE slot_name = $1 AND schema_name = $2 AND table_name = $3 AND file_type = 'full_reload')
     SELECT f.path, f.file_type, f.start_lsn::text AS start_lsn
     FROM cdc_registry.file_log f, base
     WHERE f.slot_name = $1 AND f.schema_name = $2 AND f.table_name = $3
       AND ((f.file_type = 'full_reload' AND f.start_lsn = base.lsn)
         OR (f.file_type = 'streaming' AND (base.lsn IS NULL OR f.end_lsn >= base.lsn)))
     ORDER BY f.start_lsn, f.file_type = 'streaming', f.start_seq`,
    [slot, schema, table],
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
): Promise<{ replay: TableReplay | null; files: number; rows: number }> {
  const files = await replayFiles(registry, slot, schema, table);
  let replay: TableReplay | null = null;
  let base: Lsn | null = null;
  let rows = 0;
  for (const f of files) {
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
