/**
 * The consumer's replay rule (DESIGN §3) as code: start from a full_reload
 * (or empty), then apply streaming rows in (`_cdc_lsn`, `_cdc_seq`) order.
 * `verify --deep` and the tests use it to rebuild a table from its files.
 */

import type { CsvField } from "./csv_reader.ts";

const META = 7;

/** A table rebuilt in memory: rows grouped by their key. */
export class TableReplay {
  readonly columns: string[];
  readonly keyColumns: number[];
  #rows = new Map<string, CsvField[][]>();

  /** `keyColumns` are the positions of the replica identity columns. */
  constructor(columns: string[], keyColumns: number[]) {
    this.columns = columns;
    this.keyColumns = keyColumns.length > 0 ? keyColumns : columns.map((_c, i) => i);
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
