/**
 * Passes a full_reload's CSV bytes (PostgreSQL's COPY dialect, header
 * first) on to COPY FROM STDIN, leaving out the rows whose key a rebuild's
 * changes already decided. Only the key fields are decoded; kept rows are
 * forwarded as the original bytes, so values stay byte-exact.
 */

import { Transform, type TransformCallback } from "node:stream";
import type { CsvField } from "../replay/csv_reader.ts";
import type { TouchedKeys } from "./touched_keys.ts";

const COMMA = 0x2c;
const QUOTE = 0x22;
const LF = 0x0a;
const CR = 0x0d;

const utf8 = new TextDecoder("utf-8", { fatal: true });

function text(bytes: Uint8Array, start: number, end: number): string {
  if (end - start <= 32) {
    let s = "";
    for (let i = start; i < end; i++) {
      const b = bytes[i];
      if (b >= 0x80) return utf8.decode(bytes.subarray(start, end));
      s += String.fromCharCode(b);
    }
    return s;
  }
  return utf8.decode(bytes.subarray(start, end));
}

/** A Transform stream: gunzipped full_reload bytes in, the rows to load out. */
export class BaseRowFilter extends Transform {
  /** Rows read (header excluded). */
  rowsRead = 0;
  /** Rows passed on (header excluded). */
  rowsKept = 0;
  readonly #keyCols: number[];
  readonly #lastKey: number;
  readonly #keys: TouchedKeys;
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;
  /** Do not rescan an unfinished row before this many bytes (a value of many MB). */
  #retryAt = 0;
  #header = true;
  #key: CsvField[];
  /** Position of the next quote at or after the scan position (-1: none), per buffer. */
  #quoteAt = -1;

  /** `keyCols`: positions of the key columns in a row, in key order. */
  constructor(keyCols: number[], keys: TouchedKeys) {
    super({ highWaterMark: 1 << 18 });
    this.#keyCols = keyCols;
    this.#lastKey = Math.max(...keyCols);
    this.#keys = keys;
    this.#key = keyCols.map(() => null);
  }

  #nextQuote(buf: Uint8Array, from: number): number {
    if (this.#quoteAt !== -1 && this.#quoteAt < from) this.#quoteAt = buf.indexOf(QUOTE, from);
    return this.#quoteAt;
  }

  /**
   * Scans one row starting at `start`; returns the position after its line
   * break, or -1 when the row continues beyond the buffer. Sets #key.
   */
  #scanRow(buf: Uint8Array, start: number): number {
    const n = buf.length;
    let i = start;
    for (let col = 0;; col++) {
      const k = col <= this.#lastKey ? this.#keyCols.indexOf(col) : -1;
      if (col > this.#lastKey) {
        // The rest of the row: its end is the next line break, unless a quote comes first.
        const nl = buf.indexOf(LF, i);
        if (nl < 0) return -1;
        const q = this.#nextQuote(buf, i);
        if (q === -1 || q > nl) return nl + 1;
      }
      let end: number;
      if (i < n && buf[i] === QUOTE) {
        let j = i + 1;
        let hasEscapes = false;
        while (true) {
          const q = buf.indexOf(QUOTE, j);
          if (q < 0 || q + 1 >= n) return -1;
          if (buf[q + 1] === QUOTE) {
            hasEscapes = true;
            j = q + 2;
            continue;
          }
          end = q + 1;
          if (k >= 0) {
            const v = text(buf, i + 1, q);
            this.#key[k] = hasEscapes ? v.replaceAll('""', '"') : v;
          }
          break;
        }
      } else {
        let j = i;
        while (j < n) {
          const c = buf[j];
          if (c === COMMA || c === LF || c === CR) break;
          j++;
        }
        if (j >= n) return -1;
        end = j;
        if (k >= 0) this.#key[k] = j === i ? null : text(buf, i, j);
      }
      if (end >= n) return -1;
      const c = buf[end];
      if (c === COMMA) {
        i = end + 1;
        continue;
      }
      if (c === LF) return end + 1;
      if (c === CR) {
        if (end + 1 >= n) return -1;
        return buf[end + 1] === LF ? end + 2 : end + 1;
      }
      throw new SyntaxError(`Cannot parse CSV: unexpected character after quote at offset ${end}`);
    }
  }

  #scan(buf: Uint8Array, final: boolean): void {
    let pos = 0;
    let runStart = 0;
    this.#quoteAt = buf.indexOf(QUOTE, 0);
    while (pos < buf.length) {
      let end = this.#scanRow(buf, pos);
      if (end < 0) {
        if (!final) break;
        // The last row without a line break.
        const padded = new Uint8Array(buf.length - pos + 1);
        padded.set(buf.subarray(pos));
        padded[padded.length - 1] = LF;
        this.#quoteAt = padded.indexOf(QUOTE, 0);
        if (this.#scanRow(padded, 0) < 0) throw new SyntaxError("Cannot parse CSV: unclosed quote");
        end = buf.length;
      }
      if (this.#header) {
        this.#header = false;
      } else {
        this.rowsRead++;
        if (this.#keys.has(this.#key)) {
          if (pos > runStart) this.push(buf.subarray(runStart, pos));
          runStart = end;
        } else this.rowsKept++;
      }
      pos = end;
    }
    if (pos > runStart) this.push(buf.subarray(runStart, pos));
    // Copy the unfinished row, so that it does not pin the whole chunk.
    this.#pending = pos < buf.length ? [buf.slice(pos)] : [];
    this.#pendingBytes = buf.length - pos;
    this.#retryAt = pos === 0 ? 2 * buf.length : 0;
  }

  #joined(): Uint8Array {
    if (this.#pending.length === 1) return this.#pending[0];
    const buf = new Uint8Array(this.#pendingBytes);
    let at = 0;
    for (const c of this.#pending) {
      buf.set(c, at);
      at += c.length;
    }
    return buf;
  }

  override _transform(chunk: Uint8Array, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.#pending.push(chunk);
      this.#pendingBytes += chunk.length;
      if (this.#pendingBytes >= this.#retryAt) this.#scan(this.#joined(), false);
      cb();
    } catch (error) {
      cb(error as Error);
    }
  }

  override _flush(cb: TransformCallback): void {
    try {
      if (this.#pendingBytes > 0) this.#scan(this.#joined(), true);
      cb();
    } catch (error) {
      cb(error as Error);
    }
  }
}
