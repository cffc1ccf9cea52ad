import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { gunzipSync } from "node:zlib";
import { join } from "node:path";
import { GzipFileWriter } from "../../src/write/gzip_file_writer.ts";
import { pathExists } from "../../src/write/atomic_file.ts";

function sampleCsv(bytes: number): Uint8Array {
  const lines: string[] = [];
  let size = 0;
  for (let i = 0; size < bytes; i++) {
    const line = `I,0/${(0x16b3748 + i * 40).toString(16).toUpperCase()},${i % 7},` +
      `2026-11-24 17:05:00.${String(i % 1_000_000).padStart(6, "0")}+00,${1000 + i},,,` +
      `${i},"name ${i % 97}, ""x""",${(i * 7919) % 100_003}\n`;
    lines.push(line);
    size += line.length;
  }
  return new TextEncoder().encode(lines.join("").slice(0, bytes));
}

function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

const exists = pathExists;

async function listDir(dir: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
}

Deno.test("GzipFileWriter output decompresses to the input, with matching size and sha256", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const input = sampleCsv(3_000_000);
    const path = join(dir, "streaming.csv.gz");
    const out = await GzipFileWriter.create(path);
    // Mixed sizes: tiny writes (coalesced), odd sizes, one chunk over 1 MiB.
    const sizes = [1, 10, 100, 1000, 70_000, 3, 65_536, 1_200_000, 5];
    let offset = 0;
    for (let i = 0; offset < input.length; i++) {
      const n = sizes[i % sizes.length];
      await out.write(input.subarray(offset, offset + n));
      offset += n;
    }
    const result = await out.commit();
    const onDisk = await Deno.readFile(path);
    assert.deepEqual(new Uint8Array(gunzipSync(onDisk)), input);
    assert.equal(result.path, path);
    assert.equal(result.byteSize, onDisk.length);
    assert.equal(result.sha256, sha256Hex(onDisk));
    assert.equal(result.uncompressedBytes, input.length);
    assert.ok(result.byteSize < input.length / 3, "CSV compresses");
    assert.deepEqual(await listDir(dir), ["streaming.csv.gz"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter creates the file with mode 0600", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "full_reload.csv.gz");
    const out = await GzipFileWriter.create(path);
    assert.equal((await Deno.stat(out.tempPath)).mode! & 0o777, 0o600);
    await out.write(sampleCsv(1000));
    await out.commit();
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter keeps the final name absent until commit", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "streaming.csv.gz");
    const out = await GzipFileWriter.create(path);
    const tempName = out.tempPath.slice(dir.length + 1);
    assert.ok(tempName.startsWith(".tmp-"), tempName);
    assert.equal(out.tempPath, join(dir, tempName));
    for (let i = 0; i < 20; i++) {
      await out.write(sampleCsv(100_000));
      assert.equal(await exists(path), false);
      assert.deepEqual(await listDir(dir), [tempName]);
    }
    await out.commit();
    assert.deepEqual(await listDir(dir), ["streaming.csv.gz"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter.abort removes the temp file and leaves nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = await GzipFileWriter.create(join(dir, "streaming.csv.gz"));
    await out.write(sampleCsv(200_000));
    await out.abort();
    await out.abort(); // idempotent
    assert.deepEqual(await listDir(dir), []);
    await assert.rejects(() => out.write(new Uint8Array(1)), /aborted/);
    await assert.rejects(() => out.commit(), /aborted/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter.abort after commit keeps the committed file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "f.csv.gz");
    const out = await GzipFileWriter.create(path);
    await out.write(sampleCsv(10));
    await out.commit();
    await out.abort();
    assert.deepEqual(await listDir(dir), ["f.csv.gz"]);
    await assert.rejects(() => out.write(new Uint8Array(1)), /published/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter commits an empty file as a valid gzip stream", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "empty.csv.gz");
    const out = await GzipFileWriter.create(path);
    const result = await out.commit();
    const onDisk = await Deno.readFile(path);
    assert.equal(gunzipSync(onDisk).length, 0);
    assert.equal(result.byteSize, onDisk.length);
    assert.equal(result.sha256, sha256Hex(onDisk));
    assert.equal(result.uncompressedBytes, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter replaces a leftover file under the final name on commit", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "f.csv.gz");
    await Deno.writeTextFile(path, "stale");
    const out = await GzipFileWriter.create(path);
    await out.write(new TextEncoder().encode("fresh\n"));
    await out.commit();
    assert.equal(new TextDecoder().decode(gunzipSync(await Deno.readFile(path))), "fresh\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter keeps the order of writes that are not awaited", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "f.csv.gz");
    const out = await GzipFileWriter.create(path);
    const input = sampleCsv(500_000);
    const pending: Promise<void>[] = [];
    for (let o = 0; o < input.length; o += 30_000) {
      pending.push(out.write(input.subarray(o, o + 30_000)));
    }
    await Promise.all(pending);
    await out.commit();
    assert.deepEqual(new Uint8Array(gunzipSync(await Deno.readFile(path))), input);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter honours the compression level", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const input = sampleCsv(1_000_000);
    const sizes: number[] = [];
    for (const level of [1, 9]) {
      const out = await GzipFileWriter.create(join(dir, `l${level}.csv.gz`), { level });
      await out.write(input);
      sizes.push((await out.commit()).byteSize);
    }
    assert.ok(sizes[0] > sizes[1], `level 1 ${sizes[0]} vs level 9 ${sizes[1]}`);
    await assert.rejects(() => GzipFileWriter.create(join(dir, "x"), { level: 10 }), RangeError);
    await assert.rejects(() => GzipFileWriter.create(join(dir, "x"), { level: 2.5 }), RangeError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter.create fails when the directory does not exist", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(
      () => GzipFileWriter.create(join(dir, "missing", "f.csv.gz")),
      Deno.errors.NotFound,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter.seal completes the temp file and publish gives it its final name", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "streaming.csv.gz");
    const input = sampleCsv(300_000);
    const out = await GzipFileWriter.create(path);
    await out.write(input);
    const sealed = await out.seal();
    assert.equal(sealed.tempPath, out.tempPath);
    assert.equal(await exists(path), false);
    const temp = await Deno.readFile(sealed.tempPath);
    assert.equal(sealed.byteSize, temp.length);
    assert.equal(sealed.sha256, sha256Hex(temp));
    assert.deepEqual(new Uint8Array(gunzipSync(temp)), input);
    await assert.rejects(() => out.write(new Uint8Array(1)), /sealed/);
    await out.publish();
    assert.deepEqual(await listDir(dir), ["streaming.csv.gz"]);
    assert.equal(sha256Hex(await Deno.readFile(path)), sealed.sha256);
    await assert.rejects(() => out.publish(), /published/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter.publish refuses a file that is not sealed", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = await GzipFileWriter.create(join(dir, "f.csv.gz"));
    await assert.rejects(() => out.publish(), /open/);
    await out.abort();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter.abort removes a sealed, unpublished file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = await GzipFileWriter.create(join(dir, "f.csv.gz"));
    await out.write(sampleCsv(1000));
    await out.seal();
    await out.abort();
    assert.deepEqual(await listDir(dir), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter uses a given temp path and replaces a leftover there", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const tempPath = join(dir, ".tmp-streaming.csv.gz");
    await Deno.writeTextFile(tempPath, "crashed attempt");
    const out = await GzipFileWriter.create(join(dir, "streaming.csv.gz"), { tempPath });
    assert.equal(out.tempPath, tempPath);
    assert.equal((await Deno.stat(tempPath)).size, 0);
    await out.write(new TextEncoder().encode("row\n"));
    const sealed = await out.seal();
    assert.equal(sealed.tempPath, tempPath);
    assert.equal(new TextDecoder().decode(gunzipSync(await Deno.readFile(tempPath))), "row\n");
    await out.publish();
    assert.deepEqual(await listDir(dir), ["streaming.csv.gz"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter rejects a temp path that is not a .tmp- file next to the target", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "f.csv.gz");
    for (const tempPath of [join(dir, "f.partial"), join(dir, "sub", ".tmp-f"), "/tmp/.tmp-f"]) {
      await assert.rejects(() => GzipFileWriter.create(path, { tempPath }), RangeError);
    }
    assert.deepEqual(await listDir(dir), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const hasStrace = (await new Deno.Command("sh", { args: ["-c", "command -v strace"] }).output())
  .success;

Deno.test({
  name: "GzipFileWriter.seal fsyncs the temp file's directory before it returns",
  // strace shows the syscalls; .ci/run installs it.
  ignore: !hasStrace,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "cdc-seal-" });
  try {
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const script = join(dir, "seal.ts");
    const module = new URL("../../src/write/gzip_file_writer.ts", import.meta.url).href;
    await Deno.writeTextFile(
      script,
      `import { GzipFileWriter } from ${JSON.stringify(module)};
       const w = await GzipFileWriter.create(${JSON.stringify(join(out, "f.csv.gz"))});
       await w.write(new TextEncoder().encode("a,b\\n"));
       await w.seal();
       console.log("SEALED");
       await w.publish();`,
    );
    const log = join(dir, "strace.log");
    const run = await new Deno.Command("strace", {
      args: [
        "-f",
        "-qq",
        "-y",
        "-e",
        "trace=fsync,fdatasync,write,rename",
        "-o",
        log,
        Deno.execPath(),
        "run",
        "-A",
        "--no-config",
        script,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(run.success, new TextDecoder().decode(run.stderr));
    const lines = (await Deno.readTextFile(log)).split("\n");
    const sealed = lines.findIndex((l) => l.includes('"SEALED\\n"'));
    const fileSync = lines.findIndex((l) =>
      /fd?a?t?a?sync\(\d+<[^>]*\/out\/\.tmp-f\.csv\.gz/.test(l)
    );
    // A call another thread interrupts is logged as `fsync(5</dir> <unfinished ...>`.
    const dirSync = lines.findIndex((l, i) =>
      i > fileSync &&
      new RegExp(`sync\\(\\d+<${out.replaceAll("/", "\\/")}>(\\)| <unfinished)`).test(l)
    );
    assert.ok(sealed > 0, "marker not found");
    assert.ok(fileSync >= 0 && fileSync < sealed, "the temp file is fsynced before seal returns");
    assert.ok(
      dirSync > fileSync && dirSync < sealed,
      "the directory is fsynced before seal returns",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter.suspend ends a gzip member; later writes add members and the file reads whole", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const input = sampleCsv(400_000);
    const path = join(dir, "streaming.csv.gz");
    const out = await GzipFileWriter.create(path);
    const cuts = [0, 10, 150_000, 150_001, 399_000, input.length];
    for (let i = 1; i < cuts.length; i++) {
      await out.write(input.slice(cuts[i - 1], cuts[i]));
      await out.suspend();
      assert.equal(out.suspended, true);
      // Suspending twice is harmless; resume reopens.
      await out.suspend();
      if (i % 2 === 0) await out.resume();
    }
    const sealed = await out.seal();
    await out.publish();
    const bytes = await Deno.readFile(path);
    assert.equal(sealed.byteSize, bytes.length);
    assert.equal(sealed.sha256, sha256Hex(bytes));
    assert.equal(sealed.uncompressedBytes, input.length);
    assert.deepEqual(new Uint8Array(gunzipSync(bytes)), input);
    // The gzip command reads every member too.
    const gz = await new Deno.Command("gzip", { args: ["-dc", path], stdout: "piped" }).output();
    assert.ok(gz.success);
    assert.deepEqual(gz.stdout, input);
    // Five members: the gzip magic appears at each member's start.
    let members = 0;
    for (let i = 0; i + 2 < bytes.length; i++) {
      if (bytes[i] === 0x1f && bytes[i + 1] === 0x8b && bytes[i + 2] === 8) members++;
    }
    assert.ok(members >= 5, `expected at least 5 members, found ${members}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GzipFileWriter.seal without sync leaves a complete file; abort after suspend removes it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const input = sampleCsv(10_000);
    const a = await GzipFileWriter.create(join(dir, "a.csv.gz"));
    await a.write(input);
    await a.suspend();
    const sealed = await a.seal({ sync: false });
    assert.deepEqual(new Uint8Array(gunzipSync(await Deno.readFile(sealed.tempPath))), input);
    await a.publish({ sync: false });
    assert.deepEqual(await listDir(dir), ["a.csv.gz"]);
    const b = await GzipFileWriter.create(join(dir, "b.csv.gz"));
    await b.write(input);
    await b.suspend();
    await b.abort();
    assert.deepEqual(await listDir(dir), ["a.csv.gz"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
