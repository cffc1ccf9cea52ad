/**
 * `stream` into `--data-dir s3://bucket/prefix` (s3rver in its own process,
 * behind the fault proxy where a test needs faults): exactly-once files in
 * the bucket, through faults, `kill -9` and recovery.
 */

import assert from "node:assert/strict";
import { type PgMajor, testMajors } from "../../scripts/embedded_postgres.ts";
import { waitFor } from "../harness/cli.ts";
import { type StreamEnv, streamEnv } from "../harness/stream_env.ts";

/** Registered paths of the slot, and the bucket's keys under the data prefix. */
async function bucketMatchesRegistry(w: StreamEnv): Promise<void> {
  const registered = (await w.registry.query("SELECT path FROM cdc_registry.file_log")).rows
    .map((r) => r.path as string);
  const keys = (await w.s3!.keys("cdc", "data/")).map((k) => k.slice("data/".length));
  const dataKeys = keys.filter((k) => !k.endsWith("/schema.yml"));
  assert.deepEqual(dataKeys.sort(), registered.sort(), "bucket objects = registered files");
  // Every folder with a registered file has its schema.yml (dropped tables' DDL folders excepted).
  const schemas = new Set(keys.filter((k) => k.endsWith("/schema.yml")));
  for (const p of registered.filter((p) => !p.endsWith("ddl.sql"))) {
    assert(schemas.has(p.replace(/[^/]+$/, "schema.yml")), `schema.yml of ${p}`);
  }
  for (const s of schemas) {
    const dir = s.replace(/\/schema\.yml$/, "");
    assert(
      registered.some((p) => p.startsWith(dir + "/")),
      `schema.yml ${s} has a registered file`,
    );
  }
  const intents = await w.registry.query("SELECT path FROM cdc_registry.upload_intent");
  assert.equal(intents.rowCount, 0, "no upload intent left");
  assert.deepEqual(await w.s3!.incompleteUploads("cdc"), [], "no incomplete multipart upload");
}

for (const major of testMajors()) {
  Deno.test(`stream into s3:// registers each file once in the bucket, replay equals the source (PG ${major})`, async () => {
    await using w = await streamEnv(major as PgMajor, {}, { s3: true });
    await w.db.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
    await w.db.query("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 500) g");
    await w.init();
    const p = w.stream();
    await w.caughtUp().catch((e) => {
      throw new Error(`${e.message}\n${p.stderr}`);
    });
    for (let i = 0; i < 5; i++) {
      await w.db.query(
        `INSERT INTO t SELECT g, 'x' FROM generate_series(${1000 + i * 100}, ${1099 + i * 100}) g`,
      );
      await w.db.query(`UPDATE t SET v = 'u${i}' WHERE id % 7 = ${i}`);
      await w.db.query(`DELETE FROM t WHERE id % 11 = ${i}`);
    }
    await w.caughtUp();
    assert.equal(await p.stop(), 0, p.stderr);
    await bucketMatchesRegistry(w);
    await w.assertReplayEquals("public", "t");
    assert.equal(
      (await w.registry.query("SELECT url FROM cdc_registry.storage_location")).rows[0].url,
      "s3://cdc/data",
    );
    // The spool keeps nothing that is in the bucket.
    const left: string[] = [];
    for await (const e of Deno.readDir(w.spoolDir!)) {
      if (!e.name.startsWith(".")) {
        for await (const b of Deno.readDir(`${w.spoolDir}/${e.name}`)) {
          left.push(`${e.name}/${b.name}`);
        }
      }
    }
    assert(left.length <= 1, `spool holds ${left.join(", ")}`);
  });
}
