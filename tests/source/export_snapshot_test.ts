/**
 * exportSnapshot() failures carry their cause and a code that says whether
 * a retry can help: exhausted slots or WAL senders are transient.
 */

import assert from "node:assert/strict";
import { startCluster, testMajors } from "../../scripts/embedded_postgres.ts";
import { CdcError } from "../../src/errors.ts";
import { connect } from "../../src/source/connect.ts";
import { exportSnapshot } from "../../src/source/export_snapshot.ts";
import { classifyFailure } from "../../src/source/retry_policy.ts";

for (const version of testMajors()) {
  Deno.test(`exportSnapshot() with every slot in use is transient, with its cause (PG ${version})`, async () => {
    await using cluster = await startCluster({ version, settings: { max_replication_slots: 1 } });
    const db = await connect(cluster.url());
    try {
      await db.query("SELECT pg_create_logical_replication_slot('only_one', 'pgoutput')");
      const error = await exportSnapshot(cluster.url(), "export_x").then(
        (s) => (s.release(), null),
        (e) => e,
      );
      assert.ok(error instanceof CdcError, String(error));
      assert.equal(error.code, "unavailable");
      assert.equal((error.cause as { code?: string }).code, "53400");
      assert.match(error.message, /all replication slots are in use/);
      const verdict = classifyFailure(error);
      assert.equal(verdict.transient, true);
      assert.match(verdict.fix, /max_replication_slots/);
    } finally {
      await db.end();
    }
  });

  Deno.test(`exportSnapshot() with every WAL sender in use is transient (PG ${version})`, async () => {
    await using cluster = await startCluster({ version, settings: { max_wal_senders: 1 } });
    const busy = await connect(cluster.url(), { replication: true });
    try {
      const error = await exportSnapshot(cluster.url(), "export_y").then(
        (s) => (s.release(), null),
        (e) => e,
      );
      assert.ok(error instanceof CdcError, String(error));
      assert.match(error.message, /max_wal_senders/);
      const verdict = classifyFailure(error);
      assert.equal(verdict.transient, true, JSON.stringify(verdict));
      assert.match(verdict.fix, /max_wal_senders/);
    } finally {
      await busy.end();
    }
  });
}
