/**
 * `cdc-egress init`: checks the server, applies registry migrations, installs
 * the DDL event triggers, creates or updates the publication and creates the
 * replication slot. Idempotent; `--dry-run` prints the plan only.
 * `--recreate-slot` replaces a lost slot (see src/source/slot_recreate.ts).
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import type { Config } from "../config.ts";
import { CdcError } from "../errors.ts";
import { HistoryGapLog } from "../registry/history_gap.ts";
import { applyMigrations, pendingMigrations } from "../registry/migrations.ts";
import { connect } from "../source/connect.ts";
import { checkServer } from "../source/server_check.ts";
import {
  readSlotHealth,
  slotLostError,
  slotLostMessage,
  unfinishedRecreateMessage,
} from "../source/slot_health.ts";
import { planSlotRecreate } from "../source/slot_recreate.ts";
import {
  qualifiedName,
  quoteIdent,
  selectTables,
  type TableRef,
} from "../source/table_selection.ts";

/** Options of `init` beyond the shared configuration. */
export interface InitOptions {
  dryRun: boolean;
  /** Replace the slot: only when it is lost, unless `force`. */
  recreateSlot?: boolean;
  force?: boolean;
  /** Where plan lines go (stdout by default). */
  print?: (line: string) => void;
}

const EVENT_TRIGGERS = [
  { name: "cdc_egress_ddl", event: "ddl_command_end", fn: "cdc_registry.capture_ddl" },
  { name: "cdc_egress_drop", event: "sql_drop", fn: "cdc_registry.capture_drop" },
  // Marks commands that rewrite a table: their new values reach no WAL row event.
  { name: "cdc_egress_rewrite", event: "table_rewrite", fn: "cdc_registry.capture_rewrite" },
];

/** Tables that would make UPDATE/DELETE fail once published: no key, identity DEFAULT/NOTHING. */
async function tablesWithoutIdentity(client: pg.Client, tables: TableRef[]): Promise<Set<number>> {
  if (tables.length === 0) return new Set();
  const res = await client.query(
    `SELECT c.oid::int8 AS oid FROM pg_class c
     WHERE c.oid = ANY($1::oid[])
       AND (c.relreplident = 'n'
         OR (c.relreplident = 'd' AND NOT EXISTS (
               SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))`,
    [tables.map((t) => t.oid)],
  );
  return new Set(res.rows.map((r) => Number(r.oid)));
}

/** Runs `init`. */
export async function initCommand(config: Config, options: InitOptions): Promise<void> {
  const print = options.print ?? ((line: string) => console.log(line));
  const source = await connect(config.sourceUrl, { role: "source" });
  const registry = config.registryUrl
    ? await connect(config.registryUrl, { role: "registry" }).catch(async (e) => {
      await source.end();
      throw e;
    })
    : source;
  try {
    const info = await checkServer(source, config.slot);
    print(
      `server: PostgreSQL ${info.major} (${info.versionNum}), wal_level=logical, role "${info.user}"${
        info.superuser ? " (superuser)" : " (replication)"
      }`,
    );
    const plan: { what: string; run: () => Promise<unknown> }[] = [];

    const pendingSource = await pendingMigrations(source);
    if (pendingSource.length > 0) {
      plan.push({
        what: `apply registry migrations ${
          pendingSource.map((m) => m.version).join(", ")
        } (schema cdc_registry)`,
        run: () => applyMigrations(source),
      });
    }
    if (registry !== source) {
      const pendingRegistry = await pendingMigrations(registry);
      if (pendingRegistry.length > 0) {
        plan.push({
          what: `apply registry migrations ${
            pendingRegistry.map((m) => m.version).join(", ")
          } on the registry database`,
          run: () => applyMigrations(registry),
        });
      }
    }

    const existingTriggers = new Set(
      (await source.query("SELECT evtname FROM pg_event_trigger")).rows.map((r) => r.evtname),
    );
    for (const t of EVENT_TRIGGERS) {
      if (existingTriggers.has(t.name)) continue;
      if (!info.superuser) {
        print(
          `warning: role "${info.user}" is not a superuser, so the DDL event trigger ${t.name} is not installed; DDL will not be captured in ddl.sql`,
        );
        continue;
      }
      plan.push({
        what: `create event trigger ${t.name} on ${t.event}`,
        run: () =>
          source.query(
            `CREATE EVENT TRIGGER ${t.name} ON ${t.event} EXECUTE FUNCTION ${t.fn}()`,
          ),
      });
    }

    const selected = await selectTables(source, config.tables, config.exclude);
    const noIdentity = await tablesWithoutIdentity(source, selected);
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
    const tableList = [...published.map(qualifiedName), "cdc_registry.ddl_history"].join(", ");
    const pub = await source.query("SELECT 1 FROM pg_publication WHERE pubname = $1", [
      config.publication,
    ]);
    const pubName = quoteIdent(config.publication);
    if (pub.rowCount === 0) {
      plan.push({
        what: `create publication "${config.publication}" for ${published.length} table(s)`,
        run: () =>
          source.query(
            `CREATE PUBLICATION ${pubName} FOR TABLE ${tableList}
             WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)`,
          ),
      });
    } else {
      plan.push({
        what: `set publication "${config.publication}" to ${published.length} table(s)`,
        run: async () => {
          await source.query(`ALTER PUBLICATION ${pubName} SET TABLE ${tableList}`);
          await source.query(
            `ALTER PUBLICATION ${pubName} SET (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)`,
          );
        },
      });
    }
    for (const t of published) print(`table: ${qualifiedName(t)}`);

    const gaps = new HistoryGapLog(registry, config.slot);
    const health = await readSlotHealth(source, config.slot, await gaps.hasHistory());
    if (options.recreateSlot) {
      plan.push(
        await planSlotRecreate(source, registry, health, {
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
        run: () =>
          source.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [
            config.slot,
          ]),
      });
    } else {
      print(`slot "${config.slot}" exists (kept)`);
      if (health.lost) print(`warning: ${slotLostMessage(config.slot, health.invalidationReason)}`);
    }

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
    if (registry !== source) await registry.end().catch(() => {});
    await source.end().catch(() => {});
  }
}
