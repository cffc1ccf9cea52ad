/**
 * ExportUploads against s3rver (its own process): an export's gzip goes up in
 * parts once its key is known, with the intent and upload id recorded
 * first, and never more than two complete parts in the spool. The registry
 * here is a recording stand-in for the four intent calls; the stream tests
 * (s3_stream_test.ts) run the same path with the real registry.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { Buffer } from "node:buffer";
import { gunzipSync } from "node:zlib";
import { join } from "node:path";
import { Logger } from "../../src/log.ts";
import { ExportUploads, type IntentRegistry } from "../../src/storage/export_uploads.ts";
import { S3Store } from "../../src/storage/s3_store.ts";
import { S3_TEST_CREDENTIALS, S3Server } from "../harness/s3_server.ts";

const MiB = 1024 * 1024;

/** Records intent calls in order; `registered` keys count as registered. */
class RecordingIntents implements IntentRegistry {
  calls: string[] = [];
  intents = new Map<string, string | null>();
  registered = new Set<string>();
  registeredAmong(paths: string[]): Promise<Set<string>> {
    return Promise.resolve(new Set(paths.filter((p) => this.registered.has(p))));
  }
  addUploadIntents(paths: string[]): Promise<void> {
    for (const p of paths) this.intents.set(p, null);
    this.calls.push(`intent ${paths.join(",")}`);
    return Promise.resolve();
  }
  setUploadId(path: string, id: string): Promise<void> {
    this.intents.set(path, id);
    this.calls.push(id === "" ? "multipart" : "id");
    return Promise.resolve();
  }
  dropUploadIntents(paths: string[]): Promise<void> {
    for (const p of paths) this.intents.delete(p);
    this.calls.push("drop");
    return Promise.resolve();
  }
}

/** CSV-like text that gzips poorly (hex digests), `n` bytes. */
function csv(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let at = 0;
  for (let i = 0; at < n; i++) {
    const line = new TextEncoder().encode(
      `${i},${createHash("sha256").update(`${seed}:${i}`).digest("hex")}\n`,
    );
    out.set(line.subarray(0, n - at), at);
    at += line.length;
  }
  return out;
}

async function withServer(
  fn: (s: S3Store, server: S3Server, dir: string) => Promise<void>,
): Promise<void> {
  const server = await S3Server.start(["cdc"]);
  const dir = await Deno.makeTempDir();
  for (const [k, v] of Object.entries(S3_TEST_CREDENTIALS)) Deno.env.set(k, v);
  const s = new S3Store({
    location: { bucket: "cdc", prefix: "data" },
    endpoint: server.endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    partSize: MiB,
    timeoutMs: 5000,
    maxAttempts: 3,
  });
  try {
    await fn(s, server, dir);
  } finally {
    s.close();
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("ExportUploads sends parts once the key is known, at most two in the spool, and completes one object", async () => {
  await withServer(async (s, server, dir) => {
    const intents = new RecordingIntents();
    const up = new ExportUploads(s, intents, MiB, new Logger({ level: "error" }));
    let key: string | null = null;
    const f = up.open(join(dir, ".tmp-1.full_reload.csv.gz"), () => key);
    const data = csv(12 * MiB, 1);
    let peak = 0;
    let blocked = false;
    // Without a key nothing goes up and the writer waits once two parts are complete.
    const writing = (async () => {
      for (let at = 0; at < data.length; at += 256 * 1024) {
        await f.write(data.subarray(at, at + 256 * 1024));
        peak = Math.max(peak, up.localBytes);
      }
    })();
    const deadline = Date.now() + 20_000;
    while (!blocked && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      const before = up.localBytes;
      await new Promise((r) => setTimeout(r, 300));
      blocked = before >= 2 * MiB && up.localBytes === before;
    }
    assert(blocked, `the writer waits for the key (spool ${up.localBytes} bytes)`);
    assert.deepEqual(intents.calls, [], "no intent before the key is known");
    assert.deepEqual(await server.incompleteUploads("cdc"), []);
    key = "public.big/20261129T200000.000Z/full_reload.csv.gz";
    await writing;
    const sealed = await f.seal();
    assert.equal(sealed.uploaded?.key, key);
    assert.deepEqual(intents.calls.slice(0, 3), [`intent ${key}`, "multipart", "id"]);
    assert(peak <= 3 * MiB, `spool peak ${peak} bytes`);
    assert.equal(up.localBytes, 0);
    assert(up.uploaded(key));
    assert.deepEqual(await server.incompleteUploads("cdc"), []);
    // The object is the gzip of what was written; size and sha256 as sealed.
    const bytes = new Uint8Array(
      await new Response(await s.get(key)).arrayBuffer(),
    );
    assert.equal(bytes.length, sealed.byteSize);
    assert.equal(createHash("sha256").update(bytes).digest("hex"), sealed.sha256);
    assert.deepEqual(gunzipSync(bytes), Buffer.from(data));
    assert.equal((await s.head(key))?.size, sealed.byteSize);
    // Thrown away after all (the export went stale): the object and its intent go.
    await sealed.uploaded!.discard();
    assert.equal(await s.head(key), null);
    assert(!intents.intents.has(key));
  });
});

Deno.test("ExportUploads: an export within one part is an ordinary sealed file, nothing uploaded", async () => {
  await withServer(async (s, server, dir) => {
    const intents = new RecordingIntents();
    const up = new ExportUploads(s, intents, MiB, new Logger({ level: "error" }));
    const temp = join(dir, ".tmp-2.full_reload.csv.gz");
    const f = up.open(temp, () => "public.small/20261129T200000.000Z/full_reload.csv.gz");
    const data = csv(MiB, 2);
    await f.write(data);
    const sealed = await f.seal();
    assert.equal(sealed.uploaded, undefined);
    assert.equal(sealed.tempPath, temp);
    assert.deepEqual(gunzipSync(await Deno.readFile(temp)), Buffer.from(data));
    assert.equal((await Deno.stat(temp)).size, sealed.byteSize);
    assert.deepEqual(intents.calls, []);
    assert.deepEqual(await server.keys("cdc"), []);
    assert.equal(up.localBytes, 0);
  });
});

Deno.test("ExportUploads: aborting mid-export aborts the multipart upload and drops its intent; an abandoned export stops waiting", async () => {
  await withServer(async (s, server, dir) => {
    const intents = new RecordingIntents();
    const up = new ExportUploads(s, intents, MiB, new Logger({ level: "error" }));
    const key = "public.big/20261129T200001.000Z/full_reload.csv.gz";
    const f = up.open(join(dir, ".tmp-3.full_reload.csv.gz"), () => key);
    const data = csv(5 * MiB, 3);
    for (let at = 0; at < data.length; at += 512 * 1024) {
      await f.write(data.subarray(at, at + 512 * 1024));
    }
    assert.equal((await server.incompleteUploads("cdc")).length, 1);
    await f.abort();
    assert.deepEqual(await server.incompleteUploads("cdc"), []);
    assert.equal(intents.intents.size, 0);
    assert.equal(up.localBytes, 0);
    assert.deepEqual([...Deno.readDirSync(dir)], [], "no part file left");

    // The export's boundary was abandoned before its folder was named: the writer stops.
    const g = up.open(join(dir, ".tmp-4.full_reload.csv.gz"), () => undefined);
    await assert.rejects(async () => {
      for (let at = 0; at < data.length; at += 512 * 1024) {
        await g.write(data.subarray(at, at + 512 * 1024));
      }
      await g.seal();
    }, /abandoned/);
    await g.abort();
    assert.equal(up.localBytes, 0);
    // A registered key is never uploaded again.
    intents.registered.add(key);
    const h = up.open(join(dir, ".tmp-5.full_reload.csv.gz"), () => key);
    await assert.rejects(async () => {
      for (let at = 0; at < data.length; at += 512 * 1024) {
        await h.write(data.subarray(at, at + 512 * 1024));
      }
      await h.seal();
    }, /registered already/);
    await h.abort();
    assert.deepEqual(await server.incompleteUploads("cdc"), []);
  });
});
