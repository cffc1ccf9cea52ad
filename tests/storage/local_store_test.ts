import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { LocalStore } from "../../src/storage/local_store.ts";

Deno.test("LocalStore puts a file complete under its key, heads, reads and deletes it", async () => {
  const root = await Deno.makeTempDir();
  const src = join(await Deno.makeTempDir(), "f");
  try {
    const bytes = new TextEncoder().encode("a,b\n1,2\n");
    await Deno.writeFile(src, bytes);
    const sha256 = createHash("sha256").update(bytes).digest("hex");
    const s = new LocalStore(root);
    assert.equal(s.url, root);
    await s.putFile("public.t/b1/streaming.csv.gz", src, { sha256 });
    assert.deepEqual(await s.head("public.t/b1/streaming.csv.gz"), { size: bytes.length, sha256 });
    const info = await Deno.stat(join(root, "public.t/b1/streaming.csv.gz"));
    assert.equal(info.mode! & 0o777, 0o600);
    assert.deepEqual(
      await Array.fromAsync(Deno.readDir(join(root, "public.t/b1"))).then((e) =>
        e.map((x) => x.name)
      ),
      ["streaming.csv.gz"],
      "no temp file left",
    );
    const read = new Uint8Array(
      await new Response(await s.get("public.t/b1/streaming.csv.gz")).arrayBuffer(),
    );
    assert.deepEqual(read, bytes);
    await s.delete("public.t/b1/streaming.csv.gz");
    await s.delete("public.t/b1/streaming.csv.gz");
    assert.equal(await s.head("public.t/b1/streaming.csv.gz"), null);
    await assert.rejects(s.putFile("../escape", src, { sha256 }), RangeError);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
