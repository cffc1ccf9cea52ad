/**
 * The {@linkcode ObjectStore} a configuration names: the local data dir, or
 * the bucket of `--data-dir s3://bucket/prefix`.
 *
 * @module
 */

import type { Config } from "../config.ts";
import { LocalStore } from "./local_store.ts";
import type { ObjectStore } from "./object_store.ts";
import { isS3Url, parseS3Url } from "./s3_location.ts";
import { S3Store, type S3StoreOptions } from "./s3_store.ts";

/** How a command uses the store. */
export interface StoreUse {
  /** Attempts per call (Infinity: `stream` holds until S3 answers). */
  maxAttempts: number;
  onRetry?: S3StoreOptions["onRetry"];
  onUploaded?: S3StoreOptions["onUploaded"];
}

/** Opens the store of `config.dataDir`. */
export function openObjectStore(
  config: Config,
  use: StoreUse = { maxAttempts: 5 },
  env: (name: string) => string | undefined = (name) => Deno.env.get(name),
): ObjectStore {
  if (!isS3Url(config.dataDir)) return new LocalStore(config.dataDir);
  return new S3Store({
    location: parseS3Url(config.dataDir),
    endpoint: config.s3Endpoint,
    region: config.s3Region ?? env("AWS_REGION") ?? env("AWS_DEFAULT_REGION") ?? "us-east-1",
    forcePathStyle: config.s3ForcePathStyle,
    partSize: config.s3PartSize,
    timeoutMs: config.s3TimeoutMs,
    maxAttempts: use.maxAttempts,
    onRetry: use.onRetry,
    onUploaded: use.onUploaded,
  });
}
