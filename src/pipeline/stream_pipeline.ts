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
 */

import { join } from "node:path";
import { flushDecision, type FlushReason } from "../batch/flush_policy.ts";
import { STREAMING_FILE, TableBatch } from "../batch/table_batch.ts";
import { TransactionSpool } from "../batch/transaction_spool.ts";
import { decodeCopyFrame } from "../decode/copy_frame.ts";
import {
  formatCommitTime,
  PgoutputDecoder,
  type PgoutputMessage,
  type PgoutputProtocol,
  type TupleData,
  UNCHANGED_TOAST,
} from "../decode/pgoutput.ts";
import { CdcError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { compareLsn, formatLsn, type Lsn, maxLsn, minLsn } from "../lsn.ts";
import {
  type FileRecord,
  type Registry,
  tableKey,
  type TablePosition,
  type TableStateUpdate,
} from "../registry/registry.ts";
import type { ReplicationStream } from "../source/replication_stream.ts";
import { ensureDir, writeFileAtomic } from "../write/atomic_file.ts";
import { renderSchemaYml } from "../write/schema_yml.ts";
import { batchTimestamp, tableDirName } from "../write/table_dir.ts";
import { type RelationInfo, relationInfo, type SchemaLookup } from "./relation_catalog.ts";
import type { ReloadCoordinator, ReloadHost } from "./reload_coordinator.ts";
import { type DdlEvent, ddlEventFromRow, eventTable, schemaFromEvent } from "./ddl_events.ts";
import type { StreamMetrics } from "../observe/metrics.ts";
import { createHash } from "node:crypto";

/** Settings of the pipeline. */
export interface PipelineOptions {
  dataDir: string;
  protocol: PgoutputProtocol;
  limits: { maxRows: number; maxBytes: number; intervalMs: number };
  /** The slot's confirmed_flush_lsn at start: everything before it is done. */
  startLsn: Lsn;
  /** Per-table position of the last registered row, keyed by tableKey(). */
  positions: Map<string, { last: TablePosition | null; lastBatchTs: string | null }>;
  /** Per-table LSN of the newest registered export: earlier changes are in it. */
  boundaries: Map<string, Lsn>;
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

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();
const OP = {
  I: textEncoder.encode("I"),
  U: textEncoder.encode("U"),
  D: textEncoder.encode("D"),
  T: textEncoder.encode("T"),
};
const STATUS_INTERVAL_MS = 10_000;
/** XLogData frames: 'w', WAL start, WAL end, send time, then one pgoutput message. */
const XLOGDATA = 0x77;
const XLOGDATA_HEADER = 1 + 8 + 8 + 8;
const DDL_FILE = "ddl.sql";
const IDLE_CHECKPOINT_INTERVAL_MS = 10_000;

/** Counters the pipeline exposes (status, metrics, tests). */
export interface PipelineStats {
  rowsWritten: number;
  rowsSkipped: number;
  filesWritten: number;
  bytesWritten: number;
  transactions: number;
}

/** Compares two positions. */
function comparePosition(a: TablePosition, b: TablePosition): number {
  return compareLsn(a.lsn, b.lsn) || a.seq - b.seq;
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
  #batches = new Map<string, TableBatch>();
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
  #stopping = false;
  /** Tables being exported: their batches stay open until the export is registered. */
  #held = new Set<string>();
  /** Column name → attnum per table, from the newest captured DDL. */
  #attnums = new Map<string, Map<string, number>>();
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
    this.#lastCommitEnd = options.startLsn;
    this.#lastWalEnd = options.startLsn;
    this.#durable = options.startLsn;
  }

  /** The LSN the registry holds and the slot was acknowledged to. */
  get durableLsn(): Lsn {
    return this.#durable;
  }

  /** Attaches the coordinator that runs exports between frames. */
  attachReloads(make: (host: ReloadHost) => ReloadCoordinator): void {
    this.#reloads = make({
      cut: async (keys) => {
        const open = keys.filter((k) => this.#batches.has(k));
        if (open.length > 0) await this.#flush(open, "reload");
      },
      hold: (key, boundary) => {
        this.#held.add(key);
        this.#opts.boundaries.set(key, boundary);
      },
      release: (key) => {
        this.#held.delete(key);
      },
      lastBatchTs: (key) => this.#opts.positions.get(key)?.lastBatchTs ?? undefined,
      noteBatchTs: (key, batchTs) => {
        const state = this.#opts.positions.get(key);
        this.#opts.positions.set(key, { last: state?.last ?? null, lastBatchTs: batchTs });
      },
    });
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
      for (const key of this.#held) await this.#batches.get(key)?.abort();
      this.#sendStatus(true);
    } finally {
      await this.#reloads?.stop();
      await this.#spool.close();
    }
  }

  /** Aborts open batches without registering them (after a failure). */
  async discard(): Promise<void> {
    for (const batch of this.#batches.values()) await batch.abort().catch(() => {});
    this.#batches.clear();
    await this.#spool.close().catch(() => {});
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
    this.#relations.set(msg.relationId, relationInfo(msg));
  }

  /**
   * The common case of {@linkcode #onChangeSlow} without a promise: a change
   * of a captured table with an open batch of the same column set, appended
   * synchronously; anything else (and any I/O afterwards) goes the slow way.
   */
  #onChange(
    msg: Extract<PgoutputMessage, { type: "insert" | "update" | "delete" }>,
  ): Promise<void> | undefined {
    const txn = this.#txn;
    const rel = this.#relations.get(msg.relationId);
    if (txn === null || rel === undefined || !rel.captured) return this.#onChangeSlow(msg);
    const batch = this.#batches.get(rel.key);
    if (batch === undefined || batch.relation.fingerprint !== rel.fingerprint) {
      return this.#onChangeSlow(msg);
    }
    const seq = txn.seq++;
    const pos: TablePosition = { lsn: txn.commitLsn, seq };
    if (this.#covered(rel.key, pos)) {
      this.stats.rowsSkipped++;
      return undefined;
    }
    this.#writeRow(batch, msg, txn, seq);
    batch.noteRow(pos);
    this.stats.rowsWritten++;
    if (batch.drainDue || this.#limitReached(rel.key, batch)) return this.#afterRow(rel.key, batch);
    return undefined;
  }

  /** Whether an open batch (not held for an export) reached its row or byte limit. */
  #limitReached(key: string, batch: TableBatch): boolean {
    return (batch.rows >= this.#opts.limits.maxRows ||
      batch.bytes >= this.#opts.limits.maxBytes) && !this.#held.has(key);
  }

  /** Hands encoded rows to gzip, and flushes the batch at its size limits. */
  async #afterRow(key: string, batch: TableBatch): Promise<void> {
    await batch.maybeDrain();
    if (this.#limitReached(key, batch)) {
      await this.#flush([key], batch.rows >= this.#opts.limits.maxRows ? "rows" : "bytes");
    }
  }

  async #onChangeSlow(
    msg: Extract<PgoutputMessage, { type: "insert" | "update" | "delete" | "truncate" }>,
  ): Promise<void> {
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
          await this.#onDdl(ddlEventFromRow(rel, msg.newTuple), { lsn: txn.commitLsn, seq });
        }
        continue;
      }
      const pos: TablePosition = { lsn: txn.commitLsn, seq };
      if (this.#covered(rel.key, pos)) {
        this.stats.rowsSkipped++;
        continue;
      }
      const batch = await this.#batchFor(rel);
      this.#writeRow(batch, msg, txn, seq);
      batch.noteRow(pos);
      this.stats.rowsWritten++;
      await this.#afterRow(rel.key, batch);
    }
  }

  /**
   * Whether a change is already in registered files: at or before the
   * table's last registered position, or before its newest export.
   */
  #covered(key: string, pos: TablePosition): boolean {
    const known = this.#opts.positions.get(key)?.last;
    if (known && comparePosition(pos, known) <= 0) return true;
    const boundary = this.#opts.boundaries.get(key);
    return boundary !== undefined && pos.lsn < boundary;
  }

  async #batchFor(rel: RelationInfo): Promise<TableBatch> {
    const open = this.#batches.get(rel.key);
    if (open && open.relation.fingerprint === rel.fingerprint) return open;
    // A new column set starts a new folder with its own schema.yml.
    if (open) await this.#flush([rel.key], "schema");
    const state = this.#opts.positions.get(rel.key);
    const batchTs = batchTimestamp(new Date(), state?.lastBatchTs ?? undefined);
    // Describe the column set now, when it takes effect: the attnums known
    // from captured DDL are the ones of this point in the stream.
    const schema = await this.#schemas.describe(rel, this.#attnums.get(rel.key));
    // Its rows belong to the current transaction and later ones: every
    // transaction up to the last commit is in files or in another open
    // batch, which holds the checkpoint back on its own. (Taking the whole
    // checkpoint here chained each new batch to the oldest open one, so under
    // steady writes to several tables the slot never advanced.)
    const batch = await TableBatch.open(rel, batchTs, this.#opts.dataDir, this.#lastCommitEnd);
    batch.schema = schema;
    this.#batches.set(rel.key, batch);
    this.#opts.positions.set(rel.key, { last: state?.last ?? null, lastBatchTs: batchTs });
    return batch;
  }

  #writeRow(
    batch: TableBatch,
    msg: Extract<PgoutputMessage, { type: "insert" | "update" | "delete" | "truncate" }>,
    txn: Txn,
    seq: number,
  ): void {
    const csv = batch.encoder;
    const rel = batch.relation;
    let values: TupleData | null;
    let old: TupleData | undefined;
    let op: Uint8Array;
    switch (msg.type) {
      case "insert":
        op = OP.I;
        values = msg.newTuple;
        break;
      case "update":
        op = OP.U;
        values = msg.newTuple;
        old = msg.keyTuple ?? msg.oldTuple;
        break;
      case "delete":
        op = OP.D;
        values = msg.keyTuple ?? msg.oldTuple ?? null;
        break;
      case "truncate":
        op = OP.T;
        values = null;
        break;
    }
    csv.field(op);
    csv.fieldText(txn.lsnText);
    csv.fieldText(String(seq));
    csv.fieldText(txn.tsText);
    csv.fieldText(txn.xidText);
    // _cdc_unchanged_cols
    let unchanged: string[] | null = null;
    if (values) {
      for (let i = 0; i < values.length; i++) {
        if (values[i] === UNCHANGED_TOAST) (unchanged ??= []).push(rel.columnNames[i]);
      }
    }
    csv.fieldText(unchanged ? JSON.stringify(unchanged) : null);
    // _cdc_old_key: the key columns of a 'K' tuple, every sent column of an 'O' tuple.
    if (old) {
      const keyOnly = msg.type === "update" && msg.keyTuple !== undefined;
      const obj: Record<string, string | null> = {};
      for (let i = 0; i < old.length; i++) {
        const v = old[i];
        if (v === UNCHANGED_TOAST) continue;
        if (keyOnly && !rel.keyColumns.includes(i)) continue;
        obj[rel.columnNames[i]] = v === null ? null : textDecoder.decode(v);
      }
      csv.fieldText(JSON.stringify(obj));
    } else {
      csv.fieldText(null);
    }
    const n = rel.columnNames.length;
    for (let i = 0; i < n; i++) {
      const v = values ? values[i] : null;
      csv.field(v === UNCHANGED_TOAST || v === undefined ? null : v);
    }
    csv.endRow();
  }

  /** The newest LSN whose transactions have nothing in an open batch. */
  #checkpoint(): Lsn {
    let cp = this.#lastCommitEnd;
    if (
      this.#txn === null && this.#streamXid === null && this.#spool.openCount === 0 &&
      this.#batches.size === 0
    ) {
      cp = maxLsn(cp, this.#lastWalEnd);
    }
    for (const batch of this.#batches.values()) cp = minLsn(cp, batch.safeBefore);
    return maxLsn(cp, this.#durable);
  }

  /** Flushes the batches that are due; a promise only when there are some. */
  #flushDue(shuttingDown: boolean): Promise<void> | undefined {
    if (this.#batches.size === 0) return undefined;
    const now = Date.now();
    const { maxRows, maxBytes, intervalMs } = this.#opts.limits;
    let due: string[] | null = null;
    let reason: FlushReason | null = null;
    for (const [key, batch] of this.#batches) {
      // Cheap test first: this runs at every commit.
      if (
        !shuttingDown && now - batch.openedAt < intervalMs && batch.rows < maxRows &&
        batch.bytes < maxBytes
      ) continue;
      if (this.#held.has(key)) continue;
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
    const keys = [...this.#batches.keys()].filter((k) => !this.#held.has(k));
    if (keys.length > 0) await this.#flush(keys, reason);
    else await this.#advanceIdle(true);
  }

  /**
   * Seals the batches of `keys`, registers them with the new checkpoint in
   * one transaction, publishes the files and acknowledges.
   */
  /**
   * Writes a captured DDL command as `ddl.sql` in a folder of its own for the
   * table it changed, registered at the DDL's position, after closing the
   * table's open batch so that no file spans the change.
   */
  async #onDdl(event: DdlEvent, pos: TablePosition): Promise<void> {
    const target = eventTable(event);
    if (!target) return;
    const key = tableKey(target.schema, target.table);
    if (event.commandTag === "CREATE TABLE") {
      await this.#opts.onCreateTable?.(target.schema, target.table);
      return;
    }
    // Track attnums even for DDL registered before a restart.
    if (event.attnums) this.#attnums.set(key, event.attnums);
    const state = this.#opts.positions.get(key);
    const known = state?.last;
    if (known && comparePosition(pos, known) <= 0) return;
    const open = this.#batches.get(key);
    const rel = [...this.#relations.values()].find((r) => r.key === key);
    if (!state && !open && !rel) return; // not a table we capture
    if (open) await this.#flush([key], "ddl");
    const tableDir = tableDirName(target.schema, target.table);
    const batchTs = batchTimestamp(
      new Date(),
      this.#opts.positions.get(key)?.lastBatchTs ?? undefined,
    );
    const dir = join(this.#opts.dataDir, tableDir, batchTs);
    await ensureDir(dir);
    const sql = `-- ${event.commandTag} committed at ${
      formatLsn(pos.lsn)
    }\n${event.command.trim()}\n`;
    const bytes = textEncoder.encode(sql);
    await writeFileAtomic(join(dir, DDL_FILE), bytes);
    if (event.objid !== null && event.commandTag !== "DROP TABLE") {
      // The catalog may already show later DDL: prefer what the trigger captured.
      const schema = schemaFromEvent(event, target, pos.lsn) ??
        await this.#schemas.describeOid(event.objid, pos.lsn);
      if (schema) {
        await writeFileAtomic(join(dir, "schema.yml"), textEncoder.encode(renderSchemaYml(schema)));
      }
    }
    const sha = createHash("sha256").update(bytes).digest("hex");
    await this.#registry.commitFlush(
      [{
        schema: target.schema,
        table: target.table,
        tableDir,
        batchTs,
        path: `${tableDir}/${batchTs}/${DDL_FILE}`,
        fileType: "ddl",
        startLsn: pos.lsn,
        endLsn: pos.lsn,
        startSeq: pos.seq,
        endSeq: pos.seq,
        rowCount: 1,
        byteSize: bytes.length,
        sha256: sha,
        hasDdl: true,
      }],
      [{
        schema: target.schema,
        table: target.table,
        tableDir,
        relationOid: event.objid,
        last: pos,
        lastBatchTs: batchTs,
        mode: event.commandTag === "DROP TABLE" ? "dropped" : undefined,
      }],
      this.#checkpoint(),
    );
    this.#opts.positions.set(key, { last: pos, lastBatchTs: batchTs });
    this.#opts.metrics?.fileRegistered(`${target.schema}.${target.table}`, "ddl", bytes.length, 0);
    if (event.commandTag === "DROP TABLE") {
      this.#opts.metrics?.setTableMode(`${target.schema}.${target.table}`, "dropped");
    }
    this.#opts.logger.info("ddl registered", {
      table: `${target.schema}.${target.table}`,
      command: event.commandTag,
      path: `${tableDir}/${batchTs}/${DDL_FILE}`,
    });
  }

  async #flush(keys: string[], reason: FlushReason | "schema" | "reload" | "ddl"): Promise<void> {
    const started = performance.now();
    const batches = keys.map((k) => this.#batches.get(k)!).filter((b) => b && b.rows > 0);
    const files: FileRecord[] = [];
    const states: TableStateUpdate[] = [];
    for (const batch of batches) {
      const sealed = await batch.seal();
      const schema = batch.schema ?? await this.#schemas.describe(batch.relation);
      await writeFileAtomic(
        join(batch.absDir, "schema.yml"),
        textEncoder.encode(
          renderSchemaYml({ ...schema, validFromLsn: formatLsn(batch.first!.lsn) }),
        ),
      );
      files.push({
        schema: batch.relation.schema,
        table: batch.relation.table,
        tableDir: batch.relation.tableDir,
        batchTs: batch.batchTs,
        path: `${batch.relDir}/${STREAMING_FILE}`,
        fileType: "streaming",
        startLsn: batch.first!.lsn,
        endLsn: batch.last!.lsn,
        startSeq: batch.first!.seq,
        endSeq: batch.last!.seq,
        rowCount: batch.rows,
        byteSize: sealed.byteSize,
        sha256: sealed.sha256,
        hasDdl: false,
      });
      states.push({
        schema: batch.relation.schema,
        table: batch.relation.table,
        tableDir: batch.relation.tableDir,
        relationOid: batch.relation.message.relationId,
        last: batch.last!,
        lastBatchTs: batch.batchTs,
      });
    }
    for (const key of keys) this.#batches.delete(key);
    const checkpoint = this.#checkpoint();
    await this.#registry.commitFlush(files, states, checkpoint);
    for (const batch of batches) await batch.publish();
    for (const s of states) {
      this.#opts.positions.set(
        `${s.schema}\0${s.table}`,
        { last: s.last, lastBatchTs: s.lastBatchTs },
      );
    }
    const m = this.#opts.metrics;
    if (m && batches.length > 0) {
      const seconds = (performance.now() - started) / 1000;
      for (const b of batches) {
        const table = `${b.relation.schema}.${b.relation.table}`;
        m.batchDuration.observe(seconds);
        m.batchSize.observe(b.bytes);
        m.batchRows.observe(b.rows);
        m.batchesProcessed.inc({ reason });
        m.rowsWritten.inc(b.rows);
        m.tablePending.set({ table }, 0);
        const file = files.find((f) => f.path.startsWith(b.relDir + "/"));
        if (file) m.fileRegistered(table, "streaming", file.byteSize, b.bytes);
      }
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

  /** Periodic work between frames: interval flushes, idle checkpoints, status. */
  async #tick(): Promise<void> {
    const pending = this.#flushDue(false);
    if (pending !== undefined) await pending;
    await this.#reloads?.poll();
    await this.#advanceIdle(false);
    if (Date.now() - this.#lastStatusAt >= STATUS_INTERVAL_MS) this.#sendStatus(false);
  }

  /** With nothing open, moves the checkpoint to the newest known position. */
  async #advanceIdle(force: boolean): Promise<void> {
    const cp = this.#checkpoint();
    if (cp <= this.#durable) return;
    if (!force && Date.now() - this.#lastIdleSaveAt < IDLE_CHECKPOINT_INTERVAL_MS) return;
    this.#lastIdleSaveAt = Date.now();
    await this.#registry.saveCheckpoint(cp);
    this.#durable = cp;
    this.#sendStatus(false);
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
      for (const b of this.#batches.values()) {
        m.tablePending.set({ table: `${b.relation.schema}.${b.relation.table}` }, b.rows);
      }
    }
    this.#lastStatusAt = Date.now();
  }
}
