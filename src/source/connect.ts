/**
 * Opens PostgreSQL connections with the session settings that make text
 * output identical across COPY and pgoutput (DESIGN §3), and turns
 * connection failures into one-line {@linkcode CdcError}s without secrets.
 */

// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { CdcError } from "../errors.ts";

/** Settings pinned on every connection, the replication one included. */
export const PINNED_SETTINGS: Readonly<Record<string, string>> = {
  DateStyle: "ISO",
  TimeZone: "UTC",
  IntervalStyle: "postgres",
  extra_float_digits: "3",
  bytea_output: "hex",
  client_encoding: "UTF8",
};

const OPTIONS = Object.entries(PINNED_SETTINGS).map(([k, v]) => `-c ${k}=${v}`).join(" ");

/**
 * The registry's commits must be durable before the slot is acknowledged:
 * a server (or role) with `synchronous_commit = off` could lose a commit it
 * reported in a crash, and with it files whose changes the slot no longer
 * holds. So registry connections always commit synchronously.
 */
const REGISTRY_OPTIONS = `${OPTIONS} -c synchronous_commit=on`;

/** Options for {@linkcode connect}. */
export interface ConnectOptions {
  /** Open a logical replication connection (`replication=database`). */
  replication?: boolean;
  /** Shown in pg_stat_activity. */
  applicationName?: string;
  /** What the connection is for, used in error messages ("source", "registry"). */
  role?: string;
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
export function connectionError(error: unknown, url: string | undefined, role: string): CdcError {
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
  return new CdcError("connection", `Cannot connect to ${role} PostgreSQL at ${target}: ${why}`, {
    cause: error,
  });
}

/** Opens a connection with the pinned settings; throws a CdcError on failure. */
export async function connect(
  url: string | undefined,
  options: ConnectOptions = {},
): Promise<pg.Client> {
  const role = options.role ?? "source";
  let client: pg.Client;
  try {
    client = new pg.Client({
      ...(url ? { connectionString: url } : {}),
      options: role === "registry" ? REGISTRY_OPTIONS : OPTIONS,
      application_name: options.applicationName ?? "cdc-egress",
      connectionTimeoutMillis: 15_000,
      ...(options.replication ? { replication: "database" } : {}),
    } as pg.ClientConfig);
  } catch (error) {
    throw new CdcError("config", `Cannot use ${role} URL: ${redact(String(error), url)}`, {
      cause: error,
    });
  }
  // An idle connection that dies must not crash the process: the owner sees
  // the failure on its next query.
  client.on("error", () => {});
  try {
    await client.connect();
  } catch (error) {
    await client.end().catch(() => {});
    throw connectionError(error, url, role);
  }
  return client;
}
