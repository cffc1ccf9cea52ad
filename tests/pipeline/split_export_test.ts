import assert from "node:assert/strict";
import { gunzipSync } from "node:zlib";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { streamEnv } from "../harness/stream_env.ts";

for (const version of testMajors()) {
  Deno.test(`stream splits a large table's export into block ranges joined as one gzip file (PG ${version})`, async () => {
    await using w = await streamEnv(version);
    await w.db.query(`CREATE TABLE big (id int PRIMARY KEY, v text)`);
    await w.db.query(
      `INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 300000) g`,
    );
    // Holes in the heap, so ranges hold different row counts.
    await w.db.query(`DELETE FROM big WHERE id % 3 = 0`);
    await w.init();
    const p = w.stream({ CDC_EXPORT_WORKERS: "3", CDC_EXPORT_SPLIT_BYTES: "4MiB" });
    let n = 0;
    let stop = false;
    const work = (async () => {
      while (!stop) {
        n++;
        await w.db.query(
          `BEGIN; INSERT INTO big VALUES (${400000 + n}, 'new');
           UPDATE big SET v = 'u${n}' WHERE id = ${n * 7 + 1};
           DELETE FROM big WHERE id = ${n * 11 + 1}; COMMIT`,
        );
      }
    })();
    await w.caughtUp();
    stop = true;
    await work;
    await w.caughtUp();
    assert.equal(await p.stop(), 0);

    const registered = p.stderr.split("\n").filter((l) => l.includes('"export registered"'))
      .map((l) => JSON.parse(l));
    assert.equal(registered.length, 1);
    assert.ok(registered[0].parts >= 2, `expected a split export, got ${registered[0].parts} part`);
    const file = (await w.db.query(
      `SELECT path, row_count FROM cdc_registry.file_log WHERE file_type = 'full_reload'`,
    )).rows[0];
    const text = new TextDecoder().decode(
      gunzipSync(await Deno.readFile(`${w.dataDir}/${file.path}`)),
    );
    const lines = text.split("\n").filter((l) => l.length > 0);
    assert.equal(lines.filter((l) => l === "id,v").length, 1, "one header, in the first part");
    assert.equal(lines[0], "id,v");
    assert.equal(lines.length - 1, Number(file.row_count));
    const dir = `${w.dataDir}/${file.path.replace(/\/[^/]+$/, "")}`;
    const names = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
    assert.deepEqual(names, ["full_reload.csv.gz", "schema.yml"], "no part files left");
    await w.assertReplayEquals("public", "big");
  });
}
