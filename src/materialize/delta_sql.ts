/**
 * The SQL that applies a folded {@linkcode Delta} to a target table, shared
 * by the PostgreSQL and DuckDB targets, and the staging rows it reads.
 *
 * The delta goes into a staging table of text columns first:
 * `_kind` (`K` key to delete, `X` multiset row to remove `_cnt` times,
 * `U` row that replaces the row of its key (update, or insert if none),
 * `R` row to insert, `B` row to insert that keeps some values of the row the
 * target holds under key `_b0..`, per `_from`), `_cnt`, `_n`, `_from`,
 * `_b0..`, then `c0..` the table's values as PostgreSQL text. Then a few
 * set statements apply it, reading kept values before deleting anything.
 */

import type { CsvField } from "../replay/csv_reader.ts";
import type { Delta, DeltaRow } from "../replay/change_folder.ts";
import type { TableShape } from "../replay/folder_schema.ts";
import { CsvRowEncoder } from "../write/csv_row_encoder.ts";

/** Dialect details of a target. */
export interface DeltaDialect {
  /** Quotes an identifier. */
  ident(name: string): string;
  /** SQL casting the staged text `x` to column `i`'s target type. */
  cast(x: string, i: number): string;
  /** Join condition: target row `t` equals staged row `s` on every column (multiset). */
  rowMatch(t: string, s: string): string;
  /** SQL removing up to `_cnt` target rows per staged `X` row. */
  removeRows(table: string, stage: string): string;
  /** Empties the table. */
  truncate(table: string): string;
}

/** Names of the staging table's columns for a shape. */
export function stageColumns(shape: TableShape): string[] {
  const keys = shape.keyed ? shape.columns.filter((c) => c.isKey).length : 0;
  return [
    "_kind",
    "_cnt",
    "_n",
    "_from",
    ...Array.from({ length: keys }, (_v, i) => `_b${i}`),
    ...shape.columns.map((_c, i) => `c${i}`),
  ];
}

/**
 * Writes staging rows into a {@linkcode CsvRowEncoder}, numbering them
 * (`_n`) in the order written.
 */
export class StageRowWriter {
  readonly #keyCols: number[];
  readonly #nKeys: number;
  readonly #n: number;
  /** The `_n` of the next row. */
  seq: number;

  constructor(shape: TableShape, firstSeq = 0) {
    this.#keyCols = shape.columns.flatMap((c, i) => c.isKey ? [i] : []);
    this.#nKeys = shape.keyed ? this.#keyCols.length : 0;
    this.#n = shape.columns.length;
    this.seq = firstSeq;
  }

  #head(csv: CsvRowEncoder, kind: string, cnt: number | null, from: string | null): void {
    csv.fieldText(kind);
    if (cnt === null) csv.fieldText(null);
    else csv.fieldInteger(cnt);
    csv.fieldInteger(this.seq++);
    csv.fieldText(from);
  }

  /** A key (key columns in column order) whose row goes: `K`. */
  key(csv: CsvRowEncoder, key: CsvField[]): void {
    this.#head(csv, "K", null, null);
    for (let k = 0; k < this.#nKeys; k++) csv.fieldText(null);
    let at = 0;
    for (let i = 0; i < this.#n; i++) {
      csv.fieldText(at < this.#keyCols.length && this.#keyCols[at] === i ? key[at++] : null);
    }
    csv.endRow();
  }

  /** A multiset row to remove `count` times: `X`. */
  removal(csv: CsvRowEncoder, row: CsvField[], count: number): void {
    this.#head(csv, "X", count, null);
    for (let i = 0; i < this.#n; i++) csv.fieldText(row[i] ?? null);
    csv.endRow();
  }

  /** A row to insert: `U` (replaces its key's row), `R`, or `B` (keeps values of a target row). */
  row(csv: CsvRowEncoder, r: DeltaRow): void {
    if (r.base) {
      this.#head(csv, "B", null, r.base.fromBase.map((b) => (b ? "1" : "0")).join(""));
      for (let k = 0; k < this.#nKeys; k++) csv.fieldText(r.base.key[k]);
    } else {
      this.#head(csv, r.replace ? "U" : "R", null, null);
      for (let k = 0; k < this.#nKeys; k++) csv.fieldText(null);
      // Values as the file had them: passed on as their CSV text.
      if (r.csv !== undefined) {
        csv.encodedFields(r.csv);
        csv.endRow();
        return;
      }
    }
    for (let i = 0; i < this.#n; i++) csv.fieldText(r.values[i] ?? null);
    csv.endRow();
  }
}

/**
 * Encodes a delta's staging rows as CSV (no header), calling `sink` with
 * 1 MiB chunks. Rows are numbered (`_n`) from `firstSeq`; returns the next number.
 */
export async function encodeStage(
  delta: Delta,
  shape: TableShape,
  sink: (chunk: Uint8Array) => Promise<void> | void,
  firstSeq = 0,
): Promise<number> {
  const w = new StageRowWriter(shape, firstSeq);
  const csv = new CsvRowEncoder({ initialCapacity: 1 << 14 });
  const spill = async () => {
    if (csv.byteLength >= 1 << 20) await sink(csv.takeChunk());
  };
  for (const key of delta.deleteKeys) {
    w.key(csv, key);
    await spill();
  }
  for (const r of delta.removals) {
    w.removal(csv, r.row, r.count);
    await spill();
  }
  for (const r of delta.rows) {
    w.row(csv, r);
    await spill();
  }
  if (csv.byteLength > 0) await sink(csv.takeChunk());
  return w.seq;
}

/** Statements that apply the staged delta in `stage` to `table`. */
export function deltaStatements(
  delta: Delta,
  shape: TableShape,
  table: string,
  stage: string,
  keptRows: string,
  d: DeltaDialect,
): string[] {
  const cols = shape.columns.map((c) => d.ident(c.name));
  const keyCols = shape.columns.flatMap((c, i) => c.isKey ? [i] : []);
  const out: string[] = [];
  const hasBase = delta.rows.some((r) => r.base);
  if (hasBase) {
    const values = shape.columns.map((_c, i) =>
      `CASE WHEN substr(s._from, ${i + 1}, 1) = '1' THEN b.${cols[i]} ELSE ${
        d.cast(`s.c${i}`, i)
      } END AS ${cols[i]}`
    );
    const on = keyCols.map((c, k) => `b.${cols[c]} = ${d.cast(`s._b${k}`, c)}`).join(" AND ");
    out.push(
      `CREATE TEMP TABLE ${keptRows} AS SELECT ${values.join(", ")}
       FROM ${stage} s LEFT JOIN ${table} b ON ${on} WHERE s._kind = 'B'`,
    );
  }
  if (delta.truncate) out.push(d.truncate(table));
  if (delta.deleteKeys.length > 0) {
    const on = keyCols.map((c) => `t.${cols[c]} = ${d.cast(`s.c${c}`, c)}`).join(" AND ");
    out.push(`DELETE FROM ${table} t USING ${stage} s WHERE s._kind = 'K' AND ${on}`);
  }
  if (delta.removals.length > 0) out.push(d.removeRows(table, stage));
  if (delta.rows.some((r) => r.replace)) {
    // Upserts: update the rows the target has, insert the others.
    const on = keyCols.map((c) => `t.${cols[c]} = ${d.cast(`s.c${c}`, c)}`).join(" AND ");
    const set = shape.columns.flatMap((c, i) =>
      c.isKey ? [] : [`${cols[i]} = ${d.cast(`s.c${i}`, i)}`]
    );
    if (set.length > 0) {
      out.push(
        `UPDATE ${table} t SET ${set.join(", ")} FROM ${stage} s WHERE s._kind = 'U' AND ${on}`,
      );
    }
    out.push(
      `INSERT INTO ${table} (${cols.join(", ")}) SELECT ${
        shape.columns.map((_c, i) => d.cast(`s.c${i}`, i)).join(", ")
      } FROM ${stage} s WHERE s._kind = 'U' AND NOT EXISTS (SELECT 1 FROM ${table} t WHERE ${on})`,
    );
  }
  if (delta.rows.some((r) => !r.base && !r.replace)) {
    out.push(
      `INSERT INTO ${table} (${cols.join(", ")}) SELECT ${
        shape.columns.map((_c, i) => d.cast(`c${i}`, i)).join(", ")
      } FROM ${stage} WHERE _kind = 'R'`,
    );
  }
  if (hasBase) {
    out.push(`INSERT INTO ${table} (${cols.join(", ")}) SELECT * FROM ${keptRows}`);
    out.push(`DROP TABLE ${keptRows}`);
  }
  return out;
}
