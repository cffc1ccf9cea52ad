/**
 * A gzip file that stays in memory while it is small. Exporting thousands
 * of one-row tables through a streaming deflate context each costs a file
 * descriptor, several file system calls and a 300 KB allocation per table,
 * and the allocations of many short-lived contexts fragment the native heap
 * (tens of MB of RSS over 10,000 tables). A small file is instead
 * compressed in one call at {@linkcode BufferedGzipFile.seal} and written in
 * one call; a file that outgrows the buffer turns into a
 * {@linkcode GzipFileWriter} and streams from then on.
 *
 * @module
 */

import { gzipSync } from "node:zlib";
import { createHash } from "node:crypto";
import { dirname } from "node:path";
import { FILE_MODE, syncDir, syncFile } from "./atomic_file.ts";
import { GzipFileWriter, type SealedFile, type SyncOptions } from "./gzip_file_writer.ts";

/** Uncompressed bytes kept in memory before the file starts streaming. */
export const SMALL_FILE_BYTES = 1024 * 1024;

/** Options for {@linkcode BufferedGzipFile}. */
export interface BufferedGzipFileOptions {
  /** Temp file name (a `.tmp-` file next to the final path, as for {@linkcode GzipFileWriter}). */
  tempPath: string;
  /** Deflate level 0-9 (default 6). */
  level?: number;
  /** Bytes held in memory before streaming (default {@linkcode SMALL_FILE_BYTES}). */
  bufferBytes?: number;
  /**
   * Opens the streaming writer once the data outgrows the buffer (default: a
   * {@linkcode GzipFileWriter} at `tempPath`; an export into a bucket
   * uploads its parts as they fill instead).
   */
  open?: (finalPath: string, options: { tempPath: string; level: number }) => StreamingGzip;
}

/** What a file streams into once it outgrew the buffer. */
export interface StreamingGzip {
  write(chunk: Uint8Array): Promise<void>;
  seal(options?: SyncOptions): Promise<SealedFile>;
  abort(): Promise<void>;
}

/** A small gzip file compressed in memory: its bytes and what registering it needs. */
export interface SealedBytes {
  bytes: Uint8Array;
  byteSize: number;
  sha256: string;
  uncompressedBytes: number;
}

/**
 * Writes `bytes` as a new file (mode 0600, not fsynced) at `tempPath`,
 * replacing the leftover of an attempt that crashed. Synchronous: a small
 * file's write takes microseconds, less than an async op's thread hand-off.
 */
export function writeSealedBytes(tempPath: string, bytes: Uint8Array): void {
  const write = () => Deno.writeFileSync(tempPath, bytes, { createNew: true, mode: FILE_MODE });
  try {
    write();
  } catch (error) {
    if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
    Deno.removeSync(tempPath);
    write();
  }
}

/** A gzip temp file written whole at seal time when small, streamed when not. */
export class BufferedGzipFile {
  readonly #path: string;
  readonly #tempPath: string;
  readonly #level: number;
  readonly #limit: number;
  #buffer: Uint8Array;
  #length = 0;
  #writer: StreamingGzip | null = null;
  readonly #open: BufferedGzipFileOptions["open"];
  #written = false;
  #done = false;

  /** Holds nothing open until the data outgrows the buffer or is sealed. */
  constructor(finalPath: string, options: BufferedGzipFileOptions) {
    this.#path = finalPath;
    this.#tempPath = options.tempPath;
    this.#level = options.level ?? 6;
    this.#limit = options.bufferBytes ?? SMALL_FILE_BYTES;
    this.#open = options.open;
    this.#buffer = new Uint8Array(Math.min(this.#limit, 2048));
  }

  /** Whether the data outgrew the buffer (a file and a deflate context are open). */
  get streaming(): boolean {
    return this.#writer !== null;
  }

  /** Adds `chunk` (copied: the caller may reuse it once this returns). */
  async write(chunk: Uint8Array): Promise<void> {
    if (this.#done) throw new Error(`Cannot write to gzip file "${this.#path}": it is sealed`);
    if (this.#writer !== null) return await this.#writer.write(chunk);
    const need = this.#length + chunk.length;
    if (need <= this.#limit) {
      if (need > this.#buffer.length) {
        const grown = new Uint8Array(
          Math.min(this.#limit, Math.max(need, this.#buffer.length * 2)),
        );
        grown.set(this.#buffer.subarray(0, this.#length));
        this.#buffer = grown;
      }
      this.#buffer.set(chunk, this.#length);
      this.#length = need;
      return;
    }
    const options = { tempPath: this.#tempPath, level: this.#level };
    const writer = this.#open
      ? this.#open(this.#path, options)
      : await GzipFileWriter.create(this.#path, options);
    this.#writer = writer;
    const held = this.#buffer.subarray(0, this.#length);
    this.#buffer = new Uint8Array(0);
    this.#length = 0;
    await writer.write(held);
    await writer.write(chunk);
  }

  /**
   * Compresses a file that never outgrew the buffer and hands back its
   * bytes without writing them: the caller writes them where they belong
   * (see {@linkcode writeSealedBytes}). Throws once the file is streaming.
   */
  sealInMemory(): SealedBytes {
    if (this.#done) throw new Error(`Cannot seal gzip file "${this.#path}": it is sealed`);
    if (this.#writer !== null) {
      throw new Error(`Cannot seal gzip file "${this.#path}" in memory: it outgrew the buffer`);
    }
    this.#done = true;
    const input = this.#buffer.subarray(0, this.#length);
    const bytes = gzipSync(input, { level: this.#level });
    this.#buffer = new Uint8Array(0);
    return {
      bytes,
      byteSize: bytes.length,
      sha256: createHash("sha256").update(bytes).digest("hex"),
      uncompressedBytes: input.length,
    };
  }

  /**
   * Writes the complete file under its temp name; with `{ sync: false }`
   * nothing is fsynced (the caller makes it durable before registering it).
   */
  async seal(options: SyncOptions = {}): Promise<SealedFile> {
    if (this.#writer !== null && !this.#done) {
      this.#done = true;
      return await this.#writer.seal(options);
    }
    const { bytes, ...sealed } = this.sealInMemory();
    writeSealedBytes(this.#tempPath, bytes);
    this.#written = true;
    if (options.sync ?? true) {
      await syncFile(this.#tempPath);
      await syncDir(dirname(this.#tempPath));
    }
    return { path: this.#path, tempPath: this.#tempPath, ...sealed };
  }

  /** Discards the file (and removes its temp file if one was written). */
  async abort(): Promise<void> {
    this.#done = true;
    this.#buffer = new Uint8Array(0);
    if (this.#writer !== null) return await this.#writer.abort();
    if (!this.#written) return;
    await Deno.remove(this.#tempPath).catch((error) => {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    });
  }
}
