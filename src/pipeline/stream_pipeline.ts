/**
 * The stream process's core: replication frames in, registered files out,
 * acknowledgements back.
 *
 * Exactly-once rests on three rules:
 * 1. Every change has a position (commit LSN, seq); a table's registry
 *    state holds the position of its last registered row, and changes at or
 *    before it are skipped when PostgreSQL sends them again.
 * 2. A file is fsynced before the registry transaction that records it and
 *    the table's new position; it is renamed to its final name after.
 * 3. The slot is acknowledged only up to the checkpoint, the end of the
 *    newest transaction that has nothing left in an open batch, and only
 *    after the registry holds that checkpoint.
 *
 * Tables are relations (OIDs). What happens to each change of a table, and
 * when its exports may be registered, is decided by its
 * {@linkcode TableLife} (table_lifecycle.ts); this loop carries it out.
 */

import { join } from "node:path";
import { flushDecision, type FlushReason } from "../batch/flush_policy.ts";
import { STREAMING_FILE, TableBatch } from "../batch/table_batch.ts";
import { TransactionSpool } from "../batch/transaction_spool.ts";
import { type ChangeMessage, encodeChangeRow } from "../batch/change_row.ts";
import { decodeCopyFrame } from "../decode/copy_frame.ts";
import {
  formatCommitTime,
  PgoutputDecoder,
  type PgoutputMessage,
  type PgoutputProtocol,
} from "../decode/pgoutput.ts";
import { CdcError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { formatLsn, type Lsn, maxLsn, minLsn } from "../lsn.ts";
import type {
  FileRecord,
  Registry,
  TablePosition,
  TableState,
  TableStateUpdate,
} from "../registry/registry.ts";
import type { ReplicationStream } from "../source/replication_stream.ts";
import { batchTimestamp } from "../write/table_dir.ts";
import { eachLimited } from "../write/each_limited.ts";
import { syncGroup } from "../write/group_sync.ts";
import { WriterPool } from "../write/writer_pool.ts";
import { ddlEventFromRow } from "./ddl_events.ts";
import { DdlHandler, type DdlHost } from "./ddl_handler.ts";
import { ExportHandover, type HandoverHost, type TableName } from "./export_handover.ts";
import { type RelationInfo, relationInfo, type SchemaLookup } from "./relation_catalog.ts";
import type { ReloadCoordinator, ReloadHost } from "./reload_coordinator.ts";
import {
  newLife,
  noteRegistered,
  openGate,
  reachesBoundary,
  rowAction,
  type TableLife,
} from "./table_lifecycle.ts";
import type { StreamMetrics } from "../observe/metrics.ts";

/** Settings of the pipeline. */
export interface PipelineOptions {
  dataDir: string;
  protocol: PgoutputProtocol;
  limits: { maxRows: number; maxBytes: number; intervalMs: number };
  /**
   * Open batch files (file descriptors and deflate contexts) at most; more
   * tables with large batches take turns (`writer_pool.ts`).
   */
  maxOpenFiles: number;
  /**
   * Bytes of CSV that open batches may hold in memory together; beyond it the
   * largest move to their files.
   */
  memoryBudget: number;
  /**
   * With a bucket, the spool's bound (`spool_budget.ts`): when full, the open
   * batches are flushed, and the stream reads no WAL until they are uploaded.
   */
  spool?: { full(openBytes: number): boolean; evict(): Promise<void> };
  /** The slot's confirmed_flush_lsn at start: everything before it is done. */
  startLsn: Lsn;
  /** What the registry holds per relation, keyed by OID. */
  tables: Map<number, TableState>;
  /** Whether DDL that changes existing rows without row events triggers a reload. */
  reloadAfterDdl: "auto" | "never";
  /** Called when CREATE TABLE is seen, to add a matching table to the publication. */
  onCreateTable?: (schema: string, table: string) => Promise<void>;
  metrics?: StreamMetrics;
  logger: Logger;
}

interface Txn {
  commitLsn: Lsn;
  xid: number;
  seq: number;
  lsnText: string;
  tsText: string;
  xidText: string;
}

const STATUS_INTERVAL_MS = 10_000;
/** XLogData frames: 'w', WAL start, WAL end, send time, then one pgoutput message. */
const XLOGDATA = 0x77;
const XLOGDATA_HEADER = 1 + 8 + 8 + 8;
const IDLE_CHECKPOINT_INTERVAL_MS = 10_000;
/** Batches completed (compressed and written) at once by a flush. */
const FINISH_CONCURRENCY = 8;

/** Counters the pipeline exposes (status, metrics, tests). */
export interface PipelineStats {
  rowsWritten: number;
  rowsSkipped: number;
  filesWritten: number;
  bytesWritten: number;
  transactions: number;
}

/** Runs the replication stream into files until stopped. */
export class StreamPipeline {
  readonly stats: PipelineStats = {
    rowsWritten: 0,
    rowsSkipped: 0,
    filesWritten: 0,
    bytesWritten: 0,
    transactions: 0,
  };
  #opts: PipelineOptions;
  #registry: Registry;
  #schemas: SchemaLookup;
  #stream: ReplicationStream;
  #decoder: PgoutputDecoder;
  #replayDecoder: PgoutputDecoder;
  #spool: TransactionSpool;
  #relations = new Map<number, RelationInfo>();
  /** Every captured relation's life, by OID. */
  #lives = new Map<number, TableLife>();
  /** Every known relation's current name, by OID (dropped ones included). */
  #names = new Map<number, TableName>();
  /** The relations each qualified name has meant, to see a name change hands. */
  #nameOwners = new Map<string, Set<number>>();
  /** The newest folder name per table dir, so names only grow. */
  #lastBatchTs = new Map<string, string>();
  #batches = new Map<number, TableBatch>();
  #pool: WriterPool;
  /** Memory the open batches' buffers hold, by their last count. */
  #batchMemory = 0;
  /** Exports under way: what they hold, their boundaries, their registration. */
  #handover: ExportHandover;
  #txn: Txn | null = null;
  #streamXid: number | null = null;
  /** End LSN of the newest fully processed transaction. */
  #lastCommitEnd: Lsn;
  /** Newest server position known to have no unsent changes for us (keepalive). */
  #lastWalEnd: Lsn;
  /** The checkpoint the registry holds and the slot was told. */
  #durable: Lsn;
  #lastStatusAt = 0;
  #lastIdleSaveAt = 0;
  #lastIdleCheckAt = 0;
  #pendingShownAt = 0;
  /** The row count last shown per open batch (cdc_table_pending_changes). */
  #pendingShown = new WeakMap<TableBatch, number>();
  #stopping = false;
  /** Captured DDL: its folders, and the exports it calls for. */
  #ddl: DdlHandler;
  #reloads: ReloadCoordinator | null = null;

  constructor(
    registry: Registry,
    schemas: SchemaLookup,
    stream: ReplicationStream,
    options: PipelineOptions,
  ) {
    this.#opts = options;
    this.#registry = registry;
    this.#schemas = schemas;
    this.#stream = stream;
    this.#decoder = new PgoutputDecoder({ protocol: options.protocol });
    this.#replayDecoder = new PgoutputDecoder({ protocol: options.protocol });
    // Spooled records were read inside a stream block, where data messages
    // carry an xid; put the replay decoder into that state once.
    if (options.protocol >= 2) this.#replayDecoder.decode(Uint8Array.of(0x53, 0, 0, 0, 0, 1));
    this.#spool = new TransactionSpool(join(options.dataDir, ".spool"));
    this.#pool = new WriterPool(options.maxOpenFiles);
    this.#handover = new ExportHandover(
      this.#handoverHost(),
      registry,
      options.dataDir,
      options.metrics,
    );
    this.#ddl = new DdlHandler(this.#ddlHost());
    this.#lastCommitEnd = options.startLsn;
    this.#lastWalEnd = options.startLsn;
    this.#durable = options.startLsn;
    for (const [oid, t] of options.tables) {
      this.#lives.set(oid, newLife(oid, t));
      this.#setName(oid, { schema: t.schema, table: t.table, tableDir: t.tableDir });
      const known = this.#lastBatchTs.get(t.tableDir);
      if (t.lastBatchTs && (!known || t.lastBatchTs > known)) {
        this.#lastBatchTs.set(t.tableDir, t.lastBatchTs);
      }
    }
  }

  /** The LSN the registry holds and the slot was acknowledged to. */
  get durableLsn(): Lsn {
    return this.#durable;
  }

  /** Attaches the coordinator that runs exports between frames. */
  attachReloads(make: (host: ReloadHost) => ReloadCoordinator): void {
    this.#reloads = make({
      holdFor: (oid, hold, reason) => openGate(this.#life(oid), hold, reason),
      beginExports: (tables) => this.#handover.begin(tables),
      boundaryKnown: (oids, boundary) => this.#handover.boundaryKnown(oids, boundary),
      exportSealed: (oid, sealed) => this.#handover.sealed(oid, sealed),
      exportFailed: (oid, final) => this.#handover.failed(oid, final),
      exportKey: (oid, boundary) => this.#handover.exportKey(oid, boundary),
    });
  }

  /**
   * Bytes the stream keeps locally that it can only give back after reading
   * on: files and open batches held for an export that waits for its
   * boundary, and transactions still in progress (spooled).
   */
  get heldBytes(): number {
    let n = this.#handover.held.bytes + this.#spool.bytes;
    for (const b of this.#batches.values()) if (b.held) n += b.bytes;
    return n;
  }

  /** Asks the loop to flush, acknowledge and return. */
  stop(): void {
    this.#stopping = true;
  }

  /** Processes frames until {@linkcode stop}; flushes everything on the way out. */
  async run(): Promise<void> {
    await this.#spool.reset();
    try {
      // Start pending exports before the first change is processed.
      await this.#reloads?.poll(true);
      while (!this.#stopping) {
        const frame = await this.#stream.next(1000);
        if (frame) {
          const pending = this.#onFrame(frame);
          if (pending !== undefined) await pending;
          // Drain what is already queued without timers. Most frames need no
          // I/O and are handled synchronously: no promise per frame.
          let more: Uint8Array | undefined;
          let n = 0;
          while (!this.#stopping && n++ < 10_000 && (more = this.#stream.poll())) {
            const pending = this.#onFrame(more);
            if (pending !== undefined) await pending;
          }
        }
        await this.#tick();
      }
      await this.#reloads?.stop();
      await this.#flushAll("shutdown");
      await this.#dropHeld();
      this.#sendStatus(true);
    } finally {
      await this.#reloads?.stop();
      await this.#spool.close();
    }
  }

  /** Aborts open batches and held files without registering them (after a failure). */
  async discard(): Promise<void> {
    await this.#dropHeld();
    for (const batch of this.#batches.values()) await batch.abort(this.#pool).catch(() => {});
    this.#batches.clear();
    this.#batchMemory = 0;
    await this.#spool.close().catch(() => {});
  }

  /** Held work belongs after an export that is not registered: it is sent again after a restart. */
  async #dropHeld(): Promise<void> {
    for (const batch of [...this.#batches.values()]) {
      if (!batch.held) continue;
      await this.#dropBatch(batch).catch(() => {});
    }
    await this.#handover.dropAll();
  }

  /** What the export hand-over may ask of this loop. */
  #handoverHost(): HandoverHost {
    return {
      life: (oid) => this.#life(oid),
      name: (oid) => this.#names.get(oid),
      setName: (oid, name) => this.#setName(oid, name),
      nextBatchTs: (dir) => this.#nextBatchTs(dir),
      lastBatchTs: (dir) => this.#lastBatchTs.get(dir),
      openBatch: (oid) => this.#batches.get(oid),
      close: (oids) => this.#close(oids, "reload"),
      dropBatch: async (oid) => {
        const batch = this.#batches.get(oid);
        if (batch) await this.#dropBatch(batch);
      },
      processed: () =>
        this.#txn
          ? { lsn: this.#txn.commitLsn, seq: this.#txn.seq - 1 }
          : { lsn: this.#lastCommitEnd, seq: -1 },
      frontier: () => this.#frontier(),
      checkpoint: () => this.#checkpoint(),
      registered: (checkpoint, files) => {
        for (const f of files) {
          this.stats.filesWritten++;
          this.stats.bytesWritten += f.byteSize;
        }
        this.#durable = maxLsn(this.#durable, checkpoint);
        this.#sendStatus(true);
      },
    };
  }

  /** What the DDL handler may ask of this loop. */
  #ddlHost(): DdlHost {
    const opts = this.#opts;
    return {
      dataDir: opts.dataDir,
      registry: this.#registry,
      handover: this.#handover,
      reloadAfterDdl: opts.reloadAfterDdl,
      logger: opts.logger,
      metrics: opts.metrics,
      findLife: (oid) => this.#lives.get(oid),
      name: (oid) => this.#names.get(oid),
      setName: (oid, name) => this.#setName(oid, name),
      nameOwners: (schema, table) => this.#nameOwners.get(`${schema}\0${table}`),
      nextBatchTs: (dir) => this.#nextBatchTs(dir),
      openBatch: (oid) => this.#batches.get(oid),
      close: (oids) => this.#close(oids, "ddl"),
      checkpoint: () => this.#checkpoint(),
      lastCommitEnd: () => this.#lastCommitEnd,
      registered: (checkpoint) => {
        this.#durable = maxLsn(this.#durable, checkpoint);
      },
      describeOid: (oid, lsn) => this.#schemas.describeOid(oid, lsn),
      abandonExport: (oid) => this.#reloads?.abandon(oid),
      onCreateTable: opts.onCreateTable,
    };
  }

  #life(oid: number): TableLife {
    let life = this.#lives.get(oid);
    if (life === undefined) {
      life = newLife(oid);
      this.#lives.set(oid, life);
    }
    return life;
  }

  /**
   * Handles one frame. Returns a promise only when the frame needed I/O
   * (a spool write, a drain to gzip, a flush); the common case of a change
   * appended to an open batch stays synchronous.
   */
  #onFrame(bytes: Uint8Array): Promise<void> | undefined {
    let data: Uint8Array;
    if (bytes[0] === XLOGDATA && bytes.length >= XLOGDATA_HEADER) {
      // Nearly every frame: skip decoding the header's positions and time,
      // which nothing here uses.
      data = bytes.subarray(XLOGDATA_HEADER);
    } else {
      const frame = decodeCopyFrame(bytes);
      if (frame.type === "keepalive") {
        if (frame.walEnd > this.#lastWalEnd) this.#lastWalEnd = frame.walEnd;
        if (frame.replyRequested) this.#sendStatus(true);
        return undefined;
      }
      data = frame.data;
    }
    const msg = this.#decoder.decode(data);
    if (this.#streamXid !== null && msg.type !== "streamStop" && msg.type !== "streamStart") {
      // Inside a stream block: keep the change until its transaction commits.
      if (msg.type === "streamAbort" || msg.type === "streamCommit") {
        throw new CdcError("protocol", `Unexpected ${msg.type} inside a stream block`);
      }
      const subXid = "xid" in msg && typeof msg.xid === "number" ? msg.xid : this.#streamXid;
      return this.#spool.append(this.#streamXid, subXid, data);
    }
    return this.#onMessage(msg);
  }

  /** Like {@linkcode #onFrame}: a promise only when the message needed I/O. */
  #onMessage(msg: PgoutputMessage): Promise<void> | undefined {
    switch (msg.type) {
      case "begin":
        this.#beginTxn(msg.finalLsn, msg.commitTime, msg.xid);
        return undefined;
      case "commit":
        return this.#commitTxn(msg.endLsn);
      case "relation":
        this.#onRelation(msg);
        return undefined;
      case "insert":
      case "update":
      case "delete":
        return this.#onChange(msg);
      case "truncate":
        return this.#onChangeSlow(msg);
      case "streamStart":
        this.#streamXid = msg.xid;
        return undefined;
      case "streamStop":
        this.#streamXid = null;
        return undefined;
      case "streamAbort":
        return this.#spool.abort(msg.xid, msg.subXid);
      case "streamCommit":
        return this.#onStreamCommit(msg);
      case "message":
        // A non-transactional message (our heartbeat) decoded outside any
        // transaction: everything committed before it has been sent.
        if ((msg.flags & 1) === 0 && this.#txn === null && msg.lsn > this.#lastWalEnd) {
          this.#lastWalEnd = msg.lsn;
        }
        return undefined;
      default:
        // Origin and Type carry nothing we write.
        return undefined;
    }
  }

  async #onStreamCommit(msg: Extract<PgoutputMessage, { type: "streamCommit" }>): Promise<void> {
    this.#beginTxn(msg.commitLsn, msg.commitTime, msg.xid);
    for await (const record of this.#spool.replay(msg.xid)) {
      const inner = this.#replayDecoder.decode(record.bytes);
      const pending = this.#onMessage(inner);
      if (pending !== undefined) await pending;
    }
    const pending = this.#commitTxn(msg.endLsn);
    if (pending !== undefined) await pending;
  }

  #beginTxn(commitLsn: Lsn, commitTime: bigint, xid: number): void {
    this.#txn = {
      commitLsn,
      xid,
      seq: 0,
      // Strings, not bytes: a small Uint8Array per transaction costs more
      // than CsvRowEncoder.fieldText's copy of these short ASCII texts.
      lsnText: formatLsn(commitLsn),
      tsText: formatCommitTime(commitTime),
      xidText: String(xid),
    };
  }

  #commitTxn(endLsn: Lsn): Promise<void> | undefined {
    this.#txn = null;
    this.stats.transactions++;
    if (endLsn > this.#lastCommitEnd) this.#lastCommitEnd = endLsn;
    return this.#flushDue(false);
  }

  #onRelation(msg: Extract<PgoutputMessage, { type: "relation" }>): void {
    const rel = relationInfo(msg);
    this.#relations.set(msg.relationId, rel);
    if (!rel.captured) return;
    this.#life(rel.key);
    this.#setName(rel.key, { schema: rel.schema, table: rel.table, tableDir: rel.tableDir });
  }

  #setName(oid: number, name: TableName): void {
    this.#names.set(oid, name);
    const key = `${name.schema}\0${name.table}`;
    const owners = this.#nameOwners.get(key) ?? new Set<number>();
    owners.add(oid);
    this.#nameOwners.set(key, owners);
  }

  /**
   * The common case of {@linkcode #onChangeSlow} without a promise: a change
   * of a streaming table with an open batch of the same column set, appended
   * synchronously; anything else (and any I/O afterwards) goes the slow way.
   */
  #onChange(
    msg: Extract<PgoutputMessage, { type: "insert" | "update" | "delete" }>,
  ): Promise<void> | undefined {
    const txn = this.#txn;
    const rel = this.#relations.get(msg.relationId);
    if (txn === null || rel === undefined || !rel.captured) return this.#onChangeSlow(msg);
    const life = this.#lives.get(rel.key);
    const batch = this.#batches.get(rel.key);
    if (
      life === undefined || life.gate !== null || batch === undefined ||
      batch.relation.fingerprint !== rel.fingerprint
    ) {
      return this.#onChangeSlow(msg);
    }
    const seq = txn.seq++;
    const pos: TablePosition = { lsn: txn.commitLsn, seq };
    if (rowAction(life, pos) !== "write") {
      this.stats.rowsSkipped++;
      return undefined;
    }
    encodeChangeRow(batch.encoder, rel, msg, txn, seq);
    batch.noteRow(pos);
    this.stats.rowsWritten++;
    if (batch.memoryBytes !== batch.accountedBytes) this.#account(batch);
    if (
      batch.drainDue || this.#limitReached(batch) || this.#batchMemory > this.#opts.memoryBudget
    ) {
      return this.#afterRow(batch);
    }
    return undefined;
  }

  /** Brings the budget's count of `batch`'s memory up to date. */
  #account(batch: TableBatch): void {
    const now = batch.memoryBytes;
    this.#batchMemory += now - batch.accountedBytes;
    batch.accountedBytes = now;
  }

  /** Forgets a closed batch in the budget. */
  #unaccount(batch: TableBatch): void {
    this.#batchMemory -= batch.accountedBytes;
    batch.accountedBytes = 0;
  }

  /** Removes an open batch and its files without registering it. */
  async #dropBatch(batch: TableBatch): Promise<void> {
    this.#batches.delete(batch.relation.key);
    this.#unaccount(batch);
    await batch.abort(this.#pool);
  }

  /**
   * Over the memory budget: moves the largest in-memory buffers to their
   * files until the batches hold at most three quarters of it. Sorting all
   * batches is O(n log n), but each run frees a quarter of the budget, so it
   * is rare.
   */
  async #relieveMemory(): Promise<void> {
    const target = this.#opts.memoryBudget * 0.75;
    const largest = [...this.#batches.values()].sort((a, b) => b.memoryBytes - a.memoryBytes);
    for (const batch of largest) {
      if (this.#batchMemory <= target) break;
      await batch.spill(this.#pool);
      this.#account(batch);
    }
  }

  /**
   * The spool is full: flushes every open batch that is not held (their
   * uploads hold the loop, so no WAL is read meanwhile). True if it flushed.
   */
  async #relieveSpool(): Promise<boolean> {
    // Held batches wait for their export whatever the spool holds: counting
    // them would only close the others early, again and again.
    let open = 0;
    for (const b of this.#batches.values()) if (!b.held) open += b.bytes;
    const spool = this.#opts.spool!;
    if (open === 0 || !spool.full(open)) return false;
    // Uploaded files may still be there: remove them before closing batches early.
    await spool.evict();
    if (!spool.full(open)) return false;
    const keys = [...this.#batches].filter(([_k, b]) => !b.held).map(([k]) => k);
    await this.#flush(keys, "spool");
    return true;
  }

  /** Whether an open batch (not held for an export) reached its row or byte limit. */
  #limitReached(batch: TableBatch): boolean {
    return (batch.rows >= this.#opts.limits.maxRows ||
      batch.bytes >= this.#opts.limits.maxBytes) && !batch.held;
  }

  /** Hands encoded rows to gzip, and flushes the batch at its size limits. */
  async #afterRow(batch: TableBatch): Promise<void> {
    await batch.maybeDrain(this.#pool);
    this.#account(batch);
    if (this.#batchMemory > this.#opts.memoryBudget) await this.#relieveMemory();
    if (this.#opts.spool !== undefined && (await this.#relieveSpool())) return;
    if (this.#limitReached(batch)) {
      const reason = batch.rows >= this.#opts.limits.maxRows ? "rows" : "bytes";
      await this.#flush([batch.relation.key], reason);
    }
  }

  async #onChangeSlow(msg: ChangeMessage): Promise<void> {
    const txn = this.#txn;
    if (!txn) throw new CdcError("protocol", `Received ${msg.type} outside a transaction`);
    const relIds = msg.type === "truncate" ? msg.relationIds : [msg.relationId];
    for (const relId of relIds) {
      const seq = txn.seq++;
      const rel = this.#relations.get(relId);
      if (!rel) {
        throw new CdcError("protocol", `Received ${msg.type} for unknown relation ${relId}`);
      }
      if (!rel.captured) {
        if (msg.type === "insert" && rel.table === "ddl_history") {
          await this.#ddl.handle(ddlEventFromRow(rel, msg.newTuple), { lsn: txn.commitLsn, seq });
        }
        continue;
      }
      const pos: TablePosition = { lsn: txn.commitLsn, seq };
      const life = this.#life(rel.key);
      if (reachesBoundary(life, pos)) await this.#handover.reachBoundary(life);
      const action = rowAction(life, pos);
      if (action === "skip") {
        this.stats.rowsSkipped++;
        continue;
      }
      const batch = await this.#batchFor(rel, action === "hold");
      encodeChangeRow(batch.encoder, rel, msg, txn, seq);
      batch.noteRow(pos);
      this.stats.rowsWritten++;
      await this.#afterRow(batch);
    }
  }

  async #batchFor(rel: RelationInfo, held: boolean): Promise<TableBatch> {
    const open = this.#batches.get(rel.key);
    if (open && open.relation.fingerprint === rel.fingerprint && open.held === held) return open;
    // A new column set (or name) starts a new folder with its own schema.yml.
    if (open) await this.#close([rel.key], "schema");
    const batchTs = this.#nextBatchTs(rel.tableDir);
    // Describe the column set now, when it takes effect: the attnums known
    // from captured DDL are the ones of this point in the stream.
    const schema = await this.#schemas.describe(rel, this.#ddl.attnums(rel.key));
    // Its rows belong to the current transaction and later ones: every
    // transaction up to the last commit is in files or in another open
    // batch, which holds the checkpoint back on its own. (Taking the whole
    // checkpoint here chained each new batch to the oldest open one, so under
    // steady writes to several tables the slot never advanced.)
    const batch = new TableBatch(rel, batchTs, this.#opts.dataDir, this.#lastCommitEnd);
    batch.schema = schema;
    batch.held = held;
    // At the end of the map: it is in opening order (see #flushDue).
    this.#batches.delete(rel.key);
    this.#batches.set(rel.key, batch);
    return batch;
  }

  /** A folder name for `tableDir`, later than every earlier one. */
  #nextBatchTs(tableDir: string): string {
    const batchTs = batchTimestamp(new Date(), this.#lastBatchTs.get(tableDir));
    this.#lastBatchTs.set(tableDir, batchTs);
    return batchTs;
  }

  /** Closes the open batches of `oids`: registered now, or held for an export. */
  async #close(oids: number[], reason: FlushReason | "schema" | "reload" | "ddl"): Promise<void> {
    const now: number[] = [];
    for (const oid of oids) {
      const batch = this.#batches.get(oid);
      if (!batch) continue;
      if (batch.held) await this.#holdBatch(batch);
      else now.push(oid);
    }
    if (now.length > 0) await this.#flush(now, reason);
  }

  /** Seals a held batch and keeps it, unregistered, until the export is registered. */
  async #holdBatch(batch: TableBatch): Promise<void> {
    const oid = batch.relation.key;
    if (batch.rows === 0) {
      await this.#dropBatch(batch);
      return;
    }
    this.#batches.delete(oid);
    this.#unaccount(batch);
    const file = await this.#finish(batch);
    const { files, dirs } = batch.durablePaths();
    await syncGroup(files, dirs);
    this.#handover.held.add(oid, {
      file,
      first: batch.first!,
      last: batch.last!,
      safeBefore: batch.safeBefore,
      dir: batch.absDir,
      name: STREAMING_FILE,
      schema: batch.schema ?? undefined,
    });
  }

  /**
   * Completes a batch's file and writes its schema.yml, not yet fsynced;
   * returns its `file_log` row.
   */
  async #finish(batch: TableBatch): Promise<FileRecord> {
    const schema = batch.schema ?? await this.#schemas.describe(batch.relation);
    const sealed = await batch.finish(
      this.#pool,
      schema,
      this.#previousName(batch.relation.key, batch.relation),
    );
    return batch.fileRecord(sealed);
  }

  /** The relation's earlier name when it was renamed while we streamed it. */
  #previousName(oid: number, now: { schema: string; table: string }): string | null {
    const before = this.#opts.tables.get(oid);
    if (!before || (before.schema === now.schema && before.table === now.table)) return null;
    return `${before.schema}.${before.table}`;
  }

  /** The newest LSN whose transactions have nothing in an open batch or held file. */
  #checkpoint(): Lsn {
    let cp = this.#lastCommitEnd;
    if (
      this.#txn === null && this.#streamXid === null && this.#spool.openCount === 0 &&
      this.#batches.size === 0 && this.#handover.held.empty
    ) {
      cp = maxLsn(cp, this.#lastWalEnd);
    }
    for (const batch of this.#batches.values()) cp = minLsn(cp, batch.safeBefore);
    return maxLsn(this.#handover.held.capCheckpoint(cp), this.#durable);
  }

  /** Every commit before this LSN has been processed. */
  #frontier(): Lsn {
    if (this.#txn !== null) return this.#txn.commitLsn;
    return maxLsn(this.#lastCommitEnd, this.#lastWalEnd);
  }

  /** Flushes the batches that are due; a promise only when there are some. */
  #flushDue(shuttingDown: boolean): Promise<void> | undefined {
    if (this.#batches.size === 0) return undefined;
    const now = Date.now();
    const { intervalMs } = this.#opts.limits;
    let due: number[] | null = null;
    let reason: FlushReason | null = null;
    for (const [key, batch] of this.#batches) {
      // This runs at every commit. Batches sit in the map in the order they
      // were opened (#batchFor), and the row and byte limits are checked as
      // rows arrive: from the first batch too young to be due on, none is.
      // (A batch released by an export over its limits waits for its next
      // row or its interval.)
      if (!shuttingDown && now - batch.openedAt < intervalMs) break;
      if (batch.held) continue;
      const r = flushDecision(
        { rows: batch.rows, bytes: batch.bytes, ageMs: now - batch.openedAt, shuttingDown },
        this.#opts.limits,
      );
      if (r) {
        (due ??= []).push(key);
        reason ??= r;
      }
    }
    return due === null ? undefined : this.#flush(due, reason!);
  }

  async #flushAll(reason: FlushReason): Promise<void> {
    // Held batches belong after an export that is not registered: they are
    // dropped (and sent again after a restart), never registered alone.
    const keys = [...this.#batches].filter(([_k, b]) => !b.held).map(([k]) => k);
    if (keys.length > 0) await this.#flush(keys, reason);
    else await this.#advanceIdle(true);
  }

  /**
   * Seals the batches of `keys`, registers them with the new checkpoint in
   * one transaction, publishes the files and acknowledges.
   */
  async #flush(keys: number[], reason: FlushReason | "schema" | "reload" | "ddl"): Promise<void> {
    const started = performance.now();
    const batches = keys.map((k) => this.#batches.get(k)!).filter((b) => b && !b.held);
    const written: TableBatch[] = [];
    for (const batch of batches) {
      if (batch.rows === 0) await this.#dropBatch(batch);
      else written.push(batch);
    }
    // Batches with a file first, one at a time (each may need a pool slot);
    // the ones still in memory then compress side by side, each with a
    // short-lived file of its own.
    written.sort((a, b) => Number(b.spilled) - Number(a.spilled));
    const files: FileRecord[] = new Array(written.length);
    const firstInMemory = written.findIndex((b) => !b.spilled);
    const spilledCount = firstInMemory === -1 ? written.length : firstInMemory;
    for (let i = 0; i < spilledCount; i++) files[i] = await this.#finish(written[i]);
    await eachLimited(written.slice(spilledCount), FINISH_CONCURRENCY, async (batch, i) => {
      files[spilledCount + i] = await this.#finish(batch);
    });
    const durableFiles: string[] = [];
    const durableDirs: string[] = [];
    for (const batch of written) {
      this.#batches.delete(batch.relation.key);
      this.#unaccount(batch);
      const { files, dirs } = batch.durablePaths();
      durableFiles.push(...files);
      durableDirs.push(...dirs);
    }
    await syncGroup(durableFiles, durableDirs);
    const states: TableStateUpdate[] = [];
    for (const batch of written) {
      states.push({
        oid: batch.relation.key,
        schema: batch.relation.schema,
        table: batch.relation.table,
        tableDir: batch.relation.tableDir,
        last: batch.last!,
        lastBatchTs: batch.batchTs,
      });
    }
    const checkpoint = this.#checkpoint();
    await this.#registry.commitFlush(files, states, checkpoint);
    await eachLimited(written, FINISH_CONCURRENCY, (batch) => batch.publish());
    for (const batch of written) noteRegistered(this.#life(batch.relation.key), batch.last!);
    const seconds = (performance.now() - started) / 1000;
    for (const [i, b] of written.entries()) {
      const table = `${b.relation.schema}.${b.relation.table}`;
      this.#opts.metrics?.batchRegistered(
        table,
        reason,
        seconds,
        b.rows,
        b.bytes,
        files[i].byteSize,
      );
    }
    for (const f of files) {
      this.stats.filesWritten++;
      this.stats.bytesWritten += f.byteSize;
      this.#opts.logger.info("batch registered", {
        table: `${f.schema}.${f.table}`,
        path: f.path,
        rows: f.rowCount,
        bytes: f.byteSize,
        reason,
        ms: Math.round(performance.now() - started),
      });
    }
    this.#durable = maxLsn(this.#durable, checkpoint);
    this.#sendStatus(true);
  }

  /** Periodic work between frames: interval flushes, exports, idle checkpoints, status. */
  async #tick(): Promise<void> {
    const pending = this.#flushDue(false);
    if (pending !== undefined) await pending;
    await this.#reloads?.poll();
    await this.#handover.tick();
    await this.#advanceIdle(false);
    if (Date.now() - this.#lastStatusAt >= STATUS_INTERVAL_MS) this.#sendStatus(false);
  }

  /** With nothing open, moves the checkpoint to the newest known position. */
  async #advanceIdle(force: boolean): Promise<void> {
    // #checkpoint() visits every open batch: not at every tick (a tick can
    // follow every frame), only when a save could follow, at most once a second.
    const now = Date.now();
    if (!force) {
      if (now - this.#lastIdleSaveAt < IDLE_CHECKPOINT_INTERVAL_MS) return;
      if (now - this.#lastIdleCheckAt < 1000) return;
      this.#lastIdleCheckAt = now;
    }
    const cp = this.#checkpoint();
    if (cp <= this.#durable) return;
    this.#lastIdleSaveAt = Date.now();
    await this.#registry.saveCheckpoint(cp);
    this.#durable = cp;
    this.#sendStatus(false);
  }

  /**
   * Sets cdc_table_pending_changes of the open batches whose row count
   * changed since it was last set, at most once a second: statuses go out
   * after every flush, and a gauge set per open batch each time would cost
   * O(tables) per flush.
   */
  #showPending(m: StreamMetrics): void {
    const now = Date.now();
    if (now - this.#pendingShownAt < 1000) return;
    this.#pendingShownAt = now;
    for (const b of this.#batches.values()) {
      if (this.#pendingShown.get(b) === b.rows) continue;
      this.#pendingShown.set(b, b.rows);
      m.tablePending.set({ table: `${b.relation.schema}.${b.relation.table}` }, b.rows);
    }
  }

  #sendStatus(_force: boolean): void {
    this.#stream.sendStatus(this.#durable);
    const m = this.#opts.metrics;
    if (m) {
      m.walPosition.set({ kind: "durable" }, Number(this.#durable));
      m.walPosition.set(
        { kind: "received" },
        Number(maxLsn(this.#lastCommitEnd, this.#lastWalEnd)),
      );
      this.#showPending(m);
    }
    this.#lastStatusAt = Date.now();
  }
}
