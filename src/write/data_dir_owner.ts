/**
 * Which slot a data dir belongs to. Start-up recovery removes temp files
 * and unregistered side files, and `verify --quarantine` moves files its
 * slot does not know: run for another slot's files, they would destroy that
 * slot's open batches and history. So `stream` claims its data dir with a
 * small marker file, refuses a data dir claimed by another slot or source,
 * and recovery and verify never descend into a folder that holds another
 * data dir's marker (a source's data dir nested in another's).
 */

import { join } from "node:path";
import { CdcError } from "../errors.ts";
import { writeFileAtomic } from "./atomic_file.ts";

/** The marker's name, at the top of the data dir. */
export const OWNER_FILE = ".cdc-egress-owner.json";

/** What the marker records. */
export interface DataDirOwner {
  slot: string;
  database: string;
  system_identifier: string;
}

/** Reads the marker of `dir`, or null when there is none. */
export async function readDataDirOwner(dir: string): Promise<DataDirOwner | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(join(dir, OWNER_FILE));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
  try {
    const v = JSON.parse(text);
    if (typeof v.slot === "string") return v as DataDirOwner;
  } catch {
    // unreadable: reported below
  }
  throw new CdcError("data_dir", `Cannot read ${OWNER_FILE} in the data dir: not valid JSON`);
}

/** The one-line error for a data dir that belongs to another slot or source. */
export function foreignDataDirError(
  what: string,
  dataDir: string,
  owner: DataDirOwner,
): CdcError {
  return new CdcError(
    "data_dir",
    `Cannot ${what} data dir "${dataDir}": it holds the files of slot "${owner.slot}" (database "${owner.database}"); give each source its own --data-dir, for example <root>/<slot>`,
  );
}

/** Whether `owner` is the same slot of the same source as `me`. */
export function sameOwner(owner: DataDirOwner, me: DataDirOwner): boolean {
  return owner.slot === me.slot && owner.database === me.database &&
    owner.system_identifier === me.system_identifier;
}

/** Throws a `data_dir` CdcError when another slot or source owns `dir`; changes nothing. */
export async function checkDataDirOwner(dir: string, me: DataDirOwner): Promise<void> {
  const owner = await readDataDirOwner(dir);
  if (owner && !sameOwner(owner, me)) throw foreignDataDirError("stream into", dir, owner);
}

/**
 * Claims `dir` for `me`: writes the marker when there is none, accepts our
 * own, throws a `data_dir` CdcError when another slot or source owns it.
 */
export async function claimDataDir(dir: string, me: DataDirOwner): Promise<void> {
  const owner = await readDataDirOwner(dir);
  if (owner) {
    if (!sameOwner(owner, me)) throw foreignDataDirError("stream into", dir, owner);
    return;
  }
  await writeFileAtomic(
    join(dir, OWNER_FILE),
    new TextEncoder().encode(JSON.stringify(me, null, 2) + "\n"),
  );
}

/** Whether `dir` is another data dir (holds a marker), so a walk must not enter it. */
export async function isOtherDataDir(dir: string): Promise<boolean> {
  try {
    await Deno.stat(join(dir, OWNER_FILE));
    return true;
  } catch {
    return false;
  }
}
