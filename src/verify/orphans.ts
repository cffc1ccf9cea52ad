/** Files under the data dir that the registry does not know. */

import { join } from "node:path";
import { EXPORT_STAGING_DIR } from "../pipeline/recovery.ts";
import type { Registry } from "../registry/registry.ts";
import { pathExists, TEMP_PREFIX } from "../write/atomic_file.ts";
import { isOtherDataDir, OWNER_FILE } from "../write/data_dir_owner.ts";

/** Where `--quarantine` moves orphans, under the data dir. */
export const QUARANTINE_DIR = ".quarantine";
const SPOOL_DIR = ".spool";

/**
 * Walks the data dir for files the registry does not know. `schema.yml`,
 * `.spool/` and `.quarantine/` are ignored; a temp file of a registered file
 * is reported as missing instead; while a stream runs, temp files are its
 * open batches and are left alone.
 */
export async function findOrphans(
  dataDir: string,
  registry: Registry,
  tableDirs: Set<string> | null,
  streamRunning: boolean,
  notes: string[],
): Promise<string[]> {
  // This slot's files only: the data dir belongs to one slot (its marker says which).
  const known = await registry.registeredPaths();
  const candidates: string[] = [];
  let inProgress = 0;
  const walk = async (rel: string) => {
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(rel ? join(dataDir, rel) : dataDir));
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return; // removed meanwhile
      throw error;
    }
    for (const e of entries.sort((a, b) => a.name < b.name ? -1 : 1)) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (rel === "") {
        if (
          e.isDirectory &&
          (e.name === SPOOL_DIR || e.name === QUARANTINE_DIR || e.name === EXPORT_STAGING_DIR)
        ) continue;
        if (!e.isDirectory && e.name === OWNER_FILE) continue;
        if (tableDirs !== null && !tableDirs.has(e.name)) continue;
        // Another source's data dir nested in this one: never ours to call orphan.
        if (e.isDirectory && await isOtherDataDir(join(dataDir, e.name))) continue;
      }
      if (e.isDirectory) {
        await walk(path);
        continue;
      }
      if (e.name === "schema.yml" || known.has(path)) continue;
      if (e.name.startsWith(TEMP_PREFIX)) {
        const final = `${rel ? rel + "/" : ""}${e.name.slice(TEMP_PREFIX.length)}`;
        if (known.has(final)) continue; // reported as "missing" when it is ours
        if (streamRunning) {
          inProgress++;
          continue;
        }
      }
      candidates.push(path);
    }
  };
  await walk("");
  if (inProgress > 0) {
    notes.push(`${inProgress} temp file(s) of the running stream were not checked`);
  }
  if (candidates.length === 0) return [];
  // A running stream may have registered some of them since the first read.
  const late = await registry.registeredAmong(candidates);
  const out: string[] = [];
  for (const c of candidates) {
    if (!late.has(c) && await pathExists(join(dataDir, c))) out.push(c);
  }
  return out;
}
