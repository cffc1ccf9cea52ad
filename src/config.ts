/**
 * Settings: flags win over `CDC_*` environment variables, which win over the
 * YAML file (`--config` / `CDC_CONFIG`), which wins over defaults.
 */

import { parse as parseYaml } from "yaml";
import { parseS3Url } from "./storage/s3_location.ts";

/** Resolved settings shared by every command. */
export interface Config {
  /** Connection URL of the source; undefined means libpq's PG* variables. */
  sourceUrl: string | undefined;
  dataDir: string;
  slot: string;
  publication: string;
  tables: string[];
  exclude: string[];
  batchIntervalMs: number;
  batchMaxBytes: number;
  batchMaxRows: number;
  exportWorkers: number;
  exportSplitBytes: number;
  /** Open batch files (descriptors and deflate contexts) at most. */
  maxOpenFiles: number;
  /** Memory for open batches' CSV buffers and open batch files together. */
  memoryBudget: number;
  /** Whether DDL that changes existing rows without row events triggers a reload. */
  reloadAfterDdl: "auto" | "never";
  /** Registry connection URL; undefined means the source. */
  registryUrl: string | undefined;
  metricsAddr: string;
  heartbeatIntervalMs: number;
  readyMaxLagMs: number;
  /**
   * Warn (and fail /readyz) when the slot's safe_wal_size drops below this;
   * null means 1 GiB, at most half of max_slot_wal_keep_size.
   */
  walWarnBytes: number | null;
  logFormat: "auto" | "json" | "text";
  logLevel: "debug" | "info" | "warn" | "error";
  /** S3-compatible endpoint URL when `dataDir` is `s3://...`; undefined means AWS. */
  s3Endpoint: string | undefined;
  /** S3 region; undefined means AWS_REGION, else us-east-1. */
  s3Region: string | undefined;
  s3ForcePathStyle: boolean;
  /** Local spool of in-progress files when `dataDir` is a bucket. */
  spoolDir: string;
  /** Bytes the stream's open batches and not yet removed uploads may take in the spool. */
  spoolMaxBytes: number;
  /** Files larger than this are uploaded in parts of this size. */
  s3PartSize: number;
  /** An S3 request with no progress for this long is retried. */
  s3TimeoutMs: number;
}

interface Setting {
  key: keyof Config;
  flag: string;
  env: string;
  yaml: string;
  parse: (raw: string, origin: string) => unknown;
  help: string;
}

function text(raw: string): string {
  return raw;
}

function identifier(raw: string, origin: string): string {
  if (raw.length === 0 || new TextEncoder().encode(raw).length > 63) {
    throw new TypeError(`Cannot use ${origin} "${raw}": expected a name of 1 to 63 bytes`);
  }
  return raw;
}

function patterns(raw: string): string[] {
  return raw.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
}

function positiveInt(raw: string, origin: string): number {
  const n = /^\d+$/.test(raw.trim()) ? Number(raw.trim()) : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) {
    throw new TypeError(`Cannot use ${origin} "${raw}": expected a positive integer`);
  }
  return n;
}

const BYTE_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
};

/** Parses a byte size: `1048576`, `64MiB`, `10MB`. */
export function parseByteSize(raw: string, origin = "size"): number {
  const m = /^\s*(\d+)\s*([a-zA-Z]*)\s*$/.exec(raw);
  const unit = m ? BYTE_UNITS[m[2].toLowerCase()] : undefined;
  const n = m && unit !== undefined ? Number(m[1]) * unit : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) {
    throw new TypeError(
      `Cannot use ${origin} "${raw}": expected a positive size such as 64MiB or 1048576`,
    );
  }
  return n;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses a duration such as `500ms`, `90s`, `5m`, `1h`, or `1m30s`, in milliseconds. */
export function parseDuration(raw: string, origin = "duration"): number {
  const s = raw.trim();
  let total = 0;
  let rest = s;
  const part = /^(\d+(?:\.\d+)?)(ms|s|m|h)/;
  while (rest.length > 0) {
    const m = part.exec(rest);
    if (!m) {
      total = NaN;
      break;
    }
    total += Number(m[1]) * DURATION_UNITS[m[2]];
    rest = rest.slice(m[0].length);
  }
  if (s.length === 0 || !Number.isFinite(total) || total < 1) {
    throw new TypeError(
      `Cannot use ${origin} "${raw}": expected a duration such as 90s, 5m or 1h`,
    );
  }
  return Math.round(total);
}

function hostPort(raw: string, origin: string): string {
  if (!/^[^\s:]*:\d{1,5}$/.test(raw) && !/^\[[0-9a-fA-F:]+\]:\d{1,5}$/.test(raw)) {
    throw new TypeError(`Cannot use ${origin} "${raw}": expected HOST:PORT`);
  }
  const port = Number(raw.slice(raw.lastIndexOf(":") + 1));
  if (port > 65535) throw new TypeError(`Cannot use ${origin} "${raw}": port out of range`);
  return raw;
}

/** A directory, or `s3://bucket/prefix` (validated here, so a bad URL fails at start-up). */
function dataDirSetting(raw: string, origin: string): string {
  if (/^s3:/i.test(raw.trim())) parseS3Url(raw, origin);
  else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(raw.trim())) {
    throw new TypeError(
      `Cannot use ${origin} "${raw}": only local directories and s3://bucket/prefix are supported`,
    );
  }
  return raw.trim();
}

function httpUrl(raw: string, origin: string): string {
  let url: URL;
  try {
    url = new URL(raw.trim());
  } catch {
    throw new TypeError(`Cannot use ${origin} "${raw}": expected an http(s):// URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`Cannot use ${origin} "${raw}": expected an http(s):// URL`);
  }
  if (url.username || url.password) {
    // Never echo what may be a secret.
    throw new TypeError(
      `Cannot use ${origin}: credentials do not belong in the endpoint URL; use the AWS credential chain`,
    );
  }
  return url.origin + url.pathname.replace(/\/$/, "");
}

function bool(raw: string, origin: string): boolean {
  const v = raw.trim().toLowerCase();
  if (["true", "1", "yes", "on"].includes(v)) return true;
  if (["false", "0", "no", "off"].includes(v)) return false;
  throw new TypeError(`Cannot use ${origin} "${raw}": expected true or false`);
}

function partSize(raw: string, origin: string): number {
  const n = parseByteSize(raw, origin);
  if (n < 5 * 1024 * 1024) {
    throw new TypeError(`Cannot use ${origin} "${raw}": S3 parts are at least 5MiB`);
  }
  return n;
}

function spoolSize(raw: string, origin: string): number {
  const n = parseByteSize(raw, origin);
  if (n < 1024 * 1024) throw new TypeError(`Cannot use ${origin} "${raw}": at least 1MiB`);
  return n;
}

function oneOf<T extends string>(values: readonly T[]) {
  return (raw: string, origin: string): T => {
    if (!values.includes(raw as T)) {
      throw new TypeError(`Cannot use ${origin} "${raw}": expected one of ${values.join(", ")}`);
    }
    return raw as T;
  };
}

/** Every setting, with its flag, environment variable and YAML key. */
export const SETTINGS: readonly Setting[] = [
  {
    key: "sourceUrl",
    flag: "source",
    env: "CDC_SOURCE_URL",
    yaml: "source",
    parse: text,
    help: "source PostgreSQL URL (else libpq PG* variables)",
  },
  {
    key: "dataDir",
    flag: "data-dir",
    env: "CDC_DATA_DIR",
    yaml: "data_dir",
    parse: dataDirSetting,
    help: "directory or s3://bucket/prefix for output files (default ./data)",
  },
  {
    key: "slot",
    flag: "slot",
    env: "CDC_SLOT",
    yaml: "slot",
    parse: identifier,
    help: "replication slot name (default cdc_egress)",
  },
  {
    key: "publication",
    flag: "publication",
    env: "CDC_PUBLICATION",
    yaml: "publication",
    parse: identifier,
    help: "publication name (default cdc_egress)",
  },
  {
    key: "tables",
    flag: "tables",
    env: "CDC_TABLES",
    yaml: "tables",
    parse: patterns,
    help: "comma-separated table patterns, e.g. public.*,sales.orders (default all)",
  },
  {
    key: "exclude",
    flag: "exclude",
    env: "CDC_EXCLUDE",
    yaml: "exclude",
    parse: patterns,
    help: "comma-separated table patterns to leave out",
  },
  {
    key: "batchIntervalMs",
    flag: "batch-interval",
    env: "CDC_BATCH_INTERVAL",
    yaml: "batch_interval",
    parse: parseDuration,
    help: "close a table's batch after this long (default 5m)",
  },
  {
    key: "batchMaxBytes",
    flag: "batch-max-bytes",
    env: "CDC_BATCH_MAX_BYTES",
    yaml: "batch_max_bytes",
    parse: parseByteSize,
    help: "close a batch at this much uncompressed CSV (default 256MiB)",
  },
  {
    key: "batchMaxRows",
    flag: "batch-max-rows",
    env: "CDC_BATCH_MAX_ROWS",
    yaml: "batch_max_rows",
    parse: positiveInt,
    help: "close a batch at this many rows (default 1000000)",
  },
  {
    key: "exportWorkers",
    flag: "export-workers",
    env: "CDC_EXPORT_WORKERS",
    yaml: "export_workers",
    parse: positiveInt,
    help: "parallel table exports (default 4)",
  },
  {
    key: "exportSplitBytes",
    flag: "export-split-bytes",
    env: "CDC_EXPORT_SPLIT_BYTES",
    yaml: "export_split_bytes",
    parse: parseByteSize,
    help:
      "split tables larger than this into block ranges exported in parallel; not with an s3:// data dir (default 1GiB)",
  },
  {
    key: "maxOpenFiles",
    flag: "max-open-files",
    env: "CDC_MAX_OPEN_FILES",
    yaml: "max_open_files",
    parse: positiveInt,
    help:
      "batch files kept open at once, whatever the table count (default 128; fitted to ulimit -n)",
  },
  {
    key: "memoryBudget",
    flag: "memory-budget",
    env: "CDC_MEMORY_BUDGET",
    yaml: "memory_budget",
    parse: parseByteSize,
    help: "memory for open batches: CSV buffers plus open batch files (default 128MiB)",
  },
  {
    key: "reloadAfterDdl",
    flag: "reload-after-ddl",
    env: "CDC_RELOAD_AFTER_DDL",
    yaml: "reload_after_ddl",
    parse: oneOf(["auto", "never"] as const),
    help:
      "auto (default): reload a table after DDL that changes its rows without row events; never",
  },
  {
    key: "registryUrl",
    flag: "registry-url",
    env: "CDC_REGISTRY_URL",
    yaml: "registry_url",
    parse: text,
    help: "registry PostgreSQL URL (default the source)",
  },
  {
    key: "metricsAddr",
    flag: "metrics-addr",
    env: "CDC_METRICS_ADDR",
    yaml: "metrics_addr",
    parse: hostPort,
    help: "HOST:PORT for /metrics, /healthz, /readyz (default 127.0.0.1:9187; port 0 picks one)",
  },
  {
    key: "heartbeatIntervalMs",
    flag: "heartbeat-interval",
    env: "CDC_HEARTBEAT_INTERVAL",
    yaml: "heartbeat_interval",
    parse: parseDuration,
    help: "emit a WAL heartbeat this often while the slot lags (default 30s)",
  },
  {
    key: "readyMaxLagMs",
    flag: "ready-max-lag",
    env: "CDC_READY_MAX_LAG",
    yaml: "ready_max_lag",
    parse: parseDuration,
    help: "/readyz fails when replication lags more than this (default 5m)",
  },
  {
    key: "walWarnBytes",
    flag: "wal-warn-bytes",
    env: "CDC_WAL_WARN_BYTES",
    yaml: "wal_warn_bytes",
    parse: parseByteSize,
    help:
      "warn and fail /readyz when the slot's safe_wal_size is below this (default 1GiB, at most half of max_slot_wal_keep_size)",
  },
  {
    key: "logFormat",
    flag: "log-format",
    env: "CDC_LOG_FORMAT",
    yaml: "log_format",
    parse: oneOf(["auto", "json", "text"] as const),
    help: "auto (text on a TTY, JSON otherwise), json or text",
  },
  {
    key: "logLevel",
    flag: "log-level",
    env: "CDC_LOG_LEVEL",
    yaml: "log_level",
    parse: oneOf(["debug", "info", "warn", "error"] as const),
    help: "debug, info, warn or error (default info)",
  },
  {
    key: "s3Endpoint",
    flag: "s3-endpoint",
    env: "CDC_S3_ENDPOINT",
    yaml: "s3_endpoint",
    parse: httpUrl,
    help: "S3-compatible endpoint URL (MinIO, R2, GCS, Ceph; default AWS)",
  },
  {
    key: "s3Region",
    flag: "s3-region",
    env: "CDC_S3_REGION",
    yaml: "s3_region",
    parse: text,
    help: "S3 region (default AWS_REGION, else us-east-1)",
  },
  {
    key: "s3ForcePathStyle",
    flag: "s3-force-path-style",
    env: "CDC_S3_FORCE_PATH_STYLE",
    yaml: "s3_force_path_style",
    parse: bool,
    help: "true: address buckets as ENDPOINT/bucket (MinIO, Ceph) instead of bucket.ENDPOINT",
  },
  {
    key: "spoolDir",
    flag: "spool-dir",
    env: "CDC_SPOOL_DIR",
    yaml: "spool_dir",
    parse: text,
    help: "with an s3:// data dir: local directory for files until uploaded (default ./spool)",
  },
  {
    key: "spoolMaxBytes",
    flag: "spool-max-bytes",
    env: "CDC_SPOOL_MAX_BYTES",
    yaml: "spool_max_bytes",
    parse: spoolSize,
    help:
      "with an s3:// data dir: open batches, uploaded files and export parts in the spool at most; when full, batches are uploaded and WAL waits (default 1GiB)",
  },
  {
    key: "s3PartSize",
    flag: "s3-part-size",
    env: "CDC_S3_PART_SIZE",
    yaml: "s3_part_size",
    parse: partSize,
    help:
      "upload files larger than this in parts of this size, exports while they run (default 16MiB, at least 5MiB)",
  },
  {
    key: "s3TimeoutMs",
    flag: "s3-timeout",
    env: "CDC_S3_TIMEOUT",
    yaml: "s3_timeout",
    parse: parseDuration,
    help: "retry an S3 request that makes no progress for this long (default 30s)",
  },
];

/** Defaults for every setting. */
export const DEFAULTS: Config = {
  sourceUrl: undefined,
  dataDir: "./data",
  slot: "cdc_egress",
  publication: "cdc_egress",
  tables: [],
  exclude: [],
  batchIntervalMs: 5 * 60_000,
  batchMaxBytes: 256 * 1024 * 1024,
  batchMaxRows: 1_000_000,
  exportWorkers: 4,
  exportSplitBytes: 1024 ** 3,
  maxOpenFiles: 128,
  memoryBudget: 128 * 1024 * 1024,
  reloadAfterDdl: "auto",
  registryUrl: undefined,
  metricsAddr: "127.0.0.1:9187",
  heartbeatIntervalMs: 30_000,
  readyMaxLagMs: 5 * 60_000,
  walWarnBytes: null,
  logFormat: "auto",
  logLevel: "info",
  s3Endpoint: undefined,
  s3Region: undefined,
  s3ForcePathStyle: false,
  spoolDir: "./spool",
  spoolMaxBytes: 1024 ** 3,
  s3PartSize: 16 * 1024 * 1024,
  s3TimeoutMs: 30_000,
};

/** Reads the YAML config file into raw strings keyed by setting. */
function readConfigFile(path: string): Map<keyof Config, string> {
  let content: string;
  try {
    // A small file read once at start-up; sync keeps loadConfigSync possible.
    content = Deno.readTextFileSync(path);
  } catch (error) {
    const why = error instanceof Deno.errors.NotFound ? "no such file" : (error as Error).message;
    throw new TypeError(`Cannot read config file "${path}": ${why}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(content);
  } catch (error) {
    // The yaml package puts a code excerpt after "at line L, column C:".
    const first = String((error as Error).message).split("\n")[0].replace(/:$/, "");
    throw new SyntaxError(`Cannot parse config file "${path}": ${first}`);
  }
  if (doc === null || doc === undefined) return new Map();
  if (typeof doc !== "object" || Array.isArray(doc)) {
    throw new SyntaxError(`Cannot parse config file "${path}": expected a mapping of settings`);
  }
  const out = new Map<keyof Config, string>();
  for (const [key, value] of Object.entries(doc as Record<string, unknown>)) {
    const setting = SETTINGS.find((s) => s.yaml === key);
    if (!setting) {
      throw new TypeError(`Cannot use config file "${path}": unknown setting "${key}"`);
    }
    if (Array.isArray(value) && (setting.key === "tables" || setting.key === "exclude")) {
      out.set(setting.key, value.map(String).join(","));
    } else if (
      typeof value === "string" || typeof value === "number" || typeof value === "boolean"
    ) {
      out.set(setting.key, String(value));
    } else {
      throw new TypeError(
        `Cannot use config file "${path}": setting "${key}" must be a string or number`,
      );
    }
  }
  return out;
}

/**
 * Resolves the configuration from parsed flags (`--data-dir` as `data-dir`),
 * the environment and the optional YAML file.
 */
export function loadConfig(
  flags: Record<string, string | boolean | undefined>,
  env: (name: string) => string | undefined = (name) => Deno.env.get(name),
): Promise<Config> {
  return Promise.resolve().then(() => loadConfigSync(flags, env));
}

/** Synchronous {@linkcode loadConfig}, for callers that cannot await. */
export function loadConfigSync(
  flags: Record<string, string | boolean | undefined>,
  env: (name: string) => string | undefined = (name) => Deno.env.get(name),
): Config {
  const configPath = (flags["config"] as string | undefined) ?? env("CDC_CONFIG");
  const file = configPath ? readConfigFile(configPath) : new Map<keyof Config, string>();
  const config: Record<string, unknown> = { ...DEFAULTS };
  for (const setting of SETTINGS) {
    const fromFlag = flags[setting.flag];
    const fromEnv = env(setting.env);
    const fromFile = file.get(setting.key);
    let raw: string | undefined;
    let origin: string;
    if (typeof fromFlag === "string") {
      raw = fromFlag;
      origin = `--${setting.flag}`;
    } else if (fromEnv !== undefined && fromEnv !== "") {
      raw = fromEnv;
      origin = setting.env;
    } else {
      raw = fromFile;
      origin = `config "${setting.yaml}"`;
    }
    if (raw !== undefined) config[setting.key] = setting.parse(raw, origin);
  }
  return config as unknown as Config;
}
