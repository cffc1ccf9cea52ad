/**
 * Exactly-once files on object storage. The local layout becomes a spool:
 * every file is sealed and fsynced there as before; then, before the
 * registry transaction that registers it, this uploader
 *
 * 1. records an upload intent per key in the registry (committed first),
 * 2. puts the sealed file (and its folder's schema.yml) under the same
 *    relative key, checking MD5/ETag, multipart ids recorded in the intent,
 * 3. lets the registry transaction register the file and drop the intents;
 *    only after that is the slot acknowledged (the pipeline's own rule).
 *
 * A key that is registered is never uploaded again. A crash between 1 and 3
 * leaves an intent: start-up recovery ({@linkcode recoverUploads}) deletes
 * its object and aborts its multipart upload, without listing the bucket.
 *
 * Once registered and published in the spool, a file's local copy is
 * removed (at the next registration or tick), so the spool holds only open
 * batches and files on their way up.
 *
 * Where the bytes are: at registration each `file_log` row's file is sealed
 * at `<spool>/<dir>/.tmp-<name>`, and the folder's schema.yml under its
 * final name (the contract of TableBatch, the export hand-over, held files
 * and DDL folders).
 *
 * @module
 */

import { createHash } from "node:crypto";
import { dirname, join } from "node:path";
import type { Logger } from "../log.ts";
import type { StorageMetrics } from "../observe/storage_metrics.ts";
import type { FileRecord, Registry } from "../registry/registry.ts";
import { TEMP_PREFIX } from "../write/atomic_file.ts";
import { eachLimited } from "../write/each_limited.ts";
import type { ObjectStore } from "./object_store.ts";

/** Names a folder's registered files can have (see table_batch, table_export, ddl_folder). */
export const DATA_FILE_NAMES = ["streaming.csv.gz", "full_reload.csv.gz", "ddl.sql"] as const;

/** Side file of every folder. */
const SCHEMA_FILE = "schema.yml";

/**
 * Uploads in flight at once: many small files (a flush of thousands of
 * tables is mostly small files and their schema.yml, where latency is what
 * counts), few large ones (each holds up to a part or three in memory).
 */
const SMALL_CONCURRENCY = 16;
const LARGE_CONCURRENCY = 2;
const SMALL_BYTES = 1024 * 1024;

interface Upload {
  key: string;
  local: string;
  sha256: string;
  size: number;
}

/** Puts sealed spool files into the store before they are registered. */
export class SpoolUploader {
  readonly #store: ObjectStore;
  readonly #registry: Registry;
  readonly #spool: string;
  readonly #logger: Logger;
  readonly #metrics: StorageMetrics | undefined;
  /** Registered keys whose spool copy is still to be removed, with their size. */
  #evict = new Map<string, number>();
  /** Folders whose schema.yml went up with this process, with its size, until removed. */
  #schemas = new Map<string, number>();
  #spoolBytes = 0;
  /** The eviction under way (beforeRegister and a caller may both start one). */
  #evicting: Promise<void> | null = null;
  /** Exports that went up in parts while they were written: not put again. */
  #exports: { uploaded(key: string): boolean; registered(keys: string[]): void } | null = null;

  constructor(
    store: ObjectStore,
    registry: Registry,
    spoolDir: string,
    logger: Logger,
    metrics?: StorageMetrics,
  ) {
    this.#store = store;
    this.#registry = registry;
    this.#spool = spoolDir;
    this.#logger = logger;
    this.#metrics = metrics;
  }

  /**
   * Files `exports` says it uploaded itself are not put again at their
   * registration (only their folder's schema.yml is).
   */
  skipUploadedBy(exports: { uploaded(key: string): boolean; registered(keys: string[]): void }) {
    this.#exports = exports;
  }

  /** The hook for {@linkcode Registry.setBeforeRegister}. */
  readonly beforeRegister = async (files: FileRecord[]): Promise<void> => {
    await this.evict();
    const uploads = await this.#plan(files);
    if (uploads.length > 0) {
      await this.#registry.addUploadIntents(uploads.map((u) => u.key));
      const upload = async (u: Upload) => {
        const started = performance.now();
        await this.#store.putFile(u.key, u.local, {
          sha256: u.sha256,
          onMultipart: (id) => this.#registry.setUploadId(u.key, id),
        });
        this.#metrics?.uploadSeconds.observe((performance.now() - started) / 1000);
        this.#metrics?.uploadedBytes.inc(u.size);
      };
      await Promise.all([
        eachLimited(uploads.filter((u) => u.size < SMALL_BYTES), SMALL_CONCURRENCY, upload),
        eachLimited(uploads.filter((u) => u.size >= SMALL_BYTES), LARGE_CONCURRENCY, upload),
      ]);
      this.#metrics?.storageUp.set(1);
    }
    for (const u of uploads) {
      if (u.key.endsWith(`/${SCHEMA_FILE}`)) {
        const dir = dirname(u.key);
        this.#spoolBytes += u.size - (this.#schemas.get(dir) ?? 0);
        this.#schemas.set(dir, u.size);
      }
    }
    for (const f of files) {
      // An export uploaded in parts has nothing in the spool but its folder's schema.yml.
      const size = this.#exports?.uploaded(f.path) ? 0 : f.byteSize;
      this.#spoolBytes += size - (this.#evict.get(f.path) ?? 0);
      this.#evict.set(f.path, size);
    }
    this.#exports?.registered(files.map((f) => f.path));
  };

  /** Bytes of uploaded files (and their schema.yml) whose spool copy is not removed yet. */
  get pendingBytes(): number {
    return this.#spoolBytes;
  }

  /** What to upload for `files`: each data file, and each new folder's schema.yml. */
  async #plan(files: FileRecord[]): Promise<Upload[]> {
    const already = await this.#registry.registeredAmong(files.map((f) => f.path));
    for (const p of already) {
      this.#logger.warn("file already registered; not uploaded again", { path: p });
    }
    const todo = files.filter((f) => !already.has(f.path));
    const dirs = [...new Set(todo.map((f) => dirname(f.path)))];
    const registeredDirs = await this.#registry.registeredDirs(dirs, DATA_FILE_NAMES);
    const out: Upload[] = [];
    for (const f of todo) {
      if (this.#exports?.uploaded(f.path)) continue;
      const name = f.path.slice(f.path.lastIndexOf("/") + 1);
      const local = f.localPath ?? join(this.#spool, dirname(f.path), TEMP_PREFIX + name);
      out.push({ key: f.path, local, sha256: f.sha256, size: f.byteSize });
    }
    for (const dir of dirs) {
      // A folder's schema.yml goes up with its first registered file, once.
      if (registeredDirs.has(dir)) continue;
      const local = join(this.#spool, dir, SCHEMA_FILE);
      let bytes: Uint8Array;
      try {
        bytes = await Deno.readFile(local);
      } catch (error) {
        if (error instanceof Deno.errors.NotFound) continue;
        throw error;
      }
      const sha256 = createHash("sha256").update(bytes).digest("hex");
      out.push({ key: `${dir}/${SCHEMA_FILE}`, local, sha256, size: bytes.length });
    }
    return out;
  }

  /**
   * Removes the spool copies of registered files that were published
   * (renamed to their final name after the registry commit), with their
   * schema.yml and folder. A file still under its temp name waits.
   */
  async evict(): Promise<void> {
    while (this.#evicting) await this.#evicting;
    this.#evicting = this.#evictNow();
    try {
      await this.#evicting;
    } finally {
      this.#evicting = null;
    }
  }

  async #evictNow(): Promise<void> {
    for (const [path, bytes] of [...this.#evict]) {
      const local = join(this.#spool, path);
      try {
        await Deno.remove(local);
      } catch (error) {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
        // Not published yet: still under its temp name.
        const temp = join(dirname(local), TEMP_PREFIX + path.slice(path.lastIndexOf("/") + 1));
        if (await exists(temp)) continue;
      }
      this.#evict.delete(path);
      this.#spoolBytes -= bytes;
      const dir = dirname(path);
      await Deno.remove(join(this.#spool, dir, SCHEMA_FILE)).catch(() => {});
      const schema = this.#schemas.get(dir);
      if (schema !== undefined) {
        this.#schemas.delete(dir);
        this.#spoolBytes -= schema;
      }
      // Empty now unless another file of the folder is still on its way.
      await Deno.remove(join(this.#spool, dir)).catch(() => {});
    }
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}
