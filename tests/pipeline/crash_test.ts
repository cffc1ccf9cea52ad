/**
 * `kill -9` recovery (DESIGN §2, §8): a `stream` process is SIGKILLed at
 * random moments under a concurrent write workload and restarted, round
 * after round. Throughout, the slot's confirmed_flush_lsn never passes the
 * registry checkpoint; at the end, after one clean run, every change is in
 * exactly one registered file, the files match the registry, nothing is
 * left half-written and replay equals the live tables.
 *
 * `CDC_CRASH_SEED` replays a run (the seed is printed on failure);
 * `CDC_CRASH_ROUNDS` changes the number of rounds (default 26: every sixth
 * ends with SIGTERM instead, which must exit 0 and leave only registered
 * files; the others with SIGKILL). `CDC_CRASH_DEBUG=1` prints each round's log.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { type Lsn, maxLsn, parseLsn, ZERO_LSN } from "../../src/lsn.ts";
import { parseCsv } from "../../src/replay/csv_reader.ts";
import { type CliProcess, runCli, waitFor } from "../harness/cli.ts";
import { registeredRows } from "../harness/replay_check.ts";
import { OWNER_FILE } from "../../src/write/data_dir_owner.ts";
import { layoutSuffix, type StreamEnv, streamEnv } from "../harness/stream_env.ts";
import { prng } from "../harness/prng.ts";

const ROUNDS = Number(Deno.env.get("CDC_CRASH_ROUNDS") ?? 26);
const TABLES = ["accounts", "events", "keyless"] as const;
/** Rounds that may kill the stream before its initial export is registered. */
const EXPORT_ROUNDS = 4;
const STREAM_ENV = { CDC_BATCH_INTERVAL: "200ms", CDC_BATCH_MAX_ROWS: "500" };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function connect(url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  return client;
}

/**
 * Writes until `stop()`: single-row changes, key-changing updates, updates
 * that leave a TOASTed column unchanged, multi-table transactions, rollbacks,
 * subtransactions rolled back, big transactions (larger than a batch, and
 * streamed by PostgreSQL before commit) and truncates of the keyless table.
 */
async function workload(
  db: pg.Client,
  random: () => number,
  stop: () => boolean,
): Promise<number> {
  const int = (n: number) => Math.floor(random() * n);
  let nextAccount = 1;
  let transactions = 0;
  const account = () => 1 + int(Math.max(1, nextAccount - 1));
  while (!stop()) {
    const r = random();
    if (r < 0.22) {
      await db.query("INSERT INTO public.accounts (id, balance, note) VALUES ($1, $2, $3)", [
        nextAccount++,
        int(1000),
        random() < 0.1 ? null : `note ${int(1e6)}`,
      ]);
    } else if (r < 0.36) {
      await db.query(
        "UPDATE public.accounts SET balance = balance + $2, note = $3 WHERE id = $1",
        [account(), int(100) - 50, `upd "${int(1e6)}", ok`],
      );
    } else if (r < 0.40) {
      await db.query("DELETE FROM public.accounts WHERE id = $1", [account()]);
    } else if (r < 0.43) {
      // Key-changing update: _cdc_old_key carries the old id.
      await db.query("UPDATE public.accounts SET id = $2 WHERE id = $1", [
        account(),
        nextAccount++,
      ]);
    } else if (r < 0.55) {
      await db.query("INSERT INTO public.keyless (a, b) VALUES ($1, $2)", [
        int(40),
        random() < 0.1 ? null : `k${int(5)}`,
      ]);
    } else if (r < 0.59) {
      await db.query("UPDATE public.keyless SET b = coalesce(b, '') || 'x' WHERE a = $1", [
        int(40),
      ]);
    } else if (r < 0.62) {
      await db.query("DELETE FROM public.keyless WHERE a = $1", [int(40)]);
    } else if (r < 0.66) {
      // A large TOASTed payload, then an update that leaves it unchanged.
      const res = await db.query(
        `INSERT INTO public.events (kind, payload)
         SELECT 'toast', string_agg(md5(random()::text), '') FROM generate_series(1, 250)
         RETURNING id`,
      );
      await db.query("UPDATE public.events SET kind = 'toast-touched' WHERE id = $1", [
        res.rows[0].id,
      ]);
    } else if (r < 0.86) {
      // Several tables in one transaction.
      await db.query("BEGIN");
      const n = 1 + int(4);
      for (let i = 0; i < n; i++) {
        await db.query("INSERT INTO public.events (kind, payload) VALUES ('multi', $1)", [
          `p${int(1e9)}`,
        ]);
      }
      await db.query("UPDATE public.accounts SET balance = balance - 1 WHERE id = $1", [
        account(),
      ]);
      await db.query("INSERT INTO public.keyless (a, b) VALUES ($1, 'multi')", [int(40)]);
      await db.query(
        "DELETE FROM public.events WHERE id = (SELECT min(id) FROM public.events WHERE kind = 'multi')",
      );
      await db.query("COMMIT");
    } else if (r < 0.90) {
      await db.query("BEGIN");
      await db.query("INSERT INTO public.accounts (id, balance) VALUES ($1, -1)", [
        1_000_000 + int(1e6),
      ]);
      await db.query("INSERT INTO public.keyless (a, b) VALUES (-1, 'rolled back')");
      await db.query("ROLLBACK");
    } else if (r < 0.975) {
      // Bigger than a batch (500 rows) and than logical_decoding_work_mem
      // (64kB), so PostgreSQL streams it in blocks; with a rolled-back
      // subtransaction inside.
      await db.query("BEGIN");
      await db.query(
        `INSERT INTO public.events (kind, payload)
         SELECT 'bulk', repeat(md5(g::text || random()::text), 2) FROM generate_series(1, $1) g`,
        [600 + int(900)],
      );
      await db.query("SAVEPOINT s");
      await db.query(
        `INSERT INTO public.events (kind, payload)
         SELECT 'aborted', md5(g::text) FROM generate_series(1, 300) g`,
      );
      await db.query("ROLLBACK TO SAVEPOINT s");
      await db.query(
        "UPDATE public.accounts SET balance = balance + 1 WHERE id IN (SELECT id FROM public.accounts ORDER BY random() LIMIT 50)",
      );
      await db.query("DELETE FROM public.events WHERE kind = 'bulk' AND id % 7 = 0");
      await db.query("COMMIT");
    } else {
      await db.query("TRUNCATE public.keyless");
    }
    transactions++;
    await sleep(int(8));
  }
  return transactions;
}

/** Every regular file under `dir`, relative, sorted. */
async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (sub: string) => {
    for await (const e of Deno.readDir(join(dir, sub))) {
      const rel = sub ? `${sub}/${e.name}` : e.name;
      if (e.isDirectory) await walk(rel);
      else out.push(rel);
    }
  };
  await walk("");
  return out.sort();
}

/**
 * Samples the slot and the registry checkpoint until `stop()`; returns the
 * number of samples and every violation of confirmed_flush_lsn <= checkpoint.
 * The slot is read first and the checkpoint in a later statement (a newer
 * snapshot), so a checkpoint committed in between cannot hide a violation
 * nor fake one.
 */
async function sampleSlot(
  db: pg.Client,
  registry: pg.Client,
  initialConfirmed: string,
  stop: () => boolean,
): Promise<{ samples: number; violations: string[] }> {
  let samples = 0;
  const violations: string[] = [];
  while (!stop()) {
    await checkSlot(db, registry, initialConfirmed, violations);
    samples++;
    await sleep(15);
  }
  return { samples, violations };
}

async function checkSlot(
  db: pg.Client,
  registry: pg.Client,
  initialConfirmed: string,
  violations: string[],
) {
  const slot = await db.query(
    "SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
  );
  const confirmed: string = slot.rows[0].lsn;
  const cp = await registry.query(
    `SELECT checkpoint_lsn::text AS cp, $1::pg_lsn <= checkpoint_lsn AS ok
     FROM cdc_registry.checkpoint WHERE slot_name = 'cdc_egress'`,
    [confirmed],
  );
  if (cp.rowCount === 0) {
    // No checkpoint yet: the slot must still be where init created it.
    const same = await db.query("SELECT $1::pg_lsn = $2::pg_lsn AS ok", [
      confirmed,
      initialConfirmed,
    ]);
    if (!same.rows[0].ok) violations.push(`confirmed ${confirmed} with no checkpoint`);
  } else if (!cp.rows[0].ok) {
    violations.push(`confirmed ${confirmed} > checkpoint ${cp.rows[0].cp}`);
  }
}

/** Waits until every table has a registered export (or the stream has died). */
async function initialExportDone(w: StreamEnv, stream: CliProcess): Promise<void> {
  let exited = false;
  stream.exited().then(() => exited = true);
  await waitFor("the initial export", async () => {
    const res = await w.registry.query(
      `SELECT count(DISTINCT table_name)::int AS n FROM cdc_registry.file_log
       WHERE slot_name = 'cdc_egress' AND file_type = 'full_reload'`,
    );
    return exited || res.rows[0].n === TABLES.length;
  }, 90_000);
}

/** Waits until no cdc-egress backend is left (the killed process's walsender and lock). */
async function waitForBackendsGone(
  db: pg.Client,
  registry: pg.Client = db,
): Promise<void> {
  await waitFor("the killed stream's backends to exit", async () => {
    // The registry's backend holds the stream's advisory lock: it must be gone too.
    for (const c of new Set([db, registry])) {
      const res = await c.query(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE 'cdc-egress%'`,
      );
      if (res.rows[0].n !== 0) return false;
    }
    return true;
  }, 30_000);
}

/**
 * Right after a kill: every registered file is on disk, under its final name
 * or (killed between the registry commit and the rename) its temp name,
 * which the next start renames. Returns what the kill left behind.
 */
async function checkAfterKill(
  w: StreamEnv,
): Promise<{ temps: number; renamePending: number; exportTemps: number }> {
  const registered = await w.registry.query(
    "SELECT path FROM cdc_registry.file_log WHERE slot_name = 'cdc_egress'",
  );
  // In a bucket (CDC_TEST_STORAGE=s3) a file is uploaded before it is registered.
  await w.syncFiles();
  const onDisk = new Set(await listFiles(w.dataDir));
  let renamePending = 0;
  for (const { path } of registered.rows) {
    if (onDisk.has(path)) continue;
    const temp = path.replace(/[^/]+$/, (name: string) => `.tmp-${name}`);
    assert.ok(onDisk.has(temp), `registered file ${path} is gone after a kill`);
    renamePending++;
  }
  const temps = [...onDisk].filter((p) => p.split("/").pop()!.startsWith(".tmp-"));
  return {
    temps: temps.length,
    renamePending,
    exportTemps: temps.filter((p) => p.endsWith("/.tmp-full_reload.csv.gz")).length,
  };
}

/** Moves the newest registered file back to its temp name; false if there is none. */
async function unrenameNewest(w: StreamEnv): Promise<boolean> {
  // Objects have no temp names: the state does not exist in a bucket.
  if (w.s3) return false;
  const newest = await w.registry.query(
    "SELECT path FROM cdc_registry.file_log WHERE slot_name = 'cdc_egress' ORDER BY id DESC LIMIT 1",
  );
  if (newest.rowCount === 0) return false;
  const path = join(w.dataDir, newest.rows[0].path);
  try {
    await Deno.rename(path, path.replace(/[^/]+$/, (name: string) => `.tmp-${name}`));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
  return true;
}

/** Checks the registry against the files and the files against each other. */
async function checkFiles(w: StreamEnv): Promise<void> {
  await w.syncFiles();
  const registered = await w.registry.query(
    `SELECT path, file_type, byte_size::int8::text AS byte_size, sha256, row_count::int AS rows,
            start_lsn::text AS start_lsn, end_lsn::text AS end_lsn, start_seq, end_seq
     FROM cdc_registry.file_log WHERE slot_name = 'cdc_egress' ORDER BY path`,
  );
  const onDisk = await listFiles(w.dataDir);
  const temps = onDisk.filter((p) => p.split("/").pop()!.startsWith(".tmp-"));
  assert.deepEqual(temps, [], "temp files left after a clean run");
  const registeredPaths = new Set<string>();
  const registeredDirs = new Set<string>();
  for (const f of registered.rows) {
    registeredPaths.add(f.path);
    registeredDirs.add(f.path.replace(/\/[^/]+$/, ""));
    const bytes = await Deno.readFile(join(w.dataDir, f.path));
    assert.equal(String(bytes.length), f.byte_size, `byte size of ${f.path}`);
    assert.equal(createHash("sha256").update(bytes).digest("hex"), f.sha256, `sha256 of ${f.path}`);
    const rows = parseCsv(new TextDecoder().decode(gunzipSync(bytes)));
    assert.equal(rows.length - 1, f.rows, `row count of ${f.path}`);
    if (f.file_type !== "streaming") continue;
    assert.deepEqual(
      [rows[1][1], Number(rows[1][2]), rows[rows.length - 1][1], Number(rows[rows.length - 1][2])],
      [f.start_lsn, f.start_seq, f.end_lsn, f.end_seq],
      `LSN range of ${f.path}`,
    );
  }
  const unregistered = onDisk.filter((p) => {
    if (registeredPaths.has(p) || p === OWNER_FILE) return false;
    const [dir, name] = [p.replace(/\/[^/]+$/, ""), p.split("/").pop()];
    return !(name === "schema.yml" && registeredDirs.has(dir));
  });
  assert.deepEqual(unregistered, [], "files in the data dir that the registry does not know");
}

/**
 * Every change appears once: (lsn, seq) is unique across the streaming
 * files, no table has streaming rows before its export's LSN, and each
 * transaction after every export has seqs 0..n-1, none missing. (Between
 * two tables' exports a transaction is split between export and stream.)
 */
async function checkExactlyOnce(w: StreamEnv): Promise<number> {
  const exports = await w.registry.query(
    `SELECT table_name, max(start_lsn)::text AS lsn FROM cdc_registry.file_log
     WHERE slot_name = 'cdc_egress' AND file_type = 'full_reload' GROUP BY table_name`,
  );
  const boundary = new Map<string, Lsn>(
    exports.rows.map((r) => [r.table_name, parseLsn(r.lsn)]),
  );
  const allStreaming = [...boundary.values()].reduce((a, b) => maxLsn(a, b), ZERO_LSN);
  const seen = new Map<string, number>();
  const seqsByLsn = new Map<string, number[]>();
  const early: string[] = [];
  for (const table of TABLES) {
    const { rows } = await registeredRows(w.registry, w.dataDir, "public", table);
    for (const r of rows) {
      const lsn = parseLsn(r[1]!);
      if (lsn < (boundary.get(table) ?? ZERO_LSN)) early.push(`${table} ${r[1]}#${r[2]}`);
      const key = `${r[1]}#${r[2]}`;
      seen.set(key, (seen.get(key) ?? 0) + 1);
      if (lsn < allStreaming) continue;
      const list = seqsByLsn.get(r[1]!) ?? [];
      list.push(Number(r[2]));
      seqsByLsn.set(r[1]!, list);
    }
  }
  assert.deepEqual(early.slice(0, 10), [], `${early.length} streaming rows before the export`);
  const dups = [...seen].filter(([, n]) => n > 1).map(([k, n]) => `${k} x${n}`);
  assert.deepEqual(dups.slice(0, 10), [], `${dups.length} duplicated changes`);
  const gaps: string[] = [];
  for (const [lsn, seqs] of seqsByLsn) {
    seqs.sort((a, b) => a - b);
    if (seqs.some((s, i) => s !== i)) {
      gaps.push(`${lsn}: ${seqs.length} rows, max seq ${seqs.at(-1)}`);
    }
  }
  assert.deepEqual(gaps.slice(0, 10), [], `${gaps.length} transactions with missing changes`);
  assert.ok(seqsByLsn.size > 100, `only ${seqsByLsn.size} transactions checked for gaps`);
  return seen.size;
}

for (const version of testMajors()) {
  Deno.test({
    name:
      `crash: kill -9 of stream under writes loses and duplicates nothing (PostgreSQL ${version}${layoutSuffix()})`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    const seed = Number(Deno.env.get("CDC_CRASH_SEED") ?? 0xc0ffee + version);
    const started = Date.now();
    // A small logical_decoding_work_mem makes PostgreSQL stream big transactions early.
    await using w = await streamEnv(version, { logical_decoding_work_mem: "'64kB'" });
    await w.db.query(`
      CREATE TABLE public.accounts (id int PRIMARY KEY, balance int NOT NULL, note text);
      CREATE TABLE public.events (id bigserial PRIMARY KEY, kind text NOT NULL, payload text);
      CREATE INDEX ON public.events (kind);
      CREATE TABLE public.keyless (a int, b text);
      ALTER TABLE public.keyless REPLICA IDENTITY FULL;
      INSERT INTO public.accounts (id, balance, note)
        SELECT -g, g % 1000, 'preloaded ' || g FROM generate_series(1, 20000) g;
      INSERT INTO public.events (kind, payload)
        SELECT 'preloaded', repeat(md5(g::text), 3) FROM generate_series(1, 40000) g;
      INSERT INTO public.keyless (a, b) SELECT g % 40, 'preloaded' FROM generate_series(1, 5000) g;`);
    await w.init();
    const initialConfirmed: string = (await w.db.query(
      "SELECT confirmed_flush_lsn::text AS l FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
    )).rows[0].l;

    const writer = await connect(w.cluster.url());
    const sampler = await connect(w.cluster.url());
    const registrySampler = w.separateRegistry ? await connect(w.registryCluster.url()) : sampler;
    let stopWorkload = false;
    let stopSampler = false;
    const writing = workload(writer, prng(seed ^ 0x5eed), () => stopWorkload);
    const sampling = sampleSlot(sampler, registrySampler, initialConfirmed, () => stopSampler);
    writing.catch(() => {});
    sampling.catch(() => {});
    let workloadDone = false;
    writing.finally(() => workloadDone = true).catch(() => {});
    let current: CliProcess | null = null;
    let kills = 0;
    let terms = 0;
    let killsWithTemps = 0;
    let killsInExport = 0;
    let renamesPending = 0;
    try {
      const random = prng(seed);
      for (let round = 0; round < ROUNDS; round++) {
        current = w.stream(STREAM_ENV);
        // The first rounds kill at start-up and during the initial export.
        // Under writes, PostgreSQL can take many seconds to build the
        // export's snapshot, so later rounds let it register first.
        if (round >= EXPORT_ROUNDS) await initialExportDone(w, current);
        const graceful = round % 6 === 5;
        if (graceful) {
          // SIGTERM before the runtime installed its handler kills with 143;
          // the contract is for a running service.
          const p = current;
          await waitFor("the stream to start", () => p.stderr.includes('"msg":"streaming"'));
        }
        await sleep(200 + Math.floor(random() * 1800));
        const early = await Promise.race([current.exited(), sleep(0).then(() => null)]);
        assert.equal(early, null, `round ${round}: stream exited by itself`);
        const code = await current.stop(graceful ? "SIGTERM" : "SIGKILL");
        if (Deno.env.get("CDC_CRASH_DEBUG")) {
          console.log(
            `round ${round}:\n${current.stderr.split("\n").map((l) => l.slice(0, 200)).join("\n")}`,
          );
        }
        assert.ok(!workloadDone, "the workload stopped early");
        await waitForBackendsGone(w.db, w.registry);
        if (graceful) {
          // Every few rounds a SIGTERM under writes: a clean exit leaves
          // only registered, complete files.
          assert.equal(code, 0, `round ${round}: exit code after SIGTERM`);
          await checkFiles(w);
          terms++;
          continue;
        }
        kills++;
        const left = await checkAfterKill(w);
        if (left.temps > 0) killsWithTemps++;
        if (left.exportTemps > 0) killsInExport++;
        renamesPending += left.renamePending;
        // That window is too narrow to hit at random: every third round,
        // put the newest registered file back under its temp name, the
        // state a kill between the registry commit and the rename leaves.
        if (round % 3 === 2 && await unrenameNewest(w)) renamesPending++;
      }
      stopWorkload = true;
      const transactions = await writing;

      // A kill between the start-up write probe and its removal leaves this
      // (rare at random): the next start must clean it up.
      await Deno.writeTextFile(join(w.dataDir, `.tmp-probe-${crypto.randomUUID()}`), "");

      // One clean run to the end of the WAL, then SIGTERM.
      current = w.stream(STREAM_ENV);
      await w.caughtUp(120_000);
      stopSampler = true;
      const { samples, violations } = await sampling;
      const code = await current.stop("SIGTERM");
      assert.equal(code, 0, "exit code of the final stream");
      const final: string[] = [];
      await checkSlot(w.db, w.registry, initialConfirmed, final);
      assert.deepEqual([...violations, ...final], [], "confirmed_flush_lsn passed the checkpoint");
      assert.ok(samples > 100, `only ${samples} slot samples`);

      for (const table of TABLES) await w.assertReplayEquals("public", table);
      const verify = await runCli(["verify", "--deep"], w.env);
      assert.equal(verify.code, 0, `verify --deep:\n${verify.stdout}${verify.stderr}`);
      const changes = await checkExactlyOnce(w);
      await checkFiles(w);
      const files = await w.registry.query("SELECT count(*)::int AS n FROM cdc_registry.file_log");
      // Big transactions reached us streamed (protocol >= 2) before commit.
      const streamed = await w.db.query(
        "SELECT stream_txns::int AS n FROM pg_stat_replication_slots WHERE slot_name = 'cdc_egress'",
      );
      assert.ok(streamed.rows[0].n > 0, "no transaction was streamed before commit");
      console.log(
        `PostgreSQL ${version}, seed ${seed}: ${kills} kills, ${terms} SIGTERMs, ${transactions} workload transactions, ${changes} changes in ${
          files.rows[0].n
        } files, ${samples} slot samples, ${
          streamed.rows[0].n
        } streamed transactions; ${killsWithTemps} kills left temp files (${killsInExport} an export's), ${renamesPending} left a registered file to rename (some simulated); ${
          Math.round((Date.now() - started) / 1000)
        } s`,
      );
    } catch (error) {
      console.error(`crash test failed with CDC_CRASH_SEED=${seed}`);
      if (current) console.error(`stderr of the last stream:\n${current.stderr.slice(-6000)}`);
      throw error;
    } finally {
      stopWorkload = true;
      stopSampler = true;
      await Promise.allSettled([writing, sampling]);
      await writer.end().catch(() => {});
      await sampler.end().catch(() => {});
      if (registrySampler !== sampler) await registrySampler.end().catch(() => {});
    }
  });
}
