/**
 * Domain errors that callers catch and that `main.ts` maps to exit codes.
 *
 * Argument and parse problems use the built-in `TypeError`/`SyntaxError`/
 * `RangeError`; these classes are for conditions of the outside world.
 * Messages follow std style and never contain secrets.
 */

/** Codes for {@linkcode CdcError}; stable, used in logs and metrics. */
export type CdcErrorCode =
  | "config" // bad configuration or arguments
  | "connection" // cannot reach or authenticate to PostgreSQL
  | "server" // the server is unsuitable (version, wal_level, privileges)
  | "not_initialized" // stream/status before init
  | "slot_active" // another process streams from the slot
  | "data_dir" // data dir unusable
  | "registry" // registry inconsistent or unreachable
  | "protocol" // the replication stream broke its contract
  | "unavailable" // the server cannot serve us for now (restart, limits reached); retried
  | "unknown_table" // a table name that is not published
  | "slot_lost" // the replication slot was invalidated or dropped: recover with init --recreate-slot
  | "storage"; // object storage refused us (no bucket, access denied, bad endpoint)

/** An error of the outside world with a stable `code`. */
export class CdcError extends Error {
  readonly code: CdcErrorCode;
  constructor(code: CdcErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "CdcError";
    this.code = code;
  }
}
