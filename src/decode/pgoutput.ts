/**
 * Decoder for the messages of PostgreSQL's `pgoutput` logical decoding plugin
 * (protocol versions 1 to 4), as carried in the `data` of XLogData frames.
 *
 * Layouts follow "Logical Replication Message Formats" in the PostgreSQL
 * documentation and `src/backend/replication/logical/proto.c`. Column values
 * are handed out as the exact bytes PostgreSQL printed, as subarrays of the
 * input: no copy and no text decoding, so CSV output can reuse them verbatim.
 *
 * @module
 */

import type { Lsn } from "../lsn.ts";
import { ByteReader, hexByte, PgoutputDecodeError } from "./_reader.ts";

export { PgoutputDecodeError };

/** Stands for a TOASTed value that PostgreSQL did not send because it did not change ('u'). */
export const UNCHANGED_TOAST: unique symbol = Symbol("UNCHANGED_TOAST");

/**
 * One column of a tuple: `null` is SQL NULL, {@linkcode UNCHANGED_TOAST} an
 * unchanged TOASTed value, and bytes are the value as PostgreSQL sent it (text
 * output for 't', binary send output for 'b').
 */
export type TupleValue = Uint8Array | null | typeof UNCHANGED_TOAST;

/** The columns of a row, in the order of the relation's columns. */
export type TupleData = TupleValue[];

/** 'B': start of a transaction. */
export interface BeginMessage {
  type: "begin";
  /** LSN of the commit record of the transaction. */
  finalLsn: Lsn;
  /** Commit time in microseconds since 2000-01-01 00:00 UTC. */
  commitTime: bigint;
  xid: number;
}

/** 'C': end of a transaction. */
export interface CommitMessage {
  type: "commit";
  /** Currently always 0. */
  flags: number;
  /** LSN of the commit record. */
  commitLsn: Lsn;
  /** End LSN of the transaction (where the next one may start). */
  endLsn: Lsn;
  /** Microseconds since 2000-01-01 00:00 UTC. */
  commitTime: bigint;
}

/** 'O': the transaction was replicated from another origin. */
export interface OriginMessage {
  type: "origin";
  /** LSN of the commit on the origin server. */
  commitLsn: Lsn;
  name: string;
}

/** One column of a {@linkcode RelationMessage}. */
export interface RelationColumn {
  /** Bit 1 set: the column is part of the replica identity key. */
  flags: number;
  name: string;
  typeOid: number;
  /** The atttypmod (-1 when none). */
  typeModifier: number;
}

/**
 * 'R': the shape of a table, sent before its first change in a session and
 * again after any change to it.
 */
export interface RelationMessage {
  type: "relation";
  /** Present (not undefined) only inside a stream block. */
  xid?: number;
  relationId: number;
  /** Schema name; PostgreSQL sends "" for pg_catalog, which is reported as "pg_catalog". */
  namespace: string;
  name: string;
  /** REPLICA IDENTITY: default, nothing, full or index. */
  replicaIdentity: "d" | "n" | "f" | "i";
  columns: RelationColumn[];
}

/** 'Y': a non-built-in data type used by a following Relation. */
export interface TypeMessage {
  type: "type";
  /** Present only inside a stream block. */
  xid?: number;
  typeOid: number;
  /** Schema name; "" on the wire (pg_catalog) is reported as "pg_catalog". */
  namespace: string;
  name: string;
}

/** 'I': a row was inserted. */
export interface InsertMessage {
  type: "insert";
  /** Present only inside a stream block. */
  xid?: number;
  relationId: number;
  newTuple: TupleData;
}

/** 'U': a row was updated. */
export interface UpdateMessage {
  type: "update";
  /** Present only inside a stream block. */
  xid?: number;
  relationId: number;
  /** 'K': the old replica identity key, sent when the key changed. */
  keyTuple?: TupleData;
  /** 'O': the whole old row, sent under REPLICA IDENTITY FULL. */
  oldTuple?: TupleData;
  newTuple: TupleData;
}

/** 'D': a row was deleted. */
export interface DeleteMessage {
  type: "delete";
  /** Present only inside a stream block. */
  xid?: number;
  relationId: number;
  /** 'K': the old replica identity key. */
  keyTuple?: TupleData;
  /** 'O': the whole old row (REPLICA IDENTITY FULL). */
  oldTuple?: TupleData;
}

/** 'T': tables were truncated. */
export interface TruncateMessage {
  type: "truncate";
  /** Present only inside a stream block. */
  xid?: number;
  /** Bit 1: CASCADE; bit 2: RESTART IDENTITY. */
  options: number;
  relationIds: number[];
}

/** 'M': a logical decoding message (`pg_logical_emit_message`). */
export interface LogicalMessage {
  type: "message";
  /** Present only inside a stream block. */
  xid?: number;
  /** Bit 1: transactional. */
  flags: number;
  lsn: Lsn;
  prefix: string;
  /** The message body as sent, a subarray of the input. */
  content: Uint8Array;
}

/** 'S': start of a block of changes of an in-progress transaction (protocol 2+). */
export interface StreamStartMessage {
  type: "streamStart";
  xid: number;
  /** True for the first block of this transaction. */
  firstSegment: boolean;
}

/** 'E': end of a stream block. */
export interface StreamStopMessage {
  type: "streamStop";
}

/** 'c': a streamed transaction committed (protocol 2+). */
export interface StreamCommitMessage {
  type: "streamCommit";
  xid: number;
  flags: number;
  commitLsn: Lsn;
  endLsn: Lsn;
  /** Microseconds since 2000-01-01 00:00 UTC. */
  commitTime: bigint;
}

/**
 * 'A': a streamed transaction or subtransaction aborted (protocol 2+).
 * `xid === subXid` for a top-level abort.
 */
export interface StreamAbortMessage {
  type: "streamAbort";
  xid: number;
  subXid: number;
  /** Only with protocol 4 and `streaming = parallel`. */
  abortLsn?: Lsn;
  /** Only with protocol 4 and `streaming = parallel`; microseconds since 2000-01-01 UTC. */
  abortTime?: bigint;
}

/** 'b': start of a prepared transaction (protocol 3+, two_phase). */
export interface BeginPrepareMessage {
  type: "beginPrepare";
  prepareLsn: Lsn;
  endLsn: Lsn;
  /** Microseconds since 2000-01-01 00:00 UTC. */
  prepareTime: bigint;
  xid: number;
  gid: string;
}

/** 'P': PREPARE TRANSACTION (protocol 3+). */
export interface PrepareMessage {
  type: "prepare";
  flags: number;
  prepareLsn: Lsn;
  endLsn: Lsn;
  prepareTime: bigint;
  xid: number;
  gid: string;
}

/** 'K': COMMIT PREPARED (protocol 3+). */
export interface CommitPreparedMessage {
  type: "commitPrepared";
  flags: number;
  commitLsn: Lsn;
  endLsn: Lsn;
  commitTime: bigint;
  xid: number;
  gid: string;
}

/** 'r': ROLLBACK PREPARED (protocol 3+). */
export interface RollbackPreparedMessage {
  type: "rollbackPrepared";
  flags: number;
  prepareEndLsn: Lsn;
  rollbackEndLsn: Lsn;
  prepareTime: bigint;
  rollbackTime: bigint;
  xid: number;
  gid: string;
}

/** 'p': PREPARE TRANSACTION of a streamed transaction (protocol 3+). */
export interface StreamPrepareMessage {
  type: "streamPrepare";
  flags: number;
  prepareLsn: Lsn;
  endLsn: Lsn;
  prepareTime: bigint;
  xid: number;
  gid: string;
}

/** Any pgoutput message, discriminated by `type`. */
export type PgoutputMessage =
  | BeginMessage
  | CommitMessage
  | OriginMessage
  | RelationMessage
  | TypeMessage
  | InsertMessage
  | UpdateMessage
  | DeleteMessage
  | TruncateMessage
  | LogicalMessage
  | StreamStartMessage
  | StreamStopMessage
  | StreamCommitMessage
  | StreamAbortMessage
  | BeginPrepareMessage
  | PrepareMessage
  | CommitPreparedMessage
  | RollbackPreparedMessage
  | StreamPrepareMessage;

/** The `proto_version` given to pgoutput in START_REPLICATION. */
export type PgoutputProtocol = 1 | 2 | 3 | 4;

/** Options of {@linkcode PgoutputDecoder}; they must match START_REPLICATION's. */
export interface PgoutputDecoderOptions {
  /** `proto_version`. */
  protocol: PgoutputProtocol;
  /** True when started with `streaming 'parallel'` (protocol 4 only). */
  streamingParallel?: boolean;
}

// Message type bytes (logicalproto.h LogicalRepMsgType).
const MSG_BEGIN = 0x42; // 'B'
const MSG_COMMIT = 0x43; // 'C'
const MSG_ORIGIN = 0x4f; // 'O'
const MSG_RELATION = 0x52; // 'R'
const MSG_TYPE = 0x59; // 'Y'
const MSG_INSERT = 0x49; // 'I'
const MSG_UPDATE = 0x55; // 'U'
const MSG_DELETE = 0x44; // 'D'
const MSG_TRUNCATE = 0x54; // 'T'
const MSG_MESSAGE = 0x4d; // 'M'
const MSG_STREAM_START = 0x53; // 'S'
const MSG_STREAM_STOP = 0x45; // 'E'
const MSG_STREAM_COMMIT = 0x63; // 'c'
const MSG_STREAM_ABORT = 0x41; // 'A'
const MSG_BEGIN_PREPARE = 0x62; // 'b'
const MSG_PREPARE = 0x50; // 'P'
const MSG_COMMIT_PREPARED = 0x4b; // 'K'
const MSG_ROLLBACK_PREPARED = 0x72; // 'r'
const MSG_STREAM_PREPARE = 0x70; // 'p'

// Tuple markers and column kinds.
const TUPLE_NEW = 0x4e; // 'N'
const TUPLE_KEY = 0x4b; // 'K'
const TUPLE_OLD = 0x4f; // 'O'
const COLUMN_NULL = 0x6e; // 'n'
const COLUMN_UNCHANGED = 0x75; // 'u'
const COLUMN_TEXT = 0x74; // 't'
const COLUMN_BINARY = 0x62; // 'b'

// Labels are constants so that setting one per message allocates nothing.
const L_MESSAGE = "pgoutput message";
const L_BEGIN = "pgoutput Begin";
const L_COMMIT = "pgoutput Commit";
const L_ORIGIN = "pgoutput Origin";
const L_RELATION = "pgoutput Relation";
const L_TYPE = "pgoutput Type";
const L_INSERT = "pgoutput Insert";
const L_UPDATE = "pgoutput Update";
const L_DELETE = "pgoutput Delete";
const L_TRUNCATE = "pgoutput Truncate";
const L_LOGICAL_MESSAGE = "pgoutput Message";
const L_STREAM_START = "pgoutput Stream Start";
const L_STREAM_STOP = "pgoutput Stream Stop";
const L_STREAM_COMMIT = "pgoutput Stream Commit";
const L_STREAM_ABORT = "pgoutput Stream Abort";
const L_BEGIN_PREPARE = "pgoutput Begin Prepare";
const L_PREPARE = "pgoutput Prepare";
const L_COMMIT_PREPARED = "pgoutput Commit Prepared";
const L_ROLLBACK_PREPARED = "pgoutput Rollback Prepared";
const L_STREAM_PREPARE = "pgoutput Stream Prepare";

/**
 * Decodes pgoutput messages one at a time.
 *
 * The only state is whether a stream block (Stream Start .. Stream Stop) is
 * open: inside one, Relation, Type, Insert, Update, Delete, Truncate and
 * Message carry a leading xid. Messages that PostgreSQL never sends in the
 * current state (Begin inside a stream block, Stream Stop outside one,
 * streaming messages under protocol 1, two-phase messages under protocol
 * 1-2) are rejected, since decoding them would misread every field after the
 * missing or extra xid. A message that fails to decode leaves the state
 * unchanged.
 *
 * @example
 * ```ts
 * const decoder = new PgoutputDecoder({ protocol: 2 });
 * const message = decoder.decode(xlogData.data);
 * if (message.type === "insert") console.log(message.relationId, message.newTuple);
 * ```
 */
export class PgoutputDecoder {
  /** The `proto_version` this decoder was created for. */
  readonly protocol: PgoutputProtocol;
  /** Whether Stream Abort carries the abort LSN and time (protocol 4, parallel streaming). */
  readonly streamingParallel: boolean;
  #inStream = false;
  #reader = new ByteReader();

  /** Creates a decoder for the protocol options used in START_REPLICATION. */
  constructor(options: PgoutputDecoderOptions) {
    const { protocol, streamingParallel = false } = options;
    if (protocol !== 1 && protocol !== 2 && protocol !== 3 && protocol !== 4) {
      throw new RangeError(`Cannot decode pgoutput protocol ${protocol}: expected 1, 2, 3 or 4`);
    }
    if (streamingParallel && protocol < 4) {
      throw new RangeError(
        `Cannot use parallel streaming with pgoutput protocol ${protocol}: it needs protocol 4`,
      );
    }
    this.protocol = protocol;
    this.streamingParallel = streamingParallel;
  }

  /** True between a Stream Start and its Stream Stop. */
  get inStream(): boolean {
    return this.#inStream;
  }

  /** Forgets any open stream block, e.g. after reconnecting. */
  reset(): void {
    this.#inStream = false;
  }

  /**
   * Decodes one complete pgoutput message.
   *
   * Returned tuple values, Message content and nothing else alias `bytes`;
   * keep `bytes` unmodified while they are in use.
   *
   * @throws {PgoutputDecodeError} on malformed or unexpected input.
   */
  decode(bytes: Uint8Array): PgoutputMessage {
    const r: ByteReader = this.#reader;
    r.reset(bytes, L_MESSAGE);
    const type = r.u8("message type");
    const inStream = this.#inStream;
    // Inside a stream block the change messages carry the xid of the
    // streamed transaction; outside they do not.
    let message: PgoutputMessage;
    switch (type) {
      case MSG_INSERT: {
        r.label = L_INSERT;
        const xid = inStream ? r.u32("xid") : undefined;
        const relationId = r.u32("relation id");
        expectMarker(r, r.u8("tuple marker"), TUPLE_NEW);
        message = { type: "insert", xid, relationId, newTuple: readTuple(r) };
        break;
      }
      case MSG_UPDATE:
        r.label = L_UPDATE;
        message = readUpdate(r, inStream ? r.u32("xid") : undefined);
        break;
      case MSG_DELETE:
        r.label = L_DELETE;
        message = readDelete(r, inStream ? r.u32("xid") : undefined);
        break;
      case MSG_BEGIN:
        r.label = L_BEGIN;
        this.#outsideStream(r);
        message = {
          type: "begin",
          finalLsn: r.lsn("final LSN"),
          commitTime: r.i64("commit time"),
          xid: r.u32("xid"),
        };
        break;
      case MSG_COMMIT:
        r.label = L_COMMIT;
        this.#outsideStream(r);
        message = {
          type: "commit",
          flags: r.u8("flags"),
          commitLsn: r.lsn("commit LSN"),
          endLsn: r.lsn("end LSN"),
          commitTime: r.i64("commit time"),
        };
        break;
      case MSG_ORIGIN:
        r.label = L_ORIGIN;
        message = {
          type: "origin",
          commitLsn: r.lsn("commit LSN"),
          name: r.cstring("origin name"),
        };
        break;
      case MSG_RELATION:
        r.label = L_RELATION;
        message = readRelation(r, inStream ? r.u32("xid") : undefined);
        break;
      case MSG_TYPE: {
        r.label = L_TYPE;
        const xid = inStream ? r.u32("xid") : undefined;
        message = {
          type: "type",
          xid,
          typeOid: r.u32("type OID"),
          namespace: readNamespace(r),
          name: r.cstring("type name"),
        };
        break;
      }
      case MSG_TRUNCATE:
        r.label = L_TRUNCATE;
        message = readTruncate(r, inStream ? r.u32("xid") : undefined);
        break;
      case MSG_MESSAGE: {
        r.label = L_LOGICAL_MESSAGE;
        const xid = inStream ? r.u32("xid") : undefined;
        const flags = r.u8("flags");
        const lsn = r.lsn("message LSN");
        const prefix = r.cstring("prefix");
        const content = r.take(r.u32("content length"), "content");
        message = { type: "message", xid, flags, lsn, prefix, content };
        break;
      }
      case MSG_STREAM_START:
        r.label = L_STREAM_START;
        this.#needProtocol(r, 2);
        if (inStream) r.fail("Stream Start inside an open stream block", 0);
        message = {
          type: "streamStart",
          xid: r.u32("xid"),
          firstSegment: r.u8("first segment") === 1,
        };
        break;
      case MSG_STREAM_STOP:
        r.label = L_STREAM_STOP;
        this.#needProtocol(r, 2);
        if (!inStream) r.fail("Stream Stop without a Stream Start", 0);
        message = { type: "streamStop" };
        break;
      case MSG_STREAM_COMMIT:
        r.label = L_STREAM_COMMIT;
        this.#needProtocol(r, 2);
        this.#outsideStream(r);
        message = {
          type: "streamCommit",
          xid: r.u32("xid"),
          flags: r.u8("flags"),
          commitLsn: r.lsn("commit LSN"),
          endLsn: r.lsn("end LSN"),
          commitTime: r.i64("commit time"),
        };
        break;
      case MSG_STREAM_ABORT: {
        r.label = L_STREAM_ABORT;
        this.#needProtocol(r, 2);
        this.#outsideStream(r);
        const xid = r.u32("xid");
        const subXid = r.u32("subtransaction xid");
        // pgoutput writes the abort position only for streaming = parallel,
        // which the server accepts only with protocol 4.
        const parallel = this.streamingParallel;
        const abortLsn = parallel ? r.lsn("abort LSN") : undefined;
        const abortTime = parallel ? r.i64("abort time") : undefined;
        message = { type: "streamAbort", xid, subXid, abortLsn, abortTime };
        break;
      }
      case MSG_BEGIN_PREPARE:
        r.label = L_BEGIN_PREPARE;
        this.#needProtocol(r, 3);
        this.#outsideStream(r);
        message = {
          type: "beginPrepare",
          prepareLsn: r.lsn("prepare LSN"),
          endLsn: r.lsn("end LSN"),
          prepareTime: r.i64("prepare time"),
          xid: r.u32("xid"),
          gid: r.cstring("gid"),
        };
        break;
      case MSG_PREPARE:
        r.label = L_PREPARE;
        this.#needProtocol(r, 3);
        this.#outsideStream(r);
        message = {
          type: "prepare",
          flags: r.u8("flags"),
          prepareLsn: r.lsn("prepare LSN"),
          endLsn: r.lsn("end LSN"),
          prepareTime: r.i64("prepare time"),
          xid: r.u32("xid"),
          gid: r.cstring("gid"),
        };
        break;
      case MSG_COMMIT_PREPARED:
        r.label = L_COMMIT_PREPARED;
        this.#needProtocol(r, 3);
        this.#outsideStream(r);
        message = {
          type: "commitPrepared",
          flags: r.u8("flags"),
          commitLsn: r.lsn("commit LSN"),
          endLsn: r.lsn("end LSN"),
          commitTime: r.i64("commit time"),
          xid: r.u32("xid"),
          gid: r.cstring("gid"),
        };
        break;
      case MSG_ROLLBACK_PREPARED:
        r.label = L_ROLLBACK_PREPARED;
        this.#needProtocol(r, 3);
        this.#outsideStream(r);
        message = {
          type: "rollbackPrepared",
          flags: r.u8("flags"),
          prepareEndLsn: r.lsn("prepare end LSN"),
          rollbackEndLsn: r.lsn("rollback end LSN"),
          prepareTime: r.i64("prepare time"),
          rollbackTime: r.i64("rollback time"),
          xid: r.u32("xid"),
          gid: r.cstring("gid"),
        };
        break;
      case MSG_STREAM_PREPARE:
        r.label = L_STREAM_PREPARE;
        this.#needProtocol(r, 3);
        this.#outsideStream(r);
        message = {
          type: "streamPrepare",
          flags: r.u8("flags"),
          prepareLsn: r.lsn("prepare LSN"),
          endLsn: r.lsn("end LSN"),
          prepareTime: r.i64("prepare time"),
          xid: r.u32("xid"),
          gid: r.cstring("gid"),
        };
        break;
      default:
        r.fail(`unknown message type ${hexByte(type)}`, 0);
    }
    r.finish();
    // Only a fully decoded message may change the state.
    if (type === MSG_STREAM_START) this.#inStream = true;
    else if (type === MSG_STREAM_STOP) this.#inStream = false;
    return message;
  }

  #needProtocol(r: ByteReader, version: number): void {
    if (this.protocol < version) {
      r.fail(
        `this message needs pgoutput protocol ${version} or later, the decoder is for protocol ${this.protocol}`,
        0,
      );
    }
  }

  #outsideStream(r: ByteReader): void {
    if (this.#inStream) r.fail("this message cannot appear inside a stream block", 0);
  }
}

function expectMarker(r: ByteReader, marker: number, expected: number): void {
  if (marker !== expected) {
    r.fail(
      `unknown tuple marker ${hexByte(marker)}, expected '${String.fromCharCode(expected)}'`,
      r.pos - 1,
    );
  }
}

function readTuple(r: ByteReader): TupleData {
  const count = r.u16("tuple column count");
  // Each column takes at least its kind byte; checking up front keeps a
  // corrupt count from allocating a large array.
  if (count > r.remaining) {
    r.fail(
      `unexpected end of data reading a tuple of ${count} columns: ${r.remaining} bytes left`,
      r.pos - 2,
    );
  }
  const values: TupleData = new Array(count);
  for (let i = 0; i < count; i++) {
    const kind = r.u8("tuple column kind");
    if (kind === COLUMN_TEXT || kind === COLUMN_BINARY) {
      values[i] = r.take(r.u32("column value length"), "column value");
    } else if (kind === COLUMN_NULL) {
      values[i] = null;
    } else if (kind === COLUMN_UNCHANGED) {
      values[i] = UNCHANGED_TOAST;
    } else {
      r.fail(`unknown tuple kind ${hexByte(kind)}`, r.pos - 1);
    }
  }
  return values;
}

function readUpdate(r: ByteReader, xid: number | undefined): UpdateMessage {
  const relationId = r.u32("relation id");
  let keyTuple: TupleData | undefined;
  let oldTuple: TupleData | undefined;
  let marker = r.u8("tuple marker");
  if (marker === TUPLE_KEY) {
    keyTuple = readTuple(r);
    marker = r.u8("tuple marker");
  } else if (marker === TUPLE_OLD) {
    oldTuple = readTuple(r);
    marker = r.u8("tuple marker");
  } else if (marker !== TUPLE_NEW) {
    r.fail(`unknown tuple marker ${hexByte(marker)}, expected 'K', 'O' or 'N'`, r.pos - 1);
  }
  expectMarker(r, marker, TUPLE_NEW);
  const newTuple = readTuple(r);
  return { type: "update", xid, relationId, keyTuple, oldTuple, newTuple };
}

function readDelete(r: ByteReader, xid: number | undefined): DeleteMessage {
  const relationId = r.u32("relation id");
  const marker = r.u8("tuple marker");
  if (marker === TUPLE_KEY) {
    return { type: "delete", xid, relationId, keyTuple: readTuple(r), oldTuple: undefined };
  }
  if (marker === TUPLE_OLD) {
    return { type: "delete", xid, relationId, keyTuple: undefined, oldTuple: readTuple(r) };
  }
  return r.fail(`unknown tuple marker ${hexByte(marker)}, expected 'K' or 'O'`, r.pos - 1);
}

function readNamespace(r: ByteReader): string {
  // pgoutput abbreviates pg_catalog to "" to save space (logicalrep_write_namespace).
  const namespace = r.cstring("namespace");
  return namespace === "" ? "pg_catalog" : namespace;
}

function readRelation(r: ByteReader, xid: number | undefined): RelationMessage {
  const relationId = r.u32("relation id");
  const namespace = readNamespace(r);
  const name = r.cstring("relation name");
  const identity = r.u8("replica identity");
  if (identity !== 0x64 && identity !== 0x6e && identity !== 0x66 && identity !== 0x69) {
    r.fail(`unknown replica identity ${hexByte(identity)}`, r.pos - 1);
  }
  const replicaIdentity = String.fromCharCode(identity) as RelationMessage["replicaIdentity"];
  const count = r.u16("column count");
  // flags + at least a NUL for the name + type OID + type modifier.
  if (count * 10 > r.remaining) {
    r.fail(
      `unexpected end of data reading ${count} column descriptions: ${r.remaining} bytes left`,
      r.pos - 2,
    );
  }
  const columns: RelationColumn[] = new Array(count);
  for (let i = 0; i < count; i++) {
    columns[i] = {
      flags: r.u8("column flags"),
      name: r.cstring("column name"),
      typeOid: r.u32("column type OID"),
      typeModifier: r.i32("column type modifier"),
    };
  }
  return { type: "relation", xid, relationId, namespace, name, replicaIdentity, columns };
}

function readTruncate(r: ByteReader, xid: number | undefined): TruncateMessage {
  const count = r.u32("relation count");
  const options = r.u8("options");
  if (count * 4 > r.remaining) {
    r.fail(
      `unexpected end of data reading ${count} relation ids: ${r.remaining} bytes left`,
      r.pos - 5,
    );
  }
  const relationIds: number[] = new Array(count);
  for (let i = 0; i < count; i++) relationIds[i] = r.u32("relation id");
  return { type: "truncate", xid, options, relationIds };
}

/** Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01 (UTC). */
const PG_EPOCH_UNIX_MICROS = 946_684_800_000_000n;

const PG_EPOCH_UNIX_MICROS_NUMBER = 946_684_800_000_000;

let lastMicros: bigint | undefined;
let lastFormatted = "";
/** Unix seconds and their "YYYY-MM-DDTHH:MM:SS." text, for the fast path. */
let lastSeconds = NaN;
let lastSecondsText = "";

/**
 * Formats a PostgreSQL timestamp (microseconds since 2000-01-01 00:00 UTC) as
 * UTC ISO 8601 with exactly six fractional digits: `2026-11-24T17:05:00.123456Z`.
 *
 * Values before 1970 and before 2000 are handled (the fraction is always the
 * non-negative remainder). Years outside 0000-9999 use the extended
 * `+YYYYYY`/`-YYYYYY` form of `Date.prototype.toISOString`.
 *
 * @throws {RangeError} if the instant is outside what `Date` can represent
 * (beyond about ±275,000 years, e.g. PostgreSQL's 'infinity').
 */
export function formatCommitTime(micros: bigint): string {
  // All rows of a transaction share one commit time; skip the work for repeats.
  if (micros === lastMicros) return lastFormatted;
  // Fast path, one call per transaction: times that are exact as doubles
  // (years 1715 to 2255) in plain arithmetic, with the date and time up to
  // the second formatted once per second.
  const unixMicros = Number(micros) + PG_EPOCH_UNIX_MICROS_NUMBER;
  if (Math.abs(unixMicros) <= Number.MAX_SAFE_INTEGER) {
    const fraction = ((unixMicros % 1_000_000) + 1_000_000) % 1_000_000;
    const seconds = (unixMicros - fraction) / 1_000_000;
    if (seconds !== lastSeconds) {
      lastSecondsText = new Date(seconds * 1000).toISOString().slice(0, -4);
      lastSeconds = seconds;
    }
    const digits = String(fraction);
    const formatted = lastSecondsText + "000000".slice(digits.length) + digits + "Z";
    lastMicros = micros;
    lastFormatted = formatted;
    return formatted;
  }
  const unix = micros + PG_EPOCH_UNIX_MICROS;
  let seconds = unix / 1_000_000n;
  let fraction = unix % 1_000_000n;
  if (fraction < 0n) {
    // BigInt division truncates toward zero; we want floor.
    fraction += 1_000_000n;
    seconds -= 1n;
  }
  const millis = Number(seconds) * 1000;
  const date = new Date(millis);
  if (Number.isNaN(date.getTime())) {
    throw new RangeError(`Cannot format timestamp ${micros}: outside the range of Date`);
  }
  const iso = date.toISOString(); // "...T17:05:00.000Z"
  const formatted = iso.slice(0, -4) + fraction.toString().padStart(6, "0") + "Z";
  lastMicros = micros;
  lastFormatted = formatted;
  return formatted;
}
