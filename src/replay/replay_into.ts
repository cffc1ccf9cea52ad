/**
 * Drives a {@linkcode ReplaySink} through a table's files with the replay
 * rule: the full_reload (its LSN C), then the streaming rows with
 * `_cdc_lsn` >= C in (`_cdc_lsn`, `_cdc_seq`) order, folded into set-based
 * deltas of bounded size, following column changes between folders.
 */

import { asLayout, type LayoutFiles } from "../storage/layout_files.ts";
import type { Lsn } from "../lsn.ts";
import { ChangeFolder, type Delta, META_COLUMNS } from "./change_folder.ts";
import { csvGzChangeLines } from "./csv_gz_rows.ts";
import { readFolderSchema, sameShape, type TableShape } from "./folder_schema.ts";
import type { ReplayPlan } from "./replay_plan.ts";
import type { ReplayPosition, ReplaySink } from "./replay_sink.ts";

/** Options for {@linkcode replayInto}. */
export interface ReplayOptions {
  /**
   * Continue a table the sink already holds: skip changes at or before this
   * position. Without it the sink is reset and the full_reload loaded.
   */
  from?: { position: ReplayPosition; shape: TableShape };
  /** Stop after this LSN (rows with a higher `_cdc_lsn` are left out). */
  asOf?: Lsn;
  /** Changes folded into one delta at most (bounds memory). */
  runSize?: number;
  /** Characters of values folded into one delta at most (bounds memory). */
  runChars?: number;
}

/** What {@linkcode replayInto} did. */
export interface ReplayResult {
  shape: TableShape | null;
  position: ReplayPosition | null;
  files: number;
  rows: number;
}

function after(lsn: bigint, seq: number, p: ReplayPosition): boolean {
  return lsn > p.lsn || (lsn === p.lsn && seq > p.seq);
}

/** Replays `plan` from `dataDir` into `sink`. */
export async function replayInto(
  sink: ReplaySink,
  dataDir: string | LayoutFiles,
  plan: ReplayPlan,
  options: ReplayOptions = {},
): Promise<ReplayResult> {
  const layout = asLayout(dataDir);
  // A sink may read the full_reload only at settle() (materialize loads it
  // last): a fetched copy (object storage) is kept until then.
  const held: string[] = [];
  try {
    return await replayHeld(sink, layout, plan, options, held);
  } finally {
    for (const path of held) await layout.release(path);
  }
}

async function replayHeld(
  sink: ReplaySink,
  layout: LayoutFiles,
  plan: ReplayPlan,
  options: ReplayOptions,
  held: string[],
): Promise<ReplayResult> {
  const runSize = options.runSize ?? sink.runSize ?? 20_000;
  const runChars = options.runChars ?? sink.runChars ?? 16 << 20;
  let shape: TableShape;
  let position: ReplayPosition;
  let files = 0;
  let rows = 0;
  // Changes before the base's LSN C are in the full_reload already.
  const base: bigint = plan.fullReload?.startLsn ?? 0n;
  if (options.from) {
    shape = options.from.shape;
    position = options.from.position;
  } else {
    const first = plan.fullReload ?? plan.streaming[0];
    if (!first) return { shape: null, position: null, files: 0, rows: 0 };
    shape = await readFolderSchema(layout, first.path);
    await sink.reset(shape);
    if (plan.fullReload) {
      held.push(plan.fullReload.path);
      rows += await sink.loadFullReload(await layout.path(plan.fullReload.path), shape);
      position = { lsn: plan.fullReload.startLsn, seq: -1 };
      files++;
      await sink.fileDone(plan.fullReload, position, shape);
    } else position = { lsn: 0n, seq: -1 };
  }
  for (const file of plan.streaming) {
    if (!after(file.endLsn, file.endSeq, position)) continue;
    if (options.asOf !== undefined && file.startLsn > options.asOf) break;
    if (file.fileType === "ddl") {
      // Columns added or dropped by DDL exist from here on, even before a
      // changed row shows them. (A dropped table's folder has no schema.yml.)
      const ddlShape = await readFolderSchema(layout, file.path).catch(() => null);
      if (ddlShape && !sameShape(shape, ddlShape)) {
        await sink.reshape(shape, ddlShape);
        shape = ddlShape;
      }
      position = { lsn: file.startLsn, seq: file.startSeq };
      files++;
      await sink.fileDone(file, position, shape);
      continue;
    }
    const fileShape = await readFolderSchema(layout, file.path);
    if (!sameShape(shape, fileShape)) {
      await sink.reshape(shape, fileShape);
      shape = fileShape;
    }
    const folder = new ChangeFolder(shape);
    // The sink applies one delta while the next one is read and folded.
    let applying: Promise<void> | null = null;
    const apply = async (delta: Delta) => {
      await applying;
      applying = sink.apply(delta, shape);
      // Keep a failure from going unhandled until it is awaited.
      applying.catch(() => {});
    };
    let chars = 0;
    // The position as of the last row folded (an object only per file).
    let lsn = position.lsn;
    let seq = position.seq;
    const local = await layout.path(file.path);
    for await (const batch of csvGzChangeLines(local, META_COLUMNS, 2_000)) {
      for (const line of batch) {
        const l = line.lsn;
        const s = line.seq;
        if (l < base || !(l > lsn || (l === lsn && s > seq))) continue;
        if (options.asOf !== undefined && l > options.asOf) continue;
        folder.addLine(line);
        lsn = l;
        seq = s;
        rows++;
        // The values and about as much again for the metadata.
        chars += line.byteLength + 128;
        if (folder.size >= runSize || chars >= runChars) {
          await apply(folder.take());
          chars = 0;
        }
      }
    }
    position = { lsn, seq };
    await layout.release(file.path);
    if (folder.size > 0) await apply(folder.take());
    await applying;
    files++;
    await sink.fileDone(file, position, shape);
  }
  if (sink.settle) rows += await sink.settle();
  return { shape, position, files, rows };
}
