/**
 * Start-up repair when the data dir is a bucket. Every upload began with an
 * intent in the registry; an intent whose key was registered is simply
 * dropped, any other one is settled by aborting its multipart upload (by the
 * recorded id) and deleting its object. No bucket listing is needed, and
 * nothing registered is ever deleted. Then the spool is emptied of what a
 * crash left: files already uploaded and registered, and files never
 * registered (their changes come again from the slot).
 *
 * @module
 */

import { dirname, join } from "node:path";
import type { Logger } from "../log.ts";
import type { Registry } from "../registry/registry.ts";
import { syncDir } from "../write/atomic_file.ts";
import { isOtherDataDir } from "../write/data_dir_owner.ts";
import type { ObjectStore } from "./object_store.ts";
import { DATA_FILE_NAMES } from "./spool_uploader.ts";

/** What {@linkcode recoverUploads} did. */
export interface UploadRecovery {
  deleted: string[];
  aborted: string[];
  kept: string[];
}

/** Settles every upload intent of the registry's slot against `store`. */
export async function recoverUploads(
  store: ObjectStore,
  registry: Registry,
  logger: Logger,
): Promise<UploadRecovery> {
  const report: UploadRecovery = { deleted: [], aborted: [], kept: [] };
  const intents = await registry.uploadIntents();
  if (intents.length === 0) return report;
  const registered = await registry.registeredAmong(intents.map((i) => i.path));
  const dirs = [...new Set(intents.map((i) => dirname(i.path)))];
  const registeredDirs = await registry.registeredDirs(dirs, DATA_FILE_NAMES);
  for (const intent of intents) {
    const isSchema = intent.path.endsWith("/schema.yml");
    if (registered.has(intent.path) || (isSchema && registeredDirs.has(dirname(intent.path)))) {
      report.kept.push(intent.path);
    } else {
      // An empty id: a crash came between marking the intent multipart and
      // recording the id CreateMultipartUpload gave. Ask for that one key's
      // uploads where the server can tell.
      const ids = intent.uploadId
        ? [intent.uploadId]
        : intent.uploadId === ""
        ? await store.multipartUploadsOf?.(intent.path) ?? []
        : [];
      for (const id of ids) {
        await store.abortMultipart(intent.path, id);
        report.aborted.push(intent.path);
      }
      await store.delete(intent.path);
      report.deleted.push(intent.path);
    }
    await registry.dropUploadIntents([intent.path]);
  }
  logger.info("settled unregistered uploads", {
    deleted: report.deleted.length,
    aborted_multipart: report.aborted.length,
    kept_registered: report.kept.length,
  });
  return report;
}

/**
 * Empties the spool's table folders: after {@linkcode recoverUploads} every
 * registered file is in the bucket and every other one will be written
 * again. Only folders under table dirs are touched (not `.spool`, `.exports`
 * or the owner marker, which their own code settles), and never a nested
 * data dir of another source.
 */
export async function cleanSpool(spoolDir: string, logger: Logger): Promise<number> {
  let removed = 0;
  let tableDirs: Deno.DirEntry[];
  try {
    tableDirs = await Array.fromAsync(Deno.readDir(spoolDir));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return 0;
    throw error;
  }
  for (const t of tableDirs) {
    const tablePath = join(spoolDir, t.name);
    if (!t.isDirectory || t.name.startsWith(".") || await isOtherDataDir(tablePath)) continue;
    for await (const b of Deno.readDir(tablePath)) {
      if (!b.isDirectory) continue;
      await Deno.remove(join(tablePath, b.name), { recursive: true });
      removed++;
    }
    await syncDir(tablePath);
  }
  if (removed > 0) logger.info("emptied the spool", { folders: removed });
  return removed;
}
