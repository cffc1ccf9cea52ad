/** Per-relation position checks of registered files. */

import { formatLsn } from "../lsn.ts";
import { comparePosition, type FileRow, formatPosition, type Position } from "./_files.ts";
import type { Problem, TableReport } from "./verify_report.ts";

/**
 * Checks one relation's files: streaming ranges well formed, ordered and not
 * overlapping, folders in LSN order, no streaming file straddling a
 * full_reload LSN, and table_state.reload_lsn at the newest full_reload.
 */
export function checkRanges(
  name: string,
  list: FileRow[],
  table: TableReport,
  problem: (p: Problem) => void,
): void {
  const streaming = list.filter((f) => f.fileType === "streaming");
  for (const f of streaming) {
    if (comparePosition(f.start, f.end) > 0) {
      problem({
        kind: "bad_range",
        table: name,
        path: f.path,
        detail: `starts at ${formatPosition(f.start)}, after its end ${formatPosition(f.end)}`,
      });
    }
  }
  const ordered = [...streaming].sort((a, b) => comparePosition(a.start, b.start) || a.id - b.id);
  for (let i = 1; i < ordered.length; i++) {
    const a = ordered[i - 1];
    const b = ordered[i];
    if (comparePosition(a.end, b.start) >= 0) {
      problem({
        kind: "overlap",
        table: name,
        path: b.path,
        detail: `range ${formatPosition(b.start)}-${formatPosition(b.end)} overlaps ${a.path} (${
          formatPosition(a.start)
        }-${formatPosition(a.end)})`,
      });
    }
  }
  // Every folder, DDL and export folders included, sorts by the position
  // its content is valid from; an export's content is valid from just before C.
  const validFrom = (f: FileRow): Position =>
    f.fileType === "full_reload" ? { lsn: f.start.lsn, seq: -1 } : f.start;
  const folders = [...list].sort((a, b) =>
    comparePosition(validFrom(a), validFrom(b)) || a.id - b.id
  );
  for (let i = 1; i < folders.length; i++) {
    const a = folders[i - 1];
    const b = folders[i];
    if (b.tableDir === a.tableDir && b.batchTs <= a.batchTs) {
      problem({
        kind: "out_of_order",
        table: name,
        path: b.path,
        detail: `folder ${b.batchTs} sorts before ${a.path} but its content comes after`,
      });
    }
  }
  const reloads = list.filter((f) => f.fileType === "full_reload");
  if (reloads.length === 0) return;
  const c = reloads.reduce((m, f) => (f.start.lsn > m ? f.start.lsn : m), reloads[0].start.lsn);
  const sameRelation = list[0].oid === null || list[0].oid === table.relation_oid;
  if (sameRelation && table.reload_lsn !== null && table.reload_lsn !== formatLsn(c)) {
    problem({
      kind: "reload_lsn",
      table: name,
      path: null,
      detail: `table_state.reload_lsn is ${table.reload_lsn}, the newest full_reload is at ${
        formatLsn(c)
      }`,
    });
  }
  for (const r of reloads) {
    for (const f of streaming) {
      if (f.start.lsn < r.start.lsn && f.end.lsn >= r.start.lsn) {
        problem({
          kind: "straddle",
          table: name,
          path: f.path,
          detail: `range ${formatLsn(f.start.lsn)}-${
            formatLsn(f.end.lsn)
          } straddles the reload LSN ${formatLsn(r.start.lsn)}`,
        });
      }
    }
  }
}
