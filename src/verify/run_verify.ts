/**
 * The checks of `verify`, run in order: registered files (existence, size,
 * sha256, rows), per-relation ranges, orphans, history gaps, and `--deep`
 * replay. See src/commands/verify.ts for what each means.
 */

import { dirname, join, resolve } from "node:path";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import type { Config } from "../config.ts";
import { formatLsn } from "../lsn.ts";
import { gapNote, HistoryGapLog } from "../registry/history_gap.ts";
import { type RegisteredFile, Registry } from "../registry/registry.ts";
import { connect } from "../source/connect.ts";
import { assertSlotUsable } from "../source/slot_health.ts";
import { SourceCatalog } from "../source/source_catalog.ts";
import { parseTablePattern } from "../source/table_selection.ts";
import { ensureDir, syncDir, TEMP_PREFIX } from "../write/atomic_file.ts";
import { foreignDataDirError, readDataDirOwner } from "../write/data_dir_owner.ts";
import { batchTimestamp, tableDirName } from "../write/table_dir.ts";
import { type FileRow, tableName } from "./_files.ts";
import { deepCompare } from "./deep_compare.ts";
import { checkFile, checkObject } from "./file_check.ts";
import { eachLimited } from "../write/each_limited.ts";
import { type FetchedLayout, openLayout } from "../storage/layout_files.ts";
import { isS3Url } from "../storage/s3_location.ts";
import { checkStorageLocation } from "../storage/storage_location.ts";
import { findOrphans, QUARANTINE_DIR } from "./orphans.ts";
import { checkRanges } from "./range_check.ts";
import type { SinceMark } from "./since_mark.ts";
import type { Problem, TableReport, VerifyReport } from "./verify_report.ts";

/** What to check (the command's options without output). */
export interface VerifyScope {
  deep: boolean;
  /** Where `--deep` replay starts: the newest full_reload or the first of the history. */
  from?: "newest" | "first";
  /** `--table` patterns (`orders`, `public.*`); empty means every table. */
  tables: string[];
  quarantine: boolean;
  /** Check only the files registered after this mark (no orphan walk, no --deep). */
  since?: SinceMark;
}

const CONCURRENCY = 4;

/** A `Could not run` condition: reported on stderr, exit 2. */
export class CannotRun extends Error {}

/**
 * Runs every check; throws when verify cannot run. Clients it opens are
 * pushed to `clients` for the caller to close.
 */
export async function runVerify(
  config: Config,
  options: VerifyScope,
  clients: pg.Client[],
): Promise<VerifyReport> {
  if (!isS3Url(config.dataDir)) return await runVerifyOn(config, options, clients, null);
  if (options.quarantine) {
    throw new CannotRun(
      "Cannot verify --quarantine on object storage: stream's start-up recovery removes unregistered uploads",
    );
  }
  let layout: FetchedLayout;
  try {
    layout = await openLayout(config) as FetchedLayout;
  } catch (error) {
    throw new CannotRun((error as Error).message.split("\n")[0]);
  }
  try {
    return await runVerifyOn(config, options, clients, layout);
  } finally {
    await layout.close();
  }
}

async function runVerifyOn(
  config: Config,
  options: VerifyScope,
  clients: pg.Client[],
  layout: FetchedLayout | null,
): Promise<VerifyReport> {
  const dataDir = resolve(config.dataDir);
  if (!layout) {
    try {
      if (!(await Deno.stat(dataDir)).isDirectory) {
        throw new CannotRun(`Cannot verify: data dir "${config.dataDir}" is not a directory`);
      }
    } catch (error) {
      if (error instanceof CannotRun) throw error;
      throw new CannotRun(
        `Cannot verify: data dir "${config.dataDir}" ${
          error instanceof Deno.errors.NotFound ? "does not exist" : "cannot be read"
        }`,
      );
    }
  }
  const source = await connect(config.sourceUrl, { role: "source" });
  clients.push(source);
  let registryClient = source;
  if (config.registryUrl) {
    registryClient = await connect(config.registryUrl, { role: "registry" });
    clients.push(registryClient);
  }
  const registry = new Registry(registryClient, config.slot);
  await registry.assertInitialized();
  await assertSlotUsable(source, registryClient, config.slot);
  const catalog = new SourceCatalog(source);
  await registry.assertOwnedBy(await catalog.identity(), "verify");
  await checkStorageLocation(registry, layout?.url ?? dataDir, "verify").catch((error: Error) => {
    throw new CannotRun(error.message);
  });
  // Another slot's files in this data dir are not ours to judge (or quarantine).
  const owner = layout ? null : await readDataDirOwner(dataDir).catch((error: Error) => {
    throw new CannotRun(error.message);
  });
  if (owner && owner.slot !== config.slot) {
    throw new CannotRun(foreignDataDirError("verify", config.dataDir, owner).message);
  }

  const report: VerifyReport = {
    ok: true,
    slot: config.slot,
    data_dir: layout?.url ?? dataDir,
    deep: options.deep,
    stream_running: await streamRunning(catalog, registry, config.slot),
    files_checked: 0,
    rows_checked: 0,
    bytes_checked: 0,
    tables: [],
    problems: [],
    quarantined: [],
    notes: [],
    history_gaps: [],
    since: null,
    next_since: 0,
  };
  const problem = (p: Problem) => report.problems.push(p);

  // This run checks the files up to the newest one now; the next --since run
  // starts after it. Files registered meanwhile are left to that run.
  const upTo = await registry.newestFileId();
  report.next_since = upTo;
  const since = options.since ? await resolveSince(registry, options.since, upTo) : null;
  if (since) {
    report.since = { after_id: since.after, time: since.time?.toISOString() ?? null };
  }

  // Tables: those with registered state or files for this slot.
  const states = await registry.tableStates();
  const withName = (r: RegisteredFile): FileRow => ({
    ...r,
    tableName: tableName(r.schema, r.table),
  });
  let files: FileRow[] = (await registry.fileRows({ after: since?.after ?? 0, upTo })).map(
    withName,
  );
  const tables = new Map<string, TableReport>();
  const addTable = (schema: string, table: string) => {
    const name = tableName(schema, table);
    if (!tables.has(name)) {
      tables.set(name, {
        name,
        schema,
        table,
        mode: null,
        relation_oid: null,
        files: 0,
        rows: 0,
        bytes: 0,
        reload_lsn: null,
      });
    }
    return tables.get(name)!;
  };
  for (const s of states.values()) {
    const t = addTable(s.schema, s.table);
    // A name may have meant several relations: report the one it means now.
    if (t.mode !== null && t.mode !== "dropped" && s.mode === "dropped") continue;
    t.mode = s.mode;
    t.relation_oid = s.oid;
    t.reload_lsn = s.reloadLsn === null ? null : formatLsn(s.reloadLsn);
  }
  for (const f of files) addTable(f.schema, f.table);

  let tableDirs: Set<string> | null = null;
  if (options.tables.length > 0) {
    let patterns;
    try {
      patterns = options.tables.map(parseTablePattern);
    } catch (error) {
      throw new CannotRun((error as Error).message);
    }
    for (const [i, p] of patterns.entries()) {
      const any = [...tables.values()].some((t) =>
        (p.schema === null || p.schema.test(t.schema)) && p.table.test(t.table)
      );
      if (!any) {
        throw new CannotRun(
          `Cannot verify --table "${
            options.tables[i]
          }": no registered table of slot "${config.slot}" matches`,
        );
      }
    }
    for (const [name, t] of tables) {
      if (
        !patterns.some((p) =>
          (p.schema === null || p.schema.test(t.schema)) && p.table.test(t.table)
        )
      ) {
        tables.delete(name);
      }
    }
    files = files.filter((f) => tables.has(f.tableName));
    tableDirs = new Set([...tables.values()].map((t) => tableDirName(t.schema, t.table)));
    for (const f of files) tableDirs.add(f.tableDir);
  }

  // 1. Every registered file: exists, size, sha256, rows.
  await eachLimited(files, CONCURRENCY, async (f) => {
    const t = tables.get(f.tableName)!;
    t.files++;
    t.rows += f.rowCount;
    t.bytes += f.byteSize;
    const found = layout
      ? await checkObject(layout, f, options.deep)
      : await checkFile(dataDir, f, report.stream_running);
    if (found.problem) {
      problem(found.problem);
      return;
    }
    report.files_checked++;
    report.bytes_checked += found.scan!.size;
    const scan = found.scan!;
    if (scan.size !== f.byteSize) {
      problem({
        kind: "size",
        table: f.tableName,
        path: f.path,
        detail: `size ${scan.size} bytes, registry says ${f.byteSize}`,
      });
    } else if (scan.sha256 !== f.sha256) {
      problem({
        kind: "sha256",
        table: f.tableName,
        path: f.path,
        detail: `sha256 ${scan.sha256.slice(0, 16)}..., registry says ${f.sha256.slice(0, 16)}...`,
      });
    }
    if (scan.corrupt) {
      problem({ kind: "corrupt", table: f.tableName, path: f.path, detail: scan.corrupt });
      return;
    }
    // HEAD alone (object storage without --deep) counts no rows.
    if (scan.records === null && f.fileType !== "ddl") return;
    const rows = f.fileType === "ddl" ? 1 : scan.records! - 1;
    report.rows_checked += rows;
    if (rows !== f.rowCount) {
      problem({
        kind: "row_count",
        table: f.tableName,
        path: f.path,
        detail: `${rows} rows in the file, registry says ${f.rowCount}`,
      });
    }
  });

  // 2. Per relation: streaming ranges ordered, not overlapping, not straddling a
  // reload LSN; folders in LSN order.
  // With --since, each relation's newer files are checked together with the
  // files before the mark that they continue (not re-read, only positions).
  const before = since ? (await registry.filesBefore(since.after, files)).map(withName) : [];
  const byRelation = new Map<string, FileRow[]>();
  for (const f of [...before, ...files]) {
    const key = f.oid === null ? `name:${f.tableName}` : `oid:${f.oid}`;
    const list = byRelation.get(key) ?? [];
    list.push(f);
    byRelation.set(key, list);
  }
  for (const list of byRelation.values()) {
    const newest = list.reduce((a, b) => (a.id > b.id ? a : b));
    checkRanges(newest.tableName, list, tables.get(newest.tableName)!, problem);
  }

  // 3. Orphans (a walk of the whole data dir: not with --since). A bucket is
  // not listed: every upload starts with an intent in the registry, and an
  // intent left by a crash is an orphan until the next stream start deletes
  // its object.
  if (layout) {
    if (!options.deep) {
      report.notes.push(
        "object storage: files checked with HEAD (existence, size, sha256 recorded at upload); --deep reads them and counts rows",
      );
    }
    if (!report.stream_running) {
      for (const i of await registry.uploadIntents()) {
        problem({
          kind: "orphan",
          table: null,
          path: i.path,
          detail: `upload never registered (a stream stopped mid-upload${
            i.uploadId ? ", multipart upload incomplete" : ""
          }); the next "cdc-egress stream" start deletes it`,
        });
      }
    }
  }
  const orphans = since || layout ? [] : await findOrphans(
    dataDir,
    registry,
    tableDirs,
    report.stream_running,
    report.notes,
  );
  if (since) report.notes.push("orphan files are not looked for with --since");
  for (const rel of orphans) {
    problem({
      kind: "orphan",
      table: null,
      path: rel,
      detail: rel.split("/").pop()!.startsWith(TEMP_PREFIX)
        ? "temp file the registry does not know (left by a crash)"
        : "file the registry does not know",
    });
  }
  if (options.quarantine && orphans.length > 0) {
    const stamp = batchTimestamp(new Date());
    for (const rel of orphans) {
      const to = `${QUARANTINE_DIR}/${stamp}/${rel}`;
      const target = join(dataDir, to);
      await ensureDir(dirname(target));
      await Deno.rename(join(dataDir, rel), target);
      await syncDir(dirname(target));
      await syncDir(dirname(join(dataDir, rel)));
      report.quarantined.push({ from: rel, to });
    }
  }

  for (const g of await new HistoryGapLog(registryClient, config.slot).list()) {
    if (!tables.has(tableName(g.schema, g.table))) continue;
    // With --since: gaps recorded after the mark, and those still open.
    const open = g.resumesAtLsn === null && !g.dropped;
    if (since?.time && g.createdAt <= since.time && !open) continue;
    report.history_gaps.push(gapNote(g));
  }

  // 4. Deep: replay against the live tables.
  if (options.deep) {
    await deepCompare(
      config,
      layout ?? dataDir,
      registry,
      [...tables.values()],
      report,
      clients,
      options.from ?? "newest",
    );
  }

  // With --since the report names the tables that have files after the mark.
  report.tables = [...tables.values()].filter((t) => !since || t.files > 0)
    .sort((a, b) => a.name < b.name ? -1 : 1);
  report.problems.sort((a, b) =>
    (a.path ?? a.table ?? "").localeCompare(b.path ?? b.table ?? "") ||
    a.kind.localeCompare(b.kind)
  );
  report.ok = report.problems.length === 0;
  return report;
}

/** Whether a `stream` process holds the slot (walsender active or the stream's advisory lock). */
async function streamRunning(
  catalog: SourceCatalog,
  registry: Registry,
  slot: string,
): Promise<boolean> {
  if ((await catalog.slot(slot))?.activePid) return true;
  return (await registry.streamLockHolder()) !== null;
}

/**
 * Where a --since mark puts the check: files with `after < id`, and the time
 * of the mark (for history gaps). A file id must be one of the slot's (or 0,
 * the start); a time must not be in the future.
 */
async function resolveSince(
  registry: Registry,
  mark: SinceMark,
  newest: number,
): Promise<{ after: number; time: Date | null }> {
  if (mark.kind === "id") {
    if (mark.id === 0) return { after: 0, time: null };
    const at = await registry.fileRegisteredAt(mark.id);
    if (at === null) {
      throw new CannotRun(
        `Cannot verify --since ${mark.id}: slot "${registry.slot}" has no file with that id (its newest file is ${newest})`,
      );
    }
    return { after: mark.id, time: at };
  }
  const first = await registry.firstFileAfter(mark.time);
  if (first.future) {
    throw new CannotRun(
      `Cannot verify --since ${mark.text}: that time is in the future (registry clock)`,
    );
  }
  return { after: first.id === null ? newest : first.id - 1, time: mark.time };
}
