/**
 * Prometheus metrics of the stream process, with the plan's names. One
 * registry per process (not prom-client's global one), so tests and
 * reconnects never register a metric twice.
 */

import client from "prom-client";

const SIZE_BUCKETS = [1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
const ROW_BUCKETS = [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7];
const DURATION_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
const MODES = ["streaming", "reloading", "pending_reload", "dropped"] as const;

/** Every metric the stream process exposes. */
export class StreamMetrics {
  readonly registry = new client.Registry();
  readonly replicationLagSeconds = new client.Gauge({
    name: "cdc_replication_lag_seconds",
    help: "Age of the newest server WAL position that is acknowledged (0 when caught up)",
    registers: [this.registry],
  });
  readonly replicationLagBytes = new client.Gauge({
    name: "cdc_replication_lag_bytes",
    help: "Server WAL position minus the slot's acknowledged position",
    registers: [this.registry],
  });
  readonly walPosition = new client.Gauge({
    name: "cdc_wal_position_bytes",
    help: "WAL positions as byte offsets: server (current WAL), received, durable (acknowledged)",
    labelNames: ["kind"],
    registers: [this.registry],
  });
  readonly slotActive = new client.Gauge({
    name: "cdc_slot_active",
    help: "1 while this process streams from the slot",
    registers: [this.registry],
  });
  readonly slotWalStatus = new client.Gauge({
    name: "cdc_slot_wal_status",
    help: "1 for the slot's current wal_status (reserved, extended, unreserved, lost)",
    labelNames: ["status"],
    registers: [this.registry],
  });
  readonly slotSafeWalSize = new client.Gauge({
    name: "cdc_slot_safe_wal_size_bytes",
    help: "WAL that can still be written before the slot is in danger (-1 when unlimited)",
    registers: [this.registry],
  });
  readonly slotWalWarning = new client.Gauge({
    name: "cdc_slot_wal_warning",
    help:
      "1 while the slot's WAL is at risk: wal_status unreserved, or safe_wal_size under --wal-warn-bytes",
    registers: [this.registry],
  });
  readonly batchDuration = new client.Histogram({
    name: "cdc_batch_duration_seconds",
    help: "Time to seal, register and publish a batch",
    buckets: DURATION_BUCKETS,
    registers: [this.registry],
  });
  readonly batchSize = new client.Histogram({
    name: "cdc_batch_size_bytes",
    help: "Uncompressed CSV bytes per batch",
    buckets: SIZE_BUCKETS,
    registers: [this.registry],
  });
  readonly batchRows = new client.Histogram({
    name: "cdc_batch_row_count",
    help: "Rows per batch",
    buckets: ROW_BUCKETS,
    registers: [this.registry],
  });
  readonly batchesProcessed = new client.Counter({
    name: "cdc_batches_processed_total",
    help: "Batches registered",
    labelNames: ["reason"],
    registers: [this.registry],
  });
  readonly filesWritten = new client.Counter({
    name: "cdc_files_written_total",
    help: "Files registered, by type",
    labelNames: ["type"],
    registers: [this.registry],
  });
  readonly fileSize = new client.Histogram({
    name: "cdc_file_size_bytes",
    help: "Size of registered files on disk",
    labelNames: ["type"],
    buckets: SIZE_BUCKETS,
    registers: [this.registry],
  });
  readonly compressionRatio = new client.Gauge({
    name: "cdc_compression_ratio",
    help: "Uncompressed / compressed bytes of the last registered data file",
    registers: [this.registry],
  });
  readonly rowsWritten = new client.Counter({
    name: "cdc_rows_written_total",
    help: "Change rows written to streaming files",
    registers: [this.registry],
  });
  readonly tableMode = new client.Gauge({
    name: "cdc_table_mode",
    help: "1 for the table's current mode (one series per table)",
    labelNames: ["table", "mode"],
    registers: [this.registry],
  });
  readonly tableLastBatch = new client.Gauge({
    name: "cdc_table_last_batch_timestamp",
    help: "Unix time of the table's last registered file",
    labelNames: ["table"],
    registers: [this.registry],
  });
  readonly tablePending = new client.Gauge({
    name: "cdc_table_pending_changes",
    help:
      "Rows in the table's open batch, not yet registered (tables with an open batch only; updated at most once a second)",
    labelNames: ["table"],
    registers: [this.registry],
  });
  readonly errors = new client.Counter({
    name: "cdc_errors_total",
    help: "Errors by type",
    labelNames: ["type"],
    registers: [this.registry],
  });
  readonly streamFailing = new client.Gauge({
    name: "cdc_stream_failing",
    help:
      "1 while stream sessions fail the same way several times in a row without progress (/readyz fails)",
    registers: [this.registry],
  });
  readonly recoveries = new client.Counter({
    name: "cdc_recovery_attempts_total",
    help: "Reconnects after a lost connection or failed session",
    registers: [this.registry],
  });
  readonly exportSnapshotWait = new client.Gauge({
    name: "cdc_export_snapshot_wait_seconds",
    help:
      "How long the oldest export has waited for its snapshot (running transactions); 0 when none waits",
    registers: [this.registry],
  });
  readonly registryUp = new client.Gauge({
    name: "cdc_registry_up",
    help: "1 while the registry is reachable, 0 during an outage",
    registers: [this.registry],
  });
  readonly registryOutages = new client.Counter({
    name: "cdc_registry_outages_total",
    help: "Times the registry became unreachable while streaming",
    registers: [this.registry],
  });

  /** Records a registered streaming batch. */
  batchRegistered(
    table: string,
    reason: string,
    seconds: number,
    rows: number,
    uncompressed: number,
    byteSize: number,
  ): void {
    this.batchDuration.observe(seconds);
    this.batchSize.observe(uncompressed);
    this.batchRows.observe(rows);
    this.batchesProcessed.inc({ reason });
    this.rowsWritten.inc(rows);
    // Only tables with an open batch have the series: at thousands of tables
    // the idle ones would be thousands of zeros.
    this.tablePending.remove({ table });
    this.fileRegistered(table, "streaming", byteSize, uncompressed);
  }

  /** Records a registered file. */
  fileRegistered(
    table: string,
    type: "streaming" | "full_reload" | "ddl",
    byteSize: number,
    uncompressed: number,
  ): void {
    this.filesWritten.inc({ type });
    this.fileSize.observe({ type }, byteSize);
    if (type !== "ddl" && byteSize > 0) this.compressionRatio.set(uncompressed / byteSize);
    this.tableLastBatch.set({ table }, Date.now() / 1000);
  }

  /**
   * Sets the mode gauge of a table: 1 for its mode; the series of its other
   * modes are removed (one series per table, not four).
   */
  setTableMode(table: string, mode: string): void {
    for (const m of MODES) {
      if (m === mode) this.tableMode.set({ table, mode: m }, 1);
      else this.tableMode.remove({ table, mode: m });
    }
  }

  /** The exposition text. */
  async render(): Promise<string> {
    return await this.registry.metrics();
  }

  /** Content type of {@linkcode render}. */
  get contentType(): string {
    return this.registry.contentType;
  }
}
