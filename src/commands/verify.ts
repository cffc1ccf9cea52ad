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

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import type { Config } from "../config.ts";
import { redact } from "../source/connect.ts";
import { runVerify, type VerifyScope } from "../verify/run_verify.ts";
import { renderVerifyReport } from "../verify/verify_report.ts";

/** Options of `verify`. */
export interface VerifyOptions extends VerifyScope {
  json: boolean;
  /** Where report lines go (stdout by default). */
  print?: (line: string) => void;
  /** Where the one-line error goes when verify cannot run (stderr by default). */
  printError?: (line: string) => void;
}

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
      for (const line of renderVerifyReport(report)) print(line);
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
