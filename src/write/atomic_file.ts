/**
 * Crash-safe file primitives: atomic small-file writes, private directories,
 * directory fsync and cleanup of temp files left by a crash.
 *
 * The output contract says a file is visible under its final name only once
 * it is complete and fsynced. Every writer therefore writes to a temp file in
 * the same directory (so `rename` stays within one filesystem and is atomic),
 * fsyncs it, renames it, and fsyncs the directory so that the rename itself
 * survives a power loss. Temp files are named `.tmp-*`; no final name can
 * start with `.` (see `table_dir.ts`), so cleanup can never delete data.
 *
 * @module
 */

import { basename, dirname, join } from "node:path";

/** Prefix of every temp file; {@linkcode removeTempFiles} deletes these. */
export const TEMP_PREFIX = ".tmp-";

/** Mode of every file we create. */
export const FILE_MODE = 0o600;

/** Mode of every directory we create. */
export const DIR_MODE = 0o700;

/**
 * Returns a fresh temp path next to `finalPath`:
 * `<dir>/.tmp-<basename>.<16 random hex digits>`.
 */
export function tempPathFor(finalPath: string): string {
  const random = new Uint8Array(8);
  crypto.getRandomValues(random);
  let hex = "";
  for (const b of random) hex += b.toString(16).padStart(2, "0");
  return join(dirname(finalPath), `${TEMP_PREFIX}${basename(finalPath)}.${hex}`);
}

/**
 * Fsyncs a directory so that entries created, renamed or removed in it are
 * durable.
 *
 * On Linux and the BSDs/macOS an fsync of a directory opened read-only is how
 * this is done. Windows cannot open a directory as a file at all (and NTFS
 * journals renames itself), so there the open fails with a permission error
 * and the call is a no-op; any other error propagates.
 */
export async function syncDir(dir: string): Promise<void> {
  let handle: Deno.FsFile;
  try {
    handle = await Deno.open(dir, { read: true });
  } catch (error) {
    if (Deno.build.os === "windows" && error instanceof Deno.errors.PermissionDenied) return;
    throw error;
  }
  try {
    await handle.sync();
  } finally {
    handle.close();
  }
}

/**
 * Makes the data of the file at `path` durable, through a new descriptor
 * (Linux syncs the inode, not the descriptor). fdatasync: it also flushes
 * the size, all that reading the file back needs. The open is synchronous
 * (see {@linkcode syncDir}).
 */
export async function syncFile(path: string): Promise<void> {
  const handle = Deno.openSync(path, { read: true });
  try {
    await handle.syncData();
  } finally {
    handle.close();
  }
}

/**
 * Writes `bytes` to `path` atomically: temp file (mode 0600) in the same
 * directory, fsync, rename over `path`, fsync of the directory. Readers see
 * either the old file or the complete new one, never a partial one. Meant
 * for small files (`schema.yml`, `ddl.sql`).
 */
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const temp = tempPathFor(path);
  const file = await Deno.open(temp, { write: true, createNew: true, mode: FILE_MODE });
  let renamed = false;
  try {
    try {
      await writeAll(file, bytes);
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(temp, path);
    renamed = true;
    await syncDir(dirname(path));
  } finally {
    if (!renamed) await Deno.remove(temp).catch(() => {});
  }
}

/**
 * Creates `path` and any missing parents with mode 0700, fsyncing each
 * parent so the new entries are durable. Directories that already exist keep
 * their mode: the operator may have chosen it on purpose.
 */
export async function ensureDir(path: string): Promise<void> {
  // Find the missing components from the deepest existing ancestor down.
  const missing: string[] = [];
  let current = path;
  while (true) {
    try {
      const info = await Deno.stat(current);
      if (!info.isDirectory) {
        throw new Deno.errors.AlreadyExists(
          `Cannot create directory "${current}": a file exists there`,
        );
      }
      break;
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
      missing.push(current);
      const parent = dirname(current);
      if (parent === current) break;
      current = parent;
    }
  }
  for (const dir of missing.reverse()) {
    try {
      await Deno.mkdir(dir, { mode: DIR_MODE });
    } catch (error) {
      // Another writer created it meanwhile: fine, it exists now.
      if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
      continue;
    }
    await syncDir(dirname(dir));
  }
}

/**
 * Deletes every `.tmp-*` file under `rootDir` (recursively, without following
 * symlinks) and returns their paths, sorted. Such files are leftovers of a
 * crash mid-write; nothing refers to them. A missing `rootDir` yields `[]`.
 */
export async function removeTempFiles(rootDir: string): Promise<string[]> {
  const removed: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(dir));
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return;
      throw error;
    }
    let changed = false;
    for (const entry of entries) {
      const path = join(dir, entry.name);
      if (entry.isDirectory) {
        await walk(path);
      } else if (entry.isFile && entry.name.startsWith(TEMP_PREFIX)) {
        try {
          await Deno.remove(path);
        } catch (error) {
          if (!(error instanceof Deno.errors.NotFound)) throw error;
          continue;
        }
        removed.push(path);
        changed = true;
      }
    }
    if (changed) await syncDir(dir);
  };
  await walk(rootDir);
  return removed.sort();
}

/** Writes all of `bytes` (`FsFile.write` may write fewer bytes than asked). */
export async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) {
    offset += await file.write(bytes.subarray(offset));
  }
}

/** Whether anything (file, directory, symlink) exists at `path`. */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}
