/**
 * When a table's batch buffer is written out as a file.
 *
 * @module
 */

/**
 * Why a buffer is flushed; recorded in logs and metrics. `spool`: the spool
 * of a bucket data dir reached `--spool-max-bytes` (never a policy decision).
 */
export type FlushReason = "rows" | "bytes" | "interval" | "shutdown" | "spool";

/** The state of one table's buffer. */
export interface FlushState {
  /** Rows buffered. */
  rows: number;
  /** Bytes buffered (uncompressed CSV). */
  bytes: number;
  /** Milliseconds since the buffer's first row arrived. */
  ageMs: number;
  /** Whether the process is stopping. */
  shuttingDown: boolean;
}

/** Flush thresholds; `Infinity` disables one. */
export interface FlushLimits {
  /** Flush once this many rows are buffered. */
  maxRows: number;
  /** Flush once this many bytes are buffered. */
  maxBytes: number;
  /** Flush once the oldest buffered row is this old. */
  intervalMs: number;
}

/**
 * Decides whether a buffer must be flushed now, and why; `null` means keep
 * buffering.
 *
 * An empty buffer (`rows === 0`) never flushes: files only exist for rows.
 * Otherwise the first reason that applies wins, in this order:
 * `shutdown` (the process is stopping, whatever the size), `rows`
 * (`rows >= maxRows`), `bytes` (`bytes >= maxBytes`), `interval`
 * (`ageMs >= intervalMs`). Size limits come before the interval because they
 * are what bounds memory; when several apply, the reported reason is only a
 * label, the action is the same.
 *
 * Throws a `RangeError` for a limit that is not a positive number.
 */
export function flushDecision(state: FlushState, limits: FlushLimits): FlushReason | null {
  for (const key of ["maxRows", "maxBytes", "intervalMs"] as const) {
    const value = limits[key];
    if (!(value > 0)) {
      throw new RangeError(`Cannot use flush limit ${key}=${value}: expected a positive number`);
    }
  }
  if (state.rows <= 0) return null;
  if (state.shuttingDown) return "shutdown";
  if (state.rows >= limits.maxRows) return "rows";
  if (state.bytes >= limits.maxBytes) return "bytes";
  if (state.ageMs >= limits.intervalMs) return "interval";
  return null;
}
