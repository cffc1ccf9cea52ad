/**
 * DDL as it reaches the stream: rows inserted into
 * `cdc_registry.ddl_history` by the event triggers, decoded at the exact
 * position where the DDL committed.
 */

import type { TupleData } from "../decode/pgoutput.ts";
import { UNCHANGED_TOAST } from "../decode/pgoutput.ts";
import { formatLsn, type Lsn } from "../lsn.ts";
import type { TableSchema } from "../write/schema_yml.ts";
import { splitQualifiedName } from "../source/table_selection.ts";
import type { RelationInfo } from "./relation_catalog.ts";

/** A column as the event trigger saw it right after the command. */
interface CapturedColumn {
  attnum: number;
  name: string;
  /** The rest is captured since registry migration 2. */
  type?: string;
  type_oid?: number;
  type_modifier?: number;
  nullable?: boolean;
  generated?: boolean;
  is_pk?: boolean;
  is_key?: boolean;
  /** Captured since registry migration 3. */
  default?: string | null;
  /** An added column whose existing rows now read a stored default. */
  fills_existing?: boolean;
}

const IDENTITY: Record<string, TableSchema["replicaIdentity"]> = {
  d: "default",
  n: "nothing",
  f: "full",
  i: "index",
};

/** One captured DDL command. */
export interface DdlEvent {
  commandTag: string;
  objectType: string | null;
  schema: string | null;
  objectIdentity: string | null;
  /** The table's oid for table and column objects. */
  objid: number | null;
  command: string;
  /** Column name → attnum right after the command (table events only). */
  attnums: Map<string, number> | null;
  /** The table's columns right after the command (table events only). */
  columns: CapturedColumn[] | null;
  /** `relreplident` right after the command. */
  replicaIdentity: string | null;
  /** The command rewrote the table (captured since registry migration 3). */
  rewrites: boolean;
}

const decoder = new TextDecoder();

/** Decodes a ddl_history row by column name. */
export function ddlEventFromRow(rel: RelationInfo, tuple: TupleData): DdlEvent {
  const get = (name: string): string | null => {
    const i = rel.columnNames.indexOf(name);
    const v = i < 0 ? null : tuple[i];
    return v === null || v === undefined || v === UNCHANGED_TOAST ? null : decoder.decode(v);
  };
  const objid = get("objid");
  const json = get("columns");
  const columns = json === null ? null : JSON.parse(json) as CapturedColumn[];
  const attnums = columns === null ? null : new Map(columns.map((c) => [c.name, c.attnum]));
  return {
    attnums,
    columns,
    replicaIdentity: get("replica_identity"),
    rewrites: get("rewrites") === "t",
    commandTag: get("command_tag") ?? "",
    objectType: get("object_type"),
    schema: get("schema_name"),
    objectIdentity: get("object_identity"),
    objid: objid === null ? null : Number(objid),
    command: get("command") ?? "",
  };
}

/** Whether the event changes a table (or one of its columns). */
export function isTableEvent(event: DdlEvent): boolean {
  return event.objectType === "table" || event.objectType === "table column";
}

/** The schema and table an event is about, from its identity. */
export function eventTable(event: DdlEvent): { schema: string; table: string } | null {
  if (!isTableEvent(event) || !event.objectIdentity) return null;
  const parts = splitQualifiedName(event.objectIdentity);
  if (parts.length < 2) return null;
  return { schema: parts[0], table: parts[1] };
}

/**
 * The table as it was right after the command, from what the event trigger
 * captured; null for events captured before registry migration 2.
 */
export function schemaFromEvent(
  event: DdlEvent,
  table: { schema: string; table: string },
  validFrom: Lsn,
): TableSchema | null {
  const cols = event.columns?.filter((c) => !c.generated);
  if (!cols || event.objid === null || event.replicaIdentity === null) return null;
  if (cols.some((c) => c.type === undefined)) return null;
  return {
    schema: table.schema,
    table: table.table,
    relationOid: event.objid,
    validFromLsn: formatLsn(validFrom),
    replicaIdentity: IDENTITY[event.replicaIdentity] ?? "default",
    primaryKey: cols.filter((c) => c.is_pk).map((c) => c.name),
    columns: cols.map((c) => ({
      name: c.name,
      type: c.type!,
      typeOid: Number(c.type_oid),
      typeModifier: Number(c.type_modifier),
      nullable: c.nullable ?? true,
      isKey: c.is_key ?? false,
      attnum: c.attnum,
      default: c.default ?? null,
    })),
  };
}

/** Command tags that create a table the `--tables` patterns may select. */
const CREATE_TAGS = new Set(["CREATE TABLE", "CREATE TABLE AS", "SELECT INTO"]);

/** Whether the event creates a table. */
export function createsTable(event: DdlEvent): boolean {
  return CREATE_TAGS.has(event.commandTag);
}

/**
 * Whether the command changed existing rows without WAL row events: a
 * table rewrite (ALTER COLUMN TYPE, a volatile default, a stored generated
 * column), or an added column whose existing rows read a stored default.
 * `knownMaxAttnum` (the highest attnum the stream knew before) catches an
 * added column when the trigger could not tell (DDL in a savepoint).
 */
export function changesExistingRows(event: DdlEvent, knownMaxAttnum?: number): boolean {
  if (event.commandTag !== "ALTER TABLE" && !event.rewrites) return false;
  if (event.rewrites) return true;
  return (event.columns ?? []).some((c) =>
    c.fills_existing === true ||
    (knownMaxAttnum !== undefined && c.attnum > knownMaxAttnum && c.default != null &&
      !c.generated)
  );
}
