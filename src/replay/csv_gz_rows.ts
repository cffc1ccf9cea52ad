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
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const parser = new CsvChunkParser();
  return gzBatches(path, {
    push: (bytes) => parser.push(decoder.decode(bytes, { stream: true })),
    end: () => [...parser.push(decoder.decode()), ...parser.end()],
  }, batchRows);
}

/**
 * Yields the rows of a gzip CSV file of changes (without its header) in
 * batches, as {@linkcode ChangeLine}s: the metadata decoded, the table's
 * values left as CSV bytes.
 */
export function csvGzChangeLines(
  path: string,
  meta: number,
  batchRows = 10_000,
): AsyncGenerator<ChangeLine[]> {
  return gzBatches(path, new ChangeLineParser(meta), batchRows);
}

/** What both readers parse the bytes with: pieces in, complete rows out. */
interface ChunkParser<T> {
  push(bytes: Uint8Array): T[];
  end(): T[];
}

async function* gzBatches<T>(
  path: string,
  parser: ChunkParser<T>,
  batchRows: number,
): AsyncGenerator<T[]> {
  let batch: T[] = [];
  const source = createReadStream(path, { highWaterMark: 1 << 20 }).pipe(
    createGunzip({ chunkSize: 1 << 16 }),
  );
  for await (const chunk of source as AsyncIterable<Uint8Array>) {
    // A plain view: node's Buffer has its own (slower) indexOf and subarray.
    const bytes = new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    for (const r of parser.push(bytes)) batch.push(r);
    if (batch.length >= batchRows) {
      yield batch;
      batch = [];
    }
  }
  for (const r of parser.end()) batch.push(r);
  if (batch.length > 0) yield batch;
}
