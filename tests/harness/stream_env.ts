/**
 * One integration-test world: a fresh cluster, a database client, a data
 * dir, the CLI environment, and helpers to run `init` and `stream` and wait
 * until the stream has registered everything written so far.
 */

// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { type Cluster, type PgMajor, startCluster } from "../../scripts/embedded_postgres.ts";
import { CliProcess, runCli, waitFor } from "./cli.ts";
import { liveRows, replayedRows } from "./replay_check.ts";

/** A cluster plus what a test needs around it. */
export interface StreamEnv {
  cluster: Cluster;
  /** Admin client; a fault that restarts PostgreSQL replaces it. */
  db: pg.Client;
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
  [Symbol.asyncDispose](): Promise<void>;
}

/** Starts a cluster of `version` with a client and a temp data dir. */
export async function streamEnv(
  version: PgMajor,
  settings: Record<string, string | number> = {},
): Promise<StreamEnv> {
  const cluster = await startCluster({ version, settings });
  const db = new pg.Client({ connectionString: cluster.url() });
  await db.connect();
  const dataDir = await Deno.makeTempDir({ prefix: "cdc-data-" });
  const env: Record<string, string> = {
    CDC_SOURCE_URL: cluster.url(),
    CDC_DATA_DIR: dataDir,
    CDC_BATCH_INTERVAL: "1s",
    // Tests run in parallel: let each stream pick a free port.
    CDC_METRICS_ADDR: "127.0.0.1:0",
  };
  const processes: CliProcess[] = [];
  const world: StreamEnv = {
    cluster,
    db,
    dataDir,
    env,
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
      // published table has a registered export and none is pending.
      await waitFor(
        "every published table to be exported",
        async () =>
          (await world.db.query(
            `SELECT NOT EXISTS (SELECT 1 FROM cdc_registry.reload_operations
                                WHERE state IN ('requested', 'exporting'))
                AND NOT EXISTS (
                  SELECT 1 FROM pg_publication_tables p WHERE p.pubname = 'cdc_egress'
                    AND p.schemaname <> 'cdc_registry'
                    AND NOT EXISTS (SELECT 1 FROM cdc_registry.table_state s
                                    WHERE s.schema_name = p.schemaname
                                      AND s.table_name = p.tablename
                                      AND (s.reload_lsn IS NOT NULL OR s.mode = 'dropped'))) AS ok`,
          )).rows[0]?.ok,
        timeoutMs,
      );
    },
    async assertReplayEquals(schema, table) {
      const replayed = await replayedRows(world.db, dataDir, schema, table);
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
      await cluster.destroy();
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    },
  };
  return world;
}
