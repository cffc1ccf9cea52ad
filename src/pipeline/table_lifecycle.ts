/**
 * The life of one captured relation (by OID) in the stream: what happens to
 * each of its changes, and when its exports may be registered. Pure state,
 * no I/O: the stream pipeline asks it and carries out what it says.
 *
 * Phases:
 * - `unexported`: published, no full_reload yet (a fresh slot, a table
 *   that joined the publication, a name that now means another relation).
 *   Its changes are not history yet: they are in the coming export.
 * - `streaming`: it has a history; every change goes into streaming files.
 * - `dropped`: gone; nothing more arrives.
 *
 * Independently, a table may have a *gate*: from a position on (an export's
 * boundary C, or a DDL that changed existing rows) its changes are written
 * but held back, unregistered, until the export that the gate waits for is
 * registered. A gated table's export folder is named when the stream
 * reaches C, so folder names follow LSN order even when the stream lags
 * far behind the export's snapshot.
 *
 * @module
 */

import { compareLsn, type Lsn } from "../lsn.ts";
import type { TablePosition } from "../registry/registry.ts";

/** Where a table is in its life. */
export type TablePhase = "unexported" | "streaming" | "dropped";

/** What to do with one change of a table. */
export type RowAction = "skip" | "write" | "hold";

/** An export the table waits for, and what it holds back meanwhile. */
export interface ExportGate {
  /** Changes after this position are held until the export is registered. */
  holdAfter: TablePosition;
  /** The export's consistent point C, once its snapshot exists. */
  boundary: Lsn | null;
  /** The export folder's name, taken when the stream reached C. */
  batchTs: string | null;
  /** Why the export is needed (`initial`, `requested`, `ddl`, `rename`, ...). */
  reason: string;
}

/** One relation's state in the stream. */
export interface TableLife {
  oid: number;
  phase: TablePhase;
  /** Position of the newest registered change. */
  last: TablePosition | null;
  /** LSN of the newest registered full_reload; earlier changes are in it or in files. */
  reloadLsn: Lsn | null;
  gate: ExportGate | null;
}

/** Compares two change positions. */
export function comparePosition(a: TablePosition, b: TablePosition): number {
  return compareLsn(a.lsn, b.lsn) || a.seq - b.seq;
}

/** A new relation's life from what the registry holds (or nothing). */
export function newLife(
  oid: number,
  state?: { last: TablePosition | null; reloadLsn: Lsn | null; mode: string },
): TableLife {
  if (!state) return { oid, phase: "unexported", last: null, reloadLsn: null, gate: null };
  const phase: TablePhase = state.mode === "dropped"
    ? "dropped"
    : state.reloadLsn === null
    ? "unexported"
    : "streaming";
  return { oid, phase, last: state.last, reloadLsn: state.reloadLsn, gate: null };
}

/**
 * What to do with a change at `pos`:
 * - `skip` when registered files or an export already hold it, or when it
 *   precedes the table's history (an unexported table's changes before C);
 * - `hold` when a gate holds it back until an export is registered;
 * - `write` otherwise.
 */
export function rowAction(life: TableLife, pos: TablePosition): RowAction {
  if (life.last !== null && comparePosition(pos, life.last) <= 0) return "skip";
  if (life.reloadLsn !== null && pos.lsn < life.reloadLsn) return "skip";
  if (life.phase === "dropped") return "skip";
  const gate = life.gate;
  if (life.phase === "unexported") {
    // History starts at the first export's C: what comes before is in it.
    // While the snapshot is being made C is unknown, so changes are held
    // and those before C are dropped once it is known.
    if (gate === null || (gate.boundary !== null && pos.lsn < gate.boundary)) return "skip";
    return "hold";
  }
  if (gate !== null && comparePosition(pos, gate.holdAfter) > 0) return "hold";
  return "write";
}

/**
 * Whether the stream has just reached the gate's boundary with a change or
 * DDL at `pos`: the table's open batch (changes before C) must be closed and
 * the export folder named before `pos` is handled.
 */
export function reachesBoundary(life: TableLife, pos: TablePosition): boolean {
  const g = life.gate;
  return g !== null && g.boundary !== null && g.batchTs === null && pos.lsn >= g.boundary;
}

/**
 * Opens (or keeps) the gate for an export: changes after `holdAfter` are
 * held. An existing gate keeps its earlier position: what it holds stays
 * held until the new export is registered.
 */
export function openGate(life: TableLife, holdAfter: TablePosition, reason: string): void {
  if (life.gate === null) {
    life.gate = { holdAfter, boundary: null, batchTs: null, reason };
    return;
  }
  if (comparePosition(holdAfter, life.gate.holdAfter) < 0) life.gate.holdAfter = holdAfter;
  if (reason !== "requested" && reason !== "initial") life.gate.reason = reason;
}

/** Whether the table waits for its export's snapshot (C not known yet). */
export function awaitingSnapshot(life: TableLife): boolean {
  return life.gate !== null && life.gate.boundary === null;
}

/** The export's snapshot exists: C is known. */
export function setBoundary(life: TableLife, boundary: Lsn): void {
  if (life.gate === null) {
    life.gate = {
      holdAfter: { lsn: boundary, seq: -1 },
      boundary,
      batchTs: null,
      reason: life.phase === "unexported" ? "initial" : "requested",
    };
    return;
  }
  life.gate.boundary = boundary;
  life.gate.batchTs = null;
}

/** The stream reached C; the export folder gets its name now. */
export function nameExportFolder(life: TableLife, batchTs: string): void {
  if (life.gate === null || life.gate.boundary === null) {
    throw new RangeError(`Cannot name the export folder of relation ${life.oid}: no boundary`);
  }
  life.gate.batchTs = batchTs;
}

/** Whether a sealed export can be registered now (the stream has reached C). */
export function exportPlaceable(life: TableLife): boolean {
  return life.gate !== null && life.gate.boundary !== null && life.gate.batchTs !== null;
}

/** The export is registered at C: the table streams from there, nothing is held. */
export function exportRegistered(life: TableLife, boundary: Lsn, last: TablePosition | null): void {
  life.phase = life.phase === "dropped" ? "dropped" : "streaming";
  life.reloadLsn = boundary;
  if (last !== null && (life.last === null || comparePosition(last, life.last) > 0)) {
    life.last = last;
  }
  life.gate = null;
}

/**
 * The export failed or was abandoned: the gate stays (what it holds stays
 * held) and waits for the next attempt's boundary.
 */
export function exportAbandoned(life: TableLife): void {
  if (life.gate !== null) {
    life.gate.boundary = null;
    life.gate.batchTs = null;
  }
}

/** Batches of the table were registered up to `last`. */
export function noteRegistered(life: TableLife, last: TablePosition): void {
  if (life.last === null || comparePosition(last, life.last) > 0) life.last = last;
}

/**
 * Whether a value-changing DDL at `pos` needs a new export: not when an
 * export whose boundary is after the DDL is under way (it holds the new
 * values), nor for a table whose first export is still to start. An export
 * under way with its boundary at or before the DDL must be abandoned.
 */
export function ddlNeedsExport(life: TableLife, pos: TablePosition): boolean {
  if (life.phase === "dropped") return false;
  const g = life.gate;
  if (g !== null && g.boundary !== null) return pos.lsn >= g.boundary;
  // An unexported table's coming export starts after the DDL anyway.
  return life.phase === "streaming";
}
