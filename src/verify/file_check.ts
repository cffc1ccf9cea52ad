/** One registered file against the disk: present (or being published), readable. */

import { dirname, join } from "node:path";
import { pathExists, TEMP_PREFIX } from "../write/atomic_file.ts";
import type { FileRow } from "./_files.ts";
import { scanFile, type ScannedFile, scanStream } from "./scan_file.ts";
import type { FetchedLayout } from "../storage/layout_files.ts";
import type { Problem } from "./verify_report.ts";

/** How long a registered file may stay under its temp name while a stream publishes it. */
const PUBLISH_WAIT_MS = 5_000;

/** Stats and reads one registered file; returns a problem when it cannot be read. */
export async function checkFile(
  dataDir: string,
  f: FileRow,
  streamRunning: boolean,
): Promise<{ scan?: ScannedFile; problem?: Problem }> {
  const full = join(dataDir, f.path);
  const temp = join(dirname(full), TEMP_PREFIX + full.split("/").pop()!);
  const base = { table: f.tableName, path: f.path };
  if (!(await pathExists(full))) {
    const underTemp = await pathExists(temp);
    // A running stream renames a file right after registering it: give it a moment.
    if (underTemp && streamRunning) {
      const deadline = Date.now() + PUBLISH_WAIT_MS;
      while (Date.now() < deadline && !(await pathExists(full))) {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    if (!(await pathExists(full))) {
      return {
        problem: {
          kind: "missing",
          ...base,
          detail: underTemp
            ? `registered but still under its temp name ${TEMP_PREFIX}${
              full.split("/").pop()
            }; the next "cdc-egress stream" start renames it`
            : "registered but not on disk",
        },
      };
    }
  }
  try {
    return { scan: await scanFile(full, f.fileType !== "ddl") };
  } catch (error) {
    return {
      problem: {
        kind: "unreadable",
        ...base,
        detail: (error as Error).message.split("\n")[0],
      },
    };
  }
}

/** HEADs one registered object (and reads it with `deep`); a problem when it is missing. */
export async function checkObject(
  layout: FetchedLayout,
  f: FileRow,
  deep: boolean,
): Promise<{ scan?: ScannedFile; problem?: Problem }> {
  const base = { table: f.tableName, path: f.path };
  try {
    const info = await layout.store.head(f.path);
    if (info === null) {
      return { problem: { kind: "missing", ...base, detail: "registered but not in the bucket" } };
    }
    if (!deep) {
      // No sha256 recorded (an object put by another tool): the size is all HEAD tells.
      return {
        scan: { size: info.size, sha256: info.sha256 ?? f.sha256, records: null, corrupt: null },
      };
    }
    return { scan: await scanStream(await layout.store.get(f.path), f.fileType !== "ddl") };
  } catch (error) {
    return {
      problem: { kind: "unreadable", ...base, detail: (error as Error).message.split("\n")[0] },
    };
  }
}
