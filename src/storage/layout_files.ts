/**
 * Read access to the layout's files by relative path, for readers that need
 * a local file (DuckDB's read_csv, gunzip streams): the data dir itself, or
 * objects of a bucket downloaded one at a time into a private scratch
 * folder of the spool dir and removed once read.
 *
 * @module
 */

import { dirname, join, resolve } from "node:path";
import { createHash } from "node:crypto";
import type { Config } from "../config.ts";
import { CdcError } from "../errors.ts";
import { DIR_MODE, ensureDir, FILE_MODE } from "../write/atomic_file.ts";
import type { ObjectStore } from "./object_store.ts";
import { openObjectStore } from "./open_store.ts";
import { isS3Url } from "./s3_location.ts";

/** Files of the layout, by path relative to the data dir. */
export interface LayoutFiles {
  /** Where the storage is (a directory or `s3://...`). */
  readonly url: string;
  /** A local path holding the file `rel` (downloaded first when remote). */
  path(rel: string): Promise<string>;
  /** Done with `rel`: a downloaded copy is removed. */
  release(rel: string): Promise<void>;
  /** Removes every downloaded copy and closes connections. */
  close(): Promise<void>;
}

/** The data dir as it is. */
export class LocalLayout implements LayoutFiles {
  readonly url: string;
  readonly #root: string;
  constructor(root: string) {
    this.#root = root;
    this.url = resolve(root);
  }
  path(rel: string): Promise<string> {
    return Promise.resolve(join(this.#root, rel));
  }
  release(_rel: string): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** Objects of a store, downloaded on demand into `scratch`. */
export class FetchedLayout implements LayoutFiles {
  readonly url: string;
  readonly store: ObjectStore;
  readonly #scratch: string;
  constructor(store: ObjectStore, scratch: string) {
    this.store = store;
    this.url = store.url;
    this.#scratch = scratch;
  }

  async path(rel: string): Promise<string> {
    const local = join(this.#scratch, rel);
    try {
      await Deno.stat(local);
      return local;
    } catch {
      // not downloaded yet
    }
    await ensureDir(dirname(local));
    // A download cut short is started again (the store retries each request).
    for (let attempt = 1;; attempt++) {
      const info = await this.store.head(rel);
      if (info === null) {
        throw new Deno.errors.NotFound(`Cannot read ${this.url}/${rel}: no such object`);
      }
      const file = await Deno.open(local, {
        write: true,
        create: true,
        truncate: true,
        mode: FILE_MODE,
      });
      const hash = createHash("sha256");
      let size = 0;
      try {
        for await (const chunk of await this.store.get(rel)) {
          hash.update(chunk);
          size += chunk.length;
          for (let off = 0; off < chunk.length;) off += await file.write(chunk.subarray(off));
        }
      } catch (error) {
        if (attempt >= 5) throw error;
        continue;
      } finally {
        file.close();
      }
      const sha = hash.digest("hex");
      if (size === info.size && (info.sha256 === null || info.sha256 === sha)) return local;
      if (attempt >= 5) {
        throw new CdcError(
          "storage",
          `Cannot read ${this.url}/${rel}: got ${size} bytes (sha256 ${
            sha.slice(0, 12)
          }...), the object has ${info.size}`,
        );
      }
    }
  }

  async release(rel: string): Promise<void> {
    await Deno.remove(join(this.#scratch, rel)).catch(() => {});
  }

  async close(): Promise<void> {
    this.store.close();
    await Deno.remove(this.#scratch, { recursive: true }).catch(() => {});
  }
}

/**
 * The layout of `config.dataDir`. For a bucket, checks that it can be read
 * (one clear line when not) and downloads into `<spool dir>/.fetch-<random>`.
 */
export async function openLayout(config: Config): Promise<LayoutFiles> {
  if (!isS3Url(config.dataDir)) return new LocalLayout(config.dataDir);
  const store = openObjectStore(config, { maxAttempts: 5 });
  try {
    await store.check(false);
    await ensureDir(resolve(config.spoolDir));
    const scratch = await Deno.makeTempDir({ dir: resolve(config.spoolDir), prefix: ".fetch-" });
    await Deno.chmod(scratch, DIR_MODE);
    return new FetchedLayout(store, scratch);
  } catch (error) {
    store.close();
    throw error;
  }
}

/** `files` as {@linkcode LayoutFiles} (a string is a local data dir). */
export function asLayout(files: string | LayoutFiles): LayoutFiles {
  return typeof files === "string" ? new LocalLayout(files) : files;
}
