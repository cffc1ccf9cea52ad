/**
 * Opens PostgreSQL connections with the session settings that make text
 * output identical across COPY and pgoutput (DESIGN §3), and turns
 * connection failures into one-line {@linkcode CdcError}s without secrets.
 */

// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { CdcError } from "../errors.ts";
import { type SslMode, stripTlsParams, tlsPlan } from "./tls_settings.ts";

/** Settings pinned on every connection, the replication one included. */
export const PINNED_SETTINGS: Readonly<Record<string, string>> = {
  DateStyle: "ISO",
  TimeZone: "UTC",
  IntervalStyle: "postgres",
  extra_float_digits: "3",
  bytea_output: "hex",
  client_encoding: "UTF8",
};

/**
 * Server-side TCP keepalives: a backend whose client vanished (host down,
 * network cut) notices within about 50 s and exits, releasing its locks,
 * e.g. the advisory lock of a `stream` session.
 */
export const KEEPALIVE_SETTINGS: Readonly<Record<string, string>> = {
  tcp_keepalives_idle: "20",
  tcp_keepalives_interval: "10",
  tcp_keepalives_count: "3",
};

/**
 * Pinned on the registry session of `stream`: a half-open connection or a
 * lock must not hang a flush for hours, and an acknowledgement must never
 * run ahead of a durable registry row (the server's default might be
 * asynchronous commit).
 */
export const REGISTRY_SETTINGS: Readonly<Record<string, string>> = {
  statement_timeout: "60s",
  synchronous_commit: "on",
};

/** Client-side keepalive: first probe after this much idle time. */
const CLIENT_KEEPALIVE_MS = 20_000;

/**
 * Client-side limit on a registry statement's answer: statement_timeout is
 * enforced by a server that may be gone, and the OS's keepalive probes
 * (75 s apart, 9 of them) take minutes to notice that.
 */
const REGISTRY_QUERY_TIMEOUT_MS = 75_000;

function optionString(settings: Record<string, string>): string {
  return Object.entries(settings).map(([k, v]) => `-c ${k}=${v}`).join(" ");
}

/** Servers that answered "no TLS" to a `prefer` connection: later ones go plain at once. */
const PLAIN_SERVERS = new Set<string>();

/** Options for {@linkcode connect}. */
export interface ConnectOptions {
  /** Open a logical replication connection (`replication=database`). */
  replication?: boolean;
  /** Shown in pg_stat_activity. */
  applicationName?: string;
  /** What the connection is for, used in error messages ("source", "registry"). */
  role?: string;
  /**
   * The registry session of `stream`: adds {@linkcode REGISTRY_SETTINGS}
   * (statement timeout, synchronous commit). Not for COPY or replication.
   */
  registry?: boolean;
}

/** Describes where a URL points, without user info or password. */
export function describeTarget(url: string | undefined): string {
  if (!url) {
    const host = Deno.env.get("PGHOST") ?? "localhost";
    const port = Deno.env.get("PGPORT") ?? "5432";
    const db = Deno.env.get("PGDATABASE") ?? Deno.env.get("PGUSER") ?? "";
    return `${host}:${port}/${db}`;
  }
  try {
    const u = new URL(url);
    const host = u.hostname || u.searchParams.get("host") || "localhost";
    return `${host}:${u.port || "5432"}${decodeURIComponent(u.pathname || "/")}`;
  } catch {
    return "(unparsable URL)";
  }
}

/** Removes anything that looks like a password from a message. */
export function redact(message: string, url?: string): string {
  let out = message.replace(/(postgres(?:ql)?:\/\/[^:/@\s]*:)[^@\s]*@/g, "$1***@");
  if (url) {
    try {
      const pw = decodeURIComponent(new URL(url).password);
      if (pw.length > 0) out = out.split(pw).join("***");
    } catch {
      // not a URL: nothing more to hide
    }
  }
  const envPw = Deno.env.get("PGPASSWORD");
  if (envPw) out = out.split(envPw).join("***");
  return out;
}

/** Maps a pg/net error to a one-line CdcError. */
export function connectionError(
  error: unknown,
  url: string | undefined,
  role: string,
  mode?: SslMode,
): CdcError {
  const e = error as { code?: string; message?: string };
  const target = describeTarget(url);
  const msg = redact(String(e?.message ?? error).split("\n")[0], url);
  let why: string;
  switch (e?.code) {
    case "ECONNREFUSED":
      why = "connection refused";
      break;
    case "ENOTFOUND":
    case "EAI_AGAIN":
      why = "host not found";
      break;
    case "ETIMEDOUT":
      why = "connection timed out";
      break;
    case "28P01":
    case "28000":
      why = msg;
      break;
    case "3D000":
      why = msg;
      break;
    default:
      why = msg;
  }
  why += tlsHint(msg, mode);
  return new CdcError("connection", `Cannot connect to ${role} PostgreSQL at ${target}: ${why}`, {
    cause: error,
  });
}

/** A hint for TLS failures, so the line says what to change. */
function tlsHint(message: string, mode: SslMode | undefined): string {
  if (/no encryption/.test(message) && (mode === "disable" || mode === "allow")) {
    return ` (the server accepts only TLS connections: use sslmode=require, verify-ca or verify-full)`;
  }
  if (/does not support SSL/.test(message)) {
    return ` (sslmode=${mode} needs TLS: enable ssl on the server or lower sslmode)`;
  }
  if (
    /certificate|self.signed|altnames|unable to verify|issuer/i.test(message) &&
    (mode === "verify-ca" || mode === "verify-full")
  ) {
    return ` (sslmode=${mode}: check sslrootcert and the host name in the server certificate)`;
  }
  return "";
}

/**
 * Opens a connection with the pinned settings, TCP keepalives on both ends
 * and TLS as libpq would do it ({@linkcode tlsPlan}); throws a CdcError on
 * failure.
 */
export async function connect(
  url: string | undefined,
  options: ConnectOptions = {},
): Promise<pg.Client> {
  const role = options.role ?? "source";
  const plan = await tlsPlan(url, (k) => Deno.env.get(k), role);
  const settings = {
    ...PINNED_SETTINGS,
    ...KEEPALIVE_SETTINGS,
    // Every registry commit must be durable before the slot is acknowledged,
    // whatever the server's or role's default.
    ...(role === "registry" ? { synchronous_commit: "on" } : {}),
    ...(options.registry ? REGISTRY_SETTINGS : {}),
  };
  const make = (ssl: pg.ClientConfig["ssl"]) => {
    try {
      const client = new pg.Client({
        ...(url ? { connectionString: stripTlsParams(url) } : {}),
        options: optionString(settings),
        application_name: options.applicationName ?? "cdc-egress",
        connectionTimeoutMillis: 15_000,
        keepAlive: true,
        keepAliveInitialDelayMillis: CLIENT_KEEPALIVE_MS,
        ...(options.registry ? { query_timeout: REGISTRY_QUERY_TIMEOUT_MS } : {}),
        ssl,
        ...(options.replication ? { replication: "database" } : {}),
      } as pg.ClientConfig);
      // An idle connection that dies must not crash the process: the owner
      // sees the failure on its next query.
      client.on("error", () => {});
      return client;
    } catch (error) {
      throw new CdcError("config", `Cannot use ${role} URL: ${redact(String(error), url)}`, {
        cause: error,
      });
    }
  };
  const serverKey = describeTarget(url);
  const first = plan.mode === "prefer" && PLAIN_SERVERS.has(serverKey) ? false : plan.ssl;
  let client = make(first);
  try {
    await client.connect();
    return client;
  } catch (error) {
    await client.end().catch(() => {});
    // allow/prefer: libpq tries the other way when the server refuses the first.
    const message = String((error as Error)?.message ?? "");
    const refusedTls = first !== false && /does not support SSL/.test(message);
    const refusedPlain = first === false && /no encryption/.test(message);
    if (plan.fallback === null || !(refusedTls || refusedPlain)) {
      throw connectionError(error, url, role, plan.mode);
    }
    if (refusedTls) PLAIN_SERVERS.add(serverKey);
    if (refusedPlain) PLAIN_SERVERS.delete(serverKey);
  }
  client = make(first === false ? (plan.ssl || plan.fallback) : false);
  try {
    await client.connect();
  } catch (error) {
    await client.end().catch(() => {});
    throw connectionError(error, url, role, plan.mode);
  }
  return client;
}
