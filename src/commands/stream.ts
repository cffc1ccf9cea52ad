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
import { EXPORT_STAGING_DIR, recoverDataDir } from "../pipeline/recovery.ts";
import { SchemaLookup } from "../pipeline/relation_catalog.ts";
import { ReloadCoordinator } from "../pipeline/reload_coordinator.ts";
import { type BatchResources, probeBatchResources } from "../batch/batch_resources.ts";
import { StreamPipeline } from "../pipeline/stream_pipeline.ts";
import { Registry, REGISTRY_APPLICATION_NAME } from "../registry/registry.ts";
import { connect, describeTarget, redact } from "../source/connect.ts";
import { classifyFailure, type FailureClass, retryDelayMs } from "../source/retry_policy.ts";
import { StreamMetrics } from "../observe/metrics.ts";
import {
  type FailingState,
  FAILURES_BEFORE_ALARM,
  FailureStreak,
} from "../observe/failure_streak.ts";
import { SlotMonitor } from "../observe/slot_monitor.ts";
import { type ObserveServer, serveObservability } from "../observe/http_server.ts";
import { ReplicationStream } from "../source/replication_stream.ts";
import { assertSlotUsable } from "../source/slot_health.ts";
import { SourceCatalog } from "../source/source_catalog.ts";
import { qualifiedName } from "../source/table_selection.ts";
import { DIR_MODE } from "../write/atomic_file.ts";
import { checkDataDirOwner, claimDataDir } from "../write/data_dir_owner.ts";
import { StorageMetrics } from "../observe/storage_metrics.ts";
import type { ObjectStore } from "../storage/object_store.ts";
import { openObjectStore } from "../storage/open_store.ts";
import { isS3Url } from "../storage/s3_location.ts";
import { SpoolBudget } from "../storage/spool_budget.ts";
import { SpoolUploader } from "../storage/spool_uploader.ts";
import { ExportUploads } from "../storage/export_uploads.ts";
import { S3Store } from "../storage/s3_store.ts";
import { cleanSpool, recoverUploads } from "../storage/upload_recovery.ts";
import { checkStorageLocation } from "../storage/storage_location.ts";

/** How long `stream`, asked to stop, keeps retrying uploads to object storage. */
const STOP_GRACE_MS = 10_000;

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

async function slotState(catalog: SourceCatalog, slot: string, publication: string): Promise<Lsn> {
  const row = await catalog.slot(slot);
  if (row === null) {
    throw new CdcError(
      "not_initialized",
      `Cannot stream: replication slot "${slot}" does not exist; run "cdc-egress init" first`,
    );
  }
  if (row.activePid) {
    throw new CdcError(
      "slot_active",
      `Cannot stream from slot "${slot}": it is active in process ${row.activePid}`,
    );
  }
  if (!(await catalog.publicationExists(publication))) {
    throw new CdcError(
      "not_initialized",
      `Cannot stream: publication "${publication}" does not exist; run "cdc-egress init" first`,
    );
  }
  return row.confirmedFlushLsn ? parseLsn(row.confirmedFlushLsn) : ZERO_LSN;
}

/**
 * Adds a table created while streaming to the publication when the
 * `--tables`/`--exclude` patterns select it; the reload coordinator then
 * exports it and it streams from there.
 */
async function publishNewTable(
  catalog: SourceCatalog,
  config: Config,
  schema: string,
  table: string,
  logger: Logger,
): Promise<void> {
  const selected = await catalog.selectTables(config.tables, config.exclude);
  const t = selected.find((x) => x.schema === schema && x.table === table);
  if (!t) return;
  const state = await catalog.publishState(t.oid, config.publication, t);
  if (!state || state.published) return;
  if (!state.identity) {
    logger.warn("new table has no replica identity; not published", {
      table: `${schema}.${table}`,
      fix: `ALTER TABLE ${qualifiedName(t)} REPLICA IDENTITY FULL; then run cdc-egress init`,
    });
    return;
  }
  await catalog.addToPublication(config.publication, t);
  logger.info("new table added to the publication", { table: `${schema}.${table}` });
}

/** Shared by the sessions of one `stream` process. */
interface StreamContext {
  config: Config;
  dataDir: string;
  logger: Logger;
  metrics: StreamMetrics;
  monitor: SlotMonitor;
  resources: BatchResources;
  /** Called once the slot is ours and replication runs. */
  onStreaming: (pipeline: StreamPipeline) => void;
  /** Set when the session lost the registry (or could not reach it). */
  registryLost: boolean;
  /** The bucket when the data dir is `s3://...` (then `dataDir` is the spool); else null. */
  store: ObjectStore | null;
  storageMetrics: StorageMetrics | null;
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
  const s3 = isS3Url(config.dataDir);
  if (s3) {
    // A missing bucket, wrong credentials or a bad endpoint: one line, at once.
    const probe = openObjectStore(config, { maxAttempts: 3 });
    try {
      await probe.check(true);
    } finally {
      probe.close();
    }
  }
  const dataDir = await prepareDataDir(s3 ? config.spoolDir : config.dataDir);
  const resources = await probeBatchResources(config, dataDir);
  if (resources.lowered) {
    logger.warn("fewer open batch files than --max-open-files", {
      max_open_files: resources.maxOpenFiles,
      asked: config.maxOpenFiles,
      because: resources.lowered === "ulimit"
        ? `only ${resources.available} file descriptors are free (ulimit -n)`
        : "of --memory-budget",
    });
  }
  const metrics = new StreamMetrics();
  const monitor = new SlotMonitor({
    sourceUrl: config.sourceUrl,
    slot: config.slot,
    intervalMs: 2000,
    heartbeatIntervalMs: config.heartbeatIntervalMs,
    readyMaxLagMs: config.readyMaxLagMs,
    walWarnBytes: config.walWarnBytes,
    metrics,
    logger,
  });
  const storageMetrics = s3 ? new StorageMetrics(metrics.registry) : null;
  let lastRetryLog = 0;
  // In stream, S3 calls are retried until they work: the pipeline holds
  // (reads no WAL, acknowledges nothing) meanwhile.
  const store = s3
    ? openObjectStore(config, {
      maxAttempts: Infinity,
      onRetry: (op, n, error, delayMs) => {
        storageMetrics!.retries.inc({ op: op.split(" ")[0] });
        storageMetrics!.storageUp.set(0);
        monitor.setStorageUp(false);
        if (Date.now() - lastRetryLog < 10_000 && n > 1) return;
        lastRetryLog = Date.now();
        logger.warn("object storage request failed; retrying", {
          op,
          attempt: n,
          retry_in_ms: delayMs,
          error: redactAll(errorLine(error), config),
        });
      },
    })
    : null;
  let server: ObserveServer | null = null;
  let current: StreamPipeline | null = null;
  let stopping = false;
  let wakeBackoff: (() => void) | null = null;
  const onSignal = () => {
    logger.info("stopping: flushing open batches");
    stopping = true;
    // Uploads still failing after this are given up: their files stay
    // unregistered and unacknowledged, and come again after a restart.
    store?.giveUpAfter(STOP_GRACE_MS);
    current?.stop();
    wakeBackoff?.();
  };
  Deno.addSignalListener("SIGTERM", onSignal);
  Deno.addSignalListener("SIGINT", onSignal);
  let streamedOnce = false;
  let attempt = 0;
  const streak = new FailureStreak();
  let streamingSince = 0;
  // While failing: progress (the registry moved past every failed session's
  // position) ends the streak; a session that streams through two batch
  // intervals (at least a minute) without failing ends the alarm only (an
  // idle source may have no change to make progress with).
  const healthyAfterMs = Math.max(60_000, 2 * config.batchIntervalMs);
  const progressWatch = setInterval(() => {
    const failing = monitor.state.failing;
    const pipeline = current as StreamPipeline | null;
    if (!failing || !pipeline) return;
    const progressed = streak.progressed(pipeline.durableLsn);
    if (progressed || Date.now() - streamingSince > healthyAfterMs) {
      logger.info(
        progressed ? "stream is making progress again" : "stream has run without failing",
        { after_failures: failing.failures, durable_lsn: formatLsn(pipeline.durableLsn) },
      );
      if (progressed) streak.reset();
      monitor.setFailing(null);
    }
  }, 1000);
  try {
    while (!stopping) {
      const startedAt = Date.now();
      const session: StreamContext = {
        config,
        dataDir,
        logger,
        metrics,
        monitor,
        resources,
        registryLost: false,
        store,
        storageMetrics,
        onStreaming: (pipeline) => {
          current = pipeline;
          streamingSince = Date.now();
          if (stopping) pipeline.stop();
          if (!streamedOnce) {
            streamedOnce = true;
            server = serveObservability(config.metricsAddr, metrics, monitor);
            logger.info("serving metrics", { addr: config.metricsAddr, port: server.port });
            monitor.start();
          }
          monitor.setStreaming(true);
        },
      };
      try {
        await runSession(session);
        break;
      } catch (error) {
        const durable = (current as StreamPipeline | null)?.durableLsn;
        current = null;
        monitor.setStreaming(false);
        const code = error instanceof CdcError ? error.code : "internal";
        const verdict = classifyFailure(error);
        const type = session.registryLost ? "registry" : verdict.type ?? code;
        metrics.errors.inc({ type });
        // A lost slot already says what happened and how to recover (exit 3).
        if (
          !streamedOnce || stopping || (error instanceof CdcError && error.code === "slot_lost")
        ) {
          throw error;
        }
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
        if (session.registryLost) {
          // Nothing is acknowledged past what the registry holds; sealed
          // files stay on disk until the registry says whether it has them.
          if (monitor.state.registryUp) {
            logger.warn("registry unreachable: acknowledgements held, sealed files kept", {
              registry: describeTarget(config.registryUrl ?? config.sourceUrl),
              ...(durable !== undefined ? { acknowledged_lsn: formatLsn(durable) } : {}),
            });
          }
          monitor.setRegistryUp(false);
        }
        // The same failure again and again without progress is not a passing
        // fault: say so at error level, count it, and fail /readyz (retries go on).
        const failures = streak.fail(`${type}|${verdict.reason}`, durable);
        if (failures < FAILURES_BEFORE_ALARM) {
          logger.warn(`stream session failed (${verdict.reason}); reconnecting`, {
            error: message,
            fix: verdict.fix,
            attempt,
            retry_in_ms: delay,
          });
        } else {
          const failing: FailingState = {
            reason: verdict.reason,
            fix: verdict.fix,
            error: message,
            failures,
            since: new Date(streak.since).toISOString(),
          };
          logger.error(
            `stream keeps failing the same way without progress (${verdict.reason}); reconnecting, but this needs a fix`,
            { ...failing, type, attempt, retry_in_ms: delay },
          );
          if (failures === FAILURES_BEFORE_ALARM) metrics.errors.inc({ type: "repeated_failure" });
          monitor.setFailing(failing);
        }
        await new Promise<void>((resolve) => {
          wakeBackoff = resolve;
          setTimeout(resolve, delay);
        });
        wakeBackoff = null;
      }
    }
  } finally {
    clearInterval(progressWatch);
    Deno.removeSignalListener("SIGTERM", onSignal);
    Deno.removeSignalListener("SIGINT", onSignal);
    await (server as ObserveServer | null)?.close();
    await monitor.stop();
    store?.close();
  }
}

/** Opens the registry connection; a failure marks the session as having lost the registry. */
async function connectRegistry(ctx: StreamContext): Promise<pg.Client> {
  const { config } = ctx;
  let client: pg.Client;
  try {
    client = await connect(config.registryUrl ?? config.sourceUrl, {
      role: "registry",
      registry: true,
      applicationName: REGISTRY_APPLICATION_NAME,
    });
  } catch (error) {
    ctx.registryLost = true;
    throw error;
  }
  // The connection ending under us (a registry restart, failover, network)
  // is what makes the session fail as a registry outage.
  let closing = false;
  client.on("end", () => {
    if (!closing) ctx.registryLost = true;
  });
  const end = client.end.bind(client);
  client.end = (() => {
    closing = true;
    return end();
  }) as typeof client.end;
  return client;
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
    const catalog = new SourceCatalog(source);
    const registryClient = await connectRegistry(ctx);
    clients.push(registryClient);
    const registry = new Registry(registryClient, config.slot);
    const info = await catalog.checkServer(config.slot);
    await registry.assertInitialized();
    const capture = await catalog.ddlCapture();
    if (capture === "outdated") {
      throw new CdcError(
        "not_initialized",
        `Cannot stream: the DDL capture in the source is older than this version; run "cdc-egress init" first`,
      );
    }
    if (capture === "missing") {
      logger.warn("DDL capture is not installed in the source; DDL is not written to ddl.sql", {
        fix: "run cdc-egress init as a role with CREATE on the source database",
      });
    }
    const identity = await catalog.identity();
    const me = {
      slot: config.slot,
      database: identity.database,
      system_identifier: identity.systemIdentifier,
    };
    await registry.assertOwnedBy(identity, "stream from");
    await checkDataDirOwner(dataDir, me);
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
    await assertSlotUsable(source, registryClient, config.slot);
    const startLsn = await slotState(catalog, config.slot, config.publication);
    // Every check passed: claim the slot in the registry and the data dir.
    await registry.claimSlot(identity, "stream from");
    await claimDataDir(dataDir, me);
    const states = await registry.tableStates();
    for (const s of states.values()) metrics.setTableMode(`${s.schema}.${s.table}`, s.mode);
    await checkStorageLocation(registry, ctx.store?.url ?? dataDir, "stream into");
    let spool: SpoolBudget | undefined;
    let exportUploads: ExportUploads | undefined;
    if (ctx.store) {
      // Uploads never registered are deleted (multipart ones aborted); the
      // spool is emptied: registered files are in the bucket, the others
      // come again from the slot.
      await recoverUploads(ctx.store, registry, logger);
      await cleanSpool(dataDir, logger);
      const uploader = new SpoolUploader(
        ctx.store,
        registry,
        dataDir,
        logger,
        ctx.storageMetrics ?? undefined,
      );
      if (ctx.store instanceof S3Store) {
        exportUploads = new ExportUploads(
          ctx.store,
          registry,
          config.s3PartSize,
          logger,
          ctx.storageMetrics ?? undefined,
        );
        uploader.skipUploadedBy(exportUploads);
      }
      spool = new SpoolBudget(
        config.spoolMaxBytes,
        uploader,
        ctx.storageMetrics?.spoolBytes,
        exportUploads,
      );
      registry.setBeforeRegister(async (files) => {
        await uploader.beforeRegister(files);
        spool!.report();
        ctx.monitor.setStorageUp(true);
      });
    } else {
      // Settles what a crash or a registry outage left: sealed files the
      // registry has are renamed into place, the others removed (their
      // changes come again from the slot).
      await recoverDataDir(dataDir, await registry.registeredPaths(), logger);
    }
    // Exports are staged here until registered: what a crash left is never registered.
    const stagingDir = join(dataDir, EXPORT_STAGING_DIR, config.slot);
    await Deno.remove(stagingDir, { recursive: true }).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
    if (!ctx.monitor.state.registryUp) logger.info("registry reachable again; files settled");
    ctx.monitor.setRegistryUp(true);
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
      maxOpenFiles: ctx.resources.maxOpenFiles,
      memoryBudget: ctx.resources.bufferBytes,
      spool,
      startLsn,
      tables: states,
      reloadAfterDdl: config.reloadAfterDdl,
      onCreateTable: (schema, table) =>
        publishNewTable(catalog, config, schema, table, logger).catch((error) =>
          logger.warn("cannot add new table to the publication", {
            table: `${schema}.${table}`,
            error: (error as Error).message.split("\n")[0],
          })
        ),
      logger,
      metrics,
    });
    pipeline.attachReloads((host) =>
      new ReloadCoordinator(registry, catalog, host, {
        sourceUrl: config.sourceUrl,
        publication: config.publication,
        slot: config.slot,
        dataDir,
        stagingDir,
        workers: config.exportWorkers,
        splitBytes: config.exportSplitBytes,
        logger,
        metrics,
        uploads: exportUploads,
      })
    );
    spool?.countHeld(() => pipeline.heldBytes);
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
