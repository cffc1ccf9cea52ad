import assert from "node:assert/strict";
import {
  decodeCopyFrame,
  encodeStandbyStatus,
  PgoutputDecodeError,
} from "../../src/decode/copy_frame.ts";
import { type Lsn, toLsn } from "../../src/lsn.ts";
import { Bytes, concat, prng } from "./_fixtures.ts";

const LSN_A = toLsn(0x16b3748n);
const LSN_B = toLsn(0x16b3778n);
const MAX_LSN = toLsn(0xffffffff_ffffffffn);
const TIME = 848855100123456n; // 2026-11-24T17:05:00.123456Z

/** XLogData: WAL start 0/16B3748, WAL end 0/16B3778, send time TIME, payload "Ehi". */
// deno-fmt-ignore
const LITERAL_XLOGDATA = new Uint8Array([
  0x77, // 'w'
  0x00, 0x00, 0x00, 0x00, 0x01, 0x6b, 0x37, 0x48, // WAL start
  0x00, 0x00, 0x00, 0x00, 0x01, 0x6b, 0x37, 0x78, // WAL end
  0x00, 0x03, 0x04, 0x07, 0x7a, 0xb5, 0x69, 0x40, // send time
  0x45, 0x68, 0x69, // payload
]);

/** Primary keepalive: WAL end 0/16B3778, send time TIME, reply requested. */
// deno-fmt-ignore
const LITERAL_KEEPALIVE = new Uint8Array([
  0x6b, // 'k'
  0x00, 0x00, 0x00, 0x00, 0x01, 0x6b, 0x37, 0x78, // WAL end
  0x00, 0x03, 0x04, 0x07, 0x7a, 0xb5, 0x69, 0x40, // send time
  0x01, // reply requested
]);

function assertDecodeError(fn: () => unknown, offset?: number, message?: string | RegExp): void {
  try {
    fn();
  } catch (error) {
    if (!(error instanceof PgoutputDecodeError)) throw error;
    if (offset !== undefined) assert.equal(error.offset, offset, error.message);
    if (typeof message === "string") assert.equal(error.message, message);
    else if (message) assert.match(error.message, message);
    return;
  }
  throw new assert.AssertionError({ message: "expected a PgoutputDecodeError" });
}

Deno.test("decodeCopyFrame() reads XLogData exactly as PostgreSQL sends it", () => {
  const frame = decodeCopyFrame(LITERAL_XLOGDATA);
  assert.deepStrictEqual(frame, {
    type: "xlogdata",
    walStart: LSN_A,
    walEnd: LSN_B,
    sendTime: TIME,
    data: new Uint8Array([0x45, 0x68, 0x69]),
  });
  // The payload is a view into the frame, not a copy.
  assert.ok(frame.type === "xlogdata");
  assert.equal(frame.data.buffer, LITERAL_XLOGDATA.buffer);
  assert.equal(frame.data.byteOffset, 25);
});

Deno.test("decodeCopyFrame() reads XLogData with an empty payload", () => {
  const frame = decodeCopyFrame(LITERAL_XLOGDATA.subarray(0, 25));
  assert.ok(frame.type === "xlogdata");
  assert.equal(frame.data.length, 0);
});

Deno.test("decodeCopyFrame() reads a keepalive and its reply flag", () => {
  assert.deepStrictEqual(decodeCopyFrame(LITERAL_KEEPALIVE), {
    type: "keepalive",
    walEnd: LSN_B,
    sendTime: TIME,
    replyRequested: true,
  });
  const noReply = LITERAL_KEEPALIVE.slice();
  noReply[17] = 0;
  assert.deepStrictEqual(decodeCopyFrame(noReply), {
    type: "keepalive",
    walEnd: LSN_B,
    sendTime: TIME,
    replyRequested: false,
  });
});

Deno.test("decodeCopyFrame() keeps 64-bit LSNs unsigned and times signed", () => {
  const bytes = new Bytes().char("w").u64(MAX_LSN).u64(MAX_LSN).i64(-1n).build();
  assert.deepStrictEqual(decodeCopyFrame(bytes), {
    type: "xlogdata",
    walStart: MAX_LSN,
    walEnd: MAX_LSN,
    sendTime: -1n,
    data: new Uint8Array(0),
  });
});

Deno.test("decodeCopyFrame() reads frames at any offset of a shared buffer", () => {
  const shared = concat(new Uint8Array([9]), LITERAL_KEEPALIVE, LITERAL_XLOGDATA);
  const keepalive = shared.subarray(1, 1 + LITERAL_KEEPALIVE.length);
  const xlogdata = shared.subarray(1 + LITERAL_KEEPALIVE.length);
  for (let round = 0; round < 3; round++) {
    assert.deepStrictEqual(decodeCopyFrame(keepalive), decodeCopyFrame(LITERAL_KEEPALIVE));
    const frame = decodeCopyFrame(xlogdata);
    assert.ok(frame.type === "xlogdata");
    assert.equal(frame.walStart, LSN_A);
    assert.equal(frame.data.byteOffset, 1 + LITERAL_KEEPALIVE.length + 25);
  }
});

Deno.test("decodeCopyFrame() throws PgoutputDecodeError for every truncation", () => {
  for (let length = 0; length < LITERAL_KEEPALIVE.length; length++) {
    assertDecodeError(() => decodeCopyFrame(LITERAL_KEEPALIVE.subarray(0, length)));
  }
  for (let length = 0; length < 25; length++) {
    assertDecodeError(() => decodeCopyFrame(LITERAL_XLOGDATA.subarray(0, length)));
  }
  assertDecodeError(
    () => decodeCopyFrame(LITERAL_KEEPALIVE.subarray(0, 12)),
    9,
    "Cannot decode replication keepalive at offset 9: unexpected end of data reading send time: 8 bytes needed, 3 left",
  );
});

Deno.test("decodeCopyFrame() rejects trailing bytes after a keepalive", () => {
  assertDecodeError(
    () => decodeCopyFrame(concat(LITERAL_KEEPALIVE, new Uint8Array([0, 0]))),
    18,
    "Cannot decode replication keepalive at offset 18: 2 trailing bytes after the message",
  );
});

Deno.test("decodeCopyFrame() rejects an unknown frame type", () => {
  assertDecodeError(
    () => decodeCopyFrame(new Uint8Array([0x72, 0, 0])),
    0,
    "Cannot decode replication CopyData at offset 0: unknown frame type 0x72",
  );
  assertDecodeError(() => decodeCopyFrame(new Uint8Array(0)), 0, /frame type: 1 byte needed/);
});

Deno.test("decodeCopyFrame() throws only PgoutputDecodeError on random input", () => {
  const random = prng(42);
  for (let i = 0; i < 3000; i++) {
    const bytes = new Uint8Array(Math.floor(random() * 40));
    for (let j = 0; j < bytes.length; j++) bytes[j] = Math.floor(random() * 256);
    if (bytes.length > 0 && random() < 0.8) bytes[0] = random() < 0.5 ? 0x77 : 0x6b;
    try {
      decodeCopyFrame(bytes);
    } catch (error) {
      if (!(error instanceof PgoutputDecodeError)) throw error;
      assert.ok(error.offset >= 0 && error.offset <= bytes.length);
    }
  }
});

Deno.test("encodeStandbyStatus() writes the 34-byte standby status update", () => {
  const bytes = encodeStandbyStatus({
    written: LSN_B,
    flushed: LSN_A,
    applied: toLsn(0x1_0000_0002n),
    sendTime: TIME,
    replyRequested: false,
  });
  // deno-fmt-ignore
  const expected = new Uint8Array([
    0x72, // 'r'
    0x00, 0x00, 0x00, 0x00, 0x01, 0x6b, 0x37, 0x78, // written
    0x00, 0x00, 0x00, 0x00, 0x01, 0x6b, 0x37, 0x48, // flushed
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, // applied
    0x00, 0x03, 0x04, 0x07, 0x7a, 0xb5, 0x69, 0x40, // send time
    0x00, // no reply requested
  ]);
  assert.deepStrictEqual(bytes, expected);
  const reply = encodeStandbyStatus({
    written: MAX_LSN,
    flushed: MAX_LSN,
    applied: MAX_LSN,
    sendTime: -2n,
    replyRequested: true,
  });
  assert.equal(reply.length, 34);
  assert.deepStrictEqual(reply.subarray(1, 25), new Uint8Array(24).fill(0xff));
  assert.deepStrictEqual(
    reply.subarray(25, 33),
    new Uint8Array([255, 255, 255, 255, 255, 255, 255, 254]),
  );
  assert.equal(reply[33], 1);
});

Deno.test("encodeStandbyStatus() rejects values that do not fit their fields", () => {
  const ok = {
    written: LSN_A,
    flushed: LSN_A,
    applied: LSN_A,
    sendTime: 0n,
    replyRequested: false,
  };
  assert.throws(() => encodeStandbyStatus({ ...ok, flushed: -1n as Lsn }), RangeError);
  assert.throws(() => encodeStandbyStatus({ ...ok, written: (1n << 64n) as Lsn }), RangeError);
  assert.throws(() => encodeStandbyStatus({ ...ok, sendTime: 1n << 63n }), RangeError);
  assert.throws(() => encodeStandbyStatus({ ...ok, sendTime: -(1n << 63n) - 1n }), RangeError);
});
