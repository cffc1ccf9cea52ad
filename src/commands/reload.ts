/**
 * `cdc-egress reload <table>...`: asks the running stream process to
 * re-export tables at an exact WAL boundary. Names are resolved with
 * `to_regclass()` as a parameter, never pasted into SQL; each must be
 * published. The request goes into `cdc_registry.reload_operations`
 * (requested → exporting → done | failed); `--wait` follows it to the end.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import type { Config } from "../config.ts";
import { CdcError } from "../errors.ts";
import { Registry } from "../registry/registry.ts";
import { connect } from "../source/connect.ts";

/** Options of `reload`. */
export interface ReloadOptions {
  tables: string[];
  wait: boolean;
  /** Give up waiting after this long (ms); 0 waits forever. */
  timeoutMs: number;
  print?: (line: string) => void;
}

interface Resolved {
  name: string;
  schema: string;
  table: string;
}

async function resolveTables(
  source: pg.Client,
  publication: string,
  names: string[],
): Promise<Resolved[]> {
  const out: Resolved[] = [];
  for (const name of names) {
    let res;
    try {
      // Malformed names (e.g. an unclosed quote) fail here on every version;
      // to_regclass returns NULL for them since PostgreSQL 16.
      await source.query("SELECT parse_ident($1)", [name]);
      res = await source.query(
        `SELECT n.nspname AS schema, c.relname AS table,
                EXISTS (SELECT 1 FROM pg_publication_tables p WHERE p.pubname = $2
                          AND p.schemaname = n.nspname AND p.tablename = c.relname) AS published
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = to_regclass($1)`,
        [name, publication],
      );
    } catch (error) {
      const code = (error as { code?: string }).code;
      const malformed = code === "22023" || code === "42602";
      throw new CdcError(
        "unknown_table",
        `Cannot reload "${name}": ${
          malformed ? "invalid name syntax" : (error as Error).message.split("\n")[0]
        }`,
        { cause: error },
      );
    }
    if (res.rowCount === 0) {
      throw new CdcError("unknown_table", `Cannot reload "${name}": no such table`);
    }
    const row = res.rows[0];
    if (row.schema === "cdc_registry") {
      // ddl_history is published only to carry DDL into the stream.
      throw new CdcError("unknown_table", `Cannot reload "${name}": it is a registry table`);
    }
    if (!row.published) {
      throw new CdcError(
        "unknown_table",
        `Cannot reload "${name}": it is not in publication "${publication}"`,
      );
    }
    out.push({ name, schema: row.schema, table: row.table });
  }
  return out;
}

/** Runs `reload`; returns the exit code (1 when a waited-for reload failed). */
export async function reloadCommand(config: Config, options: ReloadOptions): Promise<number> {
  const print = options.print ?? ((line: string) => console.log(line));
  if (options.tables.length === 0) {
    throw new TypeError("Cannot reload: name at least one table (cdc-egress reload public.orders)");
  }
  const source = await connect(config.sourceUrl, { role: "source" });
  let registryClient = source;
  try {
    if (config.registryUrl) {
      registryClient = await connect(config.registryUrl, { role: "registry" });
    }
    const registry = new Registry(registryClient, config.slot);
    await registry.assertInitialized();
    const tables = await resolveTables(source, config.publication, options.tables);
    const ids: number[] = [];
    await registryClient.query("BEGIN");
    try {
      for (const t of tables) {
        const res = await registryClient.query(
          `INSERT INTO cdc_registry.reload_operations (slot_name, schema_name, table_name)
           VALUES ($1, $2, $3) RETURNING id`,
          [config.slot, t.schema, t.table],
        );
        await registryClient.query(
          `UPDATE cdc_registry.table_state SET mode = 'pending_reload', updated_at = now()
           WHERE slot_name = $1 AND schema_name = $2 AND table_name = $3 AND mode = 'streaming'`,
          [config.slot, t.schema, t.table],
        );
        ids.push(Number(res.rows[0].id));
      }
      await registryClient.query("COMMIT");
    } catch (error) {
      await registryClient.query("ROLLBACK").catch(() => {});
      throw new CdcError(
        "registry",
        `Cannot request the reload: ${(error as Error).message.split("\n")[0]}`,
        { cause: error },
      );
    }
    tables.forEach((t, i) => print(`requested reload ${ids[i]} of ${t.schema}.${t.table}`));
    if (!options.wait) return 0;

    const deadline = options.timeoutMs > 0 ? Date.now() + options.timeoutMs : Infinity;
    const reported = new Set<number>();
    let failed = 0;
    while (reported.size < ids.length) {
      const res = await registryClient.query(
        `SELECT id, schema_name, table_name, state, consistent_lsn::text AS lsn, error
         FROM cdc_registry.reload_operations WHERE id = ANY($1::bigint[])`,
        [ids],
      );
      for (const r of res.rows) {
        const id = Number(r.id);
        if (reported.has(id) || (r.state !== "done" && r.state !== "failed")) continue;
        reported.add(id);
        if (r.state === "done") {
          print(`reload ${id} of ${r.schema_name}.${r.table_name} done at ${r.lsn}`);
        } else {
          failed++;
          print(`reload ${id} of ${r.schema_name}.${r.table_name} failed: ${r.error}`);
        }
      }
      if (reported.size === ids.length) break;
      if (Date.now() > deadline) {
        throw new CdcError(
          "registry",
          `Cannot confirm the reload: still pending after the timeout; is "cdc-egress stream" running for slot "${config.slot}"?`,
        );
      }
      await new Promise((r) => setTimeout(r, 500));
    }
    return failed > 0 ? 1 : 0;
  } finally {
    if (registryClient !== source) await registryClient.end().catch(() => {});
    await source.end().catch(() => {});
  }
}
