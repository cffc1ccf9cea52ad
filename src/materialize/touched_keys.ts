/**
 * The keys a rebuild's changes touched before its full_reload is loaded, so
 * that the full_reload's rows of those keys are left out instead of being
 * loaded and then updated or deleted in place (the cost that dominated a
 * rebuild). Kept compact: a one-column integer key is held as a number,
 * any other key as its JSON text (a fresh string, so that it does not pin
 * the CSV chunk it was sliced from).
 */

import type { CsvField } from "../replay/csv_reader.ts";
import type { TableShape } from "../replay/folder_schema.ts";
import { safeInteger } from "../replay/change_folder.ts";

/**
 * Memory for the keys a rebuild's changes touch before its full_reload is
 * loaded; beyond it the full_reload is loaded and the rest applied in place.
 */
export const TOUCHED_KEYS_BYTES = 64 << 20;

const INTEGER_TYPES = new Set(["smallint", "integer", "bigint"]);

/**
 * A set of numbers in 8 bytes each: a sorted array, and a small Set of
 * recent additions merged into it when it grows.
 */
class NumberSet {
  #sorted = new Float64Array(0);
  #recent = new Set<number>();

  has(n: number): boolean {
    if (this.#recent.has(n)) return true;
    const a = this.#sorted;
    let lo = 0;
    let hi = a.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const v = a[mid];
      if (v === n) return true;
      if (v < n) lo = mid + 1;
      else hi = mid - 1;
    }
    return false;
  }

  /** Adds `n`; returns false when it was there. */
  add(n: number): boolean {
    if (this.has(n)) return false;
    this.#recent.add(n);
    if (this.#recent.size >= 65_536) this.#merge();
    return true;
  }

  #merge(): void {
    const add = Float64Array.from(this.#recent).sort();
    const a = this.#sorted;
    const out = new Float64Array(a.length + add.length);
    let i = 0, j = 0, k = 0;
    while (i < a.length && j < add.length) out[k++] = a[i] <= add[j] ? a[i++] : add[j++];
    while (i < a.length) out[k++] = a[i++];
    while (j < add.length) out[k++] = add[j++];
    this.#sorted = out;
    this.#recent.clear();
  }

  get size(): number {
    return this.#sorted.length + this.#recent.size;
  }

  clear(): void {
    this.#sorted = new Float64Array(0);
    this.#recent.clear();
  }
}

/** A set of key tuples with an estimate of the memory it holds. */
export class TouchedKeys {
  readonly #numbers = new NumberSet();
  readonly #set = new Set<string>();
  readonly #integer: boolean;
  #bytes = 0;

  constructor(shape: TableShape) {
    const keys = shape.columns.filter((c) => c.isKey);
    this.#integer = keys.length === 1 && INTEGER_TYPES.has(keys[0].type);
  }

  /** The set's id of a key tuple (key columns in column order, as PostgreSQL's text). */
  id(key: CsvField[]): number | string {
    if (this.#integer && key.length === 1 && key[0] !== null && safeInteger(key[0])) {
      return Number(key[0]);
    }
    return JSON.stringify(key);
  }

  add(key: CsvField[]): void {
    const id = this.id(key);
    if (typeof id === "number") {
      // The sorted array (8 bytes), and room for merging it.
      if (this.#numbers.add(id)) this.#bytes += 16;
    } else if (!this.#set.has(id)) {
      this.#set.add(id);
      // Hash table entry, plus the string (2 bytes a character at worst).
      this.#bytes += 48 + 2 * id.length;
    }
  }

  has(key: CsvField[]): boolean {
    const id = this.id(key);
    return typeof id === "number" ? this.#numbers.has(id) : this.#set.has(id);
  }

  clear(): void {
    this.#numbers.clear();
    this.#set.clear();
    this.#bytes = 0;
  }

  get size(): number {
    return this.#numbers.size + this.#set.size;
  }

  /** Estimated bytes held. */
  get bytes(): number {
    return this.#bytes;
  }
}
