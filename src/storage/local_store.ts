/**
 * The local-directory implementation of {@linkcode ObjectStore}: today's
 * data dir. Keys are paths relative to the directory.
 *
 * @module
 */

import { dirname, join, resolve } from "node:path";
import { createHash } from "node:crypto";
import { ensureDir, FILE_MODE, syncDir, tempPathFor } from "../write/atomic_file.ts";
import type { ObjectInfo, ObjectStore, PutOptions } from "./object_store.ts";

/** Files under a local directory. */
export class LocalStore implements ObjectStore {
  readonly kind = "local" as const;
  readonly url: string;
  readonly #root: string;

  constructor(root: string) {
    this.#root = resolve(root);
    this.url = this.#root;
  }

  #path(rel: string): string {
    if (rel.split("/").some((s) => s === ".." || s === "")) {
      throw new RangeError(`Cannot use key "${rel}": it leaves the data dir`);
    }
    return join(this.#root, rel);
  }

  /** Copies the file under a temp name, fsyncs, renames: complete or absent. */
  async putFile(rel: string, localPath: string, _options: PutOptions): Promise<void> {
    const target = this.#path(rel);
    await ensureDir(dirname(target));
    const temp = tempPathFor(target);
    try {
      await Deno.copyFile(localPath, temp);
      await Deno.chmod(temp, FILE_MODE);
      const f = await Deno.open(temp, { read: true, write: true });
      try {
        await f.sync();
      } finally {
        f.close();
      }
      await Deno.rename(temp, target);
      await syncDir(dirname(target));
    } finally {
      await Deno.remove(temp).catch(() => {});
    }
  }

  async get(rel: string): Promise<ReadableStream<Uint8Array>> {
    const f = await Deno.open(this.#path(rel), { read: true });
    return f.readable;
  }

  /** Size and sha256 (computed: a local file has no stored checksum). */
  async head(rel: string): Promise<ObjectInfo | null> {
    let size: number;
    try {
      const info = await Deno.stat(this.#path(rel));
      if (!info.isFile) return null;
      size = info.size;
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return null;
      throw error;
    }
    const hash = createHash("sha256");
    for await (const chunk of await this.get(rel)) hash.update(chunk);
    return { size, sha256: hash.digest("hex") };
  }

  async delete(rel: string): Promise<void> {
    await Deno.remove(this.#path(rel)).catch((error) => {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    });
  }

  /** Local files have no multipart uploads. */
  abortMultipart(_rel: string, _uploadId: string): Promise<void> {
    return Promise.resolve();
  }

  async check(_write: boolean): Promise<void> {
    await Deno.stat(this.#root);
  }

  /** Local calls are not retried. */
  giveUpAfter(_ms: number): void {}

  close(): void {}
}
