/**
 * Test-only builders of pgoutput messages and CopyData frames, written from
 * the documented layouts (protocol-logicalrep-message-formats) independently
 * of the decoder, plus a seeded PRNG for fuzzing.
 */

import { UNCHANGED_TOAST } from "../../src/decode/pgoutput.ts";

const encoder = new TextEncoder();

/** UTF-8 bytes of a string. */
export function utf8(text: string): Uint8Array {
  return encoder.encode(text);
}

/** Appends big-endian fields to a growing byte list. */
export class Bytes {
  #out: number[] = [];

  u8(value: number): this {
    this.#out.push(value & 0xff);
    return this;
  }
  char(c: string): this {
    return this.u8(c.charCodeAt(0));
  }
  u16(value: number): this {
    return this.u8(value >>> 8).u8(value);
  }
  u32(value: number): this {
    return this.u8(value >>> 24).u8(value >>> 16).u8(value >>> 8).u8(value);
  }
  i32(value: number): this {
    return this.u32(value >>> 0);
  }
  u64(value: bigint): this {
    const v = BigInt.asUintN(64, value);
    for (let shift = 56n; shift >= 0n; shift -= 8n) this.u8(Number((v >> shift) & 0xffn));
    return this;
  }
  i64(value: bigint): this {
    return this.u64(BigInt.asUintN(64, value));
  }
  raw(bytes: ArrayLike<number>): this {
    for (let i = 0; i < bytes.length; i++) this.u8(bytes[i]);
    return this;
  }
  cstr(text: string): this {
    return this.raw(utf8(text)).u8(0);
  }
  build(): Uint8Array {
    return new Uint8Array(this.#out);
  }
}

/** A column value for {@linkcode tuple}: text, NULL, unchanged TOAST or binary bytes. */
export type FixtureValue = string | null | typeof UNCHANGED_TOAST | { binary: number[] };

/** Writes TupleData: Int16 count, then per column n | u | t Int32 len bytes | b Int32 len bytes. */
export function tuple(b: Bytes, values: FixtureValue[]): Bytes {
  b.u16(values.length);
  for (const value of values) {
    if (value === null) b.char("n");
    else if (value === UNCHANGED_TOAST) b.char("u");
    else if (typeof value === "string") {
      const bytes = utf8(value);
      b.char("t").u32(bytes.length).raw(bytes);
    } else b.char("b").u32(value.binary.length).raw(value.binary);
  }
  return b;
}

function head(type: string, xid: number | undefined): Bytes {
  const b = new Bytes().char(type);
  if (xid !== undefined) b.u32(xid);
  return b;
}

/** Message builders; `xid` is the leading xid that only in-stream messages carry. */
export const build = {
  begin(finalLsn: bigint, commitTime: bigint, xid: number): Uint8Array {
    return new Bytes().char("B").u64(finalLsn).i64(commitTime).u32(xid).build();
  },
  commit(flags: number, commitLsn: bigint, endLsn: bigint, commitTime: bigint): Uint8Array {
    return new Bytes().char("C").u8(flags).u64(commitLsn).u64(endLsn).i64(commitTime).build();
  },
  origin(commitLsn: bigint, name: string): Uint8Array {
    return new Bytes().char("O").u64(commitLsn).cstr(name).build();
  },
  relation(
    relationId: number,
    namespace: string,
    name: string,
    identity: string,
    columns: [flags: number, name: string, typeOid: number, typmod: number][],
    xid?: number,
  ): Uint8Array {
    const b = head("R", xid).u32(relationId).cstr(namespace).cstr(name).char(identity);
    b.u16(columns.length);
    for (const [flags, column, oid, typmod] of columns) {
      b.u8(flags).cstr(column).u32(oid).i32(typmod);
    }
    return b.build();
  },
  type(typeOid: number, namespace: string, name: string, xid?: number): Uint8Array {
    return head("Y", xid).u32(typeOid).cstr(namespace).cstr(name).build();
  },
  insert(relationId: number, values: FixtureValue[], xid?: number): Uint8Array {
    return tuple(head("I", xid).u32(relationId).char("N"), values).build();
  },
  update(
    relationId: number,
    old: { kind: "K" | "O"; values: FixtureValue[] } | undefined,
    values: FixtureValue[],
    xid?: number,
  ): Uint8Array {
    const b = head("U", xid).u32(relationId);
    if (old) tuple(b.char(old.kind), old.values);
    return tuple(b.char("N"), values).build();
  },
  delete(relationId: number, kind: "K" | "O", values: FixtureValue[], xid?: number): Uint8Array {
    return tuple(head("D", xid).u32(relationId).char(kind), values).build();
  },
  truncate(options: number, relationIds: number[], xid?: number): Uint8Array {
    const b = head("T", xid).u32(relationIds.length).u8(options);
    for (const id of relationIds) b.u32(id);
    return b.build();
  },
  message(flags: number, lsn: bigint, prefix: string, content: number[], xid?: number): Uint8Array {
    return head("M", xid).u8(flags).u64(lsn).cstr(prefix).u32(content.length).raw(content).build();
  },
  streamStart(xid: number, firstSegment: boolean): Uint8Array {
    return new Bytes().char("S").u32(xid).u8(firstSegment ? 1 : 0).build();
  },
  streamStop(): Uint8Array {
    return new Bytes().char("E").build();
  },
  streamCommit(
    xid: number,
    flags: number,
    commitLsn: bigint,
    endLsn: bigint,
    commitTime: bigint,
  ): Uint8Array {
    return new Bytes().char("c").u32(xid).u8(flags).u64(commitLsn).u64(endLsn).i64(commitTime)
      .build();
  },
  streamAbort(xid: number, subXid: number, abort?: [lsn: bigint, time: bigint]): Uint8Array {
    const b = new Bytes().char("A").u32(xid).u32(subXid);
    if (abort) b.u64(abort[0]).i64(abort[1]);
    return b.build();
  },
  beginPrepare(
    prepareLsn: bigint,
    endLsn: bigint,
    prepareTime: bigint,
    xid: number,
    gid: string,
  ): Uint8Array {
    return new Bytes().char("b").u64(prepareLsn).u64(endLsn).i64(prepareTime).u32(xid).cstr(gid)
      .build();
  },
  /** Prepare ('P'), Commit Prepared ('K') and Stream Prepare ('p') share one layout. */
  prepareLike(
    type: "P" | "K" | "p",
    flags: number,
    lsn: bigint,
    endLsn: bigint,
    time: bigint,
    xid: number,
    gid: string,
  ): Uint8Array {
    return new Bytes().char(type).u8(flags).u64(lsn).u64(endLsn).i64(time).u32(xid).cstr(gid)
      .build();
  },
  rollbackPrepared(
    flags: number,
    prepareEndLsn: bigint,
    rollbackEndLsn: bigint,
    prepareTime: bigint,
    rollbackTime: bigint,
    xid: number,
    gid: string,
  ): Uint8Array {
    return new Bytes().char("r").u8(flags).u64(prepareEndLsn).u64(rollbackEndLsn)
      .i64(prepareTime).i64(rollbackTime).u32(xid).cstr(gid).build();
  },
};

/** A small seeded PRNG (mulberry32) so fuzz failures reproduce. */
export function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Concatenates byte arrays; used to place messages at odd offsets of one buffer. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
