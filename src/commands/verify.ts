/**
 * `cdc-egress verify`: checks the registry of one slot against the files.
 *
 * - Every registered file exists with the registered byte size, sha256 and
 *   row count (gzip CSV files are decompressed as a stream and their records
 *   counted with a quote-aware scanner; a `ddl.sql` counts 1).
 * - Per table, the (LSN, seq) ranges of the streaming files are ordered like
 *   their folders and do not overlap, and no streaming file straddles the
 *   table's newest full_reload LSN.
 * - Files under the data dir that the registry does not know are orphans;
 *   `--quarantine` moves them to `<data_dir>/.quarantine/<ts>/` (nothing is
 *   ever deleted).
 * - `--deep` replays every table from its files and compares it with the
 *   live table, all tables read in one REPEATABLE READ snapshot.
 * - A lost slot cannot run (exit 2, same line as `stream`); history gaps of a
 *   recreated slot are reported as notes, not problems.
 *
 * Exit codes: 0 consistent, 1 inconsistencies found, 2 could not run.
 */

import { createHash } from "node:crypto";
import { dirname, join, resolve } from "node:path";
import { createGunzip } from "node:zlib";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import type { Config } from "../config.ts";
import { compareLsn, formatLsn, type Lsn } from "../lsn.ts";
import { gapNote, HistoryGapLog } from "../registry/history_gap.ts";
import { Registry } from "../registry/registry.ts";
import { replayTable } from "../replay/replay_files.ts";
import { connect, redact } from "../source/connect.ts";
import { assertSlotUsable } from "../source/slot_health.ts";
import { parseTablePattern, qualifiedName, quoteIdent } from "../source/table_selection.ts";
import { ensureDir, pathExists, syncDir, TEMP_PREFIX } from "../write/atomic_file.ts";
import { EXPORT_STAGING_DIR } from "../pipeline/recovery.ts";
import {
  foreignDataDirError,
  isOtherDataDir,
  OWNER_FILE,
  readDataDirOwner,
} from "../write/data_dir_owner.ts";
import { SourceCatalog } from "../source/source_catalog.ts";
import { type FetchedLayout, type LayoutFiles, openLayout } from "../storage/layout_files.ts";
import { isS3Url } from "../storage/s3_location.ts";
import { checkStorageLocation } from "../storage/storage_location.ts";
import { batchTimestamp, tableDirName } from "../write/table_dir.ts";

/** Options of `verify`. */
export interface VerifyOptions {
  deep: boolean;
  /** Where `--deep` replay starts: the newest full_reload or the first of the history. */
  from?: "newest" | "first";
  json: boolean;
  /** `--table` patterns (`orders`, `public.*`); empty means every table. */
  tables: string[];
  quarantine: boolean;
  /** Where report lines go (stdout by default). */
  print?: (line: string) => void;
  /** Where the one-line error goes when verify cannot run (stderr by default). */
  printError?: (line: string) => void;
}

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
}

interface FileRow {
  id: number;
  /** The relation; null for files registered before registry migration 3. */
  oid: number | null;
  schema: string;
  table: string;
  tableName: string;
  tableDir: string;
  batchTs: string;
  path: string;
  fileType: "streaming" | "full_reload" | "ddl";
  start: Position;
  end: Position;
  rowCount: number;
  byteSize: number;
  sha256: string;
}

interface Position {
  lsn: Lsn;
  seq: number;
}

function comparePosition(a: Position, b: Position): number {
  return compareLsn(a.lsn, b.lsn) || a.seq - b.seq;
}

function formatPosition(p: Position): string {
  return `${formatLsn(p.lsn)}#${p.seq}`;
}

const CONCURRENCY = 4;
const DIFF_KEYS = 5;
const QUARANTINE_DIR = ".quarantine";
const SPOOL_DIR = ".spool";
/** How long a registered file may stay under its temp name while a stream publishes it. */
const PUBLISH_WAIT_MS = 5_000;

/**
 * Counts CSV records in a byte stream, quote-aware: a newline inside a
 * quoted field does not end a record. Doubled quotes toggle twice, so they
 * need no special case.
 */
export class CsvRecordCounter {
  records = 0;
  #inQuote = false;
  #pending = false;

  /** Feeds the next chunk. */
  push(chunk: Uint8Array): void {
    let inQuote = this.#inQuote;
    let records = this.records;
    let pending = this.#pending;
    const n = chunk.length;
    for (let i = 0; i < n; i++) {
      const b = chunk[i];
      if (b === 0x22) inQuote = !inQuote;
      else if (b === 0x0a && !inQuote) records++;
    }
    if (n > 0) pending = chunk[n - 1] !== 0x0a || inQuote;
    this.#inQuote = inQuote;
    this.records = records;
    this.#pending = pending;
  }

  /** Ends the stream: the record count, counting a last line without `\n`. */
  finish(): { records: number; unclosedQuote: boolean } {
    return { records: this.records + (this.#pending ? 1 : 0), unclosedQuote: this.#inQuote };
  }
}

/** What reading one file gave. */
export interface ScannedFile {
  size: number;
  sha256: string;
  /** CSV records (header included) for gzip files; null for others or when unreadable. */
  records: number | null;
  /** Why the content is not valid gzip CSV, if it is not. */
  corrupt: string | null;
}

/**
 * Reads a file once: size, sha256 and, for gzip CSV, the record count,
 * decompressing as a stream so memory stays bounded.
 */
export async function scanFile(path: string, gzipCsv: boolean): Promise<ScannedFile> {
  const file = await Deno.open(path, { read: true });
  return await scanStream(file.readable, gzipCsv);
}

/** {@linkcode scanFile} of a stream (an object read from the bucket). */
export async function scanStream(
  readable: ReadableStream<Uint8Array>,
  gzipCsv: boolean,
): Promise<ScannedFile> {
  const hash = createHash("sha256");
  let size = 0;
  const counter = new CsvRecordCounter();
  let corrupt: string | null = null;
  const gunzip = gzipCsv ? createGunzip({ chunkSize: 256 * 1024 }) : null;
  let ended: Promise<void> = Promise.resolve();
  if (gunzip) {
    gunzip.on("data", (chunk: Uint8Array) => counter.push(chunk));
    ended = new Promise((resolve) => {
      gunzip.on("end", () => resolve());
      gunzip.on("error", (error: Error) => {
        corrupt ??= `gzip: ${error.message}`;
        resolve();
      });
    });
  }
  try {
    for await (const chunk of readable) {
      hash.update(chunk);
      size += chunk.length;
      if (gunzip && corrupt === null && !gunzip.write(chunk)) {
        await Promise.race([new Promise((r) => gunzip.once("drain", r)), ended]);
      }
    }
  } catch (error) {
    gunzip?.destroy();
    throw error;
  }
  let records: number | null = null;
  if (gunzip) {
    if (corrupt === null) gunzip.end();
    await ended;
    if (corrupt === null) {
      const counted = counter.finish();
      if (counted.unclosedQuote) corrupt = "CSV: unclosed quote at the end";
      else if (counted.records === 0) corrupt = "CSV: no header row";
      else records = counted.records;
    }
  }
  return { size, sha256: hash.digest("hex"), records, corrupt };
}

/** Runs `fn` over `items` with at most `limit` at a time. */
async function forEachLimit<T>(
  items: T[],
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

function tableName(schema: string, table: string): string {
  return `${schema}.${table}`;
}

/** A `Could not run` condition: reported on stderr, exit 2. */
class CannotRun extends Error {}

const RAW_TYPES = { getTypeParser: () => (v: string) => v } as unknown as pg.CustomTypesConfig;

/** Runs `verify`; returns the exit code (0 consistent, 1 problems, 2 could not run). */
export async function verifyCommand(config: Config, options: VerifyOptions): Promise<number> {
  const print = options.print ?? ((line: string) => console.log(line));
  const printError = options.printError ?? ((line: string) => console.error(line));
  const clients: pg.Client[] = [];
  try {
    const report = await runVerify(config, options, clients);
    if (options.json) {
      print(JSON.stringify(report, null, 2));
    } else {
      for (const line of humanReport(report)) print(line);
    }
    return report.ok ? 0 : 1;
  } catch (error) {
    let message = error instanceof Error ? error.message : String(error);
    for (const url of [config.sourceUrl, config.registryUrl]) message = redact(message, url);
    message = message.split("\n")[0];
    printError(`error: ${message}`);
    if (options.json) print(JSON.stringify({ ok: false, error: message }));
    return 2;
  } finally {
    for (const c of clients) await c.end().catch(() => {});
  }
}

async function runVerify(
  config: Config,
  options: VerifyOptions,
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
  options: VerifyOptions,
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
  };
  const problem = (p: Problem) => report.problems.push(p);

  // Tables: those with registered state or files for this slot.
  const states = await registry.tableStates();
  let files: FileRow[] = (await registry.fileRows()).map((r) => ({
    ...r,
    tableName: tableName(r.schema, r.table),
  }));
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
  await forEachLimit(files, CONCURRENCY, async (f) => {
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
  const byRelation = new Map<string, FileRow[]>();
  for (const f of files) {
    const key = f.oid === null ? `name:${f.tableName}` : `oid:${f.oid}`;
    const list = byRelation.get(key) ?? [];
    list.push(f);
    byRelation.set(key, list);
  }
  for (const list of byRelation.values()) {
    const newest = list.reduce((a, b) => (a.id > b.id ? a : b));
    checkRanges(newest.tableName, list, tables.get(newest.tableName)!, problem);
  }

  // 3. Orphans. A bucket is not listed: every upload starts with an intent
  // in the registry, and an intent left by a crash is an orphan until the
  // next stream start deletes its object.
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
  const orphans = layout ? [] : await findOrphans(
    dataDir,
    registry,
    tableDirs,
    report.stream_running,
    report.notes,
  );
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

  report.tables = [...tables.values()].sort((a, b) => a.name < b.name ? -1 : 1);
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

/** Stats and reads one registered file; returns a problem when it cannot be read. */
async function checkFile(
  dataDir: string,
  f: FileRow,
  streamRunning: boolean,
): Promise<{ scan?: ScannedFile; problem?: Problem }> {
  const full = join(dataDir, f.path);
  const temp = join(dirname(full), TEMP_PREFIX + full.split("/").pop()!);
  const base = { table: f.tableName, path: f.path };
  if (!(await pathExists(full))) {
    const underTemp = await pathExists(temp);
    // A running stream renames a file right after registering it: give it a moment.
    if (underTemp && streamRunning) {
      const deadline = Date.now() + PUBLISH_WAIT_MS;
      while (Date.now() < deadline && !(await pathExists(full))) {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    if (!(await pathExists(full))) {
      return {
        problem: {
          kind: "missing",
          ...base,
          detail: underTemp
            ? `registered but still under its temp name ${TEMP_PREFIX}${
              full.split("/").pop()
            }; the next "cdc-egress stream" start renames it`
            : "registered but not on disk",
        },
      };
    }
  }
  try {
    return { scan: await scanFile(full, f.fileType !== "ddl") };
  } catch (error) {
    return {
      problem: {
        kind: "unreadable",
        ...base,
        detail: (error as Error).message.split("\n")[0],
      },
    };
  }
}

/** HEADs one registered object (and reads it with `deep`); a problem when it is missing. */
async function checkObject(
  layout: FetchedLayout,
  f: FileRow,
  deep: boolean,
): Promise<{ scan?: ScannedFile; problem?: Problem }> {
  const base = { table: f.tableName, path: f.path };
  try {
    const info = await layout.store.head(f.path);
    if (info === null) {
      return { problem: { kind: "missing", ...base, detail: "registered but not in the bucket" } };
    }
    if (!deep) {
      // No sha256 recorded (an object put by another tool): the size is all HEAD tells.
      return {
        scan: { size: info.size, sha256: info.sha256 ?? f.sha256, records: null, corrupt: null },
      };
    }
    return { scan: await scanStream(await layout.store.get(f.path), f.fileType !== "ddl") };
  } catch (error) {
    return {
      problem: { kind: "unreadable", ...base, detail: (error as Error).message.split("\n")[0] },
    };
  }
}

function checkRanges(
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

/**
 * Walks the data dir for files the registry does not know. `schema.yml`,
 * `.spool/` and `.quarantine/` are ignored; a temp file of a registered file
 * is reported as missing instead; while a stream runs, temp files are its
 * open batches and are left alone.
 */
async function findOrphans(
  dataDir: string,
  registry: Registry,
  tableDirs: Set<string> | null,
  streamRunning: boolean,
  notes: string[],
): Promise<string[]> {
  // This slot's files only: the data dir belongs to one slot (its marker says which).
  const known = await registry.registeredPaths();
  const candidates: string[] = [];
  let inProgress = 0;
  const walk = async (rel: string) => {
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(rel ? join(dataDir, rel) : dataDir));
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return; // removed meanwhile
      throw error;
    }
    for (const e of entries.sort((a, b) => a.name < b.name ? -1 : 1)) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (rel === "") {
        if (
          e.isDirectory &&
          (e.name === SPOOL_DIR || e.name === QUARANTINE_DIR || e.name === EXPORT_STAGING_DIR)
        ) continue;
        if (!e.isDirectory && e.name === OWNER_FILE) continue;
        if (tableDirs !== null && !tableDirs.has(e.name)) continue;
        // Another source's data dir nested in this one: never ours to call orphan.
        if (e.isDirectory && await isOtherDataDir(join(dataDir, e.name))) continue;
      }
      if (e.isDirectory) {
        await walk(path);
        continue;
      }
      if (e.name === "schema.yml" || known.has(path)) continue;
      if (e.name.startsWith(TEMP_PREFIX)) {
        const final = `${rel ? rel + "/" : ""}${e.name.slice(TEMP_PREFIX.length)}`;
        if (known.has(final)) continue; // reported as "missing" when it is ours
        if (streamRunning) {
          inProgress++;
          continue;
        }
      }
      candidates.push(path);
    }
  };
  await walk("");
  if (inProgress > 0) {
    notes.push(`${inProgress} temp file(s) of the running stream were not checked`);
  }
  if (candidates.length === 0) return [];
  // A running stream may have registered some of them since the first read.
  const late = await registry.registeredAmong(candidates);
  const out: string[] = [];
  for (const c of candidates) {
    if (!late.has(c) && await pathExists(join(dataDir, c))) out.push(c);
  }
  return out;
}

/**
 * Replays each table and compares it with the live table. All live tables
 * are read in one REPEATABLE READ transaction, i.e. one snapshot.
 */
async function deepCompare(
  config: Config,
  dataDir: string | LayoutFiles,
  registry: Registry,
  tables: TableReport[],
  report: VerifyReport,
  clients: pg.Client[],
  from: "newest" | "first",
): Promise<void> {
  const live = await connect(config.sourceUrl, {
    role: "source",
    applicationName: "cdc-egress/verify",
  });
  clients.push(live);
  await live.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
  try {
    const snap = await live.query("SELECT pg_current_wal_lsn()::text AS lsn");
    report.deep_snapshot_lsn = snap.rows[0].lsn;
    if (report.stream_running) {
      report.notes.push(
        "a stream is running: --deep compares the files with the live tables as of now, so changes not yet in registered files show up as differences",
      );
    }
    for (const t of tables) {
      t.deep = await deepTable(registry, live, dataDir, t, report, from);
    }
  } finally {
    await live.query("COMMIT").catch(() => {});
  }
}

function emptyDeep(skipped: string): DeepResult {
  return {
    replayed_rows: 0,
    live_rows: 0,
    matching_rows: 0,
    missing_rows: 0,
    extra_rows: 0,
    differing_keys: [],
    skipped,
  };
}

async function deepTable(
  registry: Registry,
  live: pg.Client,
  dataDir: string | LayoutFiles,
  t: TableReport,
  report: VerifyReport,
  from: "newest" | "first",
): Promise<DeepResult> {
  if (t.mode === "dropped") return emptyDeep("table dropped");
  const liveRel = await live.query("SELECT to_regclass($1)::oid::int8 AS oid", [qualifiedName(t)]);
  const oid = liveRel.rows[0]?.oid == null ? null : Number(liveRel.rows[0].oid);
  if (oid === null) return emptyDeep("live table not found");
  if (!(await registry.hasDataFiles(oid))) return emptyDeep("no data files registered yet");
  const cols = await live.query(
    `SELECT a.attname AS name FROM pg_attribute a
     WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attgenerated = '' ORDER BY a.attnum`,
    [qualifiedName(t)],
  );
  if (cols.rowCount === 0) return emptyDeep("live table not found");
  const liveColumns = cols.rows.map((r) => r.name as string);

  let replay;
  try {
    replay = (await replayTable(registry, dataDir, t.schema, t.table, { oid, from })).replay;
  } catch (error) {
    report.problems.push({
      kind: "deep_error",
      table: t.name,
      path: null,
      detail: `cannot replay the files: ${(error as Error).message.split("\n")[0]}`,
    });
    return emptyDeep("replay failed");
  }
  if (!replay) return emptyDeep("no data files registered yet");
  // Compare on the columns both sides have: a column added or dropped by DDL
  // reaches the files only with the next changed row.
  const common = replay.columns.filter((c) => liveColumns.includes(c));
  const onlyFiles = replay.columns.filter((c) => !liveColumns.includes(c));
  const onlyLive = liveColumns.filter((c) => !replay.columns.includes(c));
  const project = common.map((c) => replay.columns.indexOf(c));
  const identity = project.length === replay.columns.length && project.every((v, i) => v === i);
  const keyNames = replay.keyColumns.map((i) => replay.columns[i]).filter((c) =>
    common.includes(c)
  );
  const keyIdx = (keyNames.length > 0 ? keyNames : common).map((c) => common.indexOf(c));
  const keyOf = (row: (string | null)[]) => JSON.stringify(keyIdx.map((i) => row[i] ?? null));

  const counts = new Map<string, number>();
  let replayed = 0;
  for (const json of replay.sortedRows()) {
    const row = identity ? json : JSON.stringify(project.map((i) => JSON.parse(json)[i] ?? null));
    counts.set(row, (counts.get(row) ?? 0) + 1);
    replayed++;
  }
  const result = await live.query({
    text: `SELECT ${common.map(quoteIdent).join(", ") || "NULL"} FROM ${qualifiedName(t)}`,
    rowMode: "array",
    types: RAW_TYPES,
  });
  let matching = 0;
  const missingKeys = new Set<string>();
  for (const r of result.rows as (string | null)[][]) {
    const row = JSON.stringify(common.length ? r : []);
    const n = counts.get(row) ?? 0;
    if (n > 0) {
      matching++;
      if (n === 1) counts.delete(row);
      else counts.set(row, n - 1);
    } else {
      missingKeys.add(keyOf(common.length ? r : []));
    }
  }
  const extraKeys = new Set<string>();
  let extra = 0;
  for (const [row, n] of counts) {
    extra += n;
    extraKeys.add(keyOf(JSON.parse(row)));
  }
  const liveCount = result.rows.length;
  const keys = [...new Set([...missingKeys, ...extraKeys])].sort().slice(0, DIFF_KEYS);
  const deep: DeepResult = {
    replayed_rows: replayed,
    live_rows: liveCount,
    matching_rows: matching,
    missing_rows: liveCount - matching,
    extra_rows: extra,
    differing_keys: keys.map((k) => {
      const values = JSON.parse(k) as (string | null)[];
      const key: Record<string, string | null> = {};
      keyIdx.forEach((ci, i) => key[common[ci]] = truncate(values[i]));
      return {
        key,
        side: missingKeys.has(k) && extraKeys.has(k)
          ? "both"
          : missingKeys.has(k)
          ? "live"
          : "files",
      };
    }),
  };
  if (onlyFiles.length + onlyLive.length > 0) {
    deep.note = `compared on the common columns; only in the files: ${
      onlyFiles.join(", ") || "none"
    }; only in the live table: ${onlyLive.join(", ") || "none"}`;
    report.problems.push({
      kind: "deep_columns",
      table: t.name,
      path: null,
      detail: `columns not compared: only in the files: ${
        onlyFiles.join(", ") || "none"
      }; only in the live table: ${onlyLive.join(", ") || "none"}`,
    });
  }
  if (deep.missing_rows + deep.extra_rows > 0) {
    report.problems.push({
      kind: "deep_mismatch",
      table: t.name,
      path: null,
      detail:
        `replay of the files gives ${replayed} rows, the live table has ${liveCount}: ${deep.missing_rows} live rows not in the files, ${deep.extra_rows} replayed rows not live; differing keys: ${
          deep.differing_keys.map((d) => `${JSON.stringify(d.key)} (${sideText(d.side)})`).join(
            ", ",
          )
        }`,
    });
  }
  return deep;
}

function truncate(v: string | null): string | null {
  return v !== null && v.length > 64 ? v.slice(0, 61) + "..." : v;
}

function sideText(side: "live" | "files" | "both"): string {
  return side === "both" ? "values differ" : side === "live" ? "only live" : "only in files";
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

function humanReport(r: VerifyReport): string[] {
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
    } checked${r.deep ? ", deep" : ""}`;
  lines.push(
    r.ok
      ? `verify: OK, slot "${r.slot}": ${summary}`
      : `verify: ${r.problems.length} problem(s), slot "${r.slot}": ${summary}`,
  );
  return lines;
}
