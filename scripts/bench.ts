/**
 * The benchmarks of DESIGN.md §7 (`deno task bench`), each side by side with
 * its baseline in the same run on its own embedded cluster; `--only` picks
 * some of `backlog`, `export` and `bigtxn` (default all).
 *
 * **backlog**: how long `cdc-egress stream`
 * takes to turn a backlog of ~1M row changes into registered gzip CSV files,
 * next to `pg_recvlogical` reading the same changes from a twin slot into
 * /dev/null, in the same run on the same cluster.
 *
 * 1. Starts an embedded PostgreSQL cluster, creates the pgbench schema
 *    (`pgbench -i -s 1`) and runs `cdc-egress init` (slot `cdc_egress`).
 * 2. Runs `cdc-egress stream` once for its initial export of the tables,
 *    then creates the twin slot `bench_twin` where ours stands.
 * 3. Generates the backlog with pgbench: tpcb-like transactions (3 UPDATEs +
 *    1 INSERT each), then one marker transaction whose pre-commit WAL
 *    position is the end LSN.
 * 4. Baseline: `pg_recvlogical --start --endpos <end LSN>` on the twin slot.
 * 5. Ours: `cdc-egress stream` (main.ts under `deno run` with the binary's
 *    permission flags) until the slot's confirmed_flush_lsn passes the end
 *    LSN and the registry holds every change; its peak RSS (VmHWM) is read
 *    before it is stopped with SIGTERM.
 * 6. Compares the gzip size with `gzip -6` on the same CSV.
 *
 * **export**: one table of `--export-rows` rows (bigint key, int, md5 text,
 * timestamptz, numeric). Baseline: `psql -c "\copy t to stdout csv header" |
 * gzip -6 > file` in bash (wall time). Ours: `cdc-egress init` (not timed) on a
 * fresh slot, then `stream` with CDC_EXPORT_WORKERS=`--export-workers` from
 * process start until the table's full_reload row is in file_log; also the
 * export alone, from the "export started" to the "export registered" JSON log
 * line. Compares row counts and our gzip size with the baseline's file and
 * with `gzip -6` on our own CSV.
 *
 * **bigtxn**: one transaction of `--bigtxn-rows` INSERTs into a small table,
 * committed after our slot's initial export and after the twin slot
 * `bench_twin` is created. Baseline: `pg_recvlogical -o proto_version=2 -o
 * streaming=on --endpos <LSN after the commit>`. Ours: `stream` until the
 * slot's confirmed_flush_lsn passes that LSN and the registry holds every
 * row. Reports `pg_stat_replication_slots` spill and stream bytes for both
 * slots (ours must not spill) and our peak RSS.
 *
 * **materialize**: a `--mat-rows` full_reload (bigint key, int, md5 text,
 * timestamptz, numeric(12,2)) plus `--mat-changes` streamed changes (70%
 * updates, 20% inserts, 10% deletes, in transactions of 100k). Baselines:
 * DuckDB's own `read_csv` of the same files into two tables (in-process, no
 * merge), and `psql \copy ... FROM PROGRAM 'gzip -dc ...'` of the full_reload
 * into a table with the same primary key. Ours: `cdc-egress materialize` into
 * a fresh DuckDB file and into a fresh PostgreSQL database (process wall
 * time; peak RSS of the whole process from GNU time's maximum resident set
 * size, else VmHWM sampled from /proc). The four run one after the other in
 * each of 3 rounds (`--repeat N` for N) on the same files; medians are
 * reported, and every round checks the targets against the source (md5 of
 * the PostgreSQL target's rows; count and sums of the DuckDB one). Runs
 * only when named in `--only`.
 *
 * **wide**: `--tables` one-row tables (default 10000), no baseline: `init`
 * time; the initial export rate (tables/s between the "export started" and
 * the last "export registered" log line) and CPU ms per table of the stream
 * and of the server; then, with `stream` under `ulimit -n --wide-nofile`,
 * one change in each table in one transaction: peak open fds and RSS while
 * the N batches are open, and the time from the interval tick until all N
 * are in file_log; last, `status` over `--status-rows` synthetic file_log
 * rows. Runs only when named in `--only`.
 *
 * With `--repeat N` the sides run alternately N times: backlog reports the
 * best run by ratio, export and bigtxn the median run by ratio. Each prints
 * the load average (other work on a 2-CPU machine skews the figures).
 * Prints tables and writes `.bench/results.json` (`benchmarks.<name>`; the
 * benchmarks not run keep their previous results).
 *
 * **s3** (only when named): see `bench_s3.ts`.
 *
 * Usage: deno task bench [--only backlog,export,bigtxn,materialize,wide,s3] [--changes N]
 *        [--interval DUR] [--pg 14..18] [--clients N] [--repeat N]
 *        [--export-rows N] [--export-workers N] [--bigtxn-rows N]
 *        [--mat-rows N] [--mat-changes N] [--tables N] [--wide-interval DUR]
 *        [--wide-nofile N] [--status-rows N] [--wide-export-only]
 *        [--cpu-prof DIR] [--timeout S] [--keep]
 *
 * Needs Debian's PostgreSQL client programs (psql, pgbench, pg_recvlogical):
 * `apt-get install -y postgresql-client`.
 *
 * @module
 */

import { benchS3 } from "./bench_s3.ts";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import { gunzipSync } from "node:zlib";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { type Cluster, type PgMajor, startCluster } from "./embedded_postgres.ts";
import { permissionFlagsFor } from "./permissions.ts";

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const MAIN = join(ROOT, "main.ts");
const CONFIG = join(ROOT, "deno.json");
const RESULTS = join(ROOT, ".bench", "results.json");
const CHANGES_PER_TXN = 4; // tpcb-like: 3 UPDATEs + 1 INSERT
const TARGET_RATIO = 1.3;
const TARGET_RSS_MB = 256;
const TARGET_GZIP_RATIO = 1.03;

/**
 * pgbench's built-in tpcb-like transaction without its SELECT (which changes
 * nothing), pipelined so that generating the backlog takes one round trip per
 * transaction: 3 UPDATEs and 1 INSERT.
 */
const TXN_SCRIPT = `\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
\\startpipeline
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
\\endpipeline
`;

/** Child processes to kill if the benchmark is interrupted. */
const children = new Set<Deno.ChildProcess>();

const { values: args } = parseArgs({
  options: {
    changes: { type: "string", default: "1000000" },
    interval: { type: "string", default: "1s" },
    pg: { type: "string", default: "18" },
    clients: { type: "string", default: "1" },
    repeat: { type: "string" },
    "cpu-prof": { type: "string" },
    keep: { type: "boolean", default: false },
    timeout: { type: "string", default: "600" },
    only: { type: "string", default: "backlog,export,bigtxn" },
    "export-rows": { type: "string", default: "2000000" },
    "export-workers": { type: "string", default: "1" },
    "bigtxn-rows": { type: "string", default: "2000000" },
    "mat-rows": { type: "string", default: "2000000" },
    "mat-changes": { type: "string", default: "1000000" },
    tables: { type: "string", default: "10000" },
    "wide-interval": { type: "string", default: "30s" },
    "wide-nofile": { type: "string", default: "1024" },
    "status-rows": { type: "string", default: "1000000" },
    "wide-export-only": { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});

if (args.help) {
  console.log(
    `Usage: deno task bench [--only backlog,export,bigtxn,materialize,wide] [--changes N]
                       [--interval DUR] [--pg 14..18] [--clients N] [--repeat N]
                       [--export-rows N] [--export-workers N] [--bigtxn-rows N]
                       [--mat-rows N] [--mat-changes N] [--tables N]
                       [--wide-interval DUR] [--wide-nofile N] [--status-rows N]
                       [--wide-export-only]
                       [--cpu-prof DIR] [--timeout S] [--keep]

  --only LIST     benchmarks to run, comma-separated (default backlog,export,bigtxn)
                  (materialize, wide and s3 run only when named; s3: export and
                  backlog into s3rver next to the same runs into a local data dir)
  --changes N     row changes to generate (default 1000000; 4 per pgbench transaction)
  --interval DUR  CDC_BATCH_INTERVAL for the stream run (default 1s)
  --pg N          PostgreSQL major version of the embedded cluster (default 18)
  --clients N     pgbench clients while generating (default 1)
  --repeat N      run both sides N times on the same data (backlog: best run; others: median;
                  materialize: 3 interleaved rounds unless given)
  --export-rows N rows in the export benchmark's table (default 2000000)
  --export-workers N  CDC_EXPORT_WORKERS for the export benchmark (default 1)
  --bigtxn-rows N rows in the bigtxn benchmark's one transaction (default 2000000)
  --mat-rows N    rows of the materialize benchmark's full_reload (default 2000000)
  --mat-changes N changes streamed after it (default 1000000)
  --tables N      tables of the wide benchmark (default 10000)
  --wide-interval DUR  CDC_BATCH_INTERVAL of the wide benchmark's stream (default 30s)
  --wide-nofile N ulimit -n of the wide benchmark's stream process (default 1024)
  --status-rows N synthetic file_log rows for the wide benchmark's status timing (default 1000000)
  --wide-export-only  stop the wide benchmark after init and the initial export
  --cpu-prof DIR  run the backlog's (or wide's) stream process with --cpu-prof into DIR
  --timeout S     give up on the stream run after S seconds (default 600)
  --keep          keep the cluster and data dir (paths are printed)`,
  );
  Deno.exit(0);
}

const changesWanted = positiveInt("--changes", args.changes!);
const clients = positiveInt("--clients", args.clients!);
const repeat = positiveInt("--repeat", args.repeat ?? "1");
const version = Number(args.pg) as PgMajor;
if (![14, 15, 16, 17, 18].includes(version)) fail(`--pg ${args.pg}: expected 14 to 18`);

function positiveInt(flag: string, text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0) fail(`${flag} ${text}: expected a positive integer`);
  return n;
}

function fail(message: string): never {
  console.error(`bench: ${message}`);
  Deno.exit(2);
}

function log(message: string): void {
  console.error(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}`);
}

/** Finds a client program on PATH (or Debian's versioned dirs) or explains how to get it. */
async function findTool(name: string): Promise<string> {
  const dirs = (Deno.env.get("PATH") ?? "").split(":").filter(Boolean);
  for (const v of [18, 17, 16, 15, 14, 13]) dirs.push(`/usr/lib/postgresql/${v}/bin`);
  for (const dir of dirs) {
    const path = join(dir, name);
    try {
      const info = await Deno.stat(path);
      if (info.isFile && (info.mode ?? 0o111) & 0o111) return path;
    } catch {
      // not here
    }
  }
  fail(
    `cannot find "${name}". The benchmark needs PostgreSQL's client programs ` +
      `(pgbench, pg_recvlogical); install them with: apt-get install -y postgresql-client`,
  );
}

interface Output {
  code: number;
  stdout: string;
  stderr: string;
}

async function exec(cmd: string, cmdArgs: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(cmd, { args: cmdArgs, env, stdout: "piped", stderr: "piped" })
    .output();
  const dec = new TextDecoder();
  const result: Output = {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
  if (out.code !== 0) {
    throw new Error(
      `${cmd.split("/").pop()} ${cmdArgs.join(" ")} exited ${out.code}: ${
        (result.stderr + result.stdout).trim().slice(-2000)
      }`,
    );
  }
  return result;
}

/** `deno run` arguments for the CLI with exactly the compiled binary's permissions. */
function cliArgs(args: string[], env: Record<string, string>, denoFlags: string[] = []): string[] {
  const flags = permissionFlagsFor(args, { ...Deno.env.toObject(), ...env });
  return ["run", ...denoFlags, "--config", CONFIG, ...flags, MAIN, ...args];
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** Sum of `gzip -6` sizes of the files' CSV, each compressed on its own like ours. */
async function gzip6Bytes(paths: string[]): Promise<{ gzip6: number; csv: number }> {
  let gzip6 = 0;
  let csv = 0;
  for (const path of paths) {
    const raw = gunzipSync(await Deno.readFile(path));
    csv += raw.length;
    const child = new Deno.Command("gzip", { args: ["-6", "-c"], stdin: "piped", stdout: "piped" })
      .spawn();
    const writer = child.stdin.getWriter();
    const write = writer.write(raw).then(() => writer.close());
    let size = 0;
    for await (const chunk of child.stdout) size += chunk.length;
    await write;
    await child.status;
    gzip6 += size;
  }
  return { gzip6, csv };
}

/** The 1-minute load average: other work on the machine skews the figures. */
async function loadAverage(): Promise<number> {
  return Number((await Deno.readTextFile("/proc/loadavg")).split(" ")[0]);
}

/** CPU seconds (user + system, or one of them) a process has used so far, from /proc; 0 once it is gone. */
async function cpuSeconds(pid: number, only?: "user" | "system"): Promise<number> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime, stime in ticks of 1/100 s
    if (only) return Number(fields[only === "user" ? 11 : 12]) / 100;
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

/** Follows the CPU time of the walsender serving `applicationName` (approximate: sampled). */
class WalsenderCpu {
  #seconds = 0;
  #running = true;
  #loop: Promise<void>;

  constructor(db: pg.Client, applicationName: string) {
    this.#loop = (async () => {
      let pid = 0;
      while (this.#running) {
        if (!pid) {
          const res = await db.query(
            "SELECT pid FROM pg_stat_replication WHERE application_name = $1",
            [applicationName],
          );
          pid = res.rows[0]?.pid ?? 0;
        }
        if (pid) this.#seconds = Math.max(this.#seconds, await cpuSeconds(pid));
        await sleep(100);
      }
    })();
  }

  /** Stops sampling; returns the walsender's CPU seconds. */
  async stop(): Promise<number> {
    this.#running = false;
    await this.#loop;
    return this.#seconds;
  }
}

interface RunResult {
  loadBefore: number;
  baselineSeconds: number;
  oursSeconds: number;
  ratio: number;
  /** CPU seconds of the walsender during the baseline and during ours, and of our process. */
  cpu: { baselineWalsender: number; oursWalsender: number; ours: number };
  peakRssMb: number;
  rowsRegistered: number;
  files: number;
  gzipBytes: number;
}

async function benchBacklog(): Promise<Record<string, unknown>> {
  const pgbench = await findTool("pgbench");
  const recvlogical = await findTool("pg_recvlogical");
  const txns = Math.max(1, Math.round(changesWanted / CHANGES_PER_TXN));
  const perClient = Math.max(1, Math.ceil(txns / clients));

  log(`starting PostgreSQL ${version}`);
  const cluster = await startCluster({
    version,
    keep: args.keep,
    // Room for the backlog's WAL without checkpoint storms; logical_decoding_work_mem stays default.
    settings: { max_wal_size: "'8GB'", checkpoint_timeout: "'30min'" },
  });
  const dataDir = await Deno.makeTempDir({ prefix: "cdc-bench-data-" });
  const db = new pg.Client({ connectionString: cluster.url() });
  const results: RunResult[] = [];
  // Ctrl-C: remove the cluster and the data dir instead of leaving them running.
  const onSignal = () => {
    log("interrupted: cleaning up");
    for (const child of children) {
      try {
        child.kill("SIGKILL");
      } catch {
        // gone
      }
    }
    cluster.destroy()
      .then(() => Deno.remove(dataDir, { recursive: true }))
      .catch(() => {})
      .finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  let generated = { txns: 0, changes: 0, endLsn: "", seconds: 0, walBytes: 0 };
  try {
    await db.connect();
    const pgEnv = {
      PGHOST: "127.0.0.1",
      PGPORT: String(cluster.port),
      PGUSER: "postgres",
      PGPASSWORD: cluster.password,
      PGDATABASE: "postgres",
    };
    log("pgbench -i -s 1");
    await exec(pgbench, ["-i", "-s", "1", "-q"], pgEnv);
    // pgbench_history has no primary key; init leaves such tables out unless
    // they have REPLICA IDENTITY FULL (what its warning tells users to do).
    await db.query("ALTER TABLE pgbench_history REPLICA IDENTITY FULL");

    const cliEnv = {
      CDC_SOURCE_URL: cluster.url(),
      CDC_DATA_DIR: dataDir,
      CDC_BATCH_INTERVAL: args.interval!,
      CDC_LOG_FORMAT: "json",
      CDC_METRICS_ADDR: "127.0.0.1:0",
      NO_COLOR: "1",
    };
    log("cdc-egress init");
    await exec(Deno.execPath(), cliArgs(["init"], cliEnv), cliEnv);
    // On a fresh slot, stream first exports every table (full_reload files);
    // the backlog is what comes after, so that export happens now.
    log("cdc-egress stream: initial export");
    const warmUp = new StreamProcess(cliEnv);
    await warmUp.waitFor(async () => {
      const res = await db.query(
        `SELECT (SELECT count(*) FROM cdc_registry.table_state WHERE mode = 'streaming')::int AS streaming,
                (SELECT count(*) FROM cdc_registry.file_log WHERE file_type = 'full_reload')::int AS exports`,
      );
      const { streaming, exports } = res.rows[0];
      return { done: streaming >= 4 && exports >= 4, state: `${exports} of 4 tables exported` };
    });
    await warmUp.stop();
    // The twin slot starts where ours now stands: both see exactly the backlog.
    await db.query("SELECT pg_create_logical_replication_slot('bench_twin', 'pgoutput')");

    log(
      `generating ${
        txns * CHANGES_PER_TXN
      } row changes (${txns} transactions of 3 UPDATEs + 1 INSERT)`,
    );
    const startLsn = (await db.query("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0].l;
    const genStart = performance.now();
    const script = join(cluster.dir, "bench-txn.sql");
    await Deno.writeTextFile(script, TXN_SCRIPT);
    await exec(pgbench, [
      "-n",
      "-f",
      script,
      "-M",
      "prepared",
      "-c",
      String(clients),
      "-j",
      String(Math.min(clients, 2)),
      "-t",
      String(perClient),
    ], pgEnv);
    // The marker: its change is the last one; its pre-commit insert position
    // is the end LSN (its commit record ends after it).
    await db.query("BEGIN");
    await db.query(
      "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 0, now())",
    );
    const endLsn = (await db.query("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0].l;
    await db.query("COMMIT");
    const history = Number(
      (await db.query("SELECT count(*)::bigint AS n FROM pgbench_history")).rows[0].n,
    );
    const walBytes = Number(
      (await db.query("SELECT ($1::pg_lsn - $2::pg_lsn)::bigint AS n", [endLsn, startLsn])).rows[0]
        .n,
    );
    // Every pgbench transaction inserts one history row; the marker adds one change.
    generated = {
      txns: history - 1,
      changes: (history - 1) * CHANGES_PER_TXN + 1,
      endLsn,
      seconds: (performance.now() - genStart) / 1000,
      walBytes,
    };
    log(
      `generated ${generated.changes} changes in ${generated.txns} transactions, ` +
        `${(walBytes / 1e6).toFixed(0)} MB of WAL, in ${generated.seconds.toFixed(1)} s; ` +
        `end LSN ${endLsn}`,
    );

    // With --repeat, keep a copy of the cluster's data so every run reads the same backlog.
    const pgData = join(cluster.dir, "data");
    const snapshot = join(cluster.dir, "data.bench-snapshot");
    if (repeat > 1) {
      await db.end();
      await cluster.stopServer();
      await exec("cp", ["-a", pgData, snapshot]);
      await cluster.startServer();
    }

    for (let run = 1; run <= repeat; run++) {
      let client = db;
      if (repeat > 1) {
        if (run > 1) {
          await cluster.stopServer();
          await exec("rm", ["-rf", pgData]);
          await exec("cp", ["-a", snapshot, pgData]);
          await cluster.startServer();
          await Deno.remove(dataDir, { recursive: true });
          await Deno.mkdir(dataDir);
        }
        client = new pg.Client({ connectionString: cluster.url() });
        await client.connect();
      }
      try {
        results.push(
          await runOnce(cluster, client, recvlogical, cliEnv, dataDir, endLsn, generated.changes),
        );
      } finally {
        if (repeat > 1) await client.end();
      }
      const r = results.at(-1)!;
      log(
        `run ${run}: baseline ${r.baselineSeconds.toFixed(2)} s, ours ${
          r.oursSeconds.toFixed(2)
        } s, ratio ${r.ratio.toFixed(2)}, RSS ${r.peakRssMb.toFixed(0)} MB`,
      );
    }

    log("comparing gzip size with gzip -6");
    const files = await listFiles(repeat > 1 ? null : db, dataDir, cluster);
    const { gzip6, csv } = await gzip6Bytes(files.map((f) => join(dataDir, f)));
    const last = results.at(-1)!;
    const best = results.reduce((a, b) => (b.ratio < a.ratio ? b : a));
    const summary = {
      date: new Date().toISOString(),
      postgres: version,
      deno: Deno.version.deno,
      cpus: navigator.hardwareConcurrency,
      batchInterval: args.interval,
      generated,
      runs: results,
      gzip: {
        oursBytes: last.gzipBytes,
        gzip6Bytes: gzip6,
        csvBytes: csv,
        sizeVsGzip6: last.gzipBytes / gzip6,
      },
      targets: { ratio: TARGET_RATIO, rssMb: TARGET_RSS_MB, sizeVsGzip6: TARGET_GZIP_RATIO },
    };
    const row = (what: string, value: string, target: string, ok?: boolean) =>
      console.log(
        `${what.padEnd(26)} ${value.padStart(14)}   ${target.padEnd(10)} ${
          ok === undefined ? "" : ok ? "ok" : "MISSED"
        }`,
      );
    console.log();
    console.log(
      `backlog: ${generated.changes} changes, ${generated.txns} transactions, PostgreSQL ${version}, ` +
        `batch interval ${args.interval}${repeat > 1 ? `, best of ${repeat} runs by ratio` : ""}` +
        `, load average before ${best.loadBefore}`,
    );
    row("", "measured", "target");
    row("baseline pg_recvlogical s", best.baselineSeconds.toFixed(2), "");
    row("ours (stream) s", best.oursSeconds.toFixed(2), "");
    row("ratio", best.ratio.toFixed(2), `<= ${TARGET_RATIO}`, best.ratio <= TARGET_RATIO);
    row("walsender CPU s, baseline", best.cpu.baselineWalsender.toFixed(2), "");
    row("walsender CPU s, ours", best.cpu.oursWalsender.toFixed(2), "");
    row("our process CPU s", best.cpu.ours.toFixed(2), "");
    const maxRss = Math.max(...results.map((r) => r.peakRssMb));
    row("peak RSS MB", maxRss.toFixed(1), `<= ${TARGET_RSS_MB}`, maxRss <= TARGET_RSS_MB);
    row(
      "rows registered",
      String(last.rowsRegistered),
      `${generated.changes}`,
      last.rowsRegistered === generated.changes,
    );
    row("files", String(last.files), "");
    row("gzip bytes", String(last.gzipBytes), "");
    row("gzip -6 bytes, same CSV", String(gzip6), "");
    row(
      "size vs gzip -6",
      summary.gzip.sizeVsGzip6.toFixed(4),
      `<= ${TARGET_GZIP_RATIO}`,
      summary.gzip.sizeVsGzip6 <= TARGET_GZIP_RATIO,
    );
    if (args.keep) console.log(`cluster: ${cluster.dir}\ndata dir: ${dataDir}`);
    return summary;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    await db.end().catch(() => {});
    await cluster.destroy();
    if (!args.keep) await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
}

async function listFiles(client: pg.Client | null, _dataDir: string, cluster: Cluster) {
  const c = client ?? new pg.Client({ connectionString: cluster.url() });
  if (!client) await c.connect();
  try {
    const res = await c.query(
      "SELECT path FROM cdc_registry.file_log WHERE file_type = 'streaming' ORDER BY id",
    );
    return res.rows.map((r) => r.path as string);
  } finally {
    if (!client) await c.end();
  }
}

/** Log messages whose times the export benchmark reads. */
const WATCHED = new Set(["export started", "export registered", "batch registered"]);

/** A `cdc-egress stream` child process. */
class StreamProcess {
  readonly child: Deno.ChildProcess;
  #stderr = "";
  #partial = "";
  /** JSON log records whose msg is in WATCHED, in order, with their fields. */
  readonly events: { msg: string; ts: number; fields: Record<string, unknown> }[] = [];
  #collect: Promise<void>;
  #status: Promise<Deno.CommandStatus>;
  #exited = false;

  /** `nofile`: run under `ulimit -n nofile` (bash execs deno: the pid stays the stream's). */
  constructor(env: Record<string, string>, denoFlags: string[] = [], nofile?: number) {
    const deno = [Deno.execPath(), ...cliArgs(["stream"], env, denoFlags)];
    const child = new Deno.Command(nofile ? "bash" : deno[0], {
      args: nofile ? ["-c", `ulimit -n ${nofile} && exec "$0" "$@"`, ...deno] : deno.slice(1),
      env,
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.child = child;
    children.add(child);
    this.#collect = (async () => {
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        this.#stderr += chunk;
        this.#scan(chunk);
        if (this.#stderr.length > 1_000_000) this.#stderr = this.#stderr.slice(-100_000);
      }
    })();
    this.#status = child.status.then((s) => {
      this.#exited = true;
      return s;
    });
  }

  /** Records the JSON log lines named in WATCHED (timestamps from the log record). */
  #scan(chunk: string): void {
    const lines = (this.#partial + chunk).split("\n");
    this.#partial = lines.pop() ?? "";
    for (const line of lines) {
      if (!line.startsWith("{")) continue;
      try {
        const rec = JSON.parse(line);
        if (WATCHED.has(rec.msg)) {
          this.events.push({ msg: rec.msg, ts: Date.parse(rec.ts), fields: rec });
        }
      } catch {
        // not a JSON record
      }
    }
  }

  /** The last lines the process logged. */
  get logTail(): string {
    return this.#stderr.slice(-2000);
  }

  /** Peak resident set size in MB (VmHWM); 0 once the process is gone. */
  async peakRssMb(): Promise<number> {
    try {
      const status = await Deno.readTextFile(`/proc/${this.child.pid}/status`);
      return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024;
    } catch {
      return 0;
    }
  }

  /** Polls `check` every 50 ms until it reports done; fails on exit or after --timeout. */
  async waitFor(
    check: () => Promise<{ done: boolean; state: string }>,
  ): Promise<void> {
    const started = performance.now();
    const timeoutMs = Number(args.timeout) * 1000;
    let nextReport = 10_000;
    try {
      while (true) {
        if (this.#exited) throw new Error(`stream exited early: ${this.logTail}`);
        const { done, state } = await check();
        if (done) return;
        const elapsed = performance.now() - started;
        if (elapsed > timeoutMs) {
          throw new Error(`stream did not finish in ${args.timeout} s (${state}): ${this.logTail}`);
        }
        if (elapsed > nextReport) {
          nextReport += 10_000;
          log(`stream: ${state}`);
        }
        await sleep(50);
      }
    } catch (error) {
      if (!this.#exited) this.child.kill("SIGKILL");
      await this.#status;
      await this.#collect;
      children.delete(this.child);
      throw error;
    }
  }

  /** SIGTERM; SIGKILL after `ms` if it has not exited; returns the exit code. */
  async stopWithin(ms: number): Promise<number> {
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => {
      if (!this.#exited) this.child.kill("SIGKILL");
    }, ms);
    const { code } = await this.#status;
    clearTimeout(timer);
    await this.#collect;
    children.delete(this.child);
    return code;
  }

  /** SIGTERM, then waits; throws unless it exits 0. */
  async stop(): Promise<void> {
    this.child.kill("SIGTERM");
    const { code } = await this.#status;
    await this.#collect;
    children.delete(this.child);
    if (code !== 0) throw new Error(`stream exited ${code} after SIGTERM: ${this.logTail}`);
  }
}

async function runOnce(
  cluster: Cluster,
  db: pg.Client,
  recvlogical: string,
  cliEnv: Record<string, string>,
  dataDir: string,
  endLsn: string,
  changes: number,
): Promise<RunResult> {
  const loadBefore = await loadAverage();
  log(`baseline: pg_recvlogical --slot bench_twin --endpos ${endLsn} (load average ${loadBefore})`);
  const baseStart = performance.now();
  const baseSender = new WalsenderCpu(db, "pg_recvlogical");
  await exec(recvlogical, [
    "-d",
    cluster.url(),
    "--slot",
    "bench_twin",
    "--start",
    "-o",
    "proto_version=1",
    "-o",
    "publication_names=cdc_egress",
    "--endpos",
    endLsn,
    "--no-loop",
    "-f",
    "/dev/null",
  ]);
  const baselineSeconds = (performance.now() - baseStart) / 1000;
  const baselineWalsender = await baseSender.stop();
  log(`baseline: ${baselineSeconds.toFixed(2)} s, walsender CPU ${baselineWalsender.toFixed(2)} s`);

  log("ours: cdc-egress stream");
  const prof = args["cpu-prof"];
  const oursStart = performance.now();
  const stream = new StreamProcess(cliEnv, prof ? ["--cpu-prof", `--cpu-prof-dir=${prof}`] : []);
  const oursSender = new WalsenderCpu(db, "cdc-egress/cdc_egress");
  let rss = 0;
  await stream.waitFor(async () => {
    rss = Math.max(rss, await stream.peakRssMb());
    const res = await db.query(
      `SELECT (SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots
                WHERE slot_name = 'cdc_egress') AS caught_up,
              (SELECT confirmed_flush_lsn::text FROM pg_replication_slots
                WHERE slot_name = 'cdc_egress') AS confirmed,
              (SELECT coalesce(sum(row_count), 0)::bigint FROM cdc_registry.file_log
                WHERE file_type = 'streaming') AS rows`,
      [endLsn],
    );
    const rows = Number(res.rows[0].rows);
    return {
      done: res.rows[0].caught_up && rows >= changes,
      state: `slot at ${res.rows[0].confirmed}, ${rows} of ${changes} rows registered`,
    };
  });
  const oursSeconds = (performance.now() - oursStart) / 1000;
  rss = Math.max(rss, await stream.peakRssMb());
  const oursCpu = await cpuSeconds(stream.child.pid);
  const oursWalsender = await oursSender.stop();
  await stream.stop();
  log(
    `ours: ${oursSeconds.toFixed(2)} s, peak RSS ${rss.toFixed(1)} MB, CPU ${
      oursCpu.toFixed(2)
    } s, walsender CPU ${oursWalsender.toFixed(2)} s`,
  );

  const reg = await db.query(
    `SELECT count(*)::int AS files, coalesce(sum(row_count), 0)::bigint AS rows,
            coalesce(sum(byte_size), 0)::bigint AS bytes
       FROM cdc_registry.file_log WHERE file_type = 'streaming'`,
  );
  void dataDir;
  return {
    loadBefore,
    baselineSeconds,
    oursSeconds,
    ratio: oursSeconds / baselineSeconds,
    cpu: { baselineWalsender, oursWalsender, ours: oursCpu },
    peakRssMb: rss,
    rowsRegistered: Number(reg.rows[0].rows),
    files: reg.rows[0].files,
    gzipBytes: Number(reg.rows[0].bytes),
  };
}

/** Starts a cluster for one benchmark, connects, and removes it (and the signal hook) after. */
async function withCluster<T>(
  fn: (cluster: Cluster, db: pg.Client) => Promise<T>,
): Promise<T> {
  log(`starting PostgreSQL ${version}`);
  const cluster = await startCluster({
    version,
    keep: args.keep,
    settings: { max_wal_size: "'8GB'", checkpoint_timeout: "'30min'" },
  });
  const db = new pg.Client({ connectionString: cluster.url() });
  const onSignal = () => {
    log("interrupted: cleaning up");
    for (const child of children) {
      try {
        child.kill("SIGKILL");
      } catch {
        // gone
      }
    }
    cluster.destroy().catch(() => {}).finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    await db.connect();
    return await fn(cluster, db);
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    await db.end().catch(() => {});
    if (args.keep) console.log(`cluster: ${cluster.dir}`);
    await cluster.destroy();
  }
}

/** The environment of a `cdc-egress` run on `cluster` with its own data dir and slot. */
function benchCliEnv(cluster: Cluster, dataDir: string, slot: string): Record<string, string> {
  return {
    CDC_SOURCE_URL: cluster.url(),
    CDC_DATA_DIR: dataDir,
    CDC_SLOT: slot,
    CDC_BATCH_INTERVAL: args.interval!,
    CDC_LOG_FORMAT: "json",
    CDC_METRICS_ADDR: "127.0.0.1:0",
    NO_COLOR: "1",
  };
}

/** The median of the runs by `key` (the lower middle one for an even count). */
function median<T>(runs: T[], key: (r: T) => number): T {
  const sorted = [...runs].sort((a, b) => key(a) - key(b));
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

function printRow(what: string, value: string, target = "", ok?: boolean): void {
  console.log(
    `${what.padEnd(34)} ${value.padStart(14)}   ${target.padEnd(10)} ${
      ok === undefined ? "" : ok ? "ok" : "MISSED"
    }`,
  );
}

const EXPORT_TABLE = "bench_export";
const EXPORT_TARGET_RATIO = 1.2;

interface ExportRun {
  loadBefore: number;
  baselineSeconds: number;
  baselineRows: number;
  baselineGzipBytes: number;
  /** From the stream process's start until its full_reload row is in file_log. */
  oursSeconds: number;
  /** From the "export started" to the "export registered" log line. */
  oursExportSeconds: number;
  ratio: number;
  exportRatio: number;
  initSeconds: number;
  oursRows: number;
  oursGzipBytes: number;
  parts: unknown;
  peakRssMb: number;
  oursCpu: number;
  /** gzip -6 on our own (decompressed) full_reload CSV. */
  oursCsvBytes: number;
  oursCsvGzip6Bytes: number;
}

/** Export: psql \copy | gzip -6 against cdc-egress's initial export of one large table. */
async function benchExport(): Promise<Record<string, unknown>> {
  const psql = await findTool("psql");
  const rows = positiveInt("--export-rows", args["export-rows"]!);
  const workers = positiveInt("--export-workers", args["export-workers"]!);
  return await withCluster(async (cluster, db) => {
    log(`export: creating ${EXPORT_TABLE} with ${rows} rows`);
    await db.query(
      `CREATE TABLE ${EXPORT_TABLE} (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric)`,
    );
    await db.query(
      `INSERT INTO ${EXPORT_TABLE}
       SELECT g, (g * 7919) % 1000003, md5(g::text),
              timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',
              round((g % 100000) / 7.0, 4)
         FROM generate_series(1, $1::bigint) g`,
      [rows],
    );
    await db.query(`VACUUM (FREEZE, ANALYZE) ${EXPORT_TABLE}`);
    const tableBytes = Number(
      (await db.query(`SELECT pg_table_size('${EXPORT_TABLE}')::bigint AS n`)).rows[0].n,
    );
    log(`export: table is ${(tableBytes / 1e6).toFixed(0)} MB`);
    const runs: ExportRun[] = [];
    for (let run = 1; run <= repeat; run++) {
      const r = await exportOnce(cluster, db, psql, run, workers);
      runs.push(r);
      log(
        `export run ${run}: baseline ${r.baselineSeconds.toFixed(2)} s, ours ${
          r.oursSeconds.toFixed(2)
        } s (export alone ${r.oursExportSeconds.toFixed(2)} s), ratio ${r.ratio.toFixed(2)}, RSS ${
          r.peakRssMb.toFixed(0)
        } MB`,
      );
    }
    const m = median(runs, (r) => r.ratio);
    const sizeRatio = m.oursGzipBytes / m.baselineGzipBytes;
    const maxRss = Math.max(...runs.map((r) => r.peakRssMb));
    console.log();
    console.log(
      `export: one table of ${rows} rows (${(tableBytes / 1e6).toFixed(0)} MB), ` +
        `PostgreSQL ${version}, CDC_EXPORT_WORKERS=${workers}` +
        `${
          repeat > 1 ? `, median of ${repeat} runs by ratio` : ""
        }, load average before ${m.loadBefore}`,
    );
    printRow("", "measured", "target");
    printRow("baseline psql \\copy | gzip -6 s", m.baselineSeconds.toFixed(2));
    printRow("ours (stream start→registered) s", m.oursSeconds.toFixed(2));
    printRow(
      "ratio",
      m.ratio.toFixed(2),
      `<= ${EXPORT_TARGET_RATIO}`,
      m.ratio <= EXPORT_TARGET_RATIO,
    );
    printRow("ours, export log lines only s", m.oursExportSeconds.toFixed(2));
    printRow("ratio, export alone", m.exportRatio.toFixed(2));
    printRow("init s (not counted)", m.initSeconds.toFixed(2));
    printRow("our process CPU s", m.oursCpu.toFixed(2));
    printRow("peak RSS MB", maxRss.toFixed(1), `<= ${TARGET_RSS_MB}`, maxRss <= TARGET_RSS_MB);
    printRow("rows, baseline", String(m.baselineRows), String(rows), m.baselineRows === rows);
    printRow("rows, ours", String(m.oursRows), String(rows), m.oursRows === rows);
    printRow("export parts", String(m.parts));
    printRow("gzip bytes, baseline", String(m.baselineGzipBytes));
    printRow("gzip bytes, ours", String(m.oursGzipBytes));
    printRow(
      "size vs baseline gzip -6",
      sizeRatio.toFixed(4),
      `<= ${TARGET_GZIP_RATIO}`,
      sizeRatio <= TARGET_GZIP_RATIO,
    );
    printRow("our CSV bytes", String(m.oursCsvBytes));
    printRow("gzip -6 on our CSV bytes", String(m.oursCsvGzip6Bytes));
    printRow("size vs gzip -6 on our CSV", (m.oursGzipBytes / m.oursCsvGzip6Bytes).toFixed(4));
    return {
      rows,
      tableBytes,
      workers,
      runs,
      median: m,
      sizeVsBaseline: sizeRatio,
      peakRssMb: maxRss,
      targets: { ratio: EXPORT_TARGET_RATIO, rssMb: TARGET_RSS_MB, sizeVsGzip6: TARGET_GZIP_RATIO },
    };
  });
}

async function exportOnce(
  cluster: Cluster,
  db: pg.Client,
  psql: string,
  run: number,
  workers: number,
): Promise<ExportRun> {
  const loadBefore = await loadAverage();
  const out = join(cluster.dir, "baseline.csv.gz");
  log(`export baseline: psql \\copy | gzip -6 (load average ${loadBefore})`);
  const baseStart = performance.now();
  await exec("bash", [
    "-c",
    `set -o pipefail; "$PSQL" -X -q "$URL" -c "\\copy ${EXPORT_TABLE} to stdout csv header" | gzip -6 > "$OUT"`,
  ], { PSQL: psql, URL: cluster.url(), OUT: out });
  const baselineSeconds = (performance.now() - baseStart) / 1000;
  const baselineGzipBytes = (await Deno.stat(out)).size;
  const lines = await exec("bash", ["-c", `gzip -dc "$OUT" | wc -l`], { OUT: out });
  const baselineRows = Number(lines.stdout.trim()) - 1; // less the header
  await Deno.remove(out);
  log(`export baseline: ${baselineSeconds.toFixed(2)} s`);

  // A fresh slot and data dir each run: the stream's first start exports the table.
  const slot = `bench_export_${run}`;
  const dataDir = await Deno.makeTempDir({ prefix: "cdc-bench-export-" });
  try {
    const env = { ...benchCliEnv(cluster, dataDir, slot), CDC_EXPORT_WORKERS: String(workers) };
    const initStart = performance.now();
    await exec(Deno.execPath(), cliArgs(["init"], env), env);
    const initSeconds = (performance.now() - initStart) / 1000;
    log(`export ours: cdc-egress stream (slot ${slot})`);
    const oursStart = performance.now();
    const stream = new StreamProcess(env);
    let rss = 0;
    await stream.waitFor(async () => {
      rss = Math.max(rss, await stream.peakRssMb());
      const res = await db.query(
        `SELECT count(*)::int AS n FROM cdc_registry.file_log
          WHERE slot_name = $1 AND file_type = 'full_reload'`,
        [slot],
      );
      return { done: res.rows[0].n >= 1, state: "exporting" };
    });
    const oursSeconds = (performance.now() - oursStart) / 1000;
    rss = Math.max(rss, await stream.peakRssMb());
    const oursCpu = await cpuSeconds(stream.child.pid);
    // The log line follows the registry commit; give it a moment to arrive.
    for (let i = 0; i < 100 && !stream.events.some((e) => e.msg === "export registered"); i++) {
      await sleep(20);
    }
    await stream.stop();
    const started = stream.events.find((e) => e.msg === "export started");
    const registered = stream.events.find((e) => e.msg === "export registered");
    const oursExportSeconds = started && registered ? (registered.ts - started.ts) / 1000 : NaN;
    const reg = await db.query(
      `SELECT path, row_count::bigint AS rows, byte_size::bigint AS bytes FROM cdc_registry.file_log
        WHERE slot_name = $1 AND file_type = 'full_reload'`,
      [slot],
    );
    const file = reg.rows[0];
    const { gzip6, csv } = await gzip6Bytes([join(dataDir, file.path)]);
    await db.query("SELECT pg_drop_replication_slot($1)", [slot]);
    return {
      loadBefore,
      baselineSeconds,
      baselineRows,
      baselineGzipBytes,
      oursSeconds,
      oursExportSeconds,
      ratio: oursSeconds / baselineSeconds,
      exportRatio: oursExportSeconds / baselineSeconds,
      initSeconds,
      oursRows: Number(file.rows),
      oursGzipBytes: Number(file.bytes),
      parts: registered?.fields.parts ?? null,
      peakRssMb: rss,
      oursCpu,
      oursCsvBytes: csv,
      oursCsvGzip6Bytes: gzip6,
    };
  } finally {
    if (!args.keep) await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
}

const BIGTXN_TABLE = "bench_bigtxn";
const BIGTXN_TARGET_RATIO = 1.5;

interface BigTxnRun {
  loadBefore: number;
  baselineSeconds: number;
  oursSeconds: number;
  ratio: number;
  peakRssMb: number;
  oursCpu: number;
  /** CPU seconds of the walsender during the baseline and during ours (sampled). */
  walsenderCpu: { baseline: number; ours: number };
  rowsRegistered: number;
  files: number;
  slots: Record<string, { spillBytes: number; streamBytes: number; totalBytes: number }>;
}

/** Slot statistics (spill and stream bytes) for the given slots. */
async function slotStats(db: pg.Client, slots: string[]): Promise<BigTxnRun["slots"]> {
  const res = await db.query(
    `SELECT slot_name, spill_bytes::bigint AS spill, stream_bytes::bigint AS stream,
            total_bytes::bigint AS total
       FROM pg_stat_replication_slots WHERE slot_name = ANY($1)`,
    [slots],
  );
  const out: BigTxnRun["slots"] = {};
  for (const r of res.rows) {
    out[r.slot_name] = {
      spillBytes: Number(r.spill),
      streamBytes: Number(r.stream),
      totalBytes: Number(r.total),
    };
  }
  return out;
}

/** One 2M-row transaction: pg_recvlogical (proto 2, streaming) against cdc-egress stream. */
async function benchBigTxn(): Promise<Record<string, unknown>> {
  const recvlogical = await findTool("pg_recvlogical");
  const rows = positiveInt("--bigtxn-rows", args["bigtxn-rows"]!);
  return await withCluster(async (cluster, db) => {
    const dataDir = await Deno.makeTempDir({ prefix: "cdc-bench-bigtxn-" });
    try {
      const slot = "cdc_egress";
      const env = benchCliEnv(cluster, dataDir, slot);
      await db.query(`CREATE TABLE ${BIGTXN_TABLE} (id bigint PRIMARY KEY, v int, s text)`);
      log("bigtxn: cdc-egress init, then stream for the initial export");
      await exec(Deno.execPath(), cliArgs(["init"], env), env);
      const warmUp = new StreamProcess(env);
      await warmUp.waitFor(async () => {
        const res = await db.query(
          `SELECT count(*)::int AS n FROM cdc_registry.file_log WHERE file_type = 'full_reload'`,
        );
        return { done: res.rows[0].n >= 1, state: "exporting" };
      });
      await warmUp.stop();
      await db.query("SELECT pg_create_logical_replication_slot('bench_twin', 'pgoutput')");
      const workMem = (await db.query("SHOW logical_decoding_work_mem")).rows[0]
        .logical_decoding_work_mem;
      log(`bigtxn: one transaction inserting ${rows} rows (logical_decoding_work_mem ${workMem})`);
      const genStart = performance.now();
      await db.query("BEGIN");
      await db.query(
        `INSERT INTO ${BIGTXN_TABLE} SELECT g, g % 1000, 'row ' || g FROM generate_series(1, $1::bigint) g`,
        [rows],
      );
      await db.query("COMMIT");
      const endLsn = (await db.query("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0].l;
      const genSeconds = (performance.now() - genStart) / 1000;
      log(`bigtxn: committed in ${genSeconds.toFixed(1)} s; end LSN ${endLsn}`);

      const pgData = join(cluster.dir, "data");
      const snapshot = join(cluster.dir, "data.bench-snapshot");
      let client = db;
      if (repeat > 1) {
        await db.end();
        await cluster.stopServer();
        await exec("cp", ["-a", pgData, snapshot]);
        await exec("cp", ["-a", dataDir, dataDir + ".snapshot"]);
        await cluster.startServer();
      }
      const runs: BigTxnRun[] = [];
      for (let run = 1; run <= repeat; run++) {
        if (repeat > 1) {
          if (run > 1) {
            await cluster.stopServer();
            await exec("rm", ["-rf", pgData, dataDir]);
            await exec("cp", ["-a", snapshot, pgData]);
            await exec("cp", ["-a", dataDir + ".snapshot", dataDir]);
            await cluster.startServer();
          }
          client = new pg.Client({ connectionString: cluster.url() });
          await client.connect();
        }
        try {
          runs.push(await bigTxnOnce(cluster, client, recvlogical, env, endLsn, rows));
        } finally {
          if (repeat > 1) await client.end();
        }
        const r = runs.at(-1)!;
        log(
          `bigtxn run ${run}: baseline ${r.baselineSeconds.toFixed(2)} s, ours ${
            r.oursSeconds.toFixed(2)
          } s, ratio ${r.ratio.toFixed(2)}, RSS ${r.peakRssMb.toFixed(0)} MB, spill ${
            r.slots[slot]?.spillBytes
          }`,
        );
      }
      if (repeat > 1) await exec("rm", ["-rf", dataDir + ".snapshot"]);
      const m = median(runs, (r) => r.ratio);
      const maxRss = Math.max(...runs.map((r) => r.peakRssMb));
      const ours = m.slots[slot] ?? { spillBytes: NaN, streamBytes: NaN, totalBytes: NaN };
      const twin = m.slots["bench_twin"] ?? { spillBytes: NaN, streamBytes: NaN, totalBytes: NaN };
      const maxSpill = Math.max(...runs.map((r) => r.slots[slot]?.spillBytes ?? NaN));
      console.log();
      console.log(
        `bigtxn: one transaction of ${rows} INSERTs, PostgreSQL ${version}, ` +
          `logical_decoding_work_mem ${workMem}, batch interval ${args.interval}` +
          `${
            repeat > 1 ? `, median of ${repeat} runs by ratio` : ""
          }, load average before ${m.loadBefore}`,
      );
      printRow("", "measured", "target");
      printRow("baseline pg_recvlogical (v2) s", m.baselineSeconds.toFixed(2));
      printRow("ours (stream) s", m.oursSeconds.toFixed(2));
      printRow(
        "ratio",
        m.ratio.toFixed(2),
        `<= ${BIGTXN_TARGET_RATIO}`,
        m.ratio <= BIGTXN_TARGET_RATIO,
      );
      printRow("walsender CPU s, baseline", m.walsenderCpu.baseline.toFixed(2));
      printRow("walsender CPU s, ours", m.walsenderCpu.ours.toFixed(2));
      printRow("our process CPU s", m.oursCpu.toFixed(2));
      printRow("peak RSS MB", maxRss.toFixed(1), `<= ${TARGET_RSS_MB}`, maxRss <= TARGET_RSS_MB);
      printRow("spill bytes, ours", String(maxSpill), "0", maxSpill === 0);
      printRow("stream bytes, ours", String(ours.streamBytes));
      printRow("spill bytes, bench_twin", String(twin.spillBytes));
      printRow("stream bytes, bench_twin", String(twin.streamBytes));
      printRow(
        "rows registered",
        String(m.rowsRegistered),
        String(rows),
        m.rowsRegistered === rows,
      );
      printRow("files", String(m.files));
      return {
        rows,
        endLsn,
        genSeconds,
        logicalDecodingWorkMem: workMem,
        runs,
        median: m,
        peakRssMb: maxRss,
        targets: { ratio: BIGTXN_TARGET_RATIO, rssMb: TARGET_RSS_MB, spillBytes: 0 },
      };
    } finally {
      if (!args.keep) await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    }
  });
}

async function bigTxnOnce(
  cluster: Cluster,
  db: pg.Client,
  recvlogical: string,
  env: Record<string, string>,
  endLsn: string,
  rows: number,
): Promise<BigTxnRun> {
  const loadBefore = await loadAverage();
  log(`bigtxn baseline: pg_recvlogical proto 2 streaming --endpos ${endLsn} (load ${loadBefore})`);
  const baseStart = performance.now();
  const baseSender = new WalsenderCpu(db, "pg_recvlogical");
  await exec(recvlogical, [
    "-d",
    cluster.url(),
    "--slot",
    "bench_twin",
    "--start",
    "-o",
    "proto_version=2",
    "-o",
    "streaming=on",
    "-o",
    "publication_names=cdc_egress",
    "--endpos",
    endLsn,
    "--no-loop",
    "-f",
    "/dev/null",
  ]);
  const baselineSeconds = (performance.now() - baseStart) / 1000;
  const baselineWalsender = await baseSender.stop();
  log(`bigtxn baseline: ${baselineSeconds.toFixed(2)} s`);

  log("bigtxn ours: cdc-egress stream");
  const oursStart = performance.now();
  const stream = new StreamProcess(env);
  const oursSender = new WalsenderCpu(db, "cdc-egress/cdc_egress");
  let rss = 0;
  await stream.waitFor(async () => {
    rss = Math.max(rss, await stream.peakRssMb());
    const res = await db.query(
      `SELECT (SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots
                WHERE slot_name = 'cdc_egress') AS caught_up,
              (SELECT coalesce(sum(row_count), 0)::bigint FROM cdc_registry.file_log
                WHERE file_type = 'streaming') AS rows`,
      [endLsn],
    );
    const n = Number(res.rows[0].rows);
    return { done: res.rows[0].caught_up && n >= rows, state: `${n} of ${rows} rows registered` };
  });
  const oursSeconds = (performance.now() - oursStart) / 1000;
  rss = Math.max(rss, await stream.peakRssMb());
  const oursCpu = await cpuSeconds(stream.child.pid);
  const oursWalsender = await oursSender.stop();
  await stream.stop();
  const reg = await db.query(
    `SELECT count(*)::int AS files, coalesce(sum(row_count), 0)::bigint AS rows
       FROM cdc_registry.file_log WHERE file_type = 'streaming'`,
  );
  return {
    loadBefore,
    baselineSeconds,
    oursSeconds,
    ratio: oursSeconds / baselineSeconds,
    peakRssMb: rss,
    oursCpu,
    walsenderCpu: { baseline: baselineWalsender, ours: oursWalsender },
    rowsRegistered: Number(reg.rows[0].rows),
    files: reg.rows[0].files,
    slots: await slotStats(db, ["cdc_egress", "bench_twin"]),
  };
}

const MAT_TABLE = "bench_mat";

/** One round of the materialize benchmark. */
interface MatRound {
  loadBefore: number;
  duckdbReadCsvSeconds: number;
  oursDuckdbSeconds: number;
  duckdbRatio: number;
  oursDuckdbPeakRssMb: number;
  duckdbEqual: boolean;
  psqlCopySeconds: number;
  oursPostgresSeconds: number;
  postgresRatio: number;
  oursPostgresPeakRssMb: number;
  postgresEqual: boolean;
}

/** Count and sums of the materialized table in a DuckDB file, as text (compared with the source's). */
async function duckdbSums(path: string): Promise<Record<string, string>> {
  const { DuckDBInstance } = await import("@duckdb/node-api");
  const inst = await DuckDBInstance.create(path);
  const conn = await inst.connect();
  try {
    const r = await conn.runAndReadAll(
      `SELECT count(*)::VARCHAR, sum(id)::VARCHAR, sum(n)::VARCHAR, sum(x)::VARCHAR,
              sum(length(t))::VARCHAR FROM public.${MAT_TABLE}`,
    );
    const [n, ids, ns, xs, ts] = r.getRows()[0] as string[];
    return { n, ids, ns, xs, ts };
  } finally {
    conn.closeSync();
    inst.closeSync();
  }
}
const MAT_TARGET_RATIO = 2;

/**
 * Runs the CLI to completion; returns wall seconds and its peak RSS: the
 * kernel's maximum resident set of the whole process (all threads, DuckDB's
 * native ones too) from GNU time's `%M` when /usr/bin/time exists, which
 * also catches a peak in the last moments (DuckDB's checkpoint at close);
 * else VmHWM sampled from /proc every 50 ms.
 */
async function timedCli(
  args: string[],
  env: Record<string, string>,
): Promise<{ seconds: number; peakRssMb: number; stdout: string }> {
  const gnuTime = await Deno.stat("/usr/bin/time").then((s) => s.isFile, () => false);
  const rssFile = gnuTime ? await Deno.makeTempFile({ prefix: "cdc-bench-rss-" }) : "";
  const started = performance.now();
  const child = new Deno.Command(gnuTime ? "/usr/bin/time" : Deno.execPath(), {
    args: gnuTime
      ? ["-f", "%M", "-o", rssFile, Deno.execPath(), ...cliArgs(args, env)]
      : cliArgs(args, env),
    env,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  children.add(child);
  let rss = 0;
  let done = false;
  const sampler = (async () => {
    while (!done && !gnuTime) {
      try {
        const status = await Deno.readTextFile(`/proc/${child.pid}/status`);
        rss = Math.max(rss, Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024);
      } catch {
        // gone
      }
      await sleep(50);
    }
  })();
  const out = await child.output();
  done = true;
  await sampler;
  children.delete(child);
  const seconds = (performance.now() - started) / 1000;
  if (gnuTime) {
    const text = await Deno.readTextFile(rssFile);
    await Deno.remove(rssFile).catch(() => {});
    rss = Number(/(\d+)\s*$/.exec(text)?.[1] ?? 0) / 1024;
  }
  const dec = new TextDecoder();
  if (out.code !== 0) {
    throw new Error(
      `cdc-egress ${args[0]} exited ${out.code}: ${dec.decode(out.stderr).slice(-2000)}`,
    );
  }
  return { seconds, peakRssMb: rss, stdout: dec.decode(out.stdout) };
}

/**
 * materialize: a `--mat-rows` full_reload plus `--mat-changes` streamed
 * changes, into a fresh DuckDB file and a fresh PostgreSQL database, next to
 * DuckDB's own read_csv of the same files and `psql \copy` of the full_reload.
 */
async function benchMaterialize(): Promise<Record<string, unknown>> {
  const psql = await findTool("psql");
  const rows = positiveInt("--mat-rows", args["mat-rows"]!);
  const changes = positiveInt("--mat-changes", args["mat-changes"]!);
  return await withCluster(async (cluster, db) => {
    const dataDir = await Deno.makeTempDir({ prefix: "cdc-bench-mat-" });
    const work = await Deno.makeTempDir({ prefix: "cdc-bench-mat-out-" });
    try {
      log(`materialize: ${MAT_TABLE} with ${rows} rows`);
      await db.query(`CREATE TABLE ${MAT_TABLE} (id bigint PRIMARY KEY, n integer, t text,
                        ts timestamptz, x numeric(12,2))`);
      await db.query(
        `INSERT INTO ${MAT_TABLE} SELECT g, g % 1000, md5(g::text),
           '2026-01-01'::timestamptz + g * interval '1 second', (g % 100000) / 100.0
         FROM generate_series(1, $1) g`,
        [rows],
      );
      const env = {
        ...benchCliEnv(cluster, dataDir, "cdc_egress"),
        CDC_TABLES: `public.${MAT_TABLE}`,
      };
      await exec(Deno.execPath(), cliArgs(["init"], env), env);
      const stream = new StreamProcess(env);
      await stream.waitFor(async () => {
        const r = await db.query(
          "SELECT count(*)::int AS n FROM cdc_registry.file_log WHERE file_type = 'full_reload'",
        );
        return { done: r.rows[0].n >= 1, state: "exporting" };
      });
      // The changes: 70% updates, 20% inserts, 10% deletes, in transactions of 100k.
      log(`materialize: ${changes} changes`);
      const step = 100_000;
      for (let done = 0; done < changes; done += step) {
        const n = Math.min(step, changes - done);
        const u = Math.floor(n * 0.7);
        const i = Math.floor(n * 0.2);
        const d = n - u - i;
        await db.query("BEGIN");
        await db.query(
          `UPDATE ${MAT_TABLE} SET n = n + 1, t = md5(t) WHERE id > $1 AND id <= $1 + $2`,
          [done, u],
        );
        await db.query(
          `INSERT INTO ${MAT_TABLE} SELECT $1 + g, g, md5(g::text), now(), g / 7.0
           FROM generate_series(1, $2) g`,
          [rows + done, i],
        );
        await db.query(`DELETE FROM ${MAT_TABLE} WHERE id > $1 AND id <= $1 + $2`, [
          rows - done - d,
          d,
        ]);
        await db.query("COMMIT");
      }
      const end = (await db.query("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0].l;
      await stream.waitFor(async () => {
        const r = await db.query(
          `SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots
           WHERE slot_name = 'cdc_egress'`,
          [end],
        );
        return { done: Boolean(r.rows[0]?.ok), state: "streaming the changes" };
      });
      await stream.stop();
      const files = await db.query(
        `SELECT path, file_type FROM cdc_registry.file_log WHERE file_type <> 'ddl'
         ORDER BY start_lsn, file_type = 'streaming'`,
      );
      const full = join(dataDir, files.rows.find((f) => f.file_type === "full_reload").path);
      const streaming = files.rows.filter((f) => f.file_type === "streaming").map((f) =>
        join(dataDir, f.path)
      );
      const streamedRows = await db.query(
        "SELECT sum(row_count)::bigint AS n FROM cdc_registry.file_log WHERE file_type = 'streaming'",
      );

      const { DuckDBInstance } = await import("@duckdb/node-api");
      const lit = (p: string) => `'${p.replaceAll("'", "''")}'`;
      const opts = "header = true, quote = '\"', escape = '\"', allow_quoted_nulls = false";
      const copyUrl = cluster.url("bench_copy");
      await db.query("CREATE DATABASE bench_copy");
      const copyTable = `CREATE TABLE ${MAT_TABLE} (id bigint PRIMARY KEY,
        n integer, t text, ts timestamptz, x numeric(12,2))`;
      const sourceSum = (await db.query(
        `SELECT count(*)::int AS n, md5(string_agg(b::text, ',' ORDER BY id)) AS md5
         FROM ${MAT_TABLE} b`,
      )).rows[0];
      const sourceDuck = (await db.query(
        `SELECT count(*)::bigint::text AS n, sum(id)::text AS ids, sum(n)::text AS ns,
                sum(x)::text AS xs, sum(length(t))::text AS ts FROM ${MAT_TABLE}`,
      )).rows[0];

      // Each round runs the four sides one after the other on the same files
      // (fresh target each time): the medians of the rounds are reported.
      const rounds = args.repeat === undefined ? 3 : repeat;
      const runs: MatRound[] = [];
      for (let round = 1; round <= rounds; round++) {
        const load = await loadAverage();
        log(`materialize round ${round}/${rounds} (load average ${load})`);
        // Baseline 1: DuckDB's own read_csv of the same files (the recipe's options).
        const basePath = join(work, "baseline.duckdb");
        await Deno.remove(basePath).catch(() => {});
        const duckStart = performance.now();
        const inst = await DuckDBInstance.create(basePath);
        const conn = await inst.connect();
        await conn.run(`CREATE TABLE full_reload AS SELECT * FROM read_csv(${lit(full)}, ${opts})`);
        await conn.run(
          `CREATE TABLE changes AS SELECT * FROM read_csv([${
            streaming.map(lit).join(", ")
          }], ${opts})`,
        );
        conn.closeSync();
        inst.closeSync();
        const duckSeconds = (performance.now() - duckStart) / 1000;

        // Ours into DuckDB.
        const oursPath = join(work, "ours.duckdb");
        await Deno.remove(oursPath).catch(() => {});
        const duckOurs = await timedCli(["materialize", "--to", `duckdb:${oursPath}`], env);
        const duckCheck = await duckdbSums(oursPath);

        // Baseline 2: psql \copy of the full_reload into a table with the same primary key.
        await exec(psql, ["-X", "-q", copyUrl, "-c", `DROP TABLE IF EXISTS ${MAT_TABLE}`]);
        await exec(psql, ["-X", "-q", copyUrl, "-c", copyTable]);
        const copyStart = performance.now();
        await exec("bash", [
          "-c",
          `"$PSQL" -X -q "$URL" -c "\\copy ${MAT_TABLE} FROM PROGRAM 'gzip -dc $FILE' (FORMAT csv, HEADER)"`,
        ], { PSQL: psql, URL: copyUrl, FILE: full });
        const copySeconds = (performance.now() - copyStart) / 1000;

        // Ours into a fresh PostgreSQL database.
        await db.query("DROP DATABASE IF EXISTS bench_target");
        await db.query("CREATE DATABASE bench_target");
        const pgOurs = await timedCli(["materialize", "--to", cluster.url("bench_target")], env);
        const target = new pg.Client({ connectionString: cluster.url("bench_target") });
        await target.connect();
        const got = (await target.query(
          `SELECT count(*)::int AS n, md5(string_agg(b::text, ',' ORDER BY id)) AS md5
           FROM public.${MAT_TABLE} b`,
        )).rows[0];
        await target.end();
        const run: MatRound = {
          loadBefore: load,
          duckdbReadCsvSeconds: duckSeconds,
          oursDuckdbSeconds: duckOurs.seconds,
          duckdbRatio: duckOurs.seconds / duckSeconds,
          oursDuckdbPeakRssMb: duckOurs.peakRssMb,
          duckdbEqual: JSON.stringify(duckCheck) === JSON.stringify(sourceDuck),
          psqlCopySeconds: copySeconds,
          oursPostgresSeconds: pgOurs.seconds,
          postgresRatio: pgOurs.seconds / copySeconds,
          oursPostgresPeakRssMb: pgOurs.peakRssMb,
          postgresEqual: got.n === sourceSum.n && got.md5 === sourceSum.md5,
        };
        log(
          `round ${round}: read_csv ${duckSeconds.toFixed(2)} s, ours duckdb ${
            duckOurs.seconds.toFixed(2)
          } s (${duckOurs.peakRssMb.toFixed(0)} MB); \\copy ${
            copySeconds.toFixed(2)
          } s, ours postgres ${pgOurs.seconds.toFixed(2)} s (${pgOurs.peakRssMb.toFixed(0)} MB)`,
        );
        runs.push(run);
      }
      const med = (key: (r: MatRound) => number) => key(median(runs, key));
      const result = {
        fullReloadRows: rows,
        streamedChanges: Number(streamedRows.rows[0].n),
        streamingFiles: streaming.length,
        rounds: runs,
        duckdbReadCsvSeconds: med((r) => r.duckdbReadCsvSeconds),
        oursDuckdbSeconds: med((r) => r.oursDuckdbSeconds),
        duckdbRatio: med((r) => r.oursDuckdbSeconds) / med((r) => r.duckdbReadCsvSeconds),
        oursDuckdbPeakRssMb: Math.max(...runs.map((r) => r.oursDuckdbPeakRssMb)),
        psqlCopySeconds: med((r) => r.psqlCopySeconds),
        oursPostgresSeconds: med((r) => r.oursPostgresSeconds),
        postgresRatio: med((r) => r.oursPostgresSeconds) / med((r) => r.psqlCopySeconds),
        oursPostgresPeakRssMb: Math.max(...runs.map((r) => r.oursPostgresPeakRssMb)),
        equal: runs.every((r) => r.duckdbEqual && r.postgresEqual),
      };
      console.log(
        `\nmaterialize: ${rows}-row full_reload + ${result.streamedChanges} changes in ${streaming.length} file(s), medians of ${rounds} interleaved round(s) (peak RSS: the highest)`,
      );
      printRow("DuckDB read_csv of the files s", result.duckdbReadCsvSeconds.toFixed(2));
      printRow("ours --to duckdb: s", result.oursDuckdbSeconds.toFixed(2));
      printRow(
        "  ratio",
        result.duckdbRatio.toFixed(2),
        `<= ${MAT_TARGET_RATIO}`,
        result.duckdbRatio <= MAT_TARGET_RATIO,
      );
      printRow(
        "  peak RSS MB",
        result.oursDuckdbPeakRssMb.toFixed(0),
        `<= ${TARGET_RSS_MB}`,
        result.oursDuckdbPeakRssMb <= TARGET_RSS_MB,
      );
      printRow("psql \\copy of the full_reload s", result.psqlCopySeconds.toFixed(2));
      printRow("ours --to postgres:// s", result.oursPostgresSeconds.toFixed(2));
      printRow(
        "  ratio",
        result.postgresRatio.toFixed(2),
        `<= ${MAT_TARGET_RATIO}`,
        result.postgresRatio <= MAT_TARGET_RATIO,
      );
      printRow(
        "  peak RSS MB",
        result.oursPostgresPeakRssMb.toFixed(0),
        `<= ${TARGET_RSS_MB}`,
        result.oursPostgresPeakRssMb <= TARGET_RSS_MB,
      );
      printRow(
        "targets equal the source",
        runs.map((r) => (r.postgresEqual && r.duckdbEqual ? "yes" : "NO")).join(" "),
        "",
        result.equal,
      );
      return result;
    } finally {
      if (!args.keep) {
        await Deno.remove(dataDir, { recursive: true }).catch(() => {});
        await Deno.remove(work, { recursive: true }).catch(() => {});
      }
    }
  });
}

const WIDE_TARGET_RATE = 500;
const WIDE_TARGET_FDS = 300;
const WIDE_TARGET_REGISTER_S = 20;
const STATUS_TARGET_S = 2;

/** The wide benchmark's table `i` (public.wide_00042). */
function wideTable(i: number): string {
  return `public.wide_${String(i).padStart(5, "0")}`;
}

/** Samples a process's open fds and resident memory from /proc until stopped. */
class ProcSampler {
  peakFds = 0;
  peakRssMb = 0;
  #running = true;
  #loop: Promise<void>;

  constructor(pid: number, everyMs = 100) {
    this.#loop = (async () => {
      while (this.#running) {
        try {
          let fds = 0;
          for await (const _ of Deno.readDir(`/proc/${pid}/fd`)) fds++;
          this.peakFds = Math.max(this.peakFds, fds);
          const status = await Deno.readTextFile(`/proc/${pid}/status`);
          const kb = Math.max(
            Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0),
            Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0),
          );
          this.peakRssMb = Math.max(this.peakRssMb, kb / 1024);
        } catch {
          // the process is gone
        }
        await sleep(everyMs);
      }
    })();
  }

  async stop(): Promise<void> {
    this.#running = false;
    await this.#loop;
  }
}

/**
 * CPU seconds the cluster's server processes used so far: the postmaster
 * and its reaped children (utime, stime, cutime, cstime) plus the live ones.
 */
async function serverCpuSeconds(cluster: Cluster): Promise<number> {
  const pidFile = await Deno.readTextFile(join(cluster.dir, "data", "postmaster.pid"));
  const pid = Number(pidFile.split("\n")[0]);
  const fields = async (p: number) => {
    try {
      const stat = await Deno.readTextFile(`/proc/${p}/stat`);
      return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    } catch {
      return null;
    }
  };
  const own = await fields(pid);
  if (!own) return NaN;
  let ticks = Number(own[11]) + Number(own[12]) + Number(own[13]) + Number(own[14]);
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const f = await fields(Number(e.name));
    if (f && Number(f[1]) === pid) ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks / 100;
}

/** Resets a process's VmHWM (peak RSS) to its current RSS (`clear_refs` 5). */
async function resetPeakRss(pid: number): Promise<boolean> {
  try {
    await Deno.writeTextFile(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

function printExportCpu(
  n: number,
  p: { streamCpuSeconds: number; streamSystemSeconds: number; serverCpuSeconds: number },
  startSeconds: number,
) {
  printRow("stream start → export started s", startSeconds.toFixed(2));
  printRow("export CPU ms/table, stream", (p.streamCpuSeconds * 1000 / n).toFixed(2));
  printRow("  of which in the kernel", (p.streamSystemSeconds * 1000 / n).toFixed(2));
  printRow("export CPU ms/table, server", (p.serverCpuSeconds * 1000 / n).toFixed(2));
}

/** Parses `90s`, `5m`, `1500ms` (the CLI's interval syntax, enough for the bench). */
function durationMs(text: string): number {
  const m = /^(\d+)(ms|s|m)$/.exec(text);
  if (!m) fail(`duration ${text}: expected e.g. 30s, 2m or 500ms`);
  return Number(m[1]) * (m[2] === "ms" ? 1 : m[2] === "s" ? 1000 : 60_000);
}

/**
 * Wide: `--tables` one-row tables. Measures `init`, the initial export rate,
 * then one change in each table in one transaction with `stream` under
 * `ulimit -n --wide-nofile`: its peak RSS and open fds while the N batches
 * are open, and the time from the interval tick (commit + interval) until
 * all N batches are registered; last, `status` over `--status-rows`
 * synthetic file_log rows.
 */
async function benchWide(): Promise<Record<string, unknown>> {
  const n = positiveInt("--tables", args.tables!);
  const nofile = positiveInt("--wide-nofile", args["wide-nofile"]!);
  const statusRows = positiveInt("--status-rows", args["status-rows"]!);
  const intervalMs = durationMs(args["wide-interval"]!);
  return await withCluster(async (cluster, db) => {
    log(`wide: creating ${n} one-row tables`);
    const createStart = performance.now();
    for (let i = 0; i < n; i += 250) {
      const sql: string[] = [];
      for (let k = i; k < Math.min(n, i + 250); k++) {
        const t = wideTable(k);
        sql.push(`CREATE TABLE ${t} (id int PRIMARY KEY, v text);
                  INSERT INTO ${t} VALUES (1, 'first row of ${t}');`);
      }
      await db.query(sql.join("\n"));
    }
    log(`wide: created in ${((performance.now() - createStart) / 1000).toFixed(1)} s`);
    const dataDir = await Deno.makeTempDir({ prefix: "cdc-bench-wide-" });
    const result: Record<string, unknown> = { tables: n, nofile, intervalMs, statusRows };
    try {
      const env = {
        ...benchCliEnv(cluster, dataDir, "cdc_egress"),
        CDC_BATCH_INTERVAL: `${intervalMs}ms`,
      };
      const loadBefore = await loadAverage();
      const initStart = performance.now();
      const init = await exec(Deno.execPath(), cliArgs(["init"], env), env);
      const initSeconds = (performance.now() - initStart) / 1000;
      const published = Number(/(\d+) table\(s\)/.exec(init.stdout)?.[1] ?? NaN);
      log(`wide: init ${initSeconds.toFixed(2)} s (${published} tables published)`);
      Object.assign(result, { loadBefore, initSeconds, published });

      log(`wide: stream under ulimit -n ${nofile}: initial export`);
      const serverCpuBefore = await serverCpuSeconds(cluster);
      const streamStart = performance.now();
      const streamStartWall = Date.now();
      const prof = args["cpu-prof"];
      const stream = new StreamProcess(
        env,
        prof ? ["--cpu-prof", `--cpu-prof-dir=${prof}`] : [],
        nofile,
      );
      let sampler = new ProcSampler(stream.child.pid);
      const count = async (type: string) =>
        Number(
          (await db.query(
            `SELECT count(*)::int AS n FROM cdc_registry.file_log
             WHERE slot_name = 'cdc_egress' AND file_type = $1`,
            [type],
          )).rows[0].n,
        );
      // The stream's log first (a count over the registry every 50 ms was
      // a tenth of the server's CPU in this phase), then the registry.
      await stream.waitFor(async () => {
        const logged = stream.events.filter((e) => e.msg === "export registered").length;
        if (logged < n) return { done: false, state: `${logged} of ${n} tables exported` };
        const done = await count("full_reload");
        return { done: done >= n, state: `${done} of ${n} tables exported` };
      });
      const exportWall = (performance.now() - streamStart) / 1000;
      const started = stream.events.find((e) => e.msg === "export started");
      for (
        let i = 0;
        i < 100 && stream.events.filter((e) => e.msg === "export registered").length < n;
        i++
      ) {
        await sleep(20);
      }
      const regs = stream.events.filter((e) => e.msg === "export registered");
      const lastReg = Math.max(...regs.map((e) => e.ts));
      const exportSeconds = started ? (lastReg - started.ts) / 1000 : NaN;
      const exportRate = n / exportSeconds;
      await sampler.stop();
      const exportPhase = {
        peakRssMb: sampler.peakRssMb,
        peakFds: sampler.peakFds,
        // CPU per table, ours and the server's: what the figure costs whatever the load.
        streamCpuSeconds: await cpuSeconds(stream.child.pid),
        // Of which in the kernel (file system calls mostly).
        streamSystemSeconds: await cpuSeconds(stream.child.pid, "system"),
        serverCpuSeconds: await serverCpuSeconds(cluster) - serverCpuBefore,
      };
      log(
        `wide: exported ${n} tables in ${exportSeconds.toFixed(2)} s (log lines), ` +
          `${exportRate.toFixed(0)} tables/s; stream start→all registered ${
            exportWall.toFixed(2)
          } s; CPU ms per table: stream ${
            (exportPhase.streamCpuSeconds * 1000 / n).toFixed(2)
          } (start-up included), server ${(exportPhase.serverCpuSeconds * 1000 / n).toFixed(2)}`,
      );
      // Start-up, the search for work and the snapshot, before the first table.
      const startSeconds = started ? (started.ts - streamStartWall) / 1000 : NaN;
      Object.assign(result, {
        exportSeconds,
        exportRate,
        exportWallSeconds: exportWall,
        startToExportStartedSeconds: startSeconds,
        exportPhase,
      });

      if (args["wide-export-only"]) {
        await stream.stopWithin(60_000);
        console.log();
        printRow("init s", initSeconds.toFixed(2));
        printRow(
          "initial export tables/s",
          exportRate.toFixed(0),
          `>= ${WIDE_TARGET_RATE}`,
          exportRate >= WIDE_TARGET_RATE,
        );
        printRow("export peak RSS MB", exportPhase.peakRssMb.toFixed(1));
        printRow("export peak fds", String(exportPhase.peakFds));
        printExportCpu(n, exportPhase, startSeconds);
        return result;
      }
      // One change in each table, in one transaction: all N batches open in one interval.
      await sleep(1000);
      const peakReset = await resetPeakRss(stream.child.pid);
      sampler = new ProcSampler(stream.child.pid);
      const before = stream.events.length;
      log(`wide: one change in each of ${n} tables (interval ${intervalMs} ms)`);
      // In transactions of 500 tables: one transaction over all of them would
      // need more locks than the server's lock table holds.
      let firstCommitAt = 0;
      for (let i = 0; i < n; i += 500) {
        await db.query(`DO $$ BEGIN
          FOR i IN ${i}..${Math.min(n, i + 500) - 1} LOOP
            EXECUTE format('UPDATE public.%I SET v = v || %L WHERE id = 1',
                           'wide_' || lpad(i::text, 5, '0'), '+');
          END LOOP; END $$`);
        if (i === 0) firstCommitAt = performance.now();
      }
      const committedAt = performance.now();
      // The first batch is due an interval after the first commit: the time
      // to register all of them counts from there (the changes took
      // `changesSeconds` to commit).
      const tickAt = firstCommitAt + intervalMs;
      const changesSeconds = (committedAt - firstCommitAt) / 1000;
      let registered = 0;
      let alive = true;
      const deadline = tickAt + 180_000;
      while (performance.now() < deadline) {
        registered = await count("streaming");
        if (registered >= n) break;
        try {
          await Deno.stat(`/proc/${stream.child.pid}/status`);
        } catch {
          alive = false;
          break;
        }
        await sleep(100);
      }
      const allAt = performance.now();
      await sampler.stop();
      const batchLines = stream.events.slice(before).filter((e) => e.msg === "batch registered");
      const flushMs = Math.max(0, ...batchLines.map((e) => Number(e.fields.ms ?? 0)));
      const tickToAll = registered >= n ? (allAt - tickAt) / 1000 : NaN;
      const emfile = (stream.logTail.match(/Too many open files/g) ?? []).length;
      log(
        `wide: ${registered} of ${n} batches registered; tick→all ${tickToAll.toFixed(2)} s ` +
          `(changes committed over ${changesSeconds.toFixed(1)} s), ` +
          `peak RSS ${sampler.peakRssMb.toFixed(0)} MB, peak fds ${sampler.peakFds}`,
      );
      Object.assign(result, {
        batches: {
          registered,
          changesSeconds,
          tickToAllSeconds: tickToAll,
          flushMs,
          peakRssMb: sampler.peakRssMb,
          peakRssReset: peakReset,
          peakFds: sampler.peakFds,
          streamAlive: alive,
          emfileInLogTail: emfile,
        },
      });
      const stopCode = await stream.stopWithin(60_000);
      if (stopCode !== 0) log(`wide: stream exited ${stopCode} after SIGTERM: ${stream.logTail}`);
      (result.batches as Record<string, unknown>).stopExitCode = stopCode;

      log(`wide: ${statusRows} synthetic file_log rows, then status`);
      const per = Math.ceil(statusRows / n);
      await db.query(
        `INSERT INTO cdc_registry.file_log (slot_name, schema_name, table_name, table_dir,
           relation_oid, batch_ts, path, file_type, start_lsn, end_lsn, start_seq, end_seq,
           row_count, byte_size, sha256, has_ddl)
         SELECT s.slot_name, s.schema_name, s.table_name, s.table_dir, s.relation_oid, b.ts,
                s.table_dir || '/' || b.ts || '/streaming.csv.gz', 'streaming',
                '0/1000000'::pg_lsn + g * 4096, '0/1000000'::pg_lsn + g * 4096 + 100, 0, 9,
                10, 1000, md5(s.table_name || g), false
         FROM (SELECT * FROM cdc_registry.table_state WHERE slot_name = 'cdc_egress'
               ORDER BY relation_oid) s
           CROSS JOIN generate_series(1, $1::int) g
           CROSS JOIN LATERAL (SELECT to_char(timestamp '2020-01-01' + g * interval '5 minutes',
                                              'YYYYMMDD"T"HH24MISS".000Z"') AS ts) b
         LIMIT $2`,
        [per, statusRows],
      );
      await db.query("ANALYZE cdc_registry.file_log");
      const fileRows = await count("streaming") + await count("full_reload");
      const statusRuns: number[] = [];
      for (const extra of [[], ["--json"], []]) {
        const t0 = performance.now();
        await exec(Deno.execPath(), cliArgs(["status", ...extra], env), env);
        statusRuns.push((performance.now() - t0) / 1000);
      }
      const statusSeconds = Math.max(statusRuns[0], statusRuns[2]);
      const statusJsonSeconds = statusRuns[1];
      Object.assign(result, { fileRows, statusSeconds, statusJsonSeconds });

      console.log();
      console.log(
        `wide: ${n} one-row tables, PostgreSQL ${version}, stream under ulimit -n ${nofile}, ` +
          `interval ${intervalMs} ms, load average before ${loadBefore}`,
      );
      const b = result.batches as Record<string, number>;
      printRow("", "measured", "target");
      printRow("init s", initSeconds.toFixed(2));
      printRow(
        "initial export tables/s",
        exportRate.toFixed(0),
        `>= ${WIDE_TARGET_RATE}`,
        exportRate >= WIDE_TARGET_RATE,
      );
      printRow("export s (log lines)", exportSeconds.toFixed(2));
      printRow("export peak RSS MB", exportPhase.peakRssMb.toFixed(1));
      printRow("export peak fds", String(exportPhase.peakFds));
      printExportCpu(n, exportPhase, startSeconds);
      printRow("batches registered", `${registered}/${n}`, String(n), registered === n);
      printRow(
        "tick → all registered s",
        tickToAll.toFixed(2),
        `<= ${WIDE_TARGET_REGISTER_S}`,
        tickToAll <= WIDE_TARGET_REGISTER_S,
      );
      printRow(
        "peak RSS MB, N batches open",
        b.peakRssMb.toFixed(1),
        `<= ${TARGET_RSS_MB}`,
        b.peakRssMb <= TARGET_RSS_MB,
      );
      printRow(
        "peak open fds, N batches open",
        String(b.peakFds),
        `<= ${WIDE_TARGET_FDS}`,
        b.peakFds <= WIDE_TARGET_FDS,
      );
      printRow("EMFILE lines in log tail", String(emfile), "0", emfile === 0);
      printRow(
        `status s (${fileRows} file_log rows)`,
        statusSeconds.toFixed(2),
        `< ${STATUS_TARGET_S}`,
        statusSeconds < STATUS_TARGET_S,
      );
      printRow(
        "status --json s",
        statusJsonSeconds.toFixed(2),
        `< ${STATUS_TARGET_S}`,
        statusJsonSeconds < STATUS_TARGET_S,
      );
      result.targets = {
        exportRate: WIDE_TARGET_RATE,
        fds: WIDE_TARGET_FDS,
        rssMb: TARGET_RSS_MB,
        registerSeconds: WIDE_TARGET_REGISTER_S,
        statusSeconds: STATUS_TARGET_S,
      };
      return result;
    } finally {
      if (!args.keep) await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    }
  });
}

const BENCHMARKS: Record<string, () => Promise<Record<string, unknown>>> = {
  backlog: benchBacklog,
  export: benchExport,
  bigtxn: benchBigTxn,
  materialize: benchMaterialize,
  wide: benchWide,
  s3: () =>
    benchS3({
      version,
      exportRows: positiveInt("--export-rows", args["export-rows"]!),
      changes: changesWanted,
      interval: args.interval!,
      timeoutS: positiveInt("--timeout", args.timeout!),
      log,
      printRow,
    }),
};

async function main(): Promise<void> {
  const only = args.only!.split(",").map((s) => s.trim()).filter(Boolean);
  for (const name of only) {
    if (!(name in BENCHMARKS)) {
      fail(`--only ${name}: expected some of ${Object.keys(BENCHMARKS).join(",")}`);
    }
  }
  // Keep the other benchmarks' last results when running only some of them.
  let previous: Record<string, unknown> = {};
  try {
    const old = JSON.parse(await Deno.readTextFile(RESULTS));
    if (old && typeof old === "object" && "benchmarks" in old) previous = old.benchmarks;
  } catch {
    // none yet
  }
  const benchmarks: Record<string, unknown> = { ...previous };
  for (const name of only) {
    const loadBefore = await loadAverage();
    const result = await BENCHMARKS[name]();
    benchmarks[name] = {
      date: new Date().toISOString(),
      postgres: version,
      deno: Deno.version.deno,
      cpus: navigator.hardwareConcurrency,
      loadAverageBefore: loadBefore,
      loadAverageAfter: await loadAverage(),
      ...result,
    };
    await Deno.mkdir(dirname(RESULTS), { recursive: true });
    await Deno.writeTextFile(
      RESULTS,
      JSON.stringify({ date: new Date().toISOString(), benchmarks }, null, 2) + "\n",
    );
  }
  console.log(`\nload average now ${await loadAverage()} (${navigator.hardwareConcurrency} CPUs)`);
  console.log(`results: ${RESULTS}`);
}

if (import.meta.main) {
  try {
    await main();
  } catch (error) {
    console.error(`bench: ${error instanceof Error ? error.message : error}`);
    Deno.exit(1);
  }
}
