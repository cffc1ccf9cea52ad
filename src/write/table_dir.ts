/**
 * Names of the directories in `data_dir`: one per table, one per batch.
 *
 * Table directories: `tableDirName(schema, table)` percent-encodes each
 * identifier's UTF-8 bytes, keeping only `[A-Za-z0-9_-]` as is (so `.`, `%`,
 * `/`, spaces and every non-ASCII byte become `%XX`, upper-case hex), and
 * joins the two with `.`: `public.orders` stays `public.orders`,
 * `my schema.a.b` becomes `my%20schema.a%2Eb`. The single unescaped `.` splits
 * the name unambiguously, so the mapping is injective, and the result never is
 * `.` or `..`, never contains `/` and never starts with `.` (temp files do).
 *
 * PostgreSQL identifiers have up to 63 bytes, so an encoded name can reach
 * 2 * 63 * 3 + 1 = 379 bytes, more than filesystems like (255) or humans read.
 * Names longer than {@linkcode MAX_TABLE_DIR_BYTES} are shortened to a
 * readable prefix of the encoded name (cut at a character boundary), `~`, and
 * the first 32 hex digits (128 bits) of the sha256 of the UTF-8 bytes of
 * `schema + "\0" + table`. `~` never occurs in unhashed names, so the two kinds
 * cannot collide, and hashed names collide only if sha256 truncated to 128
 * bits does. Hashed names cannot be decoded; the registry maps them back.
 *
 * @module
 */

import { createHash } from "node:crypto";

/** Longest table directory name, in bytes (all names are ASCII). */
export const MAX_TABLE_DIR_BYTES = 200;

const HASH_HEX_DIGITS = 32;
const HEX = "0123456789ABCDEF";
const utf8 = new TextEncoder();

function isSafeByte(b: number): boolean {
  return (b >= 0x30 && b <= 0x39) || // 0-9
    (b >= 0x41 && b <= 0x5a) || // A-Z
    (b >= 0x61 && b <= 0x7a) || // a-z
    b === 0x5f || b === 0x2d; // _ -
}

function encodeIdentifier(name: string, what: string): string {
  if (name.length === 0) throw new RangeError(`Cannot name a directory after an empty ${what}`);
  let out = "";
  for (const b of utf8.encode(name)) {
    out += isSafeByte(b) ? String.fromCharCode(b) : "%" + HEX[b >> 4] + HEX[b & 15];
  }
  return out;
}

/**
 * Maps a schema-qualified table name to its directory name (see the module
 * documentation for the scheme). Throws a `RangeError` for an empty schema or
 * table name, which PostgreSQL does not allow.
 */
export function tableDirName(schema: string, table: string): string {
  const full = encodeIdentifier(schema, "schema") + "." + encodeIdentifier(table, "table");
  if (full.length <= MAX_TABLE_DIR_BYTES) return full;
  const hash = createHash("sha256").update(utf8.encode(`${schema}\0${table}`)).digest("hex")
    .slice(0, HASH_HEX_DIGITS);
  let cut = MAX_TABLE_DIR_BYTES - 1 - HASH_HEX_DIGITS;
  // Do not cut through a %XX escape.
  if (full[cut - 1] === "%") cut -= 1;
  else if (full[cut - 2] === "%") cut -= 2;
  return `${full.slice(0, cut)}~${hash}`;
}

const ENCODED_PART = /^(?:[A-Za-z0-9_-]|%[0-9A-F]{2})+$/;
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

function decodeIdentifier(part: string): string | null {
  if (!ENCODED_PART.test(part)) return null;
  const bytes: number[] = [];
  for (let i = 0; i < part.length; i++) {
    if (part[i] === "%") {
      bytes.push(parseInt(part.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      bytes.push(part.charCodeAt(i));
    }
  }
  try {
    return strictUtf8.decode(new Uint8Array(bytes));
  } catch {
    return null;
  }
}

/**
 * Inverse of {@linkcode tableDirName}: returns the schema and table a
 * directory name stands for, or `null` for a hashed (shortened) name or any
 * name `tableDirName` would not produce.
 */
export function parseTableDirName(dir: string): { schema: string; table: string } | null {
  const parts = dir.split(".");
  if (parts.length !== 2) return null;
  const schema = decodeIdentifier(parts[0]);
  const table = decodeIdentifier(parts[1]);
  if (schema === null || table === null) return null;
  // Only canonical encodings map back (e.g. not "%41" for "A"), which keeps
  // the inverse a bijection with tableDirName's image.
  return tableDirName(schema, table) === dir ? { schema, table } : null;
}

const BATCH_TS = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})\.(\d{3})Z$/;

function formatBatchTs(ms: number): string {
  const iso = new Date(ms).toISOString(); // 2026-11-24T17:05:00.123Z
  if (iso.length !== 24) {
    throw new RangeError(`Cannot format batch timestamp for ${iso}: year outside 0000-9999`);
  }
  return iso.slice(0, 4) + iso.slice(5, 7) + iso.slice(8, 13) + iso.slice(14, 16) +
    iso.slice(17);
}

/**
 * Parses a batch directory name made by {@linkcode batchTimestamp} back to
 * epoch milliseconds; throws a `SyntaxError` for anything else.
 */
export function parseBatchTimestamp(name: string): number {
  const m = BATCH_TS.exec(name);
  if (!m) {
    throw new SyntaxError(
      `Cannot parse batch timestamp "${name}": expected YYYYMMDDTHHMMSS.mmmZ`,
    );
  }
  const ms = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6], +m[7]);
  if (formatBatchTs(ms) !== name) {
    throw new SyntaxError(`Cannot parse batch timestamp "${name}": not a valid UTC time`);
  }
  return ms;
}

/**
 * Names a batch directory after `date`, in UTC with milliseconds:
 * `20261124T170500.123Z`. The names sort like the times they stand for.
 *
 * With `last` (the table's previous batch name) the result is strictly
 * greater than `last`: if the clock has not moved on or went backwards, it is
 * `last` plus 1 ms, so a table's batch names stay unique and increasing.
 */
export function batchTimestamp(date: Date, last?: string): string {
  let ms = date.getTime();
  if (Number.isNaN(ms)) throw new RangeError("Cannot name a batch after an invalid date");
  if (last !== undefined) {
    const lastMs = parseBatchTimestamp(last);
    if (ms <= lastMs) ms = lastMs + 1;
  }
  return formatBatchTs(ms);
}
