import assert from "node:assert/strict";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { CdcError } from "../../src/errors.ts";
import { classifyFailure, retryDelayMs } from "../../src/source/retry_policy.ts";

/** An error as node-postgres reports a server ErrorResponse. */
function serverError(code: string, message: string): Error {
  const e = new pg.DatabaseError(message, message.length, "error");
  e.code = code;
  return e;
}

/** An error as Node's net module reports a socket failure. */
function systemError(code: string, message = `connect ${code} 127.0.0.1:5432`): Error {
  return Object.assign(new Error(message), { code, errno: -1, syscall: "connect" });
}

const TRANSIENT: [string, unknown][] = [
  [
    "57P01 admin shutdown",
    serverError("57P01", "terminating connection due to administrator command"),
  ],
  [
    "57P02 crash shutdown",
    serverError("57P02", "terminating connection because of crash of another server process"),
  ],
  ["57P03 starting up", serverError("57P03", "the database system is starting up")],
  ["57P03 shutting down", serverError("57P03", "the database system is shutting down")],
  ["53300 too many connections", serverError("53300", "sorry, too many clients already")],
  [
    "53300 wal senders exhausted",
    serverError(
      "53300",
      "number of requested standby connections exceeds max_wal_senders (currently 2)",
    ),
  ],
  [
    "53300 wal senders exhausted (PG 17+ wording)",
    serverError(
      "53300",
      'number of requested standby connections exceeds "max_wal_senders" (currently 1)',
    ),
  ],
  ["53400 slots exhausted", serverError("53400", "all replication slots are in use")],
  ["08006 connection failure", serverError("08006", "connection failure")],
  ["08P01 protocol violation", serverError("08P01", "unexpected EOF")],
  ["40001 serialization failure", serverError("40001", "could not serialize access")],
  ["40P01 deadlock", serverError("40P01", "deadlock detected")],
  ["57014 statement timeout", serverError("57014", "canceling statement due to statement timeout")],
  [
    "55006 slot still active",
    serverError("55006", 'replication slot "cdc_egress" is active for PID 42'),
  ],
  ["ECONNRESET", systemError("ECONNRESET", "read ECONNRESET")],
  ["ECONNREFUSED", systemError("ECONNREFUSED")],
  ["EPIPE", systemError("EPIPE", "write EPIPE")],
  ["ETIMEDOUT", systemError("ETIMEDOUT")],
  ["ENOSPC", systemError("ENOSPC", "No space left on device (os error 28)")],
  ["pg connection terminated", new Error("Connection terminated unexpectedly")],
  ["pg not queryable", new Error("Client has encountered a connection error and is not queryable")],
  [
    "Deno ConnectionReset",
    new Deno.errors.ConnectionReset("Connection reset by peer (os error 104)"),
  ],
  ["Deno BrokenPipe", new Deno.errors.BrokenPipe("Broken pipe (os error 32)")],
  [
    "slot_active CdcError",
    new CdcError("slot_active", 'Cannot stream from slot "s": it is active in process 7'),
  ],
  ["unknown error", new TypeError("something unexpected")],
  ["a registry query without an answer", new Error("Query read timeout")],
  // What exportSnapshot throws: a server error around the real cause.
  [
    "export snapshot failed on a restart",
    new CdcError(
      "server",
      "Cannot create an export snapshot: the database system is shutting down",
      {
        cause: serverError("57P03", "the database system is shutting down"),
      },
    ),
  ],
  [
    "a registry flush cut by a lost connection",
    new CdcError("registry", "Cannot register files: Connection terminated unexpectedly", {
      cause: new Error("Connection terminated unexpectedly"),
    }),
  ],
  [
    "a wrapped cause two levels down",
    new CdcError("server", "Cannot create an export snapshot", {
      cause: new Error("outer", { cause: systemError("ECONNRESET") }),
    }),
  ],
  ["message only: slots in use", new Error("ERROR: all replication slots are in use")],
  [
    "a replication connection refused for lack of WAL senders",
    new CdcError(
      "connection",
      "Cannot connect to source PostgreSQL at h:5432/db: number of requested standby connections exceeds max_wal_senders (currently 1)",
      {
        cause: serverError(
          "53300",
          "number of requested standby connections exceeds max_wal_senders (currently 1)",
        ),
      },
    ),
  ],
];

const PERMANENT: [string, unknown][] = [
  ["28P01 bad password", serverError("28P01", 'password authentication failed for user "cdc"')],
  ["28000 rejected by pg_hba", serverError("28000", 'no pg_hba.conf entry for host "1.2.3.4"')],
  ["3D000 unknown database", serverError("3D000", 'database "nope" does not exist')],
  ["42501 revoked privilege", serverError("42501", "permission denied for table orders")],
  ["42704 dropped slot", serverError("42704", 'replication slot "cdc_egress" does not exist')],
  [
    "55000 slot lost",
    serverError("55000", 'can no longer get changes from replication slot "cdc_egress"'),
  ],
  ["22023 bad setting", serverError("22023", 'unrecognized pgoutput parameter "x"')],
  ["EACCES in the data dir", systemError("EACCES", "Permission denied (os error 13)")],
  ["config CdcError", new CdcError("config", "Cannot use --batch-interval: bad duration")],
  ["not_initialized CdcError", new CdcError("not_initialized", 'run "cdc-egress init" first')],
  ["server CdcError without cause", new CdcError("server", 'wal_level is "replica"')],
  ["data_dir CdcError", new CdcError("data_dir", 'Cannot write to data dir "/x"')],
  [
    "a connection CdcError around a bad password",
    new CdcError("connection", "Cannot connect to source PostgreSQL at h:5432/db: boom", {
      cause: serverError("28P01", 'password authentication failed for user "cdc"'),
    }),
  ],
  [
    "a registry CdcError around a revoked privilege",
    new CdcError("registry", "Cannot register files: permission denied for table file_log", {
      cause: serverError("42501", "permission denied for table file_log"),
    }),
  ],
  [
    "a server CdcError around a permanent cause",
    new CdcError("server", "Cannot create an export snapshot: x", {
      cause: serverError("42501", "must be superuser or replication role"),
    }),
  ],
];

for (const [what, error] of TRANSIENT) {
  Deno.test(`classifyFailure() retries ${what}`, () => {
    const verdict = classifyFailure(error);
    assert.equal(verdict.transient, true, JSON.stringify(verdict));
    assert.ok(verdict.reason.length > 0 && verdict.fix.length > 0);
  });
}

for (const [what, error] of PERMANENT) {
  Deno.test(`classifyFailure() ends the process on ${what}`, () => {
    const verdict = classifyFailure(error);
    assert.equal(verdict.transient, false, JSON.stringify(verdict));
    assert.ok(verdict.reason.length > 0 && verdict.fix.length > 0);
  });
}

Deno.test("classifyFailure() names what to fix for exhausted slots and WAL senders", () => {
  assert.match(
    classifyFailure(
      serverError("53300", 'number of requested standby connections exceeds "max_wal_senders"'),
    ).fix,
    /max_wal_senders/,
  );
  assert.match(
    classifyFailure(serverError("53400", "all replication slots are in use")).fix,
    /max_replication_slots/,
  );
  assert.match(
    classifyFailure(
      serverError("53300", "number of requested standby connections exceeds max_wal_senders"),
    ).fix,
    /max_wal_senders/,
  );
});

Deno.test("classifyFailure() survives a cause cycle and non-errors", () => {
  const a = new Error("a") as Error & { cause?: unknown };
  const b = new Error("b", { cause: a });
  a.cause = b;
  assert.equal(classifyFailure(a).transient, true);
  assert.equal(classifyFailure("a string").transient, true);
  assert.equal(classifyFailure(null).transient, true);
});

Deno.test("classifyFailure() retries a real refused connection", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const client = new pg.Client({ host: "127.0.0.1", port, connectionTimeoutMillis: 5000 });
  const error = await client.connect().then(() => null, (e) => e);
  assert.ok(error, "connecting to a closed port must fail");
  assert.equal(classifyFailure(error).transient, true);
});

Deno.test("retryDelayMs() doubles from 0.5 s up to the cap", () => {
  assert.deepEqual([0, 1, 2, 3, 6, 7, 100].map((n) => retryDelayMs(n)), [
    500,
    1000,
    2000,
    4000,
    30_000,
    30_000,
    30_000,
  ]);
  assert.equal(retryDelayMs(3, 2000), 2000);
});

Deno.test("classifyFailure() names local file faults with a type and a fix", () => {
  const emfile = classifyFailure(
    new Error("Too many open files (os error 24): open '/data/public.t997/x'"),
  );
  assert.deepEqual([emfile.transient, emfile.type, emfile.reason], [
    true,
    "too_many_open_files",
    "too many open files",
  ]);
  assert.match(emfile.fix, /LimitNOFILE.*--max-open-files/);
  assert.equal(classifyFailure(systemError("EMFILE")).type, "too_many_open_files");
  const notDir = classifyFailure(
    Object.assign(new Error("Not a directory (os error 20): mkdir '/data/public.t/x'"), {
      name: "NotADirectory",
    }),
  );
  assert.deepEqual([notDir.transient, notDir.type], [true, "not_a_directory"]);
  assert.equal(classifyFailure(systemError("ENOSPC")).type, "disk_full");
  // Server-side faults keep no type: the stream counts them by their CdcError code.
  assert.equal(classifyFailure(serverError("57P01", "terminating connection")).type, undefined);
});
