/**
 * The permission flags of the compiled binary, derived from the settings it
 * is built for: network only to the source and registry hosts and the
 * metrics address, read and write only in the data dir (plus reading the
 * config file, ~/.pgpass and the TLS files the settings name or libpq
 * looks for by default), and only the environment variables it reads.
 * Tests run main.ts with exactly the flags this gives for their settings.
 */

import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { type Config, DEFAULTS, loadConfigSync, SETTINGS } from "../src/config.ts";
import { tlsFilePaths } from "../src/source/tls_settings.ts";
import { parseTargetSpec, targetPaths, type TargetSpec } from "../src/materialize/target_spec.ts";
import { isS3Url, parseS3Url } from "../src/storage/s3_location.ts";

/** Environment variables cdc-egress and the pg driver read. */
export const ENV_VARS: readonly string[] = [
  "CDC_*",
  "PG*",
  "USER",
  "HOME",
  "NODE_PG_FORCE_NATIVE",
  "NO_COLOR",
  // npm:yaml reads these debug switches on every parse (config file, schema.yml).
  "LOG_TOKENS",
  "LOG_STREAM",
  // The AWS SDK's credential chain and settings (object storage); it finds
  // the home directory and the trace id of AWS Lambda by these names.
  "AWS_*",
  "USERPROFILE",
  "HOMEPATH",
  "HOMEDRIVE",
  "_X_AMZN_TRACE_ID",
];

/**
 * V8 settings of the binary, passed with its permission flags. The stream's
 * garbage is short-lived and its live heap small (about 60 MB with 10,000
 * tables), but V8's defaults let the heap grow to about twice the live set
 * and keep 16 MB semi-spaces. Measured with `deno task bench --only wide
 * --tables 10000`: peak RSS with 10,000 batches open 217 MB with these
 * flags, 271-290 MB without, at no measurable cost to the export rate.
 */
export const V8_FLAGS = "--v8-flags=--max-semi-space-size=4,--heap-growing-percent=30";

/**
 * What an `s3://` data dir needs: the endpoint (or AWS's S3 and STS hosts
 * for the region), the instance metadata service, and the shared config,
 * credentials and web identity token files of the credential chain.
 */
export function s3Permissions(
  config: Config,
  env: (k: string) => string | undefined,
): { net: string[]; read: string[] } {
  const net: string[] = [];
  if (config.s3Endpoint) {
    const u = new URL(config.s3Endpoint);
    net.push(`${u.hostname}:${u.port || (u.protocol === "https:" ? "443" : "80")}`);
  } else {
    const region = config.s3Region ?? env("AWS_REGION") ?? env("AWS_DEFAULT_REGION") ??
      "us-east-1";
    let bucket = "";
    try {
      bucket = parseS3Url(config.dataDir).bucket;
    } catch {
      // the CLI reports a bad URL itself
    }
    net.push(`s3.${region}.amazonaws.com:443`, `s3.amazonaws.com:443`);
    if (bucket) net.push(`${bucket}.s3.${region}.amazonaws.com:443`);
  }
  // Web identity (IRSA) and instance metadata (EC2, ECS).
  const region = config.s3Region ?? env("AWS_REGION") ?? "us-east-1";
  net.push(`sts.${region}.amazonaws.com:443`, "sts.amazonaws.com:443", "169.254.169.254:80");
  net.push("169.254.170.2:80");
  const home = env("HOME") ?? "/nonexistent";
  const read = [
    env("AWS_CONFIG_FILE") ?? `${home}/.aws/config`,
    env("AWS_SHARED_CREDENTIALS_FILE") ?? `${home}/.aws/credentials`,
  ];
  const token = env("AWS_WEB_IDENTITY_TOKEN_FILE");
  if (token) read.push(token);
  return { net, read };
}

function hostOf(url: string | undefined, env: (k: string) => string | undefined): string {
  if (!url) return `${env("PGHOST") || "localhost"}:${env("PGPORT") || "5432"}`;
  try {
    const u = new URL(url);
    return `${u.hostname || "localhost"}:${u.port || "5432"}`;
  } catch {
    return "localhost:5432";
  }
}

/**
 * Where Deno keeps the DuckDB native addon (`@duckdb/node-bindings-*`):
 * `materialize` into duckdb:, csv: or parquet: loads it with `process.dlopen`,
 * which needs --allow-ffi (and read) for that directory only.
 */
export function duckdbAddonDir(env: (k: string) => string | undefined): string {
  const home = env("HOME") ?? "/root";
  const denoDir = env("DENO_DIR") ?? `${env("XDG_CACHE_HOME") ?? `${home}/.cache`}/deno`;
  return `${denoDir}/npm/registry.npmjs.org/@duckdb`;
}

/**
 * V8 heap settings of a `materialize` build. Folding a million changes makes
 * short-lived garbage, and V8's defaults (large young generation, old
 * generation grown in big steps) let the heap reach 110-150 MB around 20 MB
 * of live objects, on top of the target's own memory: a young generation of
 * 2 MB and an old one grown by 10% keep it near 30 MB (measured with
 * `deno task bench --only materialize`). V8 keeps the pages a collection
 * frees in a pool for 8 s by default; `--memory-pool-timeout=0` returns
 * them at once (about 25 MB less before DuckDB's load), and `--expose-gc`
 * lets a DuckDB rebuild collect the fold's garbage before that load.
 */
export const MATERIALIZE_V8_FLAGS =
  "--v8-flags=--max-semi-space-size=2,--heap-growing-percent=10,--memory-pool-timeout=0,--expose-gc";

/** Flags for a resolved configuration (and a `materialize --to` target, if any). */
export function permissionFlags(
  config: Config,
  options: {
    configPath?: string;
    env?: (k: string) => string | undefined;
    target?: TargetSpec;
  } = {},
): string[] {
  const env = options.env ?? ((k: string) => Deno.env.get(k));
  const net = new Set([hostOf(config.sourceUrl, env)]);
  if (config.registryUrl) net.add(hostOf(config.registryUrl, env));
  const at = config.metricsAddr.lastIndexOf(":");
  const metricsHost = config.metricsAddr.slice(0, at) || "0.0.0.0";
  const metricsPort = config.metricsAddr.slice(at + 1);
  // Port 0 asks the system for a free port, so only the host can be named.
  net.add(metricsPort === "0" ? metricsHost : config.metricsAddr);
  const dataDir = resolve(isS3Url(config.dataDir) ? config.spoolDir : config.dataDir);
  const read = [dataDir];
  const write = [dataDir];
  const extra: string[] = [];
  if (isS3Url(config.dataDir)) {
    const s3 = s3Permissions(config, env);
    for (const n of s3.net) net.add(n);
    read.push(...s3.read);
    // The SDK's user agent names the OS release.
    extra.push("--allow-sys=osRelease");
  }
  const target = options.target;
  // One set of V8 flags: a materialize build's, or every other command's.
  extra.push(target ? MATERIALIZE_V8_FLAGS : V8_FLAGS);
  if (target?.kind === "postgres") net.add(hostOf(target.url, env));
  else if (target) {
    const paths = targetPaths(target);
    read.push(...paths.read.map((p) => resolve(p)));
    write.push(...paths.write.map((p) => resolve(p)));
    const addon = duckdbAddonDir(env);
    read.push(addon);
    extra.push(`--allow-ffi=${addon}`);
  }
  if (options.configPath) read.push(resolve(options.configPath));
  const home = env("HOME");
  read.push(env("PGPASSFILE") ?? (home ? `${home}/.pgpass` : "/nonexistent/.pgpass"));
  // TLS files: sslrootcert/sslcert/sslkey/sslcrl of each URL, the PGSSL*
  // variables and libpq's defaults under ~/.postgresql/.
  for (const url of [config.sourceUrl, config.registryUrl]) {
    for (const path of tlsFilePaths(url, env)) if (!read.includes(path)) read.push(path);
  }
  return [
    `--allow-net=${[...net].join(",")}`,
    `--allow-read=${read.join(",")}`,
    `--allow-write=${write.join(",")}`,
    `--allow-env=${ENV_VARS.join(",")}`,
    ...extra,
    "--no-prompt",
  ];
}

/**
 * Flags for a command line and environment, resolved like the CLI resolves
 * them. Bad settings still give flags (the CLI must be able to report them).
 */
export function permissionFlagsFor(
  args: string[],
  env: Record<string, string | undefined>,
): string[] {
  const options: Record<string, { type: "string" | "boolean" }> = {
    config: { type: "string" },
    to: { type: "string" },
  };
  for (const s of SETTINGS) options[s.flag] = { type: "string" };
  let values: Record<string, string | boolean | undefined> = {};
  try {
    values = parseArgs({ args, options, strict: false, allowPositionals: true })
      .values as Record<string, string | boolean | undefined>;
  } catch {
    // the CLI will report the bad argument itself
  }
  const lookup = (k: string) => env[k];
  const configPath = (values.config as string | undefined) ?? env.CDC_CONFIG;
  let config: Config;
  try {
    config = loadConfigSync(values, lookup);
  } catch {
    config = {
      ...DEFAULTS,
      sourceUrl: (values.source as string | undefined) ?? env.CDC_SOURCE_URL,
      dataDir: (values["data-dir"] as string | undefined) ?? env.CDC_DATA_DIR ?? DEFAULTS.dataDir,
    };
  }
  let target: TargetSpec | undefined;
  if (args[0] === "materialize" && typeof values.to === "string") {
    try {
      target = parseTargetSpec(values.to);
    } catch {
      // the CLI reports a bad --to itself
    }
  }
  return permissionFlags(config, { configPath, env: lookup, target });
}
