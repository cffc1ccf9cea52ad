/**
 * cdc-egress entry point: parses arguments, dispatches to
 * `src/commands/<name>.ts` and maps errors to exit codes.
 *
 * Exit codes: 0 success, 1 failure at run time (or `verify` found
 * inconsistencies), 2 bad usage or configuration (or `verify` could not run),
 * 3 the replication slot is lost (recover with `init --recreate-slot`; a
 * service manager should not restart `stream` on it).
 */

import { parseArgs } from "node:util";
import { type Config, loadConfig, parseDuration, SETTINGS } from "./src/config.ts";
import { CdcError } from "./src/errors.ts";
import { redact } from "./src/source/connect.ts";

const VERSION = "0.1.0";
/** Exit code for a lost replication slot (systemd: RestartPreventExitStatus=3). */
const EXIT_SLOT_LOST = 3;

interface CommandSpec {
  summary: string;
  usage: string;
  flags: Record<string, { type: "boolean" | "string"; help: string; multiple?: boolean }>;
  /** Whether the command takes positional arguments (table names). */
  positionals?: boolean;
  run: (config: Config, flags: Record<string, unknown>, positionals: string[]) => Promise<number>;
}

const COMMANDS: Record<string, CommandSpec> = {
  init: {
    summary: "check the server, create the registry, publication, DDL trigger and slot",
    usage: "cdc-egress init [--dry-run] [--recreate-slot [--force]] [settings]",
    flags: {
      "dry-run": { type: "boolean", help: "print what would be done, change nothing" },
      "recreate-slot": {
        type: "boolean",
        help:
          "replace a lost slot: record a history gap per table, drop and create the slot, request a full export of every table",
      },
      force: {
        type: "boolean",
        help: "with --recreate-slot, also replace a slot that is not lost",
      },
    },
    run: async (config, flags) => {
      if (flags.force && !flags["recreate-slot"]) {
        throw new TypeError("Cannot use --force without --recreate-slot");
      }
      const { initCommand } = await import("./src/commands/init.ts");
      await initCommand(config, {
        dryRun: Boolean(flags["dry-run"]),
        recreateSlot: Boolean(flags["recreate-slot"]),
        force: Boolean(flags.force),
      });
      return 0;
    },
  },
  stream: {
    summary: "stream changes into registered files until SIGTERM/SIGINT",
    usage: "cdc-egress stream [settings]",
    flags: {},
    run: async (config) => {
      const { streamCommand } = await import("./src/commands/stream.ts");
      await streamCommand(config);
      return 0;
    },
  },
  reload: {
    summary: "re-export tables at an exact WAL boundary while stream runs",
    usage: "cdc-egress reload <table>... [--wait] [--timeout DUR] [settings]",
    positionals: true,
    flags: {
      wait: { type: "boolean", help: "wait until every reload is done; exit 1 if one failed" },
      timeout: { type: "string", help: "with --wait, give up after this long (e.g. 30m)" },
    },
    run: async (config, flags, positionals) => {
      const { reloadCommand } = await import("./src/commands/reload.ts");
      const timeout = flags.timeout as string | undefined;
      return await reloadCommand(config, {
        tables: positionals,
        wait: Boolean(flags.wait),
        timeoutMs: timeout ? parseDuration(timeout, "--timeout") : 0,
      });
    },
  },
  verify: {
    summary: "check the registry against the files; --deep replays them against the live tables",
    usage:
      "cdc-egress verify [--deep [--from newest|first]] [--since ID|TIME] [--json] [--table T]... [--quarantine] [settings]",
    flags: {
      deep: { type: "boolean", help: "also replay every table and compare with the live table" },
      json: { type: "boolean", help: "print one JSON document" },
      table: {
        type: "string",
        multiple: true,
        help: "only this table (pattern like --tables; repeatable)",
      },
      quarantine: {
        type: "boolean",
        help: "move orphan files to <data_dir>/.quarantine/<timestamp>/",
      },
      from: {
        type: "string",
        help: "with --deep, replay from the newest (default) or the first full_reload",
      },
      since: {
        type: "string",
        help:
          'check only files registered after this file id (as printed after "next: --since") or ISO time',
      },
    },
    run: async (config, flags) => {
      const { verifyCommand } = await import("./src/commands/verify.ts");
      const { parseSinceMark } = await import("./src/verify/since_mark.ts");
      const from = (flags.from as string | undefined) ?? "newest";
      if (from !== "newest" && from !== "first") {
        throw new TypeError(`Cannot use --from "${from}": expected newest or first`);
      }
      const sinceText = flags.since as string | undefined;
      const since = sinceText === undefined ? undefined : parseSinceMark(sinceText);
      for (const other of ["deep", "quarantine"]) {
        if (since && flags[other]) {
          throw new TypeError(
            `Cannot use --since with --${other}: it checks whole tables or the whole data dir; run it without --since`,
          );
        }
      }
      return await verifyCommand(config, {
        since,
        from,
        deep: Boolean(flags.deep),
        json: Boolean(flags.json),
        tables: (flags.table as string[] | undefined) ?? [],
        quarantine: Boolean(flags.quarantine),
      });
    },
  },
  materialize: {
    summary: "rebuild tables from the files into DuckDB, PostgreSQL, CSV or Parquet",
    usage:
      "cdc-egress materialize [<table>...] --to duckdb:PATH|postgres://...|csv:DIR|parquet:DIR [--as-of LSN] [--follow] [--replace] [settings]",
    positionals: true,
    flags: {
      to: { type: "string", help: "target: duckdb:PATH, postgres://..., csv:DIR or parquet:DIR" },
      "as-of": { type: "string", help: "the tables as they were at this LSN (e.g. 0/16B3748)" },
      follow: { type: "boolean", help: "keep applying new files until SIGTERM/SIGINT" },
      replace: {
        type: "boolean",
        help: "overwrite target tables of the same name that materialize did not create",
      },
    },
    run: async (config, flags, positionals) => {
      const { materializeCommand } = await import("./src/commands/materialize.ts");
      return await materializeCommand(config, {
        tables: positionals,
        to: flags.to as string | undefined,
        asOf: flags["as-of"] as string | undefined,
        follow: Boolean(flags.follow),
        replace: Boolean(flags.replace),
      });
    },
  },
  status: {
    summary: "slot lag, table modes, last batch per table, pending and failed reloads",
    usage: "cdc-egress status [--json] [--all-tables] [settings]",
    flags: {
      json: { type: "boolean", help: "print one JSON document (every table)" },
      "all-tables": {
        type: "boolean",
        help: "list every table, not only those needing attention (above 50 tables)",
      },
    },
    run: async (config, flags) => {
      const { statusCommand } = await import("./src/commands/status.ts");
      return await statusCommand(config, {
        json: Boolean(flags.json),
        allTables: Boolean(flags["all-tables"]),
      });
    },
  },
};

function settingOptions() {
  const options: Record<string, { type: "string" | "boolean"; multiple?: boolean }> = {
    config: { type: "string" },
    help: { type: "boolean" },
  };
  for (const s of SETTINGS) options[s.flag] = { type: "string" };
  return options;
}

function usage(): string {
  const lines = [
    `cdc-egress ${VERSION}: PostgreSQL changes into registered gzip CSV files`,
    "",
    "Usage: cdc-egress <command> [flags]",
    "",
    "Commands:",
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(11)} ${c.summary}`),
    "",
    "Settings (flag / environment variable / YAML key):",
    "  --config FILE                 CDC_CONFIG             YAML file with the settings below",
    ...SETTINGS.map((s) =>
      `  --${(s.flag + " VALUE").padEnd(27)} ${s.env.padEnd(22)} ${s.help} [${s.yaml}]`
    ),
  ];
  return lines.join("\n");
}

function commandUsage(spec: CommandSpec): string {
  const own = Object.entries(spec.flags).map(([flag, f]) =>
    `  --${(flag + (f.type === "string" ? " VALUE" : "")).padEnd(20)} ${f.help}`
  );
  return [`Usage: ${spec.usage}`, "", spec.summary, ...(own.length ? ["", ...own] : [])].join(
    "\n",
  );
}

/** Runs the CLI and returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(usage());
    return name === undefined ? 2 : 0;
  }
  if (name === "--version" || name === "version") {
    console.log(VERSION);
    return 0;
  }
  const spec = COMMANDS[name];
  if (!spec) {
    console.error(`error: unknown command "${name}" (try: cdc-egress --help)`);
    return 2;
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: rest,
      options: { ...settingOptions(), ...spec.flags },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    const e = error as { code?: string; message: string };
    const flag = /^Unknown option '([^']*)'/.exec(e.message)?.[1];
    console.error(
      e.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" && flag
        ? `error: unknown flag "${flag}" (try: cdc-egress ${name} --help)`
        : `error: ${e.message.split("\n")[0]}`,
    );
    return 2;
  }
  if (parsed.values.help) {
    console.log(commandUsage(spec));
    return 0;
  }
  if (!spec.positionals && parsed.positionals.length > 0) {
    console.error(
      `error: unexpected argument "${parsed.positionals[0]}" (usage: ${spec.usage})`,
    );
    return 2;
  }
  let config: Config;
  try {
    config = await loadConfig(parsed.values as Record<string, string | boolean | undefined>);
  } catch (error) {
    console.error(`error: ${redact((error as Error).message)}`);
    return 2;
  }
  try {
    return await spec.run(config, parsed.values, parsed.positionals);
  } catch (error) {
    const urls = [config.sourceUrl, config.registryUrl];
    let message = error instanceof Error ? error.message : String(error);
    for (const url of urls) message = redact(message, url);
    console.error(`error: ${message.split("\n")[0]}`);
    if (error instanceof CdcError) {
      return error.code === "config" ? 2 : error.code === "slot_lost" ? EXIT_SLOT_LOST : 1;
    }
    if (error instanceof TypeError || error instanceof SyntaxError) return 2;
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
