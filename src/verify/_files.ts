/** File rows as verify checks them, and their (LSN, seq) positions. */

import { compareLsn, formatLsn, type Lsn } from "../lsn.ts";

export interface FileRow {
  id: number;
  /** The relation; null for files registered before registry migration 3. */
  oid: number | null;
  schema: string;
  table: string;
  tableName: string;
  tableDir: string;
  batchTs: string;
  path: string;
  fileType: "streaming" | "full_reload" | "ddl";
  start: Position;
  end: Position;
  rowCount: number;
  byteSize: number;
  sha256: string;
}

export interface Position {
  lsn: Lsn;
  seq: number;
}

export function comparePosition(a: Position, b: Position): number {
  return compareLsn(a.lsn, b.lsn) || a.seq - b.seq;
}

export function formatPosition(p: Position): string {
  return `${formatLsn(p.lsn)}#${p.seq}`;
}

/** `schema.table`. */
export function tableName(schema: string, table: string): string {
  return `${schema}.${table}`;
}
