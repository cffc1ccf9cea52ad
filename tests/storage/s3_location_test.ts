import assert from "node:assert/strict";
import { loadConfig } from "../../src/config.ts";
import { isS3Url, objectKey, parseS3Url } from "../../src/storage/s3_location.ts";

Deno.test("parseS3Url() takes a bucket and an optional prefix, trimmed of slashes", () => {
  assert.deepEqual(parseS3Url("s3://cdc"), { bucket: "cdc", prefix: "" });
  assert.deepEqual(parseS3Url("s3://cdc/"), { bucket: "cdc", prefix: "" });
  assert.deepEqual(parseS3Url("s3://my.bucket-1/a/b/"), { bucket: "my.bucket-1", prefix: "a/b" });
  assert.equal(objectKey(parseS3Url("s3://cdc/a/b"), "t/x/f.gz"), "a/b/t/x/f.gz");
  assert.equal(objectKey(parseS3Url("s3://cdc"), "t/x/f.gz"), "t/x/f.gz");
  assert(isS3Url("S3://cdc"));
  assert(!isS3Url("./s3:/x"));
});

Deno.test("parseS3Url() rejects a missing or invalid bucket and unsafe prefixes, in one line", () => {
  const cases: [string, RegExp][] = [
    ["s3://", /no bucket name/],
    ["s3:///prefix", /no bucket name/],
    ["s3://UPPER/x", /"UPPER" is not a valid bucket name/],
    ["s3://a/x", /"a" is not a valid bucket name/],
    ["s3://b..c/x", /not a valid bucket name/],
    ["s3://cdc/a//b", /empty, \. or \.\. segment/],
    ["s3://cdc/a/../b", /empty, \. or \.\. segment/],
    ["s3://cdc/a?x=1", /not an s3:\/\/ URL/],
    ["s3:/cdc", /not an s3:\/\/ URL/],
  ];
  for (const [raw, why] of cases) {
    assert.throws(() => parseS3Url(raw), (e: Error) => {
      assert(e instanceof TypeError);
      assert.match(e.message, /^Cannot use --data-dir ".*": .*; expected s3:\/\/bucket\/prefix$/);
      assert.match(e.message, why);
      return true;
    }, raw);
  }
});

Deno.test("loadConfig: s3 settings from flags, environment and YAML; bad ones name their origin", async () => {
  const env = (vars: Record<string, string>) => (k: string) => vars[k];
  const c = await loadConfig(
    { "data-dir": "s3://cdc/p" },
    env({
      CDC_S3_ENDPOINT: "http://127.0.0.1:9000/",
      CDC_S3_FORCE_PATH_STYLE: "true",
      CDC_S3_REGION: "eu-west-1",
      CDC_S3_PART_SIZE: "8MiB",
    }),
  );
  assert.equal(c.dataDir, "s3://cdc/p");
  assert.equal(c.s3Endpoint, "http://127.0.0.1:9000");
  assert.equal(c.s3ForcePathStyle, true);
  assert.equal(c.s3Region, "eu-west-1");
  assert.equal(c.s3PartSize, 8 * 1024 * 1024);
  assert.equal(c.spoolDir, "./spool");
  assert.equal(c.s3TimeoutMs, 30_000);

  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/c.yml`, "data_dir: s3://cdc\ns3_force_path_style: true\n");
    const y = await loadConfig({ config: `${dir}/c.yml` }, env({}));
    assert.equal(y.s3ForcePathStyle, true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }

  const bad: [Record<string, string>, RegExp][] = [
    [{ "data-dir": "s3://" }, /^Cannot use --data-dir "s3:\/\/": no bucket name/],
    [{ "data-dir": "gs://x/y" }, /only local directories and s3:\/\/bucket\/prefix/],
    [{ "s3-endpoint": "not a url" }, /^Cannot use --s3-endpoint "not a url": expected an http/],
    [{ "s3-endpoint": "ftp://h" }, /expected an http\(s\):\/\/ URL/],
    [{ "s3-force-path-style": "maybe" }, /expected true or false/],
    [{ "s3-part-size": "1MiB" }, /at least 5MiB/],
  ];
  for (const [flags, why] of bad) {
    await assert.rejects(loadConfig(flags, env({})), (e: Error) => {
      assert.match(e.message, why);
      return true;
    });
  }
  // A secret in the endpoint is refused without being echoed.
  await assert.rejects(
    loadConfig({ "s3-endpoint": "http://AKIA:topsecret@minio:9000" }, env({})),
    (e: Error) => !e.message.includes("topsecret") && /credentials do not belong/.test(e.message),
  );
});
