/**
 * Durability for many files at once: every file is fsynced, then every
 * directory whose entries changed is fsynced once, instead of one directory
 * fsync per file. Registering thousands of small exports in one registry
 * transaction depends on it: one fsync per directory per batch, issued a few
 * at a time in parallel (the disk takes parallel fsyncs far faster than
 * serial ones).
 *
 * Nothing is durable until {@linkcode DurableBatch.flush} returns: the
 * caller flushes before the registry commit that makes the files count.
 *
 * @module
 */

import { dirname, isAbsolute, join, relative, sep } from "node:path";
import { DIR_MODE, syncDir, writeFileAtomic } from "./atomic_file.ts";
import { eachLimited } from "./each_limited.ts";

/** How many fsyncs are in flight at once. */
const SYNC_CONCURRENCY = 32;

/** Directory fsyncs owed by a batch of file operations. */
export class DurableBatch {
  #dirs = new Set<string>();

  /** How many directories wait for their fsync. */
  get pending(): number {
    return this.#dirs.size;
  }

  /** Notes that entries of `dir` changed. */
  syncLater(dir: string): void {
    this.#dirs.add(dir);
  }

  /**
   * Creates `dir` (mode 0700) and the missing folders between it and
   * `root`, which must exist; the folders that got new entries are synced
   * at {@linkcode flush}.
   */
  async mkdir(dir: string, root: string): Promise<void> {
    const rel = relative(root, dir);
    if (rel === "" || rel.startsWith("..") || isAbsolute(rel)) {
      throw new RangeError(`Cannot create "${dir}": it is not inside "${root}"`);
    }
    // Top down: a folder that exists costs one failed call, a new one none.
    let path = root;
    for (const part of rel.split(sep)) {
      const parent = path;
      path = join(path, part);
      try {
        await Deno.mkdir(path, { mode: DIR_MODE });
      } catch (error) {
        if (error instanceof Deno.errors.AlreadyExists) continue;
        throw error;
      }
      this.syncLater(parent);
    }
  }

  /**
   * Writes a small file under its final name the atomic way (temp file,
   * fsync, rename); its directory is synced at {@linkcode flush}.
   */
  async writeFile(path: string, bytes: Uint8Array): Promise<void> {
    await writeFileAtomic(path, bytes, { syncDir: false });
    this.syncLater(dirname(path));
  }

  /** Renames `from` to `to`; the new entry's directory is synced at {@linkcode flush}. */
  async rename(from: string, to: string): Promise<void> {
    await Deno.rename(from, to);
    this.syncLater(dirname(to));
  }

  /** Fsyncs every noted directory once; then the batch is empty. */
  async flush(): Promise<void> {
    const dirs = [...this.#dirs];
    this.#dirs.clear();
    await eachLimited(dirs, SYNC_CONCURRENCY, (dir) => syncDir(dir));
  }
}
