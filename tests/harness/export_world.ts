/**
 * Shared pieces of the export, reload and DDL tests: a mixed set of tables
 * (big, partitioned, keyless, composite key, odd names, empty), a seeded
 * concurrent write workload over them, and the checks of the data dir
 * against the registry that every export test ends with.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { parseCsv } from "../../src/replay/csv_reader.ts";
import { OWNER_FILE } from "../../src/write/data_dir_owner.ts";
import { type CliProcess, waitFor } from "./cli.ts";
import type { StreamEnv } from "./stream_env.ts";
import { prng } from "./prng.ts";
export { prng };

/** Another session on the test cluster. */
export async function connectTo(url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  return client;
}

/** A table of the mixed set: `schema`, `table` as the catalog spells them. */
export interface TableName {
  schema: string;
  table: string;
}

/** The ten tables of {@linkcode createMixedTables}, largest first. */
export const MIXED_TABLES: readonly TableName[] = [
  { schema: "public", table: "big" },
  { schema: "public", table: "parted" },
  { schema: "public", table: "medium" },
  { schema: "public", table: "keyless" },
  { schema: "public", table: "pairs" },
  { schema: "public", table: "typed" },
  { schema: "Odd Schema", table: "we.ird/name" },
  { schema: "public", table: "lookup" },
  { schema: "public", table: "small" },
  { schema: "public", table: "empty" },
];

const ODD = `"Odd Schema"."we.ird/name"`;
const REGIONS = ["eu", "us", "asia"];

/**
 * Creates and fills the mixed tables (call before `init`): `big` with
 * `bigRows` narrow rows, `parted` (3 list partitions, published through the
 * root) with `bigRows / 8`, `medium` with `bigRows / 20`, a keyless table
 * under REPLICA IDENTITY FULL with duplicate rows, a composite key, awkward
 * values and types, an odd schema and table name, two small tables and an
 * empty one.
 */
export async function createMixedTables(db: pg.Client, bigRows: number): Promise<void> {
  await db.query(`
    CREATE TABLE public.big (id int PRIMARY KEY, v int NOT NULL);
    CREATE TABLE public.parted (id int NOT NULL, region text NOT NULL, v int,
                                PRIMARY KEY (id, region)) PARTITION BY LIST (region);
    CREATE TABLE public.parted_eu PARTITION OF public.parted FOR VALUES IN ('eu');
    CREATE TABLE public.parted_us PARTITION OF public.parted FOR VALUES IN ('us');
    CREATE TABLE public.parted_asia PARTITION OF public.parted FOR VALUES IN ('asia');
    CREATE TABLE public.medium (id int PRIMARY KEY, name text, amount numeric(12,2),
                                at timestamptz);
    CREATE TABLE public.keyless (a int, b text);
    ALTER TABLE public.keyless REPLICA IDENTITY FULL;
    CREATE TABLE public.pairs (a int, b text, v text, PRIMARY KEY (a, b));
    CREATE TABLE public.typed (id int PRIMARY KEY, t text, f float8, j jsonb, by bytea,
                               iv interval, d date, ts timestamptz, arr int[]);
    CREATE SCHEMA "Odd Schema";
    CREATE TABLE ${ODD} ("Id" int PRIMARY KEY, "a,b" text);
    CREATE TABLE public.lookup (code text PRIMARY KEY, label text);
    CREATE TABLE public.small (id serial PRIMARY KEY, v text);
    CREATE TABLE public.empty (id int PRIMARY KEY, v text);
  `);
  await db.query(
    `INSERT INTO public.big SELECT g, g % 1000 FROM generate_series(1, $1::int) g`,
    [bigRows],
  );
  await db.query(
    `INSERT INTO public.parted SELECT g, (ARRAY['eu','us','asia'])[1 + g % 3], g
     FROM generate_series(1, $1::int) g`,
    [Math.floor(bigRows / 8)],
  );
  await db.query(
    `INSERT INTO public.medium SELECT g, 'name ' || g, g * 1.25,
       timestamptz '2026-01-01 00:00:00.123456+00' + g * interval '1 second'
     FROM generate_series(1, $1::int) g`,
    [Math.floor(bigRows / 20)],
  );
  await db.query(`
    INSERT INTO public.keyless SELECT g % 50, CASE WHEN g % 7 = 0 THEN NULL ELSE 'k' || (g % 5) END
      FROM generate_series(1, 5000) g;
    INSERT INTO public.pairs SELECT g % 100, 'b' || (g / 100), 'v' || g FROM generate_series(1, 3000) g;
    INSERT INTO public.typed
      SELECT g, CASE g % 5 WHEN 0 THEN NULL WHEN 1 THEN '' WHEN 2 THEN E'two\\nlines, "quoted"'
                           WHEN 3 THEN 'ünï ☃' ELSE 'plain ' || g END,
             g / 7.0, jsonb_build_object('g', g, 's', 'x,y'), decode(md5(g::text), 'hex'),
             g * interval '1 minute 1.5 seconds', date '2026-01-01' + g,
             timestamptz '2026-06-01 12:00:00+00' + g * interval '1.000001 second',
             ARRAY[g, NULL, -g]
      FROM generate_series(1, 300) g;
    INSERT INTO ${ODD} SELECT g, 'odd,' || g FROM generate_series(1, 40) g;
    INSERT INTO public.lookup SELECT 'c' || g, 'label ' || g FROM generate_series(1, 50) g;
    INSERT INTO public.small (v) SELECT 's' || g FROM generate_series(1, 10) g;
  `);
  await db.query("ANALYZE");
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * One writer of the mixed workload until `stop()`; `k` of `of` writers
 * touches only keys ≡ k (mod `of`), so concurrent writers never deadlock.
 * Transactions span several tables; some roll back. While `quiet()` holds,
 * `empty`, `lookup` and `small` are left alone (so their exports have known
 * contents). Returns the number of committed transactions.
 */
export async function mixedWorkload(
  db: pg.Client,
  random: () => number,
  stop: () => boolean,
  k = 0,
  of = 1,
  bigRows = 1000,
  quiet: () => boolean = () => false,
): Promise<number> {
  const int = (n: number) => Math.floor(random() * n);
  /** A random existing-ish key below `n` that belongs to this writer. */
  const own = (n: number) => Math.max(k, Math.floor(int(n) / of) * of + k);
  let next = 10_000_000 + k;
  const fresh = () => (next += of);
  let committed = 0;
  while (!stop()) {
    const r = random();
    await db.query("BEGIN");
    try {
      if (r < 0.3) {
        // Rows across the large tables in one transaction.
        await db.query("UPDATE public.big SET v = v + 1 WHERE id = $1", [own(bigRows)]);
        await db.query("INSERT INTO public.big VALUES ($1, $2)", [fresh(), int(1000)]);
        await db.query("DELETE FROM public.big WHERE id = $1", [own(bigRows)]);
        await db.query("UPDATE public.medium SET amount = amount + 1, at = now() WHERE id = $1", [
          own(bigRows / 20),
        ]);
        await db.query("INSERT INTO public.parted VALUES ($1, $2, 0)", [
          fresh(),
          REGIONS[int(3)],
        ]);
      } else if (r < 0.45) {
        // A move between partitions: DELETE + INSERT through the root.
        await db.query(
          "UPDATE public.parted SET region = $2, v = v + 1 WHERE id = $1",
          [own(bigRows / 8), REGIONS[int(3)]],
        );
        await db.query("DELETE FROM public.parted WHERE id = $1", [own(bigRows / 8)]);
        await db.query("UPDATE public.medium SET name = $2 WHERE id = $1", [
          own(bigRows / 20),
          `renamed "${int(1e6)}", ok`,
        ]);
      } else if (r < 0.6) {
        // Duplicates in the keyless table: insert twice, change or delete one copy.
        const a = own(50);
        await db.query("INSERT INTO public.keyless VALUES ($1, 'dup'), ($1, 'dup')", [a]);
        await db.query(
          `UPDATE public.keyless SET b = coalesce(b, '') || 'u'
           WHERE ctid = (SELECT ctid FROM public.keyless WHERE a = $1 LIMIT 1)`,
          [own(50)],
        );
        await db.query(
          "DELETE FROM public.keyless WHERE ctid = (SELECT ctid FROM public.keyless WHERE a = $1 LIMIT 1)",
          [own(50)],
        );
      } else if (r < 0.72) {
        // Composite key: a value change, a key change, an insert, a delete.
        const a = own(100);
        await db.query("UPDATE public.pairs SET v = v || '+' WHERE a = $1", [a]);
        await db.query(
          "UPDATE public.pairs SET b = b || 'k' WHERE a = $1 AND b = (SELECT min(b) FROM public.pairs WHERE a = $1)",
          [own(100)],
        );
        await db.query("INSERT INTO public.pairs VALUES ($1, $2, 'new') ON CONFLICT DO NOTHING", [
          own(100),
          `n${int(1e6)}`,
        ]);
        await db.query(
          "DELETE FROM public.pairs WHERE a = $1 AND b = (SELECT max(b) FROM public.pairs WHERE a = $1)",
          [own(100)],
        );
      } else if (r < 0.82) {
        await db.query(
          `UPDATE public.typed SET t = $2, f = f * -1.5, j = j || '{"u": true}', by = by || '\\x00ff',
             iv = iv + interval '1 day', arr = arr || $3::int WHERE id = $1`,
          [1 + own(300), int(4) === 0 ? null : `t "${int(100)}",\n${int(100)}`, int(100)],
        );
        await db.query(`UPDATE ${ODD} SET "a,b" = $2 WHERE "Id" = $1`, [
          1 + own(40),
          `x,${int(1e6)}`,
        ]);
        await db.query(`INSERT INTO ${ODD} VALUES ($1, NULL)`, [fresh()]);
      } else if (r < 0.9 && !quiet()) {
        await db.query("INSERT INTO public.empty VALUES ($1, 'e')", [fresh()]);
        await db.query(
          "DELETE FROM public.empty WHERE id = (SELECT min(id) FROM public.empty WHERE id % $1 = $2)",
          [of, k],
        );
        await db.query("UPDATE public.lookup SET label = label || '.' WHERE code = $1", [
          `c${1 + own(50)}`,
        ]);
        await db.query("INSERT INTO public.small (v) VALUES ($1)", [`w${k}`]);
      } else if (r < 0.95) {
        // Rolled back (and what runs while `empty`, `lookup` and `small` are quiet): none of it may appear anywhere.
        await db.query("INSERT INTO public.big VALUES ($1, -1)", [fresh()]);
        await db.query("DELETE FROM public.keyless WHERE a = $1", [own(50)]);
        await db.query("UPDATE public.parted SET v = -1 WHERE id = $1", [own(bigRows / 8)]);
        await db.query("ROLLBACK");
        continue;
      } else {
        // A larger transaction on the big table.
        const from = own(bigRows);
        await db.query(
          "UPDATE public.big SET v = v + 7 WHERE id BETWEEN $1 AND $1 + 400 AND id % $2 = $3",
          [from, of, k],
        );
      }
      await db.query("COMMIT");
      committed++;
    } catch (error) {
      await db.query("ROLLBACK").catch(() => {});
      throw error;
    }
    await sleep(int(5));
  }
  return committed;
}

/** Concurrent writers of {@linkcode mixedWorkload}, each on its own connection. */
export class Workload {
  #stop = false;
  #runs: Promise<number>[] = [];
  #clients: pg.Client[] = [];
  #committed = 0;

  /** Starts `writers` writers with seeds derived from `seed`. */
  static async start(
    url: string,
    seed: number,
    bigRows: number,
    options: { writers?: number; quiet?: () => boolean } = {},
  ): Promise<Workload> {
    const w = new Workload();
    const writers = options.writers ?? 2;
    for (let k = 0; k < writers; k++) {
      const client = await connectTo(url);
      w.#clients.push(client);
      const run = mixedWorkload(
        client,
        prng(seed + k),
        () => w.#stop,
        k,
        writers,
        bigRows,
        options.quiet,
      )
        .then((n) => (w.#committed += n, n));
      run.catch(() => {});
      w.#runs.push(run);
    }
    return w;
  }

  /** Committed transactions of finished writers (after {@linkcode stop}). */
  get committed(): number {
    return this.#committed;
  }

  /** Throws if a writer failed; returns whether all are still running. */
  async check(): Promise<void> {
    const settled = await Promise.race([
      Promise.all(this.#runs).then(() => "done"),
      sleep(0).then(() => "running"),
    ]);
    assert.equal(settled, "running", "the workload stopped early");
  }

  /** Stops the writers and waits for them; rethrows a writer's error. */
  async stop(): Promise<number> {
    this.#stop = true;
    try {
      await Promise.all(this.#runs);
    } finally {
      for (const c of this.#clients) await c.end().catch(() => {});
    }
    return this.#committed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#stop = true;
    await Promise.allSettled(this.#runs);
    for (const c of this.#clients) await c.end().catch(() => {});
  }
}

/** Starts `stream` and waits until it holds the slot. */
export async function startStream(
  w: StreamEnv,
  extra: Record<string, string> = {},
): Promise<CliProcess> {
  const p = w.stream(extra);
  await waitFor("stream to take the slot", async () => {
    const exited = await Promise.race([p.exited(), sleep(0).then(() => null)]);
    if (exited !== null) throw new Error(`stream exited with ${exited}: ${p.stderr}`);
    const r = await w.db.query(
      "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
    );
    return r.rows[0]?.active_pid !== null;
  });
  return p;
}

/** Stops `stream` with SIGTERM and asserts exit code 0. */
export async function stopCleanly(p: CliProcess): Promise<void> {
  const code = await p.stop("SIGTERM");
  assert.equal(code, 0, `stream exited with ${code}: ${p.stderr.slice(-4000)}`);
}

/** Waits until no cdc-egress backend is left (after a kill: walsender, lock, export workers). */
export async function waitForBackendsGone(
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

/** Every regular file under `dir`, relative, sorted; directories end in `/`. */
export async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (sub: string) => {
    for await (const e of Deno.readDir(join(dir, sub))) {
      const rel = sub ? `${sub}/${e.name}` : e.name;
      if (e.isDirectory) {
        out.push(rel + "/");
        await walk(rel);
      } else {
        out.push(rel);
      }
    }
  };
  await walk("");
  return out.sort();
}

/** A file_log row. */
export interface LoggedFile {
  id: number;
  schema: string;
  table: string;
  path: string;
  fileType: "streaming" | "full_reload" | "ddl";
  startLsn: string;
  endLsn: string;
  startSeq: number | null;
  endSeq: number | null;
  rows: number;
  byteSize: number;
  sha256: string;
  hasDdl: boolean;
  batchTs: string;
}

/** Every registered file of the slot, in id order. */
export async function fileLog(db: pg.Client): Promise<LoggedFile[]> {
  const res = await db.query(
    `SELECT id::int8, schema_name, table_name, path, file_type, start_lsn::text AS start_lsn,
            end_lsn::text AS end_lsn, start_seq, end_seq, row_count::int8, byte_size::int8,
            sha256, has_ddl, batch_ts
     FROM cdc_registry.file_log WHERE slot_name = 'cdc_egress' ORDER BY id`,
  );
  return res.rows.map((r) => ({
    id: Number(r.id),
    schema: r.schema_name,
    table: r.table_name,
    path: r.path,
    fileType: r.file_type,
    startLsn: r.start_lsn,
    endLsn: r.end_lsn,
    startSeq: r.start_seq,
    endSeq: r.end_seq,
    rows: Number(r.row_count),
    byteSize: Number(r.byte_size),
    sha256: r.sha256,
    hasDdl: r.has_ddl,
    batchTs: r.batch_ts,
  }));
}

/** pg_lsn text as a bigint, ordered like pg_lsn. */
export function lsnValue(text: string): bigint {
  const m = /^([0-9A-F]{1,8})\/([0-9A-F]{1,8})$/.exec(text);
  assert.ok(m, `"${text}" is not pg_lsn text`);
  return (BigInt("0x" + m[1]) << 32n) | BigInt("0x" + m[2]);
}

/** Reads a registered gzip CSV file: asserts the gzip magic, returns header and rows. */
export async function readRegisteredCsv(
  dataDir: string,
  path: string,
): Promise<{ bytes: Uint8Array; header: string[]; rows: (string | null)[][] }> {
  const bytes = await Deno.readFile(join(dataDir, path));
  assert.deepEqual([bytes[0], bytes[1]], [0x1f, 0x8b], `${path} is not gzip`);
  const text = new TextDecoder("utf-8", { fatal: true }).decode(gunzipSync(bytes));
  assert.ok(text.endsWith("\n"), `${path} does not end with a full row`);
  const parsed = parseCsv(text);
  return { bytes, header: parsed[0] as string[], rows: parsed.slice(1) };
}

/**
 * The data dir against the registry, after a clean stop:
 * - no temp file (`.tmp-*`) anywhere, the spool included;
 * - every registered file exists with its registered size and sha256, and a
 *   CSV file is complete gzip whose row count and (streaming) LSN range
 *   match its row;
 * - every other file is a `schema.yml` in a folder that holds a registered
 *   file; every batch folder holds a registered file (no empty or orphan
 *   folders).
 */
export async function checkDataDir(w: StreamEnv): Promise<LoggedFile[]> {
  const files = await fileLog(w.registry);
  const tree = await listTree(w.dataDir);
  const temps = tree.filter((p) => p.replace(/\/$/, "").split("/").pop()!.startsWith(".tmp-"));
  assert.deepEqual(temps, [], "temp files left in the data dir");
  const registered = new Set<string>();
  const registeredDirs = new Set<string>();
  for (const f of files) {
    registered.add(f.path);
    registeredDirs.add(f.path.replace(/\/[^/]+$/, ""));
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(join(w.dataDir, f.path));
    } catch (error) {
      throw new Error(`registered file ${f.path} is missing: ${error}`);
    }
    assert.equal(bytes.length, f.byteSize, `byte size of ${f.path}`);
    assert.equal(createHash("sha256").update(bytes).digest("hex"), f.sha256, `sha256 of ${f.path}`);
    if (f.fileType === "ddl") continue;
    const { rows } = await readRegisteredCsv(w.dataDir, f.path);
    assert.equal(rows.length, f.rows, `row count of ${f.path}`);
    if (f.fileType === "streaming") {
      assert.deepEqual(
        [rows[0][1], Number(rows[0][2]), rows.at(-1)![1], Number(rows.at(-1)![2])],
        [f.startLsn, f.startSeq, f.endLsn, f.endSeq],
        `LSN range of ${f.path}`,
      );
    }
  }
  const strays = tree.filter((p) => {
    if (p.startsWith(".spool/") || p === ".spool/") return false;
    if (p === OWNER_FILE) return false;
    if (p.endsWith("/")) {
      // Table folders hold batch folders; batch folders must hold a registered file.
      const depth = p.split("/").length - 1;
      return depth === 2 && !registeredDirs.has(p.slice(0, -1));
    }
    if (registered.has(p)) return false;
    const dir = p.replace(/\/[^/]+$/, "");
    return !(p.endsWith("/schema.yml") && registeredDirs.has(dir));
  });
  assert.deepEqual(strays, [], "files or folders in the data dir that the registry does not know");
  const spool = tree.filter((p) => p.startsWith(".spool/") && !p.endsWith("/"));
  assert.deepEqual(spool, [], "spool files left after a clean stop");
  return files;
}

/**
 * No streaming file straddles an export: for every full_reload at C of a
 * table, none of its streaming files has start_lsn < C <= end_lsn.
 */
export async function assertNoStraddle(db: pg.Client): Promise<void> {
  const res = await db.query(
    `SELECT s.path, s.start_lsn::text AS s, s.end_lsn::text AS e, r.start_lsn::text AS c
     FROM cdc_registry.file_log r JOIN cdc_registry.file_log s
       ON s.slot_name = r.slot_name AND s.schema_name = r.schema_name
      AND s.table_name = r.table_name AND s.file_type = 'streaming'
     WHERE r.file_type = 'full_reload' AND s.start_lsn < r.start_lsn AND r.start_lsn <= s.end_lsn`,
  );
  assert.deepEqual(res.rows, [], "streaming files that straddle an export LSN");
}

/** The newest full_reload LSN of each table, keyed `schema.table`. */
export async function exportLsns(db: pg.Client): Promise<Map<string, string>> {
  const res = await db.query(
    `SELECT schema_name || '.' || table_name AS t, max(start_lsn)::text AS lsn
     FROM cdc_registry.file_log WHERE file_type = 'full_reload' GROUP BY 1`,
  );
  return new Map(res.rows.map((r) => [r.t, r.lsn]));
}

/** Every streaming change appears once: (lsn, seq) unique over each table's files. */
export async function assertChangesOnce(w: StreamEnv, tables: readonly TableName[]) {
  const dups: string[] = [];
  for (const t of tables) {
    const files = (await fileLog(w.registry)).filter((f) =>
      f.schema === t.schema && f.table === t.table && f.fileType === "streaming"
    );
    const seen = new Set<string>();
    for (const f of files) {
      const { rows } = await readRegisteredCsv(w.dataDir, f.path);
      for (const r of rows) {
        const key = `${r[1]}#${r[2]}`;
        if (seen.has(key)) dups.push(`${t.schema}.${t.table} ${key}`);
        seen.add(key);
      }
    }
  }
  assert.deepEqual(dups.slice(0, 10), [], `${dups.length} changes written twice`);
}
