/**
 * `cdc-egress init`: checks the server, applies registry migrations, installs
 * the DDL event triggers, creates or updates the publication and creates the
 * replication slot. Idempotent; `--dry-run` prints the plan only.
 * `--recreate-slot` replaces a lost slot (see src/source/slot_recreate.ts).
 */

import type { Config } from "../config.ts";
import { CdcError } from "../errors.ts";
import { connect } from "../source/connect.ts";
import { planInit } from "../setup/init_plan.ts";

/** Options of `init` beyond the shared configuration. */
export interface InitOptions {
  dryRun: boolean;
  /** Replace the slot: only when it is lost, unless `force`. */
  recreateSlot?: boolean;
  force?: boolean;
  /** Where plan lines go (stdout by default). */
  print?: (line: string) => void;
}

/** Runs `init`: plans it (see {@linkcode planInit}), then prints or runs the plan. */
export async function initCommand(config: Config, options: InitOptions): Promise<void> {
  const print = options.print ?? ((line: string) => console.log(line));
  const source = await connect(config.sourceUrl, { role: "source" });
  const registryClient = config.registryUrl
    ? await connect(config.registryUrl, { role: "registry" }).catch(async (e) => {
      await source.end();
      throw e;
    })
    : source;
  try {
    const plan = await planInit(source, registryClient, config, {
      recreateSlot: options.recreateSlot,
      force: options.force,
      print,
    });
    if (options.dryRun) {
      print(plan.length === 0 ? "dry run: nothing to do" : "dry run: would");
      for (const step of plan) print(`  - ${step.what}`);
      return;
    }
    for (const step of plan) {
      try {
        await step.run();
      } catch (error) {
        if (error instanceof CdcError) throw error;
        throw new CdcError(
          "server",
          `Cannot ${step.what}: ${(error as Error).message.split("\n")[0]}`,
          { cause: error },
        );
      }
      print(`done: ${step.what}`);
    }
    print("init complete");
  } finally {
    if (registryClient !== source) await registryClient.end().catch(() => {});
    await source.end().catch(() => {});
  }
}
