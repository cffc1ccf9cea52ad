/**
 * Memory for small finished exports waiting for the stream to reach their
 * boundary. Holding them in memory and writing them straight into their
 * batch folder saves a file, a rename and an fsync per table when thousands
 * of tables are exported; past the budget they take the staging-file path
 * every large export takes (exports can wait long for their boundary).
 *
 * One budget per export session: what a failed session held is not counted
 * against the next one.
 *
 * @module
 */

/** Default bytes of compressed exports held in memory at once. */
export const HELD_EXPORT_BYTES = 16 * 1024 * 1024;

/** Default largest compressed export held in memory. */
export const MAX_HELD_EXPORT = 256 * 1024;

/** Bytes of compressed exports held in memory, within a limit. */
export class HeldExportBudget {
  readonly #total: number;
  readonly #each: number;
  #held = 0;

  /** `total` bytes at once, none larger than `each`. */
  constructor(total: number = HELD_EXPORT_BYTES, each: number = MAX_HELD_EXPORT) {
    if (!(total >= 0 && each >= 0)) throw new RangeError("Cannot make a negative export budget");
    this.#total = total;
    this.#each = each;
  }

  /** Bytes held now. */
  get held(): number {
    return this.#held;
  }

  /** Takes `bytes` if an export that large fits; false (nothing taken) when not. */
  tryTake(bytes: number): boolean {
    if (bytes > this.#each || this.#held + bytes > this.#total) return false;
    this.#held += bytes;
    return true;
  }

  /** Gives back `bytes` taken with {@linkcode tryTake}. */
  release(bytes: number): void {
    this.#held = Math.max(0, this.#held - bytes);
  }
}
