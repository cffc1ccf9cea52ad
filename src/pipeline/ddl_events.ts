/**
 * DDL as it reaches the stream: rows inserted into
 * `cdc_registry.ddl_history` by the event triggers, decoded at the exact
 * position where the DDL committed.
 */

import type { TupleData } from "../decode/pgoutput.ts";
import { UNCHANGED_TOAST } from "../decode/pgoutput.ts";
import type { RelationInfo } from "./relation_catalog.ts";

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
  const columns = get("columns");
  const attnums = columns === null ? null : new Map<string, number>(
    (JSON.parse(columns) as { attnum: number; name: string }[]).map((c) => [c.name, c.attnum]),
  );
  return {
    attnums,
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

/**
 * Splits an object identity (`public."we.ird"` or `s.t.col`) into its
 * unquoted parts, as `quote_ident` printed them.
 */
export function splitIdentity(identity: string): string[] {
  const parts: string[] = [];
  let current = "";
  let quoted = false;
  for (let i = 0; i < identity.length; i++) {
    const ch = identity[i];
    if (ch === '"') {
      if (quoted && identity[i + 1] === '"') {
        current += '"';
        i++;
      } else {
        quoted = !quoted;
      }
    } else if (ch === "." && !quoted) {
      parts.push(current);
      current = "";
    } else {
      current += ch;
    }
  }
  parts.push(current);
  return parts;
}

/** The schema and table an event is about, from its identity. */
export function eventTable(event: DdlEvent): { schema: string; table: string } | null {
  if (!isTableEvent(event) || !event.objectIdentity) return null;
  const parts = splitIdentity(event.objectIdentity);
  if (parts.length < 2) return null;
  return { schema: parts[0], table: parts[1] };
}
