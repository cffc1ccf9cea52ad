/**
 * PostgreSQL log sequence numbers as a distinct bigint type.
 *
 * LSN text ("16/B374D848") must never be compared as strings: "0/9" sorts
 * after "0/10". Everything inside cdc-egress carries `Lsn` values and only
 * formats them at the edges (SQL parameters, CSV, logs).
 */

declare const lsnBrand: unique symbol;

/** A WAL position: an unsigned 64-bit integer. */
export type Lsn = bigint & { readonly [lsnBrand]: true };

const MAX = (1n << 64n) - 1n;

/** The zero LSN ("0/0"), which PostgreSQL uses for "no position". */
export const ZERO_LSN = 0n as Lsn;

/** Wraps a bigint as an LSN, checking that it fits in 64 unsigned bits. */
export function toLsn(value: bigint): Lsn {
  if (value < 0n || value > MAX) {
    throw new RangeError(`Cannot use ${value} as an LSN: outside 0..2^64-1`);
  }
  return value as Lsn;
}

const LSN_TEXT = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

/** Parses PostgreSQL's pg_lsn text form ("16/B374D848"). */
export function parseLsn(text: string): Lsn {
  const match = LSN_TEXT.exec(text);
  if (!match) throw new SyntaxError(`Cannot parse LSN "${text}": expected "X/Y" in hex`);
  return ((BigInt("0x" + match[1]) << 32n) | BigInt("0x" + match[2])) as Lsn;
}

/** Formats an LSN the way PostgreSQL prints pg_lsn (upper-case hex, no padding). */
export function formatLsn(lsn: Lsn): string {
  const hi = (lsn >> 32n).toString(16).toUpperCase();
  const lo = (lsn & 0xffffffffn).toString(16).toUpperCase();
  return `${hi}/${lo}`;
}

/** Three-way comparison: negative when a < b, 0 when equal, positive when a > b. */
export function compareLsn(a: Lsn, b: Lsn): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The larger of two LSNs. */
export function maxLsn(a: Lsn, b: Lsn): Lsn {
  return a > b ? a : b;
}

/** The smaller of two LSNs. */
export function minLsn(a: Lsn, b: Lsn): Lsn {
  return a < b ? a : b;
}
