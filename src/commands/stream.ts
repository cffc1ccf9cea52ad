/**
 * `cdc-egress stream`: the long-running service. Checks everything that can
 * be checked before touching the slot, repairs the data dir after a crash,
 * then runs the pipeline until SIGTERM/SIGINT, when it flushes, registers,
 * acknowledges and returns.
 */

import { join, resolve } from "node:path";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import type { Config } from "../config.ts";
import { CdcError } from "../errors.ts";
import { Logger } from "../log.ts";
import { formatLsn, type Lsn, parseLsn, ZERO_LSN } from "../lsn.ts";
import { recoverDataDir } from "../pipeline/recovery.ts";
import { SchemaLookup } from "../pipeline/relation_catalog.ts";
import { ReloadCoordinator } from "../pipeline/reload_coordinator.ts";
import { StreamPipeline } from "../pipeline/stream_pipeline.ts";
import { Registry, REGISTRY_APPLICATION_NAME } from "../registry/registry.ts";
import { connect, redact } from "../source/connect.ts";
import { classifyFailure, type FailureClass, retryDelayMs } from "../source/retry_policy.ts";
import { StreamMetrics } from "../observe/metrics.ts";
import { SlotMonitor } from "../observe/slot_monitor.ts";
import { type ObserveServer, serveObservability } from "../observe/http_server.ts";
import { ReplicationStream } from "../source/replication_stream.ts";
import { checkServer } from "../source/server_check.ts";
import { qualifiedName, quoteIdent, selectTables } from "../source/table_selection.ts";
import { DIR_MODE } from "../write/atomic_file.ts";

/** Makes sure the data dir exists, is a directory and is writable. */
export async function prepareDataDir(dataDir: string): Promise<string> {
  const dir = resolve(dataDir);
  try {
    const info = await Deno.stat(dir);
    if (!info.isDirectory) {
      throw new CdcError("data_dir", `Cannot use data dir "${dataDir}": not a directory`);
    }
  } catch (error) {
    if (error instanceof CdcError) throw error;
    if (!(error instanceof Deno.errors.NotFound)) {
      throw new CdcError(
        "data_dir",
        `Cannot use data dir "${dataDir}": ${(error as Error).message.split(":")[0]}`,
      );
    }
    try {
      await Deno.mkdir(dir, { recursive: true, mode: DIR_MODE });
    } catch (e) {
      throw new CdcError(
        "data_dir",
        `Cannot create data dir "${dataDir}": ${(e as Error).message}`,
      );
    }
  }
  const probe = join(dir, `.tmp-probe-${crypto.randomUUID()}`);
  try {
    await Deno.writeTextFile(probe, "");
    // The slot's running stream may have taken it for a leftover and removed it.
    await Deno.remove(probe).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
  } catch (error) {
    throw new CdcError(
      "data_dir",
      `Cannot write to data dir "${dataDir}": ${(error as Error).message.split(":")[0]}`,
    );
  }
  return dir;
}

async function slotState(source: pg.Client, slot: string, publication: string): Promise<Lsn> {
  const res = await source.query(
    `SELECT confirmed_flush_lsn::text AS lsn, active_pid FROM pg_replication_slots
     WHERE slot_name = $1`,
    [slot],
  );
  if (res.rowCount === 0) {
    throw new CdcError(
      "not_initialized",
      `Cannot stream: replication slot "${slot}" does not exist; run "cdc-egress init" first`,
    );
  }
  if (res.rows[0].active_pid) {
    throw new CdcError(
      "slot_active",
      `Cannot stream from slot "${slot}": it is active in process ${res.rows[0].active_pid}`,
    );
  }
  const pub = await source.query("SELECT 1 FROM pg_publication WHERE pubname = $1", [publication]);
  if (pub.rowCount === 0) {
    throw new CdcError(
      "not_initialized",
      `Cannot stream: publication "${publication}" does not exist; run "cdc-egress init" first`,
    );
  }
  return res.rows[0].lsn ? parseLsn(res.rows[0].lsn) : ZERO_LSN;
}

/**
 * Adds a table created while streaming to the publication when the
 * `--tables`/`--exclude` patterns select it; the reload coordinator then
 * exports it and it streams from there.
 */
async function publishNewTable(
  source: pg.Client,
  config: Config,
  schema: string,
  table: string,
  logger: Logger,
): Promise<void> {
  const selected = await selectTables(source, config.tables, config.exclude);
  const t = selected.find((x) => x.schema === schema && x.table === table);
  if (!t) return;
  const res = await source.query(
    `SELECT c.relreplident <> 'n' AND (c.relreplident <> 'd' OR EXISTS (
              SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)) AS ok,
            EXISTS (SELECT 1 FROM pg_publication_tables p WHERE p.pubname = $2
                      AND p.schemaname = $3 AND p.tablename = $4) AS published
     FROM pg_class c WHERE c.oid = $1`,
    [t.oid, config.publication, schema, table],
  );
  if (!res.rows[0] || res.rows[0].published) return;
  if (!res.rows[0].ok) {
    logger.warn("new table has no replica identity; not published", {
      table: `${schema}.${table}`,
      fix: `ALTER TABLE ${qualifiedName(t)} REPLICA IDENTITY FULL; then run cdc-egress init`,
    });
    return;
  }
  await source.query(
    `ALTER PUBLICATION ${quoteIdent(config.publication)} ADD TABLE ${qualifiedName(t)}`,
  );
  logger.info("new table added to the publication", { table: `${schema}.${table}` });
}

/** Shared by the sessions of one `stream` process. */
interface StreamContext {
  config: Config;
  dataDir: string;
  logger: Logger;
  metrics: StreamMetrics;
  monitor: SlotMonitor;
  /** Called once the slot is ours and replication runs. */
  onStreaming: (pipeline: StreamPipeline) => void;
}

/**
 * Runs `stream` until a signal asks it to stop. A session that fails after
 * streaming has started is retried with exponential backoff when the
 * failure is transient (PostgreSQL restarted, connection lost, slots or
 * WAL senders exhausted, disk full; see `classifyFailure`), with one log
 * line saying what to fix; it resumes exactly where the registered files
 * end. A failure no retry can fix (dropped slot, revoked privilege, bad
 * setting) ends the command with one line saying why. Failures before the
 * first session streams exit at once with their error.
 */
export async function streamCommand(config: Config): Promise<void> {
  const logger = new Logger({ level: config.logLevel, format: config.logFormat });
  const dataDir = await prepareDataDir(config.dataDir);
  const metrics = new StreamMetrics();
  const monitor = new SlotMonitor({
    sourceUrl: config.sourceUrl,
    slot: config.slot,
    intervalMs: 2000,
    heartbeatIntervalMs: config.heartbeatIntervalMs,
    readyMaxLagMs: config.readyMaxLagMs,
    metrics,
    logger,
  });
  let server: ObserveServer | null = null;
  let current: StreamPipeline | null = null;
  let stopping = false;
  let wakeBackoff: (() => void) | null = null;
  const onSignal = () => {
    logger.info("stopping: flushing open batches");
    stopping = true;
    current?.stop();
    wakeBackoff?.();
  };
  Deno.addSignalListener("SIGTERM", onSignal);
  Deno.addSignalListener("SIGINT", onSignal);
  let streamedOnce = false;
  let attempt = 0;
  try {
    while (!stopping) {
      const startedAt = Date.now();
      try {
        await runSession({
          config,
          dataDir,
          logger,
          metrics,
          monitor,
          onStreaming: (pipeline) => {
            current = pipeline;
            if (stopping) pipeline.stop();
            if (!streamedOnce) {
              streamedOnce = true;
              server = serveObservability(config.metricsAddr, metrics, monitor);
              logger.info("serving metrics", { addr: config.metricsAddr, port: server.port });
              monitor.start();
            }
            monitor.setStreaming(true);
          },
        });
        break;
      } catch (error) {
        current = null;
        monitor.setStreaming(false);
        const code = error instanceof CdcError ? error.code : "internal";
        metrics.errors.inc({ type: code });
        if (!streamedOnce || stopping) throw error;
        const verdict = classifyFailure(error);
        const message = redactAll(errorLine(error), config);
        if (!verdict.transient) {
          logger.error("stream failed; a retry cannot fix this", {
            error: message,
            reason: verdict.reason,
            fix: verdict.fix,
          });
          throw notRetried(error, message, verdict);
        }
        if (Date.now() - startedAt > 60_000) attempt = 0;
        const delay = retryDelayMs(attempt++);
        metrics.recoveries.inc();
        logger.warn(`stream session failed (${verdict.reason}); reconnecting`, {
          error: message,
          fix: verdict.fix,
          attempt,
          retry_in_ms: delay,
        });
        await new Promise<void>((resolve) => {
          wakeBackoff = resolve;
          setTimeout(resolve, delay);
        });
        wakeBackoff = null;
      }
    }
  } finally {
    Deno.removeSignalListener("SIGTERM", onSignal);
    Deno.removeSignalListener("SIGINT", onSignal);
    await (server as ObserveServer | null)?.close();
    await monitor.stop();
  }
}

/** The first line of an error's message. */
function errorLine(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split("\n")[0];
}

function redactAll(message: string, config: Config): string {
  return redact(redact(message, config.sourceUrl), config.registryUrl);
}

/** The error `stream` exits with when a retry cannot help: what failed, why, what to fix. */
function notRetried(error: unknown, message: string, verdict: FailureClass): Error {
  const line = `${message} (not retried: ${verdict.reason}; ${verdict.fix})`;
  return error instanceof CdcError
    ? new CdcError(error.code, line, { cause: error })
    : new Error(line, { cause: error });
}

/** One connection's worth of streaming: preflight, recovery, pipeline. */
async function runSession(ctx: StreamContext): Promise<void> {
  const { config, dataDir, logger, metrics } = ctx;
  const source = await connect(config.sourceUrl, { role: "source" });
  const clients: pg.Client[] = [source];
  let stream: ReplicationStream | null = null;
  try {
    const registryClient = await connect(config.registryUrl ?? config.sourceUrl, {
      role: config.registryUrl ? "registry" : "source",
      registry: true,
      applicationName: REGISTRY_APPLICATION_NAME,
    });
    clients.push(registryClient);
    const registry = new Registry(registryClient, config.slot);
    const info = await checkServer(source, config.slot);
    await registry.assertInitialized();
    const holder = await registry.lockSlot({
      slotActive: async () =>
        (await source.query(
          "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active) AS a",
          [config.slot],
        )).rows[0].a,
      onWait: (pid) =>
        ctx.logger.warn("slot lock held by an idle session without a walsender; waiting", {
          pid,
          fix: "nothing if the previous stream process died; it is taken over within a minute",
        }),
      onTakeOver: (pid) =>
        ctx.logger.warn("took over the slot lock of a dead stream session", { pid }),
    });
    if (holder !== null) {
      throw new CdcError(
        "slot_active",
        `Cannot stream from slot "${config.slot}": it is active in process ${holder}`,
      );
    }
    const startLsn = await slotState(source, config.slot, config.publication);
    const states = await registry.tableStates();
    const positions = new Map(
      [...states].map(([k, s]) => [k, { last: s.last, lastBatchTs: s.lastBatchTs }]),
    );
    for (const s of states.values()) metrics.setTableMode(`${s.schema}.${s.table}`, s.mode);
    await recoverDataDir(dataDir, await registry.registeredPaths(), logger);
    const protocol = info.major >= 16 ? 4 : 2;
    stream = await ReplicationStream.start(config.sourceUrl, {
      slot: config.slot,
      publication: config.publication,
      protocol,
      streaming: true,
      startLsn,
    });
    logger.info("streaming", { slot: config.slot, protocol, start_lsn: formatLsn(startLsn) });
    const pipeline = new StreamPipeline(registry, new SchemaLookup(source), stream, {
      dataDir,
      protocol,
      limits: {
        maxRows: config.batchMaxRows,
        maxBytes: config.batchMaxBytes,
        intervalMs: config.batchIntervalMs,
      },
      startLsn,
      positions,
      onCreateTable: (schema, table) =>
        publishNewTable(source, config, schema, table, logger).catch((error) =>
          logger.warn("cannot add new table to the publication", {
            table: `${schema}.${table}`,
            error: (error as Error).message.split("\n")[0],
          })
        ),
      boundaries: new Map(
        [...states].flatMap(([k, s]) => s.reloadLsn !== null ? [[k, s.reloadLsn]] : []),
      ),
      logger,
      metrics,
    });
    pipeline.attachReloads((host) =>
      new ReloadCoordinator(registry, source, host, {
        sourceUrl: config.sourceUrl,
        publication: config.publication,
        slot: config.slot,
        dataDir,
        workers: config.exportWorkers,
        splitBytes: config.exportSplitBytes,
        logger,
        metrics,
      })
    );
    ctx.onStreaming(pipeline);
    try {
      await pipeline.run();
    } catch (error) {
      await pipeline.discard();
      throw error;
    }
    logger.info("stopped", pipeline.stats as unknown as Record<string, unknown>);
  } finally {
    await stream?.close();
    for (const c of clients) await c.end().catch(() => {});
  }
}
