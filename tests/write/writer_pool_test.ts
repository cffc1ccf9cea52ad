import assert from "node:assert/strict";
import { gunzipSync } from "node:zlib";
import { join } from "node:path";
import { WriterPool } from "../../src/write/writer_pool.ts";
import type { GzipFileWriter } from "../../src/write/gzip_file_writer.ts";

const text = (s: string) => new TextEncoder().encode(s);

Deno.test("WriterPool keeps at most its capacity open and suspends the least recently used", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const pool = new WriterPool(3);
    const writers: GzipFileWriter[] = [];
    for (let i = 0; i < 10; i++) {
      const w = await pool.create(join(dir, `f${i}.csv.gz`));
      await w.write(text(`head ${i}\n`));
      writers.push(w);
      assert.ok(pool.openCount <= 3);
    }
    assert.equal(pool.openCount, 3);
    assert.deepEqual(writers.map((w) => w.suspended), [
      ...Array(7).fill(true),
      false,
      false,
      false,
    ]);
    // Using f0 again reopens it and suspends the least recently used (f7).
    await pool.use(writers[0]);
    await writers[0].write(text("more 0\n"));
    assert.equal(writers[0].suspended, false);
    assert.equal(writers[7].suspended, true);
    assert.equal(pool.openCount, 3);
    // Touching an open writer only changes the order: f8 is now the oldest.
    await pool.use(writers[9]);
    await pool.use(writers[3]);
    assert.equal(writers[8].suspended, true);
    assert.equal(writers[9].suspended, false);
    for (const [i, w] of writers.entries()) {
      const sealed = await w.seal();
      pool.release(w);
      const want = i === 0 ? "head 0\nmore 0\n" : `head ${i}\n`;
      assert.equal(
        new TextDecoder().decode(gunzipSync(await Deno.readFile(sealed.tempPath))),
        want,
      );
    }
    assert.equal(pool.openCount, 0);
    assert.ok(pool.suspensions >= 8);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("WriterPool() refuses a capacity below one", () => {
  assert.throws(() => new WriterPool(0), RangeError);
});
