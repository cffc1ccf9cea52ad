/**
 * One change as a streaming-file CSV row: the `_cdc_*` metadata columns,
 * then the table's columns as PostgreSQL sent them.
 */

import { type PgoutputMessage, type TupleData, UNCHANGED_TOAST } from "../decode/pgoutput.ts";
import type { CsvRowEncoder } from "../write/csv_row_encoder.ts";
import type { RelationInfo } from "../pipeline/relation_catalog.ts";

/** The transaction a change belongs to, with its metadata pre-formatted. */
export interface ChangeTxn {
  lsnText: string;
  tsText: string;
  xidText: string;
}

/** A row change or a truncate. */
export type ChangeMessage = Extract<
  PgoutputMessage,
  { type: "insert" | "update" | "delete" | "truncate" }
>;

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();
const OP = {
  I: textEncoder.encode("I"),
  U: textEncoder.encode("U"),
  D: textEncoder.encode("D"),
  T: textEncoder.encode("T"),
};

/** Appends the CSV row of one change to `csv`. */
export function encodeChangeRow(
  csv: CsvRowEncoder,
  rel: RelationInfo,
  msg: ChangeMessage,
  txn: ChangeTxn,
  seq: number,
): void {
  let values: TupleData | null;
  let old: TupleData | undefined;
  let op: Uint8Array;
  switch (msg.type) {
    case "insert":
      op = OP.I;
      values = msg.newTuple;
      break;
    case "update":
      op = OP.U;
      values = msg.newTuple;
      old = msg.keyTuple ?? msg.oldTuple;
      break;
    case "delete":
      op = OP.D;
      values = msg.keyTuple ?? msg.oldTuple ?? null;
      break;
    case "truncate":
      op = OP.T;
      values = null;
      break;
  }
  csv.field(op);
  csv.fieldText(txn.lsnText);
  csv.fieldText(String(seq));
  csv.fieldText(txn.tsText);
  csv.fieldText(txn.xidText);
  // _cdc_unchanged_cols
  let unchanged: string[] | null = null;
  if (values) {
    for (let i = 0; i < values.length; i++) {
      if (values[i] === UNCHANGED_TOAST) (unchanged ??= []).push(rel.columnNames[i]);
    }
  }
  csv.fieldText(unchanged ? JSON.stringify(unchanged) : null);
  // _cdc_old_key: the key columns of a 'K' tuple, every sent column of an 'O' tuple.
  if (old) {
    const keyOnly = msg.type === "update" && msg.keyTuple !== undefined;
    const obj: Record<string, string | null> = {};
    for (let i = 0; i < old.length; i++) {
      const v = old[i];
      if (v === UNCHANGED_TOAST) continue;
      if (keyOnly && !rel.keyColumns.includes(i)) continue;
      obj[rel.columnNames[i]] = v === null ? null : textDecoder.decode(v);
    }
    csv.fieldText(JSON.stringify(obj));
  } else {
    csv.fieldText(null);
  }
  const n = rel.columnNames.length;
  for (let i = 0; i < n; i++) {
    const v = values ? values[i] : null;
    csv.field(v === UNCHANGED_TOAST || v === undefined ? null : v);
  }
  csv.endRow();
}
