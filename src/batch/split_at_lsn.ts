/**
 * Splits a sealed streaming file at an LSN: the rows before it stay in one
 * file, the rows from it on go into another, each with the header. Needed
 * when changes of a table were held while its export's snapshot was being
 * made, and the snapshot's boundary turned out to fall inside them.
 */

import { createReadStream } from "node:fs";
import { createGunzip } from "node:zlib";
import { type Lsn, parseLsn } from "../lsn.ts";
import type { TablePosition } from "../registry/registry.ts";
import { GzipFileWriter, type SealedFile } from "../write/gzip_file_writer.ts";

/** One side of a split: a sealed file and its rows' range. */
export interface SplitPart {
  sealed: SealedFile;
  rows: number;
  first: TablePosition;
  last: TablePosition;
}

const QUOTE = 0x22;
const NEWLINE = 0x0a;
const COMMA = 0x2c;
const ascii = new TextDecoder();

/** `_cdc_lsn` and `_cdc_seq` of a record: the 2nd and 3rd fields, never quoted. */
function positionOf(record: Uint8Array): TablePosition {
  const c1 = record.indexOf(COMMA);
  const c2 = record.indexOf(COMMA, c1 + 1);
  const c3 = record.indexOf(COMMA, c2 + 1);
  if (c1 < 0 || c2 < 0 || c3 < 0) {
    throw new SyntaxError("Cannot split a streaming file: a record has no _cdc_lsn/_cdc_seq");
  }
  return {
    lsn: parseLsn(ascii.decode(record.subarray(c1 + 1, c2))),
    seq: Number(ascii.decode(record.subarray(c2 + 1, c3))),
  };
}

/**
 * Reads the gzip CSV file `src` and writes its rows before `boundary` to
 * `before` and the others to `after` (each a `{ finalPath, tempPath }` for
 * a {@linkcode GzipFileWriter}); a side without rows gets no file.
 */
export async function splitAtLsn(
  src: string,
  boundary: Lsn,
  before: { finalPath: string; tempPath: string },
  after: { finalPath: string; tempPath: string },
): Promise<{ before: SplitPart | null; after: SplitPart | null }> {
  let header: Uint8Array | null = null;
  const sides: ({ writer: GzipFileWriter; part: Omit<SplitPart, "sealed"> } | null)[] = [
    null,
    null,
  ];
  const targets = [before, after];
  let pending: Uint8Array[] = [];
  let inQuotes = false;
  const onRecord = async (record: Uint8Array) => {
    if (header === null) {
      header = record;
      return;
    }
    const pos = positionOf(record);
    const i = pos.lsn < boundary ? 0 : 1;
    let side = sides[i];
    if (side === null) {
      const t = targets[i];
      const writer = await GzipFileWriter.create(t.finalPath, { tempPath: t.tempPath });
      await writer.write(header);
      side = { writer, part: { rows: 0, first: pos, last: pos } };
      sides[i] = side;
    }
    await side.writer.write(record);
    side.part.rows++;
    side.part.last = pos;
  };
  try {
    for await (const chunk of createReadStream(src).pipe(createGunzip())) {
      const bytes = chunk as Uint8Array;
      let start = 0;
      for (let i = 0; i < bytes.length; i++) {
        const b = bytes[i];
        if (b === QUOTE) inQuotes = !inQuotes;
        else if (b === NEWLINE && !inQuotes) {
          pending.push(bytes.subarray(start, i + 1));
          const record = pending.length === 1 ? pending[0] : concat(pending);
          pending = [];
          await onRecord(record.slice());
          start = i + 1;
        }
      }
      if (start < bytes.length) pending.push(bytes.slice(start));
    }
    if (pending.length > 0) throw new SyntaxError("Cannot split a streaming file: it ends mid-row");
    const out: { before: SplitPart | null; after: SplitPart | null } = {
      before: null,
      after: null,
    };
    for (const [i, side] of sides.entries()) {
      if (side === null) continue;
      const part = { ...side.part, sealed: await side.writer.seal() };
      if (i === 0) out.before = part;
      else out.after = part;
    }
    return out;
  } catch (error) {
    for (const side of sides) await side?.writer.abort().catch(() => {});
    throw error;
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
