/**
 * Streams the rows of a gzip CSV file (PostgreSQL's COPY dialect) in
 * batches, with memory bounded by the batch size and the longest value.
 */

import { createReadStream } from "node:fs";
import { createGunzip } from "node:zlib";
import { type ChangeLine, ChangeLineParser, CsvChunkParser, type CsvField } from "./csv_reader.ts";

/**
 * Yields the rows of `path` (header first) in batches of about `batchRows`.
 * Concatenated gzip members read as one file.
 */
export function csvGzRows(path: string, batchRows = 10_000): AsyncGenerator<CsvField[][]> {
  return gzBatches(path, new CsvChunkParser(), batchRows);
}

/**
 * Yields the rows of a gzip CSV file of changes (header first) in batches,
 * as {@linkcode ChangeLine}s: `meta` metadata columns decoded, the table's
 * values left as CSV text.
 */
export function csvGzChangeLines(
  path: string,
  meta: number,
  batchRows = 10_000,
): AsyncGenerator<ChangeLine[]> {
  return gzBatches(path, new ChangeLineParser(meta), batchRows);
}

/** What both readers parse text with: pieces in, complete rows out. */
interface ChunkParser<T> {
  push(text: string): T[];
  end(): T[];
}

async function* gzBatches<T>(
  path: string,
  parser: ChunkParser<T>,
  batchRows: number,
): AsyncGenerator<T[]> {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  let batch: T[] = [];
  const source = createReadStream(path, { highWaterMark: 1 << 20 }).pipe(
    createGunzip({ chunkSize: 1 << 16 }),
  );
  for await (const chunk of source as AsyncIterable<Uint8Array>) {
    for (const r of parser.push(decoder.decode(chunk, { stream: true }))) batch.push(r);
    if (batch.length >= batchRows) {
      yield batch;
      batch = [];
    }
  }
  for (const r of parser.push(decoder.decode())) batch.push(r);
  for (const r of parser.end()) batch.push(r);
  if (batch.length > 0) yield batch;
}
