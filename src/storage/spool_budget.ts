/**
 * The size bound of the spool (`--spool-max-bytes`) when the data dir is a
 * bucket. What the stream itself puts there counts: the CSV of its open
 * batches (on disk or still in memory, uncompressed, so an upper bound of
 * what they will take) and the files uploaded and registered whose local
 * copy is not removed yet. When they reach the bound the stream closes its
 * open batches: the flush uploads them, and until the upload succeeds the
 * stream reads no more WAL. So an S3 outage makes `stream` hold with at most
 * this much in the spool; nothing is dropped.
 *
 * @module
 */

import type client from "prom-client";

/** The uploaded files still in the spool (the `SpoolUploader`). */
export interface PendingUploads {
  readonly pendingBytes: number;
  evict(): Promise<void>;
}

/** The parts of exports in the spool (the `ExportUploads`). */
export interface ExportParts {
  readonly localBytes: number;
}

/** Decides when the stream's share of the spool is full. */
export class SpoolBudget {
  readonly maxBytes: number;
  readonly #uploads: PendingUploads;
  readonly #gauge: client.Gauge | undefined;
  readonly #exports: ExportParts | undefined;

  /**
   * `gauge`, when given, shows the bytes in use at each check; `exports`
   * are the parts of exports being uploaded as they are written.
   */
  constructor(
    maxBytes: number,
    uploads: PendingUploads,
    gauge?: client.Gauge,
    exports?: ExportParts,
  ) {
    this.maxBytes = maxBytes;
    this.#uploads = uploads;
    this.#gauge = gauge;
    this.#exports = exports;
  }

  /** Removes the spool copies of uploaded files that can go. */
  async evict(): Promise<void> {
    await this.#uploads.evict();
    this.report();
  }

  #open = 0;

  /**
   * Whether open batches holding `openBytes`, the pending uploads and the
   * exports' parts fill the spool. The exports' parts go up on their own
   * (each export keeps at most a few), so the stream's own share never falls
   * below a quarter of the bound: closing tiny batches row after row would
   * not make them go faster.
   */
  full(openBytes: number): boolean {
    this.#open = openBytes;
    const used = this.report();
    if (used < this.maxBytes) return false;
    const exports = this.#exports?.localBytes ?? 0;
    return used - exports >= Math.max(this.maxBytes - exports, this.maxBytes / 4);
  }

  /**
   * Shows the bytes in use (open batches as last checked, pending uploads,
   * export parts, and what is held: see {@linkcode countHeld}); returns
   * them without what is held.
   */
  report(): number {
    const used = this.#open + this.#uploads.pendingBytes + (this.#exports?.localBytes ?? 0);
    this.#gauge?.set(used + this.#heldBytes());
    return used;
  }

  #held: (() => number) | null = null;
  #heldAt = 0;
  #heldValue = 0;

  /**
   * Also shows `held()` in the gauge: bytes the stream cannot give back
   * before it reads further WAL (changes held for an export until the
   * stream reaches its boundary, transactions still in progress). They are
   * not bounded: holding WAL for them would hold them forever.
   */
  countHeld(held: () => number): void {
    this.#held = held;
  }

  /** The held bytes, looked at most once a second (the check runs per row). */
  #heldBytes(): number {
    if (this.#held === null) return 0;
    const now = Date.now();
    if (now - this.#heldAt >= 1000) {
      this.#heldAt = now;
      this.#heldValue = this.#held();
    }
    return this.#heldValue;
  }
}
