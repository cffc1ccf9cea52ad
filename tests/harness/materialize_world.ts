/**
 * The tables of the materialize tests: every common type (with NULL next to
 * '', BC dates, NaN, infinities, huge numerics, intervals with months),
 * unchanged TOAST, key changes, a keyless REPLICA IDENTITY FULL table with
 * duplicate rows, TRUNCATE, and column renames, adds and drops; a seeded
 * workload over them; and comparisons of each target with the source.
 */

import assert from "node:assert/strict";
import { gunzipSync } from "node:zlib";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { parseCsv } from "../../src/replay/csv_reader.ts";
import { connect } from "../../src/source/connect.ts";
import { copyOut } from "../../src/source/copy_out.ts";
import { tableDirName } from "../../src/write/table_dir.ts";
import { liveRows } from "./replay_check.ts";
type Rng = () => number;

/** The tables, in the source's `public` schema. */
export const TABLES = [
  "types_t",
  "toast_t",
  "keys_t",
  "full_t",
  "trunc_t",
  "ddl_t",
  "big_t",
] as const;

/** Creates the tables with a first set of rows. */
export async function createTables(db: pg.Client): Promise<void> {
  await db.query(`
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    CREATE TABLE types_t (
      id serial PRIMARY KEY, b boolean, i2 smallint, i4 integer, i8 bigint, r real,
      d double precision, n numeric(12,3), nb numeric, m money, t text, vc varchar(10),
      ch char(5), dt date, ts timestamp, tstz timestamptz, tm time, tmtz timetz, iv interval,
      u uuid, j json, jb jsonb, ba bytea, ai integer[], at text[], ip inet, e mood,
      ts3 timestamp(3), dbc date);
    CREATE TABLE toast_t (id int PRIMARY KEY, big text, small int);
    ALTER TABLE toast_t ALTER COLUMN big SET STORAGE EXTERNAL;
    CREATE TABLE keys_t (id int PRIMARY KEY, v text);
    CREATE TABLE full_t (a int, b text);
    ALTER TABLE full_t REPLICA IDENTITY FULL;
    CREATE TABLE trunc_t (id int PRIMARY KEY, v text);
    CREATE TABLE ddl_t (id int PRIMARY KEY, a text, b int, c text);
    CREATE TABLE big_t (id int PRIMARY KEY, v int, pad text);
  `);
  await db.query(`
    INSERT INTO types_t (b, i2, i4, i8, r, d, n, nb, m, t, vc, ch, dt, ts, tstz, tm, tmtz, iv, u,
                         j, jb, ba, ai, at, ip, e, ts3, dbc) VALUES
      (true, 1, 2, 3, 1.5, 0.1, 1.5, 123456789012345678901234567890.123456789, 12.34, '', '',
       'ab', '2026-01-02', '2026-01-02 03:04:05.123456', '2026-01-02 03:04:05.5+02',
       '24:00:00', '10:00:00+05:30', '1 year 2 mons 3 days 04:05:06', gen_random_uuid(),
       '{"a": [1, 2]}', '{"b": null}', '\\x00ff10', '{1,NULL,3}', '{"a,b","",NULL}',
       '10.1.2.3/8', 'ok', '2026-01-02 03:04:05.123', '2026-01-02'),
      (false, -32768, -2147483648, -9223372036854775808, 'NaN', 'Infinity', 'NaN', -0.5,
       -1.5, 'quote " comma , newline
 cr ' || chr(13) || ' end', 'x', NULL, '0044-03-15 BC', 'infinity', '-infinity', '00:00:00',
       NULL, '-1 mons', NULL, NULL, '[]', '\\x', '{}', '{}', '::1', NULL, NULL, '0044-03-15 BC'),
      (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
      (true, 0, 0, 0, '-0', 1e300, 0, 0, 0, '\\.', 'ünïcødé', '     ', '2026-12-31',
       '1999-12-31 23:59:59', '2000-01-01 00:00:00+00', '12:34:56.789', NULL, '-1 days +02:00',
       NULL, 'null', '"s"', NULL, NULL, NULL, NULL, 'sad', NULL, '9999-12-31');
    INSERT INTO toast_t SELECT g, repeat(md5(g::text), 400), g FROM generate_series(1, 20) g;
    -- A 5 MB value: longer than DuckDB's default CSV line limit.
    INSERT INTO toast_t VALUES (999, repeat('long ', 1000000), 0);
    INSERT INTO keys_t SELECT g, 'v' || g FROM generate_series(1, 50) g;
    INSERT INTO full_t SELECT g % 5, CASE WHEN g % 3 = 0 THEN NULL WHEN g % 3 = 1 THEN '' ELSE 'x' END
      FROM generate_series(1, 60) g;
    INSERT INTO trunc_t SELECT g, 'v' || g FROM generate_series(1, 30) g;
    INSERT INTO ddl_t SELECT g, 'a' || g, g, 'c' || g FROM generate_series(1, 30) g;
    INSERT INTO big_t SELECT g, 0, md5(g::text) FROM generate_series(1, 100000) g;
  `);
}

/**
 * One round of changes over every table. `round` picks the DDL of `ddl_t`
 * (rename, add, drop) so a run of rounds walks through all of them.
 */
export async function changeRound(db: pg.Client, rng: Rng, round: number): Promise<void> {
  const n = (k: number) => Math.floor(rng() * k);
  await db.query("BEGIN");
  await db.query(
    `INSERT INTO types_t (b, i4, n, t, dt, tstz, ba, e) VALUES ($1, $2, $3, $4, $5, now(), $6, 'happy')`,
    [
      rng() < 0.5,
      n(1000),
      (rng() * 1000).toFixed(3),
      rng() < 0.3 ? "" : `t${n(100)}`,
      rng() < 0.2 ? "0001-01-01 BC" : "2026-05-05",
      "\\x0102",
    ],
  );
  await db.query("UPDATE types_t SET i8 = i8 + 1, t = t || ',' WHERE id = $1", [1 + n(4)]);
  await db.query(
    "DELETE FROM types_t WHERE id = (SELECT max(id) FROM types_t WHERE id > 4) AND $1",
    [
      rng() < 0.3,
    ],
  );
  // Unchanged TOAST: updates that leave `big` alone, then a key change of such a row.
  await db.query("UPDATE toast_t SET small = small + 1 WHERE id % 3 = $1", [n(3)]);
  await db.query("UPDATE toast_t SET id = id + 1000, small = 0 WHERE id = $1", [1 + n(20)]);
  await db.query("UPDATE toast_t SET small = small + 7 WHERE id > 1000");
  if (round === 0) await db.query("UPDATE toast_t SET big = big || '!' WHERE id = 999");
  await db.query("UPDATE toast_t SET big = repeat(md5($1), 300) WHERE id = $2", [
    `r${round}`,
    2 + n(5),
  ]);
  await db.query("COMMIT");
  await db.query("BEGIN");
  // Key changes, chains and a swap inside one transaction.
  const a = 1 + n(40);
  const moved = a + 100_000 * (round + 1);
  await db.query("UPDATE keys_t SET id = $2 WHERE id = $1", [a, moved]);
  await db.query("UPDATE keys_t SET id = id + 1, v = v || '!' WHERE id = $1", [moved]);
  await db.query("UPDATE keys_t SET id = -id WHERE id = $1", [moved + 1]);
  await db.query("UPDATE keys_t SET v = v || '?' WHERE id = $1", [-(moved + 1)]);
  await db.query("INSERT INTO keys_t VALUES ($1, 'new') ON CONFLICT DO NOTHING", [a]);
  // A swap of two keys, through a free one.
  await db.query("UPDATE keys_t SET id = -45 WHERE id = 45");
  await db.query("UPDATE keys_t SET id = 45 WHERE id = 46");
  await db.query("UPDATE keys_t SET id = 46 WHERE id = -45");
  await db.query("COMMIT");
  // Keyless FULL: duplicates, delete one of several equal rows, update one of them.
  await db.query("INSERT INTO full_t VALUES ($1, 'x'), ($1, 'x'), ($1, NULL)", [n(5)]);
  await db.query("DELETE FROM full_t WHERE ctid = (SELECT ctid FROM full_t WHERE a = $1 LIMIT 1)", [
    n(5),
  ]);
  await db.query(
    "UPDATE full_t SET b = 'y' WHERE ctid = (SELECT ctid FROM full_t WHERE b IS NULL LIMIT 1)",
  );
  await db.query(
    "UPDATE full_t SET b = '' WHERE ctid = (SELECT ctid FROM full_t WHERE b = 'x' LIMIT 1)",
  );
  // TRUNCATE now and then, with rows before and after it in one transaction.
  await db.query("BEGIN");
  await db.query("INSERT INTO trunc_t VALUES ($1, 'before')", [1000 + round]);
  if (round % 3 === 1) await db.query("TRUNCATE trunc_t");
  await db.query(
    "INSERT INTO trunc_t VALUES ($1, 'after') ON CONFLICT (id) DO UPDATE SET v = 'again'",
    [
      2000 + n(5),
    ],
  );
  await db.query("COMMIT");
  // Column DDL on ddl_t.
  const ddl = [
    "ALTER TABLE ddl_t RENAME COLUMN c TO c2",
    "ALTER TABLE ddl_t ADD COLUMN d text",
    "ALTER TABLE ddl_t DROP COLUMN b",
    "ALTER TABLE ddl_t RENAME COLUMN a TO a_renamed",
  ][round];
  if (ddl) await db.query(ddl);
  await db.query("UPDATE ddl_t SET id = id WHERE id % 4 = $1", [n(4)]);
  await db.query(
    `INSERT INTO ddl_t (id) VALUES ($1)`,
    [100 + round],
  );
}

/** A table's rows as PostgreSQL text, sorted by their JSON form. */
export { liveRows as tableRows };

/** Every table's rows as PostgreSQL text (one snapshot when `client` is in one). */
export async function allRows(client: pg.Client): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  for (const t of TABLES) out.set(t, await liveRows(client, "public", t));
  return out;
}

/** Asserts two sorted row lists are equal, with a short diff. */
export function assertSameRows(actual: string[], expected: string[], what: string): void {
  if (JSON.stringify(actual) === JSON.stringify(expected)) return;
  const a = new Set(actual);
  const e = new Set(expected);
  const missing = expected.filter((x) => !a.has(x)).slice(0, 3);
  const extra = actual.filter((x) => !e.has(x)).slice(0, 3);
  assert.fail(
    `${what}: ${actual.length} rows, expected ${expected.length}; missing ${
      JSON.stringify(missing)
    }; extra ${JSON.stringify(extra)}`,
  );
}

/** COPY ... TO STDOUT (FORMAT csv, HEADER) of a source table, with the pinned settings. */
export async function copyCsv(url: string, table: string): Promise<Uint8Array> {
  const c = await connect(url);
  try {
    const parts: Uint8Array[] = [];
    for await (
      const chunk of copyOut(
        c,
        `COPY (SELECT * FROM public.${table}) TO STDOUT (FORMAT csv, HEADER)`,
      )
    ) parts.push(chunk);
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let off = 0;
    for (const p of parts) out.set(p, (off += p.length) - p.length);
    return out;
  } finally {
    await c.end();
  }
}

/** Checks a csv: target file against COPY of the source: same header bytes, same records, same size. */
export async function assertCsvTarget(dir: string, url: string, table: string): Promise<void> {
  const file = gunzipSync(await Deno.readFile(`${dir}/${tableDirName("public", table)}.csv.gz`));
  const copy = await copyCsv(url, table);
  const dec = new TextDecoder();
  const fileText = dec.decode(file);
  const copyText = dec.decode(copy);
  const fileHeader = fileText.slice(0, fileText.indexOf("\n") + 1);
  assert.equal(fileHeader, copyText.slice(0, copyText.indexOf("\n") + 1), `${table}: header`);
  const sorted = (t: string) => parseCsv(t).slice(1).map((r) => JSON.stringify(r)).sort();
  assertSameRows(sorted(fileText), sorted(copyText), `csv ${table}`);
  assert.equal(file.length, copy.length, `${table}: csv size differs from COPY`);
}
