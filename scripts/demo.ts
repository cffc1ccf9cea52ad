/**
 * `deno task demo`: the tour on an embedded PostgreSQL. Starts a throwaway
 * cluster, creates a small shop schema, runs `init` and `stream` with a short
 * batch interval under a scripted workload, stops the stream with SIGTERM,
 * materializes the tables into DuckDB (demo-data/warehouse.duckdb) and lists
 * the files it wrote. Everything lives under ./demo-data (removed at
 * the start of the next run).
 */

import { gunzipSync } from "node:zlib";
import { join, relative, resolve } from "node:path";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { selectedMajor, startCluster } from "./embedded_postgres.ts";
import { CliProcess, runCli, waitFor } from "../tests/harness/cli.ts";

const root = resolve("demo-data");
await Deno.remove(root, { recursive: true }).catch(() => {});
await Deno.mkdir(root, { recursive: true });
const dataDir = join(root, "files");

function step(text: string) {
  console.log(`\n== ${text}`);
}

step(`starting PostgreSQL ${selectedMajor()} (embedded, wal_level=logical)`);
await using cluster = await startCluster({ version: selectedMajor() });
const db = new pg.Client({ connectionString: cluster.url() });
await db.connect();
console.log(`listening on 127.0.0.1:${cluster.port}`);

step("creating the sample schema");
await db.query(`
  CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped');
  CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, email text, created_at timestamptz DEFAULT now());
  CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers, status order_status NOT NULL DEFAULT 'new', total numeric(12,2), note text);
  CREATE TABLE "audit log" (at timestamptz NOT NULL, entry jsonb);
  ALTER TABLE "audit log" REPLICA IDENTITY FULL;
`);
console.log('customers, orders, "audit log" (no key, REPLICA IDENTITY FULL)');

const env = {
  CDC_SOURCE_URL: cluster.url(),
  CDC_DATA_DIR: dataDir,
  CDC_BATCH_INTERVAL: "1s",
  CDC_METRICS_ADDR: "127.0.0.1:0",
};

/** Waits until the slot has confirmed everything written so far. */
async function caughtUp() {
  const target = (await db.query("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0].l;
  await waitFor("the stream to catch up", async () =>
    (await db.query(
      "SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
      [target],
    )).rows[0]?.ok, 120_000);
  await waitFor("exports to finish", async () =>
    (await db.query(
      "SELECT count(*) = 0 AS ok FROM cdc_registry.reload_operations WHERE state IN ('requested', 'exporting')",
    )).rows[0]?.ok, 120_000);
}
// Rows that exist before init: the initial export picks them up.
await db.query(`INSERT INTO customers (id, name, email)
  SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 1000) g`);
await db.query(`INSERT INTO orders (customer_id, total)
  SELECT 1 + g % 1000, round((g % 500)::numeric, 2) FROM generate_series(1, 200000) g`);

step("cdc-egress init");
const init = await runCli(["init"], env);
console.log(init.stdout.trim());
if (init.code !== 0) throw new Error(`init failed: ${init.stderr}`);

/** Prints the stream's log lines written since the last call. */
let shown = 0;
function streamLog() {
  const lines = stream.stderr.split("\n").filter((l) => l.length > 0);
  for (const l of lines.slice(shown)) console.log(`  | ${l}`);
  shown = lines.length;
}

step("cdc-egress stream: initial export, then changes under a workload (batch interval 1s)");
const stream = new CliProcess(["stream"], { ...env, CDC_LOG_FORMAT: "text" });
for (let round = 0; round < 3; round++) {
  await db.query(`INSERT INTO orders (customer_id, total, note)
    SELECT 1 + (random() * 999)::int, round((random() * 500)::numeric, 2),
           CASE WHEN g % 10 = 0 THEN 'gift, "wrapped"' END
    FROM generate_series(1, 2000) g`);
  await db.query(`UPDATE orders SET status = 'paid' WHERE id % 7 = ${round}`);
  await db.query(`DELETE FROM orders WHERE id % 97 = ${round}`);
  await db.query(`INSERT INTO "audit log" VALUES (now(), '{"round": ${round}}')`);
  await db.query(`UPDATE customers SET email = NULL WHERE id = ${round + 1}`);
  // Let each round land in its own batch folders.
  await caughtUp();
}
await db.query("BEGIN; INSERT INTO orders (customer_id, total) VALUES (1, 1); ROLLBACK");
await db.query("ALTER TABLE customers ADD COLUMN tier text");
await db.query("UPDATE customers SET tier = 'gold' WHERE id <= 10");
await caughtUp();
streamLog();

step("cdc-egress reload public.orders --wait (while writes go on)");
const writes = (async () => {
  for (let i = 0; i < 20; i++) {
    await db.query(`UPDATE orders SET total = total + 1 WHERE id % 50 = ${i}`);
  }
})();
const reload = await runCli(["reload", "public.orders", "--wait", "--timeout", "2m"], env);
await writes;
console.log(reload.stdout.trim());
if (reload.code !== 0) throw new Error(`reload failed: ${reload.stderr}`);
await caughtUp();
streamLog();

step("cdc-egress status");
console.log((await runCli(["status"], env)).stdout.trimEnd());

step("cdc-egress verify --deep");
const verify = await runCli(["verify", "--deep"], env);
console.log(verify.stdout.trimEnd());
console.log(`verify exited with ${verify.code}`);

step("stopping stream with SIGTERM");
const code = await stream.stop("SIGTERM");
streamLog();
console.log(`stream exited with ${code}`);

step("cdc-egress materialize --to duckdb:demo-data/warehouse.duckdb (from the files alone)");
const warehouse = join(root, "warehouse.duckdb");
const mat = await runCli(["materialize", "--to", `duckdb:${warehouse}`], env);
console.log(mat.stdout.trimEnd());
if (mat.code !== 0) throw new Error(`materialize failed: ${mat.stderr}`);
console.log("(again: progress lives in the target, so nothing is applied twice)");
const again = await runCli(["materialize", "--to", `duckdb:${warehouse}`], env);
console.log(again.stdout.trimEnd());

step("files written");
async function* walk(dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) yield* walk(p);
    else yield p;
  }
}
const files = (await Array.fromAsync(walk(dataDir))).filter((p) => !p.includes("/.spool"))
  .sort();
for (const f of files) {
  console.log(`${String((await Deno.stat(f)).size).padStart(9)}  ${relative(dataDir, f)}`);
}

step("registry: cdc_registry.file_log per table");
const reg = await db.query(`SELECT schema_name || '.' || table_name AS table, count(*) AS files,
  sum(row_count) AS rows, min(start_lsn)::text AS first_lsn, max(end_lsn)::text AS last_lsn
  FROM cdc_registry.file_log GROUP BY 1 ORDER BY 1`);
console.table(reg.rows);

const sample = files.find((f) => f.includes("orders") && f.endsWith("streaming.csv.gz"));
if (sample) {
  step(`first lines of ${relative(dataDir, sample)}`);
  const text = new TextDecoder().decode(gunzipSync(await Deno.readFile(sample)));
  console.log(text.split("\n").slice(0, 6).join("\n"));
}
await db.end();
console.log(`\nThe files stay in ${relative(Deno.cwd(), dataDir)}/ until the next demo run.`);
