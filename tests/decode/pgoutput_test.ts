import assert from "node:assert/strict";
import {
  formatCommitTime,
  PgoutputDecodeError,
  PgoutputDecoder,
  type PgoutputDecoderOptions,
  type PgoutputMessage,
  type TupleData,
  UNCHANGED_TOAST,
} from "../../src/decode/pgoutput.ts";
import { toLsn } from "../../src/lsn.ts";
import { build, concat, type FixtureValue, prng, utf8 } from "./_fixtures.ts";

// ---------------------------------------------------------------------------
// Shared values and helpers

const LSN_A = toLsn(0x16b3748n); // 0/16B3748
const LSN_B = toLsn(0x16b3778n); // 0/16B3778
const LSN_HIGH = toLsn(0xffffffff_fffffff0n); // near the top of the range: must stay unsigned
/** 2026-11-24T17:05:00.123456Z in PostgreSQL microseconds. */
const TIME = 848855100123456n;
const XID = 750;
const STREAM_XID = 1000;
const ORDERS = 16385;

const CONFIGS: PgoutputDecoderOptions[] = [
  { protocol: 1 },
  { protocol: 2 },
  { protocol: 3 },
  { protocol: 4 },
  { protocol: 4, streamingParallel: true },
];

function describe(config: PgoutputDecoderOptions): string {
  return `protocol ${config.protocol}${config.streamingParallel ? " (parallel)" : ""}`;
}

/** A decoder for `config`, inside a stream block when `inStream`. */
function decoderFor(config: PgoutputDecoderOptions, inStream: boolean): PgoutputDecoder {
  const decoder = new PgoutputDecoder(config);
  if (inStream) decoder.decode(build.streamStart(STREAM_XID, true));
  return decoder;
}

function t(text: string): Uint8Array {
  return utf8(text);
}

/** Calls `fn`, expecting a PgoutputDecodeError; returns it for further checks. */
function assertDecodeError(
  fn: () => unknown,
  expected: { offset?: number; message?: string | RegExp } = {},
): PgoutputDecodeError {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  if (!(caught instanceof PgoutputDecodeError)) {
    throw new assert.AssertionError({
      message: `expected a PgoutputDecodeError, got ${caught === undefined ? "no error" : caught}`,
    });
  }
  assert.equal(caught.name, "PgoutputDecodeError");
  if (expected.offset !== undefined) assert.equal(caught.offset, expected.offset, caught.message);
  if (typeof expected.message === "string") assert.equal(caught.message, expected.message);
  else if (expected.message) assert.match(caught.message, expected.message);
  return caught;
}

// ---------------------------------------------------------------------------
// Hard-coded bytes, written out by hand from the documented layouts, so that
// the fixture builder and the decoder cannot agree on the same mistake.

/** Begin: final LSN 0/16B3748, commit time 2026-11-24T17:05:00.123456Z, xid 750. */
// deno-fmt-ignore
const LITERAL_BEGIN = new Uint8Array([
  0x42, // 'B'
  0x00, 0x00, 0x00, 0x00, 0x01, 0x6b, 0x37, 0x48, // final LSN
  0x00, 0x03, 0x04, 0x07, 0x7a, 0xb5, 0x69, 0x40, // commit time
  0x00, 0x00, 0x02, 0xee, // xid 750
]);

/** Insert into relation 16385: (1, 'héllo', NULL). */
// deno-fmt-ignore
const LITERAL_INSERT = new Uint8Array([
  0x49, // 'I'
  0x00, 0x00, 0x40, 0x01, // relation id 16385
  0x4e, // 'N'
  0x00, 0x03, // 3 columns
  0x74, 0x00, 0x00, 0x00, 0x01, 0x31, // 't' "1"
  0x74, 0x00, 0x00, 0x00, 0x06, 0x68, 0xc3, 0xa9, 0x6c, 0x6c, 0x6f, // 't' "héllo"
  0x6e, // 'n'
]);

/** Commit: flags 0, commit LSN 0/16B3748, end LSN 0/16B3778. */
// deno-fmt-ignore
const LITERAL_COMMIT = new Uint8Array([
  0x43, // 'C'
  0x00, // flags
  0x00, 0x00, 0x00, 0x00, 0x01, 0x6b, 0x37, 0x48, // commit LSN
  0x00, 0x00, 0x00, 0x00, 0x01, 0x6b, 0x37, 0x78, // end LSN
  0x00, 0x03, 0x04, 0x07, 0x7a, 0xb5, 0x69, 0x40, // commit time
]);

/** Relation public.orders (id int4 key, note varchar(20)), replica identity default. */
// deno-fmt-ignore
const LITERAL_RELATION = new Uint8Array([
  0x52, // 'R'
  0x00, 0x00, 0x40, 0x01, // relation id
  0x70, 0x75, 0x62, 0x6c, 0x69, 0x63, 0x00, // "public"
  0x6f, 0x72, 0x64, 0x65, 0x72, 0x73, 0x00, // "orders"
  0x64, // 'd'
  0x00, 0x02, // 2 columns
  0x01, 0x69, 0x64, 0x00, 0x00, 0x00, 0x00, 0x17, 0xff, 0xff, 0xff, 0xff, // key "id" int4 -1
  0x00, 0x6e, 0x6f, 0x74, 0x65, 0x00, 0x00, 0x00, 0x04, 0x13, 0x00, 0x00, 0x00, 0x18, // "note" 1043 24
]);

/** A streamed transaction: Stream Start, in-stream Update with old key, Stream Stop, Stream Commit. */
// deno-fmt-ignore
const LITERAL_STREAM = [
  new Uint8Array([0x53, 0x00, 0x00, 0x03, 0xe8, 0x01]), // 'S' xid 1000, first segment
  new Uint8Array([
    0x55, // 'U'
    0x00, 0x00, 0x03, 0xe8, // xid 1000 (in-stream)
    0x00, 0x00, 0x40, 0x01, // relation id
    0x4b, 0x00, 0x02, 0x74, 0x00, 0x00, 0x00, 0x01, 0x31, 0x6e, // 'K' ("1", NULL)
    0x4e, 0x00, 0x02, 0x74, 0x00, 0x00, 0x00, 0x01, 0x32, 0x75, // 'N' ("2", unchanged)
  ]),
  new Uint8Array([0x45]), // 'E'
  new Uint8Array([
    0x63, // 'c'
    0x00, 0x00, 0x03, 0xe8, // xid
    0x00, // flags
    0x00, 0x00, 0x00, 0x00, 0x01, 0x6b, 0x37, 0x48,
    0x00, 0x00, 0x00, 0x00, 0x01, 0x6b, 0x37, 0x78,
    0x00, 0x03, 0x04, 0x07, 0x7a, 0xb5, 0x69, 0x40,
  ]),
];

Deno.test("PgoutputDecoder.decode() reads a Begin/Insert/Commit exactly as PostgreSQL sends it", () => {
  const decoder = new PgoutputDecoder({ protocol: 1 });
  assert.deepStrictEqual(decoder.decode(LITERAL_BEGIN), {
    type: "begin",
    finalLsn: LSN_A,
    commitTime: TIME,
    xid: 750,
  });
  assert.deepStrictEqual(decoder.decode(LITERAL_INSERT), {
    type: "insert",
    xid: undefined,
    relationId: 16385,
    newTuple: [t("1"), t("héllo"), null],
  });
  assert.deepStrictEqual(decoder.decode(LITERAL_COMMIT), {
    type: "commit",
    flags: 0,
    commitLsn: LSN_A,
    endLsn: LSN_B,
    commitTime: TIME,
  });
  assert.equal(formatCommitTime(TIME), "2026-11-24T17:05:00.123456Z");
});

Deno.test("PgoutputDecoder.decode() reads a Relation exactly as PostgreSQL sends it", () => {
  const decoder = new PgoutputDecoder({ protocol: 1 });
  assert.deepStrictEqual(decoder.decode(LITERAL_RELATION), {
    type: "relation",
    xid: undefined,
    relationId: 16385,
    namespace: "public",
    name: "orders",
    replicaIdentity: "d",
    columns: [
      { flags: 1, name: "id", typeOid: 23, typeModifier: -1 },
      { flags: 0, name: "note", typeOid: 1043, typeModifier: 24 },
    ],
  });
});

Deno.test("PgoutputDecoder.decode() reads a streamed transaction exactly as PostgreSQL sends it", () => {
  const decoder = new PgoutputDecoder({ protocol: 2 });
  const [start, update, stop, commit] = LITERAL_STREAM;
  assert.deepStrictEqual(decoder.decode(start), {
    type: "streamStart",
    xid: 1000,
    firstSegment: true,
  });
  assert.equal(decoder.inStream, true);
  assert.deepStrictEqual(decoder.decode(update), {
    type: "update",
    xid: 1000,
    relationId: 16385,
    keyTuple: [t("1"), null],
    oldTuple: undefined,
    newTuple: [t("2"), UNCHANGED_TOAST],
  });
  assert.deepStrictEqual(decoder.decode(stop), { type: "streamStop" });
  assert.equal(decoder.inStream, false);
  assert.deepStrictEqual(decoder.decode(commit), {
    type: "streamCommit",
    xid: 1000,
    flags: 0,
    commitLsn: LSN_A,
    endLsn: LSN_B,
    commitTime: TIME,
  });
});

Deno.test("PgoutputDecoder.decode() returns column values as subarrays of the input", () => {
  const decoder = new PgoutputDecoder({ protocol: 1 });
  const message = decoder.decode(LITERAL_INSERT);
  assert.equal(message.type, "insert");
  if (message.type !== "insert") return;
  const [one, hello] = message.newTuple;
  assert.ok(one instanceof Uint8Array && hello instanceof Uint8Array);
  assert.equal(one.buffer, LITERAL_INSERT.buffer);
  assert.equal(one.byteOffset, LITERAL_INSERT.byteOffset + 13);
  assert.equal(hello.buffer, LITERAL_INSERT.buffer);
  assert.equal(hello.byteOffset, LITERAL_INSERT.byteOffset + 19);
  assert.equal(hello.byteLength, 6);
});

Deno.test("PgoutputDecoder.decode() reads messages at any offset of a shared buffer", () => {
  // Socket chunks hold many messages; the decoder must honour byteOffset and
  // not confuse buffers when it reuses a DataView.
  const shared = concat(new Uint8Array([1, 2, 3]), LITERAL_BEGIN, LITERAL_INSERT, LITERAL_COMMIT);
  const begin = shared.subarray(3, 3 + LITERAL_BEGIN.length);
  const insert = shared.subarray(begin.byteOffset + begin.length).subarray(
    0,
    LITERAL_INSERT.length,
  );
  const commit = shared.subarray(shared.length - LITERAL_COMMIT.length);
  const decoder = new PgoutputDecoder({ protocol: 1 });
  const expectedBegin = decoder.decode(LITERAL_BEGIN);
  const expectedCommit = decoder.decode(LITERAL_COMMIT);
  for (let round = 0; round < 3; round++) {
    assert.deepStrictEqual(decoder.decode(begin), expectedBegin);
    assert.deepStrictEqual(decoder.decode(LITERAL_COMMIT), expectedCommit);
    const message = decoder.decode(insert);
    assert.deepStrictEqual(message, {
      type: "insert",
      xid: undefined,
      relationId: 16385,
      newTuple: [t("1"), t("héllo"), null],
    });
    assert.deepStrictEqual(decoder.decode(commit), expectedCommit);
  }
});

Deno.test("PgoutputDecoder.decode() reports an unknown tuple kind with its offset", () => {
  // deno-fmt-ignore
  const bytes = new Uint8Array([
    0x49, 0x00, 0x00, 0x40, 0x01, 0x4e, 0x00, 0x02, // 'I' 16385 'N' 2 columns
    0x74, 0x00, 0x00, 0x00, 0x04, 0x61, 0x62, 0x63, 0x64, // 't' "abcd"
    0x7a, // 'z' at offset 17
  ]);
  assertDecodeError(() => new PgoutputDecoder({ protocol: 1 }).decode(bytes), {
    offset: 17,
    message: "Cannot decode pgoutput Insert at offset 17: unknown tuple kind 0x7a",
  });
});

// ---------------------------------------------------------------------------
// Every message type, built from the documented layouts, under every protocol
// that can carry it.

interface Case {
  name: string;
  /** Lowest protocol that can carry the message. */
  minProtocol: 1 | 2 | 3;
  /** Decoded inside a stream block. */
  inStream: boolean;
  /** Only for decoders with (true) or without (false) parallel streaming. */
  parallel?: boolean;
  bytes: Uint8Array;
  expected: PgoutputMessage;
}

const ORDERS_COLUMNS: [number, string, number, number][] = [
  [1, "id", 23, -1],
  [0, "näme", 25, -1],
  [0, "amount", 1700, 655366],
];

function relationExpected(xid: number | undefined): PgoutputMessage {
  return {
    type: "relation",
    xid,
    relationId: ORDERS,
    namespace: "sales",
    name: "orders",
    replicaIdentity: "d",
    columns: [
      { flags: 1, name: "id", typeOid: 23, typeModifier: -1 },
      { flags: 0, name: "näme", typeOid: 25, typeModifier: -1 },
      { flags: 0, name: "amount", typeOid: 1700, typeModifier: 655366 },
    ],
  };
}

/** Row values and their decoded form: text, multibyte, empty string, NULL, unchanged TOAST. */
const ROW: FixtureValue[] = ["42", "Zürich €𝄞", "", null, UNCHANGED_TOAST];
const ROW_DECODED: TupleData = [t("42"), t("Zürich €𝄞"), new Uint8Array(0), null, UNCHANGED_TOAST];
const KEY: FixtureValue[] = ["41", null, null, null, null];
const KEY_DECODED: TupleData = [t("41"), null, null, null, null];
const OLD: FixtureValue[] = ["41", "Genève", "", null, "x".repeat(300)];
const OLD_DECODED: TupleData = [t("41"), t("Genève"), new Uint8Array(0), null, t("x".repeat(300))];

/** Messages that are valid both inside a stream block (with xid) and outside (without). */
function changeCases(inStream: boolean): Case[] {
  const xid = inStream ? STREAM_XID : undefined;
  const where = inStream ? "inside a stream block (with xid)" : "outside a stream block";
  const minProtocol = inStream ? 2 : 1;
  const c = (name: string, bytes: Uint8Array, expected: PgoutputMessage): Case => ({
    name: `${name} ${where}`,
    minProtocol,
    inStream,
    bytes,
    expected,
  });
  return [
    c(
      "a Relation",
      build.relation(ORDERS, "sales", "orders", "d", ORDERS_COLUMNS, xid),
      relationExpected(xid),
    ),
    c("a Relation of pg_catalog (empty namespace)", build.relation(9, "", "pg_x", "n", [], xid), {
      type: "relation",
      xid,
      relationId: 9,
      namespace: "pg_catalog",
      name: "pg_x",
      replicaIdentity: "n",
      columns: [],
    }),
    c(
      "a Relation with REPLICA IDENTITY FULL",
      build.relation(ORDERS, "public", "Ölé table", "f", [[1, "a b", 25, -1]], xid),
      {
        type: "relation",
        xid,
        relationId: ORDERS,
        namespace: "public",
        name: "Ölé table",
        replicaIdentity: "f",
        columns: [{ flags: 1, name: "a b", typeOid: 25, typeModifier: -1 }],
      },
    ),
    c(
      "a Relation with REPLICA IDENTITY USING INDEX",
      build.relation(4_000_000_000, "s", "t", "i", [[1, "k", 20, -1]], xid),
      {
        type: "relation",
        xid,
        relationId: 4_000_000_000,
        namespace: "s",
        name: "t",
        replicaIdentity: "i",
        columns: [{ flags: 1, name: "k", typeOid: 20, typeModifier: -1 }],
      },
    ),
    c("a Type", build.type(16400, "public", "mood", xid), {
      type: "type",
      xid,
      typeOid: 16400,
      namespace: "public",
      name: "mood",
    }),
    c("a Type in pg_catalog (empty namespace)", build.type(16401, "", "x", xid), {
      type: "type",
      xid,
      typeOid: 16401,
      namespace: "pg_catalog",
      name: "x",
    }),
    c(
      "an Insert with text, multibyte, empty, NULL and unchanged values",
      build.insert(ORDERS, ROW, xid),
      {
        type: "insert",
        xid,
        relationId: ORDERS,
        newTuple: ROW_DECODED,
      },
    ),
    c("an Insert of a row without columns", build.insert(ORDERS, [], xid), {
      type: "insert",
      xid,
      relationId: ORDERS,
      newTuple: [],
    }),
    c(
      "an Insert with a binary value",
      build.insert(ORDERS, [{ binary: [0, 0, 0, 42] }, null], xid),
      {
        type: "insert",
        xid,
        relationId: ORDERS,
        newTuple: [new Uint8Array([0, 0, 0, 42]), null],
      },
    ),
    c("an Update without an old tuple", build.update(ORDERS, undefined, ROW, xid), {
      type: "update",
      xid,
      relationId: ORDERS,
      keyTuple: undefined,
      oldTuple: undefined,
      newTuple: ROW_DECODED,
    }),
    c(
      "an Update with an old key tuple",
      build.update(ORDERS, { kind: "K", values: KEY }, ROW, xid),
      {
        type: "update",
        xid,
        relationId: ORDERS,
        keyTuple: KEY_DECODED,
        oldTuple: undefined,
        newTuple: ROW_DECODED,
      },
    ),
    c(
      "an Update with an old full row",
      build.update(ORDERS, { kind: "O", values: OLD }, ROW, xid),
      {
        type: "update",
        xid,
        relationId: ORDERS,
        keyTuple: undefined,
        oldTuple: OLD_DECODED,
        newTuple: ROW_DECODED,
      },
    ),
    c("a Delete with an old key tuple", build.delete(ORDERS, "K", KEY, xid), {
      type: "delete",
      xid,
      relationId: ORDERS,
      keyTuple: KEY_DECODED,
      oldTuple: undefined,
    }),
    c("a Delete with an old full row", build.delete(ORDERS, "O", OLD, xid), {
      type: "delete",
      xid,
      relationId: ORDERS,
      keyTuple: undefined,
      oldTuple: OLD_DECODED,
    }),
    c("a Truncate with CASCADE and RESTART IDENTITY", build.truncate(3, [ORDERS, 16390], xid), {
      type: "truncate",
      xid,
      options: 3,
      relationIds: [ORDERS, 16390],
    }),
    c("a Truncate without options", build.truncate(0, [ORDERS], xid), {
      type: "truncate",
      xid,
      options: 0,
      relationIds: [ORDERS],
    }),
    c(
      "a transactional Message with binary content",
      build.message(1, LSN_A, "cdc_egress", [0, 1, 0xff, 0x7b, 0], xid),
      {
        type: "message",
        xid,
        flags: 1,
        lsn: LSN_A,
        prefix: "cdc_egress",
        content: new Uint8Array([0, 1, 0xff, 0x7b, 0]),
      },
    ),
    c(
      "a non-transactional Message with empty prefix and content",
      build.message(0, LSN_HIGH, "", [], xid),
      {
        type: "message",
        xid,
        flags: 0,
        lsn: LSN_HIGH,
        prefix: "",
        content: new Uint8Array(0),
      },
    ),
    // Origin never carries an xid, in or out of a stream block.
    c("an Origin", build.origin(LSN_HIGH, "node_ü"), {
      type: "origin",
      commitLsn: LSN_HIGH,
      name: "node_ü",
    }),
  ];
}

const CASES: Case[] = [
  {
    name: "a Begin",
    minProtocol: 1,
    inStream: false,
    bytes: build.begin(LSN_HIGH, TIME, 4_294_967_295),
    expected: { type: "begin", finalLsn: LSN_HIGH, commitTime: TIME, xid: 4_294_967_295 },
  },
  {
    name: "a Begin with a commit time before 2000",
    minProtocol: 1,
    inStream: false,
    bytes: build.begin(LSN_A, -1n, XID),
    expected: { type: "begin", finalLsn: LSN_A, commitTime: -1n, xid: XID },
  },
  {
    name: "a Commit",
    minProtocol: 1,
    inStream: false,
    bytes: build.commit(0, LSN_A, LSN_B, TIME),
    expected: { type: "commit", flags: 0, commitLsn: LSN_A, endLsn: LSN_B, commitTime: TIME },
  },
  ...changeCases(false),
  ...changeCases(true),
  {
    name: "a Stream Start of a first segment",
    minProtocol: 2,
    inStream: false,
    bytes: build.streamStart(STREAM_XID, true),
    expected: { type: "streamStart", xid: STREAM_XID, firstSegment: true },
  },
  {
    name: "a Stream Start of a later segment",
    minProtocol: 2,
    inStream: false,
    bytes: build.streamStart(STREAM_XID, false),
    expected: { type: "streamStart", xid: STREAM_XID, firstSegment: false },
  },
  {
    name: "a Stream Stop",
    minProtocol: 2,
    inStream: true,
    bytes: build.streamStop(),
    expected: { type: "streamStop" },
  },
  {
    name: "a Stream Commit",
    minProtocol: 2,
    inStream: false,
    bytes: build.streamCommit(STREAM_XID, 0, LSN_A, LSN_B, TIME),
    expected: {
      type: "streamCommit",
      xid: STREAM_XID,
      flags: 0,
      commitLsn: LSN_A,
      endLsn: LSN_B,
      commitTime: TIME,
    },
  },
  {
    name: "a Stream Abort without abort LSN and time",
    minProtocol: 2,
    inStream: false,
    parallel: false,
    bytes: build.streamAbort(STREAM_XID, STREAM_XID + 1),
    expected: {
      type: "streamAbort",
      xid: STREAM_XID,
      subXid: STREAM_XID + 1,
      abortLsn: undefined,
      abortTime: undefined,
    },
  },
  {
    name: "a Stream Abort with abort LSN and time (parallel streaming)",
    minProtocol: 2,
    inStream: false,
    parallel: true,
    bytes: build.streamAbort(STREAM_XID, STREAM_XID, [LSN_B, TIME]),
    expected: {
      type: "streamAbort",
      xid: STREAM_XID,
      subXid: STREAM_XID,
      abortLsn: LSN_B,
      abortTime: TIME,
    },
  },
  {
    name: "a Begin Prepare",
    minProtocol: 3,
    inStream: false,
    bytes: build.beginPrepare(LSN_A, LSN_B, TIME, XID, "gid-ü"),
    expected: {
      type: "beginPrepare",
      prepareLsn: LSN_A,
      endLsn: LSN_B,
      prepareTime: TIME,
      xid: XID,
      gid: "gid-ü",
    },
  },
  {
    name: "a Prepare",
    minProtocol: 3,
    inStream: false,
    bytes: build.prepareLike("P", 0, LSN_A, LSN_B, TIME, XID, "g1"),
    expected: {
      type: "prepare",
      flags: 0,
      prepareLsn: LSN_A,
      endLsn: LSN_B,
      prepareTime: TIME,
      xid: XID,
      gid: "g1",
    },
  },
  {
    name: "a Commit Prepared",
    minProtocol: 3,
    inStream: false,
    bytes: build.prepareLike("K", 0, LSN_B, LSN_HIGH, TIME + 5n, XID, "g1"),
    expected: {
      type: "commitPrepared",
      flags: 0,
      commitLsn: LSN_B,
      endLsn: LSN_HIGH,
      commitTime: TIME + 5n,
      xid: XID,
      gid: "g1",
    },
  },
  {
    name: "a Rollback Prepared",
    minProtocol: 3,
    inStream: false,
    bytes: build.rollbackPrepared(0, LSN_A, LSN_B, TIME, TIME + 7n, XID, ""),
    expected: {
      type: "rollbackPrepared",
      flags: 0,
      prepareEndLsn: LSN_A,
      rollbackEndLsn: LSN_B,
      prepareTime: TIME,
      rollbackTime: TIME + 7n,
      xid: XID,
      gid: "",
    },
  },
  {
    name: "a Stream Prepare",
    minProtocol: 3,
    inStream: false,
    bytes: build.prepareLike("p", 0, LSN_A, LSN_B, TIME, STREAM_XID, "g2"),
    expected: {
      type: "streamPrepare",
      flags: 0,
      prepareLsn: LSN_A,
      endLsn: LSN_B,
      prepareTime: TIME,
      xid: STREAM_XID,
      gid: "g2",
    },
  },
];

function configsFor(c: Case): PgoutputDecoderOptions[] {
  return CONFIGS.filter((config) =>
    config.protocol >= c.minProtocol &&
    (c.parallel === undefined || c.parallel === (config.streamingParallel ?? false))
  );
}

for (const c of CASES) {
  Deno.test(`PgoutputDecoder.decode() reads ${c.name}`, () => {
    const configs = configsFor(c);
    assert.ok(configs.length > 0);
    for (const config of configs) {
      const decoder = decoderFor(config, c.inStream);
      assert.deepStrictEqual(decoder.decode(c.bytes), c.expected, describe(config));
    }
  });
}

Deno.test("PgoutputDecoder.decode() throws PgoutputDecodeError for every truncation of every message", () => {
  let checked = 0;
  for (const c of CASES) {
    for (const config of configsFor(c)) {
      const decoder = decoderFor(config, c.inStream);
      for (let length = 0; length < c.bytes.length; length++) {
        const error = assertDecodeError(() => decoder.decode(c.bytes.subarray(0, length)));
        assert.ok(error.offset >= 0 && error.offset <= length, `${c.name}: ${error.message}`);
        assert.match(error.message, /^Cannot decode pgoutput .* at offset \d+: /);
        // A failed decode must not open or close a stream block.
        assert.equal(decoder.inStream, c.inStream, c.name);
        checked++;
      }
      // ...and the decoder still works afterwards.
      assert.deepStrictEqual(decoder.decode(c.bytes), c.expected);
    }
  }
  assert.ok(checked > 1000);
});

Deno.test("PgoutputDecoder.decode() rejects trailing bytes after every message", () => {
  for (const c of CASES) {
    for (const config of configsFor(c)) {
      const decoder = decoderFor(config, c.inStream);
      const bytes = concat(c.bytes, new Uint8Array([0]));
      assertDecodeError(() => decoder.decode(bytes), {
        offset: c.bytes.length,
        message: /1 trailing byte after the message$/,
      });
      assert.equal(decoder.inStream, c.inStream);
    }
  }
  assertDecodeError(
    () => new PgoutputDecoder({ protocol: 1 }).decode(concat(LITERAL_COMMIT, t("xyz"))),
    {
      offset: 26,
      message: "Cannot decode pgoutput Commit at offset 26: 3 trailing bytes after the message",
    },
  );
});

Deno.test("PgoutputDecoder.decode() reads the parallel Stream Abort fields only when configured", () => {
  const withInfo = build.streamAbort(7, 8, [LSN_A, TIME]);
  const without = build.streamAbort(7, 8);
  for (const protocol of [2, 3, 4] as const) {
    assertDecodeError(() => new PgoutputDecoder({ protocol }).decode(withInfo), {
      offset: 9,
      message: /16 trailing bytes/,
    });
  }
  assertDecodeError(
    () => new PgoutputDecoder({ protocol: 4, streamingParallel: true }).decode(without),
    { offset: 9, message: /abort LSN: 8 bytes needed, 0 left/ },
  );
});

Deno.test("PgoutputDecoder.decode() rejects streaming messages under protocol 1", () => {
  const decoder = new PgoutputDecoder({ protocol: 1 });
  for (
    const bytes of [
      build.streamStart(1, true),
      build.streamStop(),
      build.streamCommit(1, 0, LSN_A, LSN_B, TIME),
      build.streamAbort(1, 1),
    ]
  ) {
    assertDecodeError(() => decoder.decode(bytes), {
      offset: 0,
      message: /needs pgoutput protocol 2 or later, the decoder is for protocol 1$/,
    });
  }
  assert.equal(decoder.inStream, false);
});

Deno.test("PgoutputDecoder.decode() rejects two-phase messages under protocols 1 and 2", () => {
  for (const protocol of [1, 2] as const) {
    const decoder = new PgoutputDecoder({ protocol });
    for (const c of CASES.filter((c) => c.minProtocol === 3)) {
      assertDecodeError(() => decoder.decode(c.bytes), {
        offset: 0,
        message: /needs pgoutput protocol 3 or later/,
      });
    }
  }
});

Deno.test("PgoutputDecoder.decode() tracks stream blocks and rejects misplaced messages", () => {
  const decoder = new PgoutputDecoder({ protocol: 2 });
  assertDecodeError(() => decoder.decode(build.streamStop()), {
    offset: 0,
    message: "Cannot decode pgoutput Stream Stop at offset 0: Stream Stop without a Stream Start",
  });
  decoder.decode(build.streamStart(5, true));
  assert.equal(decoder.inStream, true);
  assertDecodeError(() => decoder.decode(build.streamStart(6, true)), {
    message: /Stream Start inside an open stream block/,
  });
  for (
    const bytes of [
      build.begin(LSN_A, TIME, 1),
      build.commit(0, LSN_A, LSN_B, TIME),
      build.streamCommit(5, 0, LSN_A, LSN_B, TIME),
      build.streamAbort(5, 5),
    ]
  ) {
    assertDecodeError(() => decoder.decode(bytes), {
      offset: 0,
      message: /this message cannot appear inside a stream block/,
    });
  }
  assert.equal(decoder.inStream, true);
  decoder.decode(build.streamStop());
  assert.equal(decoder.inStream, false);
  decoder.decode(build.streamStart(5, false));
  decoder.reset();
  assert.equal(decoder.inStream, false);
  assert.deepStrictEqual(decoder.decode(build.insert(1, ["a"])), {
    type: "insert",
    xid: undefined,
    relationId: 1,
    newTuple: [t("a")],
  });
});

Deno.test("PgoutputDecoder.decode() rejects an unknown message type", () => {
  const decoder = new PgoutputDecoder({ protocol: 4 });
  for (const type of [0x00, 0x5a, 0x61, 0x77, 0xff]) {
    assertDecodeError(() => decoder.decode(new Uint8Array([type, 0, 0, 0])), {
      offset: 0,
      message: `Cannot decode pgoutput message at offset 0: unknown message type 0x${
        type.toString(16).padStart(2, "0")
      }`,
    });
  }
  assertDecodeError(() => decoder.decode(new Uint8Array(0)), {
    offset: 0,
    message:
      "Cannot decode pgoutput message at offset 0: unexpected end of data reading message type: 1 byte needed, 0 left",
  });
});

Deno.test("PgoutputDecoder.decode() rejects unknown tuple markers", () => {
  const decoder = new PgoutputDecoder({ protocol: 1 });
  const insert = build.insert(ORDERS, ["1"]);
  insert[5] = 0x4b; // 'K' is not valid in an Insert
  assertDecodeError(() => decoder.decode(insert), {
    offset: 5,
    message: "Cannot decode pgoutput Insert at offset 5: unknown tuple marker 0x4b, expected 'N'",
  });
  const update = build.update(ORDERS, undefined, ["1"]);
  update[5] = 0x58; // 'X'
  assertDecodeError(() => decoder.decode(update), {
    offset: 5,
    message: /unknown tuple marker 0x58, expected 'K', 'O' or 'N'$/,
  });
  // After the old key only 'N' may follow.
  const twice = build.update(ORDERS, { kind: "K", values: ["1"] }, ["2"]);
  twice[5 + 1 + 2 + 1 + 4 + 1] = 0x4f;
  assertDecodeError(() => decoder.decode(twice), {
    offset: 14,
    message: /unknown tuple marker 0x4f, expected 'N'$/,
  });
  const deletion = build.delete(ORDERS, "K", ["1"]);
  deletion[5] = 0x4e; // 'N' is not valid in a Delete
  assertDecodeError(() => decoder.decode(deletion), {
    offset: 5,
    message: /unknown tuple marker 0x4e, expected 'K' or 'O'$/,
  });
});

Deno.test("PgoutputDecoder.decode() rejects unknown tuple kinds in every tuple", () => {
  const decoder = new PgoutputDecoder({ protocol: 1 });
  for (const kind of [0x00, 0x4e, 0x54, 0x55, 0xff]) {
    const update = build.update(ORDERS, { kind: "O", values: [null, null] }, [null]);
    update[9] = kind; // second column of the old row
    assertDecodeError(() => decoder.decode(update), {
      offset: 9,
      message: `Cannot decode pgoutput Update at offset 9: unknown tuple kind 0x${
        kind.toString(16).padStart(2, "0")
      }`,
    });
  }
});

Deno.test("PgoutputDecoder.decode() rejects an unknown replica identity", () => {
  const bytes = build.relation(1, "s", "t", "x", []);
  assertDecodeError(() => new PgoutputDecoder({ protocol: 1 }).decode(bytes), {
    offset: 9,
    message: /unknown replica identity 0x78$/,
  });
});

Deno.test("PgoutputDecoder.decode() rejects invalid UTF-8 in names", () => {
  const bytes = build.relation(1, "s", "t", "d", []);
  bytes[5] = 0xff; // namespace "s" -> invalid byte
  assertDecodeError(() => new PgoutputDecoder({ protocol: 1 }).decode(bytes), {
    offset: 5,
    message: "Cannot decode pgoutput Relation at offset 5: invalid UTF-8 in namespace",
  });
});

Deno.test("PgoutputDecoder.decode() rejects huge counts without allocating for them", () => {
  const decoder = new PgoutputDecoder({ protocol: 1 });
  // 4 billion relation ids announced, none sent.
  const truncate = new Uint8Array([0x54, 0xff, 0xff, 0xff, 0xff, 0x00, 0, 0, 0, 1]);
  assertDecodeError(() => decoder.decode(truncate), {
    offset: 1,
    message: /4294967295 relation ids: 4 bytes left$/,
  });
  // 65535 tuple columns announced, two bytes sent.
  const insert = new Uint8Array([0x49, 0, 0, 0, 1, 0x4e, 0xff, 0xff, 0x6e, 0x6e]);
  assertDecodeError(() => decoder.decode(insert), {
    offset: 6,
    message: /tuple of 65535 columns: 2 bytes left$/,
  });
  // A value length far beyond the message.
  const value = new Uint8Array([0x49, 0, 0, 0, 1, 0x4e, 0, 1, 0x74, 0xff, 0xff, 0xff, 0xff, 0x41]);
  assertDecodeError(() => decoder.decode(value), {
    offset: 13,
    message: /column value: 4294967295 bytes needed, 1 left$/,
  });
  const message = new Uint8Array([0x4d, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x00, 0x80, 0, 0, 0]);
  assertDecodeError(() => decoder.decode(message), {
    offset: 15,
    message: /content: 2147483648 bytes needed, 0 left$/,
  });
});

Deno.test("PgoutputDecoder.decode() throws only PgoutputDecodeError on random and mutated input", () => {
  const random = prng(0x5eed_cdc);
  const int = (n: number) => Math.floor(random() * n);
  const types = Array.from("BCORYIUDTMSEcAbPKrp", (c) => c.charCodeAt(0));
  const decoders = CONFIGS.map((config) => new PgoutputDecoder(config));
  let successes = 0;
  let failures = 0;
  for (let i = 0; i < 6000; i++) {
    let bytes: Uint8Array;
    if (i % 3 === 0) {
      // Random bytes, usually behind a valid type byte so decoding gets past it.
      bytes = new Uint8Array(int(64));
      for (let j = 0; j < bytes.length; j++) bytes[j] = int(256);
      if (bytes.length > 0 && random() < 0.9) bytes[0] = types[int(types.length)];
      // Small values for counts and lengths make deeper paths reachable.
      if (random() < 0.5) {
        for (let j = 1; j < bytes.length; j++) if (random() < 0.6) bytes[j] = int(4);
      }
    } else {
      // Mutations of valid messages: overwrite, drop, insert or duplicate bytes.
      const base = CASES[int(CASES.length)].bytes;
      const list = Array.from(base);
      for (let m = 1 + int(3); m > 0; m--) {
        const at = int(list.length + 1);
        switch (int(4)) {
          case 0:
            if (list.length > 0) list[Math.min(at, list.length - 1)] = int(256);
            break;
          case 1:
            list.splice(at, 1 + int(3));
            break;
          case 2:
            list.splice(at, 0, int(256));
            break;
          default:
            list.splice(at, 0, ...list.slice(at, at + int(8)));
        }
      }
      bytes = new Uint8Array(list);
    }
    const decoder = decoders[int(decoders.length)];
    try {
      decoder.decode(bytes);
      successes++;
    } catch (error) {
      if (!(error instanceof PgoutputDecodeError)) {
        throw new Error(`iteration ${i}: non-decode error for [${bytes.join(",")}]`, {
          cause: error,
        });
      }
      assert.ok(Number.isInteger(error.offset) && error.offset >= 0);
      assert.ok(error.offset <= bytes.length, error.message);
      failures++;
    }
  }
  // Both outcomes must occur, or the fuzzing explores nothing interesting.
  assert.ok(successes > 100, `only ${successes} successes`);
  assert.ok(failures > 100, `only ${failures} failures`);
});

// ---------------------------------------------------------------------------
// Constructor and formatCommitTime

Deno.test("PgoutputDecoder() rejects unsupported protocol options", () => {
  for (const protocol of [0, 5, 1.5, Number.NaN]) {
    assert.throws(
      () => new PgoutputDecoder({ protocol: protocol as 1 }),
      (error: unknown) => error instanceof RangeError && /protocol/.test(error.message),
    );
  }
  for (const protocol of [1, 2, 3] as const) {
    assert.throws(() => new PgoutputDecoder({ protocol, streamingParallel: true }), RangeError);
  }
  const decoder = new PgoutputDecoder({ protocol: 4, streamingParallel: true });
  assert.equal(decoder.protocol, 4);
  assert.equal(decoder.streamingParallel, true);
  assert.equal(new PgoutputDecoder({ protocol: 2 }).streamingParallel, false);
});

const UNIX_OFFSET = 946_684_800_000_000n;

Deno.test("formatCommitTime() formats PostgreSQL microseconds as UTC ISO 8601 with 6 digits", () => {
  assert.equal(formatCommitTime(0n), "2000-01-01T00:00:00.000000Z");
  assert.equal(formatCommitTime(TIME), "2026-11-24T17:05:00.123456Z");
  assert.equal(formatCommitTime(1n), "2000-01-01T00:00:00.000001Z");
  assert.equal(formatCommitTime(999_999n), "2000-01-01T00:00:00.999999Z");
  assert.equal(formatCommitTime(1_000_000n), "2000-01-01T00:00:01.000000Z");
  // The single-entry cache must not leak a previous result.
  assert.equal(formatCommitTime(TIME), "2026-11-24T17:05:00.123456Z");
  assert.equal(formatCommitTime(TIME + 1n), "2026-11-24T17:05:00.123457Z");
});

Deno.test("formatCommitTime() handles times before 2000 and before 1970", () => {
  assert.equal(formatCommitTime(-1n), "1999-12-31T23:59:59.999999Z");
  assert.equal(formatCommitTime(-1_000_000n), "1999-12-31T23:59:59.000000Z");
  assert.equal(formatCommitTime(-UNIX_OFFSET), "1970-01-01T00:00:00.000000Z");
  assert.equal(formatCommitTime(-UNIX_OFFSET - 1n), "1969-12-31T23:59:59.999999Z");
  assert.equal(formatCommitTime(-UNIX_OFFSET - 1_500_000n), "1969-12-31T23:59:58.500000Z");
  const year1 = BigInt(Date.parse("0001-01-01T00:00:00Z")) * 1000n - UNIX_OFFSET;
  assert.equal(formatCommitTime(year1 + 7n), "0001-01-01T00:00:00.000007Z");
});

Deno.test("formatCommitTime() throws RangeError outside the range of Date", () => {
  assert.throws(() => formatCommitTime(9_223_372_036_854_775_807n), RangeError); // 'infinity'
  assert.throws(() => formatCommitTime(-9_223_372_036_854_775_808n), RangeError); // '-infinity'
});
