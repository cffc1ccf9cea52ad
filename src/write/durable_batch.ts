/**
 * Durability for many files at once: every file is fsynced, then every
 * directory whose entries changed is fsynced once, instead of one directory
 * fsync per file, all at {@linkcode DurableBatch.flush}. Registering
 * thousands of small exports in one registry transaction depends on it: one
 * fsync per file and per directory, issued a few dozen at a time (the disk
 * takes parallel fsyncs far faster than serial ones).
 *
 * Nothing is durable until {@linkcode DurableBatch.flush} returns: the
 * caller flushes before the registry commit that makes the files count.
 *
 * The folder, write and rename calls are synchronous. Each takes tens of
 * microseconds on a local disk, while an async file system op costs several
 * times that in CPU (a hand-off to a blocking thread and back); thousands of
 * exports or batches placed in one go each make several of them. Only the
 * fsyncs, which wait for the disk, are async and overlap.
 *
 * @module
 */

import { dirname, isAbsolute, join, relative, sep } from "node:path";
import { DIR_MODE, FILE_MODE, tempPathFor } from "./atomic_file.ts";
import { syncGroup } from "./group_sync.ts";

/** File and directory fsyncs owed by a batch of file operations. */
export class DurableBatch {
  #files = new Set<string>();
  #dirs = new Set<string>();

  /** How many files and directories wait for their fsync. */
  get pending(): number {
    return this.#files.size + this.#dirs.size;
  }

  /** Notes that the data of the file at `path` must be fsynced. */
  syncFileLater(path: string): void {
    this.#files.add(path);
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
  mkdir(dir: string, root: string): void {
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
        Deno.mkdirSync(path, { mode: DIR_MODE });
      } catch (error) {
        if (error instanceof Deno.errors.AlreadyExists) continue;
        throw error;
      }
      this.syncLater(parent);
    }
  }

  /**
   * Writes a small file under its final name the atomic way (temp file,
   * rename): readers never see a partial file. The file and its directory
   * are synced at {@linkcode flush}.
   */
  writeFile(path: string, bytes: Uint8Array): void {
    const temp = tempPathFor(path);
    Deno.writeFileSync(temp, bytes, { createNew: true, mode: FILE_MODE });
    try {
      Deno.renameSync(temp, path);
    } catch (error) {
      try {
        Deno.removeSync(temp);
      } catch { /* the rename's error is the one to report */ }
      throw error;
    }
    this.syncFileLater(path);
    this.syncLater(dirname(path));
  }

  /** Renames `from` to `to`; the new entry's directory is synced at {@linkcode flush}. */
  rename(from: string, to: string): void {
    Deno.renameSync(from, to);
    // A file awaiting its fsync is synced under its new name.
    if (this.#files.delete(from)) this.#files.add(to);
    this.syncLater(dirname(to));
  }

  /**
   * Fsyncs every noted file, then every noted directory once (a directory
   * entry must not become durable before the data it names); then the
   * batch is empty.
   */
  async flush(): Promise<void> {
    const files = [...this.#files];
    const dirs = [...this.#dirs];
    this.#files.clear();
    this.#dirs.clear();
    await syncGroup(files, dirs);
  }
}
