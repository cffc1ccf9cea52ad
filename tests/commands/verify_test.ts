/**
 * `verify` against real PostgreSQL, on every major of testMajors(): a world
 * built by init + stream (initial export, streaming files in several
 * folders, a DDL folder, awkward CSV values) verifies clean, plain, --deep
 * and --json; then each corruption on its own, restored afterwards, makes it
 * exit 1 with a line naming the problem; bad settings make it exit 2.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { gunzipSync, gzipSync } from "node:zlib";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { CsvRecordCounter } from "../../src/verify/csv_record_counter.ts";
import { type CsvField, parseCsv } from "../../src/replay/csv_reader.ts";
import { type CliResult, runCli, waitFor } from "../harness/cli.ts";
import { layoutSuffix, type StreamEnv, streamEnv } from "../harness/stream_env.ts";

Deno.test("CsvRecordCounter counts records, not newlines inside quotes", () => {
  const enc = new TextEncoder();
  const c = new CsvRecordCounter();
  const text = 'a,b\n1,"x\ny"\n2,"say ""hi""\n,"\n3,\n';
  // Feed it in every possible two-chunk split.
  for (let cut = 0; cut <= text.length; cut++) {
    const k = new CsvRecordCounter();
    k.push(enc.encode(text.slice(0, cut)));
    k.push(enc.encode(text.slice(cut)));
    assert.deepEqual(k.finish(), { records: 4, unclosedQuote: false });
  }
  c.push(enc.encode('h\n1\n"open'));
  assert.deepEqual(c.finish(), { records: 3, unclosedQuote: true });
  const last = new CsvRecordCounter();
  last.push(enc.encode("h\n1"));
  assert.equal(last.finish().records, 2);
});

/** Files of `public.orders` of one type, in LSN order. */
async function files(w: StreamEnv, type = "streaming", table = "orders") {
  const res = await w.registry.query(
    `SELECT id, path, start_lsn::text AS start_lsn, end_lsn::text AS end_lsn, start_seq, end_seq,
            row_count, byte_size, sha256
     FROM cdc_registry.file_log WHERE schema_name = 'public' AND table_name = $2
       AND file_type = $1 ORDER BY start_lsn, start_seq`,
    [type, table],
  );
  return res.rows as {
    id: string;
    path: string;
    start_lsn: string;
    end_lsn: string;
    start_seq: number;
    end_seq: number;
    row_count: string;
    byte_size: string;
    sha256: string;
  }[];
}

function verify(w: StreamEnv, ...args: string[]): Promise<CliResult> {
  return runCli(["verify", ...args], w.env);
}

function assertClean(r: CliResult, what: string): void {
  assert.equal(r.code, 0, `${what} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
}

/** Asserts exit 1 and a stdout line matching `line`. */
function assertProblem(r: CliResult, line: RegExp): void {
  assert.equal(r.code, 1, `expected exit 1, got ${r.code}:\n${r.stdout}\n${r.stderr}`);
  assert.ok(
    r.stdout.split("\n").some((l) => line.test(l)),
    `no line matches ${line}:\n${r.stdout}`,
  );
  assert.match(r.stdout, /^verify: \d+ problem\(s\)/m);
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Restores a file's bytes after `fn`, whatever it did. */
async function withFile(path: string, fn: (bytes: Uint8Array) => Promise<void>): Promise<void> {
  const bytes = await Deno.readFile(path);
  try {
    await fn(bytes);
  } finally {
    await Deno.writeFile(path, bytes, { mode: 0o600 });
  }
}

/** Restores one file_log row after `fn`. */
async function withRow(w: StreamEnv, path: string, fn: () => Promise<void>): Promise<void> {
  const saved =
    (await w.registry.query("SELECT * FROM cdc_registry.file_log WHERE path = $1", [path]))
      .rows[0];
  try {
    await fn();
  } finally {
    await w.registry.query(
      `UPDATE cdc_registry.file_log SET start_lsn = $2, end_lsn = $3, start_seq = $4,
         end_seq = $5, row_count = $6, byte_size = $7, sha256 = $8 WHERE path = $1`,
      [
        path,
        saved.start_lsn,
        saved.end_lsn,
        saved.start_seq,
        saved.end_seq,
        saved.row_count,
        saved.byte_size,
        saved.sha256,
      ],
    );
  }
}

/** PostgreSQL-dialect CSV, as COPY writes it. */
function encodeCsv(rows: CsvField[][]): string {
  return rows.map((r) =>
    r.map((v) =>
      v === null ? "" : v === "" || /[",\r\n]/.test(v) ? `"${v.replaceAll('"', '""')}"` : v
    ).join(",")
  ).join("\n") + "\n";
}

/** Builds the world: tables, initial rows, init, stream, workload in three folders, SIGTERM. */
async function buildWorld(w: StreamEnv): Promise<void> {
  const db = w.db;
  await db.query(`
    CREATE TABLE orders (id int PRIMARY KEY, note text, amount numeric(10,2));
    CREATE TABLE keyless (a int, b text);
    ALTER TABLE keyless REPLICA IDENTITY FULL;
    CREATE SCHEMA "Odd Schema";
    CREATE TABLE "Odd Schema"."we.ird" (k text PRIMARY KEY, v jsonb);
    INSERT INTO orders SELECT g, 'initial ' || g, g * 1.5 FROM generate_series(1, 200) g;
    INSERT INTO keyless VALUES (1, 'x'), (1, 'x'), (2, E'multi\\nline, "quoted"');
    INSERT INTO "Odd Schema"."we.ird" VALUES ('a,b', '{"x": [1, 2]}');
  `);
  await w.init();
  const p = w.stream();
  await waitFor("stream to take the slot", async () =>
    (await db.query(
      "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
    )).rows[0]?.active_pid != null);
  await w.caughtUp();
  const streamingFiles = async () =>
    Number(
      (await w.registry.query(
        `SELECT count(*) AS n FROM cdc_registry.file_log
         WHERE table_name = 'orders' AND file_type = 'streaming'`,
      )).rows[0].n,
    );
  // Three rounds, each waited for until its own folder is registered.
  for (let round = 0; round < 3; round++) {
    const before = await streamingFiles();
    await db.query("BEGIN");
    for (let i = 0; i < 20; i++) {
      const id = 1000 + round * 100 + i;
      await db.query("INSERT INTO orders VALUES ($1, $2, $3)", [
        id,
        i % 5 === 0 ? `line one\nline "two", ${id}` : i % 7 === 0 ? "" : `n${id}`,
        i % 3 === 0 ? null : id / 4,
      ]);
    }
    await db.query("UPDATE orders SET note = note || ' upd' WHERE id BETWEEN $1 AND $2", [
      10 * round + 1,
      10 * round + 5,
    ]);
    await db.query("DELETE FROM orders WHERE id = $1", [100 + round]);
    await db.query("COMMIT");
    await db.query("INSERT INTO keyless VALUES ($1, 'r'), ($1, 'r')", [10 + round]);
    await db.query(
      "DELETE FROM keyless WHERE a = 1 AND b = 'x' AND ctid = (SELECT min(ctid) FROM keyless WHERE a = 1)",
    );
    await db.query(`UPDATE "Odd Schema"."we.ird" SET v = $1`, [JSON.stringify({ round })]);
    if (round === 1) await db.query("ALTER TABLE orders ADD COLUMN tag text DEFAULT NULL");
    if (round >= 1) await db.query("UPDATE orders SET tag = 't' || id WHERE id = $1", [round]);
    await waitFor(
      `round ${round} to reach its own folder`,
      async () => (await streamingFiles()) > before,
    );
  }
  await w.caughtUp();
  const code = await p.stop();
  assert.equal(code, 0, `stream exited ${code}: ${p.stderr}`);
}

for (const version of testMajors()) {
  Deno.test(`verify finds every kind of inconsistency (PG ${version}${layoutSuffix()})`, async (t) => {
    await using w = await streamEnv(version);
    await buildWorld(w);
    const streaming = await files(w);
    assert.ok(streaming.length >= 3, `expected >= 3 streaming files, got ${streaming.length}`);
    const target = streaming[1];
    const targetPath = join(w.dataDir, target.path);
    const pathRe = escape(target.path);

    await t.step("a clean world verifies: plain, --deep, --json", async () => {
      assertClean(await verify(w), "verify");
      const deep = await verify(w, "--deep");
      assertClean(deep, "verify --deep");
      assert.match(deep.stdout, /^deep public\.orders: \d+ rows replayed, \d+ live, equal/m);
      assert.match(deep.stdout, /^verify: OK/m);
      const json = await verify(w, "--json", "--deep");
      assertClean(json, "verify --json --deep");
      const doc = JSON.parse(json.stdout);
      assert.equal(doc.ok, true);
      assert.deepEqual(doc.problems, []);
      const names = doc.tables.map((x: { name: string }) => x.name);
      assert.deepEqual(names, ["Odd Schema.we.ird", "public.keyless", "public.orders"]);
      const orders = doc.tables.find((x: { name: string }) => x.name === "public.orders");
      const live = Number((await w.db.query("SELECT count(*) AS n FROM orders")).rows[0].n);
      assert.equal(orders.deep.live_rows, live);
      assert.equal(orders.deep.replayed_rows, live);
      assert.equal(orders.deep.matching_rows, live);
      const registered = Number(
        (await w.registry.query("SELECT count(*) AS n FROM cdc_registry.file_log")).rows[0].n,
      );
      assert.equal(doc.files_checked, registered);
      // --table narrows the check.
      const one = JSON.parse((await verify(w, "--json", "--table", "keyless")).stdout);
      assert.deepEqual(one.tables.map((x: { name: string }) => x.name), ["public.keyless"]);
    });

    await t.step("a deleted file", async () => {
      await withFile(targetPath, async () => {
        await Deno.remove(targetPath);
        assertProblem(await verify(w), new RegExp(`^missing file: ${pathRe}: `));
      });
    });

    await t.step("a truncated file", async () => {
      await withFile(targetPath, async (bytes) => {
        await Deno.writeFile(targetPath, bytes.slice(0, Math.floor(bytes.length / 2)));
        const r = await verify(w);
        assertProblem(r, new RegExp(`^size mismatch: ${pathRe}: size \\d+ bytes`));
        assertProblem(r, new RegExp(`^corrupt file: ${pathRe}: gzip`));
      });
    });

    await t.step("one flipped byte", async () => {
      await withFile(targetPath, async (bytes) => {
        const flipped = bytes.slice();
        flipped[Math.floor(flipped.length / 2)] ^= 0x01;
        await Deno.writeFile(targetPath, flipped);
        assertProblem(await verify(w), new RegExp(`^sha256 mismatch: ${pathRe}: `));
      });
    });

    await t.step("a registry row count that lies", async () => {
      await withRow(w, target.path, async () => {
        await w.registry.query(
          "UPDATE cdc_registry.file_log SET row_count = row_count + 1 WHERE path = $1",
          [target.path],
        );
        assertProblem(
          await verify(w),
          new RegExp(
            `^row count mismatch: ${pathRe}: ${target.row_count} rows in the file, registry says ${
              Number(target.row_count) + 1
            }`,
          ),
        );
      });
    });

    await t.step("orphan files, and --quarantine moves them", async () => {
      const folder = target.path.replace(/\/[^/]+$/, "");
      const orphans = [
        `${folder}/extra.csv.gz`,
        `${folder}/.tmp-streaming.csv.gz.0123456789abcdef`,
      ];
      for (const o of orphans) await Deno.writeTextFile(join(w.dataDir, o), "junk");
      const r = await verify(w);
      for (const o of orphans) assertProblem(r, new RegExp(`^orphan file: ${escape(o)}: `));
      const q = await verify(w, "--quarantine", "--json");
      assert.equal(q.code, 1, q.stderr);
      const doc = JSON.parse(q.stdout);
      assert.equal(doc.quarantined.length, 2);
      for (const o of orphans) {
        const moved = doc.quarantined.find((x: { from: string }) => x.from === o);
        assert.ok(moved, `${o} not quarantined: ${q.stdout}`);
        assert.match(moved.to, new RegExp(`^\\.quarantine/\\d{8}T\\d{6}\\.\\d{3}Z/${escape(o)}$`));
        assert.equal(await Deno.readTextFile(join(w.dataDir, moved.to)), "junk");
        await assert.rejects(Deno.stat(join(w.dataDir, o)), Deno.errors.NotFound);
      }
      assertClean(await verify(w), "verify after quarantine");
    });

    await t.step("overlapping LSN ranges", async () => {
      const [a, b] = streaming;
      await withRow(w, a.path, async () => {
        await w.registry.query(
          "UPDATE cdc_registry.file_log SET end_lsn = $2, end_seq = $3 WHERE path = $1",
          [a.path, b.start_lsn, b.start_seq],
        );
        assertProblem(
          await verify(w),
          new RegExp(`^overlapping LSN ranges: ${escape(b.path)}: .* overlaps ${escape(a.path)}`),
        );
      });
    });

    await t.step("a streaming file straddling the reload LSN", async () => {
      const [reload] = await files(w, "full_reload");
      await withRow(w, target.path, async () => {
        // 1 byte below the reload LSN: the file now starts before it and ends after it.
        const lsn = (await w.db.query("SELECT ($1::pg_lsn - 1)::text AS l", [reload.start_lsn]))
          .rows[0].l;
        await w.registry.query(
          "UPDATE cdc_registry.file_log SET start_lsn = $2::pg_lsn WHERE path = $1",
          [target.path, lsn],
        );
        assertProblem(
          await verify(w),
          new RegExp(`^file straddles reload LSN: ${pathRe}: .* straddles the reload LSN`),
        );
      });
    });

    await t.step("--deep catches altered rows with a registry rewritten to match", async () => {
      // The last change of each key: altering it changes the replayed table.
      const last = new Map<string, { path: string; row: number }>();
      const parsedFiles = new Map<string, CsvField[][]>();
      for (const f of streaming) {
        const rows = parseCsv(
          new TextDecoder().decode(gunzipSync(await Deno.readFile(join(w.dataDir, f.path)))),
        );
        parsedFiles.set(f.path, rows);
        rows.slice(1).forEach((r, i) => last.set(r[7]!, { path: f.path, row: i + 1 }));
      }
      const live = new Set(
        (await w.db.query("SELECT id::text AS id FROM orders")).rows.map((r) => r.id),
      );
      const [key, at] = [...last].find(([k, v]) =>
        live.has(k) && ["I", "U"].includes(parsedFiles.get(v.path)![v.row][0]!)
      )!;
      const rows = parsedFiles.get(at.path)!;
      const note = rows[0].indexOf("note");
      rows[at.row][note] = "tampered";
      const bytes = gzipSync(new TextEncoder().encode(encodeCsv(rows)));
      const path = join(w.dataDir, at.path);
      await withFile(path, async () => {
        await withRow(w, at.path, async () => {
          await Deno.writeFile(path, bytes);
          await w.registry.query(
            "UPDATE cdc_registry.file_log SET sha256 = $2, byte_size = $3 WHERE path = $1",
            [at.path, createHash("sha256").update(bytes).digest("hex"), bytes.length],
          );
          assertClean(await verify(w), "verify (without --deep) of a consistent rewrite");
          const r = await verify(w, "--deep");
          assertProblem(
            r,
            new RegExp(
              `^replay differs from live table: public\\.orders: .*\\{"id":"${key}"\\} \\(values differ\\)`,
            ),
          );
          assert.match(r.stdout, /^deep public\.orders: .* DIFFERENT/m);
          const doc = JSON.parse((await verify(w, "--deep", "--json")).stdout);
          const orders = doc.tables.find((x: { name: string }) => x.name === "public.orders");
          assert.equal(orders.deep.missing_rows, 1);
          assert.equal(orders.deep.extra_rows, 1);
          assert.deepEqual(orders.deep.differing_keys, [{ key: { id: key }, side: "both" }]);
        });
      });
    });

    await t.step("everything restored verifies clean again", async () => {
      assertClean(await verify(w, "--deep"), "verify --deep after the corruptions");
    });

    await t.step("exit 2 when it cannot run", async () => {
      const missingDir = await runCli(["verify"], {
        ...w.env,
        CDC_DATA_DIR: join(w.dataDir, "nope"),
      });
      assert.equal(missingDir.code, 2, missingDir.stderr);
      assert.match(missingDir.stderr, /^error: Cannot verify: data dir ".*nope" does not exist$/m);
      await w.db.query("CREATE DATABASE other");
      const url = new URL(w.cluster.url());
      url.pathname = "/other";
      const notInit = await runCli(["verify", "--json"], { ...w.env, CDC_SOURCE_URL: String(url) });
      assert.equal(notInit.code, 2, notInit.stderr);
      // A separate registry is initialized, but records the slot for the first database.
      assert.match(
        notInit.stderr,
        w.separateRegistry
          ? /Cannot verify slot "cdc_egress": the registry records it for another source \(database "postgres"/
          : /run "cdc-egress init" first/,
      );
      assert.equal(JSON.parse(notInit.stdout).ok, false);
      const unknown = await verify(w, "--table", "nosuch");
      assert.equal(unknown.code, 2, unknown.stderr);
      assert.match(unknown.stderr, /^error: Cannot verify --table "nosuch": no registered table/m);
      url.pathname = "/postgres";
      url.port = "1";
      const down = await runCli(["verify"], { ...w.env, CDC_SOURCE_URL: String(url) });
      assert.equal(down.code, 2, down.stderr);
      assert.match(down.stderr, /^error: Cannot connect to source PostgreSQL/m);
      for (const r of [missingDir, notInit, unknown, down]) {
        assert.ok(!(r.stdout + r.stderr).includes(w.cluster.password), "printed the password");
      }
    });
  });
}
