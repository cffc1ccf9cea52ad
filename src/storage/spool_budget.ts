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

/** Decides when the stream's share of the spool is full. */
export class SpoolBudget {
  readonly maxBytes: number;
  readonly #uploads: PendingUploads;
  readonly #gauge: client.Gauge | undefined;

  /** `gauge`, when given, shows the bytes in use at each check. */
  constructor(maxBytes: number, uploads: PendingUploads, gauge?: client.Gauge) {
    this.maxBytes = maxBytes;
    this.#uploads = uploads;
    this.#gauge = gauge;
  }

  /** Removes the spool copies of uploaded files that can go. */
  async evict(): Promise<void> {
    await this.#uploads.evict();
    this.report();
  }

  #open = 0;

  /** Whether open batches holding `openBytes` and the pending uploads fill the spool. */
  full(openBytes: number): boolean {
    this.#open = openBytes;
    return this.report() >= this.maxBytes;
  }

  /** Shows the bytes in use (open batches as last checked, pending uploads); returns them. */
  report(): number {
    const used = this.#open + this.#uploads.pendingBytes;
    this.#gauge?.set(used);
    return used;
  }
}
