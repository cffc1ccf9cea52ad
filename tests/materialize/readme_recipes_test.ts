/**
 * Runs every hand recipe of README's "Consuming the files" (DuckDB from
 * npm, pandas and pyarrow when a Python with them is installed) against a
 * table like the demo's `public.orders`, and compares each result with the
 * source. The first quoted value comes after DuckDB's 20,480-row sniffing
 * sample, and notes hold NULL, '' and awkward text.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { DuckDBInstance } from "@duckdb/node-api";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { startStream, stopCleanly } from "../harness/export_world.ts";
import { assertSameRows, tableRows } from "../harness/materialize_world.ts";
import { streamEnv } from "../harness/stream_env.ts";

const README = fileURLToPath(new URL("../../README.md", import.meta.url));

/** The recipes: `<!-- recipe: NAME -->` followed by a fenced block. */
function recipes(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of text.matchAll(/<!-- recipe: (\w+) -->\s*```\w+\n([\s\S]*?)```/g)) {
    out.set(m[1], m[2]);
  }
  return out;
}

/** A Python that imports `module`, or null. */
function pythonWith(module: string): string | null {
  for (const py of ["python3", "/usr/bin/python3"]) {
    try {
      const r = new Deno.Command(py, { args: ["-c", `import ${module}`], stderr: "null" })
        .outputSync();
      if (r.code === 0) return py;
    } catch {
      // not installed
    }
  }
  return null;
}

const PANDAS = pythonWith("pandas");
const PYARROW = pythonWith("pyarrow");

async function runPython(py: string, code: string): Promise<(string | null)[][]> {
  const out = await new Deno.Command(py, { args: ["-c", code], stdout: "piped", stderr: "piped" })
    .output();
  const dec = new TextDecoder();
  assert.equal(out.code, 0, dec.decode(out.stderr));
  return JSON.parse(dec.decode(out.stdout));
}

const sorted = (rows: (string | null)[][]) => rows.map((r) => JSON.stringify(r)).sort();

for (const version of testMajors()) {
  Deno.test(`README recipes load a demo-like table exactly (PG ${version})`, async (t) => {
    const all = recipes(await Deno.readTextFile(README));
    assert.deepEqual([...all.keys()], ["duckdb", "pandas", "pyarrow"]);
    await using w = await streamEnv(version);
    await w.db.query(`
      CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped');
      CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint,
        status order_status NOT NULL DEFAULT 'new', total numeric(12,2), note text);
      INSERT INTO orders (customer_id, total, note)
        SELECT g % 100, g / 7.0, CASE WHEN g % 5 = 0 THEN 'n' || g END
        FROM generate_series(1, 30000) g;
      UPDATE orders SET note = 'late, with a comma' WHERE id = 25000;
      UPDATE orders SET note = '' WHERE id = 25001;`);
    await w.init();
    const stream = await startStream(w);
    await w.caughtUp();
    await w.db.query(`
      UPDATE orders SET status = 'paid', note = 'say "hi"' || chr(10) || 'twice' WHERE id % 7 = 0;
      UPDATE orders SET note = '' WHERE id % 11 = 0;
      UPDATE orders SET note = NULL WHERE id % 13 = 0;
      DELETE FROM orders WHERE id % 17 = 0;
      INSERT INTO orders (customer_id, total, note) VALUES (1, 1.5, ''), (2, NULL, NULL), (3, 0, 'NA');
      UPDATE orders SET status = 'shipped' WHERE id % 7 = 0 AND id % 2 = 0;`);
    await w.caughtUp();
    await stopCleanly(stream);
    const source = await tableRows(w.db, "public", "orders");
    const full = (await w.db.query(
      `SELECT path, start_lsn::text AS c FROM cdc_registry.file_log WHERE table_name = 'orders'
       AND file_type = 'full_reload' ORDER BY start_lsn DESC LIMIT 1`,
    )).rows[0];
    const prepare = (code: string) =>
      code.replaceAll(
        "data/public.orders/20261124T170000.000Z/full_reload.csv.gz",
        join(w.dataDir, full.path),
      )
        .replaceAll("0/181A5E0", full.c)
        .replaceAll("data/public.orders/*", join(w.dataDir, "public.orders/*"));

    await t.step("duckdb", async () => {
      const inst = await DuckDBInstance.create(":memory:");
      try {
        const c = await inst.connect();
        await c.run(prepare(all.get("duckdb")!));
        const rows = (await c.runAndReadAll("SELECT * FROM orders")).getRowsJS() as (
          | string
          | null
        )[][];
        c.closeSync();
        assertSameRows(sorted(rows), source, "DuckDB recipe");
      } finally {
        inst.closeSync();
      }
    });

    await t.step({
      name: `pandas${
        PANDAS ? "" : " (skipped: no Python with pandas; apt-get install python3-pandas)"
      }`,
      ignore: !PANDAS,
      fn: async () => {
        const rows = await runPython(
          PANDAS!,
          prepare(all.get("pandas")!) +
            "\nimport json, sys\njson.dump(orders.astype(object).values.tolist(), sys.stdout)\n",
        );
        // pandas cannot tell NULL from '': both come back as ''.
        const expected = source.map((j) =>
          JSON.stringify((JSON.parse(j) as (string | null)[]).map((v) => v ?? ""))
        ).sort();
        assertSameRows(sorted(rows), expected, "pandas recipe");
      },
    });

    await t.step({
      name: `pyarrow${
        PYARROW
          ? ""
          : " (skipped: no Python with pyarrow; it is not in Debian bookworm and pip could not install it)"
      }`,
      ignore: !PYARROW,
      fn: async () => {
        const rows = await runPython(
          PYARROW!,
          prepare(all.get("pyarrow")!) +
            "\nimport json, sys\njson.dump([list(r.values()) for r in orders.values()], sys.stdout)\n",
        );
        assertSameRows(sorted(rows), source, "pyarrow recipe");
      },
    });
  });
}
