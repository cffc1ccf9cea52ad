/**
 * Runs s3rver (npm, 3.7.1) as its own process for the tests:
 * `deno run -A tests/harness/s3rver_main.ts <dir> <bucket>...`; prints
 * `{"port":N}` once it listens and serves until killed.
 *
 * s3rver 3.7.1 answers AbortMultipartUpload with 405 MethodNotAllowed, so
 * this adds that one S3 operation in front of it, as AWS implements it:
 * DELETE /<bucket>/<key>?uploadId=ID removes the upload's parts (204), and
 * an unknown id is 404 NoSuchUpload. Everything else is s3rver's own.
 */

import { join } from "node:path";
import S3rver from "s3rver";

const [directory, ...buckets] = Deno.args;
const server = new S3rver({
  port: 0,
  address: "127.0.0.1",
  silent: true,
  directory,
  configureBuckets: buckets.map((name) => ({ name })),
});

// deno-lint-ignore no-explicit-any
type Ctx = any;
const abortMultipart = async (ctx: Ctx, next: () => Promise<void>) => {
  const uploadId = ctx.query?.uploadId;
  if (ctx.method !== "DELETE" || typeof uploadId !== "string") return await next();
  const bucket = decodeURIComponent(ctx.path.split("/")[1] ?? "");
  const uploads = server.store.getResourcePath(bucket, undefined, "uploads");
  const dir = join(uploads, uploadId.replace(/[^0-9a-zA-Z]/g, ""));
  try {
    await Deno.remove(dir, { recursive: true });
    ctx.status = 204;
  } catch {
    ctx.status = 404;
    ctx.type = "application/xml";
    ctx.body =
      `<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchUpload</Code><Message>The specified upload does not exist.</Message></Error>`;
  }
};
// Before s3rver's router, which would answer 405.
(server as unknown as { middleware: unknown[] }).middleware.unshift(abortMultipart);

const info = await server.run();
console.log(JSON.stringify({ port: info.port }));
