/**
 * The S3 implementation of {@linkcode ObjectStore}, on the AWS SDK
 * (`@aws-sdk/client-s3`, credentials from the standard chain: environment
 * keys, `AWS_PROFILE` and the shared files, web identity, instance
 * metadata). Works with AWS S3 and S3-compatible servers (MinIO, R2, Ceph
 * RGW, GCS interoperability) through `endpoint` and path-style addressing.
 *
 * Integrity: every PUT and part carries Content-MD5, and the ETag the server
 * answers is compared with our own MD5 as well (some servers do not check
 * the header); on AWS itself (no custom endpoint) single PUTs also carry
 * `x-amz-checksum-sha256`. The file's sha256 is stored as user metadata
 * (`x-amz-meta-sha256`), which is what HEAD-based `verify` compares.
 *
 * Retries: the SDK's own retries are off; each call is retried here (5xx,
 * 429, timeouts, refused or reset connections, answers cut short) with a
 * fresh request body, so a retry never sends a half-read stream.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { fromNodeProviderChain } from "@aws-sdk/credential-providers";
import { CdcError } from "../errors.ts";
import type { ObjectInfo, ObjectStore, PutOptions } from "./object_store.ts";
import { formatS3Url, objectKey, type S3Location } from "./s3_location.ts";
import { httpStatus, isTransientS3Error, s3RetryDelayMs } from "./s3_retry.ts";

/** Settings of an {@linkcode S3Store}. */
export interface S3StoreOptions {
  location: S3Location;
  /** Custom endpoint (MinIO, R2, ...); undefined means AWS. */
  endpoint?: string;
  region?: string;
  forcePathStyle?: boolean;
  /** Files larger than this go up in parts of this size. */
  partSize: number;
  /** A request with no progress for this long is abandoned and retried. */
  timeoutMs: number;
  /** Attempts per call before giving up (Infinity: hold until it works). */
  maxAttempts: number;
  /** Called before each retry (logging, metrics). */
  onRetry?: (op: string, attempt: number, error: unknown, delayMs: number) => void;
  /** Called after each finished upload (metrics). */
  onUploaded?: (bytes: number, seconds: number) => void;
}

/** The object `check(true)` writes and removes, under the prefix. */
export const PROBE_KEY = ".cdc-egress-probe";

/** Parts of one multipart upload in flight at once. */
const PART_CONCURRENCY = 3;

/** One S3 call's failure that a retry cannot fix, as one clear line. */
function permanentError(op: string, where: string, error: unknown): CdcError {
  const e = error as { name?: string; message?: string; Code?: string };
  const status = httpStatus(error);
  const name = e.Code ?? e.name ?? "Error";
  let why: string;
  if (name === "NoSuchBucket" || (status === 404 && op === "use")) {
    why = "the bucket does not exist";
  } else if (
    status === 403 || /AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch/.test(name)
  ) {
    why = `access denied (${name === "Unknown" || name === "Error" ? status : name}); ` +
      "check the AWS credentials and the bucket policy";
  } else if (name === "CredentialsProviderError" || /credential/i.test(e.message ?? "")) {
    why =
      "no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run with a role)";
  } else if (name === "NotCapable" || name === "PermissionDenied") {
    why = `not permitted by the binary's permissions (${firstLine(e.message)})`;
  } else if (status !== undefined) {
    why = `the server answered ${status} ${name}`;
  } else {
    why = firstLine(e.message) || name;
  }
  return new CdcError("storage", `Cannot ${op} ${where}: ${why}`, { cause: error });
}

/**
 * The bytes of a local file as a Node stream (what the SDK sends without
 * holding the body in memory), read in 1 MiB pieces.
 */
function fileStream(path: string): Readable {
  return Readable.from((async function* () {
    using file = await Deno.open(path, { read: true });
    const buf = new Uint8Array(1024 * 1024);
    for (let n; (n = await file.read(buf)) !== null;) yield buf.slice(0, n);
  })());
}

function firstLine(text: string | undefined): string {
  return (text ?? "").split("\n")[0];
}

function quoteless(etag: string | undefined): string {
  return (etag ?? "").replace(/^W\//, "").replace(/"/g, "").toLowerCase();
}

/** Objects in an S3-compatible bucket under a prefix. */
export class S3Store implements ObjectStore {
  readonly kind = "s3" as const;
  readonly url: string;
  readonly #opts: S3StoreOptions;
  readonly #client: S3Client;
  /** Whether to send x-amz-checksum-sha256 (AWS itself; not every S3-compatible server knows it). */
  readonly #sha256Header: boolean;

  constructor(options: S3StoreOptions) {
    this.#opts = options;
    this.url = formatS3Url(options.location);
    this.#sha256Header = options.endpoint === undefined;
    this.#client = new S3Client({
      endpoint: options.endpoint,
      region: options.region ?? "us-east-1",
      forcePathStyle: options.forcePathStyle ?? false,
      credentials: fromNodeProviderChain(),
      maxAttempts: 1,
      // Only what we ask for: no automatic CRC32 trailers that older servers reject.
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
      requestHandler: {
        connectionTimeout: Math.min(options.timeoutMs, 10_000),
        requestTimeout: options.timeoutMs,
        throwOnRequestTimeout: true,
      },
    });
  }

  #key(rel: string): string {
    return objectKey(this.#opts.location, rel);
  }

  #where(rel?: string): string {
    const at = this.#opts.endpoint ? ` at ${this.#opts.endpoint}` : "";
    return rel === undefined ? `bucket "${this.#opts.location.bucket}"${at}` : `${this.url}/${rel}`;
  }

  /** After this time (ms since the epoch) failing calls are not retried; see giveUpAfter. */
  #deadline = Infinity;

  giveUpAfter(ms: number): void {
    this.#deadline = Math.min(this.#deadline, Date.now() + ms);
  }

  /** Runs `fn` until it succeeds, a permanent error occurs or attempts run out. */
  async #retry<T>(op: string, rel: string | undefined, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 0;; attempt++) {
      try {
        return await fn();
      } catch (error) {
        if (error instanceof CdcError) throw error;
        if (!isTransientS3Error(error)) throw permanentError(op, this.#where(rel), error);
        if (attempt + 1 >= this.#opts.maxAttempts || Date.now() >= this.#deadline) {
          throw new CdcError(
            "storage",
            `Cannot ${op} ${this.#where(rel)}: ${
              firstLine((error as Error).message) || (error as Error).name
            } (after ${attempt + 1} attempts)`,
            { cause: error },
          );
        }
        const delay = Math.max(0, Math.min(s3RetryDelayMs(attempt), this.#deadline - Date.now()));
        this.#opts.onRetry?.(op, attempt + 1, error, delay);
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  async putFile(rel: string, localPath: string, options: PutOptions): Promise<void> {
    const started = performance.now();
    const size = (await Deno.stat(localPath)).size;
    if (size > this.#opts.partSize) {
      await this.#putMultipart(rel, localPath, size, options);
    } else {
      await this.#retry("upload", rel, async () => {
        const body = await Deno.readFile(localPath);
        const md5 = createHash("md5").update(body).digest();
        const res = await this.#client.send(
          new PutObjectCommand({
            Bucket: this.#opts.location.bucket,
            Key: this.#key(rel),
            Body: body,
            ContentLength: body.length,
            ContentMD5: md5.toString("base64"),
            ChecksumSHA256: this.#sha256Header
              ? Buffer.from(options.sha256, "hex").toString("base64")
              : undefined,
            Metadata: { sha256: options.sha256 },
          }),
        );
        if (quoteless(res.ETag) !== md5.toString("hex")) {
          // The server stored something else than we sent (or says so): send it again.
          throw Object.assign(new Error(`ETag ${res.ETag} does not match the MD5 we sent`), {
            name: "InternalError",
          });
        }
      });
    }
    this.#opts.onUploaded?.(size, (performance.now() - started) / 1000);
  }

  async #putMultipart(
    rel: string,
    localPath: string,
    size: number,
    options: PutOptions,
  ): Promise<void> {
    await options.onMultipart?.("");
    const uploadId = await this.startMultipart(rel, options.sha256);
    await options.onMultipart?.(uploadId);
    const partSize = this.#opts.partSize;
    const count = Math.ceil(size / partSize);
    const parts: { PartNumber: number; ETag: string }[] = new Array(count);
    const file = await Deno.open(localPath, { read: true });
    // Reading and hashing one part overlaps the upload of others; memory
    // stays at PART_CONCURRENCY parts.
    let next = 0;
    let reading = Promise.resolve();
    const readPart = (n: number): Promise<Uint8Array> => {
      const offset = (n - 1) * partSize;
      const body = new Uint8Array(Math.min(partSize, size - offset));
      const read = reading.then(async () => {
        await file.seek(offset, Deno.SeekMode.Start);
        for (let got = 0; got < body.length;) {
          const r = await file.read(body.subarray(got));
          if (r === null) throw new Error(`"${localPath}" is shorter than ${size} bytes`);
          got += r;
        }
      });
      reading = read.catch(() => {});
      return read.then(() => body);
    };
    let failed = false;
    const worker = async () => {
      while (!failed && next < count) {
        const n = ++next;
        const body = await readPart(n);
        const md5 = createHash("md5").update(body).digest();
        const etag = await this.#sendPart(rel, uploadId, n, () => body, body.length, md5);
        parts[n - 1] = { PartNumber: n, ETag: etag };
      }
    };
    const guarded = () =>
      worker().catch((error) => {
        failed = true;
        throw error;
      });
    try {
      await Promise.all(Array.from({ length: Math.min(PART_CONCURRENCY, count) }, guarded));
    } finally {
      file.close();
    }
    await this.#complete(rel, uploadId, parts, size, options.sha256);
  }

  /**
   * Begins a multipart upload of `rel`, recording `sha256` with the object
   * when it is known. An export's parts are sent as they are produced
   * ({@linkcode putPart}) before its sha256 is known, so that object carries
   * none (the registry has it; `verify --deep` checks it).
   */
  async startMultipart(rel: string, sha256?: string): Promise<string> {
    const created = await this.#retry(
      "start the multipart upload of",
      rel,
      () =>
        this.#client.send(
          new CreateMultipartUploadCommand({
            Bucket: this.#opts.location.bucket,
            Key: this.#key(rel),
            ...(sha256 === undefined ? {} : { Metadata: { sha256 } }),
          }),
        ),
    );
    return created.UploadId!;
  }

  /**
   * Sends part `n` of an upload from the local file `localPath` (read again
   * for each attempt, never held in memory whole), with its MD5 as
   * Content-MD5 and checked against the ETag; returns the ETag.
   */
  async putPart(
    rel: string,
    uploadId: string,
    n: number,
    localPath: string,
    size: number,
    md5: Uint8Array,
  ): Promise<string> {
    return await this.#sendPart(rel, uploadId, n, () => fileStream(localPath), size, md5);
  }

  /** Sends part `n` (`body()` is called for each attempt) and checks its ETag against `md5`. */
  async #sendPart(
    rel: string,
    uploadId: string,
    n: number,
    body: () => Uint8Array | Readable,
    size: number,
    md5: Uint8Array,
  ): Promise<string> {
    const b64 = Buffer.from(md5).toString("base64");
    const hex = Buffer.from(md5).toString("hex");
    return await this.#retry(`upload part ${n} of`, rel, async () => {
      const r = await this.#client.send(
        new UploadPartCommand({
          Bucket: this.#opts.location.bucket,
          Key: this.#key(rel),
          UploadId: uploadId,
          PartNumber: n,
          Body: body(),
          ContentLength: size,
          ContentMD5: b64,
        }),
      );
      if (quoteless(r.ETag) !== hex) {
        throw Object.assign(new Error(`part ETag ${r.ETag} does not match its MD5`), {
          name: "InternalError",
        });
      }
      return r.ETag!;
    });
  }

  /**
   * Completes an upload begun with {@linkcode startMultipart}; the object
   * must then have `size` bytes (a completion whose answer was lost is
   * judged by the object's size).
   */
  async completeMultipart(
    rel: string,
    uploadId: string,
    parts: { PartNumber: number; ETag: string }[],
    size: number,
  ): Promise<void> {
    const started = performance.now();
    await this.#complete(rel, uploadId, parts, size, null);
    this.#opts.onUploaded?.(size, (performance.now() - started) / 1000);
  }

  /**
   * Completes an upload; the object must then have `size` bytes (and
   * `sha256`, when the object records one).
   */
  async #complete(
    rel: string,
    uploadId: string,
    parts: { PartNumber: number; ETag: string }[],
    size: number,
    sha256: string | null,
  ): Promise<void> {
    await this.#retry("complete the multipart upload of", rel, async () => {
      try {
        await this.#client.send(
          new CompleteMultipartUploadCommand({
            Bucket: this.#opts.location.bucket,
            Key: this.#key(rel),
            UploadId: uploadId,
            MultipartUpload: { Parts: parts },
          }),
        );
      } catch (error) {
        // A completion whose answer was lost: servers differ in what a second
        // one says (200, NoSuchUpload, 500). The object decides: its size (and sha256).
        const info = await this.head(rel).catch(() => null);
        if (info?.size === size && (sha256 === null || info.sha256 === sha256)) return;
        throw error;
      }
    });
    const info = await this.head(rel);
    if (info?.size !== size) {
      throw new CdcError(
        "storage",
        `Cannot upload ${this.#where(rel)}: the object has ${
          info?.size ?? "no"
        } bytes after the multipart upload, expected ${size}`,
      );
    }
  }

  /**
   * Ids of the incomplete multipart uploads of exactly `rel`: a listing of
   * one key, not of the bucket, for an intent whose upload id was never
   * recorded (a crash between CreateMultipartUpload and the registry
   * update). Null where the server cannot tell (s3rver has no such call; a
   * policy without s3:ListBucketMultipartUploads).
   */
  async multipartUploadsOf(rel: string): Promise<string[] | null> {
    const key = this.#key(rel);
    try {
      // One attempt: servers without the call answer in ways a retry would only repeat.
      const res = await this.#client.send(
        new ListMultipartUploadsCommand({ Bucket: this.#opts.location.bucket, Prefix: key }),
      );
      return (res.Uploads ?? []).filter((u) => u.Key === key && u.UploadId).map((u) => u.UploadId!);
    } catch {
      return null;
    }
  }

  async get(rel: string): Promise<ReadableStream<Uint8Array>> {
    const res = await this.#retry("read", rel, async () => {
      try {
        return await this.#client.send(
          new GetObjectCommand({ Bucket: this.#opts.location.bucket, Key: this.#key(rel) }),
        );
      } catch (error) {
        if (httpStatus(error) === 404) {
          throw new Deno.errors.NotFound(`Cannot read ${this.#where(rel)}: no such object`);
        }
        throw error;
      }
    });
    return (res.Body as { transformToWebStream(): ReadableStream<Uint8Array> })
      .transformToWebStream();
  }

  async head(rel: string): Promise<ObjectInfo | null> {
    return await this.#retry("read", rel, async () => {
      try {
        const res = await this.#client.send(
          new HeadObjectCommand({ Bucket: this.#opts.location.bucket, Key: this.#key(rel) }),
        );
        return { size: res.ContentLength ?? 0, sha256: res.Metadata?.sha256 ?? null };
      } catch (error) {
        if (httpStatus(error) === 404) return null;
        throw error;
      }
    });
  }

  async delete(rel: string): Promise<void> {
    await this.#retry("delete", rel, async () => {
      try {
        await this.#client.send(
          new DeleteObjectCommand({ Bucket: this.#opts.location.bucket, Key: this.#key(rel) }),
        );
      } catch (error) {
        if (httpStatus(error) !== 404) throw error;
      }
    });
  }

  async abortMultipart(rel: string, uploadId: string): Promise<void> {
    await this.#retry("abort the multipart upload of", rel, async () => {
      try {
        await this.#client.send(
          new AbortMultipartUploadCommand({
            Bucket: this.#opts.location.bucket,
            Key: this.#key(rel),
            UploadId: uploadId,
          }),
        );
      } catch (error) {
        // Already completed or aborted.
        if (httpStatus(error) !== 404) throw error;
      }
    });
  }

  async check(write: boolean): Promise<void> {
    // HEAD of the bucket needs s3:ListBucket, like reading the layout does.
    await this.#retry(
      "use",
      undefined,
      () => this.#client.send(new HeadBucketCommand({ Bucket: this.#opts.location.bucket })),
    );
    if (!write) return;
    // A key no layout path can take (table dirs never start with "."): put and remove it.
    // Always the same key: a process killed between the two leaves it behind,
    // and the next start, which puts and removes it again, takes it away.
    const probe = PROBE_KEY;
    await this.#retry("write to", undefined, () =>
      this.#client.send(
        new PutObjectCommand({
          Bucket: this.#opts.location.bucket,
          Key: this.#key(probe),
          Body: new TextEncoder().encode("probe\n"),
        }),
      ));
    await this.delete(probe);
  }

  close(): void {
    this.#client.destroy();
  }
}
