/**
 * `cdc-egress materialize [<table>...] --to TARGET [--as-of LSN] [--follow]
 * [--replace]`: rebuilds tables in DuckDB, PostgreSQL, CSV or Parquet from
 * the registered files alone (never the source tables), incrementally.
 */

import type { Config } from "../config.ts";
import { CdcError } from "../errors.ts";
import { type Lsn, parseLsn } from "../lsn.ts";
import {
  materializeTable,
  openTarget,
  preflight,
  registeredTables,
  selectRegistered,
  type TablePass,
} from "../materialize/materializer.ts";
import type { MaterializeTarget } from "../materialize/materialize_target.ts";
import { parseTargetSpec } from "../materialize/target_spec.ts";
import { Registry } from "../registry/registry.ts";
import { connect } from "../source/connect.ts";
import { openLayout } from "../storage/layout_files.ts";
import { isS3Url } from "../storage/s3_location.ts";
import { checkStorageLocation } from "../storage/storage_location.ts";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";

/** Options of `materialize`. */
export interface MaterializeOptions {
  tables: string[];
  to: string | undefined;
  asOf: string | undefined;
  follow: boolean;
  replace: boolean;
  /** How often `--follow` looks for new files (ms). */
  pollMs?: number;
  print?: (line: string) => void;
}

function describe(p: TablePass): string {
  if (p.position === null) return `materialize ${p.table}: no full_reload registered yet`;
  if (!p.rebuilt && p.files === 0) return `materialize ${p.table}: up to date at ${p.position}`;
  return `materialize ${p.table}: ${
    p.rebuilt ? "rebuilt" : "updated"
  }, ${p.files} file(s), ${p.rows} row(s), at ${p.position}`;
}

/** Runs `materialize`; returns the exit code. */
export async function materializeCommand(
  config: Config,
  options: MaterializeOptions,
): Promise<number> {
  const print = options.print ?? ((line: string) => console.log(line));
  const spec = parseTargetSpec(options.to);
  if (options.follow && options.asOf) {
    throw new TypeError("Cannot use --follow with --as-of: a table as of an LSN does not change");
  }
  let asOf: Lsn | undefined;
  if (options.asOf !== undefined) {
    try {
      asOf = parseLsn(options.asOf);
    } catch {
      throw new TypeError(`Cannot use --as-of "${options.asOf}": expected an LSN like 0/16B3748`);
    }
  }
  if (!isS3Url(config.dataDir)) {
    try {
      if (!(await Deno.stat(config.dataDir)).isDirectory) throw new Error("not a directory");
    } catch {
      throw new CdcError(
        "data_dir",
        `Cannot materialize: data dir "${config.dataDir}" cannot be read`,
      );
    }
  }
  // A bucket is checked here (one line when it cannot be read); files are
  // downloaded one at a time into the spool dir while they are applied.
  const layout = await openLayout(config);
  let registryClient: pg.Client;
  try {
    registryClient = await connect(config.registryUrl ?? config.sourceUrl, {
      role: "registry",
      applicationName: "cdc-egress/materialize",
    });
  } catch (error) {
    await layout.close();
    throw error;
  }
  let target: MaterializeTarget | null = null;
  let stop = false;
  let wake: (() => void) | null = null;
  const onSignal = () => {
    stop = true;
    wake?.();
  };
  try {
    const registry = new Registry(registryClient, config.slot);
    await registry.assertInitialized();
    await checkStorageLocation(registry, layout.url, "materialize from");
    const all = await registeredTables(registryClient, config.slot);
    const tables = selectRegistered(all, options.tables, config.slot);
    target = await openTarget(spec, config.slot);
    await preflight(registryClient, target, config.slot, tables, {
      asOf,
      replace: options.replace,
    });
    if (options.follow) {
      Deno.addSignalListener("SIGTERM", onSignal);
      Deno.addSignalListener("SIGINT", onSignal);
    }
    let seen = "";
    while (true) {
      const head = await registryClient.query(
        "SELECT coalesce(max(id), 0)::text AS id FROM cdc_registry.file_log WHERE slot_name = $1",
        [config.slot],
      );
      if (head.rows[0].id !== seen) {
        seen = head.rows[0].id;
        // New tables join a follow run when no names were given.
        const current = options.follow && options.tables.length === 0
          ? selectRegistered(await registeredTables(registryClient, config.slot), [], config.slot)
          : tables;
        for (const t of current) {
          if (stop) break;
          const pass = await materializeTable(
            registryClient,
            target,
            layout,
            config.slot,
            t,
            asOf,
          );
          if (!options.follow || pass.files > 0) print(describe(pass));
        }
      }
      if (!options.follow || stop) break;
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, options.pollMs ?? 1000);
      });
      wake = null;
      if (stop) break;
    }
    return 0;
  } finally {
    if (options.follow) {
      Deno.removeSignalListener("SIGTERM", onSignal);
      Deno.removeSignalListener("SIGINT", onSignal);
    }
    await target?.close().catch(() => {});
    await registryClient.end().catch(() => {});
    await layout.close();
  }
}
