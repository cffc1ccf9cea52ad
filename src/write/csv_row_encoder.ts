/**
 * CSV encoding in exactly PostgreSQL's `COPY ... TO (FORMAT csv)` dialect.
 *
 * The rules follow `CopyAttributeOutCSV` in PostgreSQL's
 * `src/backend/commands/copyto.c` with the default options (delimiter `,`,
 * quote and escape `"`, NULL printed as the empty string):
 *
 * - NULL is an empty, unquoted field.
 * - A non-null value is quoted when it contains `,`, `"`, `\n` or `\r`, when
 *   it is empty (it would otherwise read as NULL), or when it is exactly `\.`
 *   and the row has a single column (so that old readers do not take the line
 *   for the end-of-data marker).
 * - Inside quotes, `"` is doubled. Nothing else is escaped.
 * - Every row ends with `\n`.
 *
 * Because streaming files must be byte-identical to what `COPY` prints for the
 * same values, values arrive as the UTF-8 bytes PostgreSQL produced and are
 * copied, never decoded. UTF-8 never uses bytes below 0x80 inside a multi-byte
 * character, so a plain byte scan for the four special characters is exact.
 *
 * @module
 */

const COMMA = 0x2c;
const QUOTE = 0x22;
const LF = 0x0a;
const CR = 0x0d;
const BACKSLASH = 0x5c;
const DOT = 0x2e;

/** Values up to this length are copied with a byte loop; longer ones with `set` (memcpy). */
const SHORT_VALUE = 24;

/** Strings up to this length may take fieldText's no-TextEncoder path. */
const SHORT_TEXT = 64;

const encoder = new TextEncoder();

/** Options for {@linkcode CsvRowEncoder}. */
export interface CsvRowEncoderOptions {
  /** Initial buffer size in bytes. Default 256 KiB. */
  initialCapacity?: number;
  /**
   * After {@linkcode CsvRowEncoder.takeChunk}, a buffer that grew beyond this
   * many bytes (because of one huge value or a caller that takes rarely) is
   * replaced by a fresh one of the initial size, so that a single outlier does
   * not pin memory for the rest of the process. Default 8 MiB.
   */
  maxRetainedCapacity?: number;
}

/**
 * Appends CSV rows to a growable byte buffer.
 *
 * Call {@linkcode field} / {@linkcode fieldText} once per column, then
 * {@linkcode endRow}; hand the bytes on with {@linkcode takeChunk} whenever
 * {@linkcode byteLength} is large enough (64 KiB or more suits gzip).
 *
 * @example
 * ```ts
 * const csv = new CsvRowEncoder();
 * csv.fieldText("I");
 * csv.field(new TextEncoder().encode("a,b"));
 * csv.field(null);
 * csv.endRow(); // I,"a,b",\n
 * const bytes = csv.takeChunk();
 * ```
 */
export class CsvRowEncoder {
  #buf: Uint8Array;
  #len = 0;
  #rowStart = 0;
  #fieldsInRow = 0;
  /** Whether the row's first field was written as the bare two bytes `\.`. */
  #firstIsBareBackslashDot = false;
  #rows = 0;
  readonly #initialCapacity: number;
  readonly #maxRetainedCapacity: number;

  /** Creates an empty encoder. */
  constructor(options: CsvRowEncoderOptions = {}) {
    this.#initialCapacity = Math.max(64, options.initialCapacity ?? 256 * 1024);
    this.#maxRetainedCapacity = Math.max(
      this.#initialCapacity,
      options.maxRetainedCapacity ?? 8 * 1024 * 1024,
    );
    this.#buf = new Uint8Array(this.#initialCapacity);
  }

  /** Bytes buffered and not yet taken, including any unfinished row. */
  get byteLength(): number {
    return this.#len;
  }

  /** Bytes allocated for the buffer (what the encoder holds in memory). */
  get capacity(): number {
    return this.#buf.length;
  }

  /**
   * Shrinks the buffer back to the initial size when what it holds fits:
   * for an encoder that stays idle for long after a burst.
   */
  compact(): void {
    if (this.#buf.length <= this.#initialCapacity || this.#len > this.#initialCapacity) return;
    const buf = new Uint8Array(this.#initialCapacity);
    buf.set(this.#buf.subarray(0, this.#len));
    this.#buf = buf;
  }

  /** Rows completed with {@linkcode endRow} since the encoder was created. */
  get rowCount(): number {
    return this.#rows;
  }

  /**
   * Appends one field: `null` for SQL NULL, else the value's UTF-8 text as
   * PostgreSQL printed it. The bytes are copied; the caller may reuse them.
   */
  field(bytes: Uint8Array | null): void {
    const n = bytes === null ? 0 : bytes.length;
    // Room for separator, value, two quotes; doubled quotes reserve more below.
    if (this.#len + n + 3 > this.#buf.length) this.#grow(n + 3);
    const buf = this.#buf;
    let p = this.#len;
    if (this.#fieldsInRow++ > 0) buf[p++] = COMMA;
    if (bytes === null) {
      this.#len = p;
      return;
    }
    if (n === 0) {
      buf[p++] = QUOTE;
      buf[p++] = QUOTE;
      this.#len = p;
      return;
    }
    // The four special bytes are all <= 0x2C, so most bytes cost one compare.
    let i = 0;
    if (n <= SHORT_VALUE) {
      // Copy while scanning: no native call for tiny values.
      for (; i < n; i++) {
        const b = bytes[i];
        if (b <= COMMA && (b === COMMA || b === QUOTE || b === LF || b === CR)) break;
        buf[p + i] = b;
      }
    } else {
      for (; i < n; i++) {
        const b = bytes[i];
        if (b <= COMMA && (b === COMMA || b === QUOTE || b === LF || b === CR)) break;
      }
      if (i === n) buf.set(bytes, p);
    }
    if (i === n) {
      this.#len = p + n;
      if (this.#fieldsInRow === 1 && n === 2 && bytes[0] === BACKSLASH && bytes[1] === DOT) {
        this.#firstIsBareBackslashDot = true;
      }
      return;
    }
    // Needs quoting. Count the quotes from the first special byte on.
    let quotes = 0;
    for (let k = i; k < n; k++) if (bytes[k] === QUOTE) quotes++;
    this.#len = p;
    if (quotes > 0 && p + n + quotes + 2 > this.#buf.length) this.#grow(n + quotes + 2);
    this.#writeQuoted(bytes, quotes);
  }

  #writeQuoted(bytes: Uint8Array, quotes: number): void {
    const buf = this.#buf;
    const n = bytes.length;
    let p = this.#len;
    buf[p++] = QUOTE;
    if (quotes === 0) {
      buf.set(bytes, p);
      p += n;
    } else if (n < 64 * (quotes + 1)) {
      // Short runs between quotes (typical of JSON): a byte loop beats one
      // subarray() + set() per run.
      for (let i = 0; i < n; i++) {
        const b = bytes[i];
        buf[p++] = b;
        if (b === QUOTE) buf[p++] = QUOTE;
      }
    } else {
      // Long runs: copy them with set(), re-emitting each quote doubled.
      let start = 0;
      for (let i = 0; i < n; i++) {
        if (bytes[i] === QUOTE) {
          buf.set(bytes.subarray(start, i + 1), p);
          p += i + 1 - start;
          buf[p++] = QUOTE;
          start = i + 1;
        }
      }
      if (start < n) {
        buf.set(bytes.subarray(start), p);
        p += n - start;
      }
    }
    buf[p++] = QUOTE;
    this.#len = p;
  }

  /**
   * Appends one field given as a JavaScript string (`null` for SQL NULL),
   * written as UTF-8. Meant for values this tool produces itself (metadata
   * columns, header names); database values should go through
   * {@linkcode field} untouched.
   */
  fieldText(text: string | null): void {
    if (text === null || text.length === 0 || text.length > SHORT_TEXT) {
      this.field(text === null ? null : encoder.encode(text));
      return;
    }
    // Fast path for short ASCII without special characters (LSNs, xids, ops,
    // timestamps): write char codes directly, no TextEncoder call. Any other
    // string is rolled back and goes through field().
    const n = text.length;
    if (this.#len + n + 1 > this.#buf.length) this.#grow(n + 1);
    const buf = this.#buf;
    const start = this.#len;
    let p = start;
    if (this.#fieldsInRow > 0) buf[p++] = COMMA;
    for (let i = 0; i < n; i++) {
      const c = text.charCodeAt(i);
      if (c >= 0x80 || (c <= COMMA && (c === COMMA || c === QUOTE || c === LF || c === CR))) {
        this.field(encoder.encode(text));
        return;
      }
      buf[p++] = c;
    }
    this.#len = p;
    if (this.#fieldsInRow++ === 0 && n === 2 && text === "\\.") {
      this.#firstIsBareBackslashDot = true;
    }
  }

  /** Appends a non-negative integer field (a safe integer), written as its digits. */
  fieldInteger(n: number): void {
    if (this.#len + 18 > this.#buf.length) this.#grow(18);
    const buf = this.#buf;
    let p = this.#len;
    if (this.#fieldsInRow++ > 0) buf[p++] = COMMA;
    let digits = 1;
    for (let x = n; x >= 10; x = Math.floor(x / 10)) digits++;
    for (let i = digits - 1, x = n; i >= 0; i--, x = Math.floor(x / 10)) buf[p + i] = 48 + (x % 10);
    this.#len = p + digits;
  }

  /**
   * Appends fields that are already CSV text in this dialect (one or more,
   * comma-separated, no line break; a string or its UTF-8 bytes), as read
   * from a file: copied unchanged.
   * Empty text is one NULL field.
   */
  encodedFields(text: string | Uint8Array): void {
    if (typeof text !== "string") {
      if (this.#len + text.length + 1 > this.#buf.length) this.#grow(text.length + 1);
      if (this.#fieldsInRow++ > 0) this.#buf[this.#len++] = COMMA;
      this.#buf.set(text, this.#len);
      this.#len += text.length;
      return;
    }
    // UTF-8 takes at most three bytes per UTF-16 unit.
    if (this.#len + 3 * text.length + 1 > this.#buf.length) this.#grow(3 * text.length + 1);
    if (this.#fieldsInRow++ > 0) this.#buf[this.#len++] = COMMA;
    this.#len += encoder.encodeInto(text, this.#buf.subarray(this.#len)).written;
  }

  /** Ends the current row with `\n`. */
  endRow(): void {
    if (this.#fieldsInRow === 1 && this.#firstIsBareBackslashDot) {
      // The row turned out to have a single column whose value is `\.`:
      // PostgreSQL quotes it. Rewrite the two bytes we wrote bare.
      if (this.#len + 2 > this.#buf.length) this.#grow(2);
      const p = this.#rowStart;
      this.#buf[p] = QUOTE;
      this.#buf[p + 1] = BACKSLASH;
      this.#buf[p + 2] = DOT;
      this.#buf[p + 3] = QUOTE;
      this.#len = p + 4;
    }
    if (this.#len + 1 > this.#buf.length) this.#grow(1);
    this.#buf[this.#len++] = LF;
    this.#rows++;
    this.#rowStart = this.#len;
    this.#fieldsInRow = 0;
    this.#firstIsBareBackslashDot = false;
  }

  /**
   * Returns the buffered complete rows and removes them from the buffer. The
   * returned array is a copy owned by the caller (it may be handed to an
   * asynchronous writer while encoding continues). An unfinished row stays
   * buffered, so every chunk ends at a row boundary; an empty array means no
   * complete row is buffered.
   */
  takeChunk(): Uint8Array {
    const end = this.#rowStart;
    const out = this.#buf.slice(0, end);
    const partial = this.#len - end;
    const buf = this.#buf.length > this.#maxRetainedCapacity && partial <= this.#initialCapacity
      ? new Uint8Array(this.#initialCapacity)
      : this.#buf;
    // Move the unfinished row (usually nothing) to the front.
    if (partial > 0) {
      if (buf === this.#buf) buf.copyWithin(0, end, this.#len);
      else buf.set(this.#buf.subarray(end, this.#len), 0);
    }
    this.#buf = buf;
    this.#len = partial;
    this.#rowStart = 0;
    return out;
  }

  /** Reallocates so that `extra` more bytes fit, at least doubling the size. */
  #grow(extra: number): void {
    const need = this.#len + extra;
    let cap = this.#buf.length * 2;
    while (cap < need) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.#buf.subarray(0, this.#len));
    this.#buf = next;
  }
}

/**
 * Encodes a header row (column names, then `\n`) the way `COPY ... (FORMAT
 * csv, HEADER)` prints it: names follow the same quoting rules as values.
 */
export function encodeCsvHeader(columnNames: readonly string[]): Uint8Array {
  const csv = new CsvRowEncoder({ initialCapacity: 256 });
  for (const name of columnNames) csv.fieldText(name);
  csv.endRow();
  return csv.takeChunk();
}
