/**
 * Questions about the source database's catalog: publications and the
 * tables in them, keys and replica identity, sizes, slots, and the DDL
 * capture (`cdc_registry.ddl_history`, its functions and event triggers),
 * plus the source-side steps of `init`. The registry's rows (files, table
 * state, checkpoints, reloads) are never asked here: that is
 * {@linkcode Registry}, on its own connection, which may be another server.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { CdcError } from "../errors.ts";
import { appliedMigrations, MIGRATIONS, type MigrationSide } from "../registry/migrations.ts";
import { checkServer, type ServerInfo } from "./server_check.ts";
import { readSlotHealth, type SlotHealth } from "./slot_health.ts";
import { qualifiedName, quoteIdent, selectTables, type TableRef } from "./table_selection.ts";

/** A table of the publication, as the source catalog names it now. */
export interface PublishedTable {
  schema: string;
  table: string;
  oid: number;
}

/** The replication slot as the source reports it. */
export interface SlotRow {
  active: boolean;
  activePid: number | null;
  confirmedFlushLsn: string | null;
  restartLsn: string | null;
  walStatus: string | null;
  safeWalSize: string | null;
  lagBytes: string | null;
}

/** Identifies a source database across connections and registries. */
export interface SourceIdentity {
  systemIdentifier: string;
  database: string;
}

/** State of the DDL capture in the source. */
export type DdlCaptureState = "current" | "missing" | "outdated";

/** The source catalog, over a connection to the source database. */
export class SourceCatalog {
  #client: pg.Client;

  constructor(client: pg.Client) {
    this.#client = client;
  }

  /** Runs the server checks (version, wal_level, replication privilege, slot). */
  checkServer(slot: string): Promise<ServerInfo> {
    return checkServer(this.#client, slot);
  }

  /** The user tables that `include`/`exclude` select. */
  selectTables(include: string[], exclude: string[]): Promise<TableRef[]> {
    return selectTables(this.#client, include, exclude);
  }

  /** Every table of `publication` (partitioned roots as published), registry tables left out. */
  async publishedTables(publication: string): Promise<PublishedTable[]> {
    const res = await this.#client.query(
      `SELECT p.schemaname, p.tablename, c.oid::int8 AS oid
       FROM pg_publication_tables p
       JOIN pg_namespace n ON n.nspname = p.schemaname
       JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
       WHERE p.pubname = $1 AND p.schemaname <> 'cdc_registry'
       ORDER BY 1, 2`,
      [publication],
    );
    return res.rows.map((r) => ({
      schema: r.schemaname as string,
      table: r.tablename as string,
      oid: Number(r.oid),
    }));
  }

  /** Whether `publication` exists. */
  async publicationExists(publication: string): Promise<boolean> {
    const res = await this.#client.query("SELECT 1 FROM pg_publication WHERE pubname = $1", [
      publication,
    ]);
    return (res.rowCount ?? 0) > 0;
  }

  /** Of `oids`, the tables whose UPDATE/DELETE would fail once published (no key, identity DEFAULT/NOTHING). */
  async tablesWithoutIdentity(oids: number[]): Promise<Set<number>> {
    if (oids.length === 0) return new Set();
    const res = await this.#client.query(
      `SELECT c.oid::int8 AS oid FROM pg_class c
       WHERE c.oid = ANY($1::oid[])
         AND (c.relreplident = 'n'
           OR (c.relreplident = 'd' AND NOT EXISTS (
                 SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))`,
      [oids],
    );
    return new Set(res.rows.map((r) => Number(r.oid)));
  }

  /** Whether table `oid` can be published and whether `publication` already has it. */
  async publishState(
    oid: number,
    publication: string,
    t: { schema: string; table: string },
  ): Promise<{ identity: boolean; published: boolean } | null> {
    const res = await this.#client.query(
      `SELECT c.relreplident <> 'n' AND (c.relreplident <> 'd' OR EXISTS (
                SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)) AS ok,
              EXISTS (SELECT 1 FROM pg_publication_tables p WHERE p.pubname = $2
                        AND p.schemaname = $3 AND p.tablename = $4) AS published
       FROM pg_class c WHERE c.oid = $1`,
      [oid, publication, t.schema, t.table],
    );
    if (!res.rows[0]) return null;
    return { identity: res.rows[0].ok, published: res.rows[0].published };
  }

  /**
   * Resolves a user-given table name with `to_regclass` (a parameter, never
   * pasted into SQL). Throws the database error of a malformed name.
   */
  async resolveTable(
    name: string,
    publication: string,
  ): Promise<{ schema: string; table: string; published: boolean } | null> {
    // Malformed names (e.g. an unclosed quote) fail here on every version;
    // to_regclass returns NULL for them since PostgreSQL 16.
    await this.#client.query("SELECT parse_ident($1)", [name]);
    const res = await this.#client.query(
      `SELECT n.nspname AS schema, c.relname AS table,
              EXISTS (SELECT 1 FROM pg_publication_tables p WHERE p.pubname = $2
                        AND p.schemaname = n.nspname AND p.tablename = c.relname) AS published
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.oid = to_regclass($1)`,
      [name, publication],
    );
    const row = res.rows[0];
    return row ? { schema: row.schema, table: row.table, published: row.published } : null;
  }

  /**
   * Size of each relation's data, what an export reads: the main fork of
   * the heap and of its TOAST table (no indexes, no free space or
   * visibility maps), partitions summed for a partitioned one; in order, 0
   * for a relation that is gone.
   */
  async tableSizes(oids: number[]): Promise<number[]> {
    // Each size is a file lookup on the server: two per table, and a
    // partition tree walked only for a partitioned table. (With
    // pg_total_relation_size, 10,000 tables took several seconds.)
    const res = await this.#client.query(
      `SELECT COALESCE(CASE WHEN c.relkind = 'p'
                         THEN (SELECT sum(pg_relation_size(t.oid) + CASE WHEN t.reltoastrelid <> 0
                                            THEN pg_relation_size(t.reltoastrelid) ELSE 0 END)
                               FROM pg_partition_tree(c.oid) p JOIN pg_class t ON t.oid = p.relid)
                         ELSE pg_relation_size(c.oid) + CASE WHEN c.reltoastrelid <> 0
                                THEN pg_relation_size(c.reltoastrelid) ELSE 0 END
                       END, 0)::int8 AS size
       FROM unnest($1::oid[]) WITH ORDINALITY AS u(o, n)
       LEFT JOIN pg_class c ON c.oid = u.o
       ORDER BY u.n`,
      [oids],
    );
    return res.rows.map((r) => Number(r.size));
  }

  /** A relation's kind and heap size in blocks, or null when it does not exist. */
  async heapBlocks(oid: number): Promise<{ relkind: string; blocks: number } | null> {
    const res = await this.#client.query(
      `SELECT c.relkind, (pg_relation_size(c.oid) / current_setting('block_size')::int8) AS blocks
       FROM pg_class c WHERE c.oid = $1`,
      [oid],
    );
    const row = res.rows[0];
    return row ? { relkind: row.relkind, blocks: Number(row.blocks) } : null;
  }

  /** The relation each name means now (null when none), in order. */
  async relationOids(names: { schema: string; table: string }[]): Promise<(number | null)[]> {
    const res = await this.#client.query(
      `SELECT to_regclass(format('%I.%I', s, t))::oid::int8 AS oid
       FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(s, t, n) ORDER BY n`,
      [names.map((n) => n.schema), names.map((n) => n.table)],
    );
    return res.rows.map((r) => (r.oid === null ? null : Number(r.oid)));
  }

  /**
   * The oldest transaction a new snapshot has to wait for, in words: one
   * that has an xid, or a prepared one; null when there is none.
   */
  async oldestTransaction(): Promise<string | null> {
    const res = await this.#client.query(
      `(SELECT 'transaction of pid ' || pid || ' (xid ' || backend_xid || ', ' ||
               COALESCE(application_name, '') || ') open for ' ||
               extract(epoch FROM now() - xact_start)::int || 's' AS what, xact_start AS since
        FROM pg_stat_activity
        WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() AND backend_type = 'client backend'
        ORDER BY xact_start LIMIT 1)
       UNION ALL
       (SELECT 'prepared transaction ' || quote_literal(gid) || ' (xid ' || transaction ||
               ') prepared for ' || extract(epoch FROM now() - prepared)::int || 's', prepared
        FROM pg_prepared_xacts ORDER BY prepared LIMIT 1)
       ORDER BY since LIMIT 1`,
    );
    return res.rows[0]?.what ?? null;
  }

  /** Whether the slot is lost, and why (see {@linkcode readSlotHealth}). */
  slotHealth(slot: string, hasHistory: boolean): Promise<SlotHealth> {
    return readSlotHealth(this.#client, slot, hasHistory);
  }

  /** The replication slot, or null when it does not exist. */
  async slot(name: string): Promise<SlotRow | null> {
    const res = await this.#client.query(
      `SELECT active, active_pid, confirmed_flush_lsn::text AS confirmed,
              restart_lsn::text AS restart, wal_status, safe_wal_size::text AS safe_wal_size,
              pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::text AS lag_bytes
       FROM pg_replication_slots WHERE slot_name = $1`,
      [name],
    );
    const s = res.rows[0];
    if (!s) return null;
    return {
      active: Boolean(s.active),
      activePid: s.active_pid ?? null,
      confirmedFlushLsn: s.confirmed ?? null,
      restartLsn: s.restart ?? null,
      walStatus: s.wal_status ?? null,
      safeWalSize: s.safe_wal_size ?? null,
      lagBytes: s.lag_bytes ?? null,
    };
  }

  /** The server's current WAL position, or null on a standby. */
  async currentWalLsn(): Promise<string | null> {
    const res = await this.#client.query(
      "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END AS lsn",
    );
    return res.rows[0].lsn;
  }

  /**
   * The source's system identifier and database name: what a registry
   * shared by several sources records as the owner of a slot.
   */
  async identity(): Promise<SourceIdentity> {
    const db = (await this.#client.query("SELECT current_database() AS db")).rows[0].db;
    try {
      const res = await this.#client.query(
        "SELECT system_identifier::text AS id FROM pg_control_system()",
      );
      return { systemIdentifier: res.rows[0].id, database: db };
    } catch (error) {
      // A role that may not read the control file: the database name alone.
      if ((error as { code?: string }).code !== "42501") throw error;
      return { systemIdentifier: "unknown", database: db };
    }
  }

  /** Whether the DDL capture's schema objects (source part of the migrations) are in place. */
  async ddlCapture(): Promise<DdlCaptureState> {
    const applied = new Set(await appliedMigrations(this.#client, "source"));
    if (applied.size === 0) return "missing";
    return MIGRATIONS.every((m) => applied.has(m.version)) ? "current" : "outdated";
  }

  /** Whether `cdc_registry.ddl_history` exists (it is published to carry DDL). */
  async hasDdlHistory(): Promise<boolean> {
    const res = await this.#client.query(
      "SELECT to_regclass('cdc_registry.ddl_history') IS NOT NULL AS ok",
    );
    return res.rows[0].ok;
  }

  /** Names of the event triggers in the database. */
  async eventTriggers(): Promise<Set<string>> {
    const res = await this.#client.query("SELECT evtname FROM pg_event_trigger");
    return new Set(res.rows.map((r) => r.evtname as string));
  }

  /**
   * What the current role lacks to create the `cdc_registry` schema objects
   * here, in words, or null when nothing is missing.
   */
  async missingSchemaPrivilege(): Promise<string | null> {
    return await missingSchemaPrivilege(this.#client);
  }

  /** Creates an event trigger that runs `fn` on `event`. */
  async createEventTrigger(name: string, event: string, fn: string): Promise<void> {
    await this.#client.query(`CREATE EVENT TRIGGER ${name} ON ${event} EXECUTE FUNCTION ${fn}()`);
  }

  /** Creates `publication`, or sets an existing one, to exactly `tables`. */
  async setPublication(publication: string, tables: string[], exists: boolean): Promise<void> {
    const name = quoteIdent(publication);
    const list = tables.join(", ");
    const options =
      "publish = 'insert, update, delete, truncate', publish_via_partition_root = true";
    if (!exists) {
      await this.#client.query(
        `CREATE PUBLICATION ${name} ${list ? `FOR TABLE ${list}` : ""} WITH (${options})`,
      );
      return;
    }
    if (list) await this.#client.query(`ALTER PUBLICATION ${name} SET TABLE ${list}`);
    else {
      const current = await this.#client.query(
        `SELECT format('%I.%I', schemaname, tablename) AS t FROM pg_publication_tables
         WHERE pubname = $1`,
        [publication],
      );
      if (current.rows.length > 0) {
        await this.#client.query(
          `ALTER PUBLICATION ${name} DROP TABLE ${current.rows.map((r) => r.t).join(", ")}`,
        );
      }
    }
    await this.#client.query(`ALTER PUBLICATION ${name} SET (${options})`);
  }

  /** Adds one table to `publication`. */
  async addToPublication(publication: string, t: { schema: string; table: string }): Promise<void> {
    await this.#client.query(
      `ALTER PUBLICATION ${quoteIdent(publication)} ADD TABLE ${qualifiedName(t)}`,
    );
  }

  /** Creates the logical replication slot (pgoutput). */
  async createSlot(slot: string): Promise<void> {
    await this.#client.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [slot]);
  }
}

/**
 * What the current role lacks to create or update schema `cdc_registry` on
 * `client`'s database, or null. Needs CREATE on the database to create the
 * schema, or, when it exists, ownership of it.
 */
export async function missingSchemaPrivilege(client: pg.Client): Promise<string | null> {
  const res = await client.query(
    `SELECT current_user AS "user", current_database() AS db, r.rolsuper AS superuser,
            has_database_privilege(current_database(), 'CREATE') AS can_create,
            (SELECT pg_has_role(nspowner, 'USAGE') FROM pg_namespace
             WHERE nspname = 'cdc_registry') AS owns_schema
     FROM pg_roles r WHERE r.rolname = current_user`,
  );
  const r = res.rows[0];
  if (r.superuser || r.owns_schema === true) return null;
  if (r.owns_schema === null && r.can_create) return null;
  return r.owns_schema === false
    ? `role "${r.user}" does not own schema cdc_registry in database "${r.db}" (ALTER SCHEMA cdc_registry OWNER TO "${r.user}")`
    : `role "${r.user}" needs CREATE on database "${r.db}" (GRANT CREATE ON DATABASE "${r.db}" TO "${r.user}")`;
}

/** Which side a CdcError came from, for `init`'s messages. */
export function sideLabel(side: MigrationSide): string {
  return side === "source" ? "the source (DDL capture)" : "the registry";
}

/** A CdcError for a missing privilege on one side. */
export function privilegeError(side: MigrationSide, target: string, why: string): CdcError {
  return new CdcError(
    "server",
    `Cannot set up ${sideLabel(side)} at ${target}: ${why}`,
  );
}
