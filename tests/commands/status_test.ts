/**
 * `status` against real PostgreSQL, on every major of testMajors():
 * `status --json` agrees with pg_replication_slots (active, pid,
 * confirmed_flush_lsn) and with the registry (table modes, file counts,
 * checkpoint, pending and failed reloads), while `stream` runs and after it
 * stopped; the plain-text form is aligned text without a password.
 */

import assert from "node:assert/strict";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { runCli, waitFor } from "../harness/cli.ts";
import { layoutSuffix, type StreamEnv, streamEnv } from "../harness/stream_env.ts";

// deno-lint-ignore no-explicit-any
type Doc = any;

async function status(w: StreamEnv): Promise<Doc> {
  const r = await runCli(["status", "--json"], w.env);
  assert.equal(r.code, 0, `status exited ${r.code}: ${r.stderr}`);
  assert.ok(!r.stdout.includes(w.cluster.password), "status printed the password");
  return JSON.parse(r.stdout);
}

async function slotRow(w: StreamEnv) {
  return (await w.db.query(
    `SELECT active, active_pid, confirmed_flush_lsn::text AS confirmed FROM pg_replication_slots
     WHERE slot_name = 'cdc_egress'`,
  )).rows[0];
}

async function lsnLe(w: StreamEnv, a: string, b: string): Promise<boolean> {
  return (await w.db.query("SELECT $1::pg_lsn <= $2::pg_lsn AS ok", [a, b])).rows[0].ok;
}

/** Asserts the per-table part of the report against table_state and file_log. */
async function assertTablesMatchRegistry(w: StreamEnv, doc: Doc): Promise<void> {
  const res = await w.registry.query(
    `SELECT s.schema_name || '.' || s.table_name AS name, s.mode, s.reload_lsn::text AS reload_lsn,
            s.last_batch_ts,
            (SELECT count(*) FROM cdc_registry.file_log f WHERE f.schema_name = s.schema_name
               AND f.table_name = s.table_name)::int AS files,
            (SELECT coalesce(sum(row_count), 0) FROM cdc_registry.file_log f
               WHERE f.schema_name = s.schema_name AND f.table_name = s.table_name)::int AS rows
     FROM cdc_registry.table_state s ORDER BY s.schema_name, s.table_name`,
  );
  assert.deepEqual(
    doc.tables.map((t: Doc) => ({
      name: t.name,
      mode: t.mode,
      reload_lsn: t.reload_lsn,
      last_batch_ts: t.last_batch_ts,
      files: t.files,
      rows: t.rows,
    })),
    res.rows,
  );
}

for (const version of testMajors()) {
  Deno.test(`status reports the slot, tables and reloads (PG ${version}${layoutSuffix()})`, async (t) => {
    await using w = await streamEnv(version);
    const db = w.db;

    await t.step("before init it says to run init", async () => {
      const r = await runCli(["status"], w.env);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /^error: .*run "cdc-egress init" first$/m);
      assert.ok(!r.stderr.includes(w.cluster.password));
    });

    await db.query(`
      CREATE TABLE orders (id int PRIMARY KEY, note text);
      CREATE TABLE events (id bigserial PRIMARY KEY, payload text);
      INSERT INTO orders SELECT g, 'o' || g FROM generate_series(1, 50) g;
    `);
    await w.init();
    const p = w.stream();
    await waitFor("stream to take the slot", async () => (await slotRow(w))?.active_pid != null);
    await w.caughtUp(); // the initial export is registered: what follows is streamed
    await db.query("INSERT INTO events (payload) SELECT 'e' || g FROM generate_series(1, 30) g");
    await db.query("UPDATE orders SET note = note || '!' WHERE id <= 10");
    await w.caughtUp();
    await waitFor("both tables to have streaming files", async () =>
      Number(
        (await w.registry.query(
          `SELECT count(DISTINCT table_name) AS n FROM cdc_registry.file_log
           WHERE file_type = 'streaming'`,
        )).rows[0].n,
      ) === 2);

    await t.step("while stream runs: active, same pid, confirmed LSN in range", async () => {
      const before = await slotRow(w);
      const doc = await status(w);
      const after = await slotRow(w);
      assert.equal(doc.slot.exists, true);
      assert.equal(doc.slot.active, true);
      assert.equal(doc.slot.active_pid, after.active_pid);
      assert.ok(await lsnLe(w, before.confirmed, doc.slot.confirmed_flush_lsn));
      assert.ok(await lsnLe(w, doc.slot.confirmed_flush_lsn, after.confirmed));
      assert.equal(typeof doc.slot.lag_bytes, "number");
      assert.ok(doc.slot.lag_bytes >= 0);
      assert.ok(doc.slot.lag_seconds >= 0);
      assert.ok(["reserved", "extended", "unreserved"].includes(doc.slot.wal_status));
      assert.ok(await lsnLe(w, doc.slot.restart_lsn, doc.slot.confirmed_flush_lsn));
      assert.deepEqual(doc.pending_reloads, []);
    });

    const code = await p.stop();
    assert.equal(code, 0, p.stderr);

    await t.step("after SIGTERM: inactive, exact LSNs, tables as registered", async () => {
      const doc = await status(w);
      const slot = await slotRow(w);
      assert.equal(doc.slot.active, false);
      assert.equal(doc.slot.active_pid, null);
      assert.equal(doc.slot.confirmed_flush_lsn, slot.confirmed);
      const cp = (await w.registry.query(
        "SELECT checkpoint_lsn::text AS lsn FROM cdc_registry.checkpoint WHERE slot_name = 'cdc_egress'",
      )).rows[0];
      assert.equal(doc.checkpoint.lsn, cp.lsn);
      const lag = (await db.query(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8 AS b",
        [slot.confirmed],
      )).rows[0].b;
      assert.ok(doc.slot.lag_bytes <= lag, `lag ${doc.slot.lag_bytes} > ${lag}`);
      if (doc.slot.lag_bytes === 0) assert.equal(doc.slot.lag_seconds, 0);
      await assertTablesMatchRegistry(w, doc);
      const orders = doc.tables.find((x: Doc) => x.name === "public.orders");
      assert.equal(orders.mode, "streaming");
      assert.ok(orders.files >= 2, "orders has an export and a streaming file");
      assert.equal(orders.last_reload.state, "done");
      assert.ok(orders.bytes > 0);
    });

    await t.step("pending and failed reloads", async () => {
      const r = await runCli(["reload", "orders"], w.env);
      assert.equal(r.code, 0, r.stderr);
      let doc = await status(w);
      assert.deepEqual(
        doc.pending_reloads.map((x: Doc) => [x.table, x.state]),
        [["public.orders", "requested"]],
      );
      assert.equal(doc.tables.find((x: Doc) => x.name === "public.orders").mode, "pending_reload");
      await assertTablesMatchRegistry(w, doc);
      await w.registry.query(
        `UPDATE cdc_registry.reload_operations SET state = 'failed', error = 'boom',
           finished_at = now() WHERE state = 'requested'`,
      );
      doc = await status(w);
      assert.deepEqual(doc.pending_reloads, []);
      assert.deepEqual(
        doc.failed_reloads.map((x: Doc) => [x.table, x.state, x.error]),
        [["public.orders", "failed", "boom"]],
      );
    });

    await t.step("plain text: aligned, no boxes, no password", async () => {
      const r = await runCli(["status"], w.env);
      assert.equal(r.code, 0, r.stderr);
      const out = r.stdout;
      assert.ok(!out.includes(w.cluster.password));
      assert.match(out, /^slot "cdc_egress": inactive/m);
      assert.match(out, /^table\s+mode\s+last batch\s+last lsn\s+files\s+rows\s+bytes/m);
      assert.match(out, /^public\.orders\s+pending_reload\s+\d{8}T/m);
      assert.match(out, /^failed reloads \(1\):/m);
      assert.ok(!/[┌│└]/.test(out), "no box drawing when stdout is not a terminal");
      // Columns line up: every table row starts its mode where the header does.
      const lines = out.split("\n");
      const header = lines.find((l) => l.startsWith("table "))!;
      const col = header.indexOf("mode");
      for (const l of lines.filter((l) => l.startsWith("public."))) {
        assert.match(l.slice(col), /^(streaming|pending_reload|reloading)/, l);
      }
    });
  });
}
