/**
 * One integration-test world: a fresh cluster, a database client, a data
 * dir, the CLI environment, and helpers to run `init` and `stream` and wait
 * until the stream has registered everything written so far.
 *
 * `CDC_TEST_REGISTRY=separate` puts the registry in a second cluster
 * (`--registry-url`), so the same tests cover both layouts; `registry` is
 * then a client of that cluster, else the source client itself.
 */

// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { type Cluster, type PgMajor, startCluster } from "../../scripts/embedded_postgres.ts";
import { CliProcess, runCli, waitFor } from "./cli.ts";
import { liveRows, replayedRows } from "./replay_check.ts";
import { S3Server } from "./s3_server.ts";

/** A cluster plus what a test needs around it. */
export interface StreamEnv {
  cluster: Cluster;
  /** Admin client; a fault that restarts PostgreSQL replaces it. */
  db: pg.Client;
  /** The registry's cluster: `cluster` unless the registry is separate. */
  registryCluster: Cluster;
  /** A client of the registry database (`db` unless the registry is separate). */
  registry: pg.Client;
  /** Whether the registry is in a second cluster. */
  separateRegistry: boolean;
  /** Replaces `registry` with a new connection (after the registry server restarted). */
  reconnectRegistry(): Promise<void>;
  dataDir: string;
  env: Record<string, string>;
  /** Runs `init`; throws with its stderr unless it exits 0. */
  init(): Promise<void>;
  /** Starts `stream` (extra env merged in). */
  stream(extra?: Record<string, string>): CliProcess;
  /** Waits until the slot's confirmed LSN reaches the current WAL insert position. */
  caughtUp(timeoutMs?: number): Promise<void>;
  /** Asserts replay of the files equals the live table. */
  assertReplayEquals(schema: string, table: string): Promise<void>;
  /**
   * With `CDC_TEST_STORAGE=s3`: the s3rver holding the files (the data dir is
   * `s3://cdc/data`, `dataDir` a mirror of it that {@linkcode syncFiles}
   * refreshes, `spoolDir` the stream's spool); null with local files.
   */
  s3: S3Server | null;
  spoolDir: string | null;
  /** Makes `dataDir` hold exactly the bucket's objects (a no-op with local files). */
  syncFiles(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Whether `CDC_TEST_REGISTRY=separate` asks for the registry in a second cluster. */
export function separateRegistryRequested(): boolean {
  const v = Deno.env.get("CDC_TEST_REGISTRY") ?? "source";
  if (v !== "source" && v !== "separate") {
    throw new RangeError(`Cannot use CDC_TEST_REGISTRY="${v}": expected source or separate`);
  }
  return v === "separate";
}

/** Whether `CDC_TEST_STORAGE=s3` asks for the files in a bucket (s3rver) instead of a directory. */
export function s3StorageRequested(): boolean {
  const v = Deno.env.get("CDC_TEST_STORAGE") ?? "local";
  if (v !== "local" && v !== "s3") {
    throw new RangeError(`Cannot use CDC_TEST_STORAGE="${v}": expected local or s3`);
  }
  return v === "s3";
}

/** " (registry separate)" in test names when the registry is in a second cluster. */
export function layoutSuffix(): string {
  return separateRegistryRequested() ? ", registry separate" : "";
}

/** Starts a small cluster for a registry of its own. */
export function startRegistryCluster(version: PgMajor): Promise<Cluster> {
  return startCluster({ version, settings: { shared_buffers: "32MB", wal_level: "replica" } });
}

/** Starts a cluster of `version` with a client and a temp data dir. */
export async function streamEnv(
  version: PgMajor,
  settings: Record<string, string | number> = {},
  options: { separateRegistry?: boolean; s3?: boolean } = {},
): Promise<StreamEnv> {
  const separate = options.separateRegistry ?? separateRegistryRequested();
  const s3 = (options.s3 ?? s3StorageRequested()) ? await S3Server.start(["cdc"]) : null;
  const cluster = await startCluster({ version, settings });
  const registryCluster = separate ? await startRegistryCluster(version) : cluster;
  const db = new pg.Client({ connectionString: cluster.url() });
  await db.connect();
  // Errors of a registry that a test restarts must not crash the test process.
  db.on("error", () => {});
  let registry = db;
  if (separate) {
    registry = new pg.Client({ connectionString: registryCluster.url() });
    registry.on("error", () => {});
    await registry.connect();
  }
  const dataDir = await Deno.makeTempDir({ prefix: "cdc-data-" });
  const env: Record<string, string> = {
    ...(separate ? { CDC_REGISTRY_URL: registryCluster.url() } : {}),
    CDC_SOURCE_URL: cluster.url(),
    CDC_DATA_DIR: dataDir,
    CDC_BATCH_INTERVAL: "1s",
    // Tests run in parallel: let each stream pick a free port.
    CDC_METRICS_ADDR: "127.0.0.1:0",
  };
  const spoolDir = s3 ? await Deno.makeTempDir({ prefix: "cdc-spool-" }) : null;
  if (s3) Object.assign(env, s3.env(), { CDC_DATA_DIR: "s3://cdc/data", CDC_SPOOL_DIR: spoolDir });
  const processes: CliProcess[] = [];
  const world: StreamEnv = {
    cluster,
    db,
    registryCluster,
    // The source's client when the registry is the source: a fault that
    // restarts PostgreSQL replaces `db`, and with it this.
    get registry() {
      return separate ? registry : world.db;
    },
    separateRegistry: separate,
    async reconnectRegistry() {
      if (!separate) throw new Error("the registry is the source: reconnect db instead");
      await registry.end().catch(() => {});
      const c = new pg.Client({ connectionString: registryCluster.url() });
      c.on("error", () => {});
      await c.connect();
      registry = c;
    },
    dataDir,
    env,
    s3,
    spoolDir,
    async syncFiles() {
      if (s3) await s3.mirror("cdc", "data", dataDir);
    },
    async init() {
      const r = await runCli(["init"], env);
      if (r.code !== 0) throw new Error(`init failed (${r.code}): ${r.stderr}${r.stdout}`);
    },
    stream(extra = {}) {
      const p = new CliProcess(["stream"], { ...env, ...extra });
      processes.push(p);
      return p;
    },
    async caughtUp(timeoutMs = 90_000) {
      // The insert position, not pg_current_wal_lsn(): with synchronous_commit
      // off the write position can lag behind commits that already returned.
      const target =
        (await world.db.query("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0].l;
      await waitFor(
        `the slot to confirm ${target}`,
        async () =>
          (await world.db.query(
            `SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots
             WHERE slot_name = 'cdc_egress'`,
            [target],
          )).rows[0]?.ok,
        timeoutMs,
      );
      // Exports are not covered by the slot position: wait until every
      // published table (a source question) has a registered export and
      // none is pending (registry questions).
      await waitFor(
        "every published table to be exported",
        async () => {
          const published = (await world.db.query(
            `SELECT to_regclass(format('%I.%I', schemaname, tablename))::oid::int8 AS oid
             FROM pg_publication_tables
             WHERE pubname = 'cdc_egress' AND schemaname <> 'cdc_registry'`,
          )).rows;
          return (await world.registry.query(
            `SELECT NOT EXISTS (SELECT 1 FROM cdc_registry.reload_operations
                                WHERE state IN ('requested', 'exporting'))
                AND NOT EXISTS (
                  SELECT 1 FROM unnest($1::oid[]) AS p(oid)
                  WHERE NOT EXISTS (SELECT 1 FROM cdc_registry.table_state s
                                    WHERE s.relation_oid = p.oid
                                      AND (s.reload_lsn IS NOT NULL OR s.mode = 'dropped'))) AS ok`,
            [published.map((r) => r.oid)],
          )).rows[0]?.ok;
        },
        timeoutMs,
      );
      await world.syncFiles();
    },
    async assertReplayEquals(schema, table) {
      await world.syncFiles();
      const replayed = await replayedRows(
        world.registry,
        dataDir,
        schema,
        table,
        "cdc_egress",
        "newest",
        world.db,
      );
      const live = await liveRows(world.db, schema, table);
      if (JSON.stringify(replayed) !== JSON.stringify(live)) {
        const r = new Set(replayed);
        const l = new Set(live);
        const missing = live.filter((x) => !r.has(x)).slice(0, 3);
        const extra = replayed.filter((x) => !l.has(x)).slice(0, 3);
        throw new Error(
          `Replay of ${schema}.${table} differs: ${replayed.length} rows replayed, ${live.length} live; missing ${
            JSON.stringify(missing)
          }; extra ${JSON.stringify(extra)}`,
        );
      }
    },
    async [Symbol.asyncDispose]() {
      for (const p of processes) await p.stop("SIGKILL");
      await world.db.end().catch(() => {});
      if (separate) {
        await world.registry.end().catch(() => {});
        await registryCluster.destroy();
      }
      await cluster.destroy();
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
      if (spoolDir) await Deno.remove(spoolDir, { recursive: true }).catch(() => {});
      await s3?.stop();
    },
  };
  return world;
}
