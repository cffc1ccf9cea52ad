/**
 * Files held back for an export: sealed, under their temp names, not
 * registered. They are registered together with the export they wait for,
 * in one transaction. Until then their folders may still be renamed, and a
 * streaming file may be split, so that folder order stays LSN order around
 * the export's boundary C even when C became known only after the stream
 * had passed it.
 */

import { join } from "node:path";
import { splitAtLsn } from "../batch/split_at_lsn.ts";
import { formatLsn, type Lsn, minLsn } from "../lsn.ts";
import type { FileRecord, TablePosition } from "../registry/registry.ts";
import { ensureDir, syncDir, TEMP_PREFIX, writeFileAtomic } from "../write/atomic_file.ts";
import { renderSchemaYml, type TableSchema } from "../write/schema_yml.ts";

/** One held file. */
export interface HeldFile {
  file: FileRecord;
  first: TablePosition;
  last: TablePosition;
  /** The checkpoint that was valid before the file's first change. */
  safeBefore: Lsn;
  /** Absolute folder and file name; the file sits under its temp name. */
  dir: string;
  name: string;
  /** The folder's schema.yml content without its LSN (streaming files). */
  schema?: Omit<TableSchema, "validFromLsn">;
}

/** Held files per relation, in LSN order. */
export class HeldFiles {
  #byOid = new Map<number, HeldFile[]>();
  #dataDir: string;

  constructor(dataDir: string) {
    this.#dataDir = dataDir;
  }

  #bytes = 0;

  /** Whether nothing is held. */
  get empty(): boolean {
    return this.#byOid.size === 0;
  }

  /** Bytes of the files held (they are in the data dir, or the spool, until registered). */
  get bytes(): number {
    return this.#bytes;
  }

  /** Holds one more file of `oid` (after the ones it holds). */
  add(oid: number, held: HeldFile): void {
    this.#bytes += held.file.byteSize;
    const list = this.#byOid.get(oid);
    if (list) list.push(held);
    else this.#byOid.set(oid, [held]);
  }

  /** Takes (and forgets) what is held for `oid`. */
  take(oid: number): HeldFile[] {
    const list = this.#byOid.get(oid) ?? [];
    this.#byOid.delete(oid);
    for (const h of list) this.#bytes -= h.file.byteSize;
    return list;
  }

  /** The checkpoint capped by every held file: their changes are not registered. */
  capCheckpoint(cp: Lsn): Lsn {
    for (const list of this.#byOid.values()) for (const h of list) cp = minLsn(cp, h.safeBefore);
    return cp;
  }

  /** Removes what is held for `oid`. */
  async drop(oid: number): Promise<void> {
    for (const h of this.take(oid)) await abortHeld(h);
  }

  /** Removes everything held (a stop or a failed session: it is sent again). */
  async dropAll(): Promise<void> {
    for (const oid of [...this.#byOid.keys()]) await this.drop(oid);
  }

  /**
   * Sorts the held files of `oid` around a boundary C whose export folder
   * has just been named: files before C stay (or are dropped when `fresh`,
   * a first export, whose history starts at C), files from C on move into
   * folders named after it, and a file across C is split in two.
   * `nextBatchTs` names each new folder, later than the one before.
   */
  async sortAround(
    oid: number,
    boundary: Lsn,
    fresh: boolean,
    tableDir: string,
    nextBatchTs: () => string,
  ): Promise<void> {
    const out: HeldFile[] = [];
    for (const h of this.take(oid)) {
      if (h.last.lsn < boundary) {
        if (fresh) await abortHeld(h);
        else out.push(h);
      } else if (h.first.lsn >= boundary) {
        out.push(await this.#move(h, tableDir, nextBatchTs()));
      } else {
        const [before, after] = await this.#split(h, boundary, tableDir, nextBatchTs());
        if (before && fresh) await abortHeld(before);
        else if (before) out.push(before);
        if (after) out.push(after);
      }
    }
    for (const h of out) this.add(oid, h);
  }

  /** Gives a held file the folder `batchTs`. */
  async #move(h: HeldFile, tableDir: string, batchTs: string): Promise<HeldFile> {
    const dir = join(this.#dataDir, tableDir, batchTs);
    await Deno.rename(h.dir, dir);
    await syncDir(join(this.#dataDir, tableDir));
    return { ...h, dir, file: { ...h.file, batchTs, path: `${tableDir}/${batchTs}/${h.name}` } };
  }

  /** Splits a held streaming file at C: the part before stays, the rest goes to `batchTs`. */
  async #split(
    h: HeldFile,
    boundary: Lsn,
    tableDir: string,
    batchTs: string,
  ): Promise<[HeldFile | null, HeldFile | null]> {
    const dir = join(this.#dataDir, tableDir, batchTs);
    await ensureDir(dir);
    const src = join(h.dir, TEMP_PREFIX + h.name);
    const parts = await splitAtLsn(src, boundary, {
      finalPath: join(h.dir, h.name),
      tempPath: join(h.dir, `${TEMP_PREFIX}before-${h.name}`),
    }, {
      finalPath: join(dir, h.name),
      tempPath: join(dir, TEMP_PREFIX + h.name),
    });
    await Deno.remove(src);
    let before: HeldFile | null = null;
    let after: HeldFile | null = null;
    if (parts.before) {
      const p = parts.before;
      await Deno.rename(p.sealed.tempPath, src);
      await syncDir(h.dir);
      before = {
        ...h,
        last: p.last,
        file: {
          ...h.file,
          endLsn: p.last.lsn,
          endSeq: p.last.seq,
          rowCount: p.rows,
          byteSize: p.sealed.byteSize,
          sha256: p.sealed.sha256,
        },
      };
    } else {
      await abortHeld(h);
    }
    if (parts.after) {
      const p = parts.after;
      if (h.schema) {
        await writeFileAtomic(
          join(dir, "schema.yml"),
          new TextEncoder().encode(
            renderSchemaYml({ ...h.schema, validFromLsn: formatLsn(p.first.lsn) }),
          ),
        );
      }
      after = {
        ...h,
        dir,
        first: p.first,
        last: p.last,
        file: {
          ...h.file,
          batchTs,
          path: `${tableDir}/${batchTs}/${h.name}`,
          startLsn: p.first.lsn,
          startSeq: p.first.seq,
          endLsn: p.last.lsn,
          endSeq: p.last.seq,
          rowCount: p.rows,
          byteSize: p.sealed.byteSize,
          sha256: p.sealed.sha256,
        },
      };
    } else {
      await Deno.remove(dir).catch(() => {});
    }
    return [before, after];
  }
}

/**
 * Gives a held file its final name (after the registry commit). With
 * `unsynced`, the rename is not fsynced: crash recovery renames a registered
 * file that is still under its temp name.
 */
export async function publishHeld(h: HeldFile, unsynced = false): Promise<void> {
  const from = join(h.dir, TEMP_PREFIX + h.name);
  const to = join(h.dir, h.name);
  if (unsynced) return await Deno.rename(from, to);
  await Deno.rename(from, to);
  await syncDir(h.dir);
}

/** Removes a held file and its folder: nothing else is in it. */
export async function abortHeld(h: HeldFile): Promise<void> {
  await Deno.remove(join(h.dir, TEMP_PREFIX + h.name)).catch(() => {});
  await Deno.remove(join(h.dir, "schema.yml")).catch(() => {});
  await Deno.remove(h.dir).catch(() => {});
}
