/**
 * A bounded set of open {@linkcode GzipFileWriter}s. Thousands of tables can
 * each have a batch file; only `capacity` of them hold a file descriptor and
 * a deflate context at a time. Using one more suspends the least recently
 * used (its gzip member ends; its next write starts a new one).
 *
 * @module
 */

import { GzipFileWriter, type GzipFileWriterOptions } from "./gzip_file_writer.ts";

/** Memory one open writer holds, roughly: deflate state plus its buffers. */
export const WRITER_MEMORY_BYTES = 400 * 1024;

/** Keeps at most `capacity` writers open, least recently used out first. */
export class WriterPool {
  readonly capacity: number;
  /** Open writers in use order: the first is the least recently used. */
  #open = new Set<GzipFileWriter>();
  #suspensions = 0;

  /** A pool of at most `capacity` (>= 1) open writers. */
  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`Cannot size a writer pool to ${capacity}: expected an integer >= 1`);
    }
    this.capacity = capacity;
  }

  /** Writers holding a file descriptor now. */
  get openCount(): number {
    return this.#open.size;
  }

  /** How often a writer was suspended to make room (a sign the pool is small). */
  get suspensions(): number {
    return this.#suspensions;
  }

  /** Creates a writer (see {@linkcode GzipFileWriter.create}) inside the pool. */
  async create(finalPath: string, options?: GzipFileWriterOptions): Promise<GzipFileWriter> {
    await this.#makeRoom();
    const writer = await GzipFileWriter.create(finalPath, options);
    this.#open.add(writer);
    return writer;
  }

  /** Makes `writer` open and most recently used, suspending another if needed. */
  async use(writer: GzipFileWriter): Promise<void> {
    if (this.#open.delete(writer)) {
      this.#open.add(writer);
      return;
    }
    await this.#makeRoom();
    await writer.resume();
    this.#open.add(writer);
  }

  /** Forgets `writer` (sealed or aborted): its slot is free. */
  release(writer: GzipFileWriter): void {
    this.#open.delete(writer);
  }

  async #makeRoom(): Promise<void> {
    while (this.#open.size >= this.capacity) {
      const lru = this.#open.values().next().value!;
      this.#open.delete(lru);
      this.#suspensions++;
      await lru.suspend();
    }
  }
}
