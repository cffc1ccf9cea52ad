/**
 * The replay rule for streaming rows, folded into set-based deltas.
 *
 * Applying changes row by row does not scale to tables larger than memory,
 * so a run of changes (in `_cdc_lsn`, `_cdc_seq` order) is folded into one
 * {@linkcode Delta} that a target applies with a few set operations: delete
 * these keys, remove these rows, insert these rows. Folding follows the rule
 * exactly: an UPDATE finds its old row by `_cdc_old_key` (else by the new
 * row's key), keeps the old values of `_cdc_unchanged_cols`, and several
 * changes of one key inside a run apply in order. A value that an update
 * keeps from a row the target already holds is a reference to that row,
 * resolved by the target before it deletes anything.
 */

import { type ChangeLine, type CsvField, csvFields } from "./csv_reader.ts";
import type { TableShape } from "./folder_schema.ts";

/** Metadata columns at the start of every streaming row. */
export const META_COLUMNS = 7;

/** A row to insert. */
export interface DeltaRow {
  values: CsvField[];
  /**
   * Keyed tables: the row replaces whatever row the target holds under its
   * key (an upsert); its key is not in `deleteKeys`.
   */
  replace: boolean;
  /**
   * When some values come from a row the target holds before this delta:
   * that row's key, and per column whether to take the target's value.
   */
  base: { key: CsvField[]; fromBase: boolean[] } | null;
  /** Keyed rows: the key tuple (key columns in column order), when the folder knows it. */
  readonly key?: CsvField[];
  /**
   * The values as CSV bytes (COPY dialect, no line break) when they are the
   * file's unchanged: a target may pass these on instead of encoding `values`.
   */
  readonly csv?: Uint8Array;
}

/** A keyed row whose values stay CSV bytes until something reads them. */
class LineRow implements DeltaRow {
  readonly replace = true;
  readonly base = null;
  readonly key: CsvField[];
  readonly #line: ChangeLine;
  readonly #count: number;
  #values: CsvField[] | null = null;

  constructor(line: ChangeLine, count: number, key: CsvField[]) {
    this.#line = line;
    this.#count = count;
    this.key = key;
  }

  get csv(): Uint8Array {
    const line = this.#line;
    return line.bytes.subarray(line.valuesStart, line.valuesEnd);
  }

  get values(): CsvField[] {
    return this.#values ??= csvFields(this.#line.text(), this.#count);
  }
}

const NONE: string[] = [];

/** The net effect of a run of changes on a table. */
export interface Delta {
  /** Empty the table first (a TRUNCATE in the run). */
  truncate: boolean;
  /**
   * Keyed tables: key tuples (in key column order) whose rows go away: keys
   * that end deleted, and keys of rows that keep values of the target's row
   * (`base`), which are inserted again after the deletion.
   */
  deleteKeys: CsvField[][];
  /** Multiset tables: remove `count` rows equal to `row` (at most as many as exist). */
  removals: { row: CsvField[]; count: number }[];
  /** Rows to insert, after the deletions and removals. */
  rows: DeltaRow[];
  /** Number of changes folded in. */
  changes: number;
}

const GONE = null;
/**
 * Whether `k` is integer text that Number() maps back to the same text: `0`,
 * or up to 15 digits without a leading zero, optionally negative.
 */
export function safeInteger(k: string): boolean {
  const n = k.length;
  let i = k.charCodeAt(0) === 45 ? 1 : 0;
  if (n - i < 1 || n - i > 15) return false;
  const first = k.charCodeAt(i);
  if (first === 48) return n === 1;
  for (; i < n; i++) {
    const c = k.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

type Entry = { key: CsvField[]; row: DeltaRow | typeof GONE };

/** Folds ordered streaming rows of one table shape into a {@linkcode Delta}. */
export class ChangeFolder {
  readonly #shape: TableShape;
  readonly #keyCols: number[];
  readonly #names: string[];
  /** Fields to decode for the key: up to the last key column. */
  readonly #keyEnd: number;
  // Keyed: the state of every touched key (GONE = no row).
  #entries = new Map<string | number, Entry>();
  // Multiset: rows added in this run, and rows removed from the target.
  #added = new Map<string, { row: CsvField[]; count: number }>();
  #removed = new Map<string, { row: CsvField[]; count: number }>();
  #truncate = false;
  #changes = 0;

  constructor(shape: TableShape) {
    this.#shape = shape;
    this.#names = shape.columns.map((c) => c.name);
    this.#keyCols = shape.keyed
      ? shape.columns.flatMap((c, i) => c.isKey ? [i] : [])
      : shape.columns.map((_c, i) => i);
    this.#keyEnd = Math.max(-1, ...this.#keyCols) + 1;
  }

  /** Number of changes folded since the last {@linkcode take}. */
  get size(): number {
    return this.#changes;
  }

  #keyOf(values: CsvField[]): CsvField[] {
    return this.#keyCols.map((i) => values[i] ?? null);
  }

  /** A Map key for a key tuple (the value itself for a one-column key, which is never NULL). */
  #id(key: CsvField[]): string | number {
    if (key.length !== 1 || key[0] === null) return JSON.stringify(key) + "\u0000";
    // A canonical integer's text maps to the number (cheaper to hash), any other text to itself.
    const k = key[0];
    return safeInteger(k) ? Number(k) : k;
  }

  #oldValues(json: string): CsvField[] {
    const obj = JSON.parse(json) as Record<string, string | null>;
    return this.#names.map((n) => obj[n] ?? null);
  }

  /**
   * Folds one streaming row read as a {@linkcode ChangeLine}. A keyed
   * insert, delete or update without unchanged TOAST decodes just its key;
   * any other change is folded as {@linkcode add} folds it.
   */
  addLine(line: ChangeLine): void {
    const op = line.op;
    const n = this.#names.length;
    if (
      !this.#shape.keyed || line.metaCount !== META_COLUMNS ||
      (op !== "I" && op !== "U" && op !== "D") || (op === "U" && line.unchanged)
    ) {
      this.add([...line.meta(), ...csvFields(line.text(), n)]);
      return;
    }
    this.#changes++;
    const cols = this.#keyCols;
    const fields = line.fields(this.#keyEnd);
    const key = cols.length === 1 ? [fields[cols[0]]] : cols.map((i) => fields[i]);
    this.#addKeyed(op, new LineRow(line, n, key), line.oldKey, NONE);
  }

  /** Folds one streaming row (metadata columns first). */
  add(row: CsvField[]): void {
    this.#changes++;
    const op = row[0];
    const values = row.slice(META_COLUMNS);
    if (op === "T") {
      this.#truncate = true;
      this.#entries.clear();
      this.#added.clear();
      this.#removed.clear();
      return;
    }
    if (op !== "I" && op !== "U" && op !== "D") {
      throw new SyntaxError(`Cannot apply change: unknown _cdc_op "${op}"`);
    }
    const unchanged = op === "U" && row[5] ? JSON.parse(row[5]) as string[] : [];
    if (this.#shape.keyed) this.#addKeyed(op, values, row[6], unchanged);
    else this.#addMultiset(op, values, row[6], unchanged);
  }

  #addKeyed(
    op: string,
    row: CsvField[] | LineRow,
    oldJson: CsvField,
    unchanged: string[],
  ): void {
    // A LineRow comes without unchanged columns: its values stay as they are.
    const line = row instanceof LineRow ? row : null;
    const values = line ? NONE as CsvField[] : row as CsvField[];
    const newKey = line ? line.key : this.#keyOf(values);
    if (op === "I") {
      this.#entries.set(this.#id(newKey), {
        key: newKey,
        row: line ?? { values, replace: true, base: null },
      });
      return;
    }
    const oldKey = oldJson ? this.#keyOf(this.#oldValues(oldJson)) : newKey;
    const oldId = this.#id(oldKey);
    // What the old row is: touched in this run (a row or GONE), or still the target's.
    const touched = this.#entries.get(oldId);
    const newId = this.#id(newKey);
    // An update that keeps its key overwrites the entry below (same Map position).
    if (op === "D" || oldId !== newId) this.#entries.set(oldId, { key: oldKey, row: GONE });
    if (op === "D") return;
    const old = touched?.row;
    let base: DeltaRow["base"] = null;
    for (const name of unchanged) {
      const i = this.#names.indexOf(name);
      if (i < 0) continue;
      if (touched === undefined) {
        // Not touched in this run: the target's row (or NULL if it has none).
        if (!this.#truncate) {
          base ??= { key: oldKey, fromBase: this.#names.map(() => false) };
          base.fromBase[i] = true;
        } else values[i] = null;
      } else if (old === GONE || old === undefined) {
        values[i] = null;
      } else if (old.base?.fromBase[i]) {
        base ??= { key: old.base.key, fromBase: this.#names.map(() => false) };
        base.fromBase[i] = true;
      } else {
        values[i] = old.values[i];
      }
    }
    this.#entries.set(newId, {
      key: newKey,
      row: line ?? { values, replace: base === null, base },
    });
  }

  #addMultiset(op: string, values: CsvField[], oldJson: CsvField, unchanged: string[]): void {
    if (op === "I") return this.#plus(values);
    // D carries the old row; U carries it in _cdc_old_key (else: the new row's values).
    const old = op === "D" ? values : oldJson ? this.#oldValues(oldJson) : values.slice();
    this.#minus(old);
    if (op === "D") return;
    for (const name of unchanged) {
      const i = this.#names.indexOf(name);
      if (i >= 0) values[i] = old[i];
    }
    this.#plus(values);
  }

  #plus(row: CsvField[]): void {
    const id = JSON.stringify(row);
    const e = this.#added.get(id);
    if (e) e.count++;
    else this.#added.set(id, { row, count: 1 });
  }

  #minus(row: CsvField[]): void {
    const id = JSON.stringify(row);
    const a = this.#added.get(id);
    if (a) {
      // Equal rows are interchangeable: remove one added in this run.
      if (--a.count === 0) this.#added.delete(id);
      return;
    }
    const r = this.#removed.get(id);
    if (r) r.count++;
    else this.#removed.set(id, { row, count: 1 });
  }

  /** Returns the folded delta and starts a new, empty run. */
  take(): Delta {
    const delta: Delta = {
      truncate: this.#truncate,
      deleteKeys: [],
      removals: [...this.#removed.values()],
      rows: [],
      changes: this.#changes,
    };
    for (const { key, row } of this.#entries.values()) {
      if (!row || !row.replace) delta.deleteKeys.push(key);
      if (row) delta.rows.push(row);
    }
    for (const { row, count } of this.#added.values()) {
      for (let n = 0; n < count; n++) delta.rows.push({ values: row, replace: false, base: null });
    }
    this.#entries.clear();
    this.#added.clear();
    this.#removed.clear();
    this.#truncate = false;
    this.#changes = 0;
    return delta;
  }
}
