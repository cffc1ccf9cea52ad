/**
 * Which registered files rebuild a table: the file selection of the replay
 * rule, in one place so that a change of how files map to tables touches
 * only this function.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { formatLsn, type Lsn, parseLsn } from "../lsn.ts";

/** One registered data file. */
export interface PlanFile {
  id: string;
  path: string;
  fileType: "streaming" | "full_reload";
  startLsn: Lsn;
  endLsn: Lsn;
  startSeq: number;
  /** Seq of the last row; -1 for a full_reload. */
  endSeq: number;
}

/** The files that rebuild one table. */
export interface ReplayPlan {
  /** The base; null when the table has no full_reload (yet) in range. */
  fullReload: PlanFile | null;
  /** Streaming files that may hold rows at or after the base's LSN, in replay order. */
  streaming: PlanFile[];
  /** Highest file_log id of the table, to notice new files cheaply. */
  maxFileId: string | null;
}

/**
 * The newest full_reload whose LSN is at or before `asOf` (the newest of all
 * without it), then every streaming file that ends at or after its LSN (and,
 * with `asOf`, starts at or before it). Rows still need the LSN filter
 * (`_cdc_lsn` >= C, and <= asOf).
 */
export async function replayPlan(
  registry: pg.Client,
  slot: string,
  table: { schema: string; table: string },
  asOf?: Lsn,
): Promise<ReplayPlan> {
  const asOfText = asOf === undefined ? null : formatLsn(asOf);
  const res = await registry.query(
    `WITH base AS (
       SELECT id, start_lsn FROM cdc_registry.file_log
       WHERE slot_name = $1 AND schema_name = $2 AND table_name = $3
         AND file_type = 'full_reload' AND ($4::pg_lsn IS NULL OR start_lsn <= $4::pg_lsn)
       ORDER BY start_lsn DESC, id DESC LIMIT 1)
     SELECT f.id::text AS id, f.path, f.file_type, f.start_lsn::text AS start_lsn,
            f.end_lsn::text AS end_lsn, f.start_seq, f.end_seq,
            max(f.id) OVER ()::text AS max_id
     FROM cdc_registry.file_log f LEFT JOIN base ON true
     WHERE f.slot_name = $1 AND f.schema_name = $2 AND f.table_name = $3
       AND ((f.file_type = 'full_reload' AND f.id = base.id)
         OR (f.file_type = 'streaming' AND (base.id IS NULL OR f.end_lsn >= base.start_lsn)
             AND ($4::pg_lsn IS NULL OR f.start_lsn <= $4::pg_lsn)))
     ORDER BY f.start_lsn, f.file_type = 'streaming', f.start_seq, f.id`,
    [slot, table.schema, table.table, asOfText],
  );
  const files: PlanFile[] = res.rows.map((r) => ({
    id: r.id,
    path: r.path,
    fileType: r.file_type,
    startLsn: parseLsn(r.start_lsn),
    endLsn: parseLsn(r.end_lsn),
    startSeq: r.start_seq ?? 0,
    endSeq: r.file_type === "full_reload" ? -1 : (r.end_seq ?? 2 ** 31 - 1),
  }));
  const fullReload = files.find((f) => f.fileType === "full_reload") ?? null;
  return {
    fullReload,
    streaming: files.filter((f) => f.fileType === "streaming"),
    maxFileId: res.rows[0]?.max_id ?? null,
  };
}
