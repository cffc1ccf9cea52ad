/**
 * Rebuilds a table from its registered files with the replay rule and
 * compares it with the live table, for integration tests.
 */

import { gunzipSync } from "node:zlib";
import { join } from "node:path";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { parse as parseYaml } from "yaml";
import { parseCsv } from "../../src/replay/csv_reader.ts";
import { Registry } from "../../src/registry/registry.ts";
import { replayTable } from "../../src/replay/replay_files.ts";
import { qualifiedName } from "../../src/source/table_selection.ts";

const RAW_TYPES = { getTypeParser: () => (v: string) => v } as unknown as pg.CustomTypesConfig;

/** Registered streaming rows of one table, in file order, metadata included. */
export async function registeredRows(
  client: pg.Client,
  dataDir: string,
  schema: string,
  table: string,
): Promise<{ header: string[]; rows: (string | null)[][]; keyColumns: number[]; files: number }> {
  const files = await client.query(
    `SELECT path FROM cdc_registry.file_log WHERE schema_name = $1 AND table_name = $2
     AND file_type = 'streaming' ORDER BY start_lsn, start_seq`,
    [schema, table],
  );
  let header: string[] = [];
  let keyColumns: number[] = [];
  const rows: (string | null)[][] = [];
  for (const f of files.rows) {
    const bytes = await Deno.readFile(join(dataDir, f.path));
    const parsed = parseCsv(new TextDecoder().decode(gunzipSync(bytes)));
    header = parsed[0] as string[];
    for (let i = 1; i < parsed.length; i++) rows.push(parsed[i]);
    const yml = parseYaml(
      await Deno.readTextFile(join(dataDir, f.path.replace(/[^/]+$/, "schema.yml"))),
    );
    keyColumns = yml.columns.flatMap((c: { isKey?: boolean; is_key?: boolean }, i: number) =>
      (c.isKey ?? c.is_key) ? [i] : []
    );
  }
  return { header, rows, keyColumns, files: files.rowCount ?? 0 };
}

/** The live table's rows as text, sorted by their JSON form. */
export async function liveRows(
  client: pg.Client,
  schema: string,
  table: string,
): Promise<string[]> {
  const res = await client.query({
    text: `SELECT * FROM ${qualifiedName({ schema, table })}`,
    rowMode: "array",
    types: RAW_TYPES,
  });
  return res.rows.map((r) => JSON.stringify(r)).sort();
}

/**
 * Replays the files of the relation a table name means in `source` (newest
 * full_reload, or the first one, then later streaming rows) and returns its
 * sorted rows. `client` is the registry's connection.
 */
export async function replayedRows(
  client: pg.Client,
  dataDir: string,
  schema: string,
  table: string,
  slot = "cdc_egress",
  from: "newest" | "first" = "newest",
  source: pg.Client = client,
): Promise<string[]> {
  const live = await source.query("SELECT to_regclass($1)::oid::int8 AS oid", [
    qualifiedName({ schema, table }),
  ]);
  const oid = live.rows[0]?.oid == null ? undefined : Number(live.rows[0].oid);
  const { replay } = await replayTable(
    new Registry(client, slot),
    dataDir,
    schema,
    table,
    { from, oid },
  );
  return replay?.sortedRows() ?? [];
}
