/**
 * The DuckDB targets of `materialize`: `duckdb:PATH` (typed columns, see
 * duckdb_types.ts), and the state behind `csv:DIR` (every column VARCHAR,
 * PostgreSQL's exact text) and `parquet:DIR`. DuckDB is a native addon,
 * imported here only, when one of these targets is used.
 *
 * A full_reload is read by DuckDB's own CSV reader (PostgreSQL's dialect:
 * `"` quote and escape, unquoted empty = NULL, `""` = empty string); a
 * folded delta is written to a staging CSV file beside the database and
 * applied with set statements. Progress lives in `cdc_egress.progress` in
 * the same database, committed with the rows.
 */

import { rename } from "node:fs/promises";
import { createWriteStream } from "node:fs";
import { createGzip } from "node:zlib";
import { once } from "node:events";
import { formatLsn, type Lsn, parseLsn } from "../lsn.ts";
import type { Delta } from "../replay/change_folder.ts";
import { columnMapping, type TableShape } from "../replay/folder_schema.ts";
import type { PlanFile } from "../replay/replay_plan.ts";
import type { ReplayPosition } from "../replay/replay_sink.ts";
import { CdcError } from "../errors.ts";
import { CsvRowEncoder, encodeCsvHeader } from "../write/csv_row_encoder.ts";
import { type DeltaDialect, deltaStatements, encodeStage, stageColumns } from "./delta_sql.ts";
import { DUCKDB_VARCHAR, type DuckdbColumnType, duckdbColumnType } from "./duckdb_types.ts";
import { type StagedPart, stagePartPath, StageParts } from "./stage_parts.ts";
import { STAGE_PARTS } from "./target_spec.ts";
import {
  buildPrefix,
  LongLines,
  type MaterializeTarget,
  PROGRESS_DDL,
  PROGRESS_TABLE,
  type SourceTable,
  type TableProgress,
  type TableSink,
  WidenColumn,
} from "./materialize_target.ts";

// Structural types of the parts of @duckdb/node-api we use (it is imported lazily).
interface DuckConnection {
  run(sql: string): Promise<unknown>;
  runAndReadAll(sql: string): Promise<{ getRowsJS(): unknown[][]; getRows(): unknown[][] }>;
  stream(
    sql: string,
  ): Promise<{ fetchChunk(): Promise<{ rowCount: number; getRows(): unknown[][] } | null> }>;
  closeSync(): void;
}

function ident(name: string): string {
  return '"' + name.replaceAll('"', '""') + '"';
}

function literal(text: string): string {
  return "'" + text.replaceAll("'", "''") + "'";
}

/**
 * DuckDB's CSV options for PostgreSQL's COPY dialect, every column VARCHAR.
 * DuckDB's reader needs a whole row in one buffer, and its buffers make most
 * of its memory: rows up to 1 MiB by default (2 MiB buffers), up to 16 MiB
 * for a table that needed it ({@linkcode LONG_LINE}).
 */
function csvOptions(names: string[], header: boolean, longLines = false): string {
  const line = longLines ? 16 << 20 : 1 << 20;
  const columns = names.map((n) => `${literal(n)}: 'VARCHAR'`).join(", ");
  return `header = ${header}, delim = ',', quote = '"', escape = '"', new_line = '\\n',
    allow_quoted_nulls = false, auto_detect = false, max_line_size = ${line}, buffer_size = ${
    2 * line
  },
    columns = {${columns}}`;
}

/**
 * DuckDB's buffer pool (it spills beyond it). A table with rows longer than
 * 1 MiB gets {@linkcode LONG_LINE_MEMORY_LIMIT}, for its 32 MiB CSV buffers
 * and its vectors of long values.
 */
const MEMORY_LIMIT = "64MB";
const LONG_LINE_MEMORY_LIMIT = "128MB";
/**
 * A rebuild's buffer pool while it loads its full_reload and applies and
 * commits staged rows: the statements need little, and DuckDB keeps what
 * it may.
 */
const REBUILD_MEMORY_LIMIT = "32MB";
/**
 * Bytes of staged rows that a rebuild keeps on disk before its full_reload
 * is loaded; past them the full_reload is loaded and later staged rows are
 * applied whenever they reach twice `runChars`.
 */
const STAGE_BEFORE_LOAD_BYTES = 256 << 20;

const WIDEN = /cdc-egress: widen column (\d+)/;
/**
 * DuckDB's errors for a row longer than max_line_size (in a gzip file its
 * parallel reader reports that it cannot read the file).
 */
const LONG_LINE = /Maximum line size|Parallel CSV Reader currently does not support a full read/i;

/** What the DuckDB database behind a target is for. */
export type DuckdbRole = "duckdb" | "csv" | "parquet";

/** `materialize --to duckdb:PATH` (and the state of csv: and parquet:). */
export class DuckdbTarget implements MaterializeTarget {
  readonly #instance: { closeSync(): void };
  readonly #conn: DuckConnection;
  readonly #slot: string;
  readonly #role: DuckdbRole;
  readonly #stagePath: string;
  readonly #outDir: string | null;
  /** Columns to keep VARCHAR per table (values that did not fit their type). */
  readonly widened = new Map<string, Set<string>>();
  /** Tables whose files have rows longer than the default line limit. */
  readonly longLines = new Set<string>();

  private constructor(
    instance: { closeSync(): void },
    conn: DuckConnection,
    slot: string,
    role: DuckdbRole,
    stagePath: string,
    outDir: string | null,
  ) {
    this.#instance = instance;
    this.#conn = conn;
    this.#slot = slot;
    this.#role = role;
    this.#stagePath = stagePath;
    this.#outDir = outDir;
  }

  /**
   * Opens (or creates) the database at `dbPath`. `outDir` is where csv: and
   * parquet: write their files.
   */
  static async open(
    dbPath: string,
    slot: string,
    role: DuckdbRole,
    outDir: string | null = null,
  ): Promise<DuckdbTarget> {
    const { DuckDBInstance } = await import("@duckdb/node-api");
    let conn: DuckConnection;
    let instance: { closeSync(): void };
    try {
      const created = await DuckDBInstance.create(dbPath);
      instance = created;
      conn = await created.connect() as unknown as DuckConnection;
    } catch (error) {
      throw new CdcError(
        "config",
        `Cannot open DuckDB database "${dbPath}": ${
          String((error as Error).message).split("\n")[0]
        }`,
        { cause: error },
      );
    }
    await conn.run("SET TimeZone = 'UTC'");
    await conn.run(`SET memory_limit = '${MEMORY_LIMIT}'`);
    await conn.run("SET allocator_flush_threshold = '8MB'");
    await conn.run("SET preserve_insertion_order = false");
    // A bulk insert buffers this many row groups (122,880 rows each) before
    // it writes them: one, not five, holds less.
    await conn.run("SET write_buffer_row_group_count = 1");
    await conn.run("CREATE SCHEMA IF NOT EXISTS cdc_egress");
    await conn.run(PROGRESS_DDL);
    return new DuckdbTarget(instance, conn, slot, role, `${dbPath}.cdc-stage.csv`, outDir);
  }

  get connection(): DuckConnection {
    return this.#conn;
  }

  async progress(t: SourceTable): Promise<TableProgress | null> {
    const r = await this.#conn.runAndReadAll(
      `SELECT full_reload_path, applied_lsn, applied_seq, shape, extra FROM ${PROGRESS_TABLE}
       WHERE schema_name = ${literal(t.schema)} AND table_name = ${literal(t.table)}`,
    );
    const row = r.getRowsJS()[0] as [string, string, number, string, string] | undefined;
    if (!row) return null;
    return {
      fullReloadPath: row[0],
      position: { lsn: parseLsn(row[1]), seq: Number(row[2]) },
      shape: JSON.parse(row[3]),
      extra: JSON.parse(row[4]),
    };
  }

  async exists(t: SourceTable): Promise<boolean> {
    const r = await this.#conn.runAndReadAll(
      `SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database()
       AND schema_name = ${literal(t.schema)} AND table_name = ${literal(t.table)}`,
    );
    return Number(r.getRowsJS()[0][0]) > 0;
  }

  /** Column type for a table's column, honouring widened columns. */
  columnType(t: SourceTable, name: string, pgType: string): DuckdbColumnType {
    if (this.widened.get(`${t.schema}.${t.table}`)?.has(name)) return DUCKDB_VARCHAR;
    return duckdbColumnType(pgType, this.#role === "csv");
  }

  sink(t: SourceTable, rebuild: boolean, prior: TableProgress | null): Promise<TableSink> {
    return Promise.resolve(
      new DuckdbTableSink(this, this.#conn, this.#slot, t, rebuild, prior, this.#stagePath),
    );
  }

  /** csv: and parquet: write the table's file (atomically) when it changed since the last one. */
  async publish(t: SourceTable, tableDir: string): Promise<void> {
    if (!this.#outDir) return;
    const p = await this.progress(t);
    if (!p) return;
    const mark = `${formatLsn(p.position.lsn as Lsn)}:${p.position.seq}:${p.fullReloadPath}`;
    const ext = this.#role === "csv" ? "csv.gz" : "parquet";
    const final = `${this.#outDir}/${tableDir}.${ext}`;
    if (p.extra.published === mark && await exists(final)) return;
    const tmp = `${this.#outDir}/.tmp-${tableDir}.${ext}`;
    const q = `${ident(t.schema)}.${ident(t.table)}`;
    if (this.#role === "parquet") {
      await this.#conn.run(`COPY (SELECT * FROM ${q}) TO ${literal(tmp)} (FORMAT parquet)`);
    } else {
      await this.#exportCsv(q, p.shape, tmp);
    }
    await rename(tmp, final);
    p.extra.published = mark;
    await this.#conn.run(
      `UPDATE ${PROGRESS_TABLE} SET extra = ${literal(JSON.stringify(p.extra))}
       WHERE schema_name = ${literal(t.schema)} AND table_name = ${literal(t.table)}`,
    );
  }

  /** Writes the table in COPY's CSV dialect with header (values are PostgreSQL's text). */
  async #exportCsv(table: string, shape: TableShape, path: string): Promise<void> {
    const gzip = createGzip({ level: 6 });
    const out = createWriteStream(path, { mode: 0o600 });
    const done = new Promise<void>((resolve, reject) => {
      out.on("finish", resolve);
      out.on("error", reject);
      gzip.on("error", reject);
    });
    gzip.pipe(out);
    const write = async (bytes: Uint8Array) => {
      if (!gzip.write(bytes)) await once(gzip, "drain");
    };
    await write(encodeCsvHeader(shape.columns.map((c) => c.name)));
    const csv = new CsvRowEncoder();
    const result = await this.#conn.stream(`SELECT * FROM ${table}`);
    for (
      let chunk = await result.fetchChunk();
      chunk && chunk.rowCount > 0;
      chunk = await result.fetchChunk()
    ) {
      for (const row of chunk.getRows()) {
        for (const v of row) csv.fieldText(v === null ? null : String(v));
        csv.endRow();
      }
      if (csv.byteLength >= 1 << 16) await write(csv.takeChunk());
    }
    if (csv.byteLength > 0) await write(csv.takeChunk());
    gzip.end();
    await done;
  }

  async close(): Promise<void> {
    await Deno.remove(this.#stagePath).catch(() => {});
    for (let part = 0; part < STAGE_PARTS; part++) {
      await Deno.remove(stagePartPath(this.#stagePath, part)).catch(() => {});
    }
    this.#conn.closeSync();
    this.#instance.closeSync();
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

class DuckdbTableSink implements TableSink {
  /**
   * DuckDB joins a delta by scanning the table: fewer, larger deltas. A
   * rebuild appends its deltas to staging files applied in one step, so
   * small ones cost nothing there and die young in V8's heap.
   */
  get runSize(): number {
    return this.#rebuild ? 2_000 : 25_000;
  }
  readonly runChars = 16 << 20;
  readonly #target: DuckdbTarget;
  readonly #conn: DuckConnection;
  readonly #slot: string;
  readonly #t: SourceTable;
  readonly #rebuild: boolean;
  readonly #stagePath: string;
  #inTx = false;
  #name: string;
  #types: DuckdbColumnType[] = [];
  #typeNames: string[];
  #fullReloadPath: string;
  #position: ReplayPosition | null = null;
  #shape: TableShape | null;
  #extra: Record<string, unknown>;
  /**
   * A rebuild of a keyed table defers its full_reload: the changes are read
   * and folded first, and their deltas appended to staging files (keys to
   * delete, rows that replace their key's row). Then one step loads the
   * full_reload without the rows of staged keys and inserts each key's last
   * staged row ({@linkcode #settle}). DuckDB never deletes rows it has just
   * loaded (its commit would write those row groups again), and the fold
   * and the load do not hold their memory at the same time.
   */
  #staging = false;
  /** The full_reload that the next settle loads. */
  #deferred: string | null = null;
  #loadedRows = 0;
  /** The staging files that staged deltas append to (see stage_parts.ts). */
  #staged: StageParts | null = null;

  constructor(
    target: DuckdbTarget,
    conn: DuckConnection,
    slot: string,
    t: SourceTable,
    rebuild: boolean,
    prior: TableProgress | null,
    stagePath: string,
  ) {
    this.#target = target;
    this.#conn = conn;
    this.#slot = slot;
    this.#t = t;
    this.#rebuild = rebuild;
    this.#stagePath = stagePath;
    this.#name = t.table;
    this.#typeNames = (prior?.extra.types as string[] | undefined) ?? [];
    this.#fullReloadPath = prior?.fullReloadPath ?? "";
    this.#shape = prior?.shape ?? null;
    this.#extra = { ...(prior?.extra ?? {}) };
    delete this.#extra.published;
    // A column kept VARCHAR on an earlier run stays VARCHAR.
    if (this.#shape) {
      this.#types = this.#shape.columns.map((c, i) =>
        this.#typeNames[i] === "VARCHAR" ? DUCKDB_VARCHAR : this.#colType(c.name, c.type)
      );
    }
  }

  get #longLines(): boolean {
    return this.#target.longLines.has(`${this.#t.schema}.${this.#t.table}`);
  }

  #colType(name: string, pgType: string): DuckdbColumnType {
    return this.#target.columnType(this.#t, name, pgType);
  }

  get #qualified(): string {
    return `${ident(this.#t.schema)}.${ident(this.#name)}`;
  }

  async #run(sql: string): Promise<unknown[][]> {
    try {
      return (await this.#conn.runAndReadAll(sql)).getRowsJS();
    } catch (error) {
      const message = String((error as Error).message);
      const m = WIDEN.exec(message);
      if (m && this.#shape) throw new WidenColumn(this.#shape.columns[Number(m[1])].name);
      if (LONG_LINE.test(message) && !this.#longLines) throw new LongLines();
      throw error;
    }
  }

  async #begin(): Promise<void> {
    if (this.#inTx) return;
    await this.#conn.run("BEGIN TRANSACTION");
    this.#inTx = true;
    await this.#conn.run(
      `SET memory_limit = '${this.#longLines ? LONG_LINE_MEMORY_LIMIT : MEMORY_LIMIT}'`,
    );
    // A read that failed left its transaction unable to reset this (see #reading).
    await this.#conn.run("RESET threads");
    // A column widened on an earlier attempt: make the existing table match.
    if (!this.#rebuild && this.#shape) {
      for (let i = 0; i < this.#types.length; i++) {
        if (this.#types[i].type !== this.#typeNames[i]) {
          await this.#run(
            `ALTER TABLE ${this.#qualified} ALTER ${ident(this.#shape.columns[i].name)} TYPE ${
              this.#types[i].type
            }`,
          );
        }
      }
      this.#typeNames = this.#types.map((t) => t.type);
    }
  }

  /** Cast from the staged text, failing with a widen marker where the value would not fit. */
  #cast(x: string, i: number): string {
    const t = this.#types[i];
    if (!t.exact) return t.cast(x);
    return `CASE WHEN ${x} IS NULL THEN NULL
            ELSE coalesce(${t.exact(x)}, error('cdc-egress: widen column ${i}')) END`;
  }

  #dialect(shape: TableShape): DeltaDialect {
    const cols = shape.columns.map((c) => ident(c.name));
    return {
      ident,
      cast: (x, i) => this.#cast(x, i),
      rowMatch: () => "",
      removeRows: (table, stage) =>
        `DELETE FROM ${table} WHERE rowid IN (
           SELECT rid FROM (
             SELECT t.rowid AS rid, CAST(s._cnt AS INTEGER) AS cnt,
                    row_number() OVER (PARTITION BY s._n ORDER BY t.rowid) AS rn
             FROM ${table} t JOIN ${stage} s ON s._kind = 'X' AND ${
          cols.map((c, i) => `t.${c} IS NOT DISTINCT FROM ${this.#cast(`s.c${i}`, i)}`).join(
            " AND ",
          )
        }) WHERE rn <= cnt)`,
      truncate: (table) => `DELETE FROM ${table}`,
    };
  }

  async reset(shape: TableShape): Promise<void> {
    await this.#begin();
    await this.#run(`CREATE SCHEMA IF NOT EXISTS ${ident(this.#t.schema)}`);
    // Build tables of this table left by a crash.
    const left = await this.#run(
      `SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()
       AND schema_name = ${literal(this.#t.schema)}
       AND starts_with(table_name, ${literal(buildPrefix(this.#t.table))})`,
    );
    for (const [name] of left) {
      await this.#run(`DROP TABLE ${ident(this.#t.schema)}.${ident(String(name))}`);
    }
    this.#name = `${buildPrefix(this.#t.table)}${crypto.randomUUID().slice(0, 8)}`;
    this.#shape = shape;
    this.#types = shape.columns.map((c) => this.#colType(c.name, c.type));
    this.#typeNames = this.#types.map((t) => t.type);
    const cols = shape.columns.map((c, i) => `${ident(c.name)} ${this.#types[i].type}`);
    await this.#run(`CREATE TABLE ${this.#qualified} (${cols.join(", ")})`);
    this.#staging = shape.keyed;
    this.#deferred = null;
    this.#loadedRows = 0;
  }

  async loadFullReload(path: string, shape: TableShape): Promise<number> {
    if (!this.#staging) return await this.#loadBase(path, shape, false);
    this.#deferred = path;
    return 0;
  }

  /**
   * Inserts the full_reload's rows; with `skipStaged`, the rows of keys in
   * `temp._cdc_keys` are left out.
   */
  async #loadBase(path: string, shape: TableShape, skipStaged: boolean): Promise<number> {
    await this.#begin();
    const names = shape.columns.map((_c, i) => `c${i}`);
    const read = `read_csv(${literal(path)}, compression = 'gzip', ${
      csvOptions(names, true, this.#longLines)
    })`;
    const values = names.map((n, i) => `${this.#cast(n, i)} AS ${n}`).join(", ");
    const keyCols = shape.columns.flatMap((c, i) => c.isKey ? [i] : []);
    const skip = skipStaged
      ? ` WHERE NOT EXISTS (SELECT 1 FROM temp._cdc_keys k WHERE ${
        keyCols.map((c, k) => `k.k${k} = b.c${c}`).join(" AND ")
      })`
      : "";
    const r = await this.#reading(() =>
      this.#run(
        `INSERT INTO ${this.#qualified} (${shape.columns.map((c) => ident(c.name)).join(", ")})
         SELECT ${names.join(", ")} FROM (SELECT ${values} FROM ${read}) b${skip}`,
      )
    );
    return Number(r[0]?.[0] ?? 0);
  }

  /**
   * Brings the build table up to date: the deferred full_reload loaded and
   * staged rows applied.
   */
  async #settle(): Promise<void> {
    const shape = this.#shape;
    if (!shape) return;
    const base = this.#deferred;
    this.#deferred = null;
    const stage = this.#staged;
    this.#staged = null;
    if (!stage) {
      if (base) this.#loadedRows += await this.#loadBase(base, shape, false);
      return;
    }
    let parts: StagedPart[] = [];
    try {
      parts = stage.close();
      // The fold's garbage goes before DuckDB takes its memory for the load
      // (V8 keeps freed pages otherwise); the flag is in a materialize build.
      if (base) (globalThis as { gc?: () => void }).gc?.();
      await this.#applyStaged(shape, parts, base);
    } finally {
      for (const p of parts) await Deno.remove(p.path).catch(() => {});
    }
  }

  async settle(): Promise<number> {
    await this.#settle();
    const n = this.#loadedRows;
    this.#loadedRows = 0;
    return n;
  }

  async reshape(from: TableShape, to: TableShape): Promise<void> {
    await this.#settle();
    if (this.#rebuild && this.#inTx) {
      // DuckDB cannot commit an ALTER that follows deletes of committed rows
      // in one transaction (the staged rows' flush deletes).
      await this.#conn.run("COMMIT");
      this.#inTx = false;
    }
    await this.#begin();
    const map = columnMapping(from, to);
    const q = this.#qualified;
    const kept = new Set(map.filter((i) => i >= 0));
    for (let i = 0; i < from.columns.length; i++) {
      if (!kept.has(i)) {
        await this.#run(`ALTER TABLE ${q} DROP COLUMN ${ident(from.columns[i].name)}`);
      }
    }
    const renamed = map.flatMap((f, j) =>
      f >= 0 && from.columns[f].name !== to.columns[j].name ? [[f, j]] : []
    );
    for (const [f, j] of renamed) {
      await this.#run(
        `ALTER TABLE ${q} RENAME COLUMN ${ident(from.columns[f].name)} TO ${
          ident(`_cdc_rename_${j}`)
        }`,
      );
    }
    for (const [, j] of renamed) {
      await this.#run(
        `ALTER TABLE ${q} RENAME COLUMN ${ident(`_cdc_rename_${j}`)} TO ${
          ident(to.columns[j].name)
        }`,
      );
    }
    const types = to.columns.map((c, j) =>
      map[j] >= 0 && this.#typeNames[map[j]] === "VARCHAR" && from.columns[map[j]].type === c.type
        ? DUCKDB_VARCHAR
        : this.#colType(c.name, c.type)
    );
    for (let j = 0; j < to.columns.length; j++) {
      const name = ident(to.columns[j].name);
      if (map[j] < 0) {
        await this.#run(`ALTER TABLE ${q} ADD COLUMN ${name} ${types[j].type}`);
      } else if (this.#typeNames[map[j]] !== types[j].type) {
        await this.#run(
          `ALTER TABLE ${q} ALTER ${name} TYPE ${types[j].type} USING ${
            types[j].cast(`CAST(${name} AS VARCHAR)`)
          }`,
        );
      }
    }
    this.#types = types;
    this.#typeNames = types.map((t) => t.type);
    this.#shape = to;
  }

  async apply(delta: Delta, shape: TableShape): Promise<void> {
    // Values kept from the target's row (unchanged TOAST), multiset removals
    // and TRUNCATE need the table as it is: apply those in place.
    const staged = this.#staging && !delta.truncate && delta.removals.length === 0 &&
      delta.rows.every((r) => r.base === null);
    if (staged) return await this.#stageDelta(delta, shape);
    await this.#settle();
    await this.#applyInPlace(delta, shape);
  }

  /**
   * Appends a keyed delta (keys to delete, rows that replace their key's
   * row) to the staging files; applied by {@linkcode #settle}.
   */
  async #stageDelta(delta: Delta, shape: TableShape): Promise<void> {
    this.#staged ??= new StageParts(this.#stagePath, shape);
    this.#staged.add(delta);
    // Staged rows are applied whenever they grow large; before the
    // full_reload is in, only past a larger bound (the disk they take).
    const bound = this.#deferred ? STAGE_BEFORE_LOAD_BYTES : 2 * this.runChars;
    if (this.#staged.bytes >= bound) await this.#settle();
  }

  /**
   * Applies staged rows: the rows of every staged key go (or, with the
   * deferred full_reload `base`, are left out of its load), then the last
   * staged row of each key that ends with a row comes in.
   */
  async #applyStaged(shape: TableShape, parts: StagedPart[], base: string | null): Promise<void> {
    await this.#begin();
    const keyCols = shape.columns.flatMap((c, i) => c.isKey ? [i] : []);
    const cols = shape.columns.map((c) => ident(c.name));
    const rows = parts.reduce((n, p) => n + p.rows, 0);
    if (!this.#longLines) await this.#conn.run(`SET memory_limit = '${REBUILD_MEMORY_LIMIT}'`);
    // The files are read where they are used (twice), not copied into a
    // table: DuckDB keeps only the columns used.
    const staged = `read_csv([${parts.map((p) => literal(p.path)).join(", ")}], ${
      csvOptions(stageColumns(shape), false, this.#longLines)
    })`;
    // The keys go into a table first: DuckDB then knows they are fewer than
    // the table's rows and hashes them, not the table. Each key keeps the
    // number of its last staged row: fewer keys than rows means a key was
    // staged more than once, and only its last row counts.
    await this.#reading(() =>
      this.#run(
        `CREATE TEMP TABLE _cdc_keys AS SELECT ${
          keyCols.map((c, k) => `${this.#cast(`c${c}`, c)} AS k${k}`).join(", ")
        }, max(CAST(_n AS BIGINT)) AS _n FROM ${staged} GROUP BY ALL`,
      )
    );
    const keys = Number((await this.#run("SELECT count(*) FROM temp._cdc_keys"))[0][0]);
    if (base) this.#loadedRows += await this.#loadBase(base, shape, true);
    else {
      const on = keyCols.map((c, k) => `t.${cols[c]} = k.k${k}`).join(" AND ");
      await this.#run(
        `DELETE FROM ${this.#qualified} t WHERE EXISTS (SELECT 1 FROM temp._cdc_keys k WHERE ${on})`,
      );
    }
    const last = keys < rows ? " AND CAST(_n AS BIGINT) IN (SELECT _n FROM temp._cdc_keys)" : "";
    await this.#reading(() =>
      this.#run(
        `INSERT INTO ${this.#qualified} (${cols.join(", ")})
         SELECT ${shape.columns.map((_c, i) => this.#cast(`c${i}`, i)).join(", ")}
         FROM ${staged} WHERE _kind = 'U'${last}`,
      )
    );
    await this.#run("DROP TABLE temp._cdc_keys");
    if (!this.#longLines) await this.#conn.run(`SET memory_limit = '${MEMORY_LIMIT}'`);
  }

  /** Reads the staging file into `temp._cdc_stage`. */
  async #stage(shape: TableShape): Promise<void> {
    await this.#run("DROP TABLE IF EXISTS temp._cdc_stage");
    await this.#reading(() =>
      this.#run(
        `CREATE TEMP TABLE _cdc_stage AS SELECT * FROM read_csv(${literal(this.#stagePath)}, ${
          csvOptions(stageColumns(shape), false, this.#longLines)
        })`,
      )
    );
  }

  /**
   * Runs a read_csv statement: a table with long rows is read on one
   * thread, as two readers' 32 MiB buffers would not fit its memory limit.
   * (A rebuild's reads run while Deno waits for them, on every thread.)
   */
  async #reading<T>(read: () => Promise<T>): Promise<T> {
    if (!this.#longLines) return await read();
    await this.#conn.run("SET threads = 1");
    try {
      return await read();
    } finally {
      // In a transaction the failed read aborted this fails; #begin resets it then.
      await this.#conn.run("RESET threads").catch(() => {});
    }
  }

  async #applyInPlace(delta: Delta, shape: TableShape): Promise<void> {
    await this.#begin();
    const file = await Deno.open(this.#stagePath, {
      write: true,
      create: true,
      truncate: true,
      mode: 0o600,
    });
    try {
      await encodeStage(delta, shape, async (c) => {
        let off = 0;
        while (off < c.length) off += await file.write(c.subarray(off));
      });
    } finally {
      file.close();
    }
    await this.#stage(shape);
    for (
      const sql of deltaStatements(
        delta,
        shape,
        this.#qualified,
        "temp._cdc_stage",
        "_cdc_kept",
        this.#dialect(shape),
      )
    ) await this.#run(sql);
    await this.#run("DROP TABLE temp._cdc_stage");
  }

  async #saveProgress(): Promise<void> {
    const values = [
      this.#t.schema,
      this.#t.table,
      this.#slot,
      this.#fullReloadPath,
      formatLsn(this.#position!.lsn as Lsn),
    ].map(literal);
    const extra = { ...this.#extra, types: this.#typeNames };
    await this.#run(
      `INSERT OR REPLACE INTO ${PROGRESS_TABLE} VALUES (${values.join(", ")}, ${
        this.#position!.seq
      }, ${literal(JSON.stringify(this.#shape))}, ${literal(JSON.stringify(extra))}, ${
        literal(new Date().toISOString())
      })`,
    );
  }

  async fileDone(file: PlanFile, position: ReplayPosition, shape: TableShape): Promise<void> {
    if (file.fileType === "full_reload") this.#fullReloadPath = file.path;
    this.#position = position;
    this.#shape = shape;
    if (!this.#inTx) return;
    // A rebuild commits file by file into its build table (bounded transactions);
    // its progress is written only when the table is swapped in. A deferred
    // full_reload and staged rows are applied by a later transaction of the rebuild.
    if (!this.#rebuild) await this.#saveProgress();
    await this.#conn.run("COMMIT");
    this.#inTx = false;
  }

  async finish(): Promise<void> {
    await this.#settle();
    if (!this.#rebuild) {
      if (this.#inTx) await this.abort();
      return;
    }
    await this.#begin();
    await this.#run(`DROP TABLE IF EXISTS ${ident(this.#t.schema)}.${ident(this.#t.table)}`);
    await this.#run(`ALTER TABLE ${this.#qualified} RENAME TO ${ident(this.#t.table)}`);
    this.#name = this.#t.table;
    await this.#saveProgress();
    // The commit writes the table out (a checkpoint): on one thread, in a
    // small pool, it holds less.
    if (!this.#longLines) await this.#conn.run(`SET memory_limit = '${REBUILD_MEMORY_LIMIT}'`);
    await this.#conn.run("SET threads = 1");
    try {
      await this.#conn.run("COMMIT");
    } finally {
      await this.#conn.run("RESET threads").catch(() => {});
    }
    this.#inTx = false;
  }

  async abort(): Promise<void> {
    this.#staged?.abort();
    this.#staged = null;
    this.#deferred = null;
    if (this.#inTx) {
      this.#inTx = false;
      await this.#conn.run("ROLLBACK").catch(() => {});
    }
    // A build table left by an interrupted rebuild goes; a crash leaves it to the next rebuild.
    if (this.#rebuild && this.#name !== this.#t.table) {
      await this.#run(`DROP TABLE IF EXISTS ${this.#qualified}`).catch(() => {});
    }
  }
}
