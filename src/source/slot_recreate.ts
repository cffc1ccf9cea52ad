/**
 * `init --recreate-slot`: replaces a lost slot. The order makes every crash
 * safe to re-run:
 *
 * 1. one registry transaction opens a history gap for every table and
 *    requests its full export (`stream` refuses to run while a gap is open);
 * 2. the old slot is dropped and a new one created; its consistent point S
 *    is later than every LSN the registry holds, so table positions and the
 *    checkpoint stay monotonic and the stream skips nothing of the new slot;
 * 3. the gaps are closed at S.
 *
 * `stream` then exports every table from a snapshot taken after S (its
 * consistent point C >= S): rows before C are skipped as covered by the
 * export, so replay from the newest full_reload is exact again.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { CdcError } from "../errors.ts";
import { formatLsn, type Lsn, parseLsn } from "../lsn.ts";
import { HistoryGapLog } from "../registry/history_gap.ts";
import { Registry } from "../registry/registry.ts";
import type { SlotHealth } from "./slot_health.ts";

/** A step of init's plan. */
export interface PlanStep {
  what: string;
  run: () => Promise<unknown>;
}

/** Options of {@linkcode planSlotRecreate}. */
export interface SlotRecreateOptions {
  slot: string;
  /** Recreate a slot that is not lost. */
  force: boolean;
  print: (line: string) => void;
}

/**
 * Checks that the slot may be recreated and returns the step that does it.
 * Throws, changing nothing, when the slot is healthy (without `force`) or in
 * use.
 */
export async function planSlotRecreate(
  source: pg.Client,
  registryClient: pg.Client,
  health: SlotHealth,
  options: SlotRecreateOptions,
): Promise<PlanStep> {
  const { slot, print } = options;
  const gaps = new HistoryGapLog(registryClient, slot);
  if (health.activePid !== null) {
    throw new CdcError(
      "slot_active",
      `Cannot recreate slot "${slot}": it is active in process ${health.activePid}; stop cdc-egress stream first`,
    );
  }
  const pending = await gaps.pending();
  if (
    pending.count > 0 && health.exists && !health.lost && health.confirmedFlushLsn !== null &&
    pending.openedAtLsn !== null && health.confirmedFlushLsn > pending.openedAtLsn
  ) {
    // An earlier run created the new slot (it starts after the gap was
    // opened) and stopped before closing the gaps; stream refuses to run
    // meanwhile, so the slot is untouched.
    const lsn = health.confirmedFlushLsn;
    return {
      what: `close the history gap of ${pending.count} table(s) at the new slot's start ${
        formatLsn(lsn)
      } (an earlier init --recreate-slot stopped before it)`,
      run: () => gaps.close(lsn),
    };
  }
  if (pending.count === 0 && !health.lost && !options.force) {
    if (!health.exists) {
      throw new CdcError(
        "server",
        `Cannot recreate slot "${slot}": it does not exist and the registry holds no history for it; run "cdc-egress init" to create it`,
      );
    }
    const hint = health.walStatus === "unreserved"
      ? "; start cdc-egress stream now so it catches up before the next checkpoint removes its WAL"
      : "";
    throw new CdcError(
      "server",
      `Cannot recreate slot "${slot}": it is not lost (wal_status ${
        health.walStatus ?? "unknown"
      }); pass --force to drop it anyway, which loses the changes since the last checkpoint and exports every table again${hint}`,
    );
  }
  const reason = health.invalidationReason ?? "forced";
  const tables = await gaps.tableCount();
  const gapStep = pending.count > 0
    ? `finish the recreate begun earlier (history gap of ${pending.count} table(s) recorded)`
    : `record a history gap and request a full export for ${tables} table(s)`;
  return {
    what: `recreate slot "${slot}" (${health.lost ? `lost: ${reason}` : "forced"}): ${gapStep}, ${
      health.exists ? "drop the slot and create it again" : "create the slot"
    }`,
    run: async () => {
      const lock = new Registry(registryClient, slot);
      const holder = await lock.lockSlot();
      if (holder !== null) {
        throw new CdcError(
          "slot_active",
          `Cannot recreate slot "${slot}": cdc-egress stream runs in process ${holder}; stop it first`,
        );
      }
      try {
        if (pending.count === 0) {
          const now = await source.query("SELECT pg_current_wal_insert_lsn()::text AS lsn");
          const opened = await gaps.open(reason, parseLsn(now.rows[0].lsn));
          print(
            `history gap opened for ${opened.tables} table(s); ${opened.exportsRequested} full export(s) requested`,
          );
        }
        if (health.exists) {
          await source.query("SELECT pg_drop_replication_slot($1)", [slot]);
          print(`dropped slot "${slot}"`);
        }
        const created = await source.query(
          "SELECT lsn::text AS lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')",
          [slot],
        );
        const start: Lsn = parseLsn(created.rows[0].lsn);
        const closed = await gaps.close(start);
        print(
          `created slot "${slot}" at ${
            formatLsn(start)
          }; history gap closed there for ${closed} table(s); the next "cdc-egress stream" exports every table`,
        );
      } finally {
        await registryClient.query(
          "SELECT pg_advisory_unlock(hashtext('cdc-egress stream'), hashtext($1))",
          [slot],
        ).catch(() => {});
      }
    },
  };
}
