/**
 * A bounds-checked, big-endian byte reader shared by the pgoutput decoder and
 * the CopyData frame codec. Private to `src/decode`.
 *
 * Every read checks the remaining length first, so malformed input surfaces
 * as a {@linkcode PgoutputDecodeError} carrying the failing offset, never as
 * a `RangeError` from `DataView` or an `undefined` read past the end.
 *
 * @module
 */

import type { Lsn } from "../lsn.ts";

/**
 * Bytes from the replication stream that cannot be decoded: truncated input,
 * trailing bytes, an unknown message type, tuple kind or tuple marker.
 *
 * `offset` is the position, within the decoded message, of the byte where
 * decoding failed.
 */
export class PgoutputDecodeError extends Error {
  /** Byte offset within the decoded message where decoding failed. */
  readonly offset: number;

  /** Creates the error; `message` should already name what failed and where. */
  constructor(message: string, offset: number, options?: ErrorOptions) {
    super(message, options);
    this.name = "PgoutputDecodeError";
    this.offset = offset;
  }
}

/** Formats a byte for error messages: `0x7a`. */
export function hexByte(byte: number): string {
  return "0x" + byte.toString(16).padStart(2, "0");
}

// Names and prefixes are UTF-8 on every server we support; a fatal decoder
// turns garbage into a decode error instead of silently producing U+FFFD in
// table names (which would then name directories). ignoreBOM keeps a leading
// U+FEFF as part of the name rather than dropping it.
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

const EMPTY = new Uint8Array(0);

// Messages usually arrive as subarrays of one larger socket chunk; reusing the
// DataView of the last buffer seen avoids one allocation per message.
let cachedBuffer: ArrayBufferLike = EMPTY.buffer;
let cachedView: DataView = new DataView(cachedBuffer);

function viewOf(buffer: ArrayBufferLike): DataView {
  if (buffer !== cachedBuffer) {
    cachedView = new DataView(buffer);
    cachedBuffer = buffer;
  }
  return cachedView;
}

/**
 * A cursor over one message. One instance is reused for many messages via
 * {@linkcode ByteReader.reset} so decoding allocates only its results.
 */
export class ByteReader {
  /** The message being read. */
  bytes: Uint8Array = EMPTY;
  /** Position of the next read, relative to the start of `bytes`. */
  pos = 0;
  /** Length of `bytes`. */
  end = 0;
  /** What is being decoded, for error messages ("pgoutput Insert"). */
  label = "";
  #view: DataView = cachedView;
  #base = 0;

  /** Starts reading `bytes` from offset 0. */
  reset(bytes: Uint8Array, label: string): void {
    this.bytes = bytes;
    this.pos = 0;
    this.end = bytes.byteLength;
    this.label = label;
    this.#view = viewOf(bytes.buffer);
    this.#base = bytes.byteOffset;
  }

  /** Bytes not yet read. */
  get remaining(): number {
    return this.end - this.pos;
  }

  /** Throws a {@linkcode PgoutputDecodeError} at `at` (default: the current position). */
  fail(detail: string, at: number = this.pos): never {
    throw new PgoutputDecodeError(`Cannot decode ${this.label} at offset ${at}: ${detail}`, at);
  }

  /** Throws unless `n` more bytes are available for `what`. */
  need(n: number, what: string): void {
    const left = this.end - this.pos;
    if (left < n) {
      this.fail(
        `unexpected end of data reading ${what}: ${n} byte${
          n === 1 ? "" : "s"
        } needed, ${left} left`,
      );
    }
  }

  /** Reads an unsigned 8-bit integer. */
  u8(what: string): number {
    if (this.pos >= this.end) this.need(1, what);
    return this.bytes[this.pos++];
  }

  /** Reads an unsigned 16-bit integer. */
  u16(what: string): number {
    if (this.end - this.pos < 2) this.need(2, what);
    const value = this.#view.getUint16(this.#base + this.pos);
    this.pos += 2;
    return value;
  }

  /** Reads a signed 16-bit integer. */
  i16(what: string): number {
    if (this.end - this.pos < 2) this.need(2, what);
    const value = this.#view.getInt16(this.#base + this.pos);
    this.pos += 2;
    return value;
  }

  /** Reads an unsigned 32-bit integer (OIDs, xids, lengths). */
  u32(what: string): number {
    if (this.end - this.pos < 4) this.need(4, what);
    const value = this.#view.getUint32(this.#base + this.pos);
    this.pos += 4;
    return value;
  }

  /** Reads a signed 32-bit integer. */
  i32(what: string): number {
    if (this.end - this.pos < 4) this.need(4, what);
    const value = this.#view.getInt32(this.#base + this.pos);
    this.pos += 4;
    return value;
  }

  /** Reads a signed 64-bit integer (timestamps). */
  i64(what: string): bigint {
    if (this.end - this.pos < 8) this.need(8, what);
    const value = this.#view.getBigInt64(this.#base + this.pos);
    this.pos += 8;
    return value;
  }

  /** Reads an unsigned 64-bit integer. */
  u64(what: string): bigint {
    if (this.end - this.pos < 8) this.need(8, what);
    const value = this.#view.getBigUint64(this.#base + this.pos);
    this.pos += 8;
    return value;
  }

  /** Reads an unsigned 64-bit WAL position; always in range, so no `toLsn` check. */
  lsn(what: string): Lsn {
    return this.u64(what) as Lsn;
  }

  /** Reads a NUL-terminated UTF-8 string and skips the NUL. */
  cstring(what: string): string {
    const start = this.pos;
    const nul = this.bytes.indexOf(0, start);
    if (nul < 0) this.fail(`unexpected end of data reading ${what}: no terminating NUL byte`);
    let text: string;
    try {
      text = utf8.decode(this.bytes.subarray(start, nul));
    } catch (error) {
      throw new PgoutputDecodeError(
        `Cannot decode ${this.label} at offset ${start}: invalid UTF-8 in ${what}`,
        start,
        { cause: error },
      );
    }
    this.pos = nul + 1;
    return text;
  }

  /** Returns the next `n` bytes as a subarray of the input (no copy). */
  take(n: number, what: string): Uint8Array {
    if (this.end - this.pos < n) this.need(n, what);
    const start = this.pos;
    this.pos = start + n;
    return this.bytes.subarray(start, this.pos);
  }

  /** Returns everything not yet read (no copy). */
  rest(): Uint8Array {
    const start = this.pos;
    this.pos = this.end;
    return this.bytes.subarray(start);
  }

  /** Throws if bytes are left over: a message must be consumed exactly. */
  finish(): void {
    const left = this.end - this.pos;
    if (left !== 0) this.fail(`${left} trailing byte${left === 1 ? "" : "s"} after the message`);
  }
}
