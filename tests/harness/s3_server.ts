/**
 * An S3-compatible server for the tests: s3rver in a child process on a free
 * port with a throwaway directory, plus what tests ask of it directly (the
 * keys in a bucket, multipart uploads left incomplete).
 */

import { fileURLToPath as fromFileUrl } from "node:url";
import { join } from "node:path";
import { dirname } from "node:path";
import { GetObjectCommand, ListObjectsCommand, S3Client } from "@aws-sdk/client-s3";

const MAIN = fromFileUrl(new URL("./s3rver_main.ts", import.meta.url));
const CONFIG = fromFileUrl(new URL("../../deno.json", import.meta.url));

/** s3rver's fixed credentials. */
export const S3_TEST_CREDENTIALS = { AWS_ACCESS_KEY_ID: "S3RVER", AWS_SECRET_ACCESS_KEY: "S3RVER" };

/** A running s3rver. */
export class S3Server {
  readonly dir: string;
  readonly port: number;
  readonly #child: Deno.ChildProcess;

  private constructor(dir: string, port: number, child: Deno.ChildProcess) {
    this.dir = dir;
    this.port = port;
    this.#child = child;
  }

  /** Starts s3rver with `buckets` created. */
  static async start(buckets: string[] = ["cdc"]): Promise<S3Server> {
    const dir = await Deno.makeTempDir({ prefix: "cdc-s3rver-" });
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--config", CONFIG, MAIN, dir, ...buckets],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) {
        const err = await new Response(child.stderr).text();
        throw new Error(`s3rver did not start: ${err}`);
      }
      text += value;
    }
    reader.releaseLock();
    child.stderr.cancel().catch(() => {});
    child.stdout.cancel().catch(() => {});
    const { port } = JSON.parse(text.split("\n")[0]);
    return new S3Server(dir, port, child);
  }

  /** `http://127.0.0.1:PORT`. */
  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Environment for a CLI run against `s3://bucket/prefix` here (through `endpoint` if given). */
  env(endpoint = this.endpoint): Record<string, string> {
    return {
      ...S3_TEST_CREDENTIALS,
      CDC_S3_ENDPOINT: endpoint,
      CDC_S3_REGION: "us-east-1",
      CDC_S3_FORCE_PATH_STYLE: "true",
    };
  }

  /** A client for the tests' own looks into the bucket. */
  client(): S3Client {
    return new S3Client({
      endpoint: this.endpoint,
      region: "us-east-1",
      forcePathStyle: true,
      credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
    });
  }

  /**
   * Every key in `bucket` under `prefix`, sorted. ListObjects (v1) with
   * markers: s3rver's v2 continuation tokens use DES, which Deno's
   * node:crypto lacks, so a truncated v2 listing fails with a 500 here.
   */
  async keys(bucket: string, prefix = ""): Promise<string[]> {
    return [...(await this.objects(bucket, prefix)).keys()].sort();
  }

  /** Every object in `bucket` under `prefix`, with its size. */
  async objects(bucket: string, prefix = ""): Promise<Map<string, number>> {
    const client = this.client();
    const out = new Map<string, number>();
    let marker: string | undefined;
    try {
      while (true) {
        const res = await client.send(
          new ListObjectsCommand({ Bucket: bucket, Prefix: prefix, Marker: marker }),
        );
        for (const o of res.Contents ?? []) out.set(o.Key!, o.Size ?? 0);
        if (!res.IsTruncated || !res.Contents?.length) break;
        marker = res.Contents.at(-1)!.Key;
      }
    } finally {
      client.destroy();
    }
    return out;
  }

  /**
   * Ids of multipart uploads begun and neither completed nor aborted in
   * `bucket` (s3rver keeps each in a folder; it has no ListMultipartUploads).
   */
  async incompleteUploads(bucket: string): Promise<string[]> {
    const out: string[] = [];
    for await (const e of Deno.readDir(join(this.dir, bucket))) {
      if (!e.isDirectory || !e.name.endsWith("uploads")) continue;
      for await (const u of Deno.readDir(join(this.dir, bucket, e.name))) out.push(u.name);
    }
    return out.sort();
  }

  /**
   * Makes `dir` hold exactly the objects of `bucket` under `prefix/` (keys
   * relative to it): downloads new or changed ones, removes files that are
   * not objects any more. Tests read the mirror like a local data dir.
   */
  async mirror(bucket: string, prefix: string, dir: string): Promise<void> {
    const objects = await this.objects(bucket, `${prefix}/`);
    const wanted = new Set([...objects.keys()].map((k) => k.slice(prefix.length + 1)));
    const client = this.client();
    try {
      for (const rel of wanted) {
        // Keys are written once: a file of the same size is that object already.
        const size = await Deno.stat(join(dir, rel)).then((i) => i.size, () => -1);
        if (size === objects.get(`${prefix}/${rel}`)) continue;
        const res = await client.send(
          new GetObjectCommand({ Bucket: bucket, Key: `${prefix}/${rel}` }),
        );
        const bytes = await res.Body!.transformToByteArray();
        await Deno.mkdir(dirname(join(dir, rel)), { recursive: true });
        await Deno.writeFile(join(dir, rel), bytes);
      }
    } finally {
      client.destroy();
    }
    const walk = async (sub: string): Promise<void> => {
      for await (const e of Deno.readDir(join(dir, sub))) {
        const rel = sub ? `${sub}/${e.name}` : e.name;
        if (e.isDirectory) {
          await walk(rel);
          // A folder whose objects are all gone (deleted by recovery) goes too, like in a bucket.
          await Deno.remove(join(dir, rel)).catch(() => {});
        } else if (!wanted.has(rel)) await Deno.remove(join(dir, rel));
      }
    };
    await walk("");
  }

  /** Stops the server and removes its files. */
  async stop(): Promise<void> {
    try {
      this.#child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await this.#child.status;
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}
