/**
 * `cdc-egress reload <table>...`: asks the running stream process to
 * re-export tables at an exact WAL boundary. Names are resolved with
 * `to_regclass()` as a parameter, never pasted into SQL; each must be
 * published. The request goes into `cdc_registry.reload_operations`
 * (requested → exporting → done | failed); `--wait` follows it to the end.
 */

import type { Config } from "../config.ts";
import { CdcError } from "../errors.ts";
import { Registry } from "../registry/registry.ts";
import { connect } from "../source/connect.ts";
import { SourceCatalog } from "../source/source_catalog.ts";

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
  catalog: SourceCatalog,
  publication: string,
  names: string[],
): Promise<Resolved[]> {
  const out: Resolved[] = [];
  for (const name of names) {
    let row;
    try {
      row = await catalog.resolveTable(name, publication);
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
    if (row === null) {
      throw new CdcError("unknown_table", `Cannot reload "${name}": no such table`);
    }
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
    const catalog = new SourceCatalog(source);
    await registry.assertOwnedBy(await catalog.identity(), "reload tables of");
    const tables = await resolveTables(
      catalog,
      config.publication,
      options.tables,
    );
    let ids: number[];
    try {
      ids = await registry.requestReloads(tables);
    } catch (error) {
      throw new CdcError(
        "registry",
        `Cannot request the reload: ${
          (error as Error).message.split("\n")[0].replace(/^Cannot update the registry: /, "")
        }`,
        { cause: error },
      );
    }
    tables.forEach((t, i) => print(`requested reload ${ids[i]} of ${t.schema}.${t.table}`));
    if (!options.wait) return 0;

    const deadline = options.timeoutMs > 0 ? Date.now() + options.timeoutMs : Infinity;
    const reported = new Set<number>();
    let failed = 0;
    while (reported.size < ids.length) {
      for (const r of await registry.reloadOutcomes(ids)) {
        const id = r.id;
        if (reported.has(id) || (r.state !== "done" && r.state !== "failed")) continue;
        reported.add(id);
        if (r.state === "done") {
          print(`reload ${id} of ${r.schema}.${r.table} done at ${r.lsn}`);
        } else {
          failed++;
          print(`reload ${id} of ${r.schema}.${r.table} failed: ${r.error}`);
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
