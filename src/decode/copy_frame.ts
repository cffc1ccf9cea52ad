/**
 * The CopyBoth envelope of PostgreSQL's streaming replication protocol:
 * XLogData ('w') and Primary keepalive ('k') frames from the server, and the
 * Standby status update ('r') we send back to acknowledge WAL.
 *
 * See "Streaming Replication Protocol" (protocol-replication) in the
 * PostgreSQL documentation. All integers are big-endian; times are
 * microseconds since 2000-01-01 00:00 UTC.
 *
 * @module
 */

import type { Lsn } from "../lsn.ts";
import { ByteReader, hexByte } from "./_reader.ts";
import { PgoutputDecodeError } from "./pgoutput.ts";

export { PgoutputDecodeError };

/** 'w': a chunk of WAL data; for logical replication, one pgoutput message. */
export interface XLogDataFrame {
  type: "xlogdata";
  /** WAL position of the start of `data`. */
  walStart: Lsn;
  /** The current end of WAL on the server. */
  walEnd: Lsn;
  /** Server clock when sent, microseconds since 2000-01-01 UTC. */
  sendTime: bigint;
  /** The payload, a subarray of the input (no copy). */
  data: Uint8Array;
}

/** 'k': Primary keepalive message. */
export interface KeepaliveFrame {
  type: "keepalive";
  /** The current end of WAL on the server. */
  walEnd: Lsn;
  /** Server clock when sent, microseconds since 2000-01-01 UTC. */
  sendTime: bigint;
  /** The server asks for a standby status update right away (or it may time us out). */
  replyRequested: boolean;
}

/** A decoded CopyData frame from the server. */
export type CopyFrame = XLogDataFrame | KeepaliveFrame;

/** The positions and time reported in a standby status update. */
export interface StandbyStatus {
  /** Last WAL byte + 1 received and written. */
  written: Lsn;
  /** Last WAL byte + 1 made durable; for a logical slot this moves `confirmed_flush_lsn`. */
  flushed: Lsn;
  /** Last WAL byte + 1 applied. */
  applied: Lsn;
  /** Client clock, microseconds since 2000-01-01 UTC. */
  sendTime: bigint;
  /** Ask the server to reply immediately with a keepalive. */
  replyRequested: boolean;
}

const FRAME_XLOGDATA = 0x77; // 'w'
const FRAME_KEEPALIVE = 0x6b; // 'k'
const FRAME_STATUS = 0x72; // 'r'

/** Size of a standby status update: type, 3 LSNs, time, reply flag. */
const STATUS_SIZE = 1 + 8 + 8 + 8 + 8 + 1;

const reader = new ByteReader();

/**
 * Decodes one CopyData payload received during START_REPLICATION.
 *
 * @throws {PgoutputDecodeError} on an unknown frame type, truncated input or
 * trailing bytes after a keepalive.
 */
export function decodeCopyFrame(bytes: Uint8Array): CopyFrame {
  const r: ByteReader = reader;
  r.reset(bytes, "replication CopyData");
  const type = r.u8("frame type");
  if (type === FRAME_XLOGDATA) {
    r.label = "replication XLogData";
    const walStart = r.lsn("WAL start");
    const walEnd = r.lsn("WAL end");
    const sendTime = r.i64("send time");
    return { type: "xlogdata", walStart, walEnd, sendTime, data: r.rest() };
  }
  if (type === FRAME_KEEPALIVE) {
    r.label = "replication keepalive";
    const walEnd = r.lsn("WAL end");
    const sendTime = r.i64("send time");
    const replyRequested = r.u8("reply flag") !== 0;
    r.finish();
    return { type: "keepalive", walEnd, sendTime, replyRequested };
  }
  return r.fail(`unknown frame type ${hexByte(type)}`, 0);
}

/**
 * Encodes a Standby status update ('r', 34 bytes) to send as CopyData.
 *
 * @throws {RangeError} if an LSN or the time does not fit its 64-bit field.
 */
export function encodeStandbyStatus(status: StandbyStatus): Uint8Array {
  const bytes = new Uint8Array(STATUS_SIZE);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, FRAME_STATUS);
  // setBigUint64 silently wraps out-of-range values; a wrapped LSN would
  // acknowledge the wrong position, so check instead.
  view.setBigUint64(1, checkU64(status.written, "written"));
  view.setBigUint64(9, checkU64(status.flushed, "flushed"));
  view.setBigUint64(17, checkU64(status.applied, "applied"));
  const time = status.sendTime;
  if (time < -(1n << 63n) || time >= 1n << 63n) {
    throw new RangeError(`Cannot encode send time ${time}: outside the signed 64-bit range`);
  }
  view.setBigInt64(25, time);
  view.setUint8(33, status.replyRequested ? 1 : 0);
  return bytes;
}

function checkU64(value: bigint, name: string): bigint {
  if (value < 0n || value >= 1n << 64n) {
    throw new RangeError(`Cannot encode ${name} LSN ${value}: outside 0..2^64-1`);
  }
  return value;
}
