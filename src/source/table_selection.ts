/**
 * Which tables cdc-egress captures: `--tables` / `--exclude` patterns over
 * schema-qualified names, matched in TypeScript so a name is never pasted
 * into SQL.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";

/** A user table as the catalog describes it. */
export interface TableRef {
  schema: string;
  table: string;
  oid: number;
}

/** A parsed table pattern (glob per part; schema null: any schema). */
export interface Pattern {
  schema: RegExp | null;
  table: RegExp;
}

function globToRegExp(glob: string): RegExp {
  let re = "";
  for (const ch of glob) {
    if (ch === "*") re += ".*";
    else if (ch === "?") re += ".";
    else re += ch.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`, "su");
}

/**
 * Splits a dotted name at the dots outside double quotes and unquotes each
 * part (`"a.b".c` gives `a.b` and `c`), as quote_ident printed it. `limit`
 * stops splitting after that many parts; the rest stays in the last one.
 */
export function splitQualifiedName(text: string, limit = Infinity): string[] {
  const parts: string[] = [];
  let current = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === '"') {
      if (quoted && text[i + 1] === '"') {
        current += '"';
        i++;
      } else {
        quoted = !quoted;
      }
    } else if (ch === "." && !quoted && parts.length < limit - 1) {
      parts.push(current);
      current = "";
    } else {
      current += ch;
    }
  }
  if (quoted) throw new SyntaxError(`Cannot parse name "${text}": unclosed quote`);
  parts.push(current);
  return parts;
}

/** Splits `schema.table` at the first dot outside double quotes; unquotes both parts. */
function splitPattern(text: string): [string | null, string] {
  let parts: string[];
  try {
    parts = splitQualifiedName(text, 2);
  } catch {
    throw new SyntaxError(`Cannot parse table pattern "${text}": unclosed quote`);
  }
  if (parts.some((p) => p.length === 0)) {
    throw new SyntaxError(`Cannot parse table pattern "${text}": empty name part`);
  }
  return parts.length === 1 ? [null, parts[0]] : [parts[0], parts[1]];
}

/** Parses one pattern: `orders`, `public.*`, `"My Schema"."odd.name"`. */
export function parseTablePattern(text: string): Pattern {
  const [schema, table] = splitPattern(text.trim());
  return { schema: schema === null ? null : globToRegExp(schema), table: globToRegExp(table) };
}

/** Whether a table matches a pattern. */
export function matchesPattern(p: Pattern, t: { schema: string; table: string }): boolean {
  return (p.schema === null || p.schema.test(t.schema)) && p.table.test(t.table);
}

/** Lists the user tables (plain and partitioned roots) that the patterns select. */
export async function selectTables(
  client: pg.Client,
  include: string[],
  exclude: string[],
): Promise<TableRef[]> {
  const inc = include.map(parseTablePattern);
  const exc = exclude.map(parseTablePattern);
  const res = await client.query(`
    SELECT n.nspname AS schema, c.relname AS table, c.oid::int8 AS oid
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
      AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'cdc_registry')
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
    ORDER BY 1, 2`);
  const all: TableRef[] = res.rows.map((r) => ({
    schema: r.schema,
    table: r.table,
    oid: Number(r.oid),
  }));
  return all.filter((t) =>
    (inc.length === 0 || inc.some((p) => matchesPattern(p, t))) &&
    !exc.some((p) => matchesPattern(p, t))
  );
}

/** Quotes an identifier for SQL (what `quote_ident` does, always quoting). */
export function quoteIdent(name: string): string {
  return '"' + name.replaceAll('"', '""') + '"';
}

/** `"schema"."table"` for SQL. */
export function qualifiedName(t: { schema: string; table: string }): string {
  return `${quoteIdent(t.schema)}.${quoteIdent(t.table)}`;
}
