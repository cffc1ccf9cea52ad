/**
 * Disk spool for in-progress transactions that PostgreSQL streams before
 * they commit (pgoutput protocol >= 2, `streaming 'on'`).
 *
 * A streamed transaction's changes arrive in blocks, interleaved with other
 * transactions, and may still abort. We keep the raw pgoutput bytes of each
 * change in a file per top-level xid (memory stays bounded whatever the
 * transaction size), remember which subtransactions aborted, and replay the
 * file in order when Stream Commit arrives. Spools never outlive the
 * process: after a restart PostgreSQL streams the transaction again.
 */

import { join } from "node:path";

const FLUSH_AT = 256 * 1024;

interface Spool {
  file: Deno.FsFile;
  path: string;
  buffer: Uint8Array;
  length: number;
  bytes: number;
  abortedSubXids: Set<number>;
}

/** One spooled record: the subtransaction it belongs to and its pgoutput bytes. */
export interface SpooledRecord {
  subXid: number;
  bytes: Uint8Array;
}

/** Spool files of the streamed transactions in progress. */
export class TransactionSpool {
  #dir: string;
  #spools = new Map<number, Spool>();

  constructor(dir: string) {
    this.#dir = dir;
  }

  /** Removes spool files left by an earlier process and makes the directory. */
  async reset(): Promise<void> {
    await Deno.remove(this.#dir, { recursive: true }).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
    await Deno.mkdir(this.#dir, { recursive: true, mode: 0o700 });
  }

  /** Number of transactions with a spool open. */
  get openCount(): number {
    return this.#spools.size;
  }

  /** Total bytes spooled for open transactions. */
  get bytes(): number {
    let n = 0;
    for (const s of this.#spools.values()) n += s.bytes;
    return n;
  }

  async #open(xid: number): Promise<Spool> {
    let spool = this.#spools.get(xid);
    if (!spool) {
      const path = join(this.#dir, `xid-${xid}.spool`);
      const file = await Deno.open(path, {
        create: true,
        write: true,
        truncate: true,
        mode: 0o600,
      });
      spool = {
        file,
        path,
        buffer: new Uint8Array(FLUSH_AT * 2),
        length: 0,
        bytes: 0,
        abortedSubXids: new Set(),
      };
      this.#spools.set(xid, spool);
    }
    return spool;
  }

  /** Appends one change of top-level transaction `xid` (subtransaction `subXid`). */
  async append(xid: number, subXid: number, bytes: Uint8Array): Promise<void> {
    const spool = await this.#open(xid);
    const need = 8 + bytes.length;
    if (spool.length + need > spool.buffer.length) {
      await this.#flush(spool);
      if (need > spool.buffer.length) spool.buffer = new Uint8Array(need * 2);
    }
    const view = new DataView(spool.buffer.buffer, spool.buffer.byteOffset);
    view.setUint32(spool.length, subXid);
    view.setUint32(spool.length + 4, bytes.length);
    spool.buffer.set(bytes, spool.length + 8);
    spool.length += need;
    spool.bytes += need;
    if (spool.length >= FLUSH_AT) await this.#flush(spool);
  }

  async #flush(spool: Spool): Promise<void> {
    let off = 0;
    while (off < spool.length) {
      off += await spool.file.write(spool.buffer.subarray(off, spool.length));
    }
    spool.length = 0;
  }

  /** Records a Stream Abort: the whole transaction when subXid == xid, else one subtransaction. */
  async abort(xid: number, subXid: number): Promise<void> {
    const spool = this.#spools.get(xid);
    if (!spool) return;
    if (subXid === xid) {
      await this.#discard(xid);
    } else {
      spool.abortedSubXids.add(subXid);
    }
  }

  async #discard(xid: number): Promise<void> {
    const spool = this.#spools.get(xid);
    if (!spool) return;
    this.#spools.delete(xid);
    spool.file.close();
    await Deno.remove(spool.path).catch(() => {});
  }

  /**
   * Replays the committed transaction's records in order, leaving out those
   * of aborted subtransactions, then deletes its spool.
   */
  async *replay(xid: number): AsyncGenerator<SpooledRecord> {
    const spool = this.#spools.get(xid);
    if (!spool) return;
    await this.#flush(spool);
    spool.file.close();
    this.#spools.delete(xid);
    const file = await Deno.open(spool.path, { read: true });
    try {
      let buf = new Uint8Array(1024 * 1024);
      let start = 0;
      let end = 0;
      while (true) {
        // Parse whole records out of buf[start, end).
        while (end - start >= 8) {
          const view = new DataView(buf.buffer, buf.byteOffset + start);
          const subXid = view.getUint32(0);
          const len = view.getUint32(4);
          if (end - start < 8 + len) break;
          if (!spool.abortedSubXids.has(subXid)) {
            yield { subXid, bytes: buf.subarray(start + 8, start + 8 + len) };
          }
          start += 8 + len;
        }
        // Compact and grow as needed, then read more.
        if (start > 0) {
          buf.copyWithin(0, start, end);
          end -= start;
          start = 0;
        }
        if (end >= 8) {
          const len = new DataView(buf.buffer, buf.byteOffset).getUint32(4);
          if (8 + len > buf.length) {
            const bigger = new Uint8Array(8 + len);
            bigger.set(buf.subarray(0, end));
            buf = bigger;
          }
        }
        const n = await file.read(buf.subarray(end));
        if (n === null) break;
        end += n;
      }
    } finally {
      file.close();
      await Deno.remove(spool.path).catch(() => {});
    }
  }

  /** Closes and removes every open spool (shutdown). */
  async close(): Promise<void> {
    for (const xid of [...this.#spools.keys()]) await this.#discard(xid);
  }
}
