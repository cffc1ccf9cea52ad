/**
 * `COPY ... TO STDOUT` through a pg client as an async iterable of byte
 * chunks, with socket backpressure. PostgreSQL sends one CopyData message
 * per row; they are coalesced into chunks of at least 256 KiB so that gzip
 * and file writes see large pieces.
 *
 * (pg-copy-streams' readable-event loop stalls under Deno's Node
 * compatibility layer when the consumer awaits between chunks, so we listen
 * to pg's own CopyData events, as the replication stream does.)
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";

const CHUNK = 256 * 1024;
const FIRST_BUFFER = 4 * 1024;
const HIGH_WATER = 8 * 1024 * 1024;
const LOW_WATER = 2 * 1024 * 1024;

interface PgConnection {
  on(event: "copyData", listener: (msg: { chunk: Uint8Array }) => void): void;
  removeListener(event: "copyData", listener: (msg: { chunk: Uint8Array }) => void): void;
  stream: { pause(): void; resume(): void };
}

/** Result holder filled in when the COPY completes. */
export interface CopyOutResult {
  rowCount: number;
}

/**
 * Runs a COPY TO STDOUT statement and yields its output. `result.rowCount`
 * is set once the iteration has finished.
 */
export async function* copyOut(
  client: pg.Client,
  sql: string,
  result: CopyOutResult = { rowCount: 0 },
): AsyncGenerator<Uint8Array> {
  const conn = (client as unknown as { connection: PgConnection }).connection;
  const queue: Uint8Array[] = [];
  let queued = 0;
  let paused = false;
  let done = false;
  let failure: unknown = null;
  let wake: (() => void) | null = null;
  // Starts small and grows: thousands of one-row tables are exported one
  // COPY each, and a full-size buffer per COPY was most of their garbage.
  let pending = new Uint8Array(FIRST_BUFFER);
  let pendingLength = 0;
  const signal = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  const onData = (msg: { chunk: Uint8Array }) => {
    const c = msg.chunk;
    // Coalesce rows; pg's parser reuses its buffer, so bytes are copied here.
    const need = pendingLength + c.length;
    if (need > pending.length) {
      if (need <= CHUNK * 2) {
        const grown = new Uint8Array(Math.min(CHUNK * 2, Math.max(need, pending.length * 4)));
        grown.set(pending.subarray(0, pendingLength));
        pending = grown;
      } else {
        if (pendingLength > 0) {
          queue.push(pending.slice(0, pendingLength));
          queued += pendingLength;
          pendingLength = 0;
        }
        if (c.length > pending.length) pending = new Uint8Array(c.length * 2);
      }
    }
    pending.set(c, pendingLength);
    pendingLength += c.length;
    if (pendingLength >= CHUNK) {
      queue.push(pending.slice(0, pendingLength));
      queued += pendingLength;
      pendingLength = 0;
    }
    if (!paused && queued > HIGH_WATER) {
      paused = true;
      conn.stream.pause();
    }
    signal();
  };
  conn.on("copyData", onData);
  client.query(sql).then(
    (res) => {
      if (pendingLength > 0) queue.push(pending.slice(0, pendingLength));
      pendingLength = 0;
      result.rowCount = res.rowCount ?? 0;
      done = true;
      signal();
    },
    (error) => {
      failure = error;
      done = true;
      signal();
    },
  );
  try {
    while (true) {
      const chunk = queue.shift();
      if (chunk) {
        queued -= chunk.length;
        if (paused && queued < LOW_WATER) {
          paused = false;
          conn.stream.resume();
        }
        yield chunk;
        continue;
      }
      if (done) break;
      await new Promise<void>((resolve) => wake = resolve);
    }
    if (failure) throw failure;
  } finally {
    conn.removeListener("copyData", onData);
    if (paused) conn.stream.resume();
  }
}
