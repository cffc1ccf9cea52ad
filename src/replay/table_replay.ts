/**
 * A table rebuilt in memory by the replay rule (DESIGN §3), for
 * `verify --deep` and the tests. It is a {@linkcode ReplaySink}, driven by
 * the same {@linkcode replayInto} and {@linkcode ChangeFolder} as the
 * `materialize` targets, so every consumer applies one implementation of
 * the rule.
 */

import type { Delta } from "./change_folder.ts";
import type { CsvField } from "./csv_reader.ts";
import { csvGzRows } from "./csv_gz_rows.ts";
import { columnMapping, type TableShape } from "./folder_schema.ts";
import type { ReplaySink } from "./replay_sink.ts";

/** A table rebuilt in memory: rows grouped by their key. */
export class TableReplay implements ReplaySink {
  columns: string[] = [];
  /** Positions of the key columns (every column for a multiset table). */
  keyColumns: number[] = [];
  #rows = new Map<string, CsvField[][]>();

  #setShape(shape: TableShape): void {
    this.columns = shape.columns.map((c) => c.name);
    const keys = shape.columns.flatMap((c, i) => c.isKey ? [i] : []);
    this.keyColumns = shape.keyed && keys.length > 0 ? keys : this.columns.map((_c, i) => i);
  }

  #id(key: CsvField[]): string {
    return JSON.stringify(key);
  }

  #add(row: CsvField[]): void {
    const k = this.#id(this.keyColumns.map((i) => row[i] ?? null));
    const list = this.#rows.get(k);
    if (list) list.push(row);
    else this.#rows.set(k, [row]);
  }

  reset(shape: TableShape): Promise<void> {
    this.#setShape(shape);
    this.#rows.clear();
    return Promise.resolve();
  }

  async loadFullReload(path: string): Promise<number> {
    let n = -1;
    for await (const batch of csvGzRows(path)) {
      for (const row of batch) {
        if (n++ >= 0) this.#add(row);
      }
    }
    return Math.max(n, 0);
  }

  reshape(from: TableShape, to: TableShape): Promise<void> {
    const map = columnMapping(from, to);
    const rows = [...this.#rows.values()].flat();
    this.#setShape(to);
    this.#rows.clear();
    for (const r of rows) this.#add(map.map((i) => (i >= 0 ? r[i] : null)));
    return Promise.resolve();
  }

  apply(delta: Delta): Promise<void> {
    if (delta.truncate) this.#rows.clear();
    // Values an update keeps are read before anything is deleted.
    const resolved = delta.rows.map((r) => {
      if (!r.base) return r.values;
      const old = this.#rows.get(this.#id(r.base.key))?.[0];
      return r.values.map((v, i) => r.base!.fromBase[i] ? (old ? old[i] : null) : v);
    });
    for (const key of delta.deleteKeys) this.#rows.delete(this.#id(key));
    for (const r of delta.rows) {
      if (r.replace) this.#rows.delete(this.#id(this.keyColumns.map((i) => r.values[i] ?? null)));
    }
    for (const { row, count } of delta.removals) {
      const id = this.#id(row);
      const list = this.#rows.get(id);
      if (!list) continue;
      list.splice(0, count);
      if (list.length === 0) this.#rows.delete(id);
    }
    for (const r of resolved) this.#add(r);
    return Promise.resolve();
  }

  fileDone(): Promise<void> {
    return Promise.resolve();
  }

  /** Number of rows. */
  get rowCount(): number {
    let n = 0;
    for (const list of this.#rows.values()) n += list.length;
    return n;
  }

  /** Every row, sorted by its JSON form, for comparisons. */
  sortedRows(): string[] {
    const out: string[] = [];
    for (const list of this.#rows.values()) for (const r of list) out.push(JSON.stringify(r));
    return out.sort();
  }
}
