/**
 * The registry queries behind `status`, kept together so a test can EXPLAIN
 * each one against a large registry. Each takes the slot as `$1` (but
 * `slots`); `failedReloads` takes how many to return as `$2`.
 *
 * None reads `file_log` row by row: per-table file totals come from
 * `file_totals` (kept by triggers, registry migration 7), and the reload
 * lists and open gaps use the indexes of migration 7. {@linkcode statusQueryParams} gives
 * each query's parameters. Reading `table_state` and
 * `file_totals` whole for the slot is expected: they hold one row per table
 * and status reports every table; so is reading `history_gap` whole for
 * `gaps`, which status reports one by one too.
 */

const RELOAD_COLUMNS = `id, schema_name, table_name, state, requested_at, started_at,
  finished_at, consistent_lsn::text AS consistent_lsn, error, waiting_for, reason`;

/** SQL of each status query, by name. */
export const STATUS_QUERIES = {
  checkpoint: `SELECT checkpoint_lsn::text AS lsn, updated_at,
         extract(epoch FROM now() - updated_at)::float8 AS age
  FROM cdc_registry.checkpoint WHERE slot_name = $1`,

  /** Each table (by name) with its state and file totals; a name with files but no state too. */
  tables: `WITH state AS (
    SELECT schema_name, table_name, mode, last_batch_ts, last_lsn, last_seq, reload_lsn
    FROM cdc_registry.table_state WHERE slot_name = $1),
  totals AS (
    SELECT schema_name, table_name, file_count, row_count, byte_size
    FROM cdc_registry.file_totals WHERE slot_name = $1)
  SELECT schema_name, table_name, coalesce(s.mode, 'streaming') AS mode, s.last_batch_ts,
         s.last_lsn::text AS last_lsn, s.last_seq, s.reload_lsn::text AS reload_lsn,
         coalesce(f.file_count, 0) AS files, coalesce(f.row_count, 0) AS rows,
         coalesce(f.byte_size, 0) AS bytes
  FROM state s FULL JOIN totals f USING (schema_name, table_name)
  ORDER BY schema_name, table_name`,

  /**
   * The newest reload operation of each table: one probe of
   * reload_operations_table_idx per table, whatever the reload history.
   */
  lastReloads: `SELECT r.* FROM (
    SELECT schema_name, table_name FROM cdc_registry.table_state WHERE slot_name = $1
    UNION SELECT schema_name, table_name FROM cdc_registry.file_totals WHERE slot_name = $1) n
  CROSS JOIN LATERAL (
    SELECT ${RELOAD_COLUMNS} FROM cdc_registry.reload_operations o
    WHERE o.slot_name = $1 AND o.schema_name = n.schema_name AND o.table_name = n.table_name
    ORDER BY o.id DESC LIMIT 1) r`,

  pendingReloads: `SELECT ${RELOAD_COLUMNS} FROM cdc_registry.reload_operations
  WHERE slot_name = $1 AND state IN ('requested', 'exporting') ORDER BY id`,

  /** Failures not followed by a successful reload of the same table, newest first. */
  failedReloads: `SELECT ${RELOAD_COLUMNS} FROM cdc_registry.reload_operations o
  WHERE slot_name = $1 AND state = 'failed'
    AND NOT EXISTS (SELECT 1 FROM cdc_registry.reload_operations d
                    WHERE d.slot_name = o.slot_name AND d.schema_name = o.schema_name
                      AND d.table_name = o.table_name AND d.state = 'done' AND d.id > o.id)
  ORDER BY id DESC LIMIT $2`,

  /**
   * Whether the slot has a checkpoint or any file: one index probe each (an
   * EXISTS over file_log may be planned as a seq scan, which reads every
   * row of other slots when this one has none).
   */
  hasHistory: `SELECT EXISTS (SELECT 1 FROM cdc_registry.checkpoint WHERE slot_name = $1)
      OR (SELECT min(id) FROM cdc_registry.file_log WHERE slot_name = $1) IS NOT NULL AS ok`,

  openGaps: `SELECT count(*) AS n, max(opened_at_lsn)::text AS opened_at
  FROM cdc_registry.history_gap WHERE slot_name = $1 AND to_lsn IS NULL`,

  /** Gaps with the full_reload that closes each (an index probe per gap). */
  gaps: `SELECT g.id, g.schema_name, g.table_name, g.from_lsn::text AS from_lsn,
         g.to_lsn::text AS to_lsn, g.reason, g.created_at,
         (SELECT min(f.start_lsn) FROM cdc_registry.file_log f
          WHERE f.slot_name = g.slot_name AND f.schema_name = g.schema_name
            AND f.table_name = g.table_name AND f.file_type = 'full_reload'
            AND f.start_lsn >= g.to_lsn)::text AS resumes_at,
         coalesce(s.mode = 'dropped', false) AS dropped
  FROM cdc_registry.history_gap g
  LEFT JOIN cdc_registry.table_state s USING (slot_name, schema_name, table_name)
  WHERE g.slot_name = $1 ORDER BY g.id`,

  /**
   * Every slot of the registry with its source database (no parameters). The
   * slots of table_state come from a skip scan of its primary key: one
   * index probe per slot, not a read of every table of every slot.
   */
  slots: `WITH RECURSIVE ts(slot_name) AS (
    (SELECT slot_name FROM cdc_registry.table_state ORDER BY slot_name LIMIT 1)
    UNION ALL
    SELECT (SELECT t.slot_name FROM cdc_registry.table_state t
            WHERE t.slot_name > ts.slot_name ORDER BY t.slot_name LIMIT 1)
    FROM ts WHERE ts.slot_name IS NOT NULL)
  SELECT s.slot_name, o.database_name FROM (
    SELECT slot_name FROM cdc_registry.checkpoint
    UNION SELECT slot_name FROM ts WHERE slot_name IS NOT NULL
    UNION SELECT slot_name FROM cdc_registry.slot_owner) s
  LEFT JOIN cdc_registry.slot_owner o USING (slot_name) ORDER BY 1`,
} as const;

/** The name of a status query. */
export type StatusQueryName = keyof typeof STATUS_QUERIES;

/** The parameters of status query `name` for `slot`. */
export function statusQueryParams(
  name: StatusQueryName,
  slot: string,
  failedShown: number,
): unknown[] {
  if (name === "slots") return [];
  if (name === "failedReloads") return [slot, Math.max(0, Math.floor(failedShown))];
  return [slot];
}
