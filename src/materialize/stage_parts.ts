/**
 * A DuckDB rebuild's staging files: the rows of its folded deltas (see
 * delta_sql.ts), split by a hash of their key into {@linkcode STAGE_PARTS}
 * files, so that each part can be applied on its own and DuckDB holds the
 * keys of one part at a time. Rows are encoded straight into a buffer per
 * part and written synchronously in large pieces: a rebuild stages a delta
 * every few thousand changes, and an asynchronous write per part and delta
 * cost more than the encoding.
 */

import type { Delta } from "../replay/change_folder.ts";
import type { CsvField } from "../replay/csv_reader.ts";
import type { TableShape } from "../replay/folder_schema.ts";
import { CsvRowEncoder } from "../write/csv_row_encoder.ts";
import { StageRowWriter } from "./delta_sql.ts";
import { STAGE_PARTS } from "./target_spec.ts";

/** Bytes a part buffers before it is written out. */
const WRITE_BYTES = 256 << 10;

/** The part of a key tuple (a hash of its text): equal keys always share a part. */
export function keyPart(key: CsvField[]): number {
  let h = 0;
  for (const v of key) {
    if (v === null) continue;
    for (let i = 0; i < v.length; i++) h = (Math.imul(h, 31) + v.charCodeAt(i)) | 0;
  }
  return (h >>> 0) % STAGE_PARTS;
}

/** The file of part `part` of the staging files at `path`. */
export function stagePartPath(path: string, part: number): string {
  return `${path}.${part}`;
}

interface Part {
  csv: CsvRowEncoder;
  file: Deno.FsFile;
  rows: number;
}

/** A staged part, once the files are closed. */
export interface StagedPart {
  part: number;
  path: string;
  rows: number;
}

/** The staging files of one rebuild, appended to delta by delta. */
export class StageParts {
  readonly #path: string;
  readonly #keyCols: number[];
  readonly #writer: StageRowWriter;
  readonly #parts: (Part | undefined)[] = [];
  #bytes = 0;

  /** Staging files at `path.<part>` for a table of `shape` (keyed). */
  constructor(path: string, shape: TableShape) {
    this.#path = path;
    this.#keyCols = shape.columns.flatMap((c, i) => c.isKey ? [i] : []);
    this.#writer = new StageRowWriter(shape);
  }

  /** Bytes staged so far. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Rows staged so far. */
  get rows(): number {
    return this.#writer.seq;
  }

  #part(key: CsvField[]): Part {
    const p = keyPart(key);
    let part = this.#parts[p];
    if (!part) {
      const file = Deno.openSync(stagePartPath(this.#path, p), {
        write: true,
        create: true,
        truncate: true,
        mode: 0o600,
      });
      part = { csv: new CsvRowEncoder({ initialCapacity: 1 << 16 }), file, rows: 0 };
      this.#parts[p] = part;
    }
    part.rows++;
    return part;
  }

  #spill(part: Part, min: number): void {
    if (part.csv.byteLength < min) return;
    const chunk = part.csv.takeChunk();
    for (let off = 0; off < chunk.length;) off += part.file.writeSync(chunk.subarray(off));
    this.#bytes += chunk.length;
  }

  /**
   * Stages a keyed delta without kept values, removals or TRUNCATE: its keys
   * to delete and its rows that replace their key's row, numbered in order.
   */
  add(delta: Delta): void {
    const w = this.#writer;
    for (const key of delta.deleteKeys) {
      const part = this.#part(key);
      w.key(part.csv, key);
      this.#spill(part, WRITE_BYTES);
    }
    const cols = this.#keyCols;
    for (const r of delta.rows) {
      const part = this.#part(r.key ?? cols.map((i) => r.values[i] ?? null));
      w.row(part.csv, r);
      this.#spill(part, WRITE_BYTES);
    }
  }

  /** Writes out and closes the files; returns the parts that have rows, by part number. */
  close(): StagedPart[] {
    const parts = this.#parts.splice(0);
    const out: StagedPart[] = [];
    try {
      parts.forEach((part, p) => {
        if (!part) return;
        this.#spill(part, 1);
        out.push({ part: p, path: stagePartPath(this.#path, p), rows: part.rows });
      });
    } finally {
      for (const part of parts) part?.file.close();
    }
    return out;
  }

  /** Closes the files without writing what is buffered. */
  abort(): void {
    for (const part of this.#parts) part?.file.close();
    this.#parts.length = 0;
  }
}
