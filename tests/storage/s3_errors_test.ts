/**
 * Bad object-storage settings, through the CLI with the binary's
 * permissions: one clear line, the right exit code, no secret, nothing
 * written. The bucket is checked before anything else, so no PostgreSQL is
 * needed here.
 */

import assert from "node:assert/strict";
import { runCli } from "../harness/cli.ts";
import { S3_TEST_CREDENTIALS, S3Server } from "../harness/s3_server.ts";

const SECRET = "wJalrXUtnFEMI-K7MDENG-not-a-real-key";

Deno.test("stream, verify and materialize give one clear line for bad S3 settings", async () => {
  const server = await S3Server.start(["cdc"]);
  const spool = await Deno.makeTempDir();
  const free = Deno.listen({ port: 0 });
  const closedPort = (free.addr as Deno.NetAddr).port;
  free.close();
  const base = {
    CDC_SOURCE_URL: "postgres://u:pgsecret@127.0.0.1:1/db",
    CDC_SPOOL_DIR: spool,
    ...server.env(),
    CDC_DATA_DIR: "s3://cdc/data",
  };
  const cases: { env: Record<string, string>; code: number; line: RegExp; cmds?: string[] }[] = [
    {
      env: { CDC_DATA_DIR: "s3://" },
      code: 2,
      line:
        /^error: Cannot use CDC_DATA_DIR "s3:\/\/": no bucket name; expected s3:\/\/bucket\/prefix$/,
    },
    {
      env: { CDC_DATA_DIR: "s3://Bad_Bucket/x" },
      code: 2,
      line: /^error: Cannot use CDC_DATA_DIR ".*": "Bad_Bucket" is not a valid bucket name/,
    },
    {
      env: { CDC_DATA_DIR: "s3://nosuchbucket/data" },
      code: 1,
      line: new RegExp(
        `^error: Cannot use bucket "nosuchbucket" at ${server.endpoint}: the bucket does not exist$`,
      ),
    },
    {
      env: { AWS_ACCESS_KEY_ID: "AKIAWRONG", AWS_SECRET_ACCESS_KEY: SECRET },
      code: 1,
      line:
        /^error: Cannot (use|write to) bucket "cdc" at .*: access denied .*check the AWS credentials and the bucket policy$/,
    },
    {
      env: { CDC_S3_ENDPOINT: `http://127.0.0.1:${closedPort}` },
      code: 1,
      line:
        /^error: Cannot use bucket "cdc" at http:\/\/127\.0\.0\.1:\d+: .*\(after \d+ attempts\)$/,
    },
    {
      env: { CDC_S3_ENDPOINT: "127.0.0.1:9000" },
      code: 2,
      line:
        /^error: Cannot use CDC_S3_ENDPOINT "127\.0\.0\.1:9000": expected an http\(s\):\/\/ URL$/,
    },
  ];
  try {
    for (const c of cases) {
      for (const cmd of c.cmds ?? ["stream", "verify", "materialize"]) {
        const args = cmd === "materialize" ? [cmd, "--to", `csv:${spool}/out`] : [cmd];
        const r = await runCli(args, { ...base, ...c.env });
        const what = `${cmd} with ${JSON.stringify(c.env)}`;
        // verify exits 2 whenever it cannot run (1 means it found problems).
        assert.equal(r.code, cmd === "verify" ? 2 : c.code, `${what}: ${r.stderr}`);
        const lines = r.stderr.trimEnd().split("\n");
        assert.equal(lines.length, 1, `${what}: one line, got ${r.stderr}`);
        assert.match(lines[0], c.line, what);
        for (const secret of [SECRET, "pgsecret", S3_TEST_CREDENTIALS.AWS_SECRET_ACCESS_KEY]) {
          assert(!r.stderr.includes(secret) && !r.stdout.includes(secret), `${what}: secret`);
        }
      }
    }
    // Nothing was written: the spool holds no file, the bucket no object.
    assert.deepEqual(await Array.fromAsync(Deno.readDir(spool)), []);
    assert.deepEqual(await server.keys("cdc"), []);
  } finally {
    await server.stop();
    await Deno.remove(spool, { recursive: true });
  }
});
