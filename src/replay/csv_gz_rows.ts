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
export async function* csvGzRows(
  path: string,
  batchRows = 10_000,
): AsyncGenerator<CsvField[][]> {
  const parser = new CsvChunkParser();
  const decoder = new TextDecoder("utf-8", { fatal: true });
  let batch: CsvField[][] = [];
  const source = createReadStream(path, { highWaterMark: 1 << 20 }).pipe(
    createGunzip({ chunkSize: 1 << 16 }),
  );
  for await (const chunk of source as AsyncIterable<Uint8Array>) {
    const rows = parser.push(decoder.decode(chunk, { stream: true }));
    for (const r of rows) batch.push(r);
    if (batch.length >= batchRows) {
      yield batch;
      batch = [];
    }
  }
  for (const r of parser.push(decoder.decode())) batch.push(r);
  for (const r of parser.end()) batch.push(r);
  if (batch.length > 0) yield batch;
}

/**
 * Yields the rows of a gzip CSV file of changes (header first) in batches,
 * as {@linkcode ChangeLine}s: `meta` metadata columns decoded, the table's
 * values left as CSV text.
 */
export async function* csvGzChangeLines(
  path: string,
  meta: number,
  batchRows = 10_000,
): AsyncGenerator<ChangeLine[]> {
  const parser = new ChangeLineParser(meta);
  const decoder = new TextDecoder("utf-8", { fatal: true });
  let batch: ChangeLine[] = [];
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
