/**
 * The hand-over between an export and the stream, for the tables being
 * exported: from the snapshot request (changes held) through the snapshot's
 * boundary C (held files sorted around it, the export folder named when the
 * stream reaches C) to the registration of the export together with what it
 * held, in one registry transaction. The stream loop is the
 * {@linkcode HandoverHost}; the per-table decisions are the pure functions
 * of table_lifecycle.ts.
 *
 * @module
 */

import { CdcError } from "../errors.ts";
import type { Lsn } from "../lsn.ts";
import type { StreamMetrics } from "../observe/metrics.ts";
import type { FileRecord, FinishedExport, Registry, TablePosition } from "../registry/registry.ts";
import { tableDirName } from "../write/table_dir.ts";
import type { TableBatch } from "../batch/table_batch.ts";
import { type HeldFile, HeldFiles, publishHeld } from "./held_files.ts";
import { DurableBatch } from "../write/durable_batch.ts";
import { eachLimited } from "../write/each_limited.ts";
import type { SealedExport } from "./reload_coordinator.ts";
import { FULL_RELOAD_FILE } from "./table_export.ts";
import {
  comparePosition,
  exportAbandoned,
  exportPlaceable,
  exportRegistered,
  nameExportFolder,
  noteRegistered,
  openGate,
  setBoundary,
  type TableLife,
} from "./table_lifecycle.ts";

/** At most this many exports are registered in one registry transaction. */
const MAX_EXPORTS_PER_COMMIT = 2000;
/** Exports placed or published at once (each a few file operations and fsyncs). */
const PLACE_CONCURRENCY = 64;

/** A table's current name and folder. */
export interface TableName {
  schema: string;
  table: string;
  tableDir: string;
}

/** What the hand-over needs from the stream loop. */
export interface HandoverHost {
  /** The relation's life (created for a relation not seen yet). */
  life(oid: number): TableLife;
  name(oid: number): TableName | undefined;
  setName(oid: number, name: TableName): void;
  /** A folder name for `tableDir`, later than every earlier one. */
  nextBatchTs(tableDir: string): string;
  lastBatchTs(tableDir: string): string | undefined;
  openBatch(oid: number): TableBatch | undefined;
  /** Closes open batches: registered now, or held. */
  close(oids: number[]): Promise<void>;
  /** Drops an open batch without registering it. */
  dropBatch(oid: number): Promise<void>;
  /** The position of the newest change processed. */
  processed(): TablePosition;
  /** Every commit before this LSN has been processed. */
  frontier(): Lsn;
  /** The checkpoint the registry may hold now. */
  checkpoint(): Lsn;
  /** Files were registered with `checkpoint`: acknowledge, count them. */
  registered(checkpoint: Lsn, files: FileRecord[]): void;
}

/** Exports under way, as the stream loop sees them. */
export class ExportHandover {
  /** Files held back per relation until its export is registered. */
  readonly held: HeldFiles;
  #host: HandoverHost;
  #registry: Registry;
  #metrics?: StreamMetrics;
  /** Sealed exports waiting until the stream reaches their boundary. */
  #ready = new Map<number, SealedExport>();
  /** Relations whose export boundary the stream has not reached yet. */
  #awaitingBoundary = new Set<number>();
  /** The nearest boundary of #awaitingBoundary (null: look at them all at the next tick). */
  #nextBoundary: Lsn | null = null;

  constructor(host: HandoverHost, registry: Registry, dataDir: string, metrics?: StreamMetrics) {
    this.#host = host;
    this.#registry = registry;
    this.#metrics = metrics;
    this.held = new HeldFiles(dataDir);
  }

  /** Drops everything held and every sealed export (a stop or a failed session). */
  async dropAll(): Promise<void> {
    await this.held.dropAll();
    for (const sealed of this.#ready.values()) await sealed.abort().catch(() => {});
    this.#ready.clear();
  }

  /**
   * An export's snapshot is being made for these tables: their open batches
   * are closed (their changes come before any boundary the snapshot can
   * have), and what comes next is held until the boundary is known.
   */
  async begin(tables: { oid: number; schema: string; table: string }[]): Promise<void> {
    const host = this.#host;
    for (const t of tables) {
      // A table with no change seen yet is known by the name it was requested under.
      if (!host.name(t.oid)) {
        host.setName(t.oid, { ...t, tableDir: tableDirName(t.schema, t.table) });
      }
    }
    const oids = tables.map((t) => t.oid);
    await host.close(oids.filter((oid) => host.openBatch(oid) !== undefined));
    const processed = host.processed();
    for (const oid of oids) {
      const life = host.life(oid);
      openGate(life, processed, life.phase === "unexported" ? "initial" : "requested");
      const name = host.name(oid);
      if (name) this.#metrics?.setTableMode(`${name.schema}.${name.table}`, "reloading");
    }
  }

  /**
   * The snapshot exists and its boundary is C. If the stream has already
   * passed C, the export folder is named now, and what was held since the
   * request is sorted around it: changes before C stay before it (or are
   * dropped, for a first export), the others move into folders after it.
   */
  async boundaryKnown(oids: number[], boundary: Lsn): Promise<void> {
    const host = this.#host;
    for (const oid of oids) {
      const life = host.life(oid);
      setBoundary(life, boundary);
      if (host.frontier() < boundary) {
        // Nothing at or after C has been seen yet.
        if (life.phase === "unexported") {
          if (host.openBatch(oid)?.held) await host.dropBatch(oid);
          await this.held.drop(oid);
        }
        this.#awaitingBoundary.add(oid);
        if (this.#nextBoundary === null || boundary < this.#nextBoundary) {
          this.#nextBoundary = boundary;
        }
        continue;
      }
      await host.close([oid]);
      const tableDir = this.#nameOf(oid).tableDir;
      nameExportFolder(life, host.nextBatchTs(tableDir));
      await this.held.sortAround(
        oid,
        boundary,
        life.phase === "unexported",
        tableDir,
        () => host.nextBatchTs(tableDir),
      );
    }
  }

  /**
   * The object key of `oid`'s export at `boundary`: null until the stream
   * names its folder, undefined when that export was abandoned (another
   * boundary, or none). An export into a bucket uploads its parts there.
   */
  exportKey(oid: number, boundary: Lsn): string | null | undefined {
    const g = this.#host.life(oid).gate;
    if (g === null || g.boundary !== boundary) return undefined;
    const name = this.#host.name(oid);
    if (g.batchTs === null || name === undefined) return null;
    return `${name.tableDir}/${g.batchTs}/${FULL_RELOAD_FILE}`;
  }

  /** An export is sealed; it is registered once the stream has reached its boundary. */
  sealed(oid: number, sealed: SealedExport): void {
    this.#ready.set(oid, sealed);
  }

  /**
   * The stream reached the export's boundary C: the table's open batch (its
   * changes before C) is closed, and the export folder is named now, so it
   * sorts after every folder of earlier changes and before later ones.
   */
  async reachBoundary(life: TableLife): Promise<void> {
    await this.#host.close([life.oid]);
    nameExportFolder(life, this.#host.nextBatchTs(this.#nameOf(life.oid).tableDir));
    this.#awaitingBoundary.delete(life.oid);
  }

  /** Between frames: names folders the stream has reached, registers exports that can be. */
  async tick(): Promise<void> {
    // Ticks can follow every frame, and thousands of tables may await a
    // boundary (a first export): visit them only once the stream reaches
    // the nearest boundary.
    const frontier = this.#host.frontier();
    if (
      this.#awaitingBoundary.size > 0 &&
      (this.#nextBoundary === null || frontier >= this.#nextBoundary)
    ) {
      let next: Lsn | null = null;
      for (const oid of [...this.#awaitingBoundary]) {
        const life = this.#host.life(oid);
        const g = life.gate;
        if (!g || g.boundary === null || g.batchTs !== null) {
          this.#awaitingBoundary.delete(oid);
        } else if (frontier >= g.boundary) {
          await this.reachBoundary(life);
        } else if (next === null || g.boundary < next) {
          next = g.boundary;
        }
      }
      this.#nextBoundary = next;
    }
    if (this.#ready.size === 0) return;
    const due: { life: TableLife; sealed: SealedExport }[] = [];
    for (const [oid, sealed] of this.#ready) {
      const life = this.#host.life(oid);
      if (!exportPlaceable(life) || life.gate!.boundary !== sealed.boundary) continue;
      due.push({ life, sealed });
    }
    for (let i = 0; i < due.length; i += MAX_EXPORTS_PER_COMMIT) {
      const group = due.slice(i, i + MAX_EXPORTS_PER_COMMIT);
      for (const d of group) this.#ready.delete(d.life.oid);
      await this.#register(group);
    }
  }

  /**
   * Registers exports that can be, each with what it held, in one registry
   * transaction: all of them or none. The files are placed a few at a time
   * in parallel, and every file and every folder that changed is fsynced
   * once before the commit; the final renames after it need no fsync.
   */
  async #register(group: { life: TableLife; sealed: SealedExport }[]): Promise<void> {
    const host = this.#host;
    const durable = new DurableBatch();
    const placed = group.map(({ life, sealed }) => ({
      life,
      sealed,
      name: this.#nameOf(life.oid),
      batchTs: life.gate!.batchTs!,
      path: "",
      held: [] as HeldFile[],
      last: null as TablePosition | null,
    }));
    await eachLimited(placed, PLACE_CONCURRENCY, async (p) => {
      p.path = await p.sealed.place(p.name.tableDir, p.batchTs, durable);
    });
    await durable.flush();
    const finished: FinishedExport[] = [];
    for (const p of placed) {
      const { life, sealed, name, batchTs } = p;
      p.held = this.held.take(life.oid);
      for (const h of p.held) {
        if (p.last === null || comparePosition(h.last, p.last) > 0) p.last = h.last;
      }
      finished.push({
        ops: sealed.ops,
        files: [...p.held.map((h) => h.file), {
          schema: name.schema,
          table: name.table,
          tableDir: name.tableDir,
          relationOid: life.oid,
          batchTs,
          path: p.path,
          fileType: "full_reload",
          startLsn: sealed.boundary,
          endLsn: sealed.boundary,
          startSeq: null,
          endSeq: null,
          rowCount: sealed.rows,
          byteSize: sealed.byteSize,
          sha256: sealed.sha256,
          hasDdl: false,
          reloadReason: life.gate!.reason,
        }],
        state: {
          oid: life.oid,
          ...name,
          last: p.last,
          lastBatchTs: host.lastBatchTs(name.tableDir) ?? batchTs,
          mode: life.phase === "dropped" ? "dropped" : "streaming",
          reloadLsn: sealed.boundary,
        },
      });
    }
    const checkpoint = host.checkpoint();
    // Once this call is sent the registry decides: on any error the session
    // fails and start-up recovery settles the files against the registry.
    await this.#registry.finishReloads(finished, checkpoint);
    // Registered: a crash from here on is settled by recovery, which renames
    // registered files still under their temp names. So no fsync is owed.
    await eachLimited(placed, PLACE_CONCURRENCY, async (p) => {
      for (const h of p.held) await publishHeld(h, true);
      await p.sealed.publish(durable);
    });
    for (const p of placed) {
      const { life, sealed, name } = p;
      exportRegistered(life, sealed.boundary, p.last);
      const open = host.openBatch(life.oid);
      if (open) open.held = false;
      this.#metrics?.setTableMode(`${name.schema}.${name.table}`, life.phase);
    }
    host.registered(checkpoint, placed.flatMap((p) => p.held.map((h) => h.file)));
    for (const p of placed) p.sealed.onRegistered(p.path);
  }

  /** An export failed or was abandoned: `final` when its table is gone for good. */
  async failed(oid: number, final: boolean): Promise<void> {
    const host = this.#host;
    await this.#ready.get(oid)?.abort().catch(() => {});
    this.#ready.delete(oid);
    this.#awaitingBoundary.delete(oid);
    const life = host.life(oid);
    exportAbandoned(life);
    if (!final) return;
    // Nothing will come to wait for: register what was held, as it is.
    const open = host.openBatch(oid);
    if (open) open.held = false;
    const held = this.held.take(oid);
    life.gate = null;
    if (held.length === 0) return;
    const name = this.#nameOf(oid);
    const checkpoint = host.checkpoint();
    const last = held.at(-1)!.last;
    await this.#registry.commitFlush(held.map((h) => h.file), [{
      oid,
      ...name,
      last,
      lastBatchTs: host.lastBatchTs(name.tableDir)!,
    }], checkpoint);
    for (const h of held) await publishHeld(h);
    noteRegistered(life, last);
    host.registered(checkpoint, held.map((h) => h.file));
  }

  #nameOf(oid: number): TableName {
    const name = this.#host.name(oid);
    if (!name) throw new CdcError("protocol", `No name known for relation ${oid}`);
    return name;
  }
}
