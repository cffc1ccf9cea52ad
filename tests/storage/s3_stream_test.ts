/**
 * `stream` into `--data-dir s3://bucket/prefix` (s3rver in its own process,
 * behind the fault proxy where a test needs faults): exactly-once files in
 * the bucket, through faults, `kill -9` and recovery.
 */

import assert from "node:assert/strict";
import { type PgMajor, testMajors } from "../../scripts/embedded_postgres.ts";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { DeleteObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import { runCli, waitFor } from "../harness/cli.ts";
import { liveRows } from "../harness/replay_check.ts";
import { type StreamEnv, streamEnv } from "../harness/stream_env.ts";
import { FaultProxy } from "../harness/fault_proxy.ts";
import { S3_TEST_CREDENTIALS } from "../harness/s3_server.ts";
import { join } from "node:path";
import { Logger } from "../../src/log.ts";
import type { Lsn } from "../../src/lsn.ts";
import { Registry } from "../../src/registry/registry.ts";
import { S3Store } from "../../src/storage/s3_store.ts";
import { SpoolUploader } from "../../src/storage/spool_uploader.ts";

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

/** Inserts `n` rows of about 100 bytes that gzip poorly (md5 text). */
async function fill(w: StreamEnv, table: string, from: number, n: number): Promise<void> {
  await w.db.query(
    `INSERT INTO ${table} SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text)
     FROM generate_series(${from}, ${from + n - 1}) g`,
  );
}

for (const major of testMajors()) {
  Deno.test(`stream into s3:// retries 5xx, dropped, stalled and cut-short requests (PG ${major})`, async () => {
    await using w = await streamEnv(major as PgMajor, {}, { s3: true });
    const proxy = FaultProxy.start(w.s3!.port);
    try {
      await w.db.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
      await w.db.query("CREATE TABLE big (id int PRIMARY KEY, v text)");
      await fill(w, "t", 1, 1000);
      // About 7 MB of gzip: two parts of 5 MiB.
      await fill(w, "big", 1, 150_000);
      await w.init();
      // Data keys only: the start-up probe of the bucket is not retried for long.
      const data = /^\/cdc\/data\/public\./;
      proxy.inject({
        method: "PUT",
        path: data,
        action: { kind: "status", status: 503 },
        times: 3,
      });
      proxy.inject({ method: "PUT", path: data, action: { kind: "drop" }, times: 2 });
      proxy.inject({
        method: "PUT",
        path: /partNumber=2/,
        action: { kind: "status", status: 500 },
      });
      proxy.inject({ method: "POST", path: /uploadId=/, action: { kind: "cut", bytes: 30 } });
      proxy.inject({ method: "PUT", path: data, action: { kind: "stall", ms: 5000 }, skip: 4 });
      proxy.inject({
        method: "PUT",
        path: data,
        action: { kind: "cut", bytes: 10 },
        skip: 6,
        times: 2,
      });
      const p = w.stream({
        CDC_S3_ENDPOINT: proxy.endpoint,
        CDC_S3_PART_SIZE: "5MiB",
        CDC_S3_TIMEOUT: "2s",
      });
      await w.caughtUp().catch((e) => {
        throw new Error(`${e.message}\n${p.stderr}`);
      });
      for (let i = 0; i < 4; i++) {
        await fill(w, "t", 10_000 + i * 100, 100);
        await w.db.query(`UPDATE t SET v = 'u${i}' WHERE id % 5 = ${i}`);
      }
      await w.caughtUp();
      assert.equal(await p.stop(), 0, p.stderr);
      assert.deepEqual(proxy.fired, [3, 2, 1, 1, 1, 2], "every fault was injected");
      assert.match(p.stderr, /object storage request failed; retrying/);
      await bucketMatchesRegistry(w);
      await w.assertReplayEquals("public", "t");
      await w.assertReplayEquals("public", "big");
    } finally {
      proxy.stop();
    }
  });

  Deno.test(`stream into s3:// after kill -9 mid-upload deletes the unregistered object and aborts the multipart upload (PG ${major})`, async () => {
    await using w = await streamEnv(major as PgMajor, {}, { s3: true });
    const proxy = FaultProxy.start(w.s3!.port);
    try {
      await w.db.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
      await w.db.query("CREATE TABLE big (id int PRIMARY KEY, v text)");
      await fill(w, "t", 1, 100);
      await fill(w, "big", 1, 150_000);
      await w.init();
      const env = {
        CDC_S3_ENDPOINT: proxy.endpoint,
        CDC_S3_PART_SIZE: "5MiB",
        CDC_S3_TIMEOUT: "10m",
      };
      const count = async (sql: string) => (await w.registry.query(sql)).rows[0].n as number;
      // 1. The big export's first part is stored, its answer held: kill -9.
      proxy.inject({ method: "PUT", path: /partNumber=1&/, action: { kind: "hold", ms: 600_000 } });
      let p = w.stream(env);
      await waitFor("the part upload to hang", () => proxy.fired[0] === 1, 120_000)
        .catch((e) => {
          throw new Error(`${e.message}\n${p.stderr}`);
        });
      // Exports ready together register together: t's full_reload may have an intent too.
      const intent = (await w.registry.query(
        "SELECT path, upload_id FROM cdc_registry.upload_intent WHERE path LIKE 'public.big/%full_reload.csv.gz'",
      )).rows;
      assert.equal(intent.length, 1);
      assert(intent[0].upload_id, "the multipart upload id is recorded before its parts");
      assert.deepEqual(await w.s3!.incompleteUploads("cdc"), [intent[0].upload_id]);
      await p.stop("SIGKILL");
      // 2. A streaming file's PUT is stored, its answer held: kill -9.
      proxy.inject({
        method: "PUT",
        path: /streaming\.csv\.gz/,
        action: { kind: "hold", ms: 600_000 },
      });
      p = w.stream(env);
      // Both exports were unregistered at the kill (exports that finish together register
      // together), so both are redone from a fresh snapshot: rows written before it would go into
      // the new full_reload, not into a streaming file. Write them once the exports are registered.
      await waitFor(
        "the redone exports to be registered",
        async () =>
          await count(
            "SELECT count(*)::int AS n FROM cdc_registry.file_log WHERE file_type = 'full_reload'",
          ) === 2,
        120_000,
      ).catch((e) => {
        throw new Error(`${e.message}\n${p.stderr}`);
      });
      await fill(w, "t", 500, 50);
      await waitFor("the streaming upload to hang", () => proxy.fired[1] === 1, 120_000)
        .catch((e) => {
          throw new Error(`${e.message}\n${p.stderr}`);
        });
      const held = (await w.registry.query(
        "SELECT path FROM cdc_registry.upload_intent WHERE path LIKE '%streaming.csv.gz'",
      )).rows[0].path;
      await waitFor(
        "the held PUT to be stored",
        async () => (await w.s3!.keys("cdc", `data/${held}`)).length === 1,
      );
      await p.stop("SIGKILL");
      assert.equal(
        await count(`SELECT count(*)::int AS n FROM cdc_registry.file_log WHERE path = '${held}'`),
        0,
      );
      proxy.stop();
      // 3. Recovery: the unregistered objects go, the multipart upload is aborted.
      p = w.stream({ CDC_S3_PART_SIZE: "5MiB" });
      await w.caughtUp().catch((e) => {
        throw new Error(`${e.message}\n${p.stderr}`);
      });
      assert.match(p.stderr, /settled unregistered uploads/);
      await fill(w, "t", 1000, 50);
      await w.caughtUp();
      assert.equal(await p.stop(), 0, p.stderr);
      await bucketMatchesRegistry(w);
      await w.assertReplayEquals("public", "t");
      await w.assertReplayEquals("public", "big");
    } finally {
      proxy.stop();
    }
  });
}

/** Bytes of the files under `dir`, recursively. */
async function duBytes(dir: string): Promise<number> {
  let total = 0;
  for await (const e of Deno.readDir(dir)) {
    const path = join(dir, e.name);
    if (e.isDirectory) total += await duBytes(path);
    else if (e.isFile) total += (await Deno.stat(path)).size;
  }
  return total;
}

for (const major of testMajors()) {
  Deno.test(`stream into s3:// uploads a big export's parts while its COPY runs; kill -9 mid-export, restart: replay equals the source (PG ${major})`, async () => {
    await using w = await streamEnv(major as PgMajor, {}, { s3: true });
    const proxy = FaultProxy.start(w.s3!.port);
    try {
      await w.db.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
      await w.db.query("CREATE TABLE big (id int PRIMARY KEY, v text)");
      await fill(w, "t", 1, 100);
      // About 30 MB of gzip: six parts or more of 5 MiB.
      await fill(w, "big", 1, 600_000);
      await w.init();
      // From part 3 on, parts are stored but their answers held: the export keeps at most two
      // complete parts in the spool, so its COPY waits for room once parts 3 and 4 are sent.
      proxy.inject({
        method: "PUT",
        path: /partNumber=\d+&/,
        action: { kind: "hold", ms: 600_000 },
        skip: 2,
        times: 1000,
      });
      const part = 5 * 1024 * 1024;
      let p = w.stream({
        CDC_S3_ENDPOINT: proxy.endpoint,
        CDC_S3_PART_SIZE: "5MiB",
        CDC_S3_TIMEOUT: "10m",
      });
      await waitFor("parts 3 and 4 to be held", () => proxy.fired[0] === 2, 120_000).catch((e) => {
        throw new Error(`${e.message}\n${p.stderr}`);
      });
      const copying = async () =>
        (await w.db.query(
          `SELECT count(*)::int AS n FROM pg_stat_activity
           WHERE application_name = 'cdc-egress/export' AND query ILIKE 'COPY %big%'
             AND state = 'active'`,
        )).rows[0].n as number;
      // Parts went up while the COPY of big is still running, and no more than two at once.
      const sent = proxy.seen.filter((r) => r.method === "PUT" && /partNumber=\d+&/.test(r.target));
      assert.deepEqual(
        sent.map((r) => Number(/partNumber=(\d+)&/.exec(r.target)![1])).sort(),
        [1, 2, 3, 4],
        "parts 1-4 sent, no later one",
      );
      await waitFor("the COPY to wait for room", async () => await copying() === 1, 30_000);
      const intent = (await w.registry.query(
        "SELECT path, upload_id FROM cdc_registry.upload_intent WHERE path LIKE 'public.big/%full_reload.csv.gz'",
      )).rows;
      assert.equal(intent.length, 1, "the intent is recorded before the first part");
      assert(intent[0].upload_id, "with its multipart upload id");
      assert.deepEqual(await w.s3!.incompleteUploads("cdc"), [intent[0].upload_id]);
      assert.equal(
        (await w.registry.query(
          "SELECT count(*)::int AS n FROM cdc_registry.file_log WHERE path LIKE 'public.big/%'",
        )).rows[0].n,
        0,
      );
      // The spool holds the part being written and two complete ones, not the export.
      const spooled = await duBytes(w.spoolDir!);
      assert(spooled <= 3 * part + 1024 * 1024, `spool holds ${spooled} bytes`);
      assert.equal(await copying(), 1, "the COPY is still running");
      await p.stop("SIGKILL");
      proxy.stop();
      // Recovery aborts the upload by its recorded id; the export is done again, in parts.
      p = w.stream({ CDC_S3_PART_SIZE: "5MiB" });
      await w.caughtUp(180_000).catch((e) => {
        throw new Error(`${e.message}\n${p.stderr}`);
      });
      assert.match(p.stderr, /settled unregistered uploads.*aborted_multipart.*1/);
      await fill(w, "big", 700_000, 100);
      await w.db.query("UPDATE big SET v = 'u' WHERE id % 1000 = 0");
      await fill(w, "t", 1000, 50);
      await w.caughtUp();
      assert.equal(await p.stop(), 0, p.stderr);
      const reload = (await w.registry.query(
        "SELECT path, byte_size FROM cdc_registry.file_log WHERE path LIKE 'public.big/%full_reload.csv.gz'",
      )).rows;
      assert.equal(reload.length, 1);
      assert(
        Number(reload[0].byte_size) > 5 * part,
        `big's export has ${reload[0].byte_size} bytes`,
      );
      await bucketMatchesRegistry(w);
      await w.assertReplayEquals("public", "t");
      await w.assertReplayEquals("public", "big");
    } finally {
      proxy.stop();
    }
  });
}

for (const major of testMajors()) {
  Deno.test(`verify, status and materialize read an s3:// data dir (PG ${major})`, async () => {
    await using w = await streamEnv(major as PgMajor, {}, { s3: true });
    await w.db.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
    await fill(w, "t", 1, 300);
    await w.init();
    const p = w.stream();
    await w.caughtUp();
    await w.db.query("UPDATE t SET v = 'changed' WHERE id % 3 = 0");
    await w.db.query("DELETE FROM t WHERE id % 10 = 0");
    await w.db.query("ALTER TABLE t ADD COLUMN extra int");
    await w.db.query("UPDATE t SET extra = id WHERE id % 4 = 0");
    await w.caughtUp();
    assert.equal(await p.stop(), 0, p.stderr);

    let r = await runCli(["verify", "--json"], w.env);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    let report = JSON.parse(r.stdout);
    assert.equal(report.data_dir, "s3://cdc/data");
    assert(report.files_checked >= 3);
    r = await runCli(["verify", "--deep", "--json"], w.env);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    report = JSON.parse(r.stdout);
    assert(report.rows_checked > 300);
    assert.equal(report.tables[0].deep.missing_rows + report.tables[0].deep.extra_rows, 0);

    r = await runCli(["status", "--json"], w.env);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout).storage, { url: "s3://cdc/data", pending_uploads: 0 });

    await w.db.query("CREATE DATABASE mat");
    const to = w.cluster.url().replace(/\/[^/?]+(\?|$)/, "/mat$1");
    r = await runCli(["materialize", "--to", to], w.env);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const mat = new pg.Client({ connectionString: to });
    await mat.connect();
    try {
      assert.deepEqual(await liveRows(mat, "public", "t"), await liveRows(w.db, "public", "t"));
    } finally {
      await mat.end();
    }

    // A missing object, an object of the wrong size: verify says which, by HEAD.
    const files = (await w.registry.query(
      "SELECT path FROM cdc_registry.file_log WHERE file_type = 'streaming' ORDER BY id",
    )).rows.map((x) => x.path as string);
    const client = w.s3!.client();
    try {
      await client.send(new DeleteObjectCommand({ Bucket: "cdc", Key: `data/${files[0]}` }));
      await client.send(
        new PutObjectCommand({ Bucket: "cdc", Key: `data/${files[1]}`, Body: "not gzip" }),
      );
    } finally {
      client.destroy();
    }
    r = await runCli(["verify", "--json"], w.env);
    assert.equal(r.code, 1, r.stderr + r.stdout);
    const kinds = JSON.parse(r.stdout).problems.map((x: { kind: string; path: string }) =>
      `${x.kind} ${x.path}`
    );
    assert.deepEqual(kinds, [`missing ${files[0]}`, `size ${files[1]}`].sort());

    // Read from a local data dir while the registry says the bucket: one clear line.
    r = await runCli(["verify"], { ...w.env, CDC_DATA_DIR: w.dataDir });
    assert.equal(r.code, 2);
    assert.match(
      r.stderr,
      /^error: Cannot verify data dir ".*": the files of slot "cdc_egress" are in s3:\/\/cdc\/data \(recorded in the registry\); use --data-dir s3:\/\/cdc\/data\n$/,
    );
  });
}

for (const major of testMajors()) {
  Deno.test(`stream holds while S3 is unreachable: nothing registered or acknowledged, /readyz fails, then it catches up (PG ${major})`, async () => {
    await using w = await streamEnv(major as PgMajor, {}, { s3: true });
    const proxy = FaultProxy.start(w.s3!.port);
    try {
      await w.db.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
      await fill(w, "t", 1, 100);
      await w.init();
      const p = w.stream({ CDC_S3_ENDPOINT: proxy.endpoint, CDC_S3_TIMEOUT: "2s" });
      await w.caughtUp().catch((e) => {
        throw new Error(`${e.message}\n${p.stderr}`);
      });
      const port = Number(/"serving metrics".*"port":(\d+)/.exec(p.stderr)![1]);
      const ready = async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).status;
      await waitFor("/readyz 200", async () => (await ready()) === 200);
      const files = async () =>
        (await w.registry.query("SELECT count(*)::int AS n FROM cdc_registry.file_log")).rows[0].n;
      const confirmed = async () =>
        (await w.db.query(
          "SELECT confirmed_flush_lsn::text AS l FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
        )).rows[0].l;
      const before = { files: await files(), lsn: await confirmed() };
      proxy.down();
      await fill(w, "t", 1000, 200);
      await waitFor("/readyz 503 while uploads fail", async () => (await ready()) === 503);
      await waitFor("retries to be logged", () => /object storage request failed/.test(p.stderr));
      // Several batch intervals later: still nothing registered, nothing acknowledged.
      await waitFor(
        "a few retries",
        () => proxy.seen.length > 0 && p.stderr.split("retrying").length > 3,
        60_000,
      );
      assert.equal(await files(), before.files);
      assert.equal(await confirmed(), before.lsn);
      const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      assert.match(metrics, /cdc_upload_retries_total\{op="upload"\} [1-9]/);
      assert.match(metrics, /cdc_storage_up 0/);
      proxy.up();
      await w.caughtUp();
      await waitFor("/readyz 200 again", async () => (await ready()) === 200);

      // Asked to stop during an outage, it gives up the upload after a grace
      // period: exit 1 with one line, nothing registered or acknowledged.
      const held = { files: await files(), lsn: await confirmed() };
      proxy.down();
      const seen = p.stderr.length;
      await fill(w, "t", 5000, 100);
      await waitFor(
        "a retry",
        () => p.stderr.slice(seen).includes("object storage request failed"),
      );
      const stopAt = Date.now();
      const code = await p.stop("SIGTERM");
      assert.equal(code, 1, p.stderr.slice(-2000));
      assert(Date.now() - stopAt < 30_000, `stopped after ${Date.now() - stopAt} ms`);
      assert.match(p.stderr, /"msg":"stopping: flushing open batches"/);
      assert.deepEqual({ files: await files(), lsn: await confirmed() }, held);
      proxy.up();
      const again = w.stream({ CDC_S3_ENDPOINT: proxy.endpoint });
      await w.caughtUp();
      assert.equal(await again.stop(), 0, again.stderr);
      await bucketMatchesRegistry(w);
      await w.assertReplayEquals("public", "t");
    } finally {
      proxy.stop();
    }
  });
}

Deno.test("stream killed between the start-up probe's PUT and DELETE leaves no probe object after the next start", async () => {
  await using w = await streamEnv(testMajors()[0] as PgMajor, {}, { s3: true });
  const proxy = FaultProxy.start(w.s3!.port);
  try {
    await w.db.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
    await fill(w, "t", 1, 10);
    await w.init();
    proxy.inject({
      method: "DELETE",
      path: /cdc-egress-probe/,
      action: { kind: "stall", ms: 600_000 },
    });
    let p = w.stream({ CDC_S3_ENDPOINT: proxy.endpoint });
    await waitFor("the probe's DELETE to hang", () => proxy.fired[0] === 1).catch((e) => {
      throw new Error(`${e.message}\n${p.stderr}`);
    });
    const probes = async () =>
      (await w.s3!.keys("cdc", "data/")).filter((k) => k.includes("cdc-egress-probe"));
    assert.equal((await probes()).length, 1, "the probe object is stored");
    await p.stop("SIGKILL");
    p = w.stream();
    await w.caughtUp().catch((e) => {
      throw new Error(`${e.message}\n${p.stderr}`);
    });
    assert.equal(await p.stop(), 0, p.stderr);
    assert.deepEqual(await probes(), [], "no probe object left");
    await bucketMatchesRegistry(w);
  } finally {
    proxy.stop();
  }
});

/** Bytes of every file under `dir`. */
async function treeBytes(dir: string): Promise<number> {
  let n = 0;
  for await (const e of Deno.readDir(dir)) {
    const path = join(dir, e.name);
    try {
      if (e.isDirectory) n += await treeBytes(path);
      else if (e.isFile) n += (await Deno.stat(path)).size;
    } catch (error) {
      // Removed while we looked.
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }
  return n;
}

for (const major of testMajors()) {
  Deno.test(`stream stays within --spool-max-bytes while uploads stall, then catches up (PG ${major})`, async () => {
    await using w = await streamEnv(major as PgMajor, {}, { s3: true });
    const proxy = FaultProxy.start(w.s3!.port);
    let sampling = true;
    try {
      await w.db.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
      await fill(w, "t", 1, 100);
      await w.init();
      const bound = 4 * 1024 * 1024;
      const p = w.stream({
        CDC_S3_ENDPOINT: proxy.endpoint,
        CDC_S3_TIMEOUT: "2s",
        CDC_SPOOL_MAX_BYTES: String(bound),
        // Neither a batch's size nor its age closes it while the data is written: only the bound.
        CDC_BATCH_MAX_BYTES: "1GiB",
        CDC_BATCH_MAX_ROWS: "100000000",
        CDC_BATCH_INTERVAL: "20s",
      });
      await w.caughtUp().catch((e) => {
        throw new Error(`${e.message}\n${p.stderr}`);
      });
      const files = async () =>
        (await w.registry.query("SELECT count(*)::int AS n FROM cdc_registry.file_log")).rows[0].n;
      const confirmed = async () =>
        (await w.db.query(
          "SELECT confirmed_flush_lsn::text AS l FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
        )).rows[0].l;
      let most = 0;
      const sampler = (async () => {
        while (sampling) {
          most = Math.max(most, await treeBytes(w.spoolDir!));
          await new Promise((r) => setTimeout(r, 50));
        }
      })();
      // The spool first fills to the bound and is uploaded: then S3 goes away.
      const before = await files();
      await fill(w, "t", 10_000, 60_000);
      await waitFor("a flush at the bound", () => /"reason":"spool"/.test(p.stderr), 60_000);
      await waitFor("the first spool flush to register", async () => (await files()) > before);
      proxy.down();
      const seen = p.stderr.length;
      // About 45 MB of CSV (over 20 MB of gzip), in transactions PostgreSQL does not stream.
      for (let i = 0; i < 15; i++) await fill(w, "t", 100_000 + i * 30_000, 30_000);
      await waitFor(
        "uploads to be retried",
        () => p.stderr.slice(seen).split("retrying").length > 3,
        60_000,
      );
      const held = { files: await files(), lsn: await confirmed() };
      await waitFor(
        "more retries",
        () => p.stderr.slice(seen).split("retrying").length > 5,
        60_000,
      );
      assert.deepEqual({ files: await files(), lsn: await confirmed() }, held, "stream holds");
      proxy.up();
      await w.caughtUp(120_000).catch((e) => {
        throw new Error(`${e.message}\n${p.stderr.slice(-3000)}`);
      });
      sampling = false;
      await sampler;
      // One 256 KiB chunk of a batch and the folder's schema.yml can pass the bound before the check.
      assert(most <= bound + 512 * 1024, `the spool held ${most} bytes (bound ${bound})`);
      assert(most >= bound / 4, `the spool never filled (${most} bytes): the test proves nothing`);
      assert.equal(await p.stop(), 0, p.stderr);
      const spoolFlushes = p.stderr.split('"reason":"spool"').length - 1;
      assert(spoolFlushes >= 5, `${spoolFlushes} flushes at the bound`);
      console.log(
        `spool peak ${most} bytes (bound ${bound}), ${spoolFlushes} flushes at the bound`,
      );
      await bucketMatchesRegistry(w);
      await w.assertReplayEquals("public", "t");
    } finally {
      sampling = false;
      proxy.stop();
    }
  });
}

Deno.test("SpoolUploader never uploads a registered key again", async () => {
  await using w = await streamEnv(testMajors()[0] as PgMajor, {}, { s3: true });
  const proxy = FaultProxy.start(w.s3!.port);
  try {
    await w.db.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
    await fill(w, "t", 1, 50);
    await w.init();
    const p = w.stream();
    await w.caughtUp();
    assert.equal(await p.stop(), 0, p.stderr);
    const row = (await w.registry.query(
      `SELECT path, byte_size::int AS size, sha256 FROM cdc_registry.file_log
       WHERE file_type = 'full_reload'`,
    )).rows[0];
    // Bytes of another content where the spool would hold the file at registration.
    const dir = join(w.spoolDir!, row.path.replace(/\/[^/]+$/, ""));
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(join(dir, ".tmp-full_reload.csv.gz"), "other bytes");
    await Deno.writeTextFile(join(dir, "schema.yml"), "other: schema\n");
    const store = new S3Store({
      location: { bucket: "cdc", prefix: "data" },
      endpoint: proxy.endpoint,
      forcePathStyle: true,
      partSize: 16 << 20,
      timeoutMs: 5000,
      maxAttempts: 3,
    });
    const registry = new Registry(w.registry, "cdc_egress");
    const uploader = new SpoolUploader(
      store,
      registry,
      w.spoolDir!,
      new Logger({ level: "error" }),
    );
    const before = proxy.seen.length;
    await withS3Credentials(() =>
      uploader.beforeRegister([{
        schema: "public",
        table: "t",
        tableDir: "public.t",
        relationOid: 1,
        batchTs: row.path.split("/")[1],
        path: row.path,
        fileType: "full_reload",
        startLsn: 0n as Lsn,
        endLsn: 0n as Lsn,
        startSeq: null,
        endSeq: null,
        rowCount: 0,
        byteSize: 11,
        sha256: "0".repeat(64),
        hasDdl: false,
      }])
    );
    store.close();
    assert.deepEqual(proxy.seen.slice(before), [], "no request for a registered key");
    const objects = await w.s3!.objects("cdc", "data/");
    assert.equal(objects.get(`data/${row.path}`), row.size, "the object is unchanged");
    assert.equal(
      (await w.registry.query("SELECT count(*)::int AS n FROM cdc_registry.upload_intent")).rows[0]
        .n,
      0,
    );
  } finally {
    proxy.stop();
  }
});

async function withS3Credentials<T>(fn: () => Promise<T>): Promise<T> {
  const keys = Object.keys(S3_TEST_CREDENTIALS) as (keyof typeof S3_TEST_CREDENTIALS)[];
  const before = keys.map((k) => [k, Deno.env.get(k)] as const);
  for (const k of keys) Deno.env.set(k, S3_TEST_CREDENTIALS[k]);
  try {
    return await fn();
  } finally {
    for (const [k, v] of before) v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
  }
}
