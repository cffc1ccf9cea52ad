/** Reading a registered file once: size, sha256, and gzip CSV records. */

import { createHash } from "node:crypto";
import { createGunzip } from "node:zlib";
import { CsvRecordCounter } from "./csv_record_counter.ts";

/** What reading one file gave. */
export interface ScannedFile {
  size: number;
  sha256: string;
  /** CSV records (header included) for gzip files; null for others or when unreadable. */
  records: number | null;
  /** Why the content is not valid gzip CSV, if it is not. */
  corrupt: string | null;
}

/**
 * Reads a file once: size, sha256 and, for gzip CSV, the record count,
 * decompressing as a stream so memory stays bounded.
 */
export async function scanFile(path: string, gzipCsv: boolean): Promise<ScannedFile> {
  const file = await Deno.open(path, { read: true });
  return await scanStream(file.readable, gzipCsv);
}

/** {@linkcode scanFile} of a stream (an object read from the bucket). */
export async function scanStream(
  readable: ReadableStream<Uint8Array>,
  gzipCsv: boolean,
): Promise<ScannedFile> {
  const hash = createHash("sha256");
  let size = 0;
  const counter = new CsvRecordCounter();
  let corrupt: string | null = null;
  const gunzip = gzipCsv ? createGunzip({ chunkSize: 256 * 1024 }) : null;
  let ended: Promise<void> = Promise.resolve();
  if (gunzip) {
    gunzip.on("data", (chunk: Uint8Array) => counter.push(chunk));
    ended = new Promise((resolve) => {
      gunzip.on("end", () => resolve());
      gunzip.on("error", (error: Error) => {
        corrupt ??= `gzip: ${error.message}`;
        resolve();
      });
    });
  }
  try {
    for await (const chunk of readable) {
      hash.update(chunk);
      size += chunk.length;
      if (gunzip && corrupt === null && !gunzip.write(chunk)) {
        await Promise.race([new Promise((r) => gunzip.once("drain", r)), ended]);
      }
    }
  } catch (error) {
    gunzip?.destroy();
    throw error;
  }
  let records: number | null = null;
  if (gunzip) {
    if (corrupt === null) gunzip.end();
    await ended;
    if (corrupt === null) {
      const counted = counter.finish();
      if (counted.unclosedQuote) corrupt = "CSV: unclosed quote at the end";
      else if (counted.records === 0) corrupt = "CSV: no header row";
      else records = counted.records;
    }
  }
  return { size, sha256: hash.digest("hex"), records, corrupt };
}
