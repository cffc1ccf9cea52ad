/**
 * Runs full exports (the initial export of a fresh slot, tables that join
 * the publication, `reload` requests, and reloads after DDL that changed
 * existing rows) inside the stream process, at an exact WAL boundary.
 *
 * The snapshot comes from a temporary slot, whose consistent point C splits
 * the table's history exactly: commits before C are in the export, commits
 * at or after C are streamed. Workers export into a staging folder. The
 * stream loop (the {@linkcode ReloadHost}) names the export's folder when
 * it reaches C, however far behind C it is, and registers the export there
 * together with what it held back meanwhile; so a table's streaming files
 * keep every change, none straddles C, and folders sort in LSN order.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { dirname, join } from "node:path";
import type { Logger } from "../log.ts";
import { formatLsn, type Lsn } from "../lsn.ts";
import type { Registry, ReloadRequest, TablePosition } from "../registry/registry.ts";
import { classifyFailure } from "../source/retry_policy.ts";
import type { SourceCatalog } from "../source/source_catalog.ts";
import { connect } from "../source/connect.ts";
import { type ExportedSnapshot, exportSnapshot, useSnapshot } from "../source/export_snapshot.ts";
import { tableDirName } from "../write/table_dir.ts";
import { qualifiedName } from "../source/table_selection.ts";
import {
  type CopiedTable,
  copyTable,
  type DescribedRelation,
  describeRelation,
  describeRelations,
  type ExportPart,
  exportTablePart,
  joinParts,
  namesMoved,
  type SealedPart,
  type StagedExport,
} from "./table_export.ts";
import type { StreamMetrics } from "../observe/metrics.ts";
import { HELD_EXPORT_BYTES, HeldExportBudget } from "./held_export_budget.ts";
import type { DurableBatch } from "../write/durable_batch.ts";
import { eachLimited } from "../write/each_limited.ts";
import { DIR_MODE } from "../write/atomic_file.ts";
import type { BufferedGzipFileOptions } from "../write/buffered_gzip_file.ts";
import type { ExportUploads } from "../storage/export_uploads.ts";

/** A sealed export, handed to the stream loop to register. */
export interface SealedExport {
  ops: ReloadRequest[];
  boundary: Lsn;
  rows: number;
  byteSize: number;
  sha256: string;
  /**
   * Moves the file into its folder under its temp name; returns its
   * relative path. With `batch`, directory fsyncs are left to it.
   */
  place(tableDir: string, batchTs: string, batch?: DurableBatch): Promise<string>;
  /** Gives the registered file its final name (directory fsync left to `batch`). */
  publish(batch?: DurableBatch): Promise<void>;
  /** Removes the file. */
  abort(): Promise<void>;
  /** Called once the export is registered. */
  onRegistered(path: string): void;
}

/** What the coordinator needs from the stream loop. */
export interface ReloadHost {
  /** A pending reload after DDL: hold the table's changes after `hold` already. */
  holdFor(oid: number, hold: TablePosition, reason: string): void;
  /** A snapshot is being made for these relations: cut them and hold what follows. */
  beginExports(tables: { oid: number; schema: string; table: string }[]): Promise<void>;
  /** The snapshot exists: its boundary is `boundary`. */
  boundaryKnown(oids: number[], boundary: Lsn): Promise<void>;
  /** An export is sealed; the loop registers it once the stream has reached its boundary. */
  exportSealed(oid: number, sealed: SealedExport): void;
  /** An export failed (`final`: its table is gone). */
  exportFailed(oid: number, final: boolean): Promise<void>;
  /** The object key of an export (see {@linkcode ExportHandover.exportKey}). */
  exportKey(oid: number, boundary: Lsn): string | null | undefined;
}

/** Options for {@linkcode ReloadCoordinator}. */
export interface ReloadOptions {
  sourceUrl: string | undefined;
  publication: string;
  slot: string;
  dataDir: string;
  /** Where exports are written until they are registered; emptied at start. */
  stagingDir: string;
  workers: number;
  /** Heap tables larger than this are split into block ranges exported in parallel. */
  splitBytes: number;
  /**
   * Bytes of small finished exports held in memory until the stream reaches
   * their boundary (default {@linkcode HELD_EXPORT_BYTES}); the rest wait
   * in staging files.
   */
  heldExportBytes?: number;
  logger: Logger;
  metrics?: StreamMetrics;
  /**
   * With a bucket: exports upload their parts as they are written (and
   * tables are not split: the parts of one object go up in order).
   */
  uploads?: ExportUploads;
}

interface Job {
  oid: number;
  schema: string;
  table: string;
  ops: ReloadRequest[];
  size: number;
  /** Where the export is written until the stream registers it. */
  stageDir: string;
  /** Abandoned (DDL changed the table after C): its result is thrown away. */
  stale: boolean;
  /** A large heap table exported by several workers, one block range each. */
  split?: {
    oid: number;
    parts: ExportPart[];
    sealed: SealedPart[];
    bytes: number;
    failed: boolean;
  };
}

/** A snapshot being made for some jobs. */
interface Making {
  jobs: Job[];
  startedAt: number;
  lastReport: number;
  abort: AbortController;
}

/** One unit of work for an export worker: a whole table or one part of one. */
interface Task {
  job: Job;
  part?: ExportPart;
}

/**
 * Tables one worker exports per transaction. Every COPY keeps an
 * AccessShareLock on its table (and the planner one on each index) until
 * the transaction ends; PostgreSQL's lock table holds
 * max_locks_per_transaction (default 64) × max_connections locks in all.
 */
const TABLES_PER_TRANSACTION = 100;

/** Whole tables a worker exports with one catalog query and one name check. */
const CHUNK_TABLES = 8;
/** Tables at least this large (heap and TOAST) are exported one at a time. */
const CHUNK_MAX_BYTES = 1024 * 1024;

/** Files one worker may have being sealed (finished, fsynced) while it copies the next table. */
const SEALS_PER_WORKER = 4;

/** Staging folders made at once. */
const MKDIR_CONCURRENCY = 64;

/** At most this many parts per table. */
const MAX_PARTS = 16;

const POLL_INTERVAL_MS = 2000;
/** How often to say what a snapshot waits for. */
const WAIT_REPORT_MS = 10_000;
const RETRY_BASE_MS = 2000;
const MAX_RETRY_MS = 5 * 60_000;
const PROGRESS_INTERVAL_MS = 5000;
const BAR_INTERVAL_MS = 250;

function newProgress() {
  return {
    tables: 0,
    done: 0,
    bytes: 0,
    rows: 0,
    totalSize: 0,
    doneSize: 0,
    startedAt: Date.now(),
    lastLog: 0,
    finished: false,
  };
}

/** Finds reload work in the registry and carries it out with a worker pool. */
export class ReloadCoordinator {
  #registry: Registry;
  #catalog: SourceCatalog;
  #opts: ReloadOptions;
  #host: ReloadHost;
  /** Jobs under way (exporting, or sealed and waiting to be registered), by OID. */
  #running = new Map<number, Job>();
  /** Consecutive failures per relation, for the retry backoff. */
  #failures = new Map<number, { count: number; retryAt: number }>();
  /** Snapshots being made: the server may wait for long transactions meanwhile. */
  #making = new Set<Making>();
  /** Snapshots made, or failed, waiting for the loop to take them up. */
  #made: { making: Making; snapshot?: ExportedSnapshot; error?: unknown }[] = [];
  #tasks = new Set<Promise<void>>();
  /** Staging folders shared by whole-table exports, removed once no export runs. */
  #stageDirs = new Set<string>();
  #clients = new Set<pg.Client>();
  #lastPoll = 0;
  /** How long the last search for work took, in ms. */
  #pollCost = 0;
  #stopping = false;
  #seq = 0;
  #progress = newProgress();
  readonly #held: HeldExportBudget;

  constructor(
    registry: Registry,
    catalog: SourceCatalog,
    host: ReloadHost,
    options: ReloadOptions,
  ) {
    this.#registry = registry;
    this.#catalog = catalog;
    this.#host = host;
    this.#opts = options;
    this.#held = new HeldExportBudget(options.heldExportBytes ?? HELD_EXPORT_BYTES);
  }

  /** Relations being exported now. */
  get running(): ReadonlySet<number> {
    return new Set(this.#running.keys());
  }

  /** Throws away the export under way for `oid`; its operations are taken up again. */
  abandon(oid: number): void {
    const job = this.#running.get(oid);
    if (!job) return;
    job.stale = true;
    this.#running.delete(oid);
  }

  /**
   * Takes up snapshots that were made, reports what snapshots wait for, and
   * looks for new work at most every two seconds (always when `force`).
   * Never waits for a snapshot itself: the stream goes on meanwhile.
   */
  async poll(force = false): Promise<void> {
    if (this.#stopping) return;
    const now = Date.now();
    this.#logProgress(now);
    while (this.#made.length > 0) {
      const made = this.#made.shift()!;
      if (made.snapshot) await this.#begin(made.making.jobs, made.snapshot);
      else {
        const message = (made.error as Error).message.split("\n")[0];
        for (const job of made.making.jobs) await this.#failed(job, message, false, made.error);
      }
    }
    if (this.#making.size > 0) await this.#reportWaits(now);
    else this.#opts.metrics?.exportSnapshotWait.set(0);
    if (this.#stageDirs.size > 0 && this.#running.size === 0 && this.#tasks.size === 0) {
      // No export is under way: the shared staging folders hold nothing needed.
      for (const dir of this.#stageDirs) {
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      }
      this.#stageDirs.clear();
    }
    // With thousands of tables a poll reads thousands of rows: space polls
    // so that they take at most a tenth of the time.
    const every = Math.max(POLL_INTERVAL_MS, 10 * this.#pollCost);
    if (!force && now - this.#lastPoll < every) return;
    this.#lastPoll = now;
    const jobs = await this.#findWork(now);
    if (jobs.length > 0) await this.#start(jobs);
  }

  /** Requests missing exports; returns the pending ones to start (not running, not backing off). */
  async #findWork(now: number): Promise<Job[]> {
    const started = performance.now();
    await this.#registry.requestMissingExports(
      await this.#catalog.publishedTables(this.#opts.publication),
    );
    const pending = await this.#registry.pendingReloads();
    await this.#resolveOids(pending);
    const jobs = new Map<number, Job>();
    for (const op of pending) {
      if (op.oid === null) continue;
      if (op.hold !== null) this.#host.holdFor(op.oid, op.hold, op.reason);
      if (this.#running.has(op.oid)) continue;
      const failed = this.#failures.get(op.oid);
      if (failed && failed.retryAt > now) continue;
      const job = jobs.get(op.oid);
      if (job) job.ops.push(op);
      else {
        jobs.set(op.oid, {
          oid: op.oid,
          schema: op.schema,
          table: op.table,
          ops: [op],
          size: 0,
          stageDir: "",
          stale: false,
        });
      }
    }
    this.#pollCost = performance.now() - started;
    return [...jobs.values()];
  }

  /**
   * Binds operations requested by name to the relation that has the name
   * now; an operation whose table no longer exists fails for good.
   */
  async #resolveOids(ops: ReloadRequest[]): Promise<void> {
    const open = ops.filter((o) => o.oid === null);
    if (open.length === 0) return;
    const oids = await this.#catalog.relationOids(open);
    const gone: ReloadRequest[] = [];
    open.forEach((o, i) => {
      const oid = oids[i];
      if (oid === null) gone.push(o);
      else o.oid = oid;
    });
    if (gone.length > 0) await this.#registry.noteReloadError(gone, "table does not exist", true);
  }

  async #start(jobs: Job[]): Promise<void> {
    // Largest first, so the long exports overlap the short ones. A
    // partitioned table has no storage of its own: count its partitions.
    const sizes = await this.#catalog.tableSizes(jobs.map((j) => j.oid));
    jobs.forEach((j, i) => j.size = sizes[i]);
    jobs.sort((a, b) => b.size - a.size);
    await this.#planSplits(jobs);
    const slotName = `${this.#opts.slot}_export_${Deno.pid}_${++this.#seq}`.slice(0, 63);
    // Whole-table exports share one staging folder; a split table has its own for its parts.
    const shared = join(this.#opts.stagingDir, String(this.#seq));
    this.#stageDirs.add(shared);
    for (const j of jobs) {
      j.stageDir = j.split ? join(this.#opts.stagingDir, `${j.oid}-${this.#seq}`) : shared;
      this.#running.set(j.oid, j);
    }
    try {
      await this.#host.beginExports(jobs);
    } catch (error) {
      for (const j of jobs) this.#running.delete(j.oid);
      throw error;
    }
    const making: Making = {
      jobs,
      startedAt: Date.now(),
      lastReport: 0,
      abort: new AbortController(),
    };
    this.#making.add(making);
    exportSnapshot(this.#opts.sourceUrl, slotName, making.abort.signal).then(
      (snapshot) => this.#made.push({ making, snapshot }),
      (error) => this.#made.push({ making, error }),
    ).finally(() => this.#making.delete(making));
  }

  /** A snapshot was made: the jobs learn their boundary and the workers start. */
  async #begin(all: Job[], snapshot: ExportedSnapshot): Promise<void> {
    const jobs = all.filter((j) => !j.stale && !this.#stopping);
    if (jobs.length === 0) {
      await snapshot.release();
      return;
    }
    try {
      await this.#host.boundaryKnown(jobs.map((j) => j.oid), snapshot.lsn);
      await this.#registry.startReloads(
        jobs.flatMap((j) => j.ops),
        snapshot.lsn,
        new Map(jobs.map((j) => [j.oid, {
          schema: j.schema,
          table: j.table,
          tableDir: tableDirName(j.schema, j.table),
        }])),
        (op) => op.oid!,
      );
    } catch (error) {
      for (const j of jobs) this.#running.delete(j.oid);
      await snapshot.release();
      throw error;
    }
    if (this.#progress.done >= this.#progress.tables) this.#progress = newProgress();
    this.#progress.tables += jobs.length;
    for (const j of jobs) this.#progress.totalSize += j.size;
    this.#opts.logger.info("export started", {
      tables: jobs.length,
      lsn: formatLsn(snapshot.lsn),
      workers: Math.min(this.#opts.workers, jobs.length),
    });
    // The staging folders (no fsync: staging is emptied at start).
    const dirs = [...new Set(jobs.map((j) => j.stageDir))];
    await eachLimited(dirs, MKDIR_CONCURRENCY, async (dir) => {
      await Deno.mkdir(dir, { recursive: true, mode: DIR_MODE });
    });
    const task = this.#runJobs(jobs, snapshot).finally(() => this.#tasks.delete(task));
    this.#tasks.add(task);
  }

  /**
   * Says what a snapshot being made waits for: the oldest transaction that
   * has an xid, or the oldest prepared transaction. Logged, counted in a
   * metric and noted on the reload operations (shown by `status`).
   */
  async #reportWaits(now: number): Promise<void> {
    let oldest = 0;
    for (const m of this.#making) oldest = Math.max(oldest, now - m.startedAt);
    this.#opts.metrics?.exportSnapshotWait.set(oldest / 1000);
    const due = [...this.#making].filter((m) =>
      now - m.startedAt >= WAIT_REPORT_MS && now - m.lastReport >= WAIT_REPORT_MS
    );
    if (due.length === 0) return;
    const blocker = await this.#catalog.oldestTransaction().catch(() => null);
    for (const m of due) {
      m.lastReport = now;
      const waited = Math.round((now - m.startedAt) / 1000);
      const text = `waiting ${waited}s for a snapshot: ${blocker ?? "running transactions"}`;
      this.#opts.logger.warn("export waits for a snapshot", {
        tables: m.jobs.map((j) => `${j.schema}.${j.table}`).join(", "),
        waited_s: waited,
        blocker: blocker ?? "unknown",
        fix: "the export starts when that transaction ends; COMMIT or ROLLBACK it to go on",
      });
      await this.#registry.noteWaiting(m.jobs.flatMap((j) => j.ops), text).catch(() => {});
    }
  }

  /**
   * Splits heap tables above `splitBytes` into block ranges (TID range
   * scans), so several workers export one big table; the parts are gzip
   * members joined into one file.
   */
  async #planSplits(jobs: Job[]): Promise<void> {
    if (this.#opts.workers < 2 || this.#opts.uploads) return;
    for (const job of jobs) {
      if (job.size < this.#opts.splitBytes) continue;
      const row = await this.#catalog.heapBlocks(job.oid);
      if (!row || row.relkind !== "r") continue;
      const blocks = row.blocks;
      const count = Math.min(MAX_PARTS, Math.ceil(job.size / this.#opts.splitBytes), blocks);
      if (count < 2) continue;
      const step = Math.ceil(blocks / count);
      const parts: ExportPart[] = [];
      for (let i = 0; i < count; i++) {
        // The last range is open-ended: the table may have grown since we measured it.
        parts.push({ index: i, from: i * step, to: i === count - 1 ? null : (i + 1) * step });
      }
      job.split = { oid: job.oid, parts, sealed: [], bytes: 0, failed: false };
    }
  }

  async #runJobs(jobs: Job[], snapshot: ExportedSnapshot): Promise<void> {
    const queue: Task[] = jobs.flatMap((job) =>
      job.split ? job.split.parts.map((part) => ({ job, part })) : [{ job }]
    );
    const workers = Math.min(this.#opts.workers, queue.length);
    // The queue is consumed from its head: O(1) per task, whatever its length.
    let head = 0;
    // The snapshot is released once no worker can start a transaction on it
    // any more: every task is taken and no import is under way. (Held
    // longer, its temporary slot would keep WAL for the rest of the export.)
    let busy = workers;
    let released = false;
    const release = async () => {
      if (released || head < queue.length || busy > 0) return;
      released = true;
      await snapshot.release();
    };
    const worker = async () => {
      let client: pg.Client | null = null;
      const sealings = new Set<Promise<void>>();
      try {
        client = await connect(this.#opts.sourceUrl, { applicationName: "cdc-egress/export" });
        this.#clients.add(client);
        await useSnapshot(client, snapshot.name);
      } finally {
        busy--;
        await release();
      }
      try {
        // A worker exports many tables in one transaction, but not too many:
        // each COPY keeps its locks until the transaction ends, and the
        // server's lock table is shared and bounded. A new transaction on the
        // same snapshot sees exactly the same rows.
        let inTransaction = 0;
        let failed = false;
        while (!this.#stopping && head < queue.length) {
          if (failed || inTransaction >= TABLES_PER_TRANSACTION) {
            // After a failure the transaction is aborted: go on in a new one
            // on the same snapshot (the failed table is retried later).
            busy++;
            try {
              await client.query(failed ? "ROLLBACK" : "COMMIT");
              if (head >= queue.length) break;
              await useSnapshot(client, snapshot.name);
            } finally {
              busy--;
            }
            inTransaction = 0;
            failed = false;
          }
          const next = queue[head];
          if (next.part && next.job.split) {
            head++;
            await release();
            inTransaction++;
            const job = next.job as Job & { split: NonNullable<Job["split"]> };
            failed = !await this.#runPart(client, job, snapshot, next.part);
          } else {
            // Whole tables go in small chunks: one catalog query and one
            // name check per chunk instead of one each per table.
            // Only small tables share a chunk, and no worker takes more than
            // its share of what is left: the large ones still go to
            // different workers first.
            const fair = Math.ceil((queue.length - head) / workers);
            const room = Math.max(
              1,
              Math.min(CHUNK_TABLES, fair, TABLES_PER_TRANSACTION - inTransaction),
            );
            const chunk: Job[] = [queue[head++].job];
            while (
              chunk[0].size < CHUNK_MAX_BYTES && chunk.length < room && head < queue.length &&
              !queue[head].part && queue[head].job.size < CHUNK_MAX_BYTES
            ) {
              chunk.push(queue[head++].job);
            }
            inTransaction += chunk.length;
            // Busy: a failure puts the chunk's other tables back in the queue.
            busy++;
            try {
              const done = await this.#runChunk(client, chunk, snapshot, sealings);
              failed = !done.ok;
              for (const job of done.retry) queue.push({ job });
            } finally {
              busy--;
            }
            await release();
          }
          // Bounded: each file being sealed holds a descriptor and a deflate state.
          while (sealings.size >= SEALS_PER_WORKER) await Promise.race(sealings);
        }
      } finally {
        await Promise.all(sealings);
        this.#clients.delete(client);
        await client.query("COMMIT").catch(() => {});
        await client.end().catch(() => {});
      }
    };
    let results: PromiseSettledResult<void>[];
    try {
      results = await Promise.allSettled(Array.from({ length: workers }, worker));
    } finally {
      if (!released) {
        released = true;
        await snapshot.release();
      }
    }
    queue.splice(0, head);
    // Jobs no worker could take (a worker failed to connect) are retried later.
    for (const task of queue) await this.#failed(task.job, "no export worker could take it", false);
    for (const r of results) {
      if (r.status === "rejected" && !this.#stopping) {
        this.#opts.logger.error("export worker failed", { error: String(r.reason?.message) });
      }
    }
  }

  /**
   * Exports whole tables in the worker's snapshot transaction: one catalog
   * query for all of them, a COPY each, one name check for all of them
   * (each COPY's lock keeps its name in place until the transaction ends),
   * then their files are sealed while the worker goes on. When a statement
   * fails, which ends the transaction, that table is retried later with a
   * fresh snapshot and the chunk's other tables are returned in `retry`,
   * to be exported in the worker's next transaction on the same snapshot.
   */
  async #runChunk(
    client: pg.Client,
    jobs: Job[],
    snapshot: ExportedSnapshot,
    sealings: Set<Promise<void>>,
  ): Promise<{ ok: boolean; retry: Job[] }> {
    const live = jobs.filter((j) => !j.stale);
    if (live.length === 0) return { ok: true, retry: [] };
    const started = performance.now();
    const message = (error: unknown) => (error as Error).message.split("\n")[0];
    let described: Map<number, DescribedRelation>;
    try {
      described = await describeRelations(client, live.map((j) => j.oid), snapshot.lsn);
    } catch (error) {
      for (const job of live) {
        if (!this.#stopping) await this.#failed(job, message(error), false, error);
      }
      return { ok: false, retry: [] };
    }
    const copied: { job: Job; copy: CopiedTable; bytes: () => number }[] = [];
    for (const [i, job] of live.entries()) {
      const rel = described.get(job.oid);
      if (rel === undefined) {
        // Gone before the snapshot: nothing to export, ever.
        await this.#failed(job, "table does not exist", true);
        continue;
      }
      let counted = 0;
      const onBytes = (bytes: number) => {
        this.#progress.bytes += bytes - counted;
        counted = bytes;
      };
      try {
        const copy = await copyTable(
          client,
          job.oid,
          snapshot.lsn,
          this.#opts.dataDir,
          job.stageDir,
          onBytes,
          rel,
          { checkName: false, held: this.#held, open: this.#streamInto(job, snapshot.lsn) },
        );
        copied.push({ job, copy, bytes: () => counted });
      } catch (error) {
        // Not name-checked, and the transaction is over: export them again.
        for (const c of copied) await c.copy.abort();
        if (this.#stopping) return { ok: false, retry: [] };
        await this.#failed(job, message(error), false, error);
        return { ok: false, retry: [...copied.map((c) => c.job), ...live.slice(i + 1)] };
      }
    }
    let moved: Set<number>;
    try {
      moved = await namesMoved(
        client,
        copied.map((c) => ({ oid: c.job.oid, schema: c.copy.schema })),
      );
    } catch (error) {
      for (const c of copied) {
        await c.copy.abort();
        if (!this.#stopping) await this.#failed(c.job, message(error), false, error);
      }
      return { ok: false, retry: [] };
    }
    for (const c of copied) {
      if (moved.has(c.job.oid)) {
        await c.copy.abort();
        await this.#failed(
          c.job,
          `table ${
            qualifiedName(c.copy.schema)
          } was renamed or dropped during the export; it is exported again`,
          false,
        );
        continue;
      }
      const { job } = c;
      const csvBytes = c.bytes();
      // The worker goes on while the file is finished and fsynced: the
      // fsyncs of several files overlap.
      const sealing: Promise<void> = c.copy.seal().then(
        (done) => this.#handOver(job, done, snapshot, csvBytes, started),
        async (error) => {
          if (this.#stopping) return;
          await this.#failed(job, message(error), false, error);
        },
      ).catch((error) => {
        this.#opts.logger.error("export failed", { error: String(error?.message) });
      }).finally(() => sealings.delete(sealing));
      sealings.add(sealing);
    }
    return { ok: true, retry: [] };
  }

  /**
   * Exports one part of a split table in the worker's snapshot transaction
   * (the worker that finishes the last part joins them); false when a
   * statement failed, which ends that transaction.
   */
  async #runPart(
    client: pg.Client,
    job: Job & { split: NonNullable<Job["split"]> },
    snapshot: ExportedSnapshot,
    part: ExportPart,
  ): Promise<boolean> {
    const started = performance.now();
    const split = job.split;
    let exp: StagedExport | null = null;
    try {
      if (split.failed || job.stale) return true;
      if (await describeRelation(client, job.oid, snapshot.lsn) === null) {
        // Gone before the snapshot: nothing to export, ever.
        if (split.failed) return true;
        split.failed = true;
        await this.#failed(job, "table does not exist", true);
        return true;
      }
      let counted = 0;
      const onBytes = (bytes: number) => {
        this.#progress.bytes += bytes - counted;
        counted = bytes;
      };
      const dataDir = this.#opts.dataDir;
      split.sealed.push(await exportTablePart(client, job.oid, part, job.stageDir, onBytes));
      split.bytes += counted;
      if (split.sealed.length < split.parts.length) return true;
      exp = await joinParts(client, job.oid, snapshot.lsn, dataDir, job.stageDir, split.sealed);
      await this.#handOver(job, exp, snapshot, split.bytes, started);
      return true;
    } catch (error) {
      await exp?.abort().catch(() => {});
      // Report a split table's failure once; its other parts stop at their next check.
      if (split.failed) return false;
      split.failed = true;
      if (this.#stopping) return false;
      // A later poll starts the table again with a fresh snapshot.
      await this.#failed(job, (error as Error).message.split("\n")[0], false, error);
      return false;
    }
  }

  /** With a bucket: the export's gzip goes up in parts once the stream names its folder. */
  #streamInto(job: Job, boundary: Lsn): BufferedGzipFileOptions["open"] {
    const uploads = this.#opts.uploads;
    if (!uploads) return undefined;
    return (_finalPath, { tempPath, level }) =>
      uploads.open(
        tempPath,
        () => job.stale ? undefined : this.#host.exportKey(job.oid, boundary),
        level,
      );
  }

  /** Hands a sealed export to the stream loop, which registers it at its boundary. */
  async #handOver(
    job: Job,
    done: StagedExport,
    snapshot: ExportedSnapshot,
    csvBytes: number,
    started: number,
  ): Promise<void> {
    if (job.stale) {
      await done.abort();
      return;
    }
    this.#failures.delete(job.oid);
    this.#host.exportSealed(job.oid, {
      ops: job.ops,
      boundary: snapshot.lsn,
      rows: done.rows,
      byteSize: done.byteSize,
      sha256: done.sha256,
      place: (tableDir, batchTs, batch) => done.place(tableDir, batchTs, null, batch),
      publish: (batch) => done.publish(batch),
      abort: () => done.abort(),
      onRegistered: (path) => {
        this.#running.delete(job.oid);
        const table = `${job.schema}.${job.table}`;
        this.#opts.metrics?.fileRegistered(table, "full_reload", done.byteSize, csvBytes);
        this.#progress.done++;
        this.#progress.doneSize += job.size;
        this.#progress.rows += done.rows;
        this.#logProgress(Date.now());
        this.#opts.logger.info("export registered", {
          table,
          path,
          rows: done.rows,
          bytes: done.byteSize,
          lsn: formatLsn(snapshot.lsn),
          parts: job.split?.parts.length ?? 1,
          ms: Math.round(performance.now() - started),
        });
      },
    });
  }

  /** Records a failed job; it is retried with backoff unless `final`. */
  async #failed(job: Job, message: string, final: boolean, cause?: unknown): Promise<void> {
    if (this.#running.get(job.oid) === job) this.#running.delete(job.oid);
    // A split table's own folder; a whole-table export removed its temp file itself.
    if (job.split) await Deno.remove(job.stageDir, { recursive: true }).catch(() => {});
    if (job.stale) return;
    const f = this.#failures.get(job.oid) ?? { count: 0, retryAt: 0 };
    f.count++;
    f.retryAt = Date.now() + Math.min(MAX_RETRY_MS, RETRY_BASE_MS * 2 ** (f.count - 1));
    this.#failures.set(job.oid, f);
    if (!final) {
      // Slots or WAL senders exhausted, a restart: say what to fix, and go on streaming.
      const verdict = cause === undefined ? null : classifyFailure(cause);
      this.#opts.logger.error("export failed; it will be retried", {
        table: `${job.schema}.${job.table}`,
        error: message,
        ...(verdict ? { reason: verdict.reason, fix: verdict.fix } : {}),
        attempt: f.count,
        retry_in_ms: f.retryAt - Date.now(),
      });
    }
    this.#progress.done++;
    await this.#registry.noteReloadError(job.ops, message, final).catch(() => {});
    await this.#host.exportFailed(job.oid, final);
  }

  /**
   * Reports export progress: a bar on a terminal, a log line every few
   * seconds otherwise. The ETA assumes CSV bytes track relation sizes.
   */
  #logProgress(now: number): void {
    const p = this.#progress;
    const logger = this.#opts.logger;
    if (p.tables === 0 || p.finished) return;
    const complete = p.done >= p.tables;
    const every = logger.interactive ? BAR_INTERVAL_MS : PROGRESS_INTERVAL_MS;
    if (!complete && now - p.lastLog < every) return;
    p.lastLog = now;
    const elapsed = (now - p.startedAt) / 1000;
    const fraction = complete
      ? 1
      : p.totalSize > 0
      ? Math.min(0.99, Math.max(p.doneSize, p.bytes) / p.totalSize)
      : p.done / p.tables;
    const eta = fraction > 0 && !complete ? Math.round(elapsed * (1 - fraction) / fraction) : 0;
    const mbPerS = elapsed > 0 ? p.bytes / 1e6 / elapsed : 0;
    if (complete) p.finished = true;
    if (logger.interactive) {
      const width = 24;
      const filled = Math.round(fraction * width);
      logger.status(
        `export [${"#".repeat(filled)}${".".repeat(width - filled)}] ${p.done}/${p.tables} tables` +
          `  ${p.rows.toLocaleString("en-US")} rows  ${(p.bytes / 1e6).toFixed(0)} MB` +
          `  ${mbPerS.toFixed(1)} MB/s  ${
            complete ? `done in ${Math.round(elapsed)}s` : `ETA ${eta}s`
          }`,
        complete,
      );
      return;
    }
    if (complete) return;
    logger.info("export progress", {
      tables_done: p.done,
      tables: p.tables,
      rows_done: p.rows,
      csv_mb: Math.round(p.bytes / 1e6),
      mb_per_s: Math.round(mbPerS),
      elapsed_s: Math.round(elapsed),
      eta_s: eta,
    });
  }

  /** Cancels running exports (their files are removed) and waits for them. */
  async stop(): Promise<void> {
    this.#stopping = true;
    // Exports waiting for their folder's name or for their parts to go up give up.
    this.#opts.uploads?.stop();
    for (const m of this.#making) m.abort.abort();
    while (this.#making.size > 0) await new Promise((r) => setTimeout(r, 10));
    for (const made of this.#made.splice(0)) await made.snapshot?.release();
    for (const c of this.#clients) await c.end().catch(() => {});
    await Promise.allSettled([...this.#tasks]);
    this.#running.clear();
    // Nothing staged survives a stop; leave no empty folders behind either.
    await Deno.remove(this.#opts.stagingDir, { recursive: true }).catch(() => {});
    await Deno.remove(dirname(this.#opts.stagingDir)).catch(() => {});
  }
}
