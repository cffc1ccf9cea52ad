/**
 * Rebuilds a table in memory from its registered files with the replay
 * rule, for `verify --deep` and the tests.
 */

import type { Registry } from "../registry/registry.ts";
import type { LayoutFiles } from "../storage/layout_files.ts";
import { replayInto } from "./replay_into.ts";
import { type PlanOptions, replayPlan } from "./replay_plan.ts";
import { TableReplay } from "./table_replay.ts";

/** Replays a table's files from `dataDir`; returns the rebuilt table (null: no files). */
export async function replayTable(
  registry: Registry,
  dataDir: string | LayoutFiles,
  schema: string,
  table: string,
  options: PlanOptions = {},
): Promise<{ replay: TableReplay | null; files: number; rows: number }> {
  const plan = await replayPlan(registry, { schema, table }, options);
  const replay = new TableReplay();
  const r = await replayInto(replay, dataDir, plan, { asOf: options.asOf });
  return { replay: r.shape ? replay : null, files: r.files, rows: r.rows };
}
