import assert from "node:assert/strict";
import {
  fitOpenFiles,
  probeOpenFiles,
  reservedDescriptors,
} from "../../src/write/open_file_limit.ts";
import { CdcError } from "../../src/errors.ts";

Deno.test("fitOpenFiles() keeps the pool as asked when the descriptors suffice", () => {
  assert.deepEqual(fitOpenFiles(128, 4, null), { pool: 128, available: null, lowered: false });
  assert.deepEqual(fitOpenFiles(128, 4, 128 + reservedDescriptors(4)).pool, 128);
});

Deno.test("fitOpenFiles() shrinks the pool to what the limit leaves after the reserve", () => {
  const plan = fitOpenFiles(128, 4, reservedDescriptors(4) + 20);
  assert.deepEqual(plan, { pool: 20, available: reservedDescriptors(4) + 20, lowered: true });
});

Deno.test("fitOpenFiles() refuses a limit that leaves no room, naming the fix", () => {
  assert.throws(
    () => fitOpenFiles(128, 4, 50),
    (e: unknown) =>
      e instanceof CdcError && e.code === "config" && /LimitNOFILE/.test(e.message) &&
      /only 50 free file descriptors/.test(e.message),
  );
});

Deno.test("probeOpenFiles() counts what fits under ulimit -n and leaves nothing behind", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // In this process: plenty of room for 50.
    assert.equal(await probeOpenFiles(dir, 50), 50);
    // In a child under a limit of 200: fewer than 1,000 fit.
    const module = new URL("../../src/write/open_file_limit.ts", import.meta.url).href;
    const code = `import { probeOpenFiles } from ${JSON.stringify(module)};
      console.log(await probeOpenFiles(${JSON.stringify(dir)}, 1000));`;
    const out = await new Deno.Command("bash", {
      args: ["-c", `ulimit -n 200 && exec "$0" eval "$1"`, Deno.execPath(), code],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const got = Number(new TextDecoder().decode(out.stdout).trim());
    assert.ok(got > 100 && got < 200, `probe found ${got}`);
    assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
