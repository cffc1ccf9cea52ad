/**
 * What the stream does with a captured DDL command at its position: a
 * `ddl.sql` folder for the table it changed (after closing the table's open
 * batch, so that no file spans the change), a new export when the command
 * changed existing rows without row events or made a name mean another
 * relation, and the publication for new tables.
 *
 * @module
 */

import { join } from "node:path";
import type { Logger } from "../log.ts";
import type { Lsn } from "../lsn.ts";
import type { StreamMetrics } from "../observe/metrics.ts";
import type { FileRecord, Registry, ReloadInsert, TablePosition } from "../registry/registry.ts";
import type { TableBatch } from "../batch/table_batch.ts";
import type { TableSchema } from "../write/schema_yml.ts";
import { tableDirName } from "../write/table_dir.ts";
import {
  changesExistingRows,
  createsTable,
  type DdlEvent,
  eventTable,
  schemaFromEvent,
} from "./ddl_events.ts";
import { DDL_FILE, writeDdlFolder } from "./ddl_folder.ts";
import type { ExportHandover, TableName } from "./export_handover.ts";
import {
  ddlNeedsExport,
  noteRegistered,
  openGate,
  reachesBoundary,
  rowAction,
  type TableLife,
} from "./table_lifecycle.ts";

/** What the DDL handler needs from the stream loop. */
export interface DdlHost {
  dataDir: string;
  registry: Registry;
  handover: ExportHandover;
  reloadAfterDdl: "auto" | "never";
  logger: Logger;
  metrics?: StreamMetrics;
  /** The relation's life, if it is a table we capture. */
  findLife(oid: number): TableLife | undefined;
  name(oid: number): TableName | undefined;
  setName(oid: number, name: TableName): void;
  /** The relations a qualified name has meant. */
  nameOwners(schema: string, table: string): ReadonlySet<number> | undefined;
  nextBatchTs(tableDir: string): string;
  openBatch(oid: number): TableBatch | undefined;
  close(oids: number[]): Promise<void>;
  checkpoint(): Lsn;
  /** The checkpoint valid before the current transaction. */
  lastCommitEnd(): Lsn;
  registered(checkpoint: Lsn, files: FileRecord[]): void;
  describeOid(oid: number, validFrom: Lsn): Promise<TableSchema | null>;
  /** Stops the export under way for `oid` (its result is thrown away). */
  abandonExport(oid: number): void;
  onCreateTable?: (schema: string, table: string) => Promise<void>;
}

/** Handles captured DDL in the stream. */
export class DdlHandler {
  #host: DdlHost;
  /** Column name → attnum per relation, from the newest captured DDL. */
  #attnums = new Map<number, Map<string, number>>();

  constructor(host: DdlHost) {
    this.#host = host;
  }

  /** Column name → attnum of a relation after its newest captured DDL. */
  attnums(oid: number): Map<string, number> | undefined {
    return this.#attnums.get(oid);
  }

  /** Handles one captured DDL command at `pos`. */
  async handle(event: DdlEvent, pos: TablePosition): Promise<void> {
    const host = this.#host;
    const target = eventTable(event);
    if (!target) return;
    if (createsTable(event)) {
      await host.onCreateTable?.(target.schema, target.table);
      return;
    }
    const oid = event.objid;
    if (oid === null) return;
    const life = host.findLife(oid);
    if (!life) return; // not a table we capture
    const knownMaxAttnum = this.#maxAttnum(oid);
    if (event.attnums) this.#attnums.set(oid, event.attnums);
    if (reachesBoundary(life, pos)) await host.handover.reachBoundary(life);
    const action = rowAction(life, pos);
    if (action === "skip") return;
    const before = host.name(oid);
    const tableDir = tableDirName(target.schema, target.table);
    const renamed = before !== undefined &&
      (before.schema !== target.schema || before.table !== target.table);
    await host.close([oid]);
    host.setName(oid, { schema: target.schema, table: target.table, tableDir });
    const dropped = event.commandTag === "DROP TABLE";
    const batchTs = host.nextBatchTs(tableDir);
    const dir = join(host.dataDir, tableDir, batchTs);
    let schema = null;
    if (!dropped) {
      // The catalog may already show later DDL: prefer what the trigger captured.
      schema = schemaFromEvent(event, target, pos.lsn) ?? await host.describeOid(oid, pos.lsn);
      if (schema && renamed) schema.previousName = `${before!.schema}.${before!.table}`;
    }
    const folder = await writeDdlFolder(dir, event.commandTag, event.command, pos.lsn, schema);
    const file: FileRecord = {
      schema: target.schema,
      table: target.table,
      tableDir,
      relationOid: oid,
      batchTs,
      path: `${tableDir}/${batchTs}/${DDL_FILE}`,
      fileType: "ddl",
      startLsn: pos.lsn,
      endLsn: pos.lsn,
      startSeq: pos.seq,
      endSeq: pos.seq,
      rowCount: 1,
      byteSize: folder.byteSize,
      sha256: folder.sha256,
      hasDdl: true,
    };
    const reloads: ReloadInsert[] = [];
    const reason = this.#reloadReason(event, oid, target, renamed, knownMaxAttnum);
    if (reason !== null && ddlNeedsExport(life, pos)) {
      if (life.gate?.boundary != null) {
        // The export under way predates the change: start again after it.
        host.abandonExport(oid);
        await host.handover.failed(oid, false);
      }
      reloads.push({ oid, schema: target.schema, table: target.table, reason, hold: pos });
    }
    if (dropped) life.phase = "dropped";
    const table = `${target.schema}.${target.table}`;
    if (action === "hold") {
      host.handover.held.add(oid, {
        file,
        first: pos,
        last: pos,
        safeBefore: host.lastCommitEnd(),
        dir,
        name: DDL_FILE,
      });
      if (reloads.length > 0) await host.registry.commitFlush([], [], host.checkpoint(), reloads);
    } else {
      const checkpoint = host.checkpoint();
      await host.registry.commitFlush(
        [file],
        [{
          oid,
          schema: target.schema,
          table: target.table,
          tableDir,
          last: pos,
          lastBatchTs: batchTs,
          mode: dropped ? "dropped" : undefined,
        }],
        checkpoint,
        reloads,
      );
      await folder.publish();
      noteRegistered(life, pos);
      host.registered(checkpoint, []);
      host.metrics?.fileRegistered(table, "ddl", folder.byteSize, 0);
    }
    for (const r of reloads) openGate(life, r.hold, r.reason);
    if (dropped) host.metrics?.setTableMode(table, "dropped");
    host.logger.info(action === "hold" ? "ddl held for an export" : "ddl registered", {
      table,
      command: event.commandTag,
      path: file.path,
      ...(reason !== null ? { reload: reason } : {}),
    });
  }

  /** Why a DDL needs a new export of its table, or null. */
  #reloadReason(
    event: DdlEvent,
    oid: number,
    target: { schema: string; table: string },
    renamed: boolean,
    knownMaxAttnum: number | undefined,
  ): string | null {
    if (this.#host.reloadAfterDdl === "never" || event.commandTag === "DROP TABLE") return null;
    if (changesExistingRows(event, knownMaxAttnum)) return "ddl";
    if (renamed) {
      // A rename onto a name that another relation had: its folders would
      // follow the other relation's, so it starts over with an export.
      for (const other of this.#host.nameOwners(target.schema, target.table) ?? []) {
        if (other !== oid) return "rename";
      }
    }
    return null;
  }

  /** The highest attnum known for a relation before the current DDL, if any. */
  #maxAttnum(oid: number): number | undefined {
    let max: number | undefined;
    for (const a of this.#attnums.get(oid)?.values() ?? []) max = Math.max(max ?? 0, a);
    for (const c of this.#host.openBatch(oid)?.schema?.columns ?? []) {
      if (c.attnum != null) max = Math.max(max ?? 0, c.attnum);
    }
    return max;
  }
}
