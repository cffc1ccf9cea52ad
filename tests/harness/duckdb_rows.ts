/**
 * Reads a table of a DuckDB database written by `materialize` back as
 * PostgreSQL text, for comparisons with the source: native columns are
 * printed the way PostgreSQL prints them (floats compared as numbers).
 */

import { DuckDBInstance } from "@duckdb/node-api";

/** Column name and DuckDB type of a table. */
export async function duckdbColumns(
  path: string,
  schema: string,
  table: string,
): Promise<{ name: string; type: string }[]> {
  const inst = await DuckDBInstance.create(path, { access_mode: "READ_ONLY" });
  try {
    const c = await inst.connect();
    const r = await c.runAndReadAll(
      `SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = '${schema}'
       AND table_name = '${table}' ORDER BY column_index`,
    );
    c.closeSync();
    return r.getRowsJS().map((row) => ({ name: String(row[0]), type: String(row[1]) }));
  } finally {
    inst.closeSync();
  }
}

/** Canonical text of a float, so PostgreSQL's and DuckDB's forms compare. */
export function floatText(v: unknown, real: boolean): string | null {
  if (v === null) return null;
  const n = Number(v);
  return String(real ? Math.fround(n) : n);
}

/** A table's rows as PostgreSQL text (floats canonical), sorted by JSON form. */
export async function duckdbRows(path: string, schema: string, table: string): Promise<string[]> {
  const cols = await duckdbColumns(path, schema, table);
  return await rowsAsText(path, `"${schema}"."${table}"`, cols);
}

/** A Parquet file's columns (DuckDB types). */
export async function parquetColumns(file: string): Promise<{ name: string; type: string }[]> {
  const inst = await DuckDBInstance.create(":memory:");
  try {
    const c = await inst.connect();
    const r = await c.runAndReadAll(`DESCRIBE SELECT * FROM read_parquet('${file}')`);
    c.closeSync();
    return r.getRowsJS().map((row) => ({ name: String(row[0]), type: String(row[1]) }));
  } finally {
    inst.closeSync();
  }
}

/** A Parquet file's rows as PostgreSQL text (floats canonical), sorted by JSON form. */
export async function parquetRows(file: string): Promise<string[]> {
  return await rowsAsText(":memory:", `read_parquet('${file}')`, await parquetColumns(file));
}

async function rowsAsText(
  path: string,
  from: string,
  cols: { name: string; type: string }[],
): Promise<string[]> {
  const exprs = cols.map(({ name, type }) => {
    const c = `"${name.replaceAll('"', '""')}"`;
    if (type === "VARCHAR" || type === "FLOAT" || type === "DOUBLE") return c;
    if (type === "BOOLEAN") return `CASE WHEN ${c} THEN 't' WHEN NOT ${c} THEN 'f' END`;
    if (type === "BLOB") return `'\\x' || lower(hex(${c}))`;
    return `CAST(${c} AS VARCHAR)`;
  });
  const inst = await DuckDBInstance.create(
    path,
    path === ":memory:" ? {} : { access_mode: "READ_ONLY" },
  );
  try {
    const c = await inst.connect();
    await c.run("SET TimeZone = 'UTC'");
    const r = await c.runAndReadAll(`SELECT ${exprs.join(", ")} FROM ${from}`);
    c.closeSync();
    return r.getRowsJS().map((row) =>
      JSON.stringify(row.map((v, i) => {
        const t = cols[i].type;
        if (t === "FLOAT" || t === "DOUBLE") return floatText(v, t === "FLOAT");
        return v === null ? null : String(v);
      }))
    ).sort();
  } finally {
    inst.closeSync();
  }
}

/** Source rows made comparable with {@linkcode duckdbRows}: float columns canonical. */
export function canonicalFloats(
  rows: string[],
  cols: { name: string; type: string }[],
): string[] {
  return rows.map((json) => {
    const row = JSON.parse(json) as (string | null)[];
    return JSON.stringify(row.map((v, i) => {
      const t = cols[i]?.type;
      return t === "FLOAT" || t === "DOUBLE" ? floatText(v, t === "FLOAT") : v;
    }));
  }).sort();
}
