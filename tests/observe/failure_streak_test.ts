import assert from "node:assert/strict";
import { parseLsn } from "../../src/lsn.ts";
import { FailureStreak } from "../../src/observe/failure_streak.ts";

Deno.test("FailureStreak counts the same failure without progress, and restarts otherwise", () => {
  const s = new FailureStreak();
  const at = parseLsn("0/100");
  assert.equal(s.fail("disk_full|x", at, 1000), 1);
  assert.equal(s.fail("disk_full|x", at, 2000), 2);
  // A session that failed before streaming has no position: no progress either.
  assert.equal(s.fail("disk_full|x", undefined, 3000), 3);
  assert.equal(s.since, 1000);
  // Another failure starts a new streak.
  assert.equal(s.fail("registry|y", at, 4000), 1);
  assert.equal(s.fail("registry|y", at), 2);
  // Progress (the durable LSN moved) starts a new streak too.
  assert.ok(s.progressed(parseLsn("0/101")));
  assert.ok(!s.progressed(at));
  assert.equal(s.fail("registry|y", parseLsn("0/200"), 5000), 1);
  assert.equal(s.since, 5000);
  assert.ok(!s.progressed(parseLsn("0/150")), "progress is past every failed position");
  s.reset();
  assert.equal(s.count, 0);
  assert.equal(s.fail("registry|y", parseLsn("0/200")), 1);
});
