/**
 * Which registered files rebuild a table: the file selection of the replay
 * rule, in one place so that a change of how files map to tables touches
 * only this function. A table is its relation (OID): its files may sit
 * under several names (a rename), and a name may have meant another
 * relation before (DROP + CREATE, a swap).
 */

import type { Lsn } from "../lsn.ts";
import type { Registry } from "../registry/registry.ts";

/** One registered file. */
export interface PlanFile {
  id: string;
  path: string;
  fileType: "streaming" | "full_reload" | "ddl";
  startLsn: Lsn;
  endLsn: Lsn;
  startSeq: number;
  /** Seq of the last row; -1 for a full_reload. */
  endSeq: number;
}

/** The files that rebuild one table. */
export interface ReplayPlan {
  /** The relation; null when the registry knows no relation of that name. */
  oid: number | null;
  /** The base; null when the table has no full_reload (yet) in range. */
  fullReload: PlanFile | null;
  /**
   * Streaming files that may hold rows at or after the base's LSN, and the
   * DDL files after it (their schema.yml changes the columns even before a
   * changed row shows it), in replay order.
   */
  streaming: PlanFile[];
  /** Highest file_log id of the relation, to notice new files cheaply. */
  maxFileId: string | null;
}

/** Where a plan starts and ends. */
export interface PlanOptions {
  /** Stop at this LSN: the base is the newest full_reload at or before it. */
  asOf?: Lsn;
  /**
   * `newest` (default): the newest full_reload, the fastest start. `first`:
   * the first of the table's current history (after the newest one forced
   * by DDL that changed rows or by a name that came to mean it).
   */
  from?: "newest" | "first";
  /** The relation; by default the one that has the name in the registry now. */
  oid?: number;
}

/**
 * The base full_reload (see {@linkcode PlanOptions}), then every streaming
 * file that ends at or after its LSN (and, with `asOf`, starts at or before
 * it), with the DDL files in between. Rows still need the LSN filter
 * (`_cdc_lsn` >= C, and <= asOf).
 */
export async function replayPlan(
  registry: Registry,
  table: { schema: string; table: string },
  options: PlanOptions = {},
): Promise<ReplayPlan> {
  const oid = options.oid ?? await registry.registeredOid(table.schema, table.table);
  if (oid === null) return { oid: null, fullReload: null, streaming: [], maxFileId: null };
  const rows = await registry.replayFiles(oid, options.from ?? "newest", options.asOf);
  const files: PlanFile[] = rows.map((r) => ({
    id: r.id,
    path: r.path,
    fileType: r.fileType,
    startLsn: r.startLsn,
    endLsn: r.endLsn,
    startSeq: r.startSeq ?? 0,
    endSeq: r.fileType === "full_reload" ? -1 : (r.endSeq ?? 2 ** 31 - 1),
  }));
  return {
    oid,
    fullReload: files.find((f) => f.fileType === "full_reload") ?? null,
    streaming: files.filter((f) => f.fileType !== "full_reload"),
    maxFileId: rows[0]?.maxId ?? null,
  };
}
