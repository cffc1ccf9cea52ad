/**
 * `s3://bucket/prefix` data dirs: parsing and object keys.
 *
 * @module
 */

/** A bucket and the key prefix the layout lives under (no leading or trailing `/`). */
export interface S3Location {
  bucket: string;
  prefix: string;
}

/** Whether a data dir setting names a bucket rather than a directory. */
export function isS3Url(dataDir: string): boolean {
  return /^s3:\/\//i.test(dataDir.trim());
}

/**
 * Parses `s3://bucket[/prefix]`. Throws a `TypeError` naming `origin` for a
 * missing or invalid bucket name and for a prefix with empty, `.` or `..`
 * segments (keys must map one to one onto the local layout).
 */
export function parseS3Url(raw: string, origin = "--data-dir"): S3Location {
  const m = /^s3:\/\/([^/?#]*)(\/[^?#]*)?$/i.exec(raw.trim());
  const fail = (why: string) =>
    new TypeError(`Cannot use ${origin} "${raw}": ${why}; expected s3://bucket/prefix`);
  if (!m) throw fail("not an s3:// URL (no ?, # or spaces)");
  const bucket = m[1];
  if (bucket.length === 0) throw fail("no bucket name");
  // The S3 rules (3-63 characters: lowercase letters, digits, dots, hyphens),
  // plus underscores, which older buckets and some S3-compatible servers allow.
  if (!/^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$/.test(bucket) || bucket.includes("..")) {
    throw fail(`"${bucket}" is not a valid bucket name`);
  }
  const path = (m[2] ?? "").replace(/^\/+/, "").replace(/\/+$/, "");
  const segments = path === "" ? [] : path.split("/");
  if (segments.some((s) => s === "" || s === "." || s === "..")) {
    throw fail("the prefix has an empty, . or .. segment");
  }
  return { bucket, prefix: segments.join("/") };
}

/** The URL of a location, as recorded in the registry and shown by `status`. */
export function formatS3Url(loc: S3Location): string {
  return `s3://${loc.bucket}${loc.prefix ? `/${loc.prefix}` : ""}`;
}

/** The object key of a layout path relative to the data dir. */
export function objectKey(loc: S3Location, relPath: string): string {
  return loc.prefix ? `${loc.prefix}/${relPath}` : relPath;
}
