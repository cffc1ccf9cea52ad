/**
 * The status report of one slot, collected from the source (the slot, WAL
 * position and retention) and the registry (checkpoint, per-table state and
 * file totals, reloads, history gaps). `status` prints it; it holds no URL
 * or password.
 *
 * Lag in bytes is `pg_current_wal_lsn() - confirmed_flush_lsn`. Lag in
 * seconds is the time since the registry checkpoint last moved when the lag
 * in bytes is above 0, else 0: an upper bound on how long the oldest
 * unconfirmed change has waited.
 *
 * @module
 */

import type { Config } from "../config.ts";
import { formatLsn } from "../lsn.ts";
import type { Registry } from "../registry/registry.ts";
import { describeTarget } from "../source/connect.ts";
import { slotLostMessage, unfinishedRecreateMessage, walWarning } from "../source/slot_health.ts";
import type { SourceCatalog } from "../source/source_catalog.ts";

/** The slot as `status` reports it. */
export interface SlotStatus {
  name: string;
  exists: boolean;
  active: boolean;
  active_pid: number | null;
  confirmed_flush_lsn: string | null;
  restart_lsn: string | null;
  current_wal_lsn: string | null;
  lag_bytes: number | null;
  lag_seconds: number | null;
  wal_status: string | null;
  safe_wal_size: number | null;
  /** The slot cannot stream anymore (invalidated, or gone while the registry has its history). */
  lost: boolean;
  /** `invalidation_reason` (PG 17+), or what was inferred: wal_removed, rows_removed, missing. */
  invalidation_reason: string | null;
  /** One line naming what is wrong and the fix, when the slot is lost or half recreated. */
  problem: string | null;
  /** Why the slot's WAL is at risk (unreserved, safe_wal_size under --wal-warn-bytes), or null. */
  wal_warning: string | null;
}

/** A table's gap in the change history (a recreated slot). */
export interface GapStatus {
  table: string;
  schema: string;
  table_name: string;
  /** The files hold every change up to here. */
  from_lsn: string | null;
  /** The new slot's consistent point; null while init --recreate-slot runs. */
  to_lsn: string | null;
  reason: string;
  created_at: string;
  /** LSN of the full_reload after the gap: complete history from here on; null until exported. */
  complete_from_lsn: string | null;
  /** The table was dropped, so no export closes the gap. */
  table_dropped: boolean;
}

/** A reload operation. */
export interface ReloadStatus {
  id: number;
  table: string;
  schema: string;
  table_name: string;
  state: string;
  requested_at: string | null;
  started_at: string | null;
  finished_at: string | null;
  consistent_lsn: string | null;
  error: string | null;
  /** What a waiting export waits for (the oldest running transaction). */
  waiting_for: string | null;
  /** Why it was requested: `requested`, `initial`, `ddl`, `rename`. */
  reason: string | null;
}

/** One table of the report. */
export interface TableStatus {
  name: string;
  schema: string;
  table: string;
  mode: string;
  last_batch_ts: string | null;
  last_lsn: string | null;
  last_seq: number | null;
  files: number;
  rows: number;
  bytes: number;
  reload_lsn: string | null;
  last_reload: ReloadStatus | null;
  /** Why the table needs attention (a failed or waiting reload, no files, an open gap), or null. */
  problem: string | null;
}

/** Totals over every table of the slot. */
export interface TableSummary {
  tables: number;
  /** Tables per mode (streaming, pending_reload, reloading, dropped). */
  modes: Record<string, number>;
  files: number;
  rows: number;
  bytes: number;
  /** Tables whose `problem` is set. */
  needing_attention: number;
}

/** The whole `--json` document. */
export interface StatusReport {
  source: string;
  /** `host:port/db` of a separate registry, or "in the source". */
  registry: string;
  slot: SlotStatus;
  checkpoint: { lsn: string; updated_at: string } | null;
  table_summary: TableSummary;
  tables: TableStatus[];
  pending_reloads: ReloadStatus[];
  failed_reloads: ReloadStatus[];
  history_gaps: GapStatus[];
  /** Other slots (sources) that share this registry, with their source database. */
  other_slots: { slot: string; database: string | null }[];
  /**
   * Where the files are, as recorded by `stream` (a directory or
   * `s3://bucket/prefix`; null before the first stream), and uploads begun
   * but not registered yet (in flight, or left by a crash until the next start).
   */
  storage: { url: string | null; pending_uploads: number };
}

const FAILED_SHOWN = 20;
/** Up to this many tables, the text form lists them all; above, only those needing attention. */
export const TABLES_LISTED = 50;
/** At most this many tables needing attention are listed without --all-tables. */
export const ATTENTION_LISTED = 50;

function iso(v: unknown): string | null {
  return v instanceof Date ? v.toISOString() : v == null ? null : String(v);
}

function num(v: unknown): number | null {
  return v == null ? null : Number(v);
}

function reloadRow(r: Record<string, unknown>): ReloadStatus {
  return {
    id: Number(r.id),
    table: `${r.schema_name}.${r.table_name}`,
    schema: r.schema_name as string,
    table_name: r.table_name as string,
    state: r.state as string,
    requested_at: iso(r.requested_at),
    started_at: iso(r.started_at),
    finished_at: iso(r.finished_at),
    consistent_lsn: (r.consistent_lsn as string | null) ?? null,
    error: (r.error as string | null) ?? null,
    waiting_for: (r.waiting_for as string | null) ?? null,
    reason: (r.reason as string | null) ?? null,
  };
}

/** Collects the status report of one slot. */
export async function collectStatus(
  catalog: SourceCatalog,
  registry: Registry,
  config: Config,
): Promise<StatusReport> {
  await registry.assertInitialized();
  await registry.assertOwnedBy(await catalog.identity(), "report on");
  const s = await catalog.slot(config.slot);
  const currentWal = await catalog.currentWalLsn();
  const rows = await registry.statusRows(FAILED_SHOWN);
  const cp = rows.checkpoint;
  const lagBytes = s?.lagBytes == null ? null : Math.max(0, Number(s.lagBytes));
  const gapLog = registry.historyGaps();
  const health = await catalog.slotHealth(config.slot, await gapLog.hasHistory());
  const unfinished = (await gapLog.pending()).count > 0;
  let lagSeconds: number | null = null;
  if (lagBytes === 0) lagSeconds = 0;
  else if (lagBytes !== null && cp) lagSeconds = Math.max(0, Math.round(Number(cp.age)));
  const slot: SlotStatus = {
    name: config.slot,
    exists: s !== null,
    active: Boolean(s?.active),
    active_pid: num(s?.activePid),
    confirmed_flush_lsn: s?.confirmedFlushLsn ?? null,
    restart_lsn: s?.restartLsn ?? null,
    current_wal_lsn: currentWal,
    lag_bytes: lagBytes,
    lag_seconds: lagSeconds,
    wal_status: s?.walStatus ?? null,
    safe_wal_size: num(s?.safeWalSize),
    lost: health.lost,
    invalidation_reason: health.invalidationReason,
    problem: health.lost
      ? slotLostMessage(config.slot, health.invalidationReason)
      : unfinished
      ? unfinishedRecreateMessage(config.slot)
      : null,
    wal_warning: walWarning(health, config.walWarnBytes),
  };
  const lastReload = new Map<string, ReloadStatus>();
  for (const r of rows.lastReloads) {
    lastReload.set(`${r.schema_name}\0${r.table_name}`, reloadRow(r));
  }
  const gaps = (await gapLog.list()).map((g) => ({
    table: `${g.schema}.${g.table}`,
    schema: g.schema,
    table_name: g.table,
    from_lsn: g.fromLsn === null ? null : formatLsn(g.fromLsn),
    to_lsn: g.toLsn === null ? null : formatLsn(g.toLsn),
    reason: g.reason,
    created_at: iso(g.createdAt)!,
    complete_from_lsn: g.resumesAtLsn === null ? null : formatLsn(g.resumesAtLsn),
    table_dropped: g.dropped,
  }));
  const openGap = new Set(
    gaps.filter((g) => g.complete_from_lsn === null && !g.table_dropped).map((g) => g.table),
  );
  const tables: TableStatus[] = rows.tables.map((r) => ({
    name: `${r.schema_name}.${r.table_name}`,
    schema: r.schema_name as string,
    table: r.table_name as string,
    mode: r.mode as string,
    last_batch_ts: (r.last_batch_ts as string | null) ?? null,
    last_lsn: (r.last_lsn as string | null) ?? null,
    last_seq: num(r.last_seq),
    files: Number(r.files),
    rows: Number(r.rows),
    bytes: Number(r.bytes),
    reload_lsn: (r.reload_lsn as string | null) ?? null,
    last_reload: lastReload.get(`${r.schema_name}\0${r.table_name}`) ?? null,
    problem: null,
  }));
  for (const t of tables) t.problem = tableProblem(t, openGap.has(t.name));
  const others = (await registry.slots()).filter((x) => x.slot !== config.slot);
  const storage = {
    url: await registry.storageUrl(),
    pending_uploads: (await registry.uploadIntents()).length,
  };
  return {
    storage,
    source: describeTarget(config.sourceUrl),
    registry: config.registryUrl ? describeTarget(config.registryUrl) : "in the source",
    slot,
    checkpoint: cp ? { lsn: cp.lsn as string, updated_at: iso(cp.updated_at)! } : null,
    table_summary: summarize(tables),
    tables,
    pending_reloads: rows.pending.map(reloadRow),
    failed_reloads: rows.failed.map(reloadRow),
    other_slots: others,
    history_gaps: gaps,
  };
}

/** Why a table needs attention, or null when it is healthy (dropped tables are not). */
function tableProblem(t: TableStatus, openGap: boolean): string | null {
  if (t.mode === "dropped") return null;
  if (t.last_reload?.state === "failed") {
    return `reload failed${t.last_reload.error ? `: ${t.last_reload.error}` : ""}`;
  }
  if (openGap) return "history gap: its full export after the gap is not registered yet";
  if (t.mode === "pending_reload") return "waiting for its reload";
  if (t.mode === "reloading") return "reload exporting";
  if (t.files === 0) return "no files yet";
  return null;
}

function summarize(tables: TableStatus[]): TableSummary {
  const modes: Record<string, number> = {};
  let files = 0, rows = 0, bytes = 0, attention = 0;
  for (const t of tables) {
    modes[t.mode] = (modes[t.mode] ?? 0) + 1;
    files += t.files;
    rows += t.rows;
    bytes += t.bytes;
    if (t.problem) attention++;
  }
  return { tables: tables.length, modes, files, rows, bytes, needing_attention: attention };
}
