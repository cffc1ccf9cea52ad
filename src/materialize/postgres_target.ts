/**
 * The PostgreSQL target of `materialize`: tables with the source's schema,
 * names and column types (from schema.yml), so every value reads back
 * byte-identical under COPY. A full_reload is COPYed in as it is; changes
 * are staged with COPY and applied with set statements; progress lives in
 * `cdc_egress.progress`, written in the same transaction as the rows.
 */

import { createReadStream } from "node:fs";
import { once } from "node:events";
import { finished, pipeline } from "node:stream/promises";
import { Readable, type Writable } from "node:stream";
import { createGunzip } from "node:zlib";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { from as copyFrom } from "pg-copy-streams";
import { CdcError } from "../errors.ts";
import { formatLsn, parseLsn } from "../lsn.ts";
import type { Delta } from "../replay/change_folder.ts";
import type { CsvField } from "../replay/csv_reader.ts";
import { columnMapping, type TableShape } from "../replay/folder_schema.ts";
import type { PlanFile } from "../replay/replay_plan.ts";
import type { ReplayPosition } from "../replay/replay_sink.ts";
import { quoteIdent } from "../source/table_selection.ts";
import { CsvRowEncoder } from "../write/csv_row_encoder.ts";
import { BaseRowFilter } from "./base_row_filter.ts";
import { type DeltaDialect, deltaStatements, encodeStage, stageColumns } from "./delta_sql.ts";
import { TOUCHED_KEYS_BYTES, TouchedKeys } from "./touched_keys.ts";
import {
  buildPrefix,
  type MaterializeTarget,
  PROGRESS_DDL,
  PROGRESS_TABLE,
  type SourceTable,
  type TableProgress,
  type TableSink,
} from "./materialize_target.ts";

function randomSuffix(): string {
  return crypto.getRandomValues(new Uint32Array(2)).reduce(
    (s, v) => s + v.toString(16).padStart(8, "0"),
    "",
  );
}

/** `materialize --to postgres://...`. */
export class PostgresTarget implements MaterializeTarget {
  readonly #client: pg.Client;
  readonly #slot: string;
  #types = new Map<string, string>();

  private constructor(client: pg.Client, slot: string) {
    this.#client = client;
    this.#slot = slot;
  }

  /** Prepares the progress table on an open connection. */
  static async open(client: pg.Client, slot: string): Promise<PostgresTarget> {
    // Two runs into one database would apply the same files twice.
    const lock = await client.query(
      "SELECT pg_try_advisory_lock(hashtext('cdc_egress.materialize')) AS ok",
    );
    if (!lock.rows[0].ok) {
      throw new CdcError(
        "slot_active",
        "Cannot materialize into the target database: another materialize is writing to it",
      );
    }
    await client.query("CREATE SCHEMA IF NOT EXISTS cdc_egress");
    await client.query(PROGRESS_DDL);
    return new PostgresTarget(client, slot);
  }

  async progress(t: SourceTable): Promise<TableProgress | null> {
    const r = await this.#client.query(
      `SELECT * FROM ${PROGRESS_TABLE} WHERE schema_name = $1 AND table_name = $2`,
      [t.schema, t.table],
    );
    const row = r.rows[0];
    if (!row) return null;
    return {
      fullReloadPath: row.full_reload_path,
      position: { lsn: parseLsn(row.applied_lsn), seq: row.applied_seq },
      shape: JSON.parse(row.shape),
      extra: JSON.parse(row.extra),
    };
  }

  async exists(t: SourceTable): Promise<boolean> {
    const r = await this.#client.query("SELECT to_regclass($1) IS NOT NULL AS e", [
      `${quoteIdent(t.schema)}.${quoteIdent(t.table)}`,
    ]);
    return r.rows[0].e;
  }

  /** The source's type if the target knows it, else text (the value stays exact). */
  async targetType(pgType: string): Promise<string> {
    let t = this.#types.get(pgType);
    if (t === undefined) {
      const r = await this.#client.query(
        "SELECT pg_catalog.to_regtype($1) IS NOT NULL AS known",
        [pgType],
      ).catch(() => ({ rows: [{ known: false }] }));
      t = r.rows[0].known ? pgType : "text";
      this.#types.set(pgType, t);
    }
    return t;
  }

  sink(t: SourceTable, rebuild: boolean, prior: TableProgress | null): Promise<TableSink> {
    return Promise.resolve(
      new PostgresTableSink(this, this.#client, this.#slot, t, rebuild, prior),
    );
  }

  publish(): Promise<void> {
    return Promise.resolve();
  }

  async close(): Promise<void> {
    await this.#client.end().catch(() => {});
  }
}

class PostgresTableSink implements TableSink {
  /**
   * Small deltas: PostgreSQL applies a delta through the key index, or as
   * rows of one open COPY before the full_reload, so size gains little,
   * while every folded change stays in memory until its delta is applied
   * (a rebuild's are small enough to die in V8's young generation).
   */
  get runSize(): number {
    return this.#rebuild ? 2_000 : 10_000;
  }
  readonly runChars = 8 << 20;
  readonly #target: PostgresTarget;
  readonly #client: pg.Client;
  readonly #slot: string;
  readonly #t: SourceTable;
  readonly #rebuild: boolean;
  #inTx = false;
  /** Physical table name (a build table during a rebuild). */
  #name: string;
  #types: string[];
  #index: string | null;
  #fullReloadPath: string;
  #position: ReplayPosition | null = null;
  #shape: TableShape | null;
  /**
   * A rebuild of a keyed table loads its full_reload last: changes go into
   * the empty build table first (most as plain COPY), their keys are
   * remembered, and the full_reload's rows of those keys are left out.
   */
  #deferred: { path: string; shape: TableShape } | null = null;
  #touched: TouchedKeys | null = null;
  /** A TRUNCATE came before the full_reload was loaded: none of its rows stay. */
  #baseGone = false;
  /** The COPY that rows of keys not touched before go into (see #applyBeforeBase). */
  #copy: OpenCopy | null = null;
  /** Rows of the deferred full_reload, for {@linkcode settle}. */
  #deferredRows = 0;

  constructor(
    target: PostgresTarget,
    client: pg.Client,
    slot: string,
    t: SourceTable,
    rebuild: boolean,
    prior: TableProgress | null,
  ) {
    this.#target = target;
    this.#client = client;
    this.#slot = slot;
    this.#t = t;
    this.#rebuild = rebuild;
    this.#name = t.table;
    this.#types = (prior?.extra.types as string[] | undefined) ?? [];
    this.#index = (prior?.extra.index as string | null | undefined) ?? null;
    this.#fullReloadPath = prior?.fullReloadPath ?? "";
    this.#shape = prior?.shape ?? null;
  }

  get #qualified(): string {
    return `${quoteIdent(this.#t.schema)}.${quoteIdent(this.#name)}`;
  }

  async #begin(): Promise<void> {
    if (this.#inTx) return;
    await this.#q("BEGIN");
    this.#inTx = true;
  }

  async #q(sql: string, params?: unknown[]): Promise<pg.QueryResult> {
    await this.#endCopy();
    return await this.#client.query(sql, params);
  }

  #dialect(): DeltaDialect {
    const types = this.#types;
    return {
      ident: quoteIdent,
      cast: (x, i) => types[i] === "text" ? x : `CAST(${x} AS ${types[i]})`,
      rowMatch: () => "",
      removeRows: (table, stage) => {
        const row = types.map((_t, i) =>
          types[i] === "text" ? `c${i}` : `CAST(c${i} AS ${types[i]})`
        );
        return `DELETE FROM ${table} WHERE ctid = ANY (ARRAY(
          SELECT x.rid FROM (
            SELECT t.ctid AS rid, s.cnt, row_number() OVER (PARTITION BY s._n ORDER BY t.ctid) AS rn
            FROM ${table} t JOIN (SELECT _n, _cnt::int AS cnt, (ROW(${
          row.join(", ")
        })::${table})::text AS r
                                  FROM ${stage} WHERE _kind = 'X') s ON t::text = s.r) x
          WHERE x.rn <= x.cnt))`;
      },
      truncate: (table) => `TRUNCATE ${table}`,
    };
  }

  async #createIndex(shape: TableShape): Promise<void> {
    if (!shape.keyed) {
      this.#index = null;
      return;
    }
    this.#index = `_cdc_key_${randomSuffix()}`;
    const keys = shape.columns.filter((c) => c.isKey).map((c) => quoteIdent(c.name));
    await this.#q(
      `CREATE INDEX ${quoteIdent(this.#index)} ON ${this.#qualified} (${keys.join(", ")})`,
    );
  }

  async reset(shape: TableShape): Promise<void> {
    await this.#begin();
    await this.#q(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(this.#t.schema)}`);
    // Build tables of this table left by a crash (named after its oid-free name hash).
    const left = await this.#q(
      `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname LIKE $2`,
      [this.#t.schema, `${buildPrefix(this.#t.table)}%`],
    );
    for (const r of left.rows) {
      await this.#q(`DROP TABLE ${quoteIdent(this.#t.schema)}.${quoteIdent(r.relname)}`);
    }
    this.#name = `${buildPrefix(this.#t.table)}${randomSuffix().slice(0, 8)}`;
    this.#types = [];
    for (const c of shape.columns) this.#types.push(await this.#target.targetType(c.type));
    const cols = shape.columns.map((c, i) => `${quoteIdent(c.name)} ${this.#types[i]}`);
    await this.#q(`CREATE TABLE ${this.#qualified} (${cols.join(", ")})`);
    this.#shape = shape;
    this.#index = null;
    this.#baseGone = false;
    this.#touched = shape.keyed ? new TouchedKeys(shape) : null;
  }

  async loadFullReload(path: string, shape: TableShape): Promise<number> {
    if (this.#touched) {
      this.#deferred = { path, shape };
      return 0;
    }
    return await this.#loadBase(path, shape);
  }

  /** COPYs the full_reload in (without the rows of touched keys), then indexes the table. */
  async #loadBase(path: string, shape: TableShape): Promise<number> {
    await this.#endCopy();
    await this.#begin();
    const touched = this.#touched;
    this.#touched = null;
    let rows = 0;
    if (this.#baseGone) {
      rows = -1;
    } else {
      const cols = shape.columns.map((c) => quoteIdent(c.name)).join(", ");
      const copy = this.#client.query(
        copyFrom(`COPY ${this.#qualified} (${cols}) FROM STDIN (FORMAT csv, HEADER true)`),
      );
      const read = createReadStream(path, { highWaterMark: 1 << 18 });
      const gunzip = createGunzip({ chunkSize: 1 << 16 });
      if (touched && touched.size > 0) {
        const keyCols = shape.columns.flatMap((c, i) => c.isKey ? [i] : []);
        const filter = new BaseRowFilter(keyCols, touched);
        await pipeline(read, gunzip, filter, copy);
        rows = filter.rowsKept;
      } else {
        await pipeline(read, gunzip, copy);
        rows = (copy as unknown as { rowCount: number }).rowCount ?? 0;
      }
    }
    if (this.#index === null) await this.#createIndex(shape);
    // Keyed deltas go through the index by plan settings (see #applyInPlace); a
    // keyless table's deltas join on statistics.
    if (!shape.keyed) await this.#q(`ANALYZE ${this.#qualified}`);
    return Math.max(rows, 0);
  }

  /** Loads a deferred full_reload now (before anything that needs its rows). */
  async #settle(): Promise<void> {
    const d = this.#deferred;
    if (!d) return;
    this.#deferred = null;
    this.#deferredRows = await this.#loadBase(d.path, d.shape);
  }

  async settle(): Promise<number> {
    await this.#settle();
    const n = this.#deferredRows;
    this.#deferredRows = 0;
    return n;
  }

  async reshape(from: TableShape, to: TableShape): Promise<void> {
    await this.#settle();
    await this.#begin();
    const map = columnMapping(from, to);
    const q = this.#qualified;
    const kept = new Set(map.filter((i) => i >= 0));
    for (let i = 0; i < from.columns.length; i++) {
      if (!kept.has(i)) {
        await this.#q(`ALTER TABLE ${q} DROP COLUMN ${quoteIdent(from.columns[i].name)}`);
      }
    }
    // Renames go through temporary names, so that swaps (a <-> b) work.
    const renamed = map.flatMap((f, j) =>
      f >= 0 && from.columns[f].name !== to.columns[j].name ? [[f, j]] : []
    );
    for (const [f, j] of renamed) {
      await this.#q(
        `ALTER TABLE ${q} RENAME COLUMN ${quoteIdent(from.columns[f].name)} TO ${
          quoteIdent(`_cdc_rename_${j}`)
        }`,
      );
    }
    for (const [, j] of renamed) {
      await this.#q(
        `ALTER TABLE ${q} RENAME COLUMN ${quoteIdent(`_cdc_rename_${j}`)} TO ${
          quoteIdent(to.columns[j].name)
        }`,
      );
    }
    const types: string[] = [];
    for (let j = 0; j < to.columns.length; j++) {
      const c = to.columns[j];
      const type = await this.#target.targetType(c.type);
      types.push(type);
      if (map[j] < 0) {
        await this.#q(`ALTER TABLE ${q} ADD COLUMN ${quoteIdent(c.name)} ${type}`);
      } else if (this.#types[map[j]] !== type) {
        await this.#q(
          `ALTER TABLE ${q} ALTER COLUMN ${quoteIdent(c.name)} TYPE ${type} USING CAST(${
            quoteIdent(c.name)
          }::text AS ${type})`,
        );
      }
    }
    this.#types = types;
    const keys = (s: TableShape) =>
      JSON.stringify([s.keyed, s.columns.filter((c) => c.isKey).map((c) => c.attnum ?? c.name)]);
    if (keys(from) !== keys(to)) {
      if (this.#index) {
        await this.#q(
          `DROP INDEX IF EXISTS ${quoteIdent(this.#t.schema)}.${quoteIdent(this.#index)}`,
        );
      }
      await this.#createIndex(to);
    }
    this.#shape = to;
  }

  async apply(delta: Delta, shape: TableShape): Promise<void> {
    if (this.#deferred) {
      // Values kept from the target's row (unchanged TOAST) need the full_reload's rows.
      const direct = this.#touched!.bytes < TOUCHED_KEYS_BYTES &&
        delta.rows.every((r) => r.base === null) && delta.removals.length === 0;
      if (direct) return await this.#applyBeforeBase(delta, shape);
      await this.#settle();
    }
    await this.#applyInPlace(delta, shape);
  }

  /**
   * Applies a keyed delta while the full_reload is not loaded: the build
   * table holds just the rows of touched keys, so rows of keys not touched
   * before are COPYed in, and only keys touched before are deleted first.
   */
  async #applyBeforeBase(delta: Delta, shape: TableShape): Promise<void> {
    await this.#begin();
    const touched = this.#touched!;
    if (delta.truncate) {
      await this.#q(`TRUNCATE ${this.#qualified}`);
      this.#baseGone = true;
      touched.clear();
    }
    const keyCols = shape.columns.flatMap((c, i) => c.isKey ? [i] : []);
    const keyOf = (values: CsvField[]) => keyCols.map((i) => values[i] ?? null);
    const again = delta.deleteKeys.filter((k) => touched.has(k));
    for (const r of delta.rows) {
      // The folder's key, when it has it: reading `values` would decode the whole row.
      const k = r.key ?? keyOf(r.values);
      if (touched.has(k)) again.push(k);
    }
    if (again.length > 0) {
      if (this.#index === null) await this.#createIndex(shape);
      await this.#applyInPlace(
        { truncate: false, deleteKeys: again, removals: [], rows: [], changes: 0 },
        shape,
      );
    }
    for (const k of delta.deleteKeys) touched.add(k);
    if (delta.rows.length === 0) return;
    // Rows go into one COPY that stays open across deltas until another statement comes.
    if (!this.#copy) this.#copy = new OpenCopy(this.#client, this.#qualified, shape);
    const copy = this.#copy;
    const n = shape.columns.length;
    for (const r of delta.rows) {
      touched.add(r.key ?? keyOf(r.values));
      if (r.csv !== undefined) copy.csv.encodedFields(r.csv);
      else for (let i = 0; i < n; i++) copy.csv.fieldText(r.values[i] ?? null);
      copy.csv.endRow();
      if (copy.csv.byteLength >= 1 << 18) await copy.write(copy.csv.takeChunk());
    }
  }

  async #endCopy(): Promise<void> {
    const copy = this.#copy;
    if (!copy) return;
    this.#copy = null;
    if (copy.csv.byteLength > 0) await copy.write(copy.csv.takeChunk());
    await copy.end();
  }

  async #applyInPlace(delta: Delta, shape: TableShape): Promise<void> {
    await this.#begin();
    const stage = "pg_temp._cdc_stage";
    await this.#q(`DROP TABLE IF EXISTS ${stage}`);
    await this.#q(
      `CREATE TEMP TABLE _cdc_stage (${stageColumns(shape).map((c) => `${c} text`).join(", ")})`,
    );
    const copy = this.#client.query(copyFrom(`COPY ${stage} FROM STDIN (FORMAT csv)`));
    // One delta is bounded by the run size (ReplayOptions.runSize).
    const chunks: Uint8Array[] = [];
    await encodeStage(delta, shape, (c) => {
      chunks.push(c);
    });
    await pipeline(Readable.from(chunks), copy);
    // Keyed deltas go through the index (below); keyless ones hash-join on statistics.
    if (!shape.keyed) await this.#q(`ANALYZE ${stage}`);
    // The staged keys are text cast to the key types, and the planner then
    // tends to hash the whole target: look each key up in the index instead.
    const indexed = shape.keyed && this.#index !== null;
    if (indexed) {
      await this.#q("SET LOCAL enable_hashjoin = off");
      await this.#q("SET LOCAL enable_mergejoin = off");
    }
    for (
      const sql of deltaStatements(
        delta,
        shape,
        this.#qualified,
        stage,
        "_cdc_kept",
        this.#dialect(),
      )
    ) await this.#q(sql);
    if (indexed) {
      await this.#q("SET LOCAL enable_hashjoin TO DEFAULT");
      await this.#q("SET LOCAL enable_mergejoin TO DEFAULT");
    }
  }

  async #saveProgress(): Promise<void> {
    await this.#q(
      `INSERT INTO ${PROGRESS_TABLE} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now()::text)
       ON CONFLICT (schema_name, table_name) DO UPDATE SET slot_name = EXCLUDED.slot_name,
         full_reload_path = EXCLUDED.full_reload_path, applied_lsn = EXCLUDED.applied_lsn,
         applied_seq = EXCLUDED.applied_seq, shape = EXCLUDED.shape, extra = EXCLUDED.extra,
         updated_at = EXCLUDED.updated_at`,
      [
        this.#t.schema,
        this.#t.table,
        this.#slot,
        this.#fullReloadPath,
        formatLsn(this.#position!.lsn as never),
        this.#position!.seq,
        JSON.stringify(this.#shape),
        JSON.stringify({ types: this.#types, index: this.#index }),
      ],
    );
  }

  async fileDone(file: PlanFile, position: ReplayPosition, shape: TableShape): Promise<void> {
    if (file.fileType === "full_reload") this.#fullReloadPath = file.path;
    this.#position = position;
    this.#shape = shape;
    if (!this.#inTx) return;
    // A rebuild commits file by file into its build table (bounded transactions);
    // its progress is written only when the table is swapped in.
    if (!this.#rebuild) await this.#saveProgress();
    await this.#q("COMMIT");
    this.#inTx = false;
  }

  async finish(): Promise<void> {
    await this.#settle();
    if (!this.#rebuild) {
      if (this.#inTx) await this.abort();
      return;
    }
    await this.#begin();
    await this.#q(
      `DROP TABLE IF EXISTS ${quoteIdent(this.#t.schema)}.${quoteIdent(this.#t.table)}`,
    );
    await this.#q(`ALTER TABLE ${this.#qualified} RENAME TO ${quoteIdent(this.#t.table)}`);
    this.#name = this.#t.table;
    await this.#saveProgress();
    await this.#q("COMMIT");
    this.#inTx = false;
  }

  async abort(): Promise<void> {
    // End an open COPY (its rows go with the rollback) so that the connection can roll back.
    const copy = this.#copy;
    this.#copy = null;
    await copy?.end().catch(() => {});
    if (this.#inTx) {
      this.#inTx = false;
      await this.#q("ROLLBACK").catch(() => {});
    }
    // A build table left by an interrupted rebuild goes; a crash leaves it to the next rebuild.
    if (this.#rebuild && this.#name !== this.#t.table) {
      await this.#q(`DROP TABLE IF EXISTS ${this.#qualified}`).catch(() => {});
    }
  }
}

/** A COPY FROM STDIN kept open: written to with backpressure, ended before the next statement. */
class OpenCopy {
  /** Rows not written yet (written in chunks of 256 KiB). */
  readonly csv = new CsvRowEncoder({ initialCapacity: 1 << 18 });
  readonly #stream: Writable;
  readonly #done: Promise<void>;

  constructor(client: pg.Client, table: string, shape: TableShape) {
    const cols = shape.columns.map((c) => quoteIdent(c.name)).join(", ");
    this.#stream = client.query(copyFrom(`COPY ${table} (${cols}) FROM STDIN (FORMAT csv)`));
    this.#done = finished(this.#stream);
    // Surfaces at write() or end(); keep it from going unhandled meanwhile.
    this.#done.catch(() => {});
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (!this.#stream.write(chunk)) {
      await Promise.race([once(this.#stream, "drain"), this.#done]);
    }
  }

  async end(): Promise<void> {
    this.#stream.end();
    await this.#done;
  }
}
