/**
 * Exports into a bucket, uploaded while they are written. A full_reload's
 * gzip output is cut into parts of `--s3-part-size` in the spool; once the
 * stream has named the export's folder (it does so when it reaches the
 * export's boundary C, usually within a second of the snapshot), the key is
 * known and each part goes up as soon as it is complete, then leaves the
 * spool. So a big export never needs its whole size in the spool: at most
 * the part being written and {@linkcode LOCAL_PARTS} complete ones (the
 * COPY waits while they are all still there: an S3 outage, or a stream that
 * has not reached C yet).
 *
 * Exactly once, as for every upload: before the first part the key is
 * checked not to be registered, its intent is committed and the multipart
 * upload id recorded with it; the object is registered (with the export)
 * only after CompleteMultipartUpload; start-up recovery aborts an upload
 * whose intent has an id, and deletes the object, without listing.
 *
 * Integrity: each part's MD5 goes as Content-MD5 and is compared with its
 * ETag; the file's sha256, computed over the same bytes, is in the
 * registry. The object carries no sha256 metadata (it is not known at
 * CreateMultipartUpload): `verify` checks its size by HEAD, `--deep` its
 * sha256.
 *
 * An export that ends within one part is not a multipart upload at all: its
 * single part file becomes the usual sealed temp file, put whole (with its
 * sha256 metadata) when it is registered.
 *
 * @module
 */

import { createGzip, type Gzip } from "node:zlib";
import { createHash, type Hash } from "node:crypto";
import { CdcError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { FILE_MODE, writeAll } from "../write/atomic_file.ts";
import type { SealedFile, SyncOptions } from "../write/gzip_file_writer.ts";

/** Complete parts of one export kept in the spool at most (being sent, or waiting for the key). */
export const LOCAL_PARTS = 2;

/** Input is fed to deflate in pieces of at least this size. */
const FEED_SIZE = 64 * 1024;
/** How often a waiting export looks whether its folder has been named. */
const KEY_POLL_MS = 100;

/** The multipart calls of the store ({@linkcode S3Store}). */
export interface PartStore {
  startMultipart(rel: string): Promise<string>;
  putPart(
    rel: string,
    uploadId: string,
    n: number,
    localPath: string,
    size: number,
    md5: Uint8Array,
  ): Promise<string>;
  completeMultipart(
    rel: string,
    uploadId: string,
    parts: { PartNumber: number; ETag: string }[],
    size: number,
  ): Promise<void>;
  abortMultipart(rel: string, uploadId: string): Promise<void>;
  delete(rel: string): Promise<void>;
}

/** The registry calls an upload needs ({@linkcode Registry}). */
export interface IntentRegistry {
  registeredAmong(paths: string[]): Promise<Set<string>>;
  addUploadIntents(paths: string[]): Promise<void>;
  setUploadId(path: string, uploadId: string): Promise<void>;
  dropUploadIntents(paths: string[]): Promise<void>;
}

/**
 * The export's key: the relative path once its folder is named, null until
 * then, undefined when that export was abandoned (its folder will never be named).
 */
export type KeyOf = () => string | null | undefined;

/** An object an export uploaded itself, complete but not registered yet. */
export interface UploadedObject {
  key: string;
  /** Removes it (and its intent): the export is thrown away. */
  discard(): Promise<void>;
}

/** What {@linkcode StreamedExportFile.seal} returns. */
export interface SealedExportFile extends SealedFile {
  /** Set when the file went up in parts: it is in the bucket, not at `tempPath`. */
  uploaded?: UploadedObject;
}

/** The exports being uploaded as they are written, for one stream session. */
export class ExportUploads {
  readonly partSize: number;
  readonly #store: PartStore;
  readonly #registry: IntentRegistry;
  readonly #logger: Logger;
  /** Keys uploaded whole by an export, not registered yet. */
  #uploaded = new Set<string>();
  #localBytes = 0;
  #stopped = false;
  #metrics?: { uploadedBytes: { inc(n: number): void } };

  constructor(
    store: PartStore,
    registry: IntentRegistry,
    partSize: number,
    logger: Logger,
    metrics?: { uploadedBytes: { inc(n: number): void } },
  ) {
    this.#store = store;
    this.#registry = registry;
    this.partSize = partSize;
    this.#logger = logger;
    this.#metrics = metrics;
  }

  /** Bytes of export parts in the spool now. */
  get localBytes(): number {
    return this.#localBytes;
  }

  /** Whether `key` was uploaded by an export (the registration must not put it again). */
  uploaded(key: string): boolean {
    return this.#uploaded.has(key);
  }

  /** `keys` are registered: nothing more to do for them. */
  registered(keys: string[]): void {
    for (const k of keys) this.#uploaded.delete(k);
  }

  /** Exports waiting for their key or for room give up (the process stops). */
  stop(): void {
    this.#stopped = true;
  }

  /**
   * A gzip writer for one export, whose bytes go to part files next to
   * `tempPath` (and to `tempPath` itself when they fit in one part).
   */
  open(tempPath: string, keyOf: KeyOf, level = 6): StreamedExportFile {
    return new StreamedExportFile(this, tempPath, keyOf, level);
  }

  /** @internal */
  get store(): PartStore {
    return this.#store;
  }
  /** @internal */
  get registry(): IntentRegistry {
    return this.#registry;
  }
  /** @internal */
  get logger(): Logger {
    return this.#logger;
  }
  /** @internal */
  get stopped(): boolean {
    return this.#stopped;
  }
  /** @internal */
  addLocal(n: number): void {
    this.#localBytes += n;
  }
  /** @internal */
  noteUploaded(key: string, bytes: number): void {
    this.#uploaded.add(key);
    this.#metrics?.uploadedBytes.inc(bytes);
  }
  /** @internal */
  forget(key: string): void {
    this.#uploaded.delete(key);
  }
}

interface Part {
  n: number;
  path: string;
  size: number;
  md5: Uint8Array;
}

/**
 * One export's gzip file, written into parts and uploaded as they fill
 * (see the module doc). The API is the one {@linkcode BufferedGzipFile}
 * streams into: write, seal, abort.
 */
export class StreamedExportFile {
  readonly #up: ExportUploads;
  readonly #tempPath: string;
  readonly #keyOf: KeyOf;
  readonly #gzip: Gzip;
  readonly #sha256: Hash = createHash("sha256");
  #out: Uint8Array[] = [];
  #pending = new Uint8Array(FEED_SIZE);
  #pendingLength = 0;
  #uncompressed = 0;
  #total = 0;
  /** The part being written. */
  #part: { n: number; path: string; file: Deno.FsFile | null; size: number; md5: Hash };
  /** Complete parts not sent yet. */
  #queue: Part[] = [];
  /** Parts being sent. */
  #sending = new Set<Promise<void>>();
  #etags: { PartNumber: number; ETag: string }[] = [];
  #key: string | null = null;
  #uploadId: string | null = null;
  #starting: Promise<void> | null = null;
  #completed = false;
  #done = false;
  #error: unknown = undefined;
  #wake: (() => void) | null = null;

  constructor(up: ExportUploads, tempPath: string, keyOf: KeyOf, level: number) {
    this.#up = up;
    this.#tempPath = tempPath;
    this.#keyOf = keyOf;
    this.#gzip = createGzip({ level });
    this.#gzip.on("data", (chunk: Uint8Array) => this.#out.push(chunk));
    this.#part = this.#newPart(1);
  }

  #newPart(n: number) {
    return { n, path: `${this.#tempPath}.part${n}`, file: null, size: 0, md5: createHash("md5") };
  }

  /** Compresses `chunk` into the parts; waits while the spool holds enough of this export. */
  async write(chunk: Uint8Array): Promise<void> {
    this.#check();
    this.#uncompressed += chunk.length;
    let offset = 0;
    if (this.#pendingLength > 0 || chunk.length < FEED_SIZE) {
      const take = Math.min(FEED_SIZE - this.#pendingLength, chunk.length);
      this.#pending.set(chunk.subarray(0, take), this.#pendingLength);
      this.#pendingLength += take;
      offset = take;
      if (this.#pendingLength < FEED_SIZE) return;
      await this.#feed(this.#pending);
      this.#pendingLength = 0;
    }
    const rest = chunk.length - offset;
    if (rest >= FEED_SIZE) await this.#feed(chunk.subarray(offset));
    else if (rest > 0) {
      this.#pending.set(chunk.subarray(offset), 0);
      this.#pendingLength = rest;
    }
    await this.#room();
  }

  async #feed(input: Uint8Array): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.#gzip.write(input, (error?: Error | null) => error ? reject(error) : resolve());
    });
    await this.#drainOut();
  }

  /** Writes the compressed output into part files, cutting a part at partSize. */
  async #drainOut(): Promise<void> {
    const chunks = this.#out;
    this.#out = [];
    const partSize = this.#up.partSize;
    for (let chunk of chunks) {
      this.#sha256.update(chunk);
      this.#total += chunk.length;
      while (chunk.length > 0) {
        if (this.#part.size === partSize) this.#rotate();
        const p = this.#part;
        const piece = chunk.subarray(0, partSize - p.size);
        chunk = chunk.subarray(piece.length);
        p.file ??= await Deno.open(p.path, {
          write: true,
          create: true,
          truncate: true,
          mode: FILE_MODE,
        });
        await writeAll(p.file, piece);
        p.md5.update(piece);
        p.size += piece.length;
        this.#up.addLocal(piece.length);
      }
    }
    this.#pump();
  }

  /** The full part is complete (more bytes follow): queue it, start the next one. */
  #rotate(): void {
    const p = this.#part;
    p.file?.close();
    this.#queue.push({ n: p.n, path: p.path, size: p.size, md5: p.md5.digest() });
    this.#part = this.#newPart(p.n + 1);
  }

  /** Starts what can start: the upload once the key is known, then parts, a few at a time. */
  #pump(): void {
    if (this.#error !== undefined) return;
    if (this.#key === null) {
      const key = this.#keyOf();
      if (key === undefined) {
        this.#fail(new CdcError("storage", "The export was abandoned before its folder was named"));
        return;
      }
      if (key === null) return;
      this.#key = key;
    }
    if (this.#queue.length === 0) return;
    if (this.#uploadId === null) {
      this.#starting ??= this.#start().then(() => this.#pump(), (e) => this.#fail(e));
      return;
    }
    while (this.#queue.length > 0 && this.#sending.size < LOCAL_PARTS) {
      const part = this.#queue.shift()!;
      const sent: Promise<void> = this.#send(part).catch((e) => this.#fail(e)).finally(() => {
        this.#sending.delete(sent);
        this.#notify();
        this.#pump();
      });
      this.#sending.add(sent);
    }
  }

  /** The intent (committed), then the multipart upload, whose id is recorded before any part. */
  async #start(): Promise<void> {
    const key = this.#key!;
    const { store, registry } = this.#up;
    if ((await registry.registeredAmong([key])).size > 0) {
      throw new CdcError("storage", `Cannot upload ${key}: it is registered already`);
    }
    await registry.addUploadIntents([key]);
    // "": multipart, id not known yet (recovery asks for the key's uploads).
    await registry.setUploadId(key, "");
    const id = await store.startMultipart(key);
    await registry.setUploadId(key, id);
    this.#uploadId = id;
  }

  async #send(part: Part): Promise<void> {
    const etag = await this.#up.store.putPart(
      this.#key!,
      this.#uploadId!,
      part.n,
      part.path,
      part.size,
      part.md5,
    );
    this.#etags.push({ PartNumber: part.n, ETag: etag });
    await Deno.remove(part.path).catch(() => {});
    this.#up.addLocal(-part.size);
  }

  #fail(error: unknown): void {
    this.#error ??= error;
    this.#notify();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  #check(): void {
    if (this.#error !== undefined) {
      throw this.#error instanceof Error
        ? this.#error
        : new CdcError("storage", String(this.#error));
    }
    if (this.#up.stopped) throw new CdcError("storage", "Cannot go on with the export: stopping");
  }

  /** Waits for a part to go, or the key to come, or a short while. */
  async #waitOnce(): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.#wake = null;
        resolve();
      }, KEY_POLL_MS);
      this.#wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this.#pump();
  }

  /** Holds the COPY while the spool holds LOCAL_PARTS complete parts of this export. */
  async #room(): Promise<void> {
    while (this.#queue.length + this.#sending.size >= LOCAL_PARTS) {
      this.#check();
      await this.#waitOnce();
    }
    this.#check();
  }

  /**
   * Ends the gzip stream. Within one part: the part file becomes
   * `tempPath` (nothing was uploaded). Otherwise waits for the key and for
   * every part, completes the upload and returns it as `uploaded`.
   */
  async seal(_options: SyncOptions = {}): Promise<SealedExportFile> {
    this.#check();
    if (this.#pendingLength > 0) {
      await this.#feed(this.#pending.subarray(0, this.#pendingLength));
      this.#pendingLength = 0;
    }
    await new Promise<void>((resolve, reject) => {
      this.#gzip.once("end", resolve);
      this.#gzip.once("error", reject);
      this.#gzip.end();
    });
    await this.#drainOut();
    this.#done = true;
    const p = this.#part;
    p.file?.close();
    p.file = null;
    const sealed = {
      path: this.#tempPath,
      tempPath: this.#tempPath,
      byteSize: this.#total,
      sha256: this.#sha256.digest("hex"),
      uncompressedBytes: this.#uncompressed,
    };
    if (p.n === 1) {
      // One part: an ordinary sealed file, put whole when it is registered.
      if (p.size === 0) await Deno.writeFile(p.path, new Uint8Array(0), { mode: FILE_MODE });
      await Deno.rename(p.path, this.#tempPath);
      this.#up.addLocal(-p.size);
      return sealed;
    }
    this.#queue.push({ n: p.n, path: p.path, size: p.size, md5: p.md5.digest() });
    this.#pump();
    while (this.#queue.length > 0 || this.#sending.size > 0 || this.#uploadId === null) {
      this.#check();
      await this.#waitOnce();
    }
    this.#check();
    const key = this.#key!;
    const parts = [...this.#etags].sort((a, b) => a.PartNumber - b.PartNumber);
    await this.#up.store.completeMultipart(key, this.#uploadId, parts, this.#total);
    this.#completed = true;
    this.#up.noteUploaded(key, this.#total);
    return { ...sealed, tempPath: "", uploaded: { key, discard: () => this.abort() } };
  }

  /**
   * Throws the export away: local parts removed, the upload aborted (or
   * the completed object deleted) and its intent dropped. What cannot be
   * done now (S3 unreachable) is left to start-up recovery, by the intent.
   */
  async abort(): Promise<void> {
    this.#done = true;
    this.#error ??= new CdcError("storage", "The export was aborted");
    this.#gzip.destroy();
    this.#part.file?.close();
    this.#part.file = null;
    await Promise.allSettled([...this.#sending]);
    for (const p of [this.#part, ...this.#queue.splice(0)]) {
      try {
        await Deno.remove(p.path);
        this.#up.addLocal(-p.size);
      } catch {
        // never written, or already gone
      }
    }
    await this.#starting?.catch(() => {});
    const key = this.#key;
    const id = this.#uploadId;
    if (key === null || id === null) return;
    this.#uploadId = null;
    try {
      if (this.#completed) await this.#up.store.delete(key);
      else await this.#up.store.abortMultipart(key, id);
      await this.#up.registry.dropUploadIntents([key]);
      this.#up.forget(key);
    } catch (error) {
      this.#up.logger.warn("cannot remove an abandoned export upload now; the next start does", {
        path: key,
        error: (error as Error).message?.split("\n")[0],
      });
    }
  }
}
