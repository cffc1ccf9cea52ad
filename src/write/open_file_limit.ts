/**
 * Fits the pool of open batch files to the process's open-file limit.
 *
 * Deno raises the soft `RLIMIT_NOFILE` to the hard limit when it starts (as
 * Go's runtime does), so the limit in force is already as high as the
 * process may go. Deno's permissions allow reading it from /proc only with
 * `--allow-all`, so instead the stream probes it: it opens as many
 * descriptors as it means to use (batch files plus a reserve for everything
 * else) on one file in the data dir, and fits the pool to what it got.
 *
 * @module
 */

import { join } from "node:path";
import { CdcError } from "../errors.ts";
import { FILE_MODE, tempPathFor } from "./atomic_file.ts";

/** What {@linkcode fitOpenFiles} decided. */
export interface OpenFilePlan {
  /** Batch files that may be open at once. */
  pool: number;
  /** Descriptors the probe could open, when fewer than it tried. */
  available: number | null;
  /** Set when the pool is smaller than asked for. */
  lowered: boolean;
}

/**
 * Descriptors kept for everything but batch files: the runtime, the source,
 * registry and replication connections, the metrics server and its clients,
 * the transaction spool, a flush's short-lived files and fsyncs, and each
 * export worker's connection and files.
 */
export function reservedDescriptors(exportWorkers: number): number {
  return 96 + 4 * exportWorkers;
}

/** Whether `error` is "Too many open files" (EMFILE, or ENFILE system-wide). */
export function isTooManyOpenFiles(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code;
  return code === "EMFILE" || code === "ENFILE";
}

/**
 * Opens up to `want` more descriptors (on a probe file in `dir`, removed
 * afterwards) and returns how many it got before the limit, closing them
 * all again. `want` when the limit leaves room for all of them.
 */
export async function probeOpenFiles(dir: string, want: number): Promise<number> {
  const probe = tempPathFor(join(dir, "fd-probe"));
  const first = await Deno.open(probe, { write: true, createNew: true, mode: FILE_MODE });
  const opened: Deno.FsFile[] = [first];
  try {
    while (opened.length < want) {
      try {
        opened.push(await Deno.open(probe, { read: true }));
      } catch (error) {
        if (isTooManyOpenFiles(error)) break;
        throw error;
      }
    }
    return opened.length;
  } finally {
    for (const f of opened) f.close();
    await Deno.remove(probe).catch(() => {});
  }
}

/**
 * The pool size for `requested` open batch files when only `available`
 * more descriptors could be opened (null: all that were asked for): as
 * asked when it fits, else what fits. Throws when too little fits to stream.
 */
export function fitOpenFiles(
  requested: number,
  exportWorkers: number,
  available: number | null,
): OpenFilePlan {
  const reserve = reservedDescriptors(exportWorkers);
  if (available === null || available >= requested + reserve) {
    return { pool: requested, available: null, lowered: false };
  }
  const room = available - reserve;
  if (room < 8) {
    throw new CdcError(
      "config",
      `Cannot stream with only ${available} free file descriptors: it needs at least ${
        reserve + 8
      } (raise LimitNOFILE= or ulimit -n, or lower --export-workers)`,
    );
  }
  return { pool: room, available, lowered: true };
}
