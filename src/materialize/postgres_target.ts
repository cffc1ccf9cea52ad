/**
 * The PostgreSQL target of `materialize`: tables with the source's schema,
 * names and column types (from schema.yml), so every value reads back
 * byte-identical under COPY. A full_reload is COPYed in as it is; changes
 * are staged with COPY and applied with set statements; progress lives in
 * `cdc_egress.progress`, written in the same transaction as the rows.
 */

import { createReadStream } from "node:fs";
import { pipeline } from "node:stream/promises";
import { Readable } from "node:stream";
import { createGunzip } from "node:zlib";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { from as copyFrom } from "pg-copy-streams";
import { CdcError } from "../errors.ts";
import { formatLsn, parseLsn } from "../lsn.ts";
import type { Delta } from "../replay/change_folder.ts";
import { columnMapping, type TableShape } from "../replay/folder_schema.ts";
import type { PlanFile } from "../replay/replay_plan.ts";
import type { ReplayPosition } from "../replay/replay_sink.ts";
import { quoteIdent } from "../source/table_selection.ts";
import { type DeltaDialect, deltaStatements, encodeStage, stageColumns } from "./delta_sql.ts";
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
    await this.#client.query("BEGIN");
    this.#inTx = true;
  }

  async #q(sql: string, params?: unknown[]): Promise<pg.QueryResult> {
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
  }

  async loadFullReload(path: string, shape: TableShape): Promise<number> {
    const cols = shape.columns.map((c) => quoteIdent(c.name)).join(", ");
    const copy = this.#client.query(
      copyFrom(`COPY ${this.#qualified} (${cols}) FROM STDIN (FORMAT csv, HEADER true)`),
    );
    await pipeline(createReadStream(path, { highWaterMark: 1 << 20 }), createGunzip(), copy);
    await this.#createIndex(shape);
    // Statistics, so that applying deltas joins through the index.
    await this.#q(`ANALYZE ${this.#qualified}`);
    return (copy as unknown as { rowCount: number }).rowCount ?? 0;
  }

  async reshape(from: TableShape, to: TableShape): Promise<void> {
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
