/**
 * How much the open batches may hold: file descriptors (a pool of open
 * batch files, fitted to the open-file limit) and memory (that pool's
 * deflate contexts plus the CSV buffers), whatever the number of tables.
 *
 * @module
 */

import { fitOpenFiles, probeOpenFiles, reservedDescriptors } from "../write/open_file_limit.ts";
import { WRITER_MEMORY_BYTES } from "../write/writer_pool.ts";

/** The least memory left for CSV buffers, however small the budget. */
const MIN_BUFFER_BYTES = 4 * 1024 * 1024;

/** The settings that size the batches' resources. */
export interface BatchResourceSettings {
  maxOpenFiles: number;
  memoryBudget: number;
  exportWorkers: number;
}

/** What the stream's batches may use. */
export interface BatchResources {
  /** Batch files open at once. */
  maxOpenFiles: number;
  /** Bytes of CSV the open batches may buffer together. */
  bufferBytes: number;
  /** Free descriptors the probe found, when it found fewer than it wanted. */
  available: number | null;
  /** Why the pool is smaller than `--max-open-files`, if it is. */
  lowered: "ulimit" | "memory" | null;
}

/**
 * Splits `memoryBudget` between open batch files (at most half of it) and
 * CSV buffers, and fits the files to the descriptors `available` (null:
 * enough for all).
 */
export function planBatchResources(
  settings: BatchResourceSettings,
  available: number | null,
): BatchResources {
  const fitted = fitOpenFiles(settings.maxOpenFiles, settings.exportWorkers, available);
  const byMemory = Math.max(4, Math.floor(settings.memoryBudget / 2 / WRITER_MEMORY_BYTES));
  const pool = Math.min(fitted.pool, byMemory);
  const lowered = fitted.lowered && fitted.pool <= byMemory
    ? "ulimit"
    : pool < settings.maxOpenFiles
    ? "memory"
    : null;
  return {
    maxOpenFiles: pool,
    bufferBytes: Math.max(MIN_BUFFER_BYTES, settings.memoryBudget - pool * WRITER_MEMORY_BYTES),
    available: fitted.available,
    lowered,
  };
}

/** {@linkcode planBatchResources} after probing the free descriptors in `dataDir`. */
export async function probeBatchResources(
  settings: BatchResourceSettings,
  dataDir: string,
): Promise<BatchResources> {
  const want = settings.maxOpenFiles + reservedDescriptors(settings.exportWorkers);
  const got = await probeOpenFiles(dataDir, want);
  return planBatchResources(settings, got < want ? got : null);
}
