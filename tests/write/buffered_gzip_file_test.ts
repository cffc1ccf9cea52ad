import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { gunzipSync } from "node:zlib";
import { join } from "node:path";
import { BufferedGzipFile } from "../../src/write/buffered_gzip_file.ts";

function csv(bytes: number, seed = 0): Uint8Array {
  const out = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) out[i] = 32 + ((i * 7 + seed + (i >> 9) * 13) % 90);
  return out;
}

async function names(dir: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
}

async function withDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("BufferedGzipFile keeps a small file in memory and writes it whole at seal", async () => {
  await withDir(async (dir) => {
    const file = new BufferedGzipFile(join(dir, "t.csv.gz"), {
      tempPath: join(dir, ".tmp-t.csv.gz"),
      bufferBytes: 64 * 1024,
    });
    const input = csv(40_000);
    // Written in pieces, the caller reusing its buffer: the file copies them.
    const piece = new Uint8Array(1000);
    for (let at = 0; at < input.length; at += 1000) {
      piece.set(input.subarray(at, at + 1000));
      await file.write(piece);
      piece.fill(0);
    }
    assert.equal(file.streaming, false);
    assert.deepEqual(await names(dir), [], "nothing is on disk before the seal");
    const sealed = await file.seal({ sync: false });
    const bytes = await Deno.readFile(join(dir, ".tmp-t.csv.gz"));
    assert.deepEqual(new Uint8Array(gunzipSync(bytes)), input);
    assert.equal(sealed.byteSize, bytes.length);
    assert.equal(sealed.sha256, createHash("sha256").update(bytes).digest("hex"));
    assert.equal(sealed.uncompressedBytes, input.length);
    assert.equal((await Deno.stat(sealed.tempPath)).mode! & 0o777, 0o600);
  });
});

Deno.test("BufferedGzipFile streams once the data outgrows the buffer", async () => {
  await withDir(async (dir) => {
    const file = new BufferedGzipFile(join(dir, "t.csv.gz"), {
      tempPath: join(dir, ".tmp-t.csv.gz"),
      bufferBytes: 16 * 1024,
    });
    const input = csv(300_000, 5);
    for (let at = 0; at < input.length; at += 10_000) {
      await file.write(input.subarray(at, at + 10_000));
    }
    assert.equal(file.streaming, true);
    const sealed = await file.seal();
    const bytes = await Deno.readFile(sealed.tempPath);
    assert.deepEqual(new Uint8Array(gunzipSync(bytes)), input);
    assert.equal(sealed.sha256, createHash("sha256").update(bytes).digest("hex"));
  });
});

Deno.test("BufferedGzipFile replaces a leftover temp file and abort() removes what it wrote", async () => {
  await withDir(async (dir) => {
    const tempPath = join(dir, ".tmp-t.csv.gz");
    await Deno.writeTextFile(tempPath, "half a file of an attempt that crashed");
    const file = new BufferedGzipFile(join(dir, "t.csv.gz"), { tempPath });
    await file.write(new TextEncoder().encode("id\n1\n"));
    await file.seal({ sync: false });
    assert.equal(new TextDecoder().decode(gunzipSync(await Deno.readFile(tempPath))), "id\n1\n");
    await file.abort();
    assert.deepEqual(await names(dir), []);
    await assert.rejects(file.write(new Uint8Array(1)), /sealed/);
    // An aborted file that never wrote anything leaves nothing either.
    const never = new BufferedGzipFile(join(dir, "u.csv.gz"), { tempPath: join(dir, ".tmp-u") });
    await never.write(new Uint8Array(10));
    await never.abort();
    assert.deepEqual(await names(dir), []);
  });
});
