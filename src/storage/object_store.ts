/**
 * The one storage interface behind the data dir: local files or an
 * S3-compatible bucket. Keys are the relative paths of the local layout
 * (`public.orders/20261124T170500.123Z/streaming.csv.gz`), `/`-separated.
 *
 * Writers never write objects in place: a file is sealed and fsynced in the
 * local layout first (the spool when the data dir is a bucket) and then put
 * whole, so a key holds either nothing or the complete file.
 *
 * @module
 */

/** What a HEAD of one object tells. */
export interface ObjectInfo {
  /** Size in bytes. */
  size: number;
  /** The sha256 (hex) recorded with the object when it was put, if any. */
  sha256: string | null;
}

/** Options of {@linkcode ObjectStore.putFile}. */
export interface PutOptions {
  /** The file's sha256 (hex), stored with the object and checked where the server can. */
  sha256: string;
  /**
   * Called with the upload id before the first part of a multipart upload is
   * sent, so the caller can record it (recovery aborts it without listing);
   * and with "" before the upload is created, so a crash before the id is
   * recorded leaves a mark (recovery then asks for that key's uploads).
   */
  onMultipart?: (uploadId: string) => Promise<void>;
}

/** Local directory or bucket holding the output files. */
export interface ObjectStore {
  /** `s3` or `local`. */
  readonly kind: "s3" | "local";
  /** Where the files are, without secrets: `s3://bucket/prefix` or the absolute directory. */
  readonly url: string;
  /** Puts the sealed local file at `localPath` under `key`, complete or not at all. */
  putFile(key: string, localPath: string, options: PutOptions): Promise<void>;
  /** The object's bytes as a stream; a `NotFound` error when it does not exist. */
  get(key: string): Promise<ReadableStream<Uint8Array>>;
  /** Size and recorded checksum of `key`, or null when it does not exist. */
  head(key: string): Promise<ObjectInfo | null>;
  /** Removes `key`; removing a missing key is not an error. */
  delete(key: string): Promise<void>;
  /** Aborts a multipart upload; an unknown (finished or aborted) id is not an error. */
  abortMultipart(key: string, uploadId: string): Promise<void>;
  /**
   * Ids of incomplete multipart uploads of exactly `rel`, or null when the
   * store cannot tell (see S3Store); absent for local files.
   */
  multipartUploadsOf?(rel: string): Promise<string[] | null>;
  /** Checks that the store can be reached and read (and written when `write`). */
  check(write: boolean): Promise<void>;
  /**
   * Stops retrying `ms` from now: a call still failing then throws (a
   * process asked to stop must not wait for S3 forever).
   */
  giveUpAfter(ms: number): void;
  /** Releases connections. */
  close(): void;
}
