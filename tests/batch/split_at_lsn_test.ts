import assert from "node:assert/strict";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { splitAtLsn } from "../../src/batch/split_at_lsn.ts";
import { parseLsn } from "../../src/lsn.ts";
import { GzipFileWriter } from "../../src/write/gzip_file_writer.ts";

const HEADER =
  "_cdc_op,_cdc_lsn,_cdc_seq,_cdc_commit_ts,_cdc_xid,_cdc_unchanged_cols,_cdc_old_key,id,v\n";
const ROWS = [
  'I,0/100,0,2026-11-29T10:00:00.000000Z,7,,,1,"a,""quoted""\nnewline"\n',
  "U,0/100,1,2026-11-29T10:00:00.000000Z,7,,,1,b\n",
  'I,0/1F0,0,2026-11-29T10:00:01.000000Z,8,,,2,""\n',
  "D,0/200,0,2026-11-29T10:00:02.000000Z,9,,,2,\n",
  "I,0/200,1,2026-11-29T10:00:02.000000Z,9,,,3,x\n",
];

async function source(dir: string, rows: string[]): Promise<string> {
  const final = join(dir, "src.csv.gz");
  const w = await GzipFileWriter.create(final);
  await w.write(new TextEncoder().encode(HEADER + rows.join("")));
  return (await w.seal()).tempPath;
}

const read = async (path: string) =>
  new TextDecoder().decode(gunzipSync(await Deno.readFile(path)));

Deno.test("splitAtLsn() puts rows before the LSN in one file and the rest in another", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const src = await source(dir, ROWS);
    const out = await splitAtLsn(
      src,
      parseLsn("0/200"),
      { finalPath: join(dir, "a.csv.gz"), tempPath: join(dir, ".tmp-a.csv.gz") },
      { finalPath: join(dir, "b.csv.gz"), tempPath: join(dir, ".tmp-b.csv.gz") },
    );
    assert.equal(out.before!.rows, 3);
    assert.deepEqual(out.before!.first, { lsn: parseLsn("0/100"), seq: 0 });
    assert.deepEqual(out.before!.last, { lsn: parseLsn("0/1F0"), seq: 0 });
    assert.equal(out.after!.rows, 2);
    assert.deepEqual(out.after!.first, { lsn: parseLsn("0/200"), seq: 0 });
    assert.equal(await read(join(dir, ".tmp-a.csv.gz")), HEADER + ROWS.slice(0, 3).join(""));
    assert.equal(await read(join(dir, ".tmp-b.csv.gz")), HEADER + ROWS.slice(3).join(""));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("splitAtLsn() writes no file for a side without rows", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const src = await source(dir, ROWS);
    const out = await splitAtLsn(
      src,
      parseLsn("0/50"),
      { finalPath: join(dir, "a.csv.gz"), tempPath: join(dir, ".tmp-a.csv.gz") },
      { finalPath: join(dir, "b.csv.gz"), tempPath: join(dir, ".tmp-b.csv.gz") },
    );
    assert.equal(out.before, null);
    assert.equal(out.after!.rows, 5);
    const names = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
    assert.deepEqual(names.filter((n) => !n.startsWith(".tmp-src")), [".tmp-b.csv.gz"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("splitAtLsn() rejects a file that ends in the middle of a row", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const src = await source(dir, ['I,0/100,0,t,7,,,1,"open quote\n']);
    await assert.rejects(
      splitAtLsn(
        src,
        parseLsn("0/200"),
        { finalPath: join(dir, "a.csv.gz"), tempPath: join(dir, ".tmp-a.csv.gz") },
        { finalPath: join(dir, "b.csv.gz"), tempPath: join(dir, ".tmp-b.csv.gz") },
      ),
      SyntaxError,
    );
    assert.equal(await Deno.stat(join(dir, ".tmp-a.csv.gz")).catch(() => null), null);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
