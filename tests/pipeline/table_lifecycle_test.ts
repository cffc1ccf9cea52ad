import assert from "node:assert/strict";
import { type Lsn, toLsn } from "../../src/lsn.ts";
import {
  awaitingSnapshot,
  ddlNeedsExport,
  exportAbandoned,
  exportPlaceable,
  exportRegistered,
  nameExportFolder,
  newLife,
  openGate,
  reachesBoundary,
  rowAction,
  setBoundary,
} from "../../src/pipeline/table_lifecycle.ts";

const L = (n: number): Lsn => toLsn(BigInt(n));
const at = (lsn: number, seq = 0) => ({ lsn: L(lsn), seq });
const streaming = (reloadLsn = 100) =>
  newLife(1, { mode: "streaming", reloadLsn: L(reloadLsn), last: at(150, 3) });

Deno.test("newLife() starts a table without an export as unexported, a dropped one as dropped", () => {
  assert.equal(newLife(7).phase, "unexported");
  assert.equal(newLife(7, { mode: "reloading", reloadLsn: null, last: null }).phase, "unexported");
  assert.equal(newLife(7, { mode: "dropped", reloadLsn: L(5), last: null }).phase, "dropped");
  assert.equal(streaming().phase, "streaming");
});

Deno.test("rowAction() skips what registered files or the newest export already hold", () => {
  const life = streaming();
  assert.equal(rowAction(life, at(90)), "skip"); // before the export
  assert.equal(rowAction(life, at(150, 3)), "skip"); // the last registered change
  assert.equal(rowAction(life, at(150, 4)), "write");
  assert.equal(rowAction(life, at(200)), "write");
});

Deno.test("rowAction() skips an unexported table's changes until its boundary, then holds them", () => {
  const life = newLife(2);
  assert.equal(rowAction(life, at(10)), "skip");
  // The snapshot is being made: C is unknown, everything is held.
  openGate(life, at(10), "initial");
  assert.equal(awaitingSnapshot(life), true);
  assert.equal(rowAction(life, at(20)), "hold");
  setBoundary(life, L(500));
  assert.equal(awaitingSnapshot(life), false);
  assert.equal(rowAction(life, at(499, 9)), "skip");
  assert.equal(rowAction(life, at(500)), "hold");
  exportRegistered(life, L(500), null);
  assert.equal(life.phase, "streaming");
  assert.equal(rowAction(life, at(499)), "skip");
  assert.equal(rowAction(life, at(501)), "write");
});

Deno.test("rowAction() keeps a reloaded table's changes before C and holds those from C on", () => {
  const life = streaming();
  setBoundary(life, L(1000));
  // The stream lags behind C: changes before C are history, not skipped.
  assert.equal(rowAction(life, at(600)), "write");
  assert.equal(rowAction(life, at(999, 7)), "write");
  assert.equal(rowAction(life, at(1000)), "hold");
  assert.equal(rowAction(life, at(2000)), "hold");
});

Deno.test("reachesBoundary() fires once, at the first change or DDL at or after C", () => {
  const life = streaming();
  setBoundary(life, L(1000));
  assert.equal(reachesBoundary(life, at(999)), false);
  assert.equal(reachesBoundary(life, at(1000)), true);
  assert.equal(exportPlaceable(life), false);
  nameExportFolder(life, "20261129T120000.000Z");
  assert.equal(reachesBoundary(life, at(1001)), false);
  assert.equal(exportPlaceable(life), true);
});

Deno.test("nameExportFolder() refuses a gate without a boundary", () => {
  const life = streaming();
  openGate(life, at(300, 2), "ddl");
  assert.throws(() => nameExportFolder(life, "20261129T120000.000Z"), RangeError);
});

Deno.test("openGate() after value-changing DDL holds every later change until the export", () => {
  const life = streaming();
  openGate(life, at(300, 2), "ddl");
  assert.equal(rowAction(life, at(300, 2)), "write"); // the DDL itself
  assert.equal(rowAction(life, at(300, 3)), "hold");
  setBoundary(life, L(400));
  assert.equal(rowAction(life, at(350)), "hold"); // between the DDL and C: held, not skipped
  assert.equal(life.gate!.reason, "ddl");
  // A later request keeps the earlier hold position.
  openGate(life, at(390), "requested");
  assert.deepEqual(life.gate!.holdAfter, at(300, 2));
  assert.equal(life.gate!.reason, "ddl");
});

Deno.test("exportAbandoned() keeps the gate and waits for the next boundary", () => {
  const life = streaming();
  setBoundary(life, L(1000));
  nameExportFolder(life, "20261129T120000.000Z");
  exportAbandoned(life);
  assert.equal(rowAction(life, at(1500)), "hold");
  assert.equal(exportPlaceable(life), false);
  setBoundary(life, L(2000));
  assert.equal(reachesBoundary(life, at(2000)), true);
});

Deno.test("exportRegistered() releases the gate and moves the reload LSN and position", () => {
  const life = streaming();
  setBoundary(life, L(1000));
  exportRegistered(life, L(1000), at(1200, 1));
  assert.equal(life.gate, null);
  assert.equal(life.reloadLsn, L(1000));
  assert.deepEqual(life.last, at(1200, 1));
  assert.equal(rowAction(life, at(1200, 1)), "skip");
  assert.equal(rowAction(life, at(1200, 2)), "write");
});

Deno.test("ddlNeedsExport() skips a DDL that the export under way already contains", () => {
  const life = streaming();
  assert.equal(ddlNeedsExport(life, at(300)), true);
  setBoundary(life, L(1000));
  assert.equal(ddlNeedsExport(life, at(900)), false); // the export at C holds its effect
  assert.equal(ddlNeedsExport(life, at(1000)), true); // after C: abandon and export again
  assert.equal(ddlNeedsExport(newLife(3), at(5)), false); // its first export comes later
  const dropped = newLife(4, { mode: "dropped", reloadLsn: L(1), last: null });
  assert.equal(ddlNeedsExport(dropped, at(5)), false);
});
