/**
 * TLS to PostgreSQL the way libpq does it. node-postgres differs from libpq
 * in ways that matter to an operator who copies a libpq URL:
 *
 * - no `sslmode` means no TLS at all in pg; libpq's default is `prefer`;
 * - pg's `require` verifies the certificate against the system CAs (libpq:
 *   encryption only, or `verify-ca` when a root certificate file exists);
 * - pg reads no `PGSSLROOTCERT`/`PGSSLCERT`/`PGSSLKEY`/`PGSSLCRL` and none
 *   of libpq's defaults under `~/.postgresql/`, and ignores `sslcrl`;
 * - pg reads the files named in the URL itself, synchronously, while
 *   parsing, so a missing file is an odd stack trace.
 *
 * So we read the `ssl*` parameters of the URL and the `PGSSL*` variables
 * here, resolve libpq's defaults, read the files, hand pg a ready `ssl`
 * object, and strip the parameters from the URL pg sees.
 *
 * @module
 */

import { join, resolve } from "node:path";
import { checkServerIdentity, type ConnectionOptions, type PeerCertificate } from "node:tls";
import { CdcError } from "../errors.ts";

/** libpq's `sslmode` values. */
export type SslMode = "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full";

const MODES: readonly SslMode[] = [
  "disable",
  "allow",
  "prefer",
  "require",
  "verify-ca",
  "verify-full",
];

/** URL parameters pg must not see (it would read the files itself or reject them). */
const TLS_PARAMS = [
  "sslmode",
  "sslrootcert",
  "sslcert",
  "sslkey",
  "sslcrl",
  "sslcrldir",
  "sslpassword",
  "sslcompression",
  "sslsni",
  "ssl_min_protocol_version",
  "ssl_max_protocol_version",
  "uselibpqcompat",
  "ssl",
];

const PROTOCOL_PARAMS = [
  ["ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION", "minVersion"],
  ["ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION", "maxVersion"],
] as const;

/** Where the TLS files come from: URL parameter, PGSSL* variable or libpq default. */
export interface TlsFileSettings {
  mode: SslMode;
  /** `system` means the system's trusted roots (libpq 16+). */
  rootCert: string;
  cert: string;
  key: string;
  crl: string;
  /** Whether each path was named explicitly (a missing default is fine). */
  explicit: { rootCert: boolean; cert: boolean; key: boolean; crl: boolean };
}

type Env = (name: string) => string | undefined;

function urlParams(url: string | undefined): URLSearchParams {
  if (!url) return new URLSearchParams();
  try {
    return new URL(url).searchParams;
  } catch {
    return new URLSearchParams();
  }
}

/** The TLS settings of a URL plus environment, with libpq's defaults filled in. */
export function tlsFileSettings(url: string | undefined, env: Env): TlsFileSettings {
  const rawMode = urlParams(url).get("sslmode") ?? env("PGSSLMODE") ?? "prefer";
  if (!(MODES as readonly string[]).includes(rawMode)) {
    throw new TypeError(
      `Cannot use sslmode "${rawMode}": expected disable, allow, prefer, require, verify-ca or verify-full`,
    );
  }
  return { mode: rawMode as SslMode, ...tlsFiles(url, env) };
}

function tlsFiles(url: string | undefined, env: Env): Omit<TlsFileSettings, "mode"> {
  const params = urlParams(url);
  const home = env("HOME");
  const dir = home ? join(home, ".postgresql") : "/nonexistent/.postgresql";
  const pick = (param: string, variable: string, fallback: string) => {
    const value = params.get(param) ?? env(variable);
    return value !== undefined && value !== ""
      ? { path: value === "system" ? value : resolve(value), explicit: true }
      : { path: join(dir, fallback), explicit: false };
  };
  const rootCert = pick("sslrootcert", "PGSSLROOTCERT", "root.crt");
  const cert = pick("sslcert", "PGSSLCERT", "postgresql.crt");
  const key = pick("sslkey", "PGSSLKEY", "postgresql.key");
  const crl = pick("sslcrl", "PGSSLCRL", "root.crl");
  return {
    rootCert: rootCert.path,
    cert: cert.path,
    key: key.path,
    crl: crl.path,
    explicit: {
      rootCert: rootCert.explicit,
      cert: cert.explicit,
      key: key.explicit,
      crl: crl.explicit,
    },
  };
}

/**
 * Every file TLS settings may read for this URL and environment, named or
 * libpq default, absolute: what the binary needs read permission for.
 */
export function tlsFilePaths(url: string | undefined, env: Env): string[] {
  const s = tlsFiles(url, env);
  return [s.rootCert, s.cert, s.key, s.crl].filter((p) => p !== "system");
}

/** Whether the connection goes to a Unix-domain socket (a host that is a path). */
function unixSocket(url: string | undefined, env: Env): boolean {
  let host = env("PGHOST") ?? "";
  if (url) {
    try {
      const u = new URL(url);
      host = u.searchParams.get("host") ?? decodeURIComponent(u.hostname);
    } catch {
      return false;
    }
  }
  return host.startsWith("/");
}

/** `url` without the TLS parameters, for pg. */
export function stripTlsParams(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return url;
  }
  let changed = false;
  for (const p of TLS_PARAMS) {
    if (u.searchParams.has(p)) {
      u.searchParams.delete(p);
      changed = true;
    }
  }
  return changed ? u.toString() : url;
}

/** What {@linkcode connect} passes to pg, and how to fall back. */
export interface TlsPlan {
  mode: SslMode;
  /** `false` for plain; the TLS options otherwise. */
  ssl: false | ConnectionOptions;
  /** For allow/prefer: the other choice, tried when the server refuses the first. */
  fallback: false | ConnectionOptions | null;
}

async function readIfPresent(
  path: string,
  explicit: boolean,
  what: string,
  role: string,
): Promise<string | null> {
  try {
    return await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound && !explicit) return null;
    const why = error instanceof Deno.errors.NotFound
      ? "does not exist"
      : error instanceof Deno.errors.NotCapable
      ? "is not readable under this binary's permissions (rebuild it with the current settings)"
      : error instanceof Deno.errors.PermissionDenied
      ? "is not readable (permission denied)"
      : `cannot be read (${(error as Error).message.split("\n")[0]})`;
    throw new CdcError("config", `Cannot use ${role} TLS settings: ${what} "${path}" ${why}`, {
      cause: error,
    });
  }
}

/**
 * Builds the TLS options of a connection like libpq would: reads the root
 * certificate, client certificate and key, and CRL, and says whether a
 * fallback exists (allow/prefer).
 */
export async function tlsPlan(
  url: string | undefined,
  env: Env,
  role: string,
): Promise<TlsPlan> {
  let s: TlsFileSettings;
  try {
    s = tlsFileSettings(url, env);
  } catch (error) {
    throw new CdcError("config", `Cannot use ${role} URL: ${(error as Error).message}`, {
      cause: error,
    });
  }
  // libpq never uses TLS over a Unix-domain socket, whatever sslmode says.
  if (s.mode === "disable" || unixSocket(url, env)) {
    return { mode: s.mode, ssl: false, fallback: null };
  }
  const verify = s.mode === "verify-ca" || s.mode === "verify-full";
  const options: ConnectionOptions = {};
  if (s.rootCert === "system") {
    if (!verify) {
      throw new CdcError(
        "config",
        `Cannot use ${role} TLS settings: sslrootcert=system needs sslmode verify-ca or verify-full`,
      );
    }
  } else {
    const ca = await readIfPresent(s.rootCert, s.explicit.rootCert, "root certificate", role);
    if (ca === null && verify) {
      throw new CdcError(
        "config",
        `Cannot use ${role} TLS settings: root certificate file "${s.rootCert}" does not exist; ` +
          `name one with sslrootcert (or PGSSLROOTCERT), use sslrootcert=system, ` +
          `or choose an sslmode that does not verify the server`,
      );
    }
    if (ca !== null) options.ca = ca;
  }
  // libpq checks the chain whenever it has a root certificate (even under
  // prefer/require), and the host name only under verify-full.
  const checkChain = verify || options.ca !== undefined;
  if (!checkChain) options.rejectUnauthorized = false;
  const cert = await readIfPresent(s.cert, s.explicit.cert, "client certificate", role);
  if (cert !== null) {
    const key = await readIfPresent(s.key, s.explicit.key, "client key", role);
    if (key === null) {
      throw new CdcError(
        "config",
        `Cannot use ${role} TLS settings: client certificate "${s.cert}" has no key at "${s.key}"`,
      );
    }
    options.cert = cert;
    options.key = key;
  }
  const crl = await readIfPresent(s.crl, s.explicit.crl, "certificate revocation list", role);
  const revoked = crl === null ? null : revokedSerials(crl, s.crl, role);
  if (s.mode !== "verify-full" || revoked) {
    // Node's default identity check is the host name; keep it for
    // verify-full and add the revocation check (Deno's TLS ignores `crl`).
    const hostCheck = s.mode === "verify-full";
    options.checkServerIdentity = (host: string, peer: PeerCertificate) => {
      if (revoked && revokedChain(peer, revoked)) {
        return new Error(`server certificate is revoked (sslcrl "${s.crl}")`);
      }
      return hostCheck ? checkServerIdentity(host, peer) : undefined;
    };
  }
  const params = urlParams(url);
  const password = params.get("sslpassword");
  if (password) options.passphrase = password;
  const versions: Record<string, "TLSv1" | "TLSv1.1" | "TLSv1.2" | "TLSv1.3"> = {
    "TLSv1": "TLSv1",
    "TLSv1.1": "TLSv1.1",
    "TLSv1.2": "TLSv1.2",
    "TLSv1.3": "TLSv1.3",
  };
  for (const [param, variable, key] of PROTOCOL_PARAMS) {
    const value = params.get(param) ?? env(variable);
    if (!value) continue;
    if (!versions[value]) {
      throw new CdcError(
        "config",
        `Cannot use ${role} TLS settings: ${param} "${value}" is not TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3`,
      );
    }
    options[key] = versions[value];
  }
  if (params.get("sslcrldir") ?? env("PGSSLCRLDIR")) {
    throw new CdcError(
      "config",
      `Cannot use ${role} TLS settings: sslcrldir is not supported; name one CRL file with sslcrl`,
    );
  }
  const fallback = s.mode === "prefer" ? false : s.mode === "allow" ? options : null;
  return {
    mode: s.mode,
    ssl: s.mode === "allow" ? false : options,
    fallback,
  };
}

function revokedChain(peer: PeerCertificate, revoked: Set<string>): boolean {
  const seen = new Set<PeerCertificate>();
  for (
    let c: PeerCertificate | undefined = peer;
    c && !seen.has(c);
    c = (c as { issuerCertificate?: PeerCertificate }).issuerCertificate
  ) {
    seen.add(c);
    if (c.serialNumber && revoked.has(normalizeSerial(c.serialNumber))) return true;
  }
  return false;
}

function normalizeSerial(hex: string): string {
  return hex.replace(/[^0-9a-f]/gi, "").toUpperCase().replace(/^0+(?=.)/, "");
}

/**
 * Serial numbers a PEM (or DER) CRL revokes. A minimal DER walk over
 * TBSCertList: version?, signature, issuer, thisUpdate, nextUpdate?,
 * revokedCertificates? (SEQUENCE OF SEQUENCE { serial INTEGER, ... }).
 */
export function revokedSerials(text: string, path: string, role = "source"): Set<string> {
  const bad = () =>
    new CdcError(
      "config",
      `Cannot use ${role} TLS settings: certificate revocation list "${path}" is not a valid CRL`,
    );
  const pem = /-----BEGIN X509 CRL-----([\s\S]*?)-----END X509 CRL-----/g;
  const blocks = [...text.matchAll(pem)].map((m) =>
    Uint8Array.from(atob(m[1].replace(/\s+/g, "")), (ch) => ch.charCodeAt(0))
  );
  if (blocks.length === 0) throw bad();
  const out = new Set<string>();
  for (const der of blocks) {
    try {
      for (const serial of crlSerials(der)) out.add(serial);
    } catch {
      throw bad();
    }
  }
  return out;
}

interface Tlv {
  tag: number;
  start: number;
  end: number;
}

function readTlv(der: Uint8Array, at: number): Tlv {
  const tag = der[at];
  let len = der[at + 1];
  let start = at + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) throw new RangeError("bad DER length");
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + der[at + 2 + i];
    start += n;
  }
  const end = start + len;
  if (tag === undefined || end > der.length) throw new RangeError("truncated DER");
  return { tag, start, end };
}

function children(der: Uint8Array, parent: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let at = parent.start; at < parent.end;) {
    const t = readTlv(der, at);
    out.push(t);
    at = t.end;
  }
  return out;
}

function crlSerials(der: Uint8Array): string[] {
  const certList = readTlv(der, 0);
  const tbs = children(der, certList)[0];
  let fields = children(der, tbs);
  if (fields[0]?.tag === 0x02) fields = fields.slice(1); // version
  // signature, issuer, thisUpdate, then nextUpdate (a time) or the list.
  const rest = fields.slice(3);
  const list = rest.find((f) => f.tag === 0x30);
  if (!list) return [];
  const serials: string[] = [];
  for (const entry of children(der, list)) {
    if (entry.tag !== 0x30) continue;
    const serial = children(der, entry)[0];
    if (serial?.tag !== 0x02) continue;
    let hex = "";
    for (let i = serial.start; i < serial.end; i++) hex += der[i].toString(16).padStart(2, "0");
    serials.push(normalizeSerial(hex));
  }
  return serials;
}
