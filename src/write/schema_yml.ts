/**
 * Renders `schema.yml`, the description of a table's columns that sits next
 * to every batch's data files.
 *
 * @module
 */

import { stringify } from "yaml";

/** One column of a {@linkcode TableSchema}, in table order. */
export interface ColumnSchema {
  /** Column name, exactly as in the catalog. */
  name: string;
  /** `format_type(atttypid, atttypmod)`, e.g. `character varying(20)`. */
  type: string;
  /** `pg_type` oid. */
  typeOid: number;
  /** `atttypmod` (-1 when none). */
  typeModifier: number;
  /** Whether the column may hold NULL. */
  nullable: boolean;
  /** Whether the column is part of the replica identity key. */
  isKey: boolean;
  /**
   * `pg_attribute.attnum`, stable across renames and type changes, so a
   * consumer can follow a column from folder to folder; absent if unknown.
   */
  attnum?: number | null;
  /** The column default as `pg_get_expr` prints it; absent when none or unknown. */
  default?: string | null;
}

/** A table's shape as it was from one LSN on. */
export interface TableSchema {
  /** Schema (namespace) name. */
  schema: string;
  /** Table name. */
  table: string;
  /** `pg_class` oid: a table is its relation; a rename keeps it. */
  relationOid: number;
  /** The name the relation had before its newest rename, `schema.table`, when known. */
  previousName?: string | null;
  /** pg_lsn text of the first change the description applies to. */
  validFromLsn: string;
  /** `relreplident`, spelled out. */
  replicaIdentity: "default" | "nothing" | "full" | "index";
  /** Primary key columns in key order; empty when the table has none. */
  primaryKey: string[];
  /** Columns in table order (dropped columns excluded). */
  columns: ColumnSchema[];
}

/**
 * Renders a {@linkcode TableSchema} as YAML, deterministically: fixed key
 * order, snake_case keys, every string double-quoted (so names with `:`, `#`,
 * quotes, newlines, leading spaces or words like `yes`/`null` read back
 * exactly), no line folding.
 *
 * @example
 * ```yaml
 * schema: "public"
 * table: "orders"
 * relation_oid: 16384
 * valid_from_lsn: "0/16B3748"
 * replica_identity: "default"
 * primary_key:
 *   - "id"
 * columns:
 *   - name: "id"
 *     type: "integer"
 *     type_oid: 23
 *     type_modifier: -1
 *     nullable: false
 *     is_key: true
 * ```
 */
export function renderSchemaYml(schema: TableSchema): string {
  return renderPlain(schema) ?? renderWithLibrary(schema);
}

/** Printable ASCII without `"` and `\\`: double-quoted as it is. */
const PLAIN_TEXT = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

/**
 * The common case, written directly: every string is plain ASCII, so each
 * is `"` + itself + `"`, which is what the library writes for it (the
 * library costs about 0.3 ms per file, which counts when thousands of
 * tables are exported). Null when some string needs escapes.
 */
function renderPlain(schema: TableSchema): string | null {
  const q = (text: string) => {
    if (!PLAIN_TEXT.test(text)) throw PLAIN_TEXT;
    return `"${text}"`;
  };
  try {
    let out = `schema: ${q(schema.schema)}\ntable: ${q(schema.table)}\n` +
      `relation_oid: ${schema.relationOid}\n`;
    if (schema.previousName) out += `previous_name: ${q(schema.previousName)}\n`;
    out += `valid_from_lsn: ${q(schema.validFromLsn)}\n` +
      `replica_identity: ${q(schema.replicaIdentity)}\n`;
    out += schema.primaryKey.length === 0
      ? "primary_key: []\n"
      : `primary_key:\n${schema.primaryKey.map((k) => `  - ${q(k)}\n`).join("")}`;
    if (schema.columns.length === 0) return out + "columns: []\n";
    out += "columns:\n";
    for (const c of schema.columns) {
      if (!Number.isSafeInteger(c.typeOid) || !Number.isSafeInteger(c.typeModifier)) return null;
      out += `  - name: ${q(c.name)}\n    type: ${q(c.type)}\n    type_oid: ${c.typeOid}\n` +
        `    type_modifier: ${c.typeModifier}\n    nullable: ${c.nullable}\n` +
        `    is_key: ${c.isKey}\n`;
      if (c.attnum != null) {
        if (!Number.isSafeInteger(c.attnum)) return null;
        out += `    attnum: ${c.attnum}\n`;
      }
      if (c.default != null) out += `    default: ${q(c.default)}\n`;
    }
    return out;
  } catch (error) {
    if (error === PLAIN_TEXT) return null;
    throw error;
  }
}

/** Renders with the YAML library: any string, escaped as JSON escapes it. */
export function renderWithLibrary(schema: TableSchema): string {
  const doc = {
    schema: schema.schema,
    table: schema.table,
    relation_oid: schema.relationOid,
    ...(schema.previousName ? { previous_name: schema.previousName } : {}),
    valid_from_lsn: schema.validFromLsn,
    replica_identity: schema.replicaIdentity,
    primary_key: [...schema.primaryKey],
    columns: schema.columns.map((c) => ({
      name: c.name,
      type: c.type,
      type_oid: c.typeOid,
      type_modifier: c.typeModifier,
      nullable: c.nullable,
      is_key: c.isKey,
      ...(c.attnum != null ? { attnum: c.attnum } : {}),
      ...(c.default != null ? { default: c.default } : {}),
    })),
  };
  const yaml = stringify(doc, {
    defaultStringType: "QUOTE_DOUBLE",
    defaultKeyType: "PLAIN",
    lineWidth: 0,
    indentSeq: true,
    // JSON-style escapes (\u0001, not \x01) read back in every YAML parser.
    doubleQuotedAsJSON: true,
  });
  // The library writes DEL, C1 controls, U+2028/2029 and noncharacters raw,
  // but YAML only allows "printable" characters in a stream and strict
  // parsers (libyaml) reject the rest. Every string is double-quoted, so any
  // such character sits inside a double-quoted scalar, where an escape means
  // the same thing.
  return yaml.replace(NOT_PRINTABLE, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}

/** Characters YAML 1.2 does not allow unescaped (besides C0 controls, which the library escapes). */
const NOT_PRINTABLE =
  /[\u007f-\u009f\u2028\u2029\ufeff\ufffe\uffff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
