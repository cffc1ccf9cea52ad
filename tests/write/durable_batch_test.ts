import assert from "node:assert/strict";
import { join } from "node:path";
import { DurableBatch } from "../../src/write/durable_batch.ts";
import { eachLimited } from "../../src/write/each_limited.ts";

Deno.test("eachLimited() runs at most `limit` at once and waits for all before it throws", async () => {
  let running = 0;
  let peak = 0;
  const done: number[] = [];
  const items = Array.from({ length: 50 }, (_, i) => i);
  await assert.rejects(
    eachLimited(items, 4, async (i) => {
      running++;
      peak = Math.max(peak, running);
      await new Promise((r) => setTimeout(r, i % 3));
      running--;
      if (i === 10) throw new Error("item 10 failed");
      done.push(i);
    }),
    /item 10 failed/,
  );
  assert.equal(peak, 4);
  assert.equal(running, 0, "a call was still running when eachLimited() threw");
  assert.ok(!done.includes(10));
});

Deno.test("DurableBatch mkdir() creates the missing folders 0700 and refuses paths outside the root", async () => {
  const root = await Deno.makeTempDir();
  try {
    const batch = new DurableBatch();
    const dir = join(root, "public.t", "20261124T170500.123Z");
    batch.mkdir(dir, root);
    assert.equal((await Deno.stat(dir)).mode! & 0o777, 0o700);
    assert.equal((await Deno.stat(join(root, "public.t"))).mode! & 0o777, 0o700);
    // Both parents got a new entry: the root and the table folder.
    assert.equal(batch.pending, 2);
    batch.mkdir(join(root, "public.t", "20261124T170600.000Z"), root);
    assert.equal(batch.pending, 2, "the table folder is noted once");
    await batch.flush();
    assert.equal(batch.pending, 0);
    assert.throws(() => batch.mkdir(join(root, "..", "escape"), root), RangeError);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("DurableBatch writeFile() leaves the complete file under its name and no temp file", async () => {
  const root = await Deno.makeTempDir();
  try {
    const batch = new DurableBatch();
    const path = join(root, "schema.yml");
    batch.writeFile(path, new TextEncoder().encode("schema: x\n"));
    batch.rename(path, join(root, "renamed.yml"));
    await batch.flush();
    assert.deepEqual(
      (await Array.fromAsync(Deno.readDir(root))).map((e) => e.name),
      ["renamed.yml"],
    );
    assert.equal(await Deno.readTextFile(join(root, "renamed.yml")), "schema: x\n");
    assert.equal((await Deno.stat(join(root, "renamed.yml"))).mode! & 0o777, 0o600);
    // A file that exists is replaced whole.
    batch.writeFile(join(root, "renamed.yml"), new TextEncoder().encode("y\n"));
    assert.equal(await Deno.readTextFile(join(root, "renamed.yml")), "y\n");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
