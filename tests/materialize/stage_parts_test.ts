import assert from "node:assert/strict";
import { keyPart, StageParts } from "../../src/materialize/stage_parts.ts";
import { encodeStage, stageColumns } from "../../src/materialize/delta_sql.ts";
import type { Delta } from "../../src/replay/change_folder.ts";
import { type CsvField, parseCsv } from "../../src/replay/csv_reader.ts";
import type { TableShape } from "../../src/replay/folder_schema.ts";

const SHAPE: TableShape = {
  keyed: true,
  primaryKey: ["k2", "k1"],
  columns: [
    { name: "k1", type: "integer", attnum: 1, isKey: true },
    { name: "v", type: "text", attnum: 2, isKey: false },
    { name: "k2", type: "text", attnum: 3, isKey: true },
  ],
};

const encoder = new TextEncoder();

function delta(keys: CsvField[][], rows: CsvField[][], asText = false): Delta {
  return {
    truncate: false,
    deleteKeys: keys,
    removals: [],
    rows: rows.map((values) => ({
      values,
      replace: true,
      base: null,
      key: [values[0], values[2]],
      // A row passed on as the file's CSV bytes, as ChangeFolder.addLine() makes them.
      ...(asText ? { csv: encoder.encode(values.map((v) => v ?? "").join(",")) } : {}),
    })),
    changes: keys.length + rows.length,
  };
}

Deno.test("StageParts() stages rows by key part, numbered across deltas, as encodeStage() encodes them", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const parts = new StageParts(`${dir}/stage.csv`, SHAPE);
    const keys = Array.from({ length: 40 }, (_v, i) => [String(i), `k ${i}`]);
    const first = delta(keys.slice(0, 10), keys.slice(10, 30).map(([a, b]) => [a, "x", b]));
    const second = delta(keys.slice(30), keys.slice(0, 5).map(([a, b]) => [a, "y", b]), true);
    parts.add(first);
    parts.add(second);
    assert.equal(parts.rows, 45);
    const staged = parts.close();
    assert.ok(staged.length > 1, "the keys spread over several parts");
    const byN = new Map<number, CsvField[]>();
    for (const p of staged) {
      const rows = parseCsv(await Deno.readTextFile(p.path));
      assert.equal(rows.length, p.rows, `part ${p.part}`);
      for (const row of rows) {
        assert.equal(row.length, stageColumns(SHAPE).length);
        // Every row of a key is in the part of its key.
        assert.equal(keyPart([row[4 + 2 + 0], row[4 + 2 + 2]]), p.part);
        byN.set(Number(row[2]), row);
      }
    }
    // The same rows, numbered the same, as one encodeStage() of each delta gives.
    const want: CsvField[][] = [];
    let next = 0;
    for (const d of [first, second]) {
      const chunks: Uint8Array[] = [];
      next = await encodeStage(d, SHAPE, (c) => {
        chunks.push(c);
      }, next);
      for (const c of chunks) want.push(...parseCsv(new TextDecoder().decode(c)));
    }
    assert.equal(next, 45);
    assert.deepEqual([...byN.keys()].sort((a, b) => a - b), want.map((_r, i) => i));
    for (const row of want) assert.deepEqual(byN.get(Number(row[2])), row);
    assert.deepEqual(byN.get(0)?.slice(0, 2), ["K", null]);
    assert.deepEqual(byN.get(44)?.slice(0, 2), ["U", null]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("StageParts.abort() closes its files without writing what is buffered", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const parts = new StageParts(`${dir}/stage.csv`, SHAPE);
    parts.add(delta([["1", "a"], ["2", "b"]], []));
    parts.abort();
    for await (const e of Deno.readDir(dir)) {
      assert.equal((await Deno.stat(`${dir}/${e.name}`)).size, 0, e.name);
    }
    // Nothing is left open: the directory can go at once.
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
