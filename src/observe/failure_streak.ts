/**
 * Tells a stream that keeps failing the same way apart from one that hits a
 * passing fault. Each failed session is recorded with what failed (its
 * signature) and how far the registry got (the durable LSN); the streak
 * grows while the signature stays the same and the durable LSN does not
 * move, and ends with any progress.
 */

import { compareLsn, type Lsn } from "../lsn.ts";

/** Failures in a row, the same way and without progress, that make the stream "failing". */
export const FAILURES_BEFORE_ALARM = 5;

/** What is known about the current streak, for logs and /readyz. */
export interface FailingState {
  reason: string;
  fix: string;
  error: string;
  /** Failures in a row, the same way, without progress. */
  failures: number;
  /** When the first of them happened (ISO time). */
  since: string;
}

/** The current run of same-way failures of `stream`'s sessions. */
export class FailureStreak {
  #signature: string | null = null;
  #count = 0;
  #durable: Lsn | null = null;
  #since = 0;

  /**
   * Records a failed session: `signature` says how it failed, `durable` how
   * far the registry had got (undefined when the session never streamed).
   * Returns the length of the streak this failure belongs to.
   */
  fail(signature: string, durable: Lsn | undefined, now = Date.now()): number {
    const progressed = durable !== undefined && this.progressed(durable);
    if (signature !== this.#signature || progressed || this.#count === 0) {
      this.#signature = signature;
      this.#count = 0;
      this.#since = now;
    }
    this.#count++;
    if (
      durable !== undefined && (this.#durable === null || compareLsn(durable, this.#durable) > 0)
    ) {
      this.#durable = durable;
    }
    return this.#count;
  }

  /** Whether `durable` is past every position a failed session had reached. */
  progressed(durable: Lsn): boolean {
    return this.#durable === null || compareLsn(durable, this.#durable) > 0;
  }

  /** Failures in the current streak. */
  get count(): number {
    return this.#count;
  }

  /** When the current streak began (epoch ms). */
  get since(): number {
    return this.#since;
  }

  /** Ends the streak (the stream made progress). */
  reset(): void {
    this.#signature = null;
    this.#count = 0;
  }
}
