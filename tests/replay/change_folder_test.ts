import assert from "node:assert/strict";
import { ChangeFolder } from "../../src/replay/change_folder.ts";
import { type ChangeLine, ChangeLineParser, type CsvField } from "../../src/replay/csv_reader.ts";
import { CsvRowEncoder } from "../../src/write/csv_row_encoder.ts";
import type { TableShape } from "../../src/replay/folder_schema.ts";
import { TableReplay } from "../../src/replay/table_replay.ts";

const KEYED: TableShape = {
  keyed: true,
  primaryKey: ["id"],
  columns: [
    { name: "id", type: "integer", attnum: 1, isKey: true },
    { name: "big", type: "text", attnum: 2, isKey: false },
    { name: "n", type: "integer", attnum: 3, isKey: false },
  ],
};
const MULTISET: TableShape = {
  keyed: false,
  primaryKey: [],
  columns: [
    { name: "a", type: "integer", attnum: 1, isKey: true },
    { name: "b", type: "text", attnum: 2, isKey: true },
  ],
};

let seq = 0;
function change(op: string, values: CsvField[], opts: { unchanged?: string[]; old?: object } = {}) {
  return [
    op,
    "0/10",
    String(seq++),
    "2026-01-01T00:00:00.000000Z",
    "1",
    opts.unchanged ? JSON.stringify(opts.unchanged) : null,
    opts.old ? JSON.stringify(opts.old) : null,
    ...values,
  ];
}

/** A change as the replay reads it from a file: metadata, then the values' CSV bytes. */
function line(row: CsvField[]): ChangeLine {
  const csv = new CsvRowEncoder();
  csv.fieldText("header");
  csv.endRow();
  for (const v of row) csv.fieldText(v);
  csv.endRow();
  const p = new ChangeLineParser(7);
  const lines = [...p.push(csv.takeChunk()), ...p.end()];
  assert.equal(lines.length, 1);
  return lines[0];
}

/**
 * Applies `changes` one run at a time of `run` changes to a table holding
 * `base`; `lines` folds them as read from a file ({@linkcode ChangeFolder.addLine}).
 */
async function replay(
  shape: TableShape,
  base: CsvField[][],
  changes: CsvField[][],
  run: number,
  lines = false,
) {
  const t = new TableReplay();
  await t.reset(shape);
  const f = new ChangeFolder(shape);
  await t.apply({
    truncate: false,
    deleteKeys: [],
    removals: [],
    rows: base.map((values) => ({ values, replace: false, base: null })),
    changes: 0,
  });
  for (const c of changes) {
    if (lines) f.addLine(line(c));
    else f.add(c);
    if (f.size >= run) await t.apply(f.take());
  }
  await t.apply(f.take());
  return t.sortedRows();
}

Deno.test("ChangeFolder() folds key changes and unchanged TOAST like row-by-row replay", async () => {
  const base = [["1", "BIG1", "0"], ["2", "BIG2", "0"]];
  const changes = [
    change("U", ["1", null, "1"], { unchanged: ["big"] }),
    change("U", ["10", null, "2"], { unchanged: ["big"], old: { id: "1" } }),
    change("U", ["11", null, "3"], { unchanged: ["big"], old: { id: "10" } }),
    change("I", ["1", "NEW", "9"]),
    change("U", ["2", "CHANGED", "1"]),
    change("U", ["2", null, "2"], { unchanged: ["big"] }),
    change("I", ["3", "", null]),
    change("D", ["3", null, null]),
    change("U", ["20", null, "5"], { unchanged: ["big"], old: { id: "99" } }),
  ];
  const expected = [
    '["1","NEW","9"]',
    '["11","BIG1","3"]',
    '["2","CHANGED","2"]',
    '["20",null,"5"]',
  ];
  // Any run size (1 = row by row) gives the same table, from arrays or from file lines.
  for (const run of [1, 2, 3, 100]) {
    assert.deepEqual(await replay(KEYED, base, changes, run), expected, `run ${run}`);
    assert.deepEqual(await replay(KEYED, base, changes, run, true), expected, `lines, run ${run}`);
  }
});

Deno.test("ChangeFolder() applies a keyless FULL table as a multiset, and TRUNCATE", async () => {
  const base = [["1", "x"], ["1", "x"], ["1", null], ["2", ""]];
  const changes = [
    change("D", ["1", "x"]),
    change("U", ["1", "y"], { old: { a: "1", b: null } }),
    change("I", ["2", ""]),
    change("D", ["2", ""]),
    change("I", ["3", "z"]),
    change("I", ["3", "z"]),
    change("D", ["3", "z"]),
  ];
  const expected = ['["1","x"]', '["1","y"]', '["2",""]', '["3","z"]'];
  for (const run of [1, 2, 4, 100]) {
    assert.deepEqual(await replay(MULTISET, base, changes, run), expected, `run ${run}`);
    assert.deepEqual(await replay(MULTISET, base, changes, run, true), expected, `lines ${run}`);
  }
  const truncated = [change("I", ["5", "a"]), change("T", [null, null]), change("I", ["6", "b"])];
  for (const run of [1, 100]) {
    assert.deepEqual(await replay(MULTISET, base, truncated, run), ['["6","b"]']);
  }
});

Deno.test("ChangeFolder.addLine() passes keyed rows on as their CSV text, with their key", () => {
  const shape: TableShape = {
    keyed: true,
    primaryKey: ["b", "a"],
    columns: [
      { name: "v", type: "text", attnum: 1, isKey: false },
      { name: "a", type: "text", attnum: 2, isKey: true },
      { name: "b", type: "integer", attnum: 3, isKey: true },
    ],
  };
  const f = new ChangeFolder(shape);
  f.addLine(line(change("I", ['x,"y"', "k,1", "7"])));
  f.addLine(line(change("I", [null, "", "8"])));
  f.addLine(line(change("U", ["z", "k,1", "7"])));
  f.addLine(line(change("D", [null, "", "8"])));
  const d = f.take();
  assert.deepEqual(d.deleteKeys, [["", "8"]]);
  assert.equal(d.rows.length, 1);
  const row = d.rows[0];
  assert.deepEqual(row.key, ["k,1", "7"]);
  assert.equal(new TextDecoder().decode(row.csv), 'z,"k,1",7');
  assert.deepEqual(row.values, ["z", "k,1", "7"]);
  assert.equal(row.replace, true);
  // Integer text that is not canonical stays apart from the number.
  const g = new ChangeFolder({ ...shape, columns: [{ ...shape.columns[2], isKey: true }] });
  g.addLine(line(["I", "0/1", "0", "t", "1", null, null, "7"]));
  g.addLine(line(["I", "0/1", "1", "t", "1", null, null, "07"]));
  g.addLine(line(["D", "0/1", "2", "t", "1", null, null, "7"]));
  const e = g.take();
  assert.deepEqual(e.deleteKeys, [["7"]]);
  assert.deepEqual(e.rows.map((r) => r.values), [["07"]]);
});
