/**
 * Exports one table inside a snapshot transaction: `COPY (SELECT ...) TO
 * STDOUT (FORMAT csv, HEADER)` streamed straight into gzip, never the whole
 * table in memory, plus the folder's schema.yml. The file stays under its
 * temp name until the caller has registered it and calls `publish()`.
 */

import { join } from "node:path";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import type { Lsn } from "../lsn.ts";
import { formatLsn, ZERO_LSN } from "../lsn.ts";
import { copyOut } from "../source/copy_out.ts";
import { qualifiedName, quoteIdent } from "../source/table_selection.ts";
import { dirname } from "node:path";
import {
  ensureDir,
  syncDir,
  syncFile,
  TEMP_PREFIX,
  writeAll,
  writeFileAtomic,
} from "../write/atomic_file.ts";
import { createHash } from "node:crypto";
import type { DurableBatch } from "../write/durable_batch.ts";
import { GzipFileWriter } from "../write/gzip_file_writer.ts";
import {
  BufferedGzipFile,
  type BufferedGzipFileOptions,
  writeSealedBytes,
} from "../write/buffered_gzip_file.ts";
import type { SealedExportFile } from "../storage/export_uploads.ts";
import { uploadedExport } from "./uploaded_export.ts";
import { renderSchemaYml, type TableSchema } from "../write/schema_yml.ts";
import type { HeldExportBudget } from "./held_export_budget.ts";

/** Name of the export file inside a batch folder. */
export const FULL_RELOAD_FILE = "full_reload.csv.gz";

const IDENTITY: Record<string, TableSchema["replicaIdentity"]> = {
  d: "default",
  n: "nothing",
  f: "full",
  i: "index",
};

/**
 * A finished export, sealed in a staging folder. Its table folder is named
 * only when the stream reaches the export's boundary, so the file moves
 * into it then ({@linkcode StagedExport.place}), is registered, and only
 * then gets its final name ({@linkcode StagedExport.publish}).
 */
export interface StagedExport {
  schema: TableSchema;
  rows: number;
  byteSize: number;
  sha256: string;
  /**
   * Moves the file, still under its temp name, into `<dataDir>/<tableDir>/<batchTs>/`
   * with the folder's schema.yml; returns its path relative to the data dir.
   * With `batch`, the directory fsyncs are left to it (one per directory
   * for many exports): flush it before the registry commit.
   */
  place(
    tableDir: string,
    batchTs: string,
    previousName?: string | null,
    batch?: DurableBatch,
  ): Promise<string>;
  /**
   * Renames the placed file to its final name; call after the registry
   * commit. With `batch`, the rename is not fsynced: crash recovery renames
   * a registered file that is still under its temp name.
   */
  publish(batch?: DurableBatch): Promise<void>;
  /** Removes the file wherever it is and the staging folder. */
  abort(): Promise<void>;
}

/** Where a staged export's bytes are until it is placed. */
type StagedData = { path: string } | { bytes: Uint8Array };

/**
 * Builds the {@linkcode StagedExport} of a sealed file (at a path, or in
 * memory); `stageDir`, when given, is the export's own staging folder,
 * removed with it.
 */
function stagedExport(
  dataDir: string,
  stageDir: string | null,
  staged: StagedData,
  budget: HeldExportBudget | null,
  schema: TableSchema,
  rows: number,
  sealed: { byteSize: number; sha256: string },
): StagedExport {
  let at = "path" in staged ? staged.path : null;
  let bytes = "bytes" in staged ? staged.bytes : null;
  const release = () => {
    if (bytes === null) return;
    budget?.release(bytes.length);
    bytes = null;
  };
  let finalPath: string | null = null;
  return {
    schema,
    rows,
    byteSize: sealed.byteSize,
    sha256: sealed.sha256,
    async place(tableDir, batchTs, previousName, batch) {
      const dir = join(dataDir, tableDir, batchTs);
      const temp = join(dir, `${TEMP_PREFIX}${FULL_RELOAD_FILE}`);
      const yml = new TextEncoder().encode(renderSchemaYml({ ...schema, previousName }));
      const arrive = () => {
        if (bytes !== null) {
          writeSealedBytes(temp, bytes);
          release();
        } else {
          Deno.renameSync(at!, temp);
        }
        at = temp;
        finalPath = join(dir, FULL_RELOAD_FILE);
      };
      // The staging folder needs no fsync: it is emptied at start. The file
      // was sealed without an fsync: it is made durable here, at its new
      // place (an fsync follows the inode), before it is registered.
      if (batch) {
        batch.mkdir(dir, dataDir);
        arrive();
        batch.syncFileLater(temp);
        batch.syncLater(dir);
        batch.writeFile(join(dir, "schema.yml"), yml);
      } else {
        await ensureDir(dir);
        arrive();
        await syncFile(temp);
        await syncDir(dir);
        await writeFileAtomic(join(dir, "schema.yml"), yml);
      }
      return `${tableDir}/${batchTs}/${FULL_RELOAD_FILE}`;
    },
    async publish(batch) {
      if (finalPath === null) throw new RangeError("Cannot publish an export before placing it");
      // A registered file still under its temp name is renamed by crash
      // recovery, so with a batch the new entry needs no fsync of its own.
      if (batch) Deno.renameSync(at!, finalPath);
      else {
        await Deno.rename(at!, finalPath);
        await syncDir(dirname(finalPath));
      }
      if (stageDir !== null) await Deno.remove(stageDir, { recursive: true }).catch(() => {});
    },
    async abort() {
      release();
      if (at !== null) await Deno.remove(at).catch(() => {});
      if (stageDir !== null) await Deno.remove(stageDir, { recursive: true }).catch(() => {});
    },
  };
}

/**
 * Describes a table from the catalog as of the transaction's snapshot, with
 * the columns pgoutput publishes (no dropped or generated columns) and the
 * replica identity columns flagged as keys, as pgoutput flags them.
 */
export async function describeTable(
  client: pg.Client,
  oid: number,
  validFromLsn: Lsn,
): Promise<TableSchema> {
  const described = await describeRelation(client, oid, validFromLsn);
  if (described === null) throw new Error(`table with oid ${oid} no longer exists`);
  return described.schema;
}

/**
 * {@linkcode describeTable} plus the relation's kind, in one round trip;
 * null when no relation has that OID in the transaction's snapshot.
 */
export async function describeRelation(
  client: pg.Client,
  oid: number,
  validFromLsn: Lsn,
): Promise<DescribedRelation | null> {
  return (await describeRelations(client, [oid], validFromLsn)).get(oid) ?? null;
}

/** A relation as {@linkcode describeRelations} finds it. */
export interface DescribedRelation {
  schema: TableSchema;
  relkind: string;
}

/**
 * Describes many relations in one query (see {@linkcode describeTable}),
 * keyed by OID; an OID with no relation in the snapshot is left out. An
 * export of thousands of small tables pays per round trip.
 */
export async function describeRelations(
  client: pg.Client,
  oids: number[],
  validFromLsn: Lsn,
): Promise<Map<number, DescribedRelation>> {
  const rel = await client.query(
    `SELECT c.oid::int8 AS oid, n.nspname AS schema, c.relname AS table,
            c.relreplident AS ident, c.relkind,
            COALESCE((
              SELECT json_agg(json_build_object(
                       'name', a.attname, 'attnum', a.attnum,
                       'type', format_type(a.atttypid, a.atttypmod),
                       'type_oid', a.atttypid::int8, 'typmod', a.atttypmod,
                       'not_null', a.attnotnull, 'default', pg_get_expr(d.adbin, d.adrelid),
                       'is_pk', EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid
                                          AND i.indisprimary AND a.attnum = ANY(i.indkey)),
                       'is_identity', EXISTS (SELECT 1 FROM pg_index i
                                              WHERE i.indrelid = a.attrelid
                                                AND ((c.relreplident = 'd' AND i.indisprimary)
                                                  OR (c.relreplident = 'i' AND i.indisreplident))
                                                AND a.attnum = ANY(i.indkey)))
                       ORDER BY a.attnum)
              FROM pg_attribute a
              LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                AND a.attgenerated = ''), '[]'::json) AS cols
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = ANY($1::oid[])`,
    [oids],
  );
  const out = new Map<number, DescribedRelation>();
  for (const row of rel.rows) {
    const { schema, table, ident, relkind } = row;
    const oid = Number(row.oid);
    const cols: {
      name: string;
      attnum: number;
      type: string;
      type_oid: number;
      typmod: number;
      not_null: boolean;
      default: string | null;
      is_pk: boolean;
      is_identity: boolean;
    }[] = typeof row.cols === "string" ? JSON.parse(row.cols) : row.cols;
    out.set(oid, {
      relkind,
      schema: {
        schema,
        table,
        relationOid: oid,
        validFromLsn: formatLsn(validFromLsn),
        replicaIdentity: IDENTITY[ident] ?? "default",
        primaryKey: cols.filter((c) => c.is_pk).map((c) => c.name),
        columns: cols.map((c) => ({
          name: c.name,
          type: c.type,
          typeOid: Number(c.type_oid),
          typeModifier: Number(c.typmod),
          nullable: !c.not_null,
          isKey: ident === "f" || c.is_identity,
          attnum: Number(c.attnum),
          default: c.default,
        })),
      },
    });
  }
  return out;
}

/** A block range of a heap table, exported as one gzip member of a split export. */
export interface ExportPart {
  index: number;
  /** First block (inclusive). */
  from: number;
  /** Last block (exclusive); null for "to the end". */
  to: number | null;
}

/** One finished part of a split export, sealed under a temp name. */
export interface SealedPart {
  index: number;
  tempPath: string;
  rows: number;
}

async function copyInto(
  client: pg.Client,
  schema: TableSchema,
  only: string,
  where: string,
  header: boolean,
  writer: GzipFileWriter | BufferedGzipFile,
  onBytes: (csvBytes: number) => void,
): Promise<number> {
  const list = schema.columns.map((c) => quoteIdent(c.name)).join(", ");
  const options = header ? "FORMAT csv, HEADER" : "FORMAT csv";
  // `COPY t (cols) TO` reads the rows `SELECT cols FROM ONLY t` reads,
  // without a query to parse and plan: cheaper for thousands of small
  // tables. A partitioned table, a block range, and a table whose columns
  // are all generated or dropped (it still exports its row count) need a query.
  const sql = only !== "" && where === "" && list !== ""
    ? `COPY ${qualifiedName(schema)} (${list}) TO STDOUT (${options})`
    : `COPY (SELECT ${list || "NULL"} FROM ${only}${
      qualifiedName(schema)
    }${where}) TO STDOUT (${options})`;
  const result = { rowCount: 0 };
  let csvBytes = 0;
  for await (const chunk of copyOut(client, sql, result)) {
    csvBytes += chunk.length;
    await writer.write(chunk);
    onBytes(csvBytes);
  }
  return result.rowCount;
}

/** A table's rows copied into a gzip temp file that is not sealed yet. */
export interface CopiedTable {
  rows: number;
  schema: TableSchema;
  /**
   * Finishes the file (not fsynced: {@linkcode StagedExport.place} makes it
   * durable); needs no database connection.
   */
  seal(): Promise<StagedExport>;
  /** Removes the unsealed file. */
  abort(): Promise<void>;
}

/**
 * Exports table `oid` through `client`, which must be inside the snapshot
 * transaction, up to the seal: the database work is done when it returns,
 * so the caller may go on to the next table on the same connection while
 * the file is finished. The file goes to the staging folder `stageDir`
 * (shared with other exports; it must exist), or stays in memory when small
 * and `options.held` has room. `onBytes` is called with the number of CSV
 * bytes read so far.
 */
export async function copyTable(
  client: pg.Client,
  oid: number,
  snapshotLsn: Lsn,
  dataDir: string,
  stageDir: string,
  onBytes: (csvBytes: number) => void = () => {},
  described?: DescribedRelation,
  options: {
    checkName?: boolean;
    held?: HeldExportBudget;
    open?: BufferedGzipFileOptions["open"];
  } = {},
): Promise<CopiedTable> {
  const rel = described ?? await describeRelation(client, oid, snapshotLsn);
  if (rel === null) throw new Error(`table with oid ${oid} no longer exists`);
  const { schema } = rel;
  const only = rel.relkind === "p" ? "" : "ONLY ";
  // Many exports share the staging folder (which must exist): a folder per
  // table would cost a mkdir and an rmdir each. It is emptied at start.
  const name = `${oid}.${FULL_RELOAD_FILE}`;
  const tempPath = join(stageDir, `${TEMP_PREFIX}${name}`);
  // Small tables (most of them, when there are thousands) stay in memory
  // until the seal writes them in one call.
  const writer = new BufferedGzipFile(join(stageDir, name), { tempPath, open: options.open });
  let rows: number;
  try {
    rows = await copyInto(client, schema, only, "", true, writer, onBytes);
    if (options.checkName !== false) await assertNameMeans(client, schema, oid);
  } catch (error) {
    await writer.abort().catch(() => {});
    throw error;
  }
  return {
    rows,
    schema,
    abort: () => writer.abort().catch(() => {}),
    async seal() {
      try {
        if (!writer.streaming) {
          const { bytes, ...sealed } = writer.sealInMemory();
          const held = options.held;
          if (held?.tryTake(bytes.length)) {
            return stagedExport(dataDir, null, { bytes }, held, schema, rows, sealed);
          }
          writeSealedBytes(tempPath, bytes);
          return stagedExport(dataDir, null, { path: tempPath }, null, schema, rows, sealed);
        }
        // Not fsynced: the file is synced where it is placed, with its folder.
        const sealed: SealedExportFile = await writer.seal({ sync: false });
        if (sealed.uploaded) return uploadedExport(dataDir, sealed.uploaded, schema, rows, sealed);
        return stagedExport(dataDir, null, { path: tempPath }, null, schema, rows, sealed);
      } catch (error) {
        await writer.abort().catch(() => {});
        throw error;
      }
    },
  };
}

/**
 * Of `tables` (each exported by COPY in this transaction, which holds its
 * lock), the ones whose name no longer means their relation: see
 * {@linkcode assertNameMeans}. One query for all of them.
 */
export async function namesMoved(
  client: pg.Client,
  tables: { oid: number; schema: TableSchema }[],
): Promise<Set<number>> {
  const res = await client.query(
    `SELECT u.i::int AS i, to_regclass(u.name)::oid::int8 AS oid
     FROM unnest($1::text[]) WITH ORDINALITY AS u(name, i)`,
    [tables.map((t) => qualifiedName(t.schema))],
  );
  const moved = new Set<number>();
  for (const r of res.rows) {
    const t = tables[r.i - 1];
    if (r.oid === null || Number(r.oid) !== t.oid) moved.add(t.oid);
  }
  return moved;
}

/**
 * Throws unless the table's name (as the snapshot knows it) still means
 * relation `oid`. COPY finds its table by name in the current catalog, so a
 * table renamed after the snapshot, and another one renamed onto its name,
 * would export the wrong rows. COPY's lock on what it read keeps that name
 * in place until the transaction ends, so one check after it suffices.
 */
async function assertNameMeans(client: pg.Client, schema: TableSchema, oid: number) {
  const res = await client.query("SELECT to_regclass($1)::oid::int8 AS oid", [
    qualifiedName(schema),
  ]);
  const now = res.rows[0]?.oid;
  if (now === null || Number(now) !== oid) {
    throw new Error(
      `table ${
        qualifiedName(schema)
      } was renamed or dropped during the export; it is exported again`,
    );
  }
}

/**
 * Exports one block range of a heap table (a TID range scan) as a gzip
 * file of its own; part 0 carries the CSV header. The parts are joined by
 * {@linkcode joinParts}: concatenated gzip members form one valid file.
 */
export async function exportTablePart(
  client: pg.Client,
  oid: number,
  part: ExportPart,
  stageDir: string,
  onBytes: (csvBytes: number) => void = () => {},
): Promise<SealedPart> {
  // Parts carry no schema.yml: the LSN is not used.
  const schema = await describeTable(client, oid, ZERO_LSN);
  const dir = stageDir;
  await ensureDir(dir);
  const tempPath = join(dir, `.tmp-${FULL_RELOAD_FILE}.part${part.index}`);
  const finalPath = join(dir, `.tmp-${FULL_RELOAD_FILE}.part${part.index}.done`);
  const writer = await GzipFileWriter.create(finalPath, { tempPath });
  try {
    const where = ` WHERE ctid >= '(${part.from},0)'::tid` +
      (part.to === null ? "" : ` AND ctid < '(${part.to},0)'::tid`);
    const rows = await copyInto(client, schema, "ONLY ", where, part.index === 0, writer, onBytes);
    await assertNameMeans(client, schema, oid);
    await writer.seal();
    return { index: part.index, tempPath, rows };
  } catch (error) {
    await writer.abort().catch(() => {});
    throw error;
  }
}

/**
 * Joins sealed parts, in order, into the table's full_reload temp file and
 * writes schema.yml; the result publishes like a whole-table export.
 */
export async function joinParts(
  client: pg.Client,
  oid: number,
  snapshotLsn: Lsn,
  dataDir: string,
  stageDir: string,
  parts: SealedPart[],
): Promise<StagedExport> {
  const schema = await describeTable(client, oid, snapshotLsn);
  const tempPath = join(stageDir, `${TEMP_PREFIX}${FULL_RELOAD_FILE}`);
  const hash = createHash("sha256");
  let byteSize = 0;
  const out = await Deno.open(tempPath, { write: true, create: true, truncate: true, mode: 0o600 });
  try {
    for (const part of [...parts].sort((a, b) => a.index - b.index)) {
      const input = await Deno.open(part.tempPath, { read: true });
      try {
        const buf = new Uint8Array(1024 * 1024);
        while (true) {
          const n = await input.read(buf);
          if (n === null) break;
          const chunk = buf.subarray(0, n);
          hash.update(chunk);
          byteSize += n;
          await writeAll(out, chunk);
        }
      } finally {
        input.close();
      }
    }
    await out.sync();
  } finally {
    out.close();
  }
  for (const part of parts) await Deno.remove(part.tempPath).catch(() => {});
  const rows = parts.reduce((n, p) => n + p.rows, 0);
  return stagedExport(dataDir, stageDir, { path: tempPath }, null, schema, rows, {
    byteSize,
    sha256: hash.digest("hex"),
  });
}
