/**
 * Rebuilds a table from its registered files, the way README tells
 * consumers to: the newest full_reload (its LSN C), then every streaming
 * row with `_cdc_lsn` >= C in (`_cdc_lsn`, `_cdc_seq`) order.
 */

import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { parse as parseYaml } from "yaml";
import { type Lsn, parseLsn } from "../lsn.ts";
import type { Registry } from "../registry/registry.ts";
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

/** Replays a table's files from `dataDir`; returns the rebuilt table. */
export async function replayTable(
  registry: Registry,
  dataDir: string,
  schema: string,
  table: string,
  options: ReplayOptions = {},
): Promise<{ replay: TableReplay | null; files: number; rows: number }> {
  const oid = options.oid ?? await registry.registeredOid(schema, table);
  if (oid === null) return { replay: null, files: 0, rows: 0 };
  const files = await registry.replayFiles(oid, options.from);
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
