/**
 * The logical replication connection: START_REPLICATION with pgoutput, the
 * CopyBoth frames as a pull queue with socket backpressure, and standby
 * status updates that we send ourselves (never an automatic ack).
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { Buffer } from "node:buffer";
import { encodeStandbyStatus } from "../decode/copy_frame.ts";
import { CdcError } from "../errors.ts";
import { formatLsn, type Lsn } from "../lsn.ts";
import { connect } from "./connect.ts";
import { slotLostFromServerError } from "./slot_health.ts";
import { quoteIdent } from "./table_selection.ts";

/** Options for {@linkcode ReplicationStream.start}. */
export interface ReplicationOptions {
  slot: string;
  publication: string;
  /** pgoutput protocol version: 4 on PostgreSQL 16+, 2 on 14-15. */
  protocol: 1 | 2 | 3 | 4;
  /** Ask for in-progress streaming of large transactions (protocol >= 2). */
  streaming: boolean;
  /** Where to start; the server starts at the slot's confirmed_flush_lsn if that is later. */
  startLsn: Lsn;
  applicationName?: string;
}

// Pause the socket when this much is queued; resume under the low mark.
// Changes arrive as many tiny frames (about 60 bytes for a narrow insert),
// each a Uint8Array view plus queue bookkeeping. Counted by payload alone, a
// 16 MiB mark let 175k frames queue up and a 500k-row transaction or a 1M-row
// backlog take the process past 256 MB (peak RSS 250-530 MB); with the cost
// per frame and these marks it stays under 200 MB at the same CPU time.
const HIGH_WATER = 1024 * 1024;
const LOW_WATER = 256 * 1024;
/** What a queued frame costs beyond its payload (JS objects, allocator), roughly. */
const FRAME_COST = 256;

/**
 * Received frames are copied into shared slabs of this size: one ArrayBuffer
 * per frame cost more than the rest of receiving (allocation, GC, and a new
 * DataView per frame in the decoder). A slab is freed once every frame in it
 * has been processed; larger frames get their own buffer.
 */
const SLAB_SIZE = 256 * 1024;
const SLAB_MAX_FRAME = SLAB_SIZE / 8;

const PG_EPOCH_MICROS = 946_684_800_000_000n;

/** Microseconds since 2000-01-01, the clock of the replication protocol. */
export function pgNowMicros(): bigint {
  return BigInt(Date.now()) * 1000n - PG_EPOCH_MICROS;
}

interface PgConnection {
  on(event: string, listener: (msg: { chunk?: Uint8Array }) => void): void;
  once(event: string, listener: () => void): void;
  sendCopyFromChunk(chunk: Uint8Array): void;
  stream: { pause(): void; resume(): void; once(event: string, cb: () => void): void };
}

function quoteLiteral(text: string): string {
  return "'" + text.replaceAll("'", "''") + "'";
}

/** A running replication connection. */
export class ReplicationStream {
  #client: pg.Client;
  #conn: PgConnection;
  #queue: Uint8Array[] = [];
  #head = 0;
  #queuedBytes = 0;
  #slab = new Uint8Array(SLAB_SIZE);
  #slabUsed = 0;
  #paused = false;
  #wake: (() => void) | null = null;
  #error: Error | null = null;
  #ended = false;
  #slot: string;

  private constructor(client: pg.Client, slot: string) {
    this.#client = client;
    this.#conn = (client as unknown as { connection: PgConnection }).connection;
    this.#slot = slot;
  }

  /** Connects and issues START_REPLICATION; resolves once the server streams. */
  static async start(
    url: string | undefined,
    options: ReplicationOptions,
  ): Promise<ReplicationStream> {
    const client = await connect(url, {
      replication: true,
      applicationName: options.applicationName ?? `cdc-egress/${options.slot}`,
    });
    const stream = new ReplicationStream(client, options.slot);
    const conn = stream.#conn;
    conn.on("copyData", (msg) => stream.#push(msg.chunk!));
    const params = [
      `proto_version '${options.protocol}'`,
      `publication_names ${quoteLiteral(quoteIdent(options.publication))}`,
      `messages 'true'`,
      ...(options.streaming && options.protocol >= 2 ? [`streaming 'on'`] : []),
    ];
    const sql = `START_REPLICATION SLOT ${quoteIdent(options.slot)} LOGICAL ${
      formatLsn(options.startLsn)
    } (${params.join(", ")})`;
    const started = new Promise<void>((resolve) => conn.once("replicationStart", resolve));
    const done = client.query(sql).then(
      () => stream.#finish(null),
      (error) => stream.#finish(error),
    );
    client.on("end", () => stream.#finish(new Error("the replication connection closed")));
    await Promise.race([started, done]);
    if (stream.#error) {
      await client.end().catch(() => {});
      throw stream.#error;
    }
    return stream;
  }

  #push(chunk: Uint8Array): void {
    // pg's parser reuses its buffer, so the view must be copied before we
    // queue it (Buffer#slice would not copy).
    const n = chunk.byteLength;
    let copy: Uint8Array;
    if (n > SLAB_MAX_FRAME) {
      copy = new Uint8Array(chunk);
    } else {
      if (this.#slabUsed + n > SLAB_SIZE) {
        this.#slab = new Uint8Array(SLAB_SIZE);
        this.#slabUsed = 0;
      }
      copy = this.#slab.subarray(this.#slabUsed, this.#slabUsed + n);
      copy.set(chunk);
      this.#slabUsed += n;
    }
    this.#queue.push(copy);
    this.#queuedBytes += copy.byteLength + FRAME_COST;
    if (!this.#paused && this.#queuedBytes > HIGH_WATER) {
      this.#paused = true;
      this.#conn.stream.pause();
    }
    this.#wakeUp();
  }

  #finish(error: unknown): void {
    if (this.#ended) return;
    this.#ended = true;
    if (error) this.#error = this.#translate(error);
    this.#wakeUp();
  }

  #translate(error: unknown): Error {
    const e = error as { code?: string; message?: string };
    const msg = String(e?.message ?? error).split("\n")[0];
    if (e?.code === "55006") {
      const pid = /PID (\d+)/.exec(msg)?.[1];
      return new CdcError(
        "slot_active",
        `Cannot stream from slot "${this.#slot}": it is active in process ${pid ?? "(unknown)"}`,
        { cause: error },
      );
    }
    const lost = slotLostFromServerError(this.#slot, error);
    if (lost) return lost;
    if (e?.code === "42704") {
      return new CdcError(
        "not_initialized",
        `Cannot stream from slot "${this.#slot}": ${msg}; run "cdc-egress init" first`,
        { cause: error },
      );
    }
    return new CdcError("connection", `Replication stream failed: ${msg}`, { cause: error });
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /** Frames already received and not yet taken: their bytes plus a cost per frame. */
  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  /** Takes a received frame without waiting, or undefined when none is queued. */
  poll(): Uint8Array | undefined {
    if (this.#head >= this.#queue.length) return undefined;
    const frame = this.#queue[this.#head];
    this.#queue[this.#head++] = undefined as unknown as Uint8Array;
    if (this.#head > 4096 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    this.#queuedBytes -= frame.byteLength + FRAME_COST;
    if (this.#paused && this.#queuedBytes < LOW_WATER) {
      this.#paused = false;
      this.#conn.stream.resume();
    }
    return frame;
  }

  /**
   * Waits for the next frame, at most `timeoutMs`. Returns undefined on
   * timeout; throws when the stream failed or ended.
   */
  async next(timeoutMs: number): Promise<Uint8Array | undefined> {
    const frame = this.poll();
    if (frame) return frame;
    if (this.#ended) throw this.#error ?? new CdcError("connection", "Replication stream ended");
    let timer: ReturnType<typeof setTimeout> | undefined;
    await new Promise<void>((resolve) => {
      this.#wake = resolve;
      timer = setTimeout(resolve, timeoutMs);
    });
    clearTimeout(timer);
    this.#wake = null;
    const after = this.poll();
    if (after) return after;
    if (this.#ended) throw this.#error ?? new CdcError("connection", "Replication stream ended");
    return undefined;
  }

  /** Reports `lsn` as written, flushed and applied. Only durable LSNs may be passed. */
  sendStatus(lsn: Lsn, replyRequested = false): void {
    if (this.#ended) return;
    const status = encodeStandbyStatus({
      written: lsn,
      flushed: lsn,
      applied: lsn,
      sendTime: pgNowMicros(),
      replyRequested,
    });
    // pg's serializer needs a Node Buffer.
    this.#conn.sendCopyFromChunk(Buffer.from(status.buffer, status.byteOffset, status.byteLength));
  }

  /** Ends the connection (after a final status update the caller sent). */
  async close(): Promise<void> {
    this.#ended = true;
    this.#wakeUp();
    await this.#client.end().catch(() => {});
  }
}
