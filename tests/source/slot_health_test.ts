import assert from "node:assert/strict";
import {
  slotLostFromServerError,
  slotLostMessage,
  walWarning,
  walWarnThreshold,
} from "../../src/source/slot_health.ts";

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

/** Errors as PostgreSQL 14 and 18 sent them for an invalidated slot (seen in tests/commands). */
const PG14_START = {
  code: "55000",
  message: 'cannot read from logical replication slot "s"',
  detail: "This slot has been invalidated because it exceeded the maximum reserved size.",
};
const PG18_START = {
  code: "55000",
  message: 'can no longer access replication slot "s"',
  detail: 'This replication slot has been invalidated due to "wal_removed".',
};

Deno.test("slotLostFromServerError() recognizes PostgreSQL 14-18 invalidation errors", () => {
  for (const e of [PG14_START, PG18_START]) {
    const error = slotLostFromServerError("s", e);
    assert.equal(error?.code, "slot_lost");
    assert.equal(error?.message, slotLostMessage("s", "wal_removed"));
  }
  const idle = slotLostFromServerError("s", {
    message: 'can no longer access replication slot "s"',
    detail: 'This replication slot has been invalidated due to "idle_timeout".',
  });
  assert.match(idle!.message, /idle_replication_slot_timeout/);
  const removed = slotLostFromServerError("s", {
    code: "58P01",
    message: "requested WAL segment 000000010000000000000001 has already been removed",
  });
  assert.equal(removed?.code, "slot_lost");
});

Deno.test("slotLostFromServerError() leaves other errors alone", () => {
  assert.equal(
    slotLostFromServerError("s", {
      message: "terminating connection due to administrator command",
    }),
    null,
  );
  assert.equal(
    slotLostFromServerError("s", {
      code: "55006",
      message: 'replication slot "s" is active for PID 42',
    }),
    null,
  );
});

Deno.test("slotLostMessage() names the cause and the fix in one line", () => {
  const m = slotLostMessage("cdc_egress", "rows_removed");
  assert.match(m, /^Replication slot "cdc_egress" is lost: a recovery conflict/);
  assert.match(m, /run "cdc-egress init --recreate-slot"/);
  assert.ok(!m.includes("\n"));
  assert.match(slotLostMessage("x", "something_new"), /it was invalidated \(something_new\)/);
});

Deno.test("walWarnThreshold() defaults to 1 GiB, at most half of max_slot_wal_keep_size", () => {
  assert.equal(walWarnThreshold(null, null), GiB);
  assert.equal(walWarnThreshold(null, 64 * MiB), 32 * MiB);
  assert.equal(walWarnThreshold(null, 10 * GiB), GiB);
  assert.equal(walWarnThreshold(5 * GiB, 64 * MiB), 5 * GiB);
});

Deno.test("walWarning() warns on unreserved and on safe_wal_size under the threshold", () => {
  const base = {
    walStatus: "reserved",
    safeWalSize: 40 * MiB,
    lost: false,
    maxKeepBytes: 64 * MiB,
  };
  assert.equal(walWarning(base, null), null);
  assert.match(
    walWarning({ ...base, safeWalSize: 20 * MiB }, null)!,
    /under the warning threshold of 33554432 bytes/,
  );
  assert.match(
    walWarning({ ...base, walStatus: "unreserved", safeWalSize: 0 }, null)!,
    /unreserved/,
  );
  assert.match(walWarning(base, GiB)!, /^safe_wal_size is 41943040 bytes/);
  assert.equal(walWarning({ ...base, safeWalSize: null, maxKeepBytes: null }, GiB), null);
  assert.equal(
    walWarning({ ...base, walStatus: "lost", safeWalSize: null, lost: true }, GiB),
    null,
  );
});
