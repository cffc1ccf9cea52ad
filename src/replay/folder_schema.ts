/**
 * Reads a folder's `schema.yml` into the shape replay needs: columns with
 * their type, attnum and key flag, and whether rows are matched by key or
 * as a multiset (REPLICA IDENTITY FULL, or no key at all).
 */

import { asLayout, type LayoutFiles } from "../storage/layout_files.ts";
import { parse as parseYaml } from "yaml";

/** One column of a table shape. */
export interface ShapeColumn {
  name: string;
  /** `format_type()` text, e.g. `numeric(12,2)`. */
  type: string;
  /** `pg_attribute.attnum`, or null when schema.yml does not say. */
  attnum: number | null;
  isKey: boolean;
}

/** The columns of a table as one folder's rows have them. */
export interface TableShape {
  columns: ShapeColumn[];
  /** False for REPLICA IDENTITY FULL or keyless tables: rows are a multiset. */
  keyed: boolean;
  /** Primary key columns in key order (for an index in the target). */
  primaryKey: string[];
}

interface SchemaYml {
  replica_identity?: string;
  primary_key?: string[];
  columns: { name: string; type: string; attnum?: number; is_key?: boolean }[];
}

/** Parses schema.yml text. */
export function parseFolderSchema(text: string): TableShape {
  const yml = parseYaml(text) as SchemaYml;
  const columns = yml.columns.map((c) => ({
    name: String(c.name),
    type: String(c.type),
    attnum: c.attnum ?? null,
    isKey: Boolean(c.is_key),
  }));
  const keys = columns.filter((c) => c.isKey).length;
  return {
    columns,
    keyed: yml.replica_identity !== "full" && keys > 0,
    primaryKey: yml.primary_key ?? [],
  };
}

/** Reads the schema.yml next to a registered file (`path` relative to the data dir). */
export async function readFolderSchema(
  dataDir: string | LayoutFiles,
  path: string,
): Promise<TableShape> {
  const files = asLayout(dataDir);
  const rel = path.replace(/[^/]+$/, "schema.yml");
  try {
    return parseFolderSchema(await Deno.readTextFile(await files.path(rel)));
  } finally {
    await files.release(rel);
  }
}

/** Whether two shapes have the same columns (name, type, attnum, key) in the same order. */
export function sameShape(a: TableShape, b: TableShape): boolean {
  return a.keyed === b.keyed && a.columns.length === b.columns.length &&
    a.columns.every((c, i) => {
      const d = b.columns[i];
      return c.name === d.name && c.type === d.type && c.attnum === d.attnum &&
        c.isKey === d.isKey;
    });
}

/**
 * For each column of `to`, the position of the same column in `from`
 * (matched by attnum when both know it, which follows renames; else by
 * name), or -1 for a new column.
 */
export function columnMapping(from: TableShape, to: TableShape): number[] {
  return to.columns.map((c) => {
    if (c.attnum !== null) {
      const i = from.columns.findIndex((f) => f.attnum === c.attnum);
      if (i >= 0) return i;
    }
    return from.columns.findIndex((f) => f.name === c.name);
  });
}
