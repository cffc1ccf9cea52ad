/**
 * What the stream knows about each published relation: the columns pgoutput
 * announced (authoritative for the rows that follow), the table directory,
 * the CSV header and, looked up once per column set, the schema.yml facts
 * that pgoutput does not send (type names, nullability, primary key).
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import type { RelationMessage } from "../decode/pgoutput.ts";
import { encodeCsvHeader } from "../write/csv_row_encoder.ts";
import type { TableSchema } from "../write/schema_yml.ts";
import { tableDirName } from "../write/table_dir.ts";
import type { Lsn } from "../lsn.ts";
import { describeTable } from "./table_export.ts";

/** Metadata columns that precede the table's columns in streaming files. */
export const STREAMING_META_COLUMNS = [
  "_cdc_op",
  "_cdc_lsn",
  "_cdc_seq",
  "_cdc_commit_ts",
  "_cdc_xid",
  "_cdc_unchanged_cols",
  "_cdc_old_key",
] as const;

const IDENTITY: Record<string, TableSchema["replicaIdentity"]> = {
  d: "default",
  n: "nothing",
  f: "full",
  i: "index",
};

/** A relation as announced by pgoutput, with what we derive from it. */
export interface RelationInfo {
  message: RelationMessage;
  schema: string;
  table: string;
  /** The relation's OID: a table is its relation, not its name. */
  key: number;
  tableDir: string;
  /** Changes when the column set changes; a batch never mixes two. */
  fingerprint: string;
  /** Registry tables are published only to carry DDL; they are not written as data. */
  captured: boolean;
  header: Uint8Array;
  columnNames: string[];
  keyColumns: number[];
}

/** Builds the RelationInfo of a Relation message. */
export function relationInfo(message: RelationMessage): RelationInfo {
  const columnNames = message.columns.map((c) => c.name);
  return {
    message,
    schema: message.namespace,
    table: message.name,
    key: message.relationId,
    tableDir: tableDirName(message.namespace, message.name),
    fingerprint: JSON.stringify([
      message.namespace,
      message.name,
      message.replicaIdentity,
      message.columns.map((c) => [c.name, c.typeOid, c.typeModifier, c.flags]),
    ]),
    captured: message.namespace !== "cdc_registry",
    header: encodeCsvHeader([...STREAMING_META_COLUMNS, ...columnNames]),
    columnNames,
    keyColumns: message.columns.flatMap((c, i) => (c.flags & 1) ? [i] : []),
  };
}

/** Looks up type names and constraints for schema.yml, cached per column set. */
export class SchemaLookup {
  #client: pg.Client;
  #cache = new Map<string, Omit<TableSchema, "validFromLsn">>();

  constructor(client: pg.Client) {
    this.#client = client;
  }

  /** The table's schema as the catalog holds it now, or null if it is gone. */
  async describeOid(oid: number, validFrom: Lsn): Promise<TableSchema | null> {
    try {
      return await describeTable(this.#client, oid, validFrom);
    } catch {
      return null;
    }
  }

  /**
   * The schema.yml content (without its LSN) for a relation's column set.
   * `attnums` (from the newest captured DDL of the table) wins over the
   * catalog's current names, which may already reflect a later rename.
   */
  async describe(
    rel: RelationInfo,
    attnums?: Map<string, number>,
  ): Promise<Omit<TableSchema, "validFromLsn">> {
    const described = await this.#describe(rel);
    if (!attnums) return described;
    return {
      ...described,
      columns: described.columns.map((c) => ({ ...c, attnum: attnums.get(c.name) ?? c.attnum })),
    };
  }

  async #describe(rel: RelationInfo): Promise<Omit<TableSchema, "validFromLsn">> {
    const cacheKey = `${rel.message.relationId}:${rel.fingerprint}`;
    const hit = this.#cache.get(cacheKey);
    if (hit) return hit;
    const cols = rel.message.columns;
    // format_type works from the (oid, typmod) pgoutput sent, so type names
    // match the rows even if the table has changed since.
    const res = await this.#client.query(
      `SELECT format_type(t.oid, t.typmod) AS type,
              a.attnotnull AS not_null, a.attnum,
              pg_get_expr(d.adbin, d.adrelid) AS default,
              EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = $3 AND i.indisprimary
                        AND a.attnum = ANY(i.indkey)) AS is_pk
       FROM unnest($1::oid[], $2::int4[], $4::text[]) WITH ORDINALITY AS t(oid, typmod, name, n)
       LEFT JOIN pg_attribute a ON a.attrelid = $3 AND a.attname = t.name AND NOT a.attisdropped
       LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
       ORDER BY t.n`,
      [
        cols.map((c) => c.typeOid),
        cols.map((c) => c.typeModifier),
        rel.message.relationId,
        cols.map((c) => c.name),
      ],
    );
    const described: Omit<TableSchema, "validFromLsn"> = {
      schema: rel.schema,
      table: rel.table,
      relationOid: rel.message.relationId,
      replicaIdentity: IDENTITY[rel.message.replicaIdentity] ?? "default",
      primaryKey: cols.filter((_c, i) => res.rows[i]?.is_pk).map((c) => c.name),
      columns: cols.map((c, i) => ({
        name: c.name,
        type: res.rows[i]?.type ?? String(c.typeOid),
        typeOid: c.typeOid,
        typeModifier: c.typeModifier,
        nullable: !res.rows[i]?.not_null,
        isKey: (c.flags & 1) === 1,
        attnum: res.rows[i]?.attnum ?? null,
        default: res.rows[i]?.default ?? null,
      })),
    };
    this.#cache.set(cacheKey, described);
    return described;
  }
}
