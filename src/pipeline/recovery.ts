/**
 * Start-up repair of the data dir after a crash, driven by the registry:
 * a registered file still under its temp name (crash between the registry
 * commit and the rename) is renamed into place; temp files of unregistered
 * batches (and write probes at the top) are removed, and so are batch
 * folders that hold nothing registered. Only names cdc-egress itself writes
 * are ever removed.
 */

import { basename, dirname, join } from "node:path";
import type { Logger } from "../log.ts";
import { pathExists, syncDir, TEMP_PREFIX } from "../write/atomic_file.ts";
import { isOtherDataDir } from "../write/data_dir_owner.ts";

/** Exports are written under `<data_dir>/.exports/<slot>/` until they are registered. */
export const EXPORT_STAGING_DIR = ".exports";

// Side files of a batch that never got registered; data files are never removed.
const OWN_FILES = new Set(["schema.yml", "ddl.sql"]);

async function removeIfExists(path: string): Promise<boolean> {
  try {
    await Deno.remove(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/** What {@linkcode recoverDataDir} did. */
export interface RecoveryReport {
  renamed: string[];
  removed: string[];
  missing: string[];
}

/** Repairs `dataDir` against the set of registered relative paths. */
export async function recoverDataDir(
  dataDir: string,
  registered: Set<string>,
  logger: Logger,
): Promise<RecoveryReport> {
  const report: RecoveryReport = { renamed: [], removed: [], missing: [] };
  const registeredDirs = new Set<string>();
  for (const rel of registered) {
    registeredDirs.add(dirname(rel));
    const finalPath = join(dataDir, rel);
    if (await pathExists(finalPath)) continue;
    const temp = join(dirname(finalPath), TEMP_PREFIX + basename(finalPath));
    if (await pathExists(temp)) {
      await Deno.rename(temp, finalPath);
      await syncDir(dirname(finalPath));
      report.renamed.push(rel);
    } else {
      report.missing.push(rel);
    }
  }
  let tableDirs: Deno.DirEntry[] = [];
  try {
    tableDirs = await Array.fromAsync(Deno.readDir(dataDir));
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  for (const tableDir of tableDirs) {
    if (tableDir.isFile && tableDir.name.startsWith(TEMP_PREFIX)) {
      // The start-up write probe of a process killed before it removed it
      // (or of a starting process that removes it itself meanwhile).
      if (await removeIfExists(join(dataDir, tableDir.name))) report.removed.push(tableDir.name);
      continue;
    }
    if (!tableDir.isDirectory || tableDir.name.startsWith(".")) continue;
    const tablePath = join(dataDir, tableDir.name);
    // Another source's data dir nested in ours: its files are not ours to settle.
    if (await isOtherDataDir(tablePath)) continue;
    for await (const batchDir of Deno.readDir(tablePath)) {
      if (!batchDir.isDirectory) continue;
      const rel = `${tableDir.name}/${batchDir.name}`;
      const batchPath = join(tablePath, batchDir.name);
      const isRegistered = registeredDirs.has(rel);
      let left = 0;
      for await (const entry of Deno.readDir(batchPath)) {
        const ours = entry.isFile &&
          (entry.name.startsWith(TEMP_PREFIX) || (!isRegistered && OWN_FILES.has(entry.name)));
        if (ours) {
          await Deno.remove(join(batchPath, entry.name));
          report.removed.push(`${rel}/${entry.name}`);
        } else {
          left++;
        }
      }
      if (left === 0 && !isRegistered) {
        await Deno.remove(batchPath);
        report.removed.push(rel + "/");
      }
    }
  }
  for (const m of report.missing) logger.warn("registered file is missing", { path: m });
  if (report.renamed.length + report.removed.length > 0) {
    logger.info("recovered data dir", {
      renamed: report.renamed.length,
      removed: report.removed.length,
    });
  }
  return report;
}
