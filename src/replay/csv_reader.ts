/**
 * Reads PostgreSQL-dialect CSV (COPY ... FORMAT csv) back into fields,
 * keeping NULL (an unquoted empty field) apart from the empty string (`""`).
 */

import { parseLsn } from "../lsn.ts";

/** One parsed field: null for SQL NULL. */
export type CsvField = string | null;

/**
 * Parses complete CSV text into rows. Throws SyntaxError on an unclosed
 * quote or a stray character after a closing quote.
 */
export function parseCsv(text: string): CsvField[][] {
  const rows: CsvField[][] = [];
  let row: CsvField[] = [];
  let i = 0;
  const n = text.length;
  while (i < n) {
    let value: CsvField;
    if (text[i] === '"') {
      let out = "";
      i++;
      while (true) {
        const q = text.indexOf('"', i);
        if (q < 0) throw new SyntaxError(`Cannot parse CSV: unclosed quote at offset ${i}`);
        out += text.slice(i, q);
        if (text[q + 1] === '"') {
          out += '"';
          i = q + 2;
        } else {
          i = q + 1;
          break;
        }
      }
      value = out;
      if (i < n && text[i] !== "," && text[i] !== "\n" && text[i] !== "\r") {
        throw new SyntaxError(`Cannot parse CSV: unexpected character after quote at offset ${i}`);
      }
    } else {
      let j = i;
      while (j < n && text[j] !== "," && text[j] !== "\n" && text[j] !== "\r") j++;
      value = j === i ? null : text.slice(i, j);
      i = j;
    }
    row.push(value);
    if (i >= n) {
      rows.push(row);
      row = [];
      break;
    }
    const c = text[i];
    if (c === ",") {
      i++;
      if (i >= n) {
        row.push(null);
        rows.push(row);
        row = [];
      }
    } else {
      i += c === "\r" && text[i + 1] === "\n" ? 2 : 1;
      rows.push(row);
      row = [];
    }
  }
  return rows;
}

/**
 * Parses CSV text that arrives in pieces: {@linkcode push} returns the rows
 * completed so far and keeps the unfinished tail for the next piece.
 */
export class CsvChunkParser {
  #pending = "";
  /** Do not retry a tail shorter than this (a huge value spanning many pieces). */
  #retryAt = 0;

  /** Adds text; returns the complete rows it finished. */
  push(text: string): CsvField[][] {
    this.#pending += text;
    if (this.#pending.length < this.#retryAt) return [];
    const { rows, consumed } = parseCsvPrefix(this.#pending);
    this.#pending = this.#pending.slice(consumed);
    this.#retryAt = rows.length === 0 ? this.#pending.length * 2 : 0;
    return rows;
  }

  /** Ends the input; returns the last rows. Throws SyntaxError on a broken tail. */
  end(): CsvField[][] {
    const rows = this.#pending.length > 0 ? parseCsv(this.#pending) : [];
    this.#pending = "";
    return rows;
  }
}

/**
 * Parses the complete records at the start of `text` (each ending in a line
 * break); `consumed` is where the first incomplete record starts.
 */
function parseCsvPrefix(text: string): { rows: CsvField[][]; consumed: number } {
  const rows: CsvField[][] = [];
  const n = text.length;
  let start = 0;
  let i = 0;
  let row: CsvField[] = [];
  while (i < n) {
    let value: CsvField;
    if (text.charCodeAt(i) === 34) {
      let out = "";
      let closed = false;
      let k = i + 1;
      while (!closed) {
        const q = text.indexOf('"', k);
        if (q < 0 || q + 1 >= n) break; // the quote may continue in the next piece
        out += text.slice(k, q);
        if (text.charCodeAt(q + 1) === 34) {
          out += '"';
          k = q + 2;
        } else {
          k = q + 1;
          closed = true;
        }
      }
      if (!closed) break;
      i = k;
      value = out;
      const c = text.charCodeAt(i);
      if (c !== 44 && c !== 10 && c !== 13) {
        throw new SyntaxError(`Cannot parse CSV: unexpected character after quote at offset ${i}`);
      }
    } else {
      let j = i;
      while (j < n) {
        const c = text.charCodeAt(j);
        if (c === 44 || c === 10 || c === 13) break;
        j++;
      }
      if (j >= n) break;
      value = j === i ? null : text.slice(i, j);
      i = j;
    }
    row.push(value);
    const c = text.charCodeAt(i);
    if (c === 44) {
      i++;
      continue;
    }
    if (c === 13) {
      if (i + 1 >= n) break;
      i += text.charCodeAt(i + 1) === 10 ? 2 : 1;
    } else i++;
    rows.push(row);
    row = [];
    start = i;
  }
  return { rows, consumed: start };
}

/**
 * Decodes the first `count` fields of one row's CSV text (no line break);
 * fields beyond the text are NULL.
 */
export function csvFields(text: string, count: number): CsvField[] {
  const out: CsvField[] = [];
  const n = text.length;
  let i = 0;
  while (out.length < count) {
    if (i > n) {
      out.push(null);
      continue;
    }
    if (text.charCodeAt(i) === 34) {
      let value = "";
      let k = i + 1;
      while (true) {
        const q = text.indexOf('"', k);
        if (q < 0) throw new SyntaxError(`Cannot parse CSV: unclosed quote at offset ${i}`);
        value += text.slice(k, q);
        if (text.charCodeAt(q + 1) === 34) {
          value += '"';
          k = q + 2;
        } else {
          k = q + 1;
          break;
        }
      }
      if (k < n && text.charCodeAt(k) !== 44) {
        throw new SyntaxError(`Cannot parse CSV: unexpected character after quote at offset ${k}`);
      }
      out.push(value);
      i = k + 1;
    } else {
      let j = text.indexOf(",", i);
      if (j < 0) j = n;
      out.push(j === i ? null : text.slice(i, j));
      i = j + 1;
    }
  }
  return out;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });
const QUOTE = 34;
const COMMA = 44;
const LF = 10;
const CR = 13;
/** `_cdc_op` values as shared strings. */
const OPS: Record<number, string> = { 73: "I", 85: "U", 68: "D", 84: "T" };

/** UTF-8 bytes `[a, b)` of `buf` as a string (short ASCII without a decoder call). */
function decodeRange(buf: Uint8Array, a: number, b: number): string {
  if (b - a <= 24) {
    let ascii = true;
    for (let i = a; i < b; i++) {
      if (buf[i] >= 0x80) {
        ascii = false;
        break;
      }
    }
    if (ascii) return String.fromCharCode.apply(null, buf.subarray(a, b) as unknown as number[]);
  }
  return utf8.decode(buf.subarray(a, b));
}

/**
 * Where the CSV field that starts at `i` ends (the offset of the comma or
 * of `end`), in `buf` up to `end`. Throws SyntaxError on a broken quote
 * (`base`: the input offset of `buf[0]`, for the message).
 */
function fieldEnd(buf: Uint8Array, i: number, end: number, base = 0): number {
  if (buf[i] !== QUOTE) {
    // Fields are short: a loop beats a native indexOf call per field.
    let j = i;
    while (j < end && buf[j] !== COMMA) j++;
    return j;
  }
  let k = i + 1;
  while (true) {
    const q = buf.indexOf(QUOTE, k);
    if (q < 0 || q >= end) {
      throw new SyntaxError(`Cannot parse CSV: unclosed quote at offset ${base + i}`);
    }
    if (buf[q + 1] === QUOTE && q + 1 < end) {
      k = q + 2;
      continue;
    }
    if (q + 1 < end && buf[q + 1] !== COMMA) {
      throw new SyntaxError(
        `Cannot parse CSV: unexpected character after quote at offset ${base + q + 1}`,
      );
    }
    return q + 1;
  }
}

/** The value of the field `[a, b)` (null when unquoted and empty). */
function fieldValue(buf: Uint8Array, a: number, b: number): CsvField {
  if (a === b) return null;
  if (buf[a] !== QUOTE) return decodeRange(buf, a, b);
  return decodeRange(buf, a + 1, b - 1).replaceAll('""', '"');
}

/**
 * A streaming row as read for replay, straight from the file's bytes: the
 * metadata the replay rule needs decoded, the table's values kept as their
 * CSV bytes (no line break) and decoded only when needed. Most changes pass
 * to a target as those bytes.
 */
export class ChangeLine {
  /** The bytes that hold the row (shared with the rows around it). */
  readonly bytes: Uint8Array;
  readonly #metaStart: number;
  readonly #metaEnd: number;
  readonly #metaCount: number;
  /** Where the values' CSV text starts and ends in {@linkcode bytes}. */
  readonly valuesStart: number;
  readonly valuesEnd: number;
  /** `_cdc_op`. */
  readonly op: CsvField;
  /** `_cdc_lsn`. */
  readonly lsn: bigint;
  /** `_cdc_seq`. */
  readonly seq: number;
  /** `_cdc_unchanged_cols` (null when empty). */
  readonly unchanged: CsvField;
  /** `_cdc_old_key` (null when empty). */
  readonly oldKey: CsvField;

  /**
   * Made by {@linkcode ChangeLineParser} (positional: one is made per row).
   * The metadata columns are `[metaStart, metaEnd)` of `bytes`.
   */
  constructor(
    bytes: Uint8Array,
    metaStart: number,
    metaEnd: number,
    metaCount: number,
    valuesStart: number,
    valuesEnd: number,
    op: CsvField,
    lsn: bigint,
    seq: number,
    unchanged: CsvField,
    oldKey: CsvField,
  ) {
    this.bytes = bytes;
    this.#metaStart = metaStart;
    this.#metaEnd = metaEnd;
    this.#metaCount = metaCount;
    this.valuesStart = valuesStart;
    this.valuesEnd = valuesEnd;
    this.op = op;
    this.lsn = lsn;
    this.seq = seq;
    this.unchanged = unchanged;
    this.oldKey = oldKey;
  }

  /** Number of metadata columns the row has. */
  get metaCount(): number {
    return this.#metaCount;
  }

  /** Every metadata column, decoded. */
  meta(): CsvField[] {
    return csvFields(decodeRange(this.bytes, this.#metaStart, this.#metaEnd), this.#metaCount);
  }

  /** The values' CSV text. */
  text(): string {
    return decodeRange(this.bytes, this.valuesStart, this.valuesEnd);
  }

  /** Bytes of the values' CSV text. */
  get byteLength(): number {
    return this.valuesEnd - this.valuesStart;
  }

  /** The first `count` values, decoded (NULL beyond the row's end). */
  fields(count: number): CsvField[] {
    const buf = this.bytes;
    const end = this.valuesEnd;
    let i = this.valuesStart;
    for (let k = 0; k < count && i <= end; k++) i = fieldEnd(buf, i, end) + 1;
    return csvFields(decodeRange(buf, this.valuesStart, Math.min(i - 1, end)), count);
  }
}

/**
 * Splits gzip-decoded pieces of a changes file (PostgreSQL's CSV dialect,
 * `meta` metadata columns first: `_cdc_op`, `_cdc_lsn`, `_cdc_seq`,
 * `_cdc_commit_ts`, `_cdc_xid`, `_cdc_unchanged_cols`, `_cdc_old_key`)
 * into {@linkcode ChangeLine}s, working on the bytes: a row's values are
 * never decoded here, and a transaction's rows parse its LSN once. The
 * header row is skipped. Keeps the unfinished tail for the next piece.
 */
export class ChangeLineParser {
  readonly #meta: number;
  #header = true;
  /** The unfinished row so far, and whether it ends inside a quoted value. */
  #carry: Uint8Array | null = null;
  #carryQuoted = false;
  readonly #lsnBytes = new Uint8Array(32);
  #lsnLength = -1;
  #lsn = 0n;
  /** Offset in the whole input of the next piece's first byte (for error messages). */
  #offset = 0;

  constructor(meta: number) {
    this.#meta = meta;
  }

  /** Adds a piece; returns the complete rows it finished. */
  push(piece: Uint8Array): ChangeLine[] {
    const out: ChangeLine[] = [];
    const base = this.#offset;
    this.#offset += piece.length;
    let from = 0;
    const carry = this.#carry;
    if (carry) {
      const e = lineEnd(piece, 0, this.#carryQuoted);
      if (e.at < 0) {
        this.#carry = concat(carry, piece);
        this.#carryQuoted = e.quoted;
        return out;
      }
      this.#carry = null;
      const row = concat(carry, piece.subarray(0, e.at + 1));
      this.#row(row, 0, row.length - 1, base - carry.length, out);
      from = e.at + 1;
    }
    let quoteAt = piece.indexOf(QUOTE, from);
    while (from < piece.length) {
      let at = piece.indexOf(LF, from);
      if (at >= 0 && quoteAt >= 0 && quoteAt < at) {
        at = lineEnd(piece, from, false).at;
        if (at < 0) break;
        quoteAt = piece.indexOf(QUOTE, at);
      }
      if (at < 0) break;
      this.#row(piece, from, at, base, out);
      from = at + 1;
    }
    if (from < piece.length) {
      this.#carry = piece.slice(from);
      this.#carryQuoted = lineEnd(this.#carry, 0, false).quoted;
    }
    return out;
  }

  /** Ends the input; returns the last row. Throws SyntaxError on a broken tail. */
  end(): ChangeLine[] {
    const tail = this.#carry;
    this.#carry = null;
    if (!tail) return [];
    const base = this.#offset - tail.length;
    if (this.#carryQuoted) {
      throw new SyntaxError(`Cannot parse CSV: unclosed quote in the row at offset ${base}`);
    }
    const out: ChangeLine[] = [];
    this.#row(tail, 0, tail.length, base, out);
    return out;
  }

  /**
   * Parses the row `[start, lf)` of `buf` (`lf`: its line break; `base`: the
   * input offset of `buf[0]`).
   */
  #row(buf: Uint8Array, start: number, lf: number, base: number, out: ChangeLine[]): void {
    const end = lf > start && buf[lf - 1] === CR ? lf - 1 : lf;
    if (this.#header) {
      this.#header = false;
      return;
    }
    let i = start;
    let count = 0;
    let op: CsvField = null;
    let lsn = 0n;
    let seq = 0;
    let unchanged: CsvField = null;
    let oldKey: CsvField = null;
    for (; count < this.#meta && i <= end; count++) {
      const j = fieldEnd(buf, i, end, base);
      switch (count) {
        case 0:
          op = (j === i + 1 && OPS[buf[i]]) || fieldValue(buf, i, j);
          break;
        case 1:
          lsn = this.#parseLsn(buf, i, j, base);
          break;
        case 2:
          seq = parseSeq(buf, i, j, base + i);
          break;
        case 5:
          unchanged = fieldValue(buf, i, j);
          break;
        case 6:
          oldKey = fieldValue(buf, i, j);
          break;
      }
      i = j + 1;
    }
    if (count < 3) {
      throw new SyntaxError(
        `Cannot parse the change row at offset ${
          base + start
        }: expected _cdc_op, _cdc_lsn and _cdc_seq`,
      );
    }
    const metaEnd = Math.min(i - 1, end);
    out.push(
      new ChangeLine(
        buf,
        start,
        metaEnd,
        count,
        Math.min(i, end),
        end,
        op,
        lsn,
        seq,
        unchanged,
        oldKey,
      ),
    );
  }

  /** The LSN in `[a, b)`, parsed once for a run of rows that share it. */
  #parseLsn(buf: Uint8Array, a: number, b: number, base: number): bigint {
    const n = b - a;
    const last = this.#lsnBytes;
    if (n === this.#lsnLength) {
      let same = true;
      for (let k = 0; k < n; k++) {
        if (buf[a + k] !== last[k]) {
          same = false;
          break;
        }
      }
      if (same) return this.#lsn;
    }
    const text = fieldValue(buf, a, b) ?? "";
    try {
      this.#lsn = parseLsn(text);
    } catch {
      throw new SyntaxError(`Cannot parse _cdc_lsn "${text}" at offset ${base + a}`);
    }
    if (n <= last.length) {
      last.set(buf.subarray(a, b));
      this.#lsnLength = n;
    } else this.#lsnLength = -1;
    return this.#lsn;
  }
}

/** `_cdc_seq` in `[a, b)`: decimal digits. */
function parseSeq(buf: Uint8Array, a: number, b: number, offset: number): number {
  let n = 0;
  if (a === b || b - a > 15) {
    throw new SyntaxError(`Cannot parse _cdc_seq at offset ${offset}: expected an integer`);
  }
  for (let i = a; i < b; i++) {
    const d = buf[i] - 48;
    if (d < 0 || d > 9) {
      throw new SyntaxError(`Cannot parse _cdc_seq at offset ${offset}: expected an integer`);
    }
    n = n * 10 + d;
  }
  return n;
}

/**
 * The line break that ends the row starting at `from` (a quoted value may
 * hold line breaks: a break is inside quotes when an odd number of quotes
 * precede it on the row), given whether `from` is inside a quoted value;
 * `at` is -1 when the piece ends first, with `quoted` as of its end.
 */
function lineEnd(buf: Uint8Array, from: number, quoted: boolean): { at: number; quoted: boolean } {
  let i = from;
  let q = quoted;
  while (true) {
    const lf = buf.indexOf(LF, i);
    const stop = lf < 0 ? buf.length : lf;
    for (let k = buf.indexOf(QUOTE, i); k >= 0 && k < stop; k = buf.indexOf(QUOTE, k + 1)) q = !q;
    if (lf < 0) return { at: -1, quoted: q };
    if (!q) return { at: lf, quoted: false };
    i = lf + 1;
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
