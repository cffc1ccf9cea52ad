/**
 * What `init` does, as a plan: the server check, registry migrations, the
 * DDL capture's event triggers, the slot's owner record, the publication and
 * the slot, each step only when it is missing (init is idempotent). Planning
 * changes nothing; warnings and the table list go to `print` as it goes.
 *
 * @module
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import type { Config } from "../config.ts";
import { CdcError } from "../errors.ts";
import { HistoryGapLog } from "../registry/history_gap.ts";
import {
  applyMigrations,
  BOTH_SIDES,
  type MigrationSide,
  pendingMigrations,
} from "../registry/migrations.ts";
import { Registry } from "../registry/registry.ts";
import { describeTarget } from "../source/connect.ts";
import {
  readSlotHealth,
  slotLostError,
  slotLostMessage,
  unfinishedRecreateMessage,
} from "../source/slot_health.ts";
import { planSlotRecreate } from "../source/slot_recreate.ts";
import { missingSchemaPrivilege, privilegeError, SourceCatalog } from "../source/source_catalog.ts";
import { qualifiedName, type TableRef } from "../source/table_selection.ts";

/** One step of the plan: what it does (for the plan's text) and how. */
export interface InitStep {
  what: string;
  run: () => Promise<unknown>;
}

/** How to plan: replace a lost slot (`recreateSlot`, any slot with `force`), where lines go. */
export interface InitPlanOptions {
  recreateSlot?: boolean;
  force?: boolean;
  print: (line: string) => void;
}

const EVENT_TRIGGERS = [
  { name: "cdc_egress_ddl", event: "ddl_command_end", fn: "cdc_registry.capture_ddl" },
  { name: "cdc_egress_drop", event: "sql_drop", fn: "cdc_registry.capture_drop" },
  // Marks commands that rewrite a table: their new values reach no WAL row event.
  { name: "cdc_egress_rewrite", event: "table_rewrite", fn: "cdc_registry.capture_rewrite" },
];

/**
 * Plans `init`. The source gets the DDL capture (`cdc_registry.ddl_history`,
 * its functions, the event triggers), the publication and the slot; the
 * registry (`registryClient`, the source connection itself unless
 * `--registry-url`) gets the registry tables and records which source owns
 * the slot. A missing privilege is reported with its side.
 */
export async function planInit(
  source: pg.Client,
  registryClient: pg.Client,
  config: Config,
  options: InitPlanOptions,
): Promise<InitStep[]> {
  const { print } = options;
  const separate = registryClient !== source;
  const catalog = new SourceCatalog(source);
  const registry = new Registry(registryClient, config.slot);
  const sourceTarget = describeTarget(config.sourceUrl);
  const registryTarget = describeTarget(config.registryUrl ?? config.sourceUrl);
  const info = await catalog.checkServer(config.slot);
  print(
    `server: PostgreSQL ${info.major} (${info.versionNum}), wal_level=logical, role "${info.user}"${
      info.superuser ? " (superuser)" : " (replication)"
    }`,
  );
  if (separate) print(`registry: ${registryTarget} (separate from the source)`);
  const plan: InitStep[] = [];
  const migrate = async (
    client: typeof source,
    sides: readonly MigrationSide[],
    where: string,
  ): Promise<"ok" | string> => {
    const pending = new Set<number>();
    for (const side of sides) {
      for (const m of await pendingMigrations(client, side)) pending.add(m.version);
    }
    if (pending.size === 0) return "ok";
    const missing = await missingSchemaPrivilege(client);
    if (missing) return missing;
    plan.push({
      what: `apply ${sides.length === 1 ? sides[0] : "registry"} migrations ${
        [...pending].sort((a, b) => a - b).join(", ")
      } (schema cdc_registry${where})`,
      run: () => applyMigrations(client, sides),
    });
    return "ok";
  };

  let ddlCapture = true;
  if (!separate) {
    const r = await migrate(source, BOTH_SIDES, "");
    if (r !== "ok") throw privilegeError("registry", registryTarget, r);
  } else {
    const r = await migrate(source, ["source"], " in the source");
    if (r !== "ok") {
      if (await catalog.hasDdlHistory()) throw privilegeError("source", sourceTarget, r);
      ddlCapture = false;
      print(
        `warning: DDL capture is not installed in the source: ${r}; DDL will not be captured in ddl.sql`,
      );
    }
    const rr = await migrate(registryClient, ["registry"], " in the registry");
    if (rr !== "ok") throw privilegeError("registry", registryTarget, rr);
  }

  const identity = await catalog.identity();
  // Refuse another source's slot before changing anything, when the registry can tell.
  if ((await pendingMigrations(registryClient, "registry")).length === 0) {
    await registry.assertOwnedBy(identity, "use");
  }
  plan.push({
    what:
      `record slot "${config.slot}" as owned by database "${identity.database}" in the registry`,
    run: () => registry.claimSlot(identity, "use"),
  });

  const existingTriggers = ddlCapture ? await catalog.eventTriggers() : new Set<string>();
  for (const t of ddlCapture ? EVENT_TRIGGERS : []) {
    if (existingTriggers.has(t.name)) continue;
    if (!info.superuser) {
      print(
        `warning: role "${info.user}" is not a superuser, so the DDL event trigger ${t.name} is not installed in the source; DDL will not be captured in ddl.sql`,
      );
      continue;
    }
    plan.push({
      what: `create event trigger ${t.name} on ${t.event}`,
      run: () => catalog.createEventTrigger(t.name, t.event, t.fn),
    });
  }

  const selected = await catalog.selectTables(config.tables, config.exclude);
  const noIdentity = await catalog.tablesWithoutIdentity(selected.map((t) => t.oid));
  const published: TableRef[] = [];
  for (const t of selected) {
    if (noIdentity.has(t.oid)) {
      print(
        `warning: ${
          qualifiedName(t)
        } has no primary key and REPLICA IDENTITY DEFAULT or NOTHING; it is left out so its UPDATE and DELETE keep working. To capture it: ALTER TABLE ${
          qualifiedName(t)
        } REPLICA IDENTITY FULL; then run init again`,
      );
    } else {
      published.push(t);
    }
  }
  if (published.length === 0) print("warning: no tables selected; only DDL will be captured");
  const tableList = [
    ...published.map(qualifiedName),
    ...(ddlCapture ? ["cdc_registry.ddl_history"] : []),
  ];
  const pubExists = await catalog.publicationExists(config.publication);
  plan.push({
    what: `${pubExists ? "set" : "create"} publication "${config.publication}" ${
      pubExists ? "to" : "for"
    } ${published.length} table(s)`,
    run: () => catalog.setPublication(config.publication, tableList, pubExists),
  });
  for (const t of published) print(`table: ${qualifiedName(t)}`);

  const gaps = new HistoryGapLog(registryClient, config.slot);
  const health = await readSlotHealth(source, config.slot, await gaps.hasHistory());
  if (options.recreateSlot) {
    plan.push(
      await planSlotRecreate(source, registryClient, health, {
        slot: config.slot,
        force: Boolean(options.force),
        print,
      }),
    );
  } else if ((await gaps.pending()).count > 0) {
    throw new CdcError("slot_lost", unfinishedRecreateMessage(config.slot));
  } else if (!info.slot) {
    // Creating it silently would stream the new slot on top of the old
    // history with the changes in between missing and unmarked.
    if (health.lost) throw slotLostError(config.slot, health.invalidationReason);
    plan.push({
      what: `create logical replication slot "${config.slot}" (pgoutput)`,
      run: () => catalog.createSlot(config.slot),
    });
  } else {
    print(`slot "${config.slot}" exists (kept)`);
    if (health.lost) print(`warning: ${slotLostMessage(config.slot, health.invalidationReason)}`);
  }
  return plan;
}
