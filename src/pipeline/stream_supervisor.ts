/**
 * `stream`'s supervisor: runs sessions (see {@linkcode runSession}) until a
 * signal asks it to stop, retrying transient failures with backoff, failing
 * at once on what no retry can fix, raising the alarm when the same failure
 * repeats without progress, and serving metrics and health meanwhile.
 *
 * @module
 */

import type { Config } from "../config.ts";
import { CdcError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { formatLsn } from "../lsn.ts";
import { probeBatchResources } from "../batch/batch_resources.ts";
import type { StreamPipeline } from "./stream_pipeline.ts";
import { describeTarget, redact } from "../source/connect.ts";
import { classifyFailure, type FailureClass, retryDelayMs } from "../source/retry_policy.ts";
import { StreamMetrics } from "../observe/metrics.ts";
import {
  type FailingState,
  FAILURES_BEFORE_ALARM,
  FailureStreak,
} from "../observe/failure_streak.ts";
import { SlotMonitor } from "../observe/slot_monitor.ts";
import { type ObserveServer, serveObservability } from "../observe/http_server.ts";
import { StorageMetrics } from "../observe/storage_metrics.ts";
import { openObjectStore } from "../storage/open_store.ts";
import { isS3Url } from "../storage/s3_location.ts";
import { runSession, type StreamContext } from "./stream_session.ts";
import { prepareDataDir } from "../write/prepare_data_dir.ts";

/** How long `stream`, asked to stop, keeps retrying uploads to object storage. */
const STOP_GRACE_MS = 10_000;

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
export async function superviseStream(config: Config, logger: Logger): Promise<void> {
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
