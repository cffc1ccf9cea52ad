/**
 * One table's open batch. Its rows are CSV-encoded into memory; a batch
 * that grows past {@linkcode SPILL_BYTES} (or that the memory budget makes
 * room from) gets a temp file and compresses into it through a
 * {@linkcode WriterPool}, which bounds the open files and deflate contexts
 * whatever the number of tables. A batch still in memory at the flush is
 * compressed into its file in one go.
 *
 * Nothing is fsynced here: {@linkcode TableBatch.finish} leaves the data file
 * and schema.yml written and names what must be fsynced
 * ({@linkcode TableBatch.durablePaths}), so a flush of many batches fsyncs
 * them together (`group_sync.ts`) before it registers them.
 */

import { join } from "node:path";
import type { RelationInfo } from "../pipeline/relation_catalog.ts";
import type { FileRecord, TablePosition } from "../registry/registry.ts";
import { CsvRowEncoder } from "../write/csv_row_encoder.ts";
import type { GzipFileWriter, SealedFile } from "../write/gzip_file_writer.ts";
import { BufferedGzipFile } from "../write/buffered_gzip_file.ts";
import type { WriterPool } from "../write/writer_pool.ts";
import { DIR_MODE, FILE_MODE } from "../write/atomic_file.ts";
import { renderSchemaYml, type TableSchema } from "../write/schema_yml.ts";
import { formatLsn, type Lsn } from "../lsn.ts";

/**
 * Encoded CSV a batch keeps in memory before it moves to a file; also the
 * size of the chunks handed to gzip after that.
 */
export const SPILL_BYTES = 256 * 1024;

/** A new batch's buffer: most batches of a many-table database stay tiny. */
const INITIAL_BUFFER = 1024;

/** Name of the streaming file inside a batch folder. */
export const STREAMING_FILE = "streaming.csv.gz";

/** Name of a batch folder's column description. */
const SCHEMA_FILE = "schema.yml";

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
  readonly encoder = new CsvRowEncoder({
    initialCapacity: INITIAL_BUFFER,
    maxRetainedCapacity: 2 * SPILL_BYTES,
  });
  /**
   * Held for an export: never flushed by the policy; when it must close, it
   * waits sealed and unregistered until the export is registered.
   */
  held = false;
  rows = 0;
  first: TablePosition | null = null;
  last: TablePosition | null = null;
  /** Memory this batch was last counted at by the owner's budget. */
  accountedBytes = 0;
  readonly #dataDir: string;
  #writer: GzipFileWriter | null = null;
  /** CSV bytes handed to the writer, the header included. */
  #spilledBytes = 0;
  /** Directories that got new entries for this batch (to fsync before registering). */
  #changedDirs: string[] = [];
  #sealed: SealedFile | null = null;
  /** The file of a batch that never spilled, written whole by {@linkcode finish}. */
  #whole: BufferedGzipFile | null = null;

  /** A batch of `relation` in folder `batchTs`; nothing is created on disk yet. */
  constructor(relation: RelationInfo, batchTs: string, dataDir: string, safeBefore: Lsn) {
    this.relation = relation;
    this.batchTs = batchTs;
    this.relDir = `${relation.tableDir}/${batchTs}`;
    this.absDir = join(dataDir, relation.tableDir, batchTs);
    this.safeBefore = safeBefore;
    this.openedAt = Date.now();
    this.#dataDir = dataDir;
  }

  /** Uncompressed CSV bytes so far, the header included. */
  get bytes(): number {
    const written = this.#writer === null && this.#whole === null
      ? this.relation.header.length
      : this.#spilledBytes;
    return written + this.encoder.byteLength;
  }

  /** Memory the batch holds: its CSV buffer (an open writer is counted by its pool). */
  get memoryBytes(): number {
    return this.encoder.capacity;
  }

  /** Whether the batch has a temp file. */
  get spilled(): boolean {
    return this.#writer !== null;
  }

  /** Records that a row at `pos` was appended to the encoder. */
  noteRow(pos: TablePosition): void {
    this.rows++;
    if (this.first === null) this.first = pos;
    this.last = pos;
  }

  /** Whether enough encoded rows have accumulated for {@linkcode maybeDrain} to hand on. */
  get drainDue(): boolean {
    return this.encoder.byteLength >= SPILL_BYTES;
  }

  /** Moves the encoded rows to the batch's file once enough have accumulated. */
  async maybeDrain(pool: WriterPool): Promise<void> {
    if (this.encoder.byteLength >= SPILL_BYTES) await this.spill(pool);
  }

  /** Moves the encoded rows to the batch's file (creating it) and shrinks the buffer. */
  async spill(pool: WriterPool): Promise<void> {
    if (this.#writer === null) {
      this.#makeDir();
      this.#writer = await pool.create(join(this.absDir, STREAMING_FILE), {
        tempPath: join(this.absDir, `.tmp-${STREAMING_FILE}`),
      });
      await this.#writer.write(this.relation.header);
      this.#spilledBytes = this.relation.header.length;
    } else {
      await pool.use(this.#writer);
    }
    const chunk = this.encoder.takeChunk();
    this.#spilledBytes += chunk.length;
    if (chunk.length > 0) await this.#writer.write(chunk);
    this.encoder.compact();
  }

  /**
   * Completes the data file under its temp name and writes schema.yml, both
   * without fsync: see {@linkcode durablePaths}. The batch takes no more rows.
   */
  async finish(
    pool: WriterPool,
    schema: Omit<TableSchema, "validFromLsn">,
    previousName: string | null,
  ): Promise<SealedFile> {
    const yml = renderSchemaYml({
      ...schema,
      validFromLsn: formatLsn(this.first!.lsn),
      previousName,
    });
    const writer = this.#writer;
    if (writer === null) {
      // Never spilled: compressed in one call and written in one, with no
      // deflate context or descriptor of its own (thousands of small
      // batches close at once).
      this.#makeDir();
      const whole = new BufferedGzipFile(join(this.absDir, STREAMING_FILE), {
        tempPath: join(this.absDir, `.tmp-${STREAMING_FILE}`),
        bufferBytes: this.relation.header.length + this.encoder.byteLength,
      });
      this.#whole = whole;
      await whole.write(this.relation.header);
      this.#spilledBytes = this.relation.header.length;
      const chunk = this.encoder.takeChunk();
      this.#spilledBytes += chunk.length;
      await whole.write(chunk);
      this.#sealed = await whole.seal({ sync: false });
    } else {
      if (this.encoder.byteLength > 0) {
        await pool.use(writer);
        const chunk = this.encoder.takeChunk();
        this.#spilledBytes += chunk.length;
        await writer.write(chunk);
      }
      this.#sealed = await writer.seal({ sync: false });
      pool.release(writer);
    }
    // A new folder of an unregistered batch: a torn schema.yml there is
    // removed by recovery, and it is fsynced before the batch is registered.
    Deno.writeFileSync(join(this.absDir, SCHEMA_FILE), new TextEncoder().encode(yml), {
      mode: FILE_MODE,
    });
    return this.#sealed;
  }

  /** What must be fsynced after {@linkcode finish} before the batch is registered. */
  durablePaths(): { files: string[]; dirs: string[] } {
    return {
      files: [this.#sealed!.tempPath, join(this.absDir, SCHEMA_FILE)],
      dirs: [this.absDir, ...this.#changedDirs],
    };
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

  /**
   * Moves the sealed file to its final name (after the registry commit).
   * The directory is not fsynced: after a crash, recovery renames a
   * registered temp file into place.
   */
  async publish(): Promise<void> {
    if (this.#writer !== null) return await this.#writer.publish({ sync: false });
    Deno.renameSync(this.#sealed!.tempPath, join(this.absDir, STREAMING_FILE));
  }

  /** Drops the temp file, and the folder with its schema.yml: nothing else is in it. */
  async abort(pool: WriterPool): Promise<void> {
    if (this.#writer !== null) {
      pool.release(this.#writer);
      await this.#writer.abort();
    }
    await this.#whole?.abort();
    await Deno.remove(join(this.absDir, SCHEMA_FILE)).catch(() => {});
    await Deno.remove(this.absDir).catch(() => {});
  }

  /**
   * Creates the batch folder (and the table folder the first time) without
   * fsyncs, remembering which directories got new entries. Synchronous, as
   * in {@linkcode DurableBatch}: thousands of batches close at once.
   */
  #makeDir(): void {
    try {
      Deno.mkdirSync(this.absDir, { mode: DIR_MODE });
    } catch (error) {
      if (error instanceof Deno.errors.AlreadyExists) return;
      if (!(error instanceof Deno.errors.NotFound)) throw error;
      const tableDir = join(this.#dataDir, this.relation.tableDir);
      try {
        Deno.mkdirSync(tableDir, { mode: DIR_MODE });
        this.#changedDirs.push(this.#dataDir);
      } catch (inner) {
        if (!(inner instanceof Deno.errors.AlreadyExists)) throw inner;
      }
      Deno.mkdirSync(this.absDir, { mode: DIR_MODE });
    }
    this.#changedDirs.push(join(this.#dataDir, this.relation.tableDir));
  }
}
