/**
 * What a replay writes into: the in-memory table of `verify --deep`, or a
 * `materialize` target (PostgreSQL, DuckDB). {@linkcode replayInto} drives
 * every sink the same way, so all of them follow one replay rule.
 */

import type { Delta } from "./change_folder.ts";
import type { TableShape } from "./folder_schema.ts";
import type { PlanFile } from "./replay_plan.ts";

/** Position of the last applied change: (`_cdc_lsn`, `_cdc_seq`). */
export interface ReplayPosition {
  lsn: bigint;
  seq: number;
}

/** A table being rebuilt or brought up to date. */
export interface ReplaySink {
  /**
   * Changes per delta that suit this sink (a target that scans the table
   * per statement wants few, large deltas); the driver's default otherwise.
   */
  readonly runSize?: number;
  /** Characters of values per delta that suit this sink. */
  readonly runChars?: number;
  /** Starts the table over, empty, with these columns (before a full_reload). */
  reset(shape: TableShape): Promise<void>;
  /** Loads every row of a full_reload file (absolute path; header first). */
  loadFullReload(path: string, shape: TableShape): Promise<number>;
  /** Moves the rows to a new column set (renames follow attnum; new columns NULL). */
  reshape(from: TableShape, to: TableShape): Promise<void>;
  /** Applies a folded run of changes. */
  apply(delta: Delta, shape: TableShape): Promise<void>;
  /**
   * Called after each file's rows are applied: a transactional sink commits
   * them here together with its progress.
   */
  fileDone(file: PlanFile, position: ReplayPosition, shape: TableShape): Promise<void>;
  /**
   * Called once after the last file: a sink that deferred loading the
   * full_reload (to leave out rows the changes replaced) loads it here and
   * returns the number of its rows.
   */
  settle?(): Promise<number>;
}
