/**
 * One table's open batch: rows are CSV-encoded and compressed into a temp
 * file as they arrive, so memory stays bounded by the encoder buffer and the
 * gzip window whatever the batch or transaction size.
 */

import { join } from "node:path";
import type { RelationInfo } from "../pipeline/relation_catalog.ts";
import type { FileRecord, TablePosition } from "../registry/registry.ts";
import { CsvRowEncoder } from "../write/csv_row_encoder.ts";
import { GzipFileWriter, type SealedFile } from "../write/gzip_file_writer.ts";
import { ensureDir, writeFileAtomic } from "../write/atomic_file.ts";
import { renderSchemaYml, type TableSchema } from "../write/schema_yml.ts";
import { formatLsn, type Lsn } from "../lsn.ts";

/** Encoded CSV is handed to gzip in chunks of at least this size. */
const CHUNK_BYTES = 256 * 1024;

/** Name of the streaming file inside a batch folder. */
export const STREAMING_FILE = "streaming.csv.gz";

/** An open batch of one table. */
export class TableBatch {
  readonly relation: RelationInfo;
  /** The folder's schema.yml content, fixed when the batch opens. */
  schema: Omit<TableSchema, "validFromLsn"> | null = null;
  readonly batchTs: string;
  /** Folder relative to the data dir, `/`-separated. */
  readonly relDir: string;
  readonly absDir: string;
  /** The checkpoint that was valid before this batch's first row. */
  readonly safeBefore: Lsn;
  readonly openedAt: number;
  readonly encoder = new CsvRowEncoder();
  /**
   * Held for an export: never flushed by the policy; when it must close, it
   * waits sealed and unregistered until the export is registered.
   */
  held = false;
  rows = 0;
  first: TablePosition | null = null;
  last: TablePosition | null = null;
  #writer: GzipFileWriter;
  #csvBytes = 0;

  private constructor(
    relation: RelationInfo,
    batchTs: string,
    dataDir: string,
    safeBefore: Lsn,
    writer: GzipFileWriter,
  ) {
    this.relation = relation;
    this.batchTs = batchTs;
    this.relDir = `${relation.tableDir}/${batchTs}`;
    this.absDir = join(dataDir, relation.tableDir, batchTs);
    this.safeBefore = safeBefore;
    this.openedAt = Date.now();
    this.#writer = writer;
  }

  /** Creates the batch folder and the temp file, and writes the header. */
  static async open(
    relation: RelationInfo,
    batchTs: string,
    dataDir: string,
    safeBefore: Lsn,
  ): Promise<TableBatch> {
    const dir = join(dataDir, relation.tableDir, batchTs);
    await ensureDir(dir);
    const writer = await GzipFileWriter.create(join(dir, STREAMING_FILE), {
      tempPath: join(dir, `.tmp-${STREAMING_FILE}`),
    });
    const batch = new TableBatch(relation, batchTs, dataDir, safeBefore, writer);
    await writer.write(relation.header);
    batch.#csvBytes += relation.header.length;
    return batch;
  }

  /** Uncompressed CSV bytes so far, the header included. */
  get bytes(): number {
    return this.#csvBytes + this.encoder.byteLength;
  }

  /** Records that a row at `pos` was appended to the encoder. */
  noteRow(pos: TablePosition): void {
    this.rows++;
    if (this.first === null) this.first = pos;
    this.last = pos;
  }

  /** Whether enough encoded rows have accumulated for {@linkcode maybeDrain} to hand on. */
  get drainDue(): boolean {
    return this.encoder.byteLength >= CHUNK_BYTES;
  }

  /** Hands the encoded rows to gzip once enough have accumulated. */
  async maybeDrain(): Promise<void> {
    if (this.encoder.byteLength >= CHUNK_BYTES) await this.#drain();
  }

  async #drain(): Promise<void> {
    const chunk = this.encoder.takeChunk();
    this.#csvBytes += chunk.length;
    await this.#writer.write(chunk);
  }

  /** Finishes the file under its temp name and fsyncs it. */
  async seal(): Promise<SealedFile> {
    if (this.encoder.byteLength > 0) await this.#drain();
    return await this.#writer.seal();
  }

  /** Writes the folder's schema.yml, valid from the batch's first change. */
  async writeSchema(
    schema: Omit<TableSchema, "validFromLsn">,
    previousName: string | null,
  ): Promise<void> {
    const yml = renderSchemaYml({
      ...schema,
      validFromLsn: formatLsn(this.first!.lsn),
      previousName,
    });
    await writeFileAtomic(join(this.absDir, "schema.yml"), new TextEncoder().encode(yml));
  }

  /** The `file_log` row of the sealed file. */
  fileRecord(sealed: SealedFile): FileRecord {
    const rel = this.relation;
    return {
      schema: rel.schema,
      table: rel.table,
      tableDir: rel.tableDir,
      relationOid: rel.key,
      batchTs: this.batchTs,
      path: `${this.relDir}/${STREAMING_FILE}`,
      fileType: "streaming",
      startLsn: this.first!.lsn,
      endLsn: this.last!.lsn,
      startSeq: this.first!.seq,
      endSeq: this.last!.seq,
      rowCount: this.rows,
      byteSize: sealed.byteSize,
      sha256: sealed.sha256,
      hasDdl: false,
    };
  }

  /** Moves the sealed file to its final name (after the registry commit). */
  async publish(): Promise<void> {
    await this.#writer.publish();
  }

  /** Drops the temp file, and the folder with its schema.yml: nothing else is in it. */
  async abort(): Promise<void> {
    await this.#writer.abort();
    await Deno.remove(join(this.absDir, "schema.yml")).catch(() => {});
    await Deno.remove(this.absDir).catch(() => {});
  }
}
