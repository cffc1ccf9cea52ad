/**
 * What `materialize` needs from a target (PostgreSQL, DuckDB, csv:,
 * parquet:): per-table progress kept in the target itself, and a sink that
 * applies one table's files in the target's transactions.
 */

import type { TableShape } from "../replay/folder_schema.ts";
import type { ReplayPosition, ReplaySink } from "../replay/replay_sink.ts";

/** A source table, by schema and name. */
export interface SourceTable {
  schema: string;
  table: string;
}

/** Where a table in the target stands, from its progress row. */
export interface TableProgress {
  /** The full_reload the table was built from (file_log path). */
  fullReloadPath: string;
  /** Last change applied. */
  position: ReplayPosition;
  /** Columns as of that change. */
  shape: TableShape;
  /** Target details (column types, index name, exported position). */
  extra: Record<string, unknown>;
}

/** A table sink that commits progress with its rows. */
export interface TableSink extends ReplaySink {
  /** Commits what is left (a rebuild swaps the new table in here). */
  finish(): Promise<void>;
  /** Rolls back what is not committed. */
  abort(): Promise<void>;
}

/** A materialize target. */
export interface MaterializeTarget {
  /** Progress of a table; null when materialize never built it. */
  progress(t: SourceTable): Promise<TableProgress | null>;
  /** Whether a table of that name exists in the target. */
  exists(t: SourceTable): Promise<boolean>;
  /**
   * A sink for one table. `rebuild` builds a new table beside the old one
   * and swaps it in at {@linkcode TableSink.finish}; otherwise changes are
   * applied to the table `prior` describes, one transaction per file.
   */
  sink(t: SourceTable, rebuild: boolean, prior: TableProgress | null): Promise<TableSink>;
  /** After a table is up to date (csv:/parquet: write `<tableDir>.csv.gz` / `.parquet` here). */
  publish(t: SourceTable, tableDir: string): Promise<void>;
  close(): Promise<void>;
}

/** Thrown when a value does not fit a column's DuckDB type: retry with the column as VARCHAR. */
export class WidenColumn extends Error {
  constructor(readonly column: string) {
    super(`column "${column}" needs VARCHAR`);
  }
}

/** Build tables of a table start with this (a hash of its name, so leftovers are found). */
export function buildPrefix(table: string): string {
  let h = 0x811c9dc5;
  for (const ch of new TextEncoder().encode(table)) h = Math.imul(h ^ ch, 0x01000193) >>> 0;
  return `_cdc_build_${h.toString(16).padStart(8, "0")}_`;
}

/** Thrown when a row is longer than DuckDB's default line limit: retry the table with a larger one. */
export class LongLines extends Error {
  constructor() {
    super("a row is longer than the CSV line limit");
  }
}

/** Progress table, in every target. */
export const PROGRESS_TABLE = "cdc_egress.progress";

/** Columns of the progress table (text in every target). */
export const PROGRESS_DDL = `CREATE TABLE IF NOT EXISTS ${PROGRESS_TABLE} (
  schema_name text NOT NULL,
  table_name text NOT NULL,
  slot_name text NOT NULL,
  full_reload_path text NOT NULL,
  applied_lsn text NOT NULL,
  applied_seq integer NOT NULL,
  shape text NOT NULL,
  extra text NOT NULL,
  updated_at text NOT NULL,
  PRIMARY KEY (schema_name, table_name))`;
