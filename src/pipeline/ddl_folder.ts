/**
 * A DDL folder: `ddl.sql` with the captured command and, when known, the
 * `schema.yml` of the table right after it. Written under temp names and
 * published after the registry commit, like every data file.
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { formatLsn, type Lsn } from "../lsn.ts";
import {
  ensureDir,
  FILE_MODE,
  syncDir,
  TEMP_PREFIX,
  writeAll,
  writeFileAtomic,
} from "../write/atomic_file.ts";
import { renderSchemaYml, type TableSchema } from "../write/schema_yml.ts";

/** Name of the DDL file inside a folder. */
export const DDL_FILE = "ddl.sql";

/** A written, unpublished DDL folder. */
export interface DdlFolder {
  byteSize: number;
  sha256: string;
  /** Gives ddl.sql its final name (after the registry commit). */
  publish(): Promise<void>;
  /** Removes what was written. */
  abort(): Promise<void>;
}

/** Writes `ddl.sql` (under its temp name) and `schema.yml` into `dir`. */
export async function writeDdlFolder(
  dir: string,
  commandTag: string,
  command: string,
  lsn: Lsn,
  schema: TableSchema | null,
): Promise<DdlFolder> {
  await ensureDir(dir);
  const bytes = new TextEncoder().encode(
    `-- ${commandTag} committed at ${formatLsn(lsn)}\n${command.trim()}\n`,
  );
  const temp = join(dir, TEMP_PREFIX + DDL_FILE);
  const file = await Deno.open(temp, {
    write: true,
    create: true,
    truncate: true,
    mode: FILE_MODE,
  });
  try {
    await writeAll(file, bytes);
    await file.sync();
  } finally {
    file.close();
  }
  if (schema) {
    await writeFileAtomic(
      join(dir, "schema.yml"),
      new TextEncoder().encode(renderSchemaYml(schema)),
    );
  }
  await syncDir(dir);
  return {
    byteSize: bytes.length,
    sha256: createHash("sha256").update(bytes).digest("hex"),
    publish: async () => {
      await Deno.rename(temp, join(dir, DDL_FILE));
      await syncDir(dir);
    },
    abort: async () => {
      await Deno.remove(temp).catch(() => {});
      await Deno.remove(join(dir, "schema.yml")).catch(() => {});
      await Deno.remove(dir).catch(() => {});
    },
  };
}
