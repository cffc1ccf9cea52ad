/**
 * A finished export that went into the bucket while it was written (see
 * `storage/export_uploads.ts`): nothing of it is in the spool but its
 * folder's schema.yml, written when it is placed. Its key was fixed when the
 * stream named the export folder, so it is placed exactly there.
 *
 * @module
 */

import { join } from "node:path";
import { CdcError } from "../errors.ts";
import type { UploadedObject } from "../storage/export_uploads.ts";
import { ensureDir, writeFileAtomic } from "../write/atomic_file.ts";
import { renderSchemaYml, type TableSchema } from "../write/schema_yml.ts";
import type { StagedExport } from "./table_export.ts";

/** The {@linkcode StagedExport} of an export uploaded under `upload.key`. */
export function uploadedExport(
  dataDir: string,
  upload: UploadedObject,
  schema: TableSchema,
  rows: number,
  sealed: { byteSize: number; sha256: string },
): StagedExport {
  return {
    schema,
    rows,
    byteSize: sealed.byteSize,
    sha256: sealed.sha256,
    async place(tableDir, batchTs, previousName, batch) {
      const name = upload.key.slice(upload.key.lastIndexOf("/") + 1);
      const path = `${tableDir}/${batchTs}/${name}`;
      if (path !== upload.key) {
        // The table was renamed after its folder was named: the export is done again.
        throw new CdcError(
          "storage",
          `Cannot register the export uploaded as ${upload.key} under ${path}`,
        );
      }
      const dir = join(dataDir, tableDir, batchTs);
      const yml = new TextEncoder().encode(renderSchemaYml({ ...schema, previousName }));
      if (batch) {
        await batch.mkdir(dir, dataDir);
        await batch.writeFile(join(dir, "schema.yml"), yml);
      } else {
        await ensureDir(dir);
        await writeFileAtomic(join(dir, "schema.yml"), yml);
      }
      return path;
    },
    publish() {
      return Promise.resolve();
    },
    abort() {
      return upload.discard();
    },
  };
}
