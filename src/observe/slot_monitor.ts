/**
 * Watches the slot from a connection of its own, independent of the stream
 * session: lag in bytes and seconds, wal_status, and whether PostgreSQL is
 * reachable at all (for /readyz). Warns, and fails /readyz, while the slot's
 * WAL is at risk (wal_status unreserved, or safe_wal_size under
 * `--wal-warn-bytes`), before PostgreSQL invalidates it. Emits heartbeats so an idle source keeps
 * its slot moving while other databases write WAL.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import type { Logger } from "../log.ts";
import { type Lsn, parseLsn } from "../lsn.ts";
import { connect } from "../source/connect.ts";
import { RECREATE_COMMAND, walWarning } from "../source/slot_health.ts";
import type { FailingState } from "./failure_streak.ts";
import type { StreamMetrics } from "./metrics.ts";

/** Prefix of heartbeat messages written with pg_logical_emit_message. */
export const HEARTBEAT_PREFIX = "cdc_egress_heartbeat";

/** Options of {@linkcode SlotMonitor}. */
export interface SlotMonitorOptions {
  sourceUrl: string | undefined;
  slot: string;
  intervalMs: number;
  heartbeatIntervalMs: number;
  readyMaxLagMs: number;
  /** `--wal-warn-bytes`; null for the default (see walWarnThreshold). */
  walWarnBytes: number | null;
  metrics: StreamMetrics;
  logger: Logger;
}

/** What /readyz and status report. */
export interface MonitorState {
  connected: boolean;
  streaming: boolean;
  /** The registry answers (false during a registry outage). */
  registryUp: boolean;
  /** Object storage answers (false while uploads are being retried). */
  storageUp: boolean;
  lagBytes: number | null;
  lagSeconds: number | null;
  walStatus: string | null;
  /** Why the slot's WAL is at risk, or null. */
  walWarning: string | null;
  /** Set while sessions fail the same way in a row without progress (see FailureStreak). */
  failing: FailingState | null;
}

/** Samples the slot every few seconds. */
export class SlotMonitor {
  #opts: SlotMonitorOptions;
  #client: pg.Client | null = null;
  #timer: ReturnType<typeof setInterval> | null = null;
  #busy = false;
  /** (time, server WAL position) samples, newest last, for lag in seconds. */
  #samples: { at: number; lsn: Lsn }[] = [];
  #lastHeartbeat = 0;
  #walStatus: string | null = null;
  readonly state: MonitorState = {
    connected: false,
    streaming: false,
    registryUp: true,
    storageUp: true,
    lagBytes: null,
    lagSeconds: null,
    walStatus: null,
    walWarning: null,
    failing: null,
  };

  constructor(options: SlotMonitorOptions) {
    this.#opts = options;
  }

  /** Starts sampling. */
  start(): void {
    this.#timer = setInterval(() => this.sample(), this.#opts.intervalMs);
    this.sample();
  }

  /**
   * Whether the process should receive traffic: connected, streaming, the
   * registry up, lag under the bound, the slot's WAL not at risk, and not
   * failing the same way over and over.
   */
  get ready(): boolean {
    const s = this.state;
    return s.connected && s.streaming && s.registryUp && s.storageUp && s.failing === null &&
      (s.lagSeconds ?? 0) * 1000 <= this.#opts.readyMaxLagMs &&
      s.walWarning === null && s.walStatus !== "lost";
  }

  /** Marks the registry reachable or not; counts each outage once. */
  setRegistryUp(up: boolean): void {
    if (this.state.registryUp && !up) this.#opts.metrics.registryOutages.inc();
    this.state.registryUp = up;
    this.#opts.metrics.registryUp.set(up ? 1 : 0);
  }

  /** Sets or clears the repeated-failure state (fails /readyz while set). */
  setFailing(failing: FailingState | null): void {
    this.state.failing = failing;
    this.#opts.metrics.streamFailing.set(failing ? 1 : 0);
  }

  /** Marks object storage reachable or not (uploads being retried). */
  setStorageUp(up: boolean): void {
    this.state.storageUp = up;
  }

  /** Marks the stream session up or down. */
  setStreaming(streaming: boolean): void {
    this.state.streaming = streaming;
    this.#opts.metrics.slotActive.set(streaming ? 1 : 0);
  }

  /** Takes one sample; failures mark the source unreachable. */
  async sample(): Promise<void> {
    if (this.#busy) return;
    this.#busy = true;
    try {
      this.#client ??= await connect(this.#opts.sourceUrl, {
        applicationName: "cdc-egress/monitor",
      });
      const res = await this.#client.query(
        `SELECT pg_current_wal_lsn()::text AS server, confirmed_flush_lsn::text AS confirmed,
                wal_status, safe_wal_size::int8 AS safe,
                (SELECT setting::int8 FROM pg_settings
                 WHERE name = 'max_slot_wal_keep_size') AS keep_mb
         FROM pg_replication_slots WHERE slot_name = $1`,
        [this.#opts.slot],
      );
      this.state.connected = true;
      const row = res.rows[0];
      if (row) this.#record(row);
      await this.#heartbeat().catch((error) => {
        this.#opts.metrics.errors.inc({ type: "heartbeat" });
        this.#opts.logger.debug("heartbeat failed", { error: (error as Error).message });
      });
    } catch {
      this.state.connected = false;
      await this.#client?.end().catch(() => {});
      this.#client = null;
    } finally {
      this.#busy = false;
    }
  }

  #record(
    row: {
      server: string;
      confirmed: string | null;
      wal_status: string | null;
      safe: string | null;
      keep_mb: string | null;
    },
  ) {
    const m = this.#opts.metrics;
    const now = Date.now();
    const server = parseLsn(row.server);
    const confirmed = row.confirmed ? parseLsn(row.confirmed) : null;
    this.#samples.push({ at: now, lsn: server });
    if (this.#samples.length > 720) this.#samples.shift();
    m.walPosition.set({ kind: "server" }, Number(server));
    if (confirmed !== null) {
      const lag = server > confirmed ? Number(server - confirmed) : 0;
      this.state.lagBytes = lag;
      m.replicationLagBytes.set(lag);
      // Age of the newest sampled server position already acknowledged.
      let seconds = 0;
      if (lag > 0) {
        const covered = this.#samples.findLast((s) => s.lsn <= confirmed);
        seconds = covered ? (now - covered.at) / 1000 : (now - this.#samples[0].at) / 1000;
      }
      this.state.lagSeconds = seconds;
      m.replicationLagSeconds.set(seconds);
    }
    const status = row.wal_status;
    this.state.walStatus = status;
    for (const s of ["reserved", "extended", "unreserved", "lost"]) {
      m.slotWalStatus.set({ status: s }, s === status ? 1 : 0);
    }
    m.slotSafeWalSize.set(row.safe === null ? -1 : Number(row.safe));
    if (status !== this.#walStatus) {
      // unreserved is reported by the warning below, with what it means.
      if (status === "extended") {
        this.#opts.logger.warn("replication slot WAL is at risk", {
          slot: this.#opts.slot,
          wal_status: status,
          safe_wal_size: row.safe,
        });
      } else if (status === "lost") {
        // The session fails next and stream exits 3 with the full line.
        this.#opts.logger.error("replication slot is lost", {
          slot: this.#opts.slot,
          wal_status: status,
          fix: RECREATE_COMMAND,
        });
      }
      if (status === "unreserved" || status === "lost" || status === "extended") {
        m.errors.inc({ type: `wal_status_${status}` });
      }
      this.#walStatus = status;
    }
    const keepMb = row.keep_mb === null ? -1 : Number(row.keep_mb);
    const warning = walWarning({
      walStatus: status,
      safeWalSize: row.safe === null ? null : Number(row.safe),
      lost: status === "lost",
      maxKeepBytes: keepMb < 0 ? null : keepMb * 1024 * 1024,
    }, this.#opts.walWarnBytes);
    if ((warning === null) !== (this.state.walWarning === null)) {
      if (warning !== null) {
        this.#opts.logger.warn(`replication slot WAL is at risk: ${warning}`, {
          slot: this.#opts.slot,
          wal_status: status,
          safe_wal_size: row.safe,
          fix:
            "let stream catch up (end long transactions, check exports), or raise max_slot_wal_keep_size",
        });
      } else {
        this.#opts.logger.info("replication slot WAL is no longer at risk", {
          slot: this.#opts.slot,
          wal_status: status,
          safe_wal_size: row.safe,
        });
      }
    }
    this.state.walWarning = warning;
    m.slotWalWarning.set(warning === null ? 0 : 1);
  }

  /**
   * When the slot lags the server while we stream, writes a non-transactional
   * logical message: decoding it tells the stream that everything before it
   * is sent, so the slot can be acknowledged past WAL of other databases.
   */
  async #heartbeat(): Promise<void> {
    if (!this.state.streaming || !this.#client) return;
    if ((this.state.lagBytes ?? 0) === 0) return;
    if (Date.now() - this.#lastHeartbeat < this.#opts.heartbeatIntervalMs) return;
    this.#lastHeartbeat = Date.now();
    await this.#client.query("SELECT pg_logical_emit_message(false, $1, '')", [HEARTBEAT_PREFIX]);
  }

  /** Stops sampling and closes the connection. */
  async stop(): Promise<void> {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    while (this.#busy) await new Promise((r) => setTimeout(r, 20));
    await this.#client?.end().catch(() => {});
    this.#client = null;
  }
}
