/**
 * One session of `stream`: one connection's worth of streaming. Checks
 * everything that can be checked before touching the slot (server, registry,
 * ownership, slot lock, data dir), settles what a crash left (the data dir,
 * or the bucket's upload intents and the spool), then runs the pipeline with
 * its reload coordinator until it stops or fails.
 *
 * @module
 */

import { HELD_EXPORT_BYTES } from "./held_export_budget.ts";
import { join } from "node:path";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import type { Config } from "../config.ts";
import { CdcError } from "../errors.ts";
import { Logger } from "../log.ts";
import { formatLsn, type Lsn, parseLsn, ZERO_LSN } from "../lsn.ts";
import { EXPORT_STAGING_DIR, recoverDataDir } from "./recovery.ts";
import { SchemaLookup } from "./relation_catalog.ts";
import { ReloadCoordinator } from "./reload_coordinator.ts";
import { type BatchResources } from "../batch/batch_resources.ts";
import { StreamPipeline } from "./stream_pipeline.ts";
import { Registry, REGISTRY_APPLICATION_NAME } from "../registry/registry.ts";
import { connect } from "../source/connect.ts";
import { StreamMetrics } from "../observe/metrics.ts";
import { SlotMonitor } from "../observe/slot_monitor.ts";
import { ReplicationStream } from "../source/replication_stream.ts";
import { assertSlotUsable } from "../source/slot_health.ts";
import { SourceCatalog } from "../source/source_catalog.ts";
import { qualifiedName } from "../source/table_selection.ts";
import { checkDataDirOwner, claimDataDir } from "../write/data_dir_owner.ts";
import { StorageMetrics } from "../observe/storage_metrics.ts";
import type { ObjectStore } from "../storage/object_store.ts";
import { SpoolBudget } from "../storage/spool_budget.ts";
import { SpoolUploader } from "../storage/spool_uploader.ts";
import { ExportUploads } from "../storage/export_uploads.ts";
import { S3Store } from "../storage/s3_store.ts";
import { cleanSpool, recoverUploads } from "../storage/upload_recovery.ts";
import { checkStorageLocation } from "../storage/storage_location.ts";

/** Shared by the sessions of one `stream` process. */
export interface StreamContext {
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

/** One connection's worth of streaming: preflight, recovery, pipeline. */
export async function runSession(ctx: StreamContext): Promise<void> {
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
        // Small exports waiting for their boundary: an eighth of the memory budget, at most 16 MiB.
        heldExportBytes: Math.min(HELD_EXPORT_BYTES, Math.floor(config.memoryBudget / 8)),
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
