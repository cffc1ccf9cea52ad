/**
 * Checks that a server can feed cdc-egress, each failure with its own clear
 * message: version, wal_level, privileges and replication slots.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { CdcError } from "../errors.ts";

/** What the checks learned about the server. */
export interface ServerInfo {
  versionNum: number;
  major: number;
  superuser: boolean;
  replication: boolean;
  user: string;
  database: string;
  /** Existing slot of that name, if any. */
  slot: { plugin: string; database: string; activePid: number | null } | null;
}

/** Runs every check; throws a CdcError with code "server" on the first failure. */
export async function checkServer(client: pg.Client, slotName: string): Promise<ServerInfo> {
  const res = await client.query(`
    SELECT current_setting('server_version_num')::int AS version_num,
           current_setting('wal_level') AS wal_level,
           current_setting('max_replication_slots')::int AS max_slots,
           current_setting('max_wal_senders')::int AS max_senders,
           r.rolsuper AS superuser, r.rolreplication AS replication,
           current_user AS "user", current_database() AS database,
           (SELECT count(*) FROM pg_replication_slots)::int AS used_slots
    FROM pg_roles r WHERE r.rolname = current_user`);
  const row = res.rows[0];
  const versionNum = Number(row.version_num);
  const major = Math.floor(versionNum / 10000);
  if (major < 14) {
    throw new CdcError(
      "server",
      `Cannot use PostgreSQL ${major}: cdc-egress needs PostgreSQL 14 or newer`,
    );
  }
  if (row.wal_level !== "logical") {
    throw new CdcError(
      "server",
      `Cannot decode changes: wal_level is "${row.wal_level}", set wal_level = logical and restart PostgreSQL`,
    );
  }
  if (!row.superuser && !row.replication) {
    throw new CdcError(
      "server",
      `Cannot replicate as role "${row.user}": it needs the REPLICATION attribute (ALTER ROLE "${row.user}" REPLICATION)`,
    );
  }
  const slotRes = await client.query(
    `SELECT plugin, database, active_pid FROM pg_replication_slots WHERE slot_name = $1`,
    [slotName],
  );
  const slot = slotRes.rows[0]
    ? {
      plugin: slotRes.rows[0].plugin as string,
      database: slotRes.rows[0].database as string,
      activePid: slotRes.rows[0].active_pid as number | null,
    }
    : null;
  if (slot && slot.plugin !== "pgoutput") {
    throw new CdcError(
      "server",
      `Cannot use slot "${slotName}": it uses plugin "${slot.plugin}", not pgoutput`,
    );
  }
  if (slot && slot.database !== row.database) {
    throw new CdcError(
      "server",
      `Cannot use slot "${slotName}": it belongs to database "${slot.database}", not "${row.database}"`,
    );
  }
  if (!slot && row.used_slots >= row.max_slots) {
    throw new CdcError(
      "server",
      `Cannot create slot "${slotName}": all ${row.max_slots} replication slots are in use (raise max_replication_slots)`,
    );
  }
  if (row.max_senders < 1) {
    throw new CdcError("server", "Cannot stream: max_wal_senders is 0");
  }
  return {
    versionNum,
    major,
    superuser: row.superuser,
    replication: row.replication,
    user: row.user,
    database: row.database,
    slot,
  };
}
