/**
 * Makes many new files durable at once: every file is fsynced, then every
 * directory once, a few at a time. Closing thousands of batches together
 * then costs one fsync per file and per directory instead of a chain of them
 * per batch, and the fsyncs overlap in the kernel.
 *
 * @module
 */

import { syncDir, syncFile } from "./atomic_file.ts";
import { eachLimited } from "./each_limited.ts";

/** How many fsyncs run at once. */
const SYNC_CONCURRENCY = 32;

/**
 * Fsyncs `files`, then each distinct directory in `dirs`. Files first: a
 * directory entry must not become durable before the data it names.
 */
export async function syncGroup(files: Iterable<string>, dirs: Iterable<string>): Promise<void> {
  await eachLimited([...new Set(files)], SYNC_CONCURRENCY, syncFile);
  await eachLimited([...new Set(dirs)], SYNC_CONCURRENCY, syncDir);
}
