/**
 * Rebuilds a table in memory from its registered files with the replay
 * rule, for `verify --deep` and the tests.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import type { Lsn } from "../lsn.ts";
import { replayInto } from "./replay_into.ts";
import { replayPlan } from "./replay_plan.ts";
import { TableReplay } from "./table_replay.ts";

/** Replays a table's files from `dataDir`; returns the rebuilt table (null: no files). */
export async function replayTable(
  registry: pg.Client,
  dataDir: string,
  slot: string,
  schema: string,
  table: string,
  asOf?: Lsn,
): Promise<{ replay: TableReplay | null; files: number; rows: number }> {
  const plan = await replayPlan(registry, slot, { schema, table }, asOf);
  const replay = new TableReplay();
  const r = await replayInto(replay, dataDir, plan, { asOf });
  return { replay: r.shape ? replay : null, files: r.files, rows: r.rows };
}
