/**
 * `materialize`: rebuilds tables in a target from the registered files
 * alone, with the replay rule, incrementally and exactly once (progress is
 * committed in the target with the rows), optionally as of an LSN, and
 * optionally following new files until stopped.
 */

import type { LayoutFiles } from "../storage/layout_files.ts";
import { join, resolve } from "node:path";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { CdcError } from "../errors.ts";
import { formatLsn, type Lsn } from "../lsn.ts";
import { replayInto } from "../replay/replay_into.ts";
import { Registry } from "../registry/registry.ts";
import { replayPlan } from "../replay/replay_plan.ts";
import { connect } from "../source/connect.ts";
import { matchesPattern, parseTablePattern, qualifiedName } from "../source/table_selection.ts";
import {
  LongLines,
  type MaterializeTarget,
  type SourceTable,
  WidenColumn,
} from "./materialize_target.ts";
import { PostgresTarget } from "./postgres_target.ts";
import type { TargetSpec } from "./target_spec.ts";

/** A registered table. */
export interface RegisteredTable extends SourceTable {
  tableDir: string;
  dropped: boolean;
}

/** What one table's pass did. */
export interface TablePass {
  table: string;
  rebuilt: boolean;
  files: number;
  rows: number;
  position: string | null;
}

/** Opens the target of a `--to` spec. */
export async function openTarget(spec: TargetSpec, slot: string): Promise<MaterializeTarget> {
  if (spec.kind === "postgres") {
    const client = await connect(spec.url, {
      role: "target",
      applicationName: "cdc-egress/materialize",
    });
    try {
      return await PostgresTarget.open(client, slot);
    } catch (error) {
      await client.end().catch(() => {});
      if (error instanceof CdcError) throw error;
      throw new CdcError(
        "connection",
        `Cannot prepare the target database: ${(error as Error).message}`,
        {
          cause: error,
        },
      );
    }
  }
  const { DuckdbTarget } = await import("./duckdb_target.ts");
  if (spec.kind === "duckdb") return await DuckdbTarget.open(resolve(spec.path), slot, "duckdb");
  const dir = resolve(spec.dir);
  try {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (error) {
    throw new CdcError(
      "data_dir",
      `Cannot use ${spec.kind}:${spec.dir}: ${(error as Error).message}`,
      {
        cause: error,
      },
    );
  }
  return await DuckdbTarget.open(join(dir, ".cdc-egress-state.duckdb"), slot, spec.kind, dir);
}

/** Tables with a full_reload in the registry of `slot`. */
export async function registeredTables(
  registry: pg.Client,
  slot: string,
): Promise<RegisteredTable[]> {
  const r = await registry.query(
    // A table is its relation: listed by the name it has now; a name that
    // also meant a dropped relation stands for the live one.
    `SELECT DISTINCT ON (s.schema_name, s.table_name) s.schema_name, s.table_name, s.table_dir,
            s.mode = 'dropped' AS dropped
     FROM cdc_registry.table_state s
     WHERE s.slot_name = $1 AND EXISTS (
       SELECT 1 FROM cdc_registry.file_log f WHERE f.slot_name = s.slot_name
         AND f.relation_oid = s.relation_oid AND f.file_type = 'full_reload')
     ORDER BY s.schema_name, s.table_name, s.mode = 'dropped', s.updated_at DESC`,
    [slot],
  );
  return r.rows.map((row) => ({
    schema: row.schema_name,
    table: row.table_name,
    tableDir: row.table_dir,
    dropped: Boolean(row.dropped),
  }));
}

/**
 * The tables that `names` select (patterns like `--tables`; all live ones
 * when empty). Throws on a name that matches no registered table.
 */
export function selectRegistered(
  all: RegisteredTable[],
  names: string[],
  slot: string,
): RegisteredTable[] {
  if (names.length === 0) return all.filter((t) => !t.dropped);
  const out = new Set<RegisteredTable>();
  for (const name of names) {
    const p = parseTablePattern(name);
    const hit = all.filter((t) => matchesPattern(p, t));
    if (hit.length === 0) {
      throw new CdcError(
        "unknown_table",
        `Cannot materialize "${name}": no such table in the registry of slot "${slot}"`,
      );
    }
    for (const t of hit) out.add(t);
  }
  return all.filter((t) => out.has(t));
}

/** Checks every table before any work: --as-of in range, no foreign table in the way. */
export async function preflight(
  registry: pg.Client,
  target: MaterializeTarget,
  slot: string,
  tables: RegisteredTable[],
  options: { asOf?: Lsn; replace: boolean },
): Promise<void> {
  for (const t of tables) {
    if (options.asOf !== undefined) {
      const r = await registry.query(
        `SELECT min(f.start_lsn)::text AS oldest FROM cdc_registry.file_log f
         WHERE f.slot_name = $1 AND f.file_type = 'full_reload' AND f.relation_oid = (
           SELECT relation_oid FROM cdc_registry.table_state WHERE slot_name = $1
             AND schema_name = $2 AND table_name = $3
           ORDER BY mode = 'dropped', updated_at DESC LIMIT 1)`,
        [slot, t.schema, t.table],
      );
      const oldest = r.rows[0]?.oldest as string | null;
      const plan = await replayPlan(new Registry(registry, slot), t, { asOf: options.asOf });
      if (!plan.fullReload) {
        throw new CdcError(
          "config",
          `Cannot materialize ${qualifiedName(t)} as of ${
            formatLsn(options.asOf)
          }: its oldest full_reload is at ${oldest}`,
        );
      }
    }
    if (!options.replace && await target.exists(t) && !(await target.progress(t))) {
      throw new CdcError(
        "config",
        `Cannot materialize ${
          qualifiedName(t)
        }: the target has a table of that name that materialize did not create (use --replace to overwrite it)`,
      );
    }
  }
}

/** Brings one table up to date in the target (rebuilding it when its base changed). */
export async function materializeTable(
  registry: pg.Client,
  target: MaterializeTarget,
  dataDir: string | LayoutFiles,
  slot: string,
  t: RegisteredTable,
  asOf?: Lsn,
): Promise<TablePass> {
  for (let attempt = 0;; attempt++) {
    const plan = await replayPlan(new Registry(registry, slot), t, { asOf });
    const name = `${t.schema}.${t.table}`;
    if (!plan.fullReload) return { table: name, rebuilt: false, files: 0, rows: 0, position: null };
    const prior = await target.progress(t);
    const rebuild = !prior || prior.fullReloadPath !== plan.fullReload.path ||
      (asOf !== undefined && prior.position.lsn > asOf);
    const sink = await target.sink(t, rebuild, rebuild ? null : prior);
    try {
      const r = await replayInto(sink, dataDir, plan, {
        from: rebuild ? undefined : { position: prior!.position, shape: prior!.shape },
        asOf,
      });
      await sink.finish();
      await target.publish(t, t.tableDir);
      return {
        table: name,
        rebuilt: rebuild,
        files: r.files,
        rows: r.rows,
        position: r.position ? `${formatLsn(r.position.lsn as Lsn)}, seq ${r.position.seq}` : null,
      };
    } catch (error) {
      await sink.abort();
      const longLines = (target as unknown as { longLines?: Set<string> }).longLines;
      if (error instanceof LongLines && longLines) {
        longLines.add(`${t.schema}.${t.table}`);
        continue;
      }
      // A value that does not fit its DuckDB type: keep that column VARCHAR and go again.
      if (error instanceof WidenColumn && attempt < 100) {
        const widened = (target as unknown as { widened?: Map<string, Set<string>> }).widened;
        if (widened) {
          const key = `${t.schema}.${t.table}`;
          if (!widened.has(key)) widened.set(key, new Set());
          widened.get(key)!.add(error.column);
          continue;
        }
      }
      throw error;
    }
  }
}
