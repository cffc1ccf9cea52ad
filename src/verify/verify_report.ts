/**
 * What `verify` reports: problems by kind, per-table figures, notes, and the
 * human-readable form of it.
 */

/** Kinds of problems verify reports; stable, used in `--json`. */
export type ProblemKind =
  | "missing" // registered, not on disk
  | "size" // byte size differs from the registry
  | "sha256" // content hash differs from the registry
  | "row_count" // record count differs from the registry
  | "corrupt" // not readable as gzip CSV
  | "unreadable" // cannot be opened or read
  | "bad_range" // start position after end position
  | "overlap" // two streaming files of a table cover overlapping positions
  | "out_of_order" // folder (batch_ts) order disagrees with LSN order
  | "straddle" // a streaming file spans the table's reload LSN
  | "reload_lsn" // table_state.reload_lsn is not the newest full_reload's LSN
  | "orphan" // a file under the data dir the registry does not know
  | "deep_mismatch" // replay of the files differs from the live table
  | "deep_error" // the files could not be replayed
  | "deep_columns"; // columns only the files or only the live table have

/** One inconsistency. */
export interface Problem {
  kind: ProblemKind;
  /** `schema.table`, or null for files outside any registered table. */
  table: string | null;
  /** Path relative to the data dir, or null for table-level problems. */
  path: string | null;
  detail: string;
}

/** What `--deep` found for one table. */
export interface DeepResult {
  replayed_rows: number;
  live_rows: number;
  matching_rows: number;
  /** Live rows the replay does not have. */
  missing_rows: number;
  /** Replayed rows the live table does not have. */
  extra_rows: number;
  /** The first few keys that differ, with which side has them. */
  differing_keys: { key: Record<string, string | null>; side: "live" | "files" | "both" }[];
  skipped?: string;
  note?: string;
}

/** One table of the report. */
export interface TableReport {
  name: string;
  schema: string;
  table: string;
  mode: string | null;
  /** The relation the name means now (a re-created table is another relation). */
  relation_oid: number | null;
  files: number;
  rows: number;
  bytes: number;
  reload_lsn: string | null;
  deep?: DeepResult;
}

/** The whole `--json` document. */
export interface VerifyReport {
  ok: boolean;
  slot: string;
  data_dir: string;
  deep: boolean;
  stream_running: boolean;
  files_checked: number;
  rows_checked: number;
  bytes_checked: number;
  tables: TableReport[];
  problems: Problem[];
  quarantined: { from: string; to: string }[];
  notes: string[];
  /** WAL position when the `--deep` snapshot was taken. */
  deep_snapshot_lsn?: string;
  /** Gaps in the change history left by a recreated slot (notes, not problems). */
  history_gaps: string[];
  /** With --since: the files checked are those with id above `after_id` (registered after `time`). */
  since: { after_id: number; time: string | null } | null;
  /** The newest file id when the run started: pass it as `--since` next time. */
  next_since: number;
}

const KIND_TEXT: Record<ProblemKind, string> = {
  missing: "missing file",
  size: "size mismatch",
  sha256: "sha256 mismatch",
  row_count: "row count mismatch",
  corrupt: "corrupt file",
  unreadable: "unreadable file",
  bad_range: "bad LSN range",
  overlap: "overlapping LSN ranges",
  out_of_order: "folders out of LSN order",
  straddle: "file straddles reload LSN",
  reload_lsn: "reload LSN mismatch",
  orphan: "orphan file",
  deep_mismatch: "replay differs from live table",
  deep_error: "replay failed",
  deep_columns: "columns not compared",
};

function humanBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

/** The report as lines of text (problems, notes, then a summary line). */
export function renderVerifyReport(r: VerifyReport): string[] {
  const lines: string[] = [];
  for (const p of r.problems) {
    const where = p.path ?? p.table ?? "";
    lines.push(`${KIND_TEXT[p.kind]}: ${where}: ${p.detail}`);
  }
  for (const q of r.quarantined) lines.push(`quarantined: ${q.from} -> ${q.to}`);
  if (r.deep) {
    for (const t of r.tables) {
      const d = t.deep;
      if (!d) continue;
      if (d.skipped) {
        lines.push(`deep ${t.name}: skipped (${d.skipped})`);
        continue;
      }
      lines.push(
        `deep ${t.name}: ${d.replayed_rows} rows replayed, ${d.live_rows} live, ${
          d.missing_rows + d.extra_rows === 0 ? "equal" : "DIFFERENT"
        }${d.note ? ` (${d.note})` : ""}`,
      );
    }
  }
  for (const g of r.history_gaps) lines.push(`note: ${g}`);
  for (const n of r.notes) lines.push(`note: ${n}`);
  const summary =
    `${r.tables.length} table(s), ${r.files_checked} file(s), ${r.rows_checked} row(s), ${
      humanBytes(r.bytes_checked)
    } checked${r.deep ? ", deep" : ""}${
      r.since ? `, files after id ${r.since.after_id} only` : ""
    }`;
  lines.push(
    r.ok
      ? `verify: OK, slot "${r.slot}": ${summary}`
      : `verify: ${r.problems.length} problem(s), slot "${r.slot}": ${summary}`,
  );
  lines.push(`next: --since ${r.next_since}`);
  return lines;
}
