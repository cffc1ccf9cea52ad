/**
 * A snapshot consistent with a known WAL position: a temporary logical slot
 * created with EXPORT_SNAPSHOT. Every transaction that committed before the
 * slot's consistent point is visible in the snapshot, and every later one
 * has a commit LSN at or after it, so the consistent point is an exact
 * boundary between an export and the streamed changes of the same table.
 *
 * The snapshot lives while the creating connection stays idle; workers
 * import it with SET TRANSACTION SNAPSHOT, after which it can be released.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { CdcError } from "../errors.ts";
import { type Lsn, parseLsn } from "../lsn.ts";
import { connect } from "./connect.ts";
import { classifyFailure } from "./retry_policy.ts";
import { quoteIdent } from "./table_selection.ts";

/** An exported snapshot and its WAL boundary. */
export interface ExportedSnapshot {
  /** Consistent point: commits before it are in the snapshot, later ones are not. */
  lsn: Lsn;
  /** Name for SET TRANSACTION SNAPSHOT. */
  name: string;
  /** Drops the temporary slot and ends the snapshot. */
  release(): Promise<void>;
}

/**
 * Creates a temporary slot with an exported snapshot. The server waits for
 * every running transaction that has an xid (and every prepared one), which
 * may take hours: `signal` ends the wait by closing the connection.
 */
export async function exportSnapshot(
  url: string | undefined,
  slotName: string,
  signal?: AbortSignal,
): Promise<ExportedSnapshot> {
  const client: pg.Client = await connect(url, {
    replication: true,
    applicationName: "cdc-egress/export",
  });
  const onAbort = () => client.end().catch(() => {});
  signal?.addEventListener("abort", onAbort);
  try {
    const res = await client.query(
      `CREATE_REPLICATION_SLOT ${quoteIdent(slotName)} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT`,
    );
    const row = res.rows[0];
    return {
      lsn: parseLsn(row.consistent_point),
      name: row.snapshot_name,
      async release() {
        signal?.removeEventListener("abort", onAbort);
        await client.end().catch(() => {});
      },
    };
  } catch (error) {
    await client.end().catch(() => {});
    if (signal?.aborted) throw new DOMException("Export snapshot cancelled", "AbortError");
    // A restart, exhausted slots or WAL senders pass by themselves: say so in
    // the code, so the stream retries instead of exiting.
    throw new CdcError(
      classifyFailure(error).transient ? "unavailable" : "server",
      `Cannot create an export snapshot: ${(error as Error).message.split("\n")[0]}`,
      { cause: error },
    );
  }
}

/** Opens a read-only REPEATABLE READ transaction on `client` that sees `snapshot`. */
export async function useSnapshot(client: pg.Client, snapshotName: string): Promise<void> {
  await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
  await client.query(`SET TRANSACTION SNAPSHOT '${snapshotName.replaceAll("'", "''")}'`);
}
