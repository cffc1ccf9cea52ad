/**
 * The consumer's replay rule (DESIGN §3) as code: start from a full_reload
 * (or empty), then apply streaming rows in (`_cdc_lsn`, `_cdc_seq`) order.
 * `verify --deep` and the tests use it to rebuild a table from its files.
 */

import type { CsvField } from "./csv_reader.ts";

const META = 7;

/** A table rebuilt in memory: rows grouped by their key. */
export class TableReplay {
  columns: string[];
  keyColumns: number[];
  /** `pg_attribute.attnum` per column when schema.yml has it. */
  attnums: (number | null)[];
  #rows = new Map<string, CsvField[][]>();

  /** `keyColumns` are the positions of the replica identity columns. */
  constructor(columns: string[], keyColumns: number[], attnums: (number | null)[] = []) {
    this.columns = columns;
    this.keyColumns = keyColumns.length > 0 ? keyColumns : columns.map((_c, i) => i);
    this.attnums = columns.map((_c, i) => attnums[i] ?? null);
  }

  /**
   * Moves every row to a new column set (a schema change between folders):
   * columns are matched by attnum when both sides know it (renames), else by
   * name; new columns start out NULL and dropped ones disappear.
   */
  remap(columns: string[], keyColumns: number[], attnums: (number | null)[] = []): void {
    const nextAttnums = columns.map((_c, i) => attnums[i] ?? null);
    const from = columns.map((name, j) => {
      const a = nextAttnums[j];
      const byAttnum = a === null ? -1 : this.attnums.indexOf(a);
      return byAttnum >= 0 ? byAttnum : this.columns.indexOf(name);
    });
    const rows = [...this.#rows.values()].flat();
    this.columns = columns;
    this.attnums = nextAttnums;
    this.keyColumns = keyColumns.length > 0 ? keyColumns : columns.map((_c, i) => i);
    this.#rows.clear();
    for (const r of rows) this.#add(from.map((i) => (i >= 0 ? r[i] : null)));
  }

  /** Whether the column set differs from this one. */
  differs(columns: string[], attnums: (number | null)[] = []): boolean {
    return columns.length !== this.columns.length ||
      columns.some((c, i) => c !== this.columns[i] || (attnums[i] ?? null) !== this.attnums[i]);
  }

  #key(row: CsvField[]): string {
    return JSON.stringify(this.keyColumns.map((i) => row[i] ?? null));
  }

  #add(row: CsvField[]): void {
    const k = this.#key(row);
    const list = this.#rows.get(k);
    if (list) list.push(row);
    else this.#rows.set(k, [row]);
  }

  #take(key: string, match?: (row: CsvField[]) => boolean): CsvField[] | undefined {
    const list = this.#rows.get(key);
    if (!list || list.length === 0) return undefined;
    const at = match ? list.findIndex(match) : 0;
    if (at < 0) return undefined;
    const [row] = list.splice(at, 1);
    if (list.length === 0) this.#rows.delete(key);
    return row;
  }

  /** Loads rows of a full_reload file (header removed). */
  load(rows: CsvField[][]): void {
    for (const r of rows) this.#add(r);
  }

  /** Applies one streaming row (metadata columns first). Returns false if it found nothing to change. */
  apply(row: CsvField[]): boolean {
    const op = row[0];
    const values = row.slice(META);
    if (op === "I") {
      this.#add(values);
      return true;
    }
    if (op === "T") {
      this.#rows.clear();
      return true;
    }
    const oldJson = row[6];
    let oldKey: string;
    let oldMatch: ((r: CsvField[]) => boolean) | undefined;
    if (oldJson) {
      const obj = JSON.parse(oldJson) as Record<string, string | null>;
      oldKey = JSON.stringify(this.keyColumns.map((i) => obj[this.columns[i]] ?? null));
      const named = Object.keys(obj);
      oldMatch = (r) => named.every((n) => r[this.columns.indexOf(n)] === obj[n]);
    } else {
      oldKey = this.#key(values);
    }
    const old = this.#take(oldKey, oldMatch);
    if (op === "D") return old !== undefined;
    if (op === "U") {
      const unchanged = row[5] ? JSON.parse(row[5]) as string[] : [];
      for (const name of unchanged) {
        const i = this.columns.indexOf(name);
        values[i] = old ? old[i] : null;
      }
      this.#add(values);
      return old !== undefined;
    }
    throw new SyntaxError(`Cannot apply change: unknown _cdc_op "${op}"`);
  }

  /** Every row, sorted by its JSON form, for comparisons. */
  sortedRows(): string[] {
    const out: string[] = [];
    for (const list of this.#rows.values()) for (const r of list) out.push(JSON.stringify(r));
    return out.sort();
  }
}
