/**
 * Runs full exports (the initial export of a fresh slot, tables that join
 * the publication, and `reload` requests) inside the stream process, at an
 * exact WAL boundary.
 *
 * The stream loop calls {@linkcode ReloadCoordinator.poll} between frames,
 * so while a snapshot is being created no change is being processed. The
 * snapshot comes from a temporary slot, whose consistent point C splits the
 * table's history exactly: commits before C are in the export, commits at or
 * after C are streamed. Before setting C the table's open batch is closed
 * (its rows are all before C); afterwards rows before C are skipped and rows
 * from C on are held in an open batch until the export is registered, so no
 * streaming file straddles C and none after the export precedes it.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import type { Logger } from "../log.ts";
import { formatLsn, type Lsn } from "../lsn.ts";
import { type Registry, type ReloadRequest, tableKey } from "../registry/registry.ts";
import { connect } from "../source/connect.ts";
import { type ExportedSnapshot, exportSnapshot, useSnapshot } from "../source/export_snapshot.ts";
import type { SourceCatalog } from "../source/source_catalog.ts";
import { qualifiedName } from "../source/table_selection.ts";
import { batchTimestamp, tableDirName } from "../write/table_dir.ts";
import {
  type ExportPart,
  exportTable,
  exportTablePart,
  joinParts,
  type SealedPart,
  type TableExport,
} from "./table_export.ts";
import type { StreamMetrics } from "../observe/metrics.ts";

/** What the coordinator needs from the stream loop. */
export interface ReloadHost {
  /** Closes and registers the open batches of these tables (rows before the boundary). */
  cut(keys: string[]): Promise<void>;
  /** From now on skip the table's rows before `boundary` and hold its batches. */
  hold(key: string, boundary: Lsn): void;
  /** The export is registered: the table's batches may flush again. */
  release(key: string): void;
  /** The last batch timestamp used for a table, to keep folder names increasing. */
  lastBatchTs(key: string): string | undefined;
  /** Records a new batch timestamp for a table. */
  noteBatchTs(key: string, batchTs: string): void;
}

/** Options for {@linkcode ReloadCoordinator}. */
export interface ReloadOptions {
  sourceUrl: string | undefined;
  publication: string;
  slot: string;
  dataDir: string;
  workers: number;
  /** Heap tables larger than this are split into block ranges exported in parallel. */
  splitBytes: number;
  logger: Logger;
  metrics?: StreamMetrics;
}

interface Job {
  key: string;
  schema: string;
  table: string;
  ops: ReloadRequest[];
  size: number;
  /** The export folder's name, taken when the snapshot is, so it sorts before later batches. */
  batchTs: string;
  /** A large heap table exported by several workers, one block range each. */
  split?: {
    oid: number;
    parts: ExportPart[];
    sealed: SealedPart[];
    bytes: number;
    failed: boolean;
  };
}

/** One unit of work for an export worker: a whole table or one part of one. */
interface Task {
  job: Job;
  part?: ExportPart;
}

/** At most this many parts per table. */
const MAX_PARTS = 16;

const POLL_INTERVAL_MS = 2000;
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
  #running = new Set<string>();
  #tasks = new Set<Promise<void>>();
  #clients = new Set<pg.Client>();
  #lastPoll = 0;
  #stopping = false;
  #seq = 0;
  #progress = newProgress();

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
  }

  /** Tables being exported now. */
  get running(): ReadonlySet<string> {
    return this.#running;
  }

  /** Looks for new work at most every two seconds (always when `force`). */
  async poll(force = false): Promise<void> {
    if (this.#stopping) return;
    const now = Date.now();
    this.#logProgress(now);
    if (!force && now - this.#lastPoll < POLL_INTERVAL_MS) return;
    this.#lastPoll = now;
    await this.#registry.requestMissingExports(
      await this.#catalog.publishedTables(this.#opts.publication),
    );
    const pending = await this.#registry.pendingReloads();
    const jobs = new Map<string, Job>();
    for (const op of pending) {
      const key = tableKey(op.schema, op.table);
      if (this.#running.has(key)) continue;
      const job = jobs.get(key);
      if (job) job.ops.push(op);
      else {
        jobs.set(key, { key, schema: op.schema, table: op.table, ops: [op], size: 0, batchTs: "" });
      }
    }
    if (jobs.size > 0) await this.#start([...jobs.values()]);
  }

  async #start(jobs: Job[]): Promise<void> {
    // Largest first, so the long exports overlap the short ones. A
    // partitioned table has no storage of its own: count its partitions.
    const sizes = await this.#catalog.tableSizes(jobs);
    jobs.forEach((j, i) => j.size = sizes[i]);
    jobs.sort((a, b) => b.size - a.size);
    await this.#planSplits(jobs);
    const slotName = `${this.#opts.slot}_export_${Deno.pid}_${++this.#seq}`.slice(0, 63);
    const snapshot = await exportSnapshot(this.#opts.sourceUrl, slotName);
    try {
      await this.#host.cut(jobs.map((j) => j.key));
      for (const j of jobs) {
        this.#running.add(j.key);
        this.#host.hold(j.key, snapshot.lsn);
        j.batchTs = batchTimestamp(new Date(), this.#host.lastBatchTs(j.key));
        this.#host.noteBatchTs(j.key, j.batchTs);
        this.#opts.metrics?.setTableMode(`${j.schema}.${j.table}`, "reloading");
      }
      await this.#registry.startReloads(
        jobs.flatMap((j) => j.ops),
        snapshot.lsn,
        new Map(jobs.map((j) => [j.key, tableDirName(j.schema, j.table)])),
      );
    } catch (error) {
      for (const j of jobs) this.#running.delete(j.key);
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
    const task = this.#runJobs(jobs, snapshot).finally(() => this.#tasks.delete(task));
    this.#tasks.add(task);
  }

  /**
   * Splits heap tables above `splitBytes` into block ranges (TID range
   * scans), so several workers export one big table; the parts are gzip
   * members joined into one file.
   */
  async #planSplits(jobs: Job[]): Promise<void> {
    if (this.#opts.workers < 2) return;
    for (const job of jobs) {
      if (job.size < this.#opts.splitBytes) continue;
      const row = await this.#catalog.heapBlocks(job);
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
      job.split = { oid: Number(row.oid), parts, sealed: [], bytes: 0, failed: false };
    }
  }

  async #runJobs(jobs: Job[], snapshot: ExportedSnapshot): Promise<void> {
    const queue: Task[] = jobs.flatMap((job) =>
      job.split ? job.split.parts.map((part) => ({ job, part })) : [{ job }]
    );
    const workers = Math.min(this.#opts.workers, queue.length);
    let imported = 0;
    const worker = async () => {
      let client: pg.Client | null = null;
      try {
        client = await connect(this.#opts.sourceUrl, { applicationName: "cdc-egress/export" });
        this.#clients.add(client);
        await useSnapshot(client, snapshot.name);
      } finally {
        // Once every worker has imported it, the snapshot is no longer needed.
        if (++imported === workers) await snapshot.release();
      }
      try {
        let task: Task | undefined;
        while (!this.#stopping && (task = queue.shift())) {
          await this.#runJob(client, task.job, snapshot, task.part);
        }
      } finally {
        this.#clients.delete(client);
        await client.query("COMMIT").catch(() => {});
        await client.end().catch(() => {});
      }
    };
    const results = await Promise.allSettled(Array.from({ length: workers }, worker));
    // Jobs no worker could take (a worker failed to connect) are retried later.
    for (const task of queue) this.#running.delete(task.job.key);
    for (const r of results) {
      if (r.status === "rejected" && !this.#stopping) {
        this.#opts.logger.error("export worker failed", { error: String(r.reason?.message) });
      }
    }
  }

  async #runJob(
    client: pg.Client,
    job: Job,
    snapshot: ExportedSnapshot,
    part?: ExportPart,
  ): Promise<void> {
    const started = performance.now();
    let exp: TableExport | null = null;
    try {
      if (job.split?.failed) return;
      const oid = await client.query("SELECT to_regclass($1)::int8 AS oid", [qualifiedName(job)]);
      if (oid.rows[0].oid === null) {
        // Gone before the snapshot: nothing to export, ever.
        if (job.split) {
          if (job.split.failed) return;
          job.split.failed = true;
        }
        await this.#registry.noteReloadError(job.ops, "table does not exist", true);
        this.#host.release(job.key);
        this.#running.delete(job.key);
        this.#progress.done++;
        return;
      }
      const batchTs = job.batchTs;
      let counted = 0;
      const onBytes = (bytes: number) => {
        this.#progress.bytes += bytes - counted;
        counted = bytes;
      };
      const split = job.split;
      if (part && split) {
        const dir = this.#opts.dataDir;
        split.sealed.push(await exportTablePart(client, split.oid, part, dir, batchTs, onBytes));
        split.bytes += counted;
        // The worker that finishes the last part joins them and registers the table.
        if (split.sealed.length < split.parts.length) return;
        counted = split.bytes;
        exp = await joinParts(client, split.oid, snapshot.lsn, dir, batchTs, split.sealed);
      } else {
        exp = await exportTable(
          client,
          Number(oid.rows[0].oid),
          snapshot.lsn,
          this.#opts.dataDir,
          batchTs,
          onBytes,
        );
      }
      await this.#registry.finishReload(job.ops, {
        schema: job.schema,
        table: job.table,
        tableDir: exp.tableDir,
        batchTs,
        path: exp.path,
        fileType: "full_reload",
        startLsn: snapshot.lsn,
        endLsn: snapshot.lsn,
        startSeq: null,
        endSeq: null,
        rowCount: exp.rows,
        byteSize: exp.byteSize,
        sha256: exp.sha256,
        hasDdl: false,
      }, Number(oid.rows[0].oid));
      await exp.publish();
      this.#host.release(job.key);
      const table = `${job.schema}.${job.table}`;
      this.#opts.metrics?.setTableMode(table, "streaming");
      this.#opts.metrics?.fileRegistered(table, "full_reload", exp.byteSize, counted);
      this.#running.delete(job.key);
      this.#progress.done++;
      this.#progress.doneSize += job.size;
      this.#progress.rows += exp.rows;
      this.#logProgress(Date.now());
      this.#opts.logger.info("export registered", {
        table: `${job.schema}.${job.table}`,
        path: exp.path,
        rows: exp.rows,
        bytes: exp.byteSize,
        lsn: formatLsn(snapshot.lsn),
        parts: job.split?.parts.length ?? 1,
        ms: Math.round(performance.now() - started),
      });
    } catch (error) {
      await exp?.abort().catch(() => {});
      if (job.split) {
        // Report a split table's failure once; its other parts stop at their next check.
        if (job.split.failed) return;
        job.split.failed = true;
      }
      this.#running.delete(job.key);
      if (this.#stopping) return;
      const message = (error as Error).message.split("\n")[0];
      this.#opts.logger.error("export failed; it will be retried", {
        table: `${job.schema}.${job.table}`,
        error: message,
      });
      await this.#registry.noteReloadError(job.ops, message, false).catch(() => {});
      // The snapshot is gone with this worker's transaction; the next poll
      // starts the table again with a fresh one.
      throw error;
    }
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
    for (const c of this.#clients) await c.end().catch(() => {});
    await Promise.allSettled([...this.#tasks]);
  }
}
