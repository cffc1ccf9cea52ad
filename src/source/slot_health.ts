/**
 * Whether the replication slot can still feed us, and how close it is to not
 * being able to: a lost (invalidated or dropped) slot, or one whose WAL
 * retention is about to run out. `stream`, `status`, `verify` and `init`
 * share the wording, so the operator sees the same line with the same fix
 * everywhere.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { CdcError } from "../errors.ts";
import { type Lsn, parseLsn } from "../lsn.ts";
import { HistoryGapLog } from "../registry/history_gap.ts";

/** The command that recovers from a lost slot. */
export const RECREATE_COMMAND = "cdc-egress init --recreate-slot";

/** The slot as far as its health goes. */
export interface SlotHealth {
  exists: boolean;
  activePid: number | null;
  confirmedFlushLsn: Lsn | null;
  walStatus: string | null;
  /** Bytes of WAL that can still be written before the slot is at risk; null when unlimited. */
  safeWalSize: number | null;
  /**
   * Why PostgreSQL invalidated the slot: `invalidation_reason` on 17+,
   * `rows_removed` for a conflicting slot on 16, `wal_removed` for
   * `wal_status = 'lost'` before that; `missing` when the slot is gone but
   * the registry holds its history.
   */
  invalidationReason: string | null;
  /** The slot cannot stream anymore. */
  lost: boolean;
  /** max_slot_wal_keep_size in bytes; null when unlimited (-1). */
  maxKeepBytes: number | null;
}

const CAUSES: Record<string, string> = {
  wal_removed:
    "PostgreSQL removed WAL it still needed because it fell more than max_slot_wal_keep_size behind",
  rows_removed: "a recovery conflict removed catalog rows it still needed",
  wal_level_insufficient: "wal_level on the primary was lowered below logical",
  idle_timeout: "it was inactive longer than idle_replication_slot_timeout",
  missing: "it no longer exists on the server (dropped, or a failover to a server without it)",
};

/** One line that names what happened to the slot and how to recover. */
export function slotLostMessage(slot: string, reason: string | null): string {
  const cause = CAUSES[reason ?? "wal_removed"] ?? `it was invalidated (${reason})`;
  return `Replication slot "${slot}" is lost: ${cause}; run "${RECREATE_COMMAND}" to create a new slot and export every table again (the gap in the change history is recorded)`;
}

/** The CdcError `stream`, `init` and `verify` raise for a lost slot (exit code 3). */
export function slotLostError(slot: string, reason: string | null, cause?: unknown): CdcError {
  return new CdcError("slot_lost", slotLostMessage(slot, reason), { cause });
}

/**
 * Recognizes PostgreSQL's refusal to stream from an invalidated slot:
 * "cannot read from logical replication slot" (14-16), "can no longer get
 * changes from replication slot" (17), "can no longer access replication
 * slot" (18), with a detail that says why, or WAL already removed.
 */
export function slotLostFromServerError(slot: string, error: unknown): CdcError | null {
  const e = error as { message?: string; detail?: string; code?: string };
  const message = String(e?.message ?? "");
  const detail = String(e?.detail ?? "");
  const invalidated = /has been invalidated/.test(detail) ||
    /can no longer (get changes from|access) replication slot/.test(message);
  const removed = /requested WAL segment .* has already been removed/.test(message);
  if (!invalidated && !removed) return null;
  let reason = "wal_removed";
  const named = /invalidated due to "([a-z_]+)"/.exec(detail)?.[1];
  if (named) reason = named;
  else if (/conflicting with recovery/.test(detail)) reason = "rows_removed";
  else if (/inactive|idle/.test(detail)) reason = "idle_timeout";
  else if (/wal_level/.test(detail)) reason = "wal_level_insufficient";
  return slotLostError(slot, reason, error);
}

/** One line for a slot whose recreation stopped half-way. */
export function unfinishedRecreateMessage(slot: string): string {
  return `Replication slot "${slot}" is being recreated: an earlier "${RECREATE_COMMAND}" did not finish; run it again`;
}

/**
 * The health of a slot that `stream` or `verify` is about to use; throws the
 * slot_lost error when it is lost (a missing slot counts when the registry
 * holds its history) or when an `init --recreate-slot` did not finish.
 */
export async function assertSlotUsable(
  source: pg.Client,
  registryClient: pg.Client,
  slot: string,
): Promise<SlotHealth> {
  const gaps = new HistoryGapLog(registryClient, slot);
  const health = await readSlotHealth(source, slot, await gaps.hasHistory());
  if (health.lost) throw slotLostError(slot, health.invalidationReason);
  if ((await gaps.pending()).count > 0) {
    throw new CdcError("slot_lost", unfinishedRecreateMessage(slot));
  }
  return health;
}

/**
 * Reads the slot's health. Every column is read through `to_jsonb`, so the
 * same query works on PostgreSQL 14 (no `invalidation_reason`), 16
 * (`conflicting`) and 17+ (`invalidation_reason`). With `hasHistory`, a slot
 * that does not exist is lost rather than merely not created yet.
 */
export async function readSlotHealth(
  client: pg.Client,
  slot: string,
  hasHistory = false,
): Promise<SlotHealth> {
  const res = await client.query(
    `SELECT (SELECT to_jsonb(s) FROM pg_replication_slots s WHERE s.slot_name = $1) AS slot,
            (SELECT setting::int8 FROM pg_settings WHERE name = 'max_slot_wal_keep_size') AS keep_mb`,
    [slot],
  );
  const row = res.rows[0];
  const keepMb = row.keep_mb === null ? -1 : Number(row.keep_mb);
  const maxKeepBytes = keepMb < 0 ? null : keepMb * 1024 * 1024;
  const s = row.slot as Record<string, unknown> | null;
  if (!s) {
    return {
      exists: false,
      activePid: null,
      confirmedFlushLsn: null,
      walStatus: null,
      safeWalSize: null,
      invalidationReason: hasHistory ? "missing" : null,
      lost: hasHistory,
      maxKeepBytes,
    };
  }
  const walStatus = (s.wal_status as string | null) ?? null;
  let reason = (s.invalidation_reason as string | null | undefined) ?? null;
  if (reason === null && s.conflicting === true) reason = "rows_removed";
  if (reason === null && walStatus === "lost") reason = "wal_removed";
  return {
    exists: true,
    activePid: (s.active_pid as number | null) ?? null,
    confirmedFlushLsn: s.confirmed_flush_lsn ? parseLsn(s.confirmed_flush_lsn as string) : null,
    walStatus,
    safeWalSize: s.safe_wal_size == null ? null : Number(s.safe_wal_size),
    invalidationReason: reason,
    lost: reason !== null,
    maxKeepBytes,
  };
}

const DEFAULT_WARN_BYTES = 1024 ** 3;

/**
 * The safe_wal_size under which we warn: the configured value, else 1 GiB
 * but at most half of max_slot_wal_keep_size (a smaller keep size would
 * otherwise warn forever).
 */
export function walWarnThreshold(configured: number | null, maxKeepBytes: number | null): number {
  if (configured !== null) return configured;
  return maxKeepBytes === null
    ? DEFAULT_WARN_BYTES
    : Math.min(DEFAULT_WARN_BYTES, maxKeepBytes / 2);
}

/**
 * Why the slot's WAL is at risk of being removed, or null: `wal_status`
 * `unreserved` (the next checkpoint may invalidate it), or `safe_wal_size`
 * under the threshold. A lost slot is reported by {@linkcode slotLostMessage}.
 */
export function walWarning(
  health: Pick<SlotHealth, "walStatus" | "safeWalSize" | "lost" | "maxKeepBytes">,
  configured: number | null,
): string | null {
  if (health.lost) return null;
  if (health.walStatus === "unreserved") {
    return "wal_status is unreserved: the next checkpoint may remove WAL the slot needs and invalidate it";
  }
  if (health.safeWalSize === null) return null;
  const threshold = walWarnThreshold(configured, health.maxKeepBytes);
  if (health.safeWalSize >= threshold) return null;
  return `safe_wal_size is ${health.safeWalSize} bytes, under the warning threshold of ${threshold} bytes (--wal-warn-bytes): the slot is invalidated if that much more WAL is written before stream catches up`;
}
