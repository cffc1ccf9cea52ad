/**
 * `stream` against real PostgreSQL: the change semantics of the streaming
 * files (DESIGN §3), on every major of testMajors().
 *
 * Each test gets a fresh cluster, creates its tables before `init` (the
 * publication is built from the tables that exist then), runs the workload
 * while `stream` runs, waits until the slot has confirmed everything, stops
 * the process with SIGTERM and then checks the registered files.
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { dirname, join, relative } from "node:path";
import { gunzipSync } from "node:zlib";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import copyStreams from "pg-copy-streams";
import { type PgMajor, testMajors } from "../../scripts/embedded_postgres.ts";
import { type CliProcess, waitFor } from "../harness/cli.ts";
import { registeredRows } from "../harness/replay_check.ts";
import { type StreamEnv, streamEnv } from "../harness/stream_env.ts";

const META = [
  "_cdc_op",
  "_cdc_lsn",
  "_cdc_seq",
  "_cdc_commit_ts",
  "_cdc_xid",
  "_cdc_unchanged_cols",
  "_cdc_old_key",
];
const COMMIT_TS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;
const PINNED = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres " +
  "-c extra_float_digits=3 -c bytea_output=hex";

type Field = string | null;

/** pg_lsn text as a number, ordered like pg_lsn. */
function lsnValue(text: string): bigint {
  const m = /^([0-9A-F]{1,8})\/([0-9A-F]{1,8})$/.exec(text);
  assert.ok(m, `"${text}" is not pg_lsn text`);
  return (BigInt("0x" + m[1]) << 32n) | BigInt("0x" + m[2]);
}

/**
 * Starts `stream` and waits until its initial export (of the tables, empty
 * here) is registered, so that the workload that follows is streamed.
 */
async function startStream(w: StreamEnv): Promise<CliProcess> {
  const p = w.stream();
  await w.caughtUp();
  return p;
}

/** Starts `stream`, runs the workload, waits until the slot confirmed it all, stops with SIGTERM. */
async function streamWhile<T>(w: StreamEnv, workload: () => Promise<T>): Promise<T> {
  const p = await startStream(w);
  const result = await workload();
  await w.caughtUp();
  await stopCleanly(p);
  return result;
}

async function stopCleanly(p: CliProcess): Promise<void> {
  const code = await p.stop();
  assert.equal(code, 0, `stream exited with ${code}: ${p.stderr}`);
}

/** Another session on the test cluster, closed at the end of its scope. */
async function session(w: StreamEnv, options?: string): Promise<pg.Client & AsyncDisposable> {
  const client = new pg.Client({ connectionString: w.cluster.url(), options });
  await client.connect();
  return Object.assign(client, { [Symbol.asyncDispose]: () => client.end() });
}

/** What a test knows about one committed (or rolled back) transaction. */
interface Txn {
  xid: string;
  /** WAL insert position just before COMMIT and just after it returned. */
  before: string;
  after: string;
}

/** One step of a transaction: SQL, or something to wait for in the middle of it. */
type Step = string | (() => Promise<unknown>);

/** Runs `steps` in one transaction and records its xid and the WAL around its commit. */
async function txn(db: pg.Client, steps: string | Step[], end = "COMMIT"): Promise<Txn> {
  await db.query("BEGIN");
  try {
    for (const step of typeof steps === "string" ? [steps] : steps) {
      if (typeof step === "string") await db.query(step);
      else await step();
    }
    const r = await db.query(
      "SELECT txid_current()::text AS xid, pg_current_wal_insert_lsn()::text AS before",
    );
    await db.query(end);
    const after = await db.query("SELECT pg_current_wal_insert_lsn()::text AS after");
    return { xid: r.rows[0].xid, before: r.rows[0].before, after: after.rows[0].after };
  } catch (error) {
    await db.query("ROLLBACK");
    throw error;
  }
}

/**
 * Commit LSN (pgoutput's Begin final_lsn) of every transaction a second
 * pgoutput slot saw, by xid.
 */
async function commitLsns(db: pg.Client, slot: string): Promise<Map<string, string>> {
  const res = await db.query(
    `SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
       'proto_version', '1', 'publication_names', 'cdc_egress')`,
    [slot],
  );
  const out = new Map<string, string>();
  for (const { data } of res.rows as { data: Buffer }[]) {
    if (data[0] !== 0x42) continue; // 'B'egin: final_lsn int64, commit time int64, xid int32
    const hi = data.readUInt32BE(1).toString(16).toUpperCase();
    const lo = data.readUInt32BE(5).toString(16).toUpperCase();
    out.set(String(data.readUInt32BE(17)), `${hi}/${lo}`);
  }
  return out;
}

/** The commit time PostgreSQL recorded for a transaction (track_commit_timestamp). */
async function commitTime(db: pg.Client, xid: string): Promise<string> {
  const r = await db.query(
    `SELECT to_char(pg_xact_commit_timestamp($1::xid) AT TIME ZONE 'UTC',
       'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS ts`,
    [xid],
  );
  return r.rows[0].ts;
}

/** Decompressed text of each registered streaming file of a table, in order. */
async function streamingFiles(w: StreamEnv, schema: string, table: string): Promise<string[]> {
  const res = await w.db.query(
    `SELECT path FROM cdc_registry.file_log WHERE schema_name = $1 AND table_name = $2
     AND file_type = 'streaming' ORDER BY start_lsn, start_seq`,
    [schema, table],
  );
  const out: string[] = [];
  for (const { path } of res.rows) {
    out.push(new TextDecoder().decode(gunzipSync(await Deno.readFile(join(w.dataDir, path)))));
  }
  return out;
}

/**
 * Splits CSV text into records of raw fields, quotes and all, so that
 * values can be compared byte for byte.
 */
function rawRecords(text: string): string[][] {
  const records: string[][] = [];
  let record: string[] = [];
  let start = 0;
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') quoted = !quoted;
    else if (!quoted && (c === "," || c === "\n")) {
      record.push(text.slice(start, i));
      start = i + 1;
      if (c === "\n") {
        records.push(record);
        record = [];
      }
    }
  }
  assert.equal(start, text.length, "CSV text does not end with a newline");
  return records;
}

/** Checks that (_cdc_lsn, _cdc_seq) strictly increases over the rows, in file order. */
function assertPositionsIncrease(rows: Field[][]): void {
  for (let i = 1; i < rows.length; i++) {
    const a = [lsnValue(rows[i - 1][1]!), BigInt(rows[i - 1][2]!)];
    const b = [lsnValue(rows[i][1]!), BigInt(rows[i][2]!)];
    assert.ok(
      a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]),
      `row ${i} (${rows[i][1]}, ${rows[i][2]}) does not follow (${rows[i - 1][1]}, ${
        rows[i - 1][2]
      })`,
    );
  }
}

// ---------------------------------------------------------------------------
// 1. Change semantics

/** One row a test expects in a streaming file. */
interface Expected {
  op: "I" | "U" | "D" | "T";
  txn: Txn;
  seq: number;
  oldKey?: Record<string, string | null>;
  values: Field[];
}

for (const version of testMajors()) {
  Deno.test(`stream writes inserts, updates, deletes and truncates with exact metadata (PG ${version})`, async () => {
    await changeSemantics(version);
  });
}

async function changeSemantics(version: PgMajor): Promise<void> {
  await using w = await streamEnv(version, { track_commit_timestamp: "on" });
  const db = w.db;
  await db.query(`
    CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
    CREATE TABLE dups (a int, b text);
    ALTER TABLE dups REPLICA IDENTITY FULL;
    CREATE TABLE pairs (a int, b text, v text, PRIMARY KEY (a, b));
  `);
  await w.init();
  // A second pgoutput slot tells us each transaction's commit LSN.
  await db.query("SELECT pg_create_logical_replication_slot('twin', 'pgoutput')");

  const t = await streamWhile(w, async () => ({
    inserts: await txn(
      db,
      `INSERT INTO items VALUES (1, 'one', 1), (2, 'two, "2"', 2), (3, E'three\\r\\n', 3);
       INSERT INTO pairs VALUES (1, 'x', 'p'), (1, 'y', 'q');
       INSERT INTO dups VALUES (1, 'd'), (1, 'd'), (2, 'e');
       INSERT INTO items VALUES (4, '', NULL)`,
    ),
    updates: await txn(
      db,
      `UPDATE items SET qty = 20 WHERE id = 2;
       UPDATE items SET id = 10, name = 'ten' WHERE id = 1;
       DELETE FROM items WHERE id = 3;
       UPDATE pairs SET v = 'q2' WHERE a = 1 AND b = 'y';
       UPDATE pairs SET b = 'z' WHERE a = 1 AND b = 'x';
       UPDATE pairs SET a = 2, b = 'w', v = 'r' WHERE a = 1 AND b = 'y';
       DELETE FROM pairs WHERE a = 1 AND b = 'z'`,
    ),
    full: await txn(
      db,
      `UPDATE dups SET b = 'f' WHERE ctid = (SELECT min(ctid) FROM dups WHERE a = 1);
       DELETE FROM dups WHERE ctid = (SELECT max(ctid) FROM dups WHERE a = 2);
       INSERT INTO dups VALUES (3, NULL), (3, NULL)`,
    ),
    rolledBack: await txn(
      db,
      `INSERT INTO items VALUES (99, 'gone', 0);
       UPDATE items SET qty = 0 WHERE id = 2;
       DELETE FROM items WHERE id = 4;
       TRUNCATE dups`,
      "ROLLBACK",
    ),
    savepoints: await txn(
      db,
      `INSERT INTO items VALUES (5, 'kept', 5);
       SAVEPOINT s1;
       INSERT INTO items VALUES (6, 'kept', 6);
       SAVEPOINT s2;
       INSERT INTO items VALUES (7, 'dropped', 7);
       UPDATE items SET qty = -1 WHERE id = 5;
       ROLLBACK TO SAVEPOINT s2;
       INSERT INTO items VALUES (8, 'kept', 8);
       SAVEPOINT s3;
       INSERT INTO items VALUES (9, 'dropped', 9);
       SAVEPOINT s4;
       DELETE FROM items WHERE id = 2;
       SAVEPOINT s5;
       INSERT INTO items VALUES (11, 'dropped', 11);
       RELEASE SAVEPOINT s5;
       ROLLBACK TO SAVEPOINT s3;
       RELEASE SAVEPOINT s1;
       UPDATE items SET qty = 50 WHERE id = 5`,
    ),
    truncates: await txn(
      db,
      `TRUNCATE pairs, dups;
       INSERT INTO dups VALUES (4, 'g'), (4, 'g');
       INSERT INTO pairs VALUES (3, 'v', NULL)`,
    ),
    lastUpdate: await txn(db, `UPDATE dups SET a = 5 WHERE a = 4`),
  }));

  const ex = (
    op: Expected["op"],
    txn: Txn,
    seq: number,
    values: Field[],
    oldKey?: Expected["oldKey"],
  ): Expected => ({ op, txn, seq, values, oldKey });
  const expected: Record<string, Expected[]> = {
    items: [
      ex("I", t.inserts, 0, ["1", "one", "1"]),
      ex("I", t.inserts, 1, ["2", 'two, "2"', "2"]),
      ex("I", t.inserts, 2, ["3", "three\r\n", "3"]),
      ex("I", t.inserts, 8, ["4", "", null]),
      ex("U", t.updates, 0, ["2", 'two, "2"', "20"]),
      ex("U", t.updates, 1, ["10", "ten", "1"], { id: "1" }),
      ex("D", t.updates, 2, ["3", null, null]),
      ex("I", t.savepoints, 0, ["5", "kept", "5"]),
      ex("I", t.savepoints, 1, ["6", "kept", "6"]),
      ex("I", t.savepoints, 2, ["8", "kept", "8"]),
      ex("U", t.savepoints, 3, ["5", "kept", "50"]),
    ],
    pairs: [
      ex("I", t.inserts, 3, ["1", "x", "p"]),
      ex("I", t.inserts, 4, ["1", "y", "q"]),
      ex("U", t.updates, 3, ["1", "y", "q2"]),
      ex("U", t.updates, 4, ["1", "z", "p"], { a: "1", b: "x" }),
      ex("U", t.updates, 5, ["2", "w", "r"], { a: "1", b: "y" }),
      ex("D", t.updates, 6, ["1", "z", null]),
      ex("T", t.truncates, 0, [null, null, null]),
      ex("I", t.truncates, 4, ["3", "v", null]),
    ],
    dups: [
      ex("I", t.inserts, 5, ["1", "d"]),
      ex("I", t.inserts, 6, ["1", "d"]),
      ex("I", t.inserts, 7, ["2", "e"]),
      ex("U", t.full, 0, ["1", "f"], { a: "1", b: "d" }),
      ex("D", t.full, 1, ["2", "e"]),
      ex("I", t.full, 2, ["3", null]),
      ex("I", t.full, 3, ["3", null]),
      ex("T", t.truncates, 1, [null, null]),
      ex("I", t.truncates, 2, ["4", "g"]),
      ex("I", t.truncates, 3, ["4", "g"]),
      ex("U", t.lastUpdate, 0, ["5", "g"], { a: "4", b: "g" }),
      ex("U", t.lastUpdate, 1, ["5", "g"], { a: "4", b: "g" }),
    ],
  };

  const twin = await commitLsns(db, "twin");
  const commits = new Map<string, { lsn: string; ts: string }>();
  for (const txn of Object.values(t)) {
    if (txn === t.rolledBack) {
      assert.equal(twin.get(txn.xid), undefined, "the rolled back transaction was decoded");
      continue;
    }
    const lsn = twin.get(txn.xid);
    assert.ok(lsn, `no commit LSN for xid ${txn.xid}`);
    // The commit record lies between the WAL positions around COMMIT.
    const bracket = await db.query(
      "SELECT $1::pg_lsn <= $2::pg_lsn AND $2::pg_lsn < $3::pg_lsn AS ok",
      [txn.before, lsn, txn.after],
    );
    assert.ok(bracket.rows[0].ok, `commit LSN ${lsn} outside [${txn.before}, ${txn.after})`);
    commits.set(txn.xid, { lsn, ts: await commitTime(db, txn.xid) });
  }

  for (const [table, rows] of Object.entries(expected)) {
    const files = await registeredRows(db, w.dataDir, "public", table);
    const columns = (await db.query(
      `SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0
       AND NOT attisdropped ORDER BY attnum`,
      [table],
    )).rows.map((r) => r.attname);
    assert.deepEqual(files.header, [...META, ...columns], `header of ${table}`);
    assertPositionsIncrease(files.rows);
    for (const row of files.rows) {
      assert.match(row[3]!, COMMIT_TS, `_cdc_commit_ts of ${table}`);
      if (row[0] === "T") assert.deepEqual(row.slice(5), row.slice(5).map(() => null));
    }
    const actual = files.rows.map((r) => [
      ...r.slice(0, 5),
      r[5] === null ? null : JSON.parse(r[5]),
      r[6] === null ? null : JSON.parse(r[6]),
      ...r.slice(7),
    ]);
    const wanted = rows.map((e) => {
      const c = commits.get(e.txn.xid)!;
      return [e.op, c.lsn, String(e.seq), c.ts, e.txn.xid, null, e.oldKey ?? null, ...e.values];
    });
    assert.deepEqual(actual, wanted, `rows of ${table}`);
    await w.assertReplayEquals("public", table);
  }

  // Each transaction's rows, over all tables, are numbered 0..n-1.
  const byTxn = new Map<string, number[]>();
  for (const rows of Object.values(expected)) {
    for (const e of rows) byTxn.set(e.txn.xid, [...byTxn.get(e.txn.xid) ?? [], e.seq]);
  }
  for (const [xid, seqs] of byTxn) {
    assert.deepEqual(seqs.sort((a, b) => a - b), seqs.map((_s, i) => i), `seqs of xid ${xid}`);
  }
}

// ---------------------------------------------------------------------------
// 2. Types: streaming values are byte-identical to COPY's

const TYPES_DDL = `
  CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy, "really"');
  CREATE DOMAIN posint AS int CHECK (VALUE > 0);
  CREATE TYPE pair AS (x int, y text);
  CREATE TABLE types (
    id int PRIMARY KEY,
    i2 smallint, i4 int, i8 bigint,
    num numeric, f4 real, f8 double precision,
    t text, vc varchar(20), ch char(5),
    by bytea, b bool,
    d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
    u uuid, j json, jb jsonb,
    ai int[], at text[], a2 int[][],
    e mood, dm posint, cp pair,
    r4 int4range, rtz tstzrange,
    ip inet, cn cidr, mac macaddr, m money, x xml,
    bt bit(4), vb varbit, tv tsvector, pt point, bx box
  )`;

const TYPES_ROWS = `
  INSERT INTO types VALUES (
    1, -32768, -2147483648, -9223372036854775808,
    'NaN', 'Infinity', '-Infinity',
    E'he said "hi", then\\r\\nleft, naïve — 日本語 🎉', 'a,b', 'x',
    '\\x00ff5c0a0d2c22'::bytea, true,
    '2024-02-29', '23:59:59.999999', '12:34:56.789012+05:30',
    '2024-02-29 23:59:59.123456', '2024-02-29 23:59:59.123456+05:30',
    '1 year 2 mons 3 days 04:05:06.789012',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{ "k" : "v,\\n" }', '{"b": [1, 2.50, null], "a": "x\\u00e9"}',
    '{1,NULL,3}', E'{"a,b","c\\\\"d",NULL,"NULL",""}', '{{1,2},{3,NULL}}',
    'happy, "really"', 7, ROW(1, 'a b,"c"'),
    '[1,10)', '[2024-01-01 00:00:00+00,infinity)',
    '192.168.1.5/24', '10.0.0.0/8', '08:00:2b:01:02:03', 1234.56, '<a b="1">x, y</a>',
    B'1010', B'101', 'a fat cat sat', '(1.5,-2.25)', '((0,0),(1,1))'
  ), (
    2, 32767, 2147483647, 9223372036854775807,
    '1234567890123456789012345678901234567890', '-Infinity', 'NaN',
    '\\.', '', '',
    '\\x'::bytea, false,
    'infinity', '00:00:00', '00:00:00-12', 'infinity', '-infinity',
    '-1 days +02:00:00.000001',
    '00000000-0000-0000-0000-000000000000', 'null', '[]',
    '{}', '{}', '{{NULL,NULL},{NULL,NULL}}',
    'sad', 1, ROW(NULL, NULL),
    'empty', '(,)',
    '::1', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff', -0.01, '',
    B'0000', B'', '', '(0,0)', '((-1.5,2),(3,-4))'
  ), (
    3, 0, 0, 0,
    '-0.0000000000000000000000000000000000001234567890', 1.1, 1.1,
    E'back\\\\slash \\\\. and tab\\t', 'NULL', 'NULL',
    '\\x5c2e'::bytea, NULL,
    '4713-01-01 BC', '12:00:00.5', '23:59:59.999999-15:59', '1999-12-31 23:59:59.999999',
    '2000-01-01 00:00:00.000001+00', '-178000000 years',
    NULL, '{"a":1,"a":2}', '{"a":1,"a":2}',
    '{-1,0}', '{"\\\\.","\\\\\\\\",""}', '{{-1,0},{1,2}}',
    'ok', 2147483647, ROW(-1, ''),
    '(,5]', '[2024-06-30 23:59:59.999999+02,2024-07-01 00:00:00+00]',
    '0.0.0.0/0', '0.0.0.0/0', '00:00:00:00:00:00', 0, '<?xml version="1.0"?><r/>',
    B'1111', B'1', E'''a\\\\b'' c:1A', '(0.30000000000000004,1e-300)', '((1e300,1),(0,0))'
  ), (
    4, 1, 1, 1, '0.30000000000000004', 1.0000001, 0.30000000000000004,
    E'\\r', E'\\n', ' ', NULL, NULL,
    '-infinity', NULL, NULL, '-infinity', 'infinity', '0',
    NULL, NULL, NULL, NULL, '{NULL}', NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL
  ), (5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)`;

for (const version of testMajors()) {
  Deno.test(`stream writes every common type exactly as COPY prints it (PG ${version})`, async () => {
    await typesLikeCopy(version);
  });
}

async function copyOut(client: pg.Client, sql: string): Promise<string> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of client.query(copyStreams.to(sql))) chunks.push(chunk);
  return new TextDecoder().decode(Buffer.concat(chunks));
}

async function typesLikeCopy(version: PgMajor): Promise<void> {
  await using w = await streamEnv(version);
  const db = w.db;
  await db.query(TYPES_DDL);
  // Database defaults that would change the text of almost every type: the
  // tool must pin its own session settings.
  await db.query(`
    ALTER DATABASE postgres SET DateStyle = 'SQL, DMY';
    ALTER DATABASE postgres SET TimeZone = 'Asia/Tokyo';
    ALTER DATABASE postgres SET bytea_output = 'escape';
    ALTER DATABASE postgres SET IntervalStyle = 'sql_standard';
    ALTER DATABASE postgres SET extra_float_digits = 0;
  `);
  await w.init();
  await streamWhile(w, async () => {
    await db.query(TYPES_ROWS);
    await db.query("UPDATE types SET f8 = 1.1, b = NULL WHERE id = 5");
  });

  const sql = "COPY (SELECT * FROM types ORDER BY id) TO STDOUT (FORMAT csv)";
  await using pinned = await session(w, PINNED);
  const copy = await copyOut(pinned, sql);
  // The pins matter: a session with the database defaults prints other text.
  await using plain = await session(w);
  const unpinned = await copyOut(plain, sql);
  assert.notEqual(unpinned, copy);
  assert.match(unpinned, /,31\/12\/1999 23:59:59\.999999,/);
  // The replay check reads the live table through db: pin it too.
  await db.query(`SET DateStyle = ISO; SET TimeZone = UTC; SET IntervalStyle = postgres;
    SET extra_float_digits = 3; SET bytea_output = hex`);

  const copyRows = rawRecords(copy);
  assert.equal(copyRows.length, 5);

  const files = (await streamingFiles(w, "public", "types")).map(rawRecords);
  const header = files[0][0].slice(META.length);
  const streamed = files.flatMap((records) => records.slice(1));
  const inserts = streamed.filter((r) => r[0] === "I");
  const update = streamed.filter((r) => r[0] === "U");
  assert.equal(inserts.length, 5);
  assert.equal(update.length, 1);
  // Row 5 was inserted all NULL, then updated; COPY shows it after the update.
  const final = [...inserts.slice(0, 4), update[0]];
  for (let r = 0; r < copyRows.length; r++) {
    const fields = final[r].slice(META.length);
    assert.equal(fields.length, copyRows[r].length);
    for (let c = 0; c < fields.length; c++) {
      assert.equal(fields[c], copyRows[r][c], `row ${r + 1}, column ${header[c]}`);
    }
  }
  await w.assertReplayEquals("public", "types");
}

// ---------------------------------------------------------------------------
// 3. Unchanged TOAST values

for (const version of testMajors()) {
  Deno.test(`stream lists unchanged TOAST columns and replay keeps their value (PG ${version})`, async () => {
    await unchangedToast(version);
  });
}

async function unchangedToast(version: PgMajor): Promise<void> {
  await using w = await streamEnv(version);
  const db = w.db;
  await db.query(`
    CREATE TABLE docs (id int PRIMARY KEY, tag text, body text, note text);
    ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
  `);
  await w.init();
  const big = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 3200))";
  await streamWhile(w, async () => {
    await db.query(`INSERT INTO docs VALUES (1, 'a', ${big}, 'n1')`);
    await db.query(`INSERT INTO docs VALUES (2, 'b', ${big}, 'n2')`);
    await db.query("UPDATE docs SET tag = 'a2' WHERE id = 1");
    await db.query("UPDATE docs SET id = 3, tag = 'b2' WHERE id = 2");
    await db.query(`UPDATE docs SET body = ${big} WHERE id = 1`);
    await db.query("UPDATE docs SET note = NULL WHERE id = 1");
  });
  const sizes = await db.query("SELECT id, length(body) AS n FROM docs ORDER BY id");
  assert.deepEqual(sizes.rows, [{ id: 1, n: 102400 }, { id: 3, n: 102400 }]);

  const { header, rows } = await registeredRows(db, w.dataDir, "public", "docs");
  const col = (name: string) => header.indexOf(name);
  const summary = rows.map((r) => [
    r[0],
    r[col("_cdc_unchanged_cols")] === null ? null : JSON.parse(r[col("_cdc_unchanged_cols")]!),
    r[col("_cdc_old_key")] === null ? null : JSON.parse(r[col("_cdc_old_key")]!),
    r[col("id")],
    r[col("tag")],
    r[col("body")] === null ? null : r[col("body")]!.length,
    r[col("note")],
  ]);
  assert.deepEqual(summary, [
    ["I", null, null, "1", "a", 102400, "n1"],
    ["I", null, null, "2", "b", 102400, "n2"],
    ["U", ["body"], null, "1", "a2", null, "n1"],
    ["U", ["body"], { id: "2" }, "3", "b2", null, "n2"],
    ["U", null, null, "1", "a2", 102400, "n1"],
    ["U", ["body"], null, "1", "a2", null, null],
  ]);
  await w.assertReplayEquals("public", "docs");
}

// ---------------------------------------------------------------------------
// 4. Awkward table names

for (const version of testMajors()) {
  Deno.test(`stream keeps tables with awkward names in their own directories (PG ${version})`, async () => {
    await awkwardNames(version);
  });
}

async function awkwardNames(version: PgMajor): Promise<void> {
  await using w = await streamEnv(version);
  const db = w.db;
  const tables: [string, string][] = [
    ["we.ird", 'a/b c,"d"'],
    ["we.ird", ".."],
    ["public", ".."],
    ["public", "."],
    ["public", "../../etc"],
    ["public", "Ünï cödé 表"],
    ["..", "x"],
  ];
  const ident = (s: string) => `"${s.replaceAll('"', '""')}"`;
  await db.query(`CREATE SCHEMA "we.ird"; CREATE SCHEMA ".."`);
  for (const [s, t] of tables) {
    await db.query(`CREATE TABLE ${ident(s)}.${ident(t)} (id int PRIMARY KEY, v text)`);
  }
  await w.init();
  await streamWhile(w, async () => {
    for (const [s, t] of tables) {
      const q = `${ident(s)}.${ident(t)}`;
      await db.query(`INSERT INTO ${q} SELECT g, $1::text || g FROM generate_series(1, 5) g`, [t]);
      await db.query(`UPDATE ${q} SET v = v || '!' WHERE id = 2`);
      await db.query(`DELETE FROM ${q} WHERE id = 3`);
    }
  });

  const root = await Deno.realPath(w.dataDir);
  const tableDirs = new Set<string>();
  for (const [s, t] of tables) {
    const res = await db.query(
      `SELECT path FROM cdc_registry.file_log WHERE schema_name = $1 AND table_name = $2`,
      [s, t],
    );
    assert.ok(res.rows.length > 0, `no files for ${s}.${t}`);
    const dirs = new Set<string>();
    for (const { path } of res.rows) {
      const real = await Deno.realPath(join(w.dataDir, path));
      assert.ok(!relative(root, real).startsWith(".."), `${real} is outside ${root}`);
      // <data_dir>/<table_dir>/<batch_ts>/streaming.csv.gz
      assert.equal(dirname(dirname(dirname(real))), root, `${path} is not two levels deep`);
      dirs.add(dirname(dirname(real)));
    }
    assert.equal(dirs.size, 1, `${s}.${t} has one directory`);
    tableDirs.add([...dirs][0]);
    await w.assertReplayEquals(s, t);
  }
  assert.equal(tableDirs.size, tables.length, "every table has a directory of its own");
  for await (const entry of Deno.readDir(root)) {
    if (entry.name.startsWith(".")) continue;
    assert.ok(tableDirs.has(join(root, entry.name)), `unexpected entry ${entry.name}`);
  }
}

// ---------------------------------------------------------------------------
// 5. Large transactions streamed by PostgreSQL before they commit

for (const version of testMajors()) {
  Deno.test(`stream takes large streamed transactions without spilling (PG ${version})`, async () => {
    await largeTransactions(version);
  });
}

/** Peak resident set size of a process, in bytes. */
async function peakRss(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const kb = /^VmHWM:\s+(\d+) kB$/m.exec(status);
  assert.ok(kb, "no VmHWM in /proc/<pid>/status");
  return Number(kb[1]) * 1024;
}

/**
 * Waits until the walsender has decoded everything written so far, open
 * transactions included: PostgreSQL then has streamed all but the last
 * logical_decoding_work_mem of them. `aux` (another session) commits with
 * synchronous_commit on, which flushes the WAL the walsender reads.
 */
async function decodedSoFar(db: pg.Client, aux: pg.Client): Promise<void> {
  const target = (await db.query("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0].l;
  await aux.query("BEGIN; SET LOCAL synchronous_commit = on; SELECT txid_current(); COMMIT");
  await waitFor(`the walsender to decode past ${target}`, async () =>
    (await aux.query(
      `SELECT r.sent_lsn >= $1::pg_lsn AS ok FROM pg_stat_replication r
       JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = 'cdc_egress'`,
      [target],
    )).rows[0]?.ok);
}

async function largeTransactions(version: PgMajor): Promise<void> {
  await using w = await streamEnv(version, { logical_decoding_work_mem: "'64kB'" });
  const db = w.db;
  await db.query(`
    CREATE TABLE big (id int PRIMARY KEY, v text);
    CREATE TABLE other (id int PRIMARY KEY, v text);
  `);
  await w.init();
  await using aux = await session(w);
  const p = await startStream(w);
  const decoded = () => decodedSoFar(db, aux);
  const big = await txn(
    db,
    `INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 500000) g;
     INSERT INTO other VALUES (1, 'in the big one')`,
  );
  // Rolled back after PostgreSQL has streamed most of it.
  const aborted = await txn(db, [
    "INSERT INTO big SELECT g, 'aborted' FROM generate_series(600001, 650000) g",
    "UPDATE big SET v = 'aborted' WHERE id <= 1000",
    "INSERT INTO other VALUES (2, 'aborted')",
    decoded,
  ], "ROLLBACK");
  // Streamed, with savepoints (one nested) rolled back after they were streamed.
  const partial = await txn(db, [
    "INSERT INTO big SELECT g, 'kept' FROM generate_series(700001, 720000) g",
    "SAVEPOINT a",
    "INSERT INTO big SELECT g, 'dropped' FROM generate_series(720001, 740000) g",
    "DELETE FROM big WHERE id <= 10000",
    decoded,
    "ROLLBACK TO SAVEPOINT a",
    "SAVEPOINT b",
    "INSERT INTO big SELECT g, 'kept' FROM generate_series(740001, 760000) g",
    "SAVEPOINT c",
    "INSERT INTO big SELECT g, 'dropped' FROM generate_series(760001, 780000) g",
    "SAVEPOINT d",
    "UPDATE big SET v = 'dropped' WHERE id <= 20000",
    "RELEASE SAVEPOINT d",
    decoded,
    "ROLLBACK TO SAVEPOINT c",
    "RELEASE SAVEPOINT b",
    "UPDATE big SET v = 'updated' WHERE id <= 5",
    "INSERT INTO other VALUES (3, 'partial')",
  ]);
  await db.query("INSERT INTO other VALUES (4, 'small')");
  await w.caughtUp(180_000);
  const rss = await peakRss(p.child.pid);
  await stopCleanly(p);

  // Slot statistics reach the view a little after the walsender counts them.
  const stats = await waitFor("the slot statistics", async () => {
    const r = await db.query(
      `SELECT spill_bytes::text, spill_txns::text, stream_bytes::text, stream_txns::text
       FROM pg_stat_replication_slots WHERE slot_name = 'cdc_egress'`,
    );
    return Number(r.rows[0]?.stream_txns) >= 3 && r.rows[0];
  });
  assert.equal(stats.spill_bytes, "0", "PostgreSQL spilled to disk");
  assert.equal(stats.spill_txns, "0", "PostgreSQL spilled to disk");
  assert.ok(BigInt(stats.stream_bytes) > 0n, "PostgreSQL streamed nothing");
  assert.ok(rss < 256 * 1024 * 1024, `peak RSS ${(rss / 1048576).toFixed(0)} MB`);

  // Replay first, while the test holds no other copy of 540,000 rows.
  await w.assertReplayEquals("public", "big");
  const { rows } = await registeredRows(db, w.dataDir, "public", "big");
  const count = (pred: (r: Field[]) => boolean) => rows.filter(pred).length;
  const ids = new Set(rows.filter((r) => r[0] === "I").map((r) => r[7]));
  assert.equal(count((r) => r[0] === "I"), 540000);
  assert.equal(ids.size, 540000, "every insert arrives once");
  assert.equal(count((r) => r[0] === "U"), 5);
  assert.equal(count((r) => r[0] === "D"), 0);
  assert.equal(count((r) => r[4] === aborted.xid), 0, "the aborted transaction left rows");
  assert.equal(count((r) => r[8] === "aborted" || r[8] === "dropped"), 0);
  assert.equal(count((r) => r[4] === big.xid), 500000);
  const partialRows = rows.filter((r) => r[4] === partial.xid);
  assert.equal(partialRows.length, 40005);
  assert.deepEqual(partialRows.map((r) => Number(r[2])), partialRows.map((_r, i) => i));
  assertPositionsIncrease(rows);
  await w.assertReplayEquals("public", "other");
  const other = await registeredRows(db, w.dataDir, "public", "other");
  assert.deepEqual(other.rows.map((r) => [r[2], r[7]]), [
    ["500000", "1"],
    ["40005", "3"],
    ["0", "4"],
  ]);
}
