/**
 * The registry records where each slot's files are (once, when it first
 * streams). A slot whose files are in a bucket must not be streamed into a
 * local directory or another bucket, and readers must look where the files
 * are: that would split one history across two places.
 *
 * @module
 */

import { CdcError } from "../errors.ts";
import type { Registry } from "../registry/registry.ts";

/**
 * Records `url` for the slot if nothing is recorded; throws a `data_dir`
 * error when the recorded location is a bucket and `url` differs (or the
 * other way round). Local directories may move: those are not compared.
 */
export async function checkStorageLocation(
  registry: Registry,
  url: string,
  what: string,
): Promise<void> {
  const s3 = (u: string) => u.startsWith("s3://");
  if (what === "stream into" && s3(url) && (await registry.storageUrl()) === null) {
    // Files registered before locations were recorded are in a local data dir.
    if (await registry.hasFiles()) {
      throw new CdcError(
        "data_dir",
        `Cannot ${what} ${url}: slot "${registry.slot}" already has files in a local data dir; copy them to the bucket and record it first (see README, Object storage)`,
      );
    }
  }
  const recorded = what === "stream into"
    ? await registry.recordStorageUrl(url)
    : await registry.storageUrl();
  if (recorded === null || recorded === url) return;
  if (!s3(recorded) && !s3(url)) return;
  throw new CdcError(
    "data_dir",
    `Cannot ${what} ${
      s3(url) ? url : `data dir "${url}"`
    }: the files of slot "${registry.slot}" are in ${recorded} (recorded in the registry); use --data-dir ${recorded}`,
  );
}
