/**
 * A lost replication slot, for real: PostgreSQL invalidates the slot through
 * `max_slot_wal_keep_size` while `stream` is down. `stream` exits 3 with one
 * line naming the cause and the fix, `status` shows it, `verify` exits 2
 * with the same line; `init --recreate-slot` refuses a healthy slot, then
 * recovers: a history gap per table, a full export of every table, replay
 * equal to the source and `verify --deep` clean. Also a slot dropped by hand,
 * `--force`, and a recreate interrupted after its first step.
 */

import assert from "node:assert/strict";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { parseLsn } from "../../src/lsn.ts";
import { HistoryGapLog } from "../../src/registry/history_gap.ts";
import { type CliProcess, type CliResult, runCli, waitFor } from "../harness/cli.ts";
import { type StreamEnv, streamEnv } from "../harness/stream_env.ts";

// deno-lint-ignore no-explicit-any
type Doc = any;

const LOST_LINE =
  /^error: (Replication slot "cdc_egress" is lost: .*; run "cdc-egress init --recreate-slot" to create a new slot and export every table again \(the gap in the change history is recorded\))$/m;

/** The `error:` lines of a run's stderr (JSON log lines are not). */
function errorLines(stderr: string): string[] {
  return stderr.split("\n").filter((l) => l.startsWith("error:"));
}

/** Waits for a process to exit on its own, at most `ms`. */
async function exitCode(p: CliProcess, ms = 60_000): Promise<number> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`stream still running after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p.exited(), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function slotRow(w: StreamEnv): Promise<Doc> {
  return (await w.db.query(
    `SELECT wal_status, confirmed_flush_lsn::text AS confirmed FROM pg_replication_slots
     WHERE slot_name = 'cdc_egress'`,
  )).rows[0];
}

async function setKeepSize(w: StreamEnv, value: string | null): Promise<void> {
  await w.db.query(
    value === null
      ? "ALTER SYSTEM RESET max_slot_wal_keep_size"
      : `ALTER SYSTEM SET max_slot_wal_keep_size = '${value}'`,
  );
  await w.db.query("SELECT pg_reload_conf()");
}

/**
 * Lets PostgreSQL invalidate the slot the way production does: WAL beyond
 * max_slot_wal_keep_size, then a checkpoint removes the segments it needs.
 */
async function loseSlot(w: StreamEnv): Promise<void> {
  await setKeepSize(w, "1MB");
  await waitFor("the slot to be invalidated", async () => {
    await w.db.query("SELECT pg_logical_emit_message(false, 'filler', repeat('x', 10000))");
    await w.db.query("SELECT pg_switch_wal()");
    await w.db.query("SELECT pg_logical_emit_message(false, 'filler', 'y')");
    await w.db.query("CHECKPOINT");
    return (await slotRow(w))?.wal_status === "lost";
  }, 60_000);
  // Invalidation is permanent; an unlimited keep size keeps the new slot safe.
  await setKeepSize(w, null);
  assert.equal((await slotRow(w)).wal_status, "lost");
}

async function statusJson(w: StreamEnv): Promise<Doc> {
  const r = await runCli(["status", "--json"], w.env);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

async function registryCounts(w: StreamEnv): Promise<Doc> {
  return (await w.db.query(
    `SELECT (SELECT count(*) FROM cdc_registry.history_gap)::int AS gaps,
            (SELECT count(*) FROM cdc_registry.reload_operations)::int AS reloads,
            (SELECT count(*) FROM cdc_registry.file_log)::int AS files`,
  )).rows[0];
}

async function gaps(w: StreamEnv): Promise<Doc[]> {
  return (await w.db.query(
    `SELECT schema_name || '.' || table_name AS t, from_lsn::text AS from_lsn,
            to_lsn::text AS to_lsn, reason, reload_id
     FROM cdc_registry.history_gap ORDER BY id`,
  )).rows;
}

async function lsnLe(w: StreamEnv, a: string, b: string): Promise<boolean> {
  return (await w.db.query("SELECT $1::pg_lsn <= $2::pg_lsn AS ok", [a, b])).rows[0].ok;
}

function assertOk(r: CliResult, what: string): void {
  assert.equal(r.code, 0, `${what} exited ${r.code}: ${r.stderr}${r.stdout}`);
}

/** Changes to every table; `n` keeps keys apart between rounds. */
async function workload(w: StreamEnv, n: number): Promise<void> {
  await w.db.query(`
    INSERT INTO orders SELECT g, 'o' || g FROM generate_series(${n * 100}, ${n * 100 + 29}) g;
    UPDATE orders SET note = note || '+${n}' WHERE id % 7 = ${n % 7};
    DELETE FROM orders WHERE id % 11 = ${n % 11};
    INSERT INTO events (payload) SELECT 'e${n}-' || g FROM generate_series(1, 20) g;
    UPDATE events SET payload = payload || '!' WHERE id % 5 = ${n % 5};
    INSERT INTO logs SELECT 'l${n}-' || g FROM generate_series(1, 10) g;
    DELETE FROM logs WHERE msg LIKE 'l${n - 1}-1%';
  `);
}

async function assertAllReplayEqual(w: StreamEnv): Promise<void> {
  for (const t of ["orders", "events", "logs"]) await w.assertReplayEquals("public", t);
}

async function setup(w: StreamEnv): Promise<void> {
  await w.db.query(`
    CREATE TABLE orders (id int PRIMARY KEY, note text);
    CREATE TABLE events (id bigserial PRIMARY KEY, payload text);
    CREATE TABLE logs (msg text);
    ALTER TABLE logs REPLICA IDENTITY FULL;
  `);
  await workload(w, 1);
  await w.init();
}

for (const version of testMajors()) {
  Deno.test(`a slot invalidated by max_slot_wal_keep_size: stream exits 3, status and verify say so, init --recreate-slot recovers with a recorded gap (PG ${version})`, async (t) => {
    await using w = await streamEnv(version);
    await setup(w);
    const first = w.stream();
    await w.caughtUp();
    await workload(w, 2);
    await w.caughtUp();
    assert.equal(await first.stop(), 0, first.stderr);

    await t.step("init --recreate-slot refuses a healthy slot and changes nothing", async () => {
      const before = { slot: await slotRow(w), registry: await registryCounts(w) };
      const r = await runCli(["init", "--recreate-slot"], w.env);
      assert.equal(r.code, 1, r.stderr);
      assert.deepEqual(errorLines(r.stderr), [
        `error: Cannot recreate slot "cdc_egress": it is not lost (wal_status reserved); pass --force to drop it anyway, which loses the changes since the last checkpoint and exports every table again`,
      ]);
      assert.deepEqual({ slot: await slotRow(w), registry: await registryCounts(w) }, before);
      const force = await runCli(["init", "--force"], w.env);
      assert.equal(force.code, 2);
      assert.deepEqual(errorLines(force.stderr), [
        "error: Cannot use --force without --recreate-slot",
      ]);
    });

    // Changes while stream is down, then the slot is lost: these are the gap.
    await workload(w, 3);
    const checkpoint = (await w.db.query(
      "SELECT checkpoint_lsn::text AS l FROM cdc_registry.checkpoint",
    )).rows[0].l;

    await t.step("status warns while the slot is unreserved, before it is lost", async () => {
      await setKeepSize(w, "1MB");
      await w.db.query("SELECT pg_logical_emit_message(false, 'filler', repeat('x', 10000))");
      await w.db.query("SELECT pg_switch_wal()");
      // Until the next checkpoint the WAL is still there, but no longer reserved.
      const doc = await statusJson(w);
      assert.equal(doc.slot.wal_status, "unreserved");
      assert.equal(doc.slot.lost, false);
      assert.match(doc.slot.wal_warning, /^wal_status is unreserved: the next checkpoint/);
      const text = await runCli(["status"], w.env);
      assert.match(
        text.stdout,
        /^warning: replication slot WAL is at risk: wal_status is unreserved/m,
      );
    });
    await loseSlot(w);
    await workload(w, 4);

    let message = "";
    await t.step("stream exits 3 with one line naming the cause and the fix", async () => {
      const p = w.stream();
      const code = await exitCode(p);
      assert.equal(code, 3, p.stderr);
      const lines = errorLines(p.stderr);
      assert.equal(lines.length, 1, p.stderr);
      message = LOST_LINE.exec(lines[0])?.[1] ?? "";
      assert.ok(message, lines[0]);
      assert.match(message, /max_slot_wal_keep_size/);
      assert.doesNotMatch(p.stderr, /reconnecting/);
      assert.ok(!p.stderr.includes(w.cluster.password));
    });

    await t.step("status shows the state and the fix", async () => {
      const doc = await statusJson(w);
      assert.equal(doc.slot.wal_status, "lost");
      assert.equal(doc.slot.lost, true);
      assert.equal(doc.slot.invalidation_reason, "wal_removed");
      assert.equal(doc.slot.problem, message);
      const text = await runCli(["status"], w.env);
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, /wal_status\s+lost \(wal_removed\)/);
      assert.ok(text.stdout.includes(`LOST: ${message}`), text.stdout);
    });

    await t.step("verify exits 2 with the same line", async () => {
      const r = await runCli(["verify"], w.env);
      assert.equal(r.code, 2, r.stderr + r.stdout);
      assert.deepEqual(errorLines(r.stderr), [`error: ${message}`]);
    });

    await t.step("init --recreate-slot --dry-run prints the plan and changes nothing", async () => {
      const before = await registryCounts(w);
      const r = await runCli(["init", "--recreate-slot", "--dry-run"], w.env);
      assertOk(r, "init --recreate-slot --dry-run");
      assert.match(
        r.stdout,
        /recreate slot "cdc_egress" \(lost: wal_removed\): record a history gap and request a full export for 3 table\(s\), drop the slot and create it again/,
      );
      assert.deepEqual(await registryCounts(w), before);
      assert.equal((await slotRow(w)).wal_status, "lost");
    });

    let gapEnd = "";
    await t.step("init --recreate-slot records a gap per table and requests exports", async () => {
      const r = await runCli(["init", "--recreate-slot"], w.env);
      assertOk(r, "init --recreate-slot");
      assert.match(r.stdout, /history gap opened for 3 table\(s\); 3 full export\(s\) requested/);
      const slot = await slotRow(w);
      assert.equal(slot.wal_status, "reserved");
      gapEnd = slot.confirmed;
      const rows = await gaps(w);
      assert.deepEqual(rows.map((g) => g.t).sort(), [
        "public.events",
        "public.logs",
        "public.orders",
      ]);
      for (const g of rows) {
        assert.equal(g.reason, "wal_removed");
        assert.equal(g.to_lsn, gapEnd);
        // Complete up to the old checkpoint (or the table's own later position).
        assert.ok(await lsnLe(w, checkpoint, g.from_lsn), `${g.from_lsn} < ${checkpoint}`);
        assert.ok(await lsnLe(w, g.from_lsn, g.to_lsn));
      }
      const requested = (await w.db.query(
        `SELECT schema_name || '.' || table_name AS t, id FROM cdc_registry.reload_operations
         WHERE state = 'requested' ORDER BY 1`,
      )).rows;
      assert.deepEqual(requested.map((o) => o.t), rows.map((g) => g.t).sort());
      assert.deepEqual(
        rows.map((g) => Number(g.reload_id)).sort(),
        requested.map((o) => Number(o.id)).sort(),
      );
      const doc = await statusJson(w);
      assert.equal(doc.slot.lost, false);
      assert.equal(doc.slot.problem, null);
      assert.equal(doc.history_gaps.length, 3);
      assert.ok(doc.history_gaps.every((g: Doc) => g.complete_from_lsn === null));
      assert.ok(doc.tables.every((t: Doc) => t.mode === "pending_reload"), JSON.stringify(doc));
    });

    await t.step("after stream, replay equals the source and verify --deep passes", async () => {
      await workload(w, 5); // before the stream: in the new exports
      const p = w.stream();
      await workload(w, 6); // while exports may run
      await w.caughtUp();
      await workload(w, 7);
      await w.caughtUp();
      assert.equal(await p.stop(), 0, p.stderr);
      await assertAllReplayEqual(w);

      const doc = await statusJson(w);
      for (const g of doc.history_gaps) {
        const table = doc.tables.find((x: Doc) => x.name === g.table);
        assert.equal(table.mode, "streaming");
        assert.equal(g.complete_from_lsn, table.reload_lsn);
        assert.ok(await lsnLe(w, gapEnd, g.complete_from_lsn), "export before the new slot");
      }
      const text = await runCli(["status"], w.env);
      assert.match(
        text.stdout,
        /history gaps \(3\): changes between these LSNs were never captured/,
      );

      const deep = await runCli(["verify", "--deep", "--json"], w.env);
      assert.equal(deep.code, 0, deep.stdout + deep.stderr);
      const report = JSON.parse(deep.stdout);
      assert.equal(report.ok, true);
      assert.equal(report.history_gaps.length, 3);
      assert.match(report.history_gaps[0], /complete again from the full_reload at/);
      const plain = await runCli(["verify"], w.env);
      assert.equal(plain.code, 0, plain.stdout);
      assert.match(plain.stdout, /^note: history gap in public.orders from .* to /m);
    });
  });

  Deno.test(`init --recreate-slot on a fresh database refuses and changes nothing (PG ${version})`, async () => {
    await using w = await streamEnv(version);
    await w.db.query("CREATE TABLE orders (id int PRIMARY KEY)");
    const r = await runCli(["init", "--recreate-slot"], w.env);
    assert.equal(r.code, 1, r.stderr);
    assert.deepEqual(errorLines(r.stderr), [
      `error: Cannot recreate slot "cdc_egress": it does not exist and the registry holds no history for it; run "cdc-egress init" to create it`,
    ]);
    const state = (await w.db.query(
      `SELECT to_regnamespace('cdc_registry') IS NULL AS no_schema,
              NOT EXISTS (SELECT 1 FROM pg_replication_slots) AS no_slot,
              NOT EXISTS (SELECT 1 FROM pg_publication) AS no_pub`,
    )).rows[0];
    assert.deepEqual(state, { no_schema: true, no_slot: true, no_pub: true });
  });

  Deno.test(`a dropped slot, --force and an interrupted recreate (PG ${version})`, async (t) => {
    await using w = await streamEnv(version);
    await setup(w);
    const first = w.stream();
    await w.caughtUp();
    assert.equal(await first.stop(), 0, first.stderr);
    await w.db.query("SELECT pg_drop_replication_slot('cdc_egress')");
    await workload(w, 2);

    await t.step("stream and a plain init refuse a missing slot with history", async () => {
      const p = w.stream();
      assert.equal(await exitCode(p), 3, p.stderr);
      const [line] = errorLines(p.stderr);
      assert.match(line, LOST_LINE);
      assert.match(line, /it no longer exists on the server/);
      const init = await runCli(["init"], w.env);
      assert.equal(init.code, 3, init.stderr);
      assert.deepEqual(errorLines(init.stderr), [line]);
      assert.equal(await slotRow(w), undefined, "init created the slot over the old history");
    });

    await t.step("init --recreate-slot creates it and records the gap", async () => {
      assertOk(await runCli(["init", "--recreate-slot"], w.env), "init --recreate-slot");
      assert.deepEqual((await gaps(w)).map((g) => g.reason), ["missing", "missing", "missing"]);
      const again = await runCli(["init", "--recreate-slot"], w.env);
      assert.equal(again.code, 1, again.stderr);
      assert.match(again.stderr, /it is not lost \(wal_status reserved\); pass --force/);
    });

    const p = w.stream();
    await w.caughtUp();
    await workload(w, 3);
    await w.caughtUp();
    assert.equal(await p.stop(), 0, p.stderr);

    await t.step("--force replaces a healthy slot", async () => {
      await workload(w, 4); // lost with the forced slot
      const r = await runCli(["init", "--recreate-slot", "--force"], w.env);
      assertOk(r, "init --recreate-slot --force");
      assert.match(r.stdout, /recreate slot "cdc_egress" \(forced\)/);
      assert.deepEqual((await gaps(w)).map((g) => g.reason).slice(3), [
        "forced",
        "forced",
        "forced",
      ]);
    });

    /** What init --recreate-slot commits first, before it touches the slot. */
    const openGaps = async () => {
      const now = (await w.db.query("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0].l;
      return await new HistoryGapLog(w.db, "cdc_egress").open("forced", parseLsn(now));
    };
    const openCount = async () =>
      (await w.db.query(
        "SELECT count(*)::int AS n FROM cdc_registry.history_gap WHERE to_lsn IS NULL",
      )).rows[0].n;

    await t.step(
      "a recreate that stopped after recording the gap is finished by a re-run",
      async () => {
        // A crash right after the first transaction of init --recreate-slot --force.
        assert.equal((await openGaps()).tables, 3);
        const s = w.stream();
        assert.equal(await exitCode(s), 3, s.stderr);
        assert.deepEqual(errorLines(s.stderr), [
          `error: Replication slot "cdc_egress" is being recreated: an earlier "cdc-egress init --recreate-slot" did not finish; run it again`,
        ]);
        const status = await statusJson(w);
        assert.match(status.slot.problem, /did not finish; run it again/);
        const plain = await runCli(["init"], w.env);
        assert.equal(plain.code, 3, plain.stderr);
        const r = await runCli(["init", "--recreate-slot"], w.env);
        assertOk(r, "init --recreate-slot (re-run)");
        assert.match(
          r.stdout,
          /finish the recreate begun earlier \(history gap of 3 table\(s\) recorded\)/,
        );
        assert.doesNotMatch(r.stdout, /history gap opened/);
        assert.match(r.stdout, /dropped slot "cdc_egress"/);
        assert.equal(await openCount(), 0);
      },
    );

    await t.step(
      "a recreate that stopped after creating the slot only closes the gap",
      async () => {
        // A crash after the new slot was created, before the gap was closed.
        await openGaps();
        await w.db.query("SELECT pg_drop_replication_slot('cdc_egress')");
        await w.db.query("SELECT pg_create_logical_replication_slot('cdc_egress', 'pgoutput')");
        const created = (await slotRow(w)).confirmed;
        const r = await runCli(["init", "--recreate-slot"], w.env);
        assertOk(r, "init --recreate-slot (re-run)");
        assert.match(r.stdout, /close the history gap of 3 table\(s\) at the new slot's start/);
        assert.doesNotMatch(r.stdout, /dropped slot/);
        assert.equal((await slotRow(w)).confirmed, created);
        assert.equal(await openCount(), 0);
        const closed = (await gaps(w)).slice(-3);
        assert.ok(closed.every((g) => g.to_lsn === created), JSON.stringify(closed));
      },
    );

    const last = w.stream();
    await workload(w, 5);
    await w.caughtUp();
    assert.equal(await last.stop(), 0, last.stderr);
    await assertAllReplayEqual(w);
    const deep = await runCli(["verify", "--deep"], w.env);
    assert.equal(deep.code, 0, deep.stdout + deep.stderr);
    assert.equal((await statusJson(w)).history_gaps.length, 12);
  });
}

/** Small transactions in a loop on a connection of its own, until stopped. */
function backgroundWriter(w: StreamEnv): { stop(): Promise<number> } {
  const client = new pg.Client({ connectionString: w.cluster.url() });
  let running = true;
  let n = 0;
  const done = (async () => {
    await client.connect();
    while (running) {
      n++;
      await client.query(
        `INSERT INTO events (payload) VALUES ('bg${n}');
         UPDATE orders SET note = 'bg${n}' WHERE id = ${100 + (n % 30)}`,
      );
    }
    await client.end();
  })();
  return {
    async stop() {
      running = false;
      await done;
      return n;
    },
  };
}

for (const version of testMajors()) {
  Deno.test(`recovery on a busy source: DDL, a dropped and a new table in the gap, writes during the recreate (PG ${version})`, async (t) => {
    await using w = await streamEnv(version);
    await w.db.query("CREATE TABLE gone (id int PRIMARY KEY)");
    await w.db.query("INSERT INTO gone SELECT generate_series(1, 10)");
    await setup(w);
    const first = w.stream();
    await w.caughtUp();
    assert.equal(await first.stop(), 0, first.stderr);

    // The gap: DDL and tables coming and going, none of it ever streamed.
    await w.db.query(`
      ALTER TABLE orders ADD COLUMN extra text DEFAULT 'd';
      DROP TABLE gone;
      CREATE TABLE fresh (id int PRIMARY KEY, v text);
      INSERT INTO fresh SELECT g, 'f' || g FROM generate_series(1, 40) g;
    `);
    await workload(w, 2);
    await loseSlot(w);

    const writer = backgroundWriter(w);
    let written = 0;
    try {
      await t.step("init --recreate-slot while the source is written to", async () => {
        const r = await runCli(["init", "--recreate-slot"], w.env);
        assertOk(r, "init --recreate-slot");
        assert.match(r.stdout, /table: "public"."fresh"/); // joins the publication
        assert.deepEqual((await gaps(w)).map((g) => g.t).sort(), [
          "public.events",
          "public.gone",
          "public.logs",
          "public.orders",
        ]);
      });
      const p = w.stream();
      await waitFor("the exports after the gap", async () =>
        (await w.db.query(
          `SELECT count(*)::int AS n FROM cdc_registry.reload_operations
           WHERE state IN ('done', 'failed') AND requested_at >= (
             SELECT max(created_at) FROM cdc_registry.history_gap)`,
        )).rows[0].n >= 4);
      written = await writer.stop();
      await w.caughtUp();
      assert.equal(await p.stop(), 0, p.stderr);
    } finally {
      await writer.stop();
    }
    assert.ok(written > 0);

    await t.step(
      "every table equals the source; the dropped one says why its gap stays open",
      async () => {
        for (const table of ["orders", "events", "logs", "fresh"]) {
          await w.assertReplayEquals("public", table);
        }
        const doc = await statusJson(w);
        const gone = doc.history_gaps.find((g: Doc) => g.table === "public.gone");
        assert.equal(gone.complete_from_lsn, null);
        assert.equal(gone.table_dropped, true);
        assert.equal(doc.tables.find((x: Doc) => x.name === "public.gone").mode, "dropped");
        const text = await runCli(["status"], w.env);
        assert.match(text.stdout, /public\.gone .*\(table dropped\)/);
        const deep = await runCli(["verify", "--deep"], w.env);
        assert.equal(deep.code, 0, deep.stdout + deep.stderr);
        assert.match(deep.stdout, /history gap in public\.gone .*the table was dropped/);
        assert.match(deep.stdout, /^deep public\.orders: \d+ rows replayed, \d+ live, equal$/m);
      },
    );
  });
}
