/**
 * Decides whether a failure of a `stream` session is worth a retry. A
 * restart, a lost connection, a full connection table or exhausted slots
 * pass by themselves; a dropped slot, a revoked privilege or a bad setting
 * do not, and retrying them forever would only hide them.
 *
 * Pure: it looks at the error chain (`cause` links), at SQLSTATE codes, at
 * Node/Deno system error codes and, where a driver loses the code, at the
 * message PostgreSQL sends.
 *
 * @module
 */

import { CdcError } from "../errors.ts";

/** The verdict on one failure. */
export interface FailureClass {
  /** Whether a retry (with backoff) can succeed without anyone acting. */
  transient: boolean;
  /** What happened, in a few words ("PostgreSQL is restarting"). */
  reason: string;
  /** What an operator can do about it; one short sentence. */
  fix: string;
  /** A short stable name for `cdc_errors_total{type}` (local resource faults only). */
  type?: string;
}

type Rule = { transient: boolean; reason: string; fix: string; type?: string };

const t = (reason: string, fix: string, type?: string): Rule => ({
  transient: true,
  reason,
  fix,
  ...(type ? { type } : {}),
});
const p = (reason: string, fix: string, type?: string): Rule => ({
  transient: false,
  reason,
  fix,
  ...(type ? { type } : {}),
});

const CONNECTION_LOST = t(
  "connection to PostgreSQL lost",
  "check that the server is up and the network between us and it",
);
const RESTARTING = t(
  "PostgreSQL is restarting or shutting down",
  "wait for the server to come back; nothing to do here",
);
const SLOTS_FULL = t(
  "all replication slots are in use",
  "free a slot (pg_drop_replication_slot) or raise max_replication_slots",
);
const SENDERS_FULL = t(
  "all WAL senders are in use",
  "stop an idle replication client or raise max_wal_senders",
);
const CONNECTIONS_FULL = t(
  "too many connections",
  "close idle sessions or raise max_connections (or the role's CONNECTION LIMIT)",
);
const DISK_FULL = t(
  "no space left on device",
  "free space in the data dir (or on the server's disk)",
  "disk_full",
);
const TOO_MANY_FILES = t(
  "too many open files",
  "raise the open-file limit (LimitNOFILE= in the systemd unit, ulimit -n) or lower --max-open-files",
  "too_many_open_files",
);
const NOT_A_DIRECTORY = t(
  "a file is where the data dir needs a directory",
  "move away the file named in the error; only cdc-egress may write in the data dir",
  "not_a_directory",
);

/** SQLSTATE codes with a fixed verdict. */
const SQLSTATES: Record<string, Rule> = {
  "57P01": t(
    "the server terminated our session (shutdown or pg_terminate_backend)",
    "nothing to do if the server restarted; otherwise find who terminates cdc-egress sessions",
  ),
  "57P02": RESTARTING,
  "57P03": RESTARTING,
  "53300": CONNECTIONS_FULL,
  "53400": SLOTS_FULL,
  "53100": DISK_FULL,
  "53200": t("the server is out of memory", "check the server's memory settings"),
  "40001": t("serialization failure", "nothing to do; the transaction is retried"),
  "40P01": t("deadlock detected", "nothing to do; the transaction is retried"),
  "57014": t(
    "a statement ran into statement_timeout",
    "check for locks or load on the registry server (pg_stat_activity)",
  ),
  // The slot is still held by the walsender of our previous session, which
  // the server has not reaped yet.
  "55006": t(
    "the replication slot is still active in another process",
    "wait for the old walsender to exit, or stop the other stream on this slot",
  ),
  "58030": t("the server had an I/O error", "check the server's disk and log"),
  "28P01": p("password authentication failed", "fix the password (URL, PGPASSWORD or .pgpass)"),
  "28000": p(
    "the server rejected the login",
    "fix pg_hba.conf or the role (LOGIN, REPLICATION) for this client",
  ),
  "3D000": p("the database does not exist", "fix the database name in the URL"),
  "42501": p(
    "permission denied",
    "grant the role what it needs again (REPLICATION, ownership or SELECT on the tables, USAGE on cdc_registry)",
  ),
  "42704": p(
    "a replication slot or publication does not exist",
    'run "cdc-egress init"; if the slot was dropped, reload every table after it (changes made without a slot are lost)',
  ),
  "55000": p(
    "the replication slot cannot be used (invalidated, lost, or wal_level changed)",
    'drop the slot, run "cdc-egress init" and reload every table (changes the slot lost are gone)',
  ),
  "22023": p("a setting has a value the server rejects", "fix the setting named in the error"),
  "42P01": p(
    "a registry table is missing",
    'run "cdc-egress init"; check that nobody drops cdc_registry tables',
  ),
  "0A000": p("the server does not support what we asked", "check the PostgreSQL version"),
};

/** Node/Deno system error codes. */
const SYSTEM_CODES: Record<string, Rule> = {
  ECONNRESET: CONNECTION_LOST,
  ECONNREFUSED: t(
    "PostgreSQL refused the connection",
    "check that the server is up and listening on the configured host and port",
  ),
  ECONNABORTED: CONNECTION_LOST,
  EPIPE: CONNECTION_LOST,
  ETIMEDOUT: t("connection to PostgreSQL timed out", "check the network and the server's load"),
  EHOSTUNREACH: CONNECTION_LOST,
  ENETUNREACH: CONNECTION_LOST,
  ENETDOWN: CONNECTION_LOST,
  EAI_AGAIN: t("host name lookup failed for now", "check DNS"),
  ENOTFOUND: t("host name not found", "check DNS and the host in the URL"),
  ENOSPC: DISK_FULL,
  EDQUOT: t("disk quota exceeded", "free space in the data dir or raise the quota", "disk_quota"),
  EIO: t("I/O error in the data dir", "check the disk of the data dir", "io_error"),
  EMFILE: TOO_MANY_FILES,
  ENFILE: t(
    "the system's open-file table is full",
    "raise fs.file-max, or lower --max-open-files",
    "too_many_open_files",
  ),
  ENOTDIR: NOT_A_DIRECTORY,
  EACCES: p(
    "permission denied in the data dir",
    "fix the data dir's owner and mode",
    "permission_denied",
  ),
  EPERM: p(
    "operation not permitted in the data dir",
    "fix the data dir's owner and mode",
    "permission_denied",
  ),
  EROFS: p("the data dir is on a read-only filesystem", "mount it read-write", "read_only"),
};

/** Deno's error classes that carry no code. */
const DENO_CLASSES: [string, Rule][] = [
  ["ConnectionReset", CONNECTION_LOST],
  ["ConnectionRefused", SYSTEM_CODES.ECONNREFUSED],
  ["ConnectionAborted", CONNECTION_LOST],
  ["BrokenPipe", CONNECTION_LOST],
  ["TimedOut", SYSTEM_CODES.ETIMEDOUT],
  ["NotConnected", CONNECTION_LOST],
  ["PermissionDenied", SYSTEM_CODES.EACCES],
  ["NotADirectory", NOT_A_DIRECTORY],
  ["NotCapable", p("the binary lacks a permission", "rebuild it with the current settings")],
];

// PostgreSQL 17+ quotes the setting's name.
const SENDERS_PATTERN = /number of requested standby connections exceeds "?max_wal_senders/i;

/** Messages, for errors whose code got lost on the way (or never had one). */
const MESSAGES: [RegExp, Rule][] = [
  [/all replication slots are in use/i, SLOTS_FULL],
  [/too many (connections|clients)|remaining connection slots are reserved/i, CONNECTIONS_FULL],
  [
    /the database system is (starting up|shutting down|in recovery mode|not yet accepting)/i,
    RESTARTING,
  ],
  [/terminating connection due to administrator command/i, SQLSTATES["57P01"]],
  [/canceling statement due to statement timeout/i, SQLSTATES["57014"]],
  [/no space left on device|os error 28\b/i, DISK_FULL],
  [/too many open files|os error 24\b/i, TOO_MANY_FILES],
  [/not a directory|os error 20\b/i, NOT_A_DIRECTORY],
  [
    /query read timeout/i,
    t(
      "the registry did not answer a statement in time",
      "check the registry server and the network to it",
    ),
  ],
  [/replication slot .* is active for PID/i, SQLSTATES["55006"]],
  [/password authentication failed/i, SQLSTATES["28P01"]],
  [/replication slot .* does not exist|publication .* does not exist/i, SQLSTATES["42704"]],
  [
    /can no longer get changes from replication slot|this slot has been invalidated/i,
    SQLSTATES["55000"],
  ],
  [/permission denied|must be superuser|must have replication|must be owner/i, SQLSTATES["42501"]],
  [
    /connection terminated|connection (is )?closed|not queryable|connection error|server closed the connection|socket hang up|read ECONNRESET|timeout expired|connection timeout|replication stream ended/i,
    CONNECTION_LOST,
  ],
];

/** CdcError codes that no retry fixes unless a transient cause is underneath. */
const PERMANENT_CDC: Partial<Record<string, Rule>> = {
  config: p("bad configuration", "fix the setting named in the error"),
  not_initialized: p("the registry or slot is not set up", 'run "cdc-egress init"'),
  server: p("the server is unsuitable", "fix the server setting named in the error"),
  data_dir: p("the data dir is unusable", "fix the data dir named in the error"),
  unknown_table: p("a table is not published", "fix the table name or the publication"),
  slot_lost: p("the replication slot is lost", 'run "cdc-egress init --recreate-slot"'),
  // Transient S3 failures are retried inside the store; what escapes it is not.
  storage: p("object storage refused the request", "fix the bucket, endpoint or credentials"),
};

function ruleForOne(error: unknown): Rule | null {
  if (error === null || typeof error !== "object") return null;
  const e = error as { code?: unknown; message?: unknown; name?: unknown };
  const code = typeof e.code === "string" ? e.code : "";
  const message = typeof e.message === "string" ? e.message : "";
  // 53300 means both "too many connections" and "WAL senders exhausted".
  if (SENDERS_PATTERN.test(message)) return SENDERS_FULL;
  if (/^[0-9A-Z]{5}$/.test(code)) {
    const rule = SQLSTATES[code];
    if (rule) return rule;
    // Class 08: connection exceptions (the client lost or could not make the connection).
    if (code.startsWith("08")) return CONNECTION_LOST;
    // Class 53: insufficient resources; 57P: operator intervention (restart, crash).
    if (code.startsWith("53")) return t("the server is short of resources", "check the server");
    if (code.startsWith("57P")) return RESTARTING;
    // Class 28: invalid authorization.
    if (code.startsWith("28")) return SQLSTATES["28000"];
  }
  if (SYSTEM_CODES[code]) return SYSTEM_CODES[code];
  for (const [pattern, rule] of MESSAGES) if (pattern.test(message)) return rule;
  const name = typeof e.name === "string" ? e.name : "";
  for (const [cls, rule] of DENO_CLASSES) if (name === cls) return rule;
  return null;
}

/**
 * Classifies a failure. Walks the `cause` chain from the outermost error
 * in: the first link that says something decides, except that a permanent
 * CdcError code (config, server, ...) only decides when nothing underneath
 * is known to be transient (a snapshot that failed because the server
 * restarted is wrapped as a server error). Unknown errors are transient:
 * a long-running service should not die on what it does not recognize, and
 * every retry logs the error.
 */
export function classifyFailure(error: unknown): FailureClass {
  let wrapper: Rule | null = null;
  const seen = new Set<unknown>();
  for (let e = error; e !== undefined && e !== null && !seen.has(e); e = causeOf(e)) {
    seen.add(e);
    if (e instanceof CdcError) {
      const rule = PERMANENT_CDC[e.code];
      if (rule) {
        // Only its own message can say more (e.g. "all replication slots are in use").
        wrapper ??= rule;
        const own = ruleForOne({ message: e.message });
        if (own) return { ...own };
        continue;
      }
      if (e.code === "slot_active") return { ...SQLSTATES["55006"] };
    }
    const rule = ruleForOne(e);
    if (rule) return { ...rule };
  }
  if (wrapper) return { ...wrapper };
  return {
    transient: true,
    reason: "unexpected error",
    fix: "if it keeps happening, report it with the log",
  };
}

function causeOf(error: unknown): unknown {
  return error !== null && typeof error === "object" && "cause" in error
    ? (error as { cause?: unknown }).cause
    : undefined;
}

/** Backoff before retry number `attempt` (0-based): 0.5 s doubling up to `capMs`. */
export function retryDelayMs(attempt: number, capMs = 30_000): number {
  return Math.min(capMs, 500 * 2 ** Math.min(attempt, 20));
}
