/**
 * History gaps: when a slot is lost and recreated, the changes between the
 * old checkpoint and the new slot's consistent point are gone for good. Each
 * table gets a `cdc_registry.history_gap` row saying so, and a full export
 * that makes its files complete again from that export's LSN on.
 *
 * A gap is opened (to_lsn NULL) in the same transaction that requests the
 * exports, before the old slot is dropped, and closed with the new slot's
 * consistent point once it exists. `stream` refuses to run while a gap is
 * open, so a crash in between never lets changes of the new slot land on top
 * of the old history unmarked.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { CdcError } from "../errors.ts";
import { formatLsn, type Lsn, parseLsn } from "../lsn.ts";
import { STATUS_QUERIES } from "./status_queries.ts";

/** One table's gap as `status` and `verify` report it. */
export interface HistoryGap {
  id: number;
  schema: string;
  table: string;
  /** The table's history is complete up to here (old checkpoint or its last position). */
  fromLsn: Lsn | null;
  /** The new slot's consistent point; null while `init --recreate-slot` runs. */
  toLsn: Lsn | null;
  reason: string;
  createdAt: Date;
  /** LSN of the first full_reload at or after `toLsn`: complete history resumes there. */
  resumesAtLsn: Lsn | null;
  /** The table was dropped since (its export after the gap will never come). */
  dropped: boolean;
}

/** What opening the gaps did. */
export interface OpenedGaps {
  tables: number;
  exportsRequested: number;
}

/** The history gaps of one slot. */
export class HistoryGapLog {
  readonly client: pg.Client;
  readonly slot: string;

  constructor(client: pg.Client, slot: string) {
    this.client = client;
    this.slot = slot;
  }

  /** Whether the registry holds files or a checkpoint for the slot (false before migrations). */
  async hasHistory(): Promise<boolean> {
    if (!(await this.#exists("checkpoint")) || !(await this.#exists("file_log"))) return false;
    const res = await this.client.query(STATUS_QUERIES.hasHistory, [this.slot]);
    return Boolean(res.rows[0].ok);
  }

  async #exists(table: string): Promise<boolean> {
    const res = await this.client.query("SELECT to_regclass($1) IS NOT NULL AS ok", [
      `cdc_registry.${table}`,
    ]);
    return Boolean(res.rows[0].ok);
  }

  /**
   * Gaps opened by an `init --recreate-slot` that did not finish (none before
   * migration 4), with the newest LSN they start from.
   */
  async pending(): Promise<{ count: number; openedAtLsn: Lsn | null }> {
    if (!(await this.#exists("history_gap"))) return { count: 0, openedAtLsn: null };
    const res = await this.client.query(STATUS_QUERIES.openGaps, [this.slot]);
    const r = res.rows[0];
    return { count: Number(r.n), openedAtLsn: r.opened_at ? parseLsn(r.opened_at) : null };
  }

  /** Tables that would get a gap: every table of the slot that is not dropped. */
  async tableCount(): Promise<number> {
    if (!(await this.#exists("table_state"))) return 0;
    const res = await this.client.query(
      `SELECT count(*) AS n FROM cdc_registry.table_state WHERE slot_name = $1 AND mode <> 'dropped'`,
      [this.slot],
    );
    return Number(res.rows[0].n);
  }

  /**
   * In one transaction: a gap row for every table that is not dropped, from
   * the newest position its files are known complete to, and a full export
   * request for each (reusing a request that is already pending).
   * `sourceLsn` is the source's WAL position now: every slot created later
   * is confirmed past it, every older one is not.
   */
  async open(reason: string, sourceLsn: Lsn): Promise<OpenedGaps> {
    const c = this.client;
    await c.query("BEGIN");
    try {
      const requested = await c.query(
        `INSERT INTO cdc_registry.reload_operations (slot_name, schema_name, table_name)
         SELECT s.slot_name, s.schema_name, s.table_name FROM cdc_registry.table_state s
         WHERE s.slot_name = $1 AND s.mode <> 'dropped'
           AND NOT EXISTS (SELECT 1 FROM cdc_registry.reload_operations o
                           WHERE o.slot_name = s.slot_name AND o.schema_name = s.schema_name
                             AND o.table_name = s.table_name
                             AND o.state IN ('requested', 'exporting'))`,
        [this.slot],
      );
      // GREATEST ignores NULLs: a table's files are complete up to the
      // checkpoint, and up to its own last row or export when those are later.
      const gaps = await c.query(
        `INSERT INTO cdc_registry.history_gap (slot_name, schema_name, table_name, relation_oid,
           from_lsn, reason, reload_id, opened_at_lsn)
         SELECT s.slot_name, s.schema_name, s.table_name, s.relation_oid,
                GREATEST((SELECT checkpoint_lsn FROM cdc_registry.checkpoint k
                          WHERE k.slot_name = s.slot_name), s.last_lsn, s.reload_lsn),
                $2,
                (SELECT max(o.id) FROM cdc_registry.reload_operations o
                 WHERE o.slot_name = s.slot_name AND o.schema_name = s.schema_name
                   AND o.table_name = s.table_name AND o.state IN ('requested', 'exporting')),
                $3::pg_lsn
         FROM cdc_registry.table_state s
         WHERE s.slot_name = $1 AND s.mode <> 'dropped'`,
        [this.slot, reason, formatLsn(sourceLsn)],
      );
      await c.query(
        `UPDATE cdc_registry.table_state SET mode = 'pending_reload', updated_at = now()
         WHERE slot_name = $1 AND mode = 'streaming'`,
        [this.slot],
      );
      await c.query("COMMIT");
      return { tables: gaps.rowCount ?? 0, exportsRequested: requested.rowCount ?? 0 };
    } catch (error) {
      await c.query("ROLLBACK").catch(() => {});
      throw new CdcError(
        "registry",
        `Cannot record the history gap: ${(error as Error).message.split("\n")[0]}`,
        { cause: error },
      );
    }
  }

  /** Closes the open gaps at the new slot's consistent point. */
  async close(lsn: Lsn): Promise<number> {
    const res = await this.client.query(
      `UPDATE cdc_registry.history_gap SET to_lsn = $2::pg_lsn
       WHERE slot_name = $1 AND to_lsn IS NULL`,
      [this.slot, formatLsn(lsn)],
    );
    return res.rowCount ?? 0;
  }

  /** Every gap of the slot, oldest first (empty before migration 4). */
  async list(): Promise<HistoryGap[]> {
    if (!(await this.#exists("history_gap"))) return [];
    const res = await this.client.query(STATUS_QUERIES.gaps, [this.slot]);
    return res.rows.map((r) => ({
      id: Number(r.id),
      schema: r.schema_name,
      table: r.table_name,
      fromLsn: r.from_lsn ? parseLsn(r.from_lsn) : null,
      toLsn: r.to_lsn ? parseLsn(r.to_lsn) : null,
      reason: r.reason,
      createdAt: r.created_at,
      resumesAtLsn: r.resumes_at ? parseLsn(r.resumes_at) : null,
      dropped: Boolean(r.dropped),
    }));
  }
}

/** One line describing a gap, for `verify` notes and logs. */
export function gapNote(g: HistoryGap): string {
  const lsn = (l: Lsn | null) => l === null ? "the start" : formatLsn(l);
  const span = g.toLsn === null
    ? `from ${lsn(g.fromLsn)} (init --recreate-slot has not finished)`
    : `from ${lsn(g.fromLsn)} to ${formatLsn(g.toLsn)}`;
  const after = g.resumesAtLsn !== null
    ? `its history is complete again from the full_reload at ${formatLsn(g.resumesAtLsn)}`
    : g.dropped
    ? "the table was dropped before its export after the gap"
    : "its full export after the gap is not registered yet, so replay misses the gap's changes until it is";
  return `history gap in ${g.schema}.${g.table} ${span} (slot recreated: ${g.reason}, ${g.createdAt.toISOString()}); ${after}`;
}
