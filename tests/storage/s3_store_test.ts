import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { CdcError } from "../../src/errors.ts";
import { S3Store, type S3StoreOptions } from "../../src/storage/s3_store.ts";
import { FaultProxy } from "../harness/fault_proxy.ts";
import { S3_TEST_CREDENTIALS, S3Server } from "../harness/s3_server.ts";

const MiB = 1024 * 1024;

function withCredentials<T>(fn: () => Promise<T>, creds = S3_TEST_CREDENTIALS): Promise<T> {
  const before = Object.keys(creds).map((k) => [k, Deno.env.get(k)] as const);
  for (const [k, v] of Object.entries(creds)) Deno.env.set(k, v);
  return fn().finally(() => {
    for (const [k, v] of before) v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
  });
}

function store(endpoint: string, extra: Partial<S3StoreOptions> = {}): S3Store {
  return new S3Store({
    location: { bucket: "cdc", prefix: "pfx/one" },
    endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    partSize: MiB,
    timeoutMs: 2000,
    maxAttempts: 6,
    ...extra,
  });
}

async function sampleFile(dir: string, size: number): Promise<{ path: string; sha256: string }> {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
  const path = join(dir, `f${size}`);
  await Deno.writeFile(path, bytes);
  return { path, sha256: createHash("sha256").update(bytes).digest("hex") };
}

async function read(s: S3Store, key: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const c of await s.get(key)) hash.update(c);
  return hash.digest("hex");
}

Deno.test("S3Store puts, heads, reads and deletes objects, single and multipart, through faults", async (t) => {
  const server = await S3Server.start(["cdc"]);
  const proxy = FaultProxy.start(server.port);
  const dir = await Deno.makeTempDir();
  const retries: string[] = [];
  const s = store(proxy.endpoint, { onRetry: (op) => retries.push(op) });
  try {
    await withCredentials(async () => {
      await t.step(
        "a small file is one PUT under the prefix, with its sha256 recorded",
        async () => {
          const f = await sampleFile(dir, 1000);
          await s.putFile("public.t/b1/streaming.csv.gz", f.path, { sha256: f.sha256 });
          assertEqualsKeys(await server.keys("cdc"), ["pfx/one/public.t/b1/streaming.csv.gz"]);
          assert.deepEqual(await s.head("public.t/b1/streaming.csv.gz"), {
            size: 1000,
            sha256: f.sha256,
          });
          assert.equal(await read(s, "public.t/b1/streaming.csv.gz"), f.sha256);
          assert.equal(await s.head("public.t/nope"), null);
        },
      );
      await t.step("a large file goes up in parts; the upload id is reported first", async () => {
        const f = await sampleFile(dir, 2 * MiB + 123);
        const ids: string[] = [];
        await s.putFile("public.t/b2/full_reload.csv.gz", f.path, {
          sha256: f.sha256,
          onMultipart: async (id) => {
            ids.push(id);
            // "" before the upload is created, then its id before any part.
            assert.deepEqual(await server.incompleteUploads("cdc"), id === "" ? [] : [id]);
          },
        });
        assert.equal(ids.length, 2);
        assert.equal(ids[0], "");
        assert.deepEqual(await server.incompleteUploads("cdc"), []);
        assert.equal((await s.head("public.t/b2/full_reload.csv.gz"))?.size, 2 * MiB + 123);
        assert.equal(await read(s, "public.t/b2/full_reload.csv.gz"), f.sha256);
      });
      await t.step("503, 500, dropped, stalled and cut-short answers are retried", async () => {
        proxy.inject({ method: "PUT", action: { kind: "status", status: 503 } });
        proxy.inject({ method: "PUT", action: { kind: "status", status: 500 } });
        proxy.inject({ method: "PUT", action: { kind: "drop" } });
        proxy.inject({ method: "PUT", action: { kind: "stall", ms: 4000 } });
        // The PUT is stored, but its answer is cut: the retry puts the same bytes again.
        proxy.inject({ method: "PUT", action: { kind: "cut", bytes: 20 } });
        const f = await sampleFile(dir, 5000);
        retries.length = 0;
        await s.putFile("public.t/b3/streaming.csv.gz", f.path, { sha256: f.sha256 });
        assert.deepEqual(proxy.fired.slice(-5), [1, 1, 1, 1, 1]);
        assert.equal(retries.length, 5);
        assert.equal(await read(s, "public.t/b3/streaming.csv.gz"), f.sha256);
      });
      await t.step("a part that fails is sent again; a cut GET is retried", async () => {
        proxy.inject({
          method: "PUT",
          path: /partNumber=2/,
          action: { kind: "status", status: 500 },
        });
        proxy.inject({ method: "POST", path: /uploadId=/, action: { kind: "drop" } });
        const f = await sampleFile(dir, 3 * MiB);
        await s.putFile("public.t/b4/full_reload.csv.gz", f.path, { sha256: f.sha256 });
        assert.equal(await read(s, "public.t/b4/full_reload.csv.gz"), f.sha256);
        assert.deepEqual(await server.incompleteUploads("cdc"), []);
        proxy.inject({ method: "HEAD", action: { kind: "status", status: 503 }, times: 2 });
        assert.equal((await s.head("public.t/b4/full_reload.csv.gz"))?.size, 3 * MiB);
      });
      await t.step(
        "abortMultipart removes an incomplete upload; unknown ids are fine",
        async () => {
          const f = await sampleFile(dir, 2 * MiB);
          // Fail the completion for good: the upload stays incomplete.
          proxy.inject({
            method: "POST",
            path: /uploadId=/,
            action: { kind: "status", status: 400 },
          });
          let id = "";
          await assert.rejects(
            s.putFile("public.t/b5/full_reload.csv.gz", f.path, {
              sha256: f.sha256,
              onMultipart: (u) => Promise.resolve(void (id = u)),
            }),
            CdcError,
          );
          assert.deepEqual(await server.incompleteUploads("cdc"), [id]);
          await s.abortMultipart("public.t/b5/full_reload.csv.gz", id);
          assert.deepEqual(await server.incompleteUploads("cdc"), []);
          await s.abortMultipart("public.t/b5/full_reload.csv.gz", id);
          await s.delete("public.t/b5/full_reload.csv.gz");
          await s.delete("public.t/b1/streaming.csv.gz");
          assert.equal(await s.head("public.t/b1/streaming.csv.gz"), null);
        },
      );
      await t.step("check() reads and writes, and leaves no probe behind", async () => {
        const before = await server.keys("cdc");
        await s.check(true);
        assert.deepEqual(await server.keys("cdc"), before);
      });
    });
  } finally {
    s.close();
    proxy.stop();
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

function assertEqualsKeys(actual: string[], expected: string[]) {
  assert.deepEqual(actual, expected);
}

Deno.test("S3Store.check() gives one clear line for a missing bucket, wrong credentials or a bad endpoint", async () => {
  const server = await S3Server.start(["cdc"]);
  try {
    const missing = new S3Store({
      ...optionsFor(server.endpoint),
      location: { bucket: "nosuch", prefix: "" },
    });
    await withCredentials(async () => {
      const e = await assertRejectsCdc(() => missing.check(false));
      assert.equal(
        e.message,
        `Cannot use bucket "nosuch" at ${server.endpoint}: the bucket does not exist`,
      );
    });
    missing.close();
    const s = new S3Store(optionsFor(server.endpoint));
    await withCredentials(async () => {
      const e = await assertRejectsCdc(() => s.check(true));
      assert.match(
        e.message,
        /^Cannot use bucket "cdc" at .*: access denied .*check the AWS credentials/,
      );
      assert(!e.message.includes("wrongsecret"));
      assert(!e.message.includes("\n"));
    }, { AWS_ACCESS_KEY_ID: "WRONGKEY", AWS_SECRET_ACCESS_KEY: "wrongsecret" });
    s.close();
    const free = Deno.listen({ port: 0 });
    const port = (free.addr as Deno.NetAddr).port;
    free.close();
    const bad = new S3Store({ ...optionsFor(`http://127.0.0.1:${port}`), maxAttempts: 2 });
    await withCredentials(async () => {
      const e = await assertRejectsCdc(() => bad.check(false));
      assert.match(
        e.message,
        /^Cannot use bucket "cdc" at http:\/\/127\.0\.0\.1:\d+: .*\(after 2 attempts\)$/,
      );
    });
    bad.close();
  } finally {
    await server.stop();
  }
});

function optionsFor(endpoint: string): S3StoreOptions {
  return {
    location: { bucket: "cdc", prefix: "" },
    endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    partSize: MiB,
    timeoutMs: 2000,
    maxAttempts: 3,
  };
}

async function assertRejectsCdc(fn: () => Promise<unknown>): Promise<CdcError> {
  try {
    await fn();
  } catch (error) {
    assert(error instanceof CdcError, `expected a CdcError, got ${error}`);
    assert.equal(error.code, "storage");
    return error;
  }
  throw new Error("expected a rejection");
}
