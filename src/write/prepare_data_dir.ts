/**
 * The data dir's first check: it exists (or is created, mode 0700), is a
 * directory and can be written, each failure as one line.
 *
 * @module
 */

import { join, resolve } from "node:path";
import { CdcError } from "../errors.ts";
import { DIR_MODE } from "./atomic_file.ts";

/** Makes sure the data dir exists, is a directory and is writable. */
export async function prepareDataDir(dataDir: string): Promise<string> {
  const dir = resolve(dataDir);
  try {
    const info = await Deno.stat(dir);
    if (!info.isDirectory) {
      throw new CdcError("data_dir", `Cannot use data dir "${dataDir}": not a directory`);
    }
  } catch (error) {
    if (error instanceof CdcError) throw error;
    if (!(error instanceof Deno.errors.NotFound)) {
      throw new CdcError(
        "data_dir",
        `Cannot use data dir "${dataDir}": ${(error as Error).message.split(":")[0]}`,
      );
    }
    try {
      await Deno.mkdir(dir, { recursive: true, mode: DIR_MODE });
    } catch (e) {
      throw new CdcError(
        "data_dir",
        `Cannot create data dir "${dataDir}": ${(e as Error).message}`,
      );
    }
  }
  const probe = join(dir, `.tmp-probe-${crypto.randomUUID()}`);
  try {
    await Deno.writeTextFile(probe, "");
    // The slot's running stream may have taken it for a leftover and removed it.
    await Deno.remove(probe).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
  } catch (error) {
    throw new CdcError(
      "data_dir",
      `Cannot write to data dir "${dataDir}": ${(error as Error).message.split(":")[0]}`,
    );
  }
  return dir;
}
