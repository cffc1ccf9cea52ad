/**
 * Metrics of the object-storage uploads (`--data-dir s3://...`), registered
 * next to the stream's own metrics.
 *
 * @module
 */

import client from "prom-client";

/** Upload latency, bytes, retries and spool size. */
export class StorageMetrics {
  readonly uploadSeconds: client.Histogram;
  readonly uploadedBytes: client.Counter;
  readonly retries: client.Counter<"op">;
  readonly spoolBytes: client.Gauge;
  readonly storageUp: client.Gauge;

  constructor(registry: client.Registry) {
    const registers = [registry];
    this.uploadSeconds = new client.Histogram({
      name: "cdc_upload_duration_seconds",
      help: "Time to upload one file to object storage, retries included",
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers,
    });
    this.uploadedBytes = new client.Counter({
      name: "cdc_uploaded_bytes_total",
      help: "Bytes uploaded to object storage",
      registers,
    });
    this.retries = new client.Counter({
      name: "cdc_upload_retries_total",
      help: "Object storage requests retried (5xx, 429, timeouts, connection errors)",
      labelNames: ["op"],
      registers,
    });
    this.spoolBytes = new client.Gauge({
      name: "cdc_spool_bytes",
      help:
        "Bytes the stream holds in the spool: open batches (uncompressed CSV, as last checked) and uploaded files not removed yet",
      registers,
    });
    this.storageUp = new client.Gauge({
      name: "cdc_storage_up",
      help: "0 while object storage requests are failing and being retried, else 1",
      registers,
    });
    this.storageUp.set(1);
  }
}
