/**
 * `cdc-egress status`: the slot (activity, positions, lag, WAL retention),
 * the registry checkpoint, per-table state and file totals, and reloads that
 * are pending or failed. A boxed table on a TTY, plain aligned text
 * otherwise, `--json` for scripts. Reads only; never prints a URL or password.
 *
 * Lag in bytes is `pg_current_wal_lsn() - confirmed_flush_lsn`. Lag in
 * seconds is the time since the registry checkpoint last moved when the lag
 * in bytes is above 0, else 0: an upper bound on how long the oldest
 * unconfirmed change has waited. Rows in open (unflushed) batches live only
 * inside the stream process, so status does not show them.
 */

import type { Config } from "../config.ts";
import {
  ATTENTION_LISTED,
  collectStatus,
  type ReloadStatus,
  type StatusReport,
  TABLES_LISTED,
} from "../observe/status_report.ts";
import { Registry } from "../registry/registry.ts";
import { connect } from "../source/connect.ts";
import { SourceCatalog } from "../source/source_catalog.ts";

/** Options of `status`. */
export interface StatusOptions {
  json: boolean;
  /** Where output goes (stdout by default). */
  print?: (line: string) => void;
  /** Draw boxes (default: when stdout is a terminal). */
  tty?: boolean;
  /** List every table in the text form, not only those needing attention. */
  allTables?: boolean;
}

/** Runs `status`. */
export async function statusCommand(config: Config, options: StatusOptions): Promise<number> {
  const print = options.print ?? ((line: string) => console.log(line));
  const source = await connect(config.sourceUrl, {
    role: "source",
    applicationName: "cdc-egress/status",
  });
  let registryClient = source;
  try {
    if (config.registryUrl) {
      registryClient = await connect(config.registryUrl, {
        role: "registry",
        applicationName: "cdc-egress/status",
      });
    }
    const report = await collectStatus(
      new SourceCatalog(source),
      new Registry(registryClient, config.slot),
      config,
    );
    if (options.json) {
      print(JSON.stringify(report, null, 2));
    } else {
      const tty = options.tty ?? Deno.stdout.isTerminal();
      for (const line of renderStatus(report, tty, options.allTables)) print(line);
    }
    return 0;
  } finally {
    if (registryClient !== source) await registryClient.end().catch(() => {});
    await source.end().catch(() => {});
  }
}

function humanBytes(n: number | null): string {
  if (n === null) return "n/a";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

function humanSeconds(s: number | null): string {
  if (s === null) return "n/a";
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m${s % 60}s`;
  return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
}

/** Renders rows as a table: boxed on a TTY, whitespace-aligned otherwise. */
export function renderTable(headers: string[], rows: string[][], boxed: boolean): string[] {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const numeric = headers.map((_h, i) =>
    rows.some((r) => r[i] !== "-") &&
    rows.every((r) => /^-?[\d.,]+( [KMGT]?i?B)?$|^-$/.test(r[i]))
  );
  const cell = (v: string, i: number) => numeric[i] ? v.padStart(widths[i]) : v.padEnd(widths[i]);
  if (!boxed) {
    return [headers, ...rows].map((r) => r.map(cell).join("  ").trimEnd());
  }
  const line = (l: string, m: string, r: string) =>
    l + widths.map((w) => "─".repeat(w + 2)).join(m) + r;
  return [
    line("┌", "┬", "┐"),
    "│ " + headers.map(cell).join(" │ ") + " │",
    line("├", "┼", "┤"),
    ...rows.map((r) => "│ " + r.map(cell).join(" │ ") + " │"),
    line("└", "┴", "┘"),
  ];
}

function reloadText(r: ReloadStatus | null): string {
  if (!r) return "-";
  const at = r.finished_at ?? r.started_at ?? r.requested_at;
  return `${r.state}${at ? " " + at.slice(0, 19).replace("T", " ") : ""}`;
}

/** The human-readable report. */
export function renderStatus(r: StatusReport, tty: boolean, allTables = false): string[] {
  const out: string[] = [];
  const s = r.slot;
  out.push(`source: ${r.source}`);
  out.push(`registry: ${r.registry}`);
  if (r.storage.url) {
    out.push(
      `storage: ${r.storage.url}${
        r.storage.pending_uploads > 0
          ? ` (${r.storage.pending_uploads} upload(s) not registered yet)`
          : ""
      }`,
    );
  }
  if (!s.exists) {
    out.push(`slot "${s.name}": does not exist${s.lost ? "" : ' (run "cdc-egress init")'}`);
  } else {
    out.push(
      `slot "${s.name}": ${
        s.active ? `active (walsender pid ${s.active_pid})` : "inactive (no stream running)"
      }`,
    );
    const kv: [string, string][] = [
      ["confirmed_flush_lsn", s.confirmed_flush_lsn ?? "n/a"],
      ["restart_lsn", s.restart_lsn ?? "n/a"],
      ["current_wal_lsn", s.current_wal_lsn ?? "n/a"],
      ["lag", `${humanBytes(s.lag_bytes)}, ${humanSeconds(s.lag_seconds)}`],
      [
        "wal_status",
        `${s.wal_status ?? "n/a"}${s.invalidation_reason ? ` (${s.invalidation_reason})` : ""}`,
      ],
      ["safe_wal_size", s.safe_wal_size === null ? "unlimited" : humanBytes(s.safe_wal_size)],
    ];
    for (const [k, v] of kv) out.push(`  ${k.padEnd(20)} ${v}`);
  }
  if (s.problem) out.push(`LOST: ${s.problem}`);
  if (s.wal_warning) out.push(`warning: replication slot WAL is at risk: ${s.wal_warning}`);
  out.push(
    r.checkpoint
      ? `checkpoint: ${r.checkpoint.lsn} (updated ${r.checkpoint.updated_at})`
      : "checkpoint: none yet",
  );
  out.push("");
  if (r.tables.length === 0) {
    out.push("tables: none registered yet");
  } else {
    const sum = r.table_summary;
    const modes = Object.entries(sum.modes).sort((a, b) => b[1] - a[1])
      .map(([mode, n]) => `${n} ${mode}`).join(", ");
    out.push(
      `tables: ${sum.tables} (${modes}); ${sum.files} files, ${sum.rows} rows, ${
        humanBytes(sum.bytes)
      }`,
    );
    const listAll = allTables || r.tables.length <= TABLES_LISTED;
    const attention = r.tables.filter((t) => t.problem !== null);
    const listed = listAll ? r.tables : attention.slice(0, ATTENTION_LISTED);
    out.push("");
    if (listAll) {
      out.push(`tables (${r.tables.length}):`);
    } else if (attention.length === 0) {
      out.push("tables needing attention: none");
    } else {
      out.push(`tables needing attention (${attention.length}):`);
    }
    if (listed.length > 0) {
      out.push(...renderTable(
        [
          "table",
          "mode",
          "last batch",
          "last lsn",
          "files",
          "rows",
          "bytes",
          "reload lsn",
          "last reload",
          ...(listAll ? [] : ["problem"]),
        ],
        listed.map((t) => [
          t.name,
          t.mode,
          t.last_batch_ts ?? "-",
          t.last_lsn ?? "-",
          String(t.files),
          String(t.rows),
          humanBytes(t.bytes),
          t.reload_lsn ?? "-",
          reloadText(t.last_reload),
          ...(listAll ? [] : [t.problem ?? "-"]),
        ]),
        tty,
      ));
    }
    if (!listAll) {
      const more = attention.length - listed.length;
      if (more > 0) out.push(`... and ${more} more needing attention`);
      out.push(
        `${r.tables.length - attention.length} other tables not listed (healthy or dropped); ` +
          "cdc-egress status --all-tables lists every table, --json gives them all",
      );
    }
  }
  // A recreated slot gives every table a pending reload and a gap: at
  // thousands of tables, the first ATTENTION_LISTED and a count.
  const capped = <T>(list: T[]): T[] => allTables ? list : list.slice(0, ATTENTION_LISTED);
  const more = (list: unknown[]) => {
    if (!allTables && list.length > ATTENTION_LISTED) {
      out.push(
        `... and ${list.length - ATTENTION_LISTED} more (--all-tables lists them all, --json too)`,
      );
    }
  };
  const reloads = (title: string, list: ReloadStatus[]) => {
    out.push("");
    if (list.length === 0) {
      out.push(`${title}: none`);
      return;
    }
    out.push(`${title} (${list.length}):`);
    out.push(...renderTable(
      ["id", "table", "state", "reason", "requested", "lsn", "error"],
      capped(list).map((x) => [
        String(x.id),
        x.table,
        x.state,
        x.reason ?? "-",
        (x.requested_at ?? "-").slice(0, 19).replace("T", " "),
        x.consistent_lsn ?? "-",
        x.error ?? (x.state === "requested" ? x.waiting_for : null) ?? "-",
      ]),
      tty,
    ));
    more(list);
  };
  reloads("pending reloads", r.pending_reloads);
  reloads("failed reloads", r.failed_reloads);
  if (r.history_gaps.length > 0) {
    out.push("");
    out.push(
      `history gaps (${r.history_gaps.length}): changes between these LSNs were never captured (slot recreated)`,
    );
    out.push(...renderTable(
      ["table", "from lsn", "to lsn", "reason", "recorded", "complete again from"],
      capped(r.history_gaps).map((g) => [
        g.table,
        g.from_lsn ?? "-",
        g.to_lsn ?? "(recreating)",
        g.reason,
        g.created_at.slice(0, 19).replace("T", " "),
        g.complete_from_lsn ?? (g.table_dropped ? "(table dropped)" : "(full export pending)"),
      ]),
      tty,
    ));
    more(r.history_gaps);
  }
  if (r.other_slots.length > 0) {
    out.push("");
    out.push(
      `other slots in this registry: ${
        r.other_slots.map((o) => `${o.slot}${o.database ? ` (database "${o.database}")` : ""}`)
          .join(", ")
      } (cdc-egress status --slot NAME --source URL shows one)`,
    );
  }
  return out;
}
