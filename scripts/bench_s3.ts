/**
 * `deno task bench --only s3`: the same runs into a local data dir and into
 * an S3 bucket (s3rver, in its own process on this machine), side by side
 * in one run on one cluster, each on its own slot:
 *
 * - **export**: `stream` from process start until the table's full_reload
 *   (`--export-rows` rows) is registered;
 * - **backlog**: a backlog of `--changes` row changes (inserts and updates
 *   in transactions of 5,000) caught up into registered files, from process
 *   start until the slot's confirmed_flush_lsn passes the backlog's end.
 *
 * The export runs local first, the backlog S3 first. Target: S3 at most
 * 1.3x local for each. s3rver writes into a temp dir on
 * the same disk, so the ratio shows what the upload path adds (HTTP, MD5,
 * intents, the registry round trips), not a network.
 *
 * @module
 */

import { fileURLToPath as fromFileUrl } from "node:url";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { type PgMajor, startCluster } from "./embedded_postgres.ts";
import { permissionFlagsFor } from "./permissions.ts";
import { S3Server } from "../tests/harness/s3_server.ts";

const MAIN = fromFileUrl(new URL("../main.ts", import.meta.url));
const CONFIG = fromFileUrl(new URL("../deno.json", import.meta.url));
/** Target ratio of S3 to local wall time. */
export const S3_TARGET_RATIO = 1.3;

/** Options of {@linkcode benchS3}. */
export interface BenchS3Options {
  version: PgMajor;
  exportRows: number;
  changes: number;
  interval: string;
  timeoutS: number;
  log: (message: string) => void;
  printRow: (label: string, value: string, target?: string, ok?: boolean) => void;
}

function spawnCli(args: string[], env: Record<string, string>): Deno.ChildProcess {
  const flags = permissionFlagsFor(args, env);
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "--config", CONFIG, ...flags, MAIN, ...args],
    env: { ...env, CDC_LOG_FORMAT: "json" },
    stdout: "null",
    stderr: "piped",
  }).spawn();
}

async function runCli(args: string[], env: Record<string, string>): Promise<void> {
  const child = spawnCli(args, env);
  const err = await new Response(child.stderr).text();
  const status = await child.status;
  if (status.code !== 0) throw new Error(`${args[0]} failed: ${err.slice(-500)}`);
}

async function until(what: string, check: () => Promise<boolean>, timeoutS: number) {
  const deadline = Date.now() + timeoutS * 1000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Runs `stream` until `done`; returns its wall time in seconds. */
async function timedStream(
  env: Record<string, string>,
  done: () => Promise<boolean>,
  timeoutS: number,
): Promise<number> {
  const started = performance.now();
  const child = spawnCli(["stream"], env);
  let tail = "";
  const collect = (async () => {
    for await (const c of child.stderr.pipeThrough(new TextDecoderStream())) {
      tail = (tail + c).slice(-4000);
    }
  })();
  try {
    await until("the stream to finish its work", done, timeoutS);
    return (performance.now() - started) / 1000;
  } catch (error) {
    throw new Error(`${(error as Error).message}: ${tail}`);
  } finally {
    try {
      child.kill("SIGTERM");
    } catch {
      // gone
    }
    await child.status;
    await collect;
  }
}

/** Runs the S3 benchmark; returns its figures. */
export async function benchS3(o: BenchS3Options): Promise<Record<string, unknown>> {
  const cluster = await startCluster({
    version: o.version,
    settings: { max_wal_size: "4GB", shared_buffers: "256MB", synchronous_commit: "off" },
  });
  const s3 = await S3Server.start(["bench"]);
  const localDir = await Deno.makeTempDir({ prefix: "cdc-bench-local-" });
  const spool = await Deno.makeTempDir({ prefix: "cdc-bench-spool-" });
  const db = new pg.Client({ connectionString: cluster.url() });
  await db.connect();
  try {
    const common = {
      CDC_SOURCE_URL: cluster.url(),
      CDC_BATCH_INTERVAL: o.interval,
      CDC_METRICS_ADDR: "127.0.0.1:0",
      CDC_TABLES: "public.*",
      HOME: Deno.env.get("HOME") ?? "/root",
    };
    const sides = {
      local: {
        ...common,
        CDC_SLOT: "bench_local",
        CDC_PUBLICATION: "bench_pub",
        CDC_DATA_DIR: localDir,
      },
      s3: {
        ...common,
        ...s3.env(),
        CDC_SLOT: "bench_s3",
        CDC_PUBLICATION: "bench_pub",
        CDC_DATA_DIR: "s3://bench/data",
        CDC_SPOOL_DIR: spool,
      },
    };
    o.log(`s3: creating a table of ${o.exportRows} rows`);
    await db.query(
      `CREATE TABLE big (id bigint PRIMARY KEY, n int, v text, ts timestamptz, amount numeric(12,2))`,
    );
    await db.query(
      `INSERT INTO big SELECT g, g % 1000, md5(g::text), '2026-01-01'::timestamptz + g * interval '1 s',
         (g % 100000) / 100.0 FROM generate_series(1, ${o.exportRows}) g`,
    );
    await db.query("CREATE TABLE bl (id bigint PRIMARY KEY, v text)");
    await db.query("VACUUM ANALYZE");
    for (const env of Object.values(sides)) await runCli(["init"], env);

    const exportDone = (slot: string) => async () =>
      (await db.query(
        `SELECT count(*)::int AS n FROM cdc_registry.file_log
         WHERE slot_name = $1 AND file_type = 'full_reload'`,
        [slot],
      )).rows[0].n >= 2;
    const exportS: Record<string, number> = {};
    for (const [name, env] of Object.entries(sides)) {
      o.log(`s3: export into ${name}`);
      exportS[name] = await timedStream(env, exportDone(env.CDC_SLOT), o.timeoutS);
    }

    o.log(`s3: generating a backlog of ${o.changes} changes`);
    const perTxn = 5000;
    for (let done = 0, id = 1; done < o.changes; done += 2 * perTxn, id += perTxn) {
      await db.query("BEGIN");
      await db.query(
        `INSERT INTO bl SELECT g, md5(g::text) FROM generate_series(${id}, ${id + perTxn - 1}) g`,
      );
      await db.query(`UPDATE bl SET v = v || 'x' WHERE id BETWEEN ${id} AND ${id + perTxn - 1}`);
      await db.query("COMMIT");
    }
    const end = (await db.query("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0].l;
    const caughtUp = (slot: string) => async () =>
      (await db.query(
        `SELECT confirmed_flush_lsn >= $2::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = $1`,
        [slot, end],
      )).rows[0]?.ok === true;
    const backlogS: Record<string, number> = {};
    // The other order than the export's, so neither side always runs first.
    for (const [name, env] of Object.entries(sides).reverse()) {
      o.log(`s3: backlog into ${name}`);
      backlogS[name] = await timedStream(env, caughtUp(env.CDC_SLOT), o.timeoutS);
    }
    const files = (await db.query(
      `SELECT slot_name, count(*)::int AS n, sum(byte_size)::int8 AS bytes FROM cdc_registry.file_log
       GROUP BY slot_name ORDER BY slot_name`,
    )).rows;
    const objects = (await s3.keys("bench", "data/")).length;
    const result = {
      exportRows: o.exportRows,
      changes: o.changes,
      exportLocalSeconds: exportS.local,
      exportS3Seconds: exportS.s3,
      exportRatio: exportS.s3 / exportS.local,
      backlogLocalSeconds: backlogS.local,
      backlogS3Seconds: backlogS.s3,
      backlogRatio: backlogS.s3 / backlogS.local,
      files,
      objects,
    };
    console.log(
      `\n== s3: ${o.exportRows}-row export and ${o.changes}-change backlog, local vs s3rver ==`,
    );
    o.printRow("export local s", exportS.local.toFixed(2));
    o.printRow("export s3 s", exportS.s3.toFixed(2));
    o.printRow(
      "export s3 / local",
      result.exportRatio.toFixed(2),
      `<= ${S3_TARGET_RATIO}`,
      result.exportRatio <= S3_TARGET_RATIO,
    );
    o.printRow("backlog local s", backlogS.local.toFixed(2));
    o.printRow("backlog s3 s", backlogS.s3.toFixed(2));
    o.printRow(
      "backlog s3 / local",
      result.backlogRatio.toFixed(2),
      `<= ${S3_TARGET_RATIO}`,
      result.backlogRatio <= S3_TARGET_RATIO,
    );
    o.printRow(
      "files: local / s3 (objects incl. schema.yml)",
      `${files.find((f) => f.slot_name === "bench_local")?.n} / ${
        files.find((f) => f.slot_name === "bench_s3")?.n
      } (${objects})`,
    );
    return result;
  } finally {
    await db.end().catch(() => {});
    await cluster.destroy();
    await s3.stop();
    await Deno.remove(localDir, { recursive: true }).catch(() => {});
    await Deno.remove(spool, { recursive: true }).catch(() => {});
  }
}
