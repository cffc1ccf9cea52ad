import assert from "node:assert/strict";
import { join } from "node:path";
import {
  ensureDir,
  removeTempFiles,
  syncDir,
  tempPathFor,
  writeFileAtomic,
} from "../../src/write/atomic_file.ts";

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function listDir(dir: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
}

Deno.test("writeFileAtomic writes the bytes with mode 0600 and leaves no temp file", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "schema.yml");
    await writeFileAtomic(path, new TextEncoder().encode("a: 1\n"));
    assert.equal(await Deno.readTextFile(path), "a: 1\n");
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    assert.deepEqual(await listDir(dir), ["schema.yml"]);
  });
});

Deno.test("writeFileAtomic replaces an existing file", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "ddl.sql");
    await writeFileAtomic(path, new TextEncoder().encode("old"));
    await writeFileAtomic(path, new TextEncoder().encode("new"));
    assert.equal(await Deno.readTextFile(path), "new");
    assert.deepEqual(await listDir(dir), ["ddl.sql"]);
  });
});

Deno.test("writeFileAtomic leaves nothing behind when the rename fails", async () => {
  await withTempDir(async (dir) => {
    // Renaming a file over a non-empty directory fails.
    const path = join(dir, "target");
    await Deno.mkdir(path);
    await Deno.writeTextFile(join(path, "keep"), "x");
    await assert.rejects(() => writeFileAtomic(path, new Uint8Array([1])));
    assert.deepEqual(await listDir(dir), ["target"]);
  });
});

Deno.test("ensureDir creates missing directories with mode 0700", async () => {
  await withTempDir(async (dir) => {
    const deep = join(dir, "data", "public.orders", "20261124T170500.123Z");
    await ensureDir(deep);
    for (const p of [join(dir, "data"), join(dir, "data", "public.orders"), deep]) {
      const info = await Deno.stat(p);
      assert.ok(info.isDirectory);
      assert.equal(info.mode! & 0o777, 0o700, p);
    }
    await ensureDir(deep); // idempotent
  });
});

Deno.test("ensureDir keeps the mode of a directory that already exists", async () => {
  await withTempDir(async (dir) => {
    const existing = join(dir, "data");
    await Deno.mkdir(existing);
    await Deno.chmod(existing, 0o750);
    await ensureDir(join(existing, "t"));
    assert.equal((await Deno.stat(existing)).mode! & 0o777, 0o750);
    assert.equal((await Deno.stat(join(existing, "t"))).mode! & 0o777, 0o700);
  });
});

Deno.test("ensureDir fails when a file is in the way", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "file"), "");
    await assert.rejects(() => ensureDir(join(dir, "file")), Deno.errors.AlreadyExists);
    await assert.rejects(() => ensureDir(join(dir, "file", "sub")));
  });
});

Deno.test("removeTempFiles deletes .tmp-* files at any depth and returns their paths", async () => {
  await withTempDir(async (dir) => {
    const batch = join(dir, "public.t", "20261124T170500.123Z");
    await Deno.mkdir(batch, { recursive: true });
    const temps = [
      join(dir, ".tmp-x"),
      join(batch, ".tmp-streaming.csv.gz.0123456789abcdef"),
      join(dir, "public.t", ".tmp-schema.yml.ff"),
    ];
    for (const t of temps) await Deno.writeTextFile(t, "partial");
    const kept = [join(batch, "streaming.csv.gz"), join(batch, "schema.yml"), join(dir, "tmp-x")];
    for (const k of kept) await Deno.writeTextFile(k, "done");
    // A directory named like a temp file is not a temp file; its contents are searched.
    await Deno.mkdir(join(dir, ".tmp-dir"));
    await Deno.writeTextFile(join(dir, ".tmp-dir", ".tmp-inner"), "");

    const removed = await removeTempFiles(dir);
    assert.deepEqual(removed, [...temps, join(dir, ".tmp-dir", ".tmp-inner")].sort());
    for (const k of kept) assert.equal(await Deno.readTextFile(k), "done");
    assert.deepEqual(await removeTempFiles(dir), []);
  });
});

Deno.test("removeTempFiles returns nothing for a missing directory", async () => {
  await withTempDir(async (dir) => {
    assert.deepEqual(await removeTempFiles(join(dir, "nope")), []);
  });
});

Deno.test("removeTempFiles does not follow symlinks", async () => {
  await withTempDir(async (dir) => {
    const outside = join(dir, "outside");
    const root = join(dir, "root");
    await Deno.mkdir(outside);
    await Deno.mkdir(root);
    await Deno.writeTextFile(join(outside, ".tmp-precious"), "x");
    await Deno.symlink(outside, join(root, "link"));
    assert.deepEqual(await removeTempFiles(root), []);
    assert.equal(await Deno.readTextFile(join(outside, ".tmp-precious")), "x");
  });
});

Deno.test("tempPathFor names a unique .tmp- file in the same directory", () => {
  const a = tempPathFor("/data/public.t/20261124T170500.123Z/streaming.csv.gz");
  const b = tempPathFor("/data/public.t/20261124T170500.123Z/streaming.csv.gz");
  assert.notEqual(a, b);
  assert.match(
    a,
    /^\/data\/public\.t\/20261124T170500\.123Z\/\.tmp-streaming\.csv\.gz\.[0-9a-f]{16}$/,
  );
});

Deno.test("syncDir fsyncs a directory and fails for a missing one", async () => {
  await withTempDir(async (dir) => {
    await syncDir(dir);
    await assert.rejects(() => syncDir(join(dir, "missing")), Deno.errors.NotFound);
  });
});
