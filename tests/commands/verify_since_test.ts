/**
 * `verify --since` against a real stream, on every major of testMajors():
 * it re-reads only the files registered after the mark (a corrupted older
 * file goes unnoticed, a corrupted newer one does not), checks position
 * continuity across the mark, takes an ISO time as the mark, prints the
 * `next: --since` mark that chains runs, and refuses bad marks with one line
 * and exit 2.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { type CliResult, runCli, waitFor } from "../harness/cli.ts";
import { layoutSuffix, type StreamEnv, streamEnv } from "../harness/stream_env.ts";

function verify(w: StreamEnv, ...args: string[]): Promise<CliResult> {
  return runCli(["verify", ...args], w.env);
}

/** The mark a run printed: `next: --since N`. */
function nextMark(r: CliResult): number {
  const m = /^next: --since (\d+)$/m.exec(r.stdout);
  assert.ok(m, `no "next: --since" line:\n${r.stdout}\n${r.stderr}`);
  return Number(m[1]);
}

async function newestId(w: StreamEnv): Promise<number> {
  return Number(
    (await w.registry.query(
      "SELECT max(id) AS id FROM cdc_registry.file_log WHERE slot_name = 'cdc_egress'",
    )).rows[0].id,
  );
}

/** Data files (not ddl.sql) of the slot with `after < id <= upTo`, oldest first. */
async function dataFiles(w: StreamEnv, after: number, upTo = 2 ** 52) {
  return (await w.registry.query(
    `SELECT id::int8 AS id, path, table_name, start_lsn::text AS start_lsn,
            end_lsn::text AS end_lsn
     FROM cdc_registry.file_log
     WHERE slot_name = 'cdc_egress' AND id > $1 AND id <= $2 AND file_type <> 'ddl'
     ORDER BY id`,
    [after, upTo],
  )).rows.map((r) => ({ ...r, id: Number(r.id) }));
}

/** Flips one byte of a file for the time of `fn`. */
async function withFlippedByte(path: string, fn: () => Promise<void>): Promise<void> {
  const bytes = await Deno.readFile(path);
  const flipped = bytes.slice();
  flipped[Math.floor(bytes.length / 2)] ^= 0xff;
  await Deno.writeFile(path, flipped);
  try {
    await fn();
  } finally {
    await Deno.writeFile(path, bytes, { mode: 0o600 });
  }
}

function assertOneErrorLine(r: CliResult, line: RegExp): void {
  assert.equal(r.code, 2, `expected exit 2, got ${r.code}:\n${r.stdout}\n${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], line);
}

for (const version of testMajors()) {
  Deno.test(`verify --since checks only newer files and chains (PG ${version}${layoutSuffix()})`, async (t) => {
    await using w = await streamEnv(version);
    const db = w.db;
    await db.query(`
      CREATE TABLE orders (id int PRIMARY KEY, note text);
      CREATE TABLE events (id bigserial PRIMARY KEY, payload text);
      INSERT INTO orders SELECT g, 'o' || g FROM generate_series(1, 100) g;
    `);
    await w.init();
    const p = w.stream();
    await w.caughtUp();
    await db.query("INSERT INTO events (payload) SELECT 'e' || g FROM generate_series(1, 20) g");
    await db.query("UPDATE orders SET note = note || '.' WHERE id <= 5");
    await w.caughtUp();
    await waitFor("streaming files of both tables", async () =>
      Number(
        (await w.registry.query(
          `SELECT count(DISTINCT table_name) AS n FROM cdc_registry.file_log
             WHERE file_type = 'streaming'`,
        )).rows[0].n,
      ) === 2);

    let mark = 0;
    await t.step("a full run prints the newest file id as the next mark", async () => {
      const r = await verify(w);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      mark = nextMark(r);
      assert.equal(mark, await newestId(w));
      const again = await verify(w, "--since", String(mark), "--json");
      assert.equal(again.code, 0, again.stdout + again.stderr);
      const doc = JSON.parse(again.stdout);
      assert.equal(doc.files_checked, 0);
      assert.deepEqual(doc.since, { after_id: mark, time: doc.since.time });
      assert.equal(doc.next_since, mark);
      assert.ok(doc.notes.includes("orphan files are not looked for with --since"));
    });

    // New files after the mark, in both tables, in a later folder.
    const beforeNew = await newestId(w);
    await db.query("UPDATE orders SET note = note || '!' WHERE id <= 30");
    await db.query("INSERT INTO events (payload) SELECT 'f' || g FROM generate_series(1, 10) g");
    await w.caughtUp();
    await waitFor(
      "streaming files of both tables after the mark",
      async () => new Set((await dataFiles(w, beforeNew)).map((f) => f.table_name)).size === 2,
    );
    assert.equal(await p.stop(), 0, p.stderr);
    const newer = await dataFiles(w, mark);
    const older = await dataFiles(w, 0, mark);

    await t.step("--since N reads exactly the files after N", async () => {
      const r = await verify(w, "--since", String(mark), "--json");
      assert.equal(r.code, 0, r.stdout + r.stderr);
      const doc = JSON.parse(r.stdout);
      const all = await w.registry.query(
        `SELECT count(*)::int AS n FROM cdc_registry.file_log
         WHERE slot_name = 'cdc_egress' AND id > $1`,
        [mark],
      );
      assert.equal(doc.files_checked, all.rows[0].n);
      assert.ok(doc.files_checked >= 2);
      assert.deepEqual(doc.tables.map((x: { name: string }) => x.name), [
        "public.events",
        "public.orders",
      ]);
      assert.equal(doc.next_since, await newestId(w));
      const text = await verify(w, "--since", String(mark));
      assert.match(text.stdout, /^verify: OK, .*, files after id \d+ only$/m);
      assert.equal(nextMark(text), await newestId(w));
    });

    await t.step("a corrupted older file is not re-read; a full run finds it", async () => {
      await withFlippedByte(join(w.dataDir, older[0].path), async () => {
        const r = await verify(w, "--since", String(mark));
        assert.equal(r.code, 0, r.stdout + r.stderr);
        const full = await verify(w);
        assert.equal(full.code, 1, full.stdout);
        assert.match(full.stdout, new RegExp(`^sha256 mismatch: ${older[0].path}: `, "m"));
      });
    });

    await t.step("a corrupted newer file is found", async () => {
      await withFlippedByte(join(w.dataDir, newer[0].path), async () => {
        const r = await verify(w, "--since", String(mark));
        assert.equal(r.code, 1, r.stdout + r.stderr);
        assert.match(r.stdout, new RegExp(`^sha256 mismatch: ${newer[0].path}: `, "m"));
        // The mark still moves: the run checked up to here (cron decides on exit 1).
        assert.equal(nextMark(r), await newestId(w));
      });
    });

    await t.step("continuity across the mark: a newer file overlapping an older one", async () => {
      // The first streaming file of orders after the mark, made to start
      // inside the last one before it.
      const orders = (await w.registry.query(
        `SELECT id::int8 AS id, path, start_lsn::text AS start_lsn, start_seq
         FROM cdc_registry.file_log WHERE slot_name = 'cdc_egress' AND table_name = 'orders'
           AND file_type = 'streaming' ORDER BY id`,
      )).rows;
      const first = orders.find((f) => Number(f.id) > mark);
      const last = [...orders].reverse().find((f) => Number(f.id) <= mark);
      assert.ok(first && last, "orders has streaming files on both sides of the mark");
      await w.registry.query(
        "UPDATE cdc_registry.file_log SET start_lsn = $2, start_seq = $3 WHERE id = $1",
        [first.id, last.start_lsn, last.start_seq],
      );
      try {
        const r = await verify(w, "--since", String(mark));
        assert.equal(r.code, 1, r.stdout + r.stderr);
        assert.match(
          r.stdout,
          new RegExp(`^overlapping LSN ranges: ${first.path}: .* overlaps ${last.path} `, "m"),
        );
      } finally {
        await w.registry.query(
          "UPDATE cdc_registry.file_log SET start_lsn = $2, start_seq = $3 WHERE id = $1",
          [first.id, first.start_lsn, first.start_seq],
        );
      }
      assert.equal((await verify(w, "--since", String(mark))).code, 0);
    });

    await t.step("--since TIME: files registered after that time", async () => {
      const at = (await w.registry.query(
        "SELECT created_at FROM cdc_registry.file_log WHERE id = $1",
        [mark],
      )).rows[0].created_at as Date;
      const r = await verify(w, "--since", at.toISOString(), "--json");
      assert.equal(r.code, 0, r.stdout + r.stderr);
      const doc = JSON.parse(r.stdout);
      const expected = await w.registry.query(
        `SELECT count(*)::int AS n FROM cdc_registry.file_log
         WHERE slot_name = 'cdc_egress' AND created_at > $1`,
        [at],
      );
      assert.equal(doc.files_checked, expected.rows[0].n);
      assert.ok(doc.files_checked > 0);
      // A date before everything checks every file.
      const all = JSON.parse((await verify(w, "--since", "2000-01-01", "--json")).stdout);
      assert.equal(all.files_checked, older.length + newer.length + await ddlFiles(w));
    });

    await t.step("bad marks: one line, exit 2", async () => {
      const newest = await newestId(w);
      assertOneErrorLine(
        await verify(w, "--since", String(newest + 1000)),
        new RegExp(
          `^error: Cannot verify --since ${
            newest + 1000
          }: slot "cdc_egress" has no file with that id \\(its newest file is ${newest}\\)$`,
        ),
      );
      assertOneErrorLine(
        await verify(w, "--since", "yesterday"),
        /^error: Cannot use --since "yesterday": not a file id or an ISO time; expected /,
      );
      assertOneErrorLine(
        await verify(w, "--since", "2026-11-29T10:00:00"),
        /^error: Cannot use --since "2026-11-29T10:00:00": the time has no zone/,
      );
      assertOneErrorLine(
        await verify(w, "--since", "2026-02-30T10:00:00Z"),
        /^error: Cannot use --since "2026-02-30T10:00:00Z": no such date or time;/,
      );
      assertOneErrorLine(
        await verify(w, "--since", "2999-01-01T00:00:00Z"),
        /^error: Cannot verify --since 2999-01-01T00:00:00Z: that time is in the future/,
      );
      assertOneErrorLine(
        await verify(w, "--since", String(mark), "--deep"),
        /^error: Cannot use --since with --deep: /,
      );
      assertOneErrorLine(
        await verify(w, "--since", String(mark), "--quarantine"),
        /^error: Cannot use --since with --quarantine: /,
      );
    });
  });
}

async function ddlFiles(w: StreamEnv): Promise<number> {
  return (await w.registry.query(
    `SELECT count(*)::int AS n FROM cdc_registry.file_log
     WHERE slot_name = 'cdc_egress' AND file_type = 'ddl'`,
  )).rows[0].n;
}
