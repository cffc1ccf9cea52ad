/**
 * Numbered, append-only migrations of the `cdc_registry` schema. `init`
 * applies the missing ones in one transaction under an advisory lock, so two
 * concurrent `init`s cannot both apply them. Never edit a released migration:
 * add a new one.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { CdcError } from "../errors.ts";

/** One schema change. */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/** Every migration, in order. */
export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: "registry tables",
    sql: `
CREATE TABLE cdc_registry.checkpoint (
  slot_name text PRIMARY KEY,
  checkpoint_lsn pg_lsn NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cdc_registry.file_log (
  id bigserial PRIMARY KEY,
  slot_name text NOT NULL,
  schema_name text NOT NULL,
  table_name text NOT NULL,
  table_dir text NOT NULL,
  batch_ts text NOT NULL,
  path text NOT NULL UNIQUE,
  file_type text NOT NULL CHECK (file_type IN ('streaming', 'full_reload', 'ddl')),
  start_lsn pg_lsn NOT NULL,
  end_lsn pg_lsn NOT NULL,
  start_seq integer,
  end_seq integer,
  row_count bigint NOT NULL,
  byte_size bigint NOT NULL,
  sha256 text NOT NULL,
  has_ddl boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX file_log_table_idx ON cdc_registry.file_log (slot_name, schema_name, table_name, start_lsn);

CREATE TABLE cdc_registry.table_state (
  slot_name text NOT NULL,
  schema_name text NOT NULL,
  table_name text NOT NULL,
  table_dir text NOT NULL,
  relation_oid oid,
  mode text NOT NULL DEFAULT 'streaming'
    CHECK (mode IN ('streaming', 'reloading', 'pending_reload', 'dropped')),
  reload_lsn pg_lsn,
  last_lsn pg_lsn,
  last_seq integer,
  last_batch_ts text,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (slot_name, schema_name, table_name)
);

CREATE TABLE cdc_registry.reload_operations (
  id bigserial PRIMARY KEY,
  slot_name text NOT NULL,
  schema_name text NOT NULL,
  table_name text NOT NULL,
  state text NOT NULL DEFAULT 'requested'
    CHECK (state IN ('requested', 'exporting', 'done', 'failed')),
  requested_at timestamptz NOT NULL DEFAULT now(),
  consistent_lsn pg_lsn,
  started_at timestamptz,
  finished_at timestamptz,
  error text
);

CREATE TABLE cdc_registry.ddl_history (
  id bigserial PRIMARY KEY,
  event_time timestamptz NOT NULL DEFAULT now(),
  xid bigint NOT NULL DEFAULT txid_current(),
  command_tag text NOT NULL,
  object_type text,
  schema_name text,
  object_identity text,
  objid oid,
  command text NOT NULL,
  -- The table's columns right after the command: [{"attnum": 1, "name": "id"}, ...],
  -- so the stream can follow columns across renames.
  columns jsonb
);
ALTER TABLE cdc_registry.ddl_history REPLICA IDENTITY FULL;

CREATE FUNCTION cdc_registry.capture_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  r record;
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
    IF r.schema_name IS DISTINCT FROM 'cdc_registry' THEN
      INSERT INTO cdc_registry.ddl_history
        (command_tag, object_type, schema_name, object_identity, objid, command, columns)
      VALUES (r.command_tag, r.object_type, r.schema_name, r.object_identity, r.objid,
              current_query(),
              CASE WHEN r.object_type = 'table' THEN (
                SELECT jsonb_agg(jsonb_build_object('attnum', a.attnum, 'name', a.attname)
                                 ORDER BY a.attnum)
                FROM pg_attribute a
                WHERE a.attrelid = r.objid AND a.attnum > 0 AND NOT a.attisdropped) END);
    END IF;
  END LOOP;
END
$fn$;

CREATE FUNCTION cdc_registry.capture_drop() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  r record;
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
    -- Column drops are already captured by ddl_command_end as ALTER TABLE.
    IF r.object_type = 'table' AND r.schema_name IS DISTINCT FROM 'cdc_registry'
       AND r.original THEN
      INSERT INTO cdc_registry.ddl_history
        (command_tag, object_type, schema_name, object_identity, objid, command)
      VALUES (tg_tag, r.object_type, r.schema_name, r.object_identity, r.objid, current_query());
    END IF;
  END LOOP;
END
$fn$;
`,
  },
  {
    version: 2,
    name: "ddl_history columns with types and keys",
    // The stream writes the schema.yml of a ddl.sql folder from these: the
    // catalog it could query instead may already show later DDL.
    sql: `
ALTER TABLE cdc_registry.ddl_history ADD COLUMN replica_identity "char";

CREATE OR REPLACE FUNCTION cdc_registry.capture_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  r record;
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
    IF r.schema_name IS DISTINCT FROM 'cdc_registry' THEN
      INSERT INTO cdc_registry.ddl_history
        (command_tag, object_type, schema_name, object_identity, objid, command, columns,
         replica_identity)
      SELECT r.command_tag, r.object_type, r.schema_name, r.object_identity, r.objid,
             current_query(),
             CASE WHEN c.oid IS NOT NULL THEN (
               SELECT jsonb_agg(jsonb_build_object(
                        'attnum', a.attnum, 'name', a.attname,
                        'type', format_type(a.atttypid, a.atttypmod),
                        'type_oid', a.atttypid, 'type_modifier', a.atttypmod,
                        'nullable', NOT a.attnotnull, 'generated', a.attgenerated <> '',
                        'is_pk', EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid
                                           AND i.indisprimary AND a.attnum = ANY(i.indkey)),
                        'is_key', c.relreplident = 'f' OR EXISTS (
                          SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid
                            AND ((c.relreplident = 'd' AND i.indisprimary)
                              OR (c.relreplident = 'i' AND i.indisreplident))
                            AND a.attnum = ANY(i.indkey)))
                      ORDER BY a.attnum)
               FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) END,
             c.relreplident
      FROM (SELECT 1) AS one
      LEFT JOIN pg_class c
        ON c.oid = r.objid AND r.object_type IN ('table', 'table column');
    END IF;
  END LOOP;
END
$fn$;
`,
  },
  {
    version: 6,
    name: "file_log paths unique per slot",
    // Paths are relative to each slot's data dir, so two slots may well
    // write the same path; only within one slot must a path be unique.
    sql: `
DO $fn$
DECLARE
  c record;
BEGIN
  FOR c IN
    SELECT con.conname FROM pg_constraint con
    WHERE con.conrelid = 'cdc_registry.file_log'::regclass AND con.contype = 'u'
      AND con.conkey = ARRAY[(SELECT attnum FROM pg_attribute
                              WHERE attrelid = 'cdc_registry.file_log'::regclass
                                AND attname = 'path')]::int2[]
  LOOP
    EXECUTE format('ALTER TABLE cdc_registry.file_log DROP CONSTRAINT %I', c.conname);
  END LOOP;
END
$fn$;
ALTER TABLE cdc_registry.file_log
  ADD CONSTRAINT file_log_slot_path_key UNIQUE (slot_name, path);
`,
  },
];

const LOCK_KEY = "hashtext('cdc_registry.migrations')";

/** Versions applied so far (empty when the schema does not exist). */
export async function appliedMigrations(client: pg.Client): Promise<number[]> {
  const exists = await client.query(
    "SELECT to_regclass('cdc_registry.schema_migrations') IS NOT NULL AS ok",
  );
  if (!exists.rows[0].ok) return [];
  const res = await client.query("SELECT version FROM cdc_registry.schema_migrations ORDER BY 1");
  return res.rows.map((r) => Number(r.version));
}

/** Migrations not yet applied. */
export async function pendingMigrations(client: pg.Client): Promise<Migration[]> {
  const applied = new Set(await appliedMigrations(client));
  return MIGRATIONS.filter((m) => !applied.has(m.version));
}

/** Applies the pending migrations in one transaction; returns what it applied. */
export async function applyMigrations(client: pg.Client): Promise<Migration[]> {
  await client.query("BEGIN");
  try {
    await client.query(`SELECT pg_advisory_xact_lock(${LOCK_KEY})`);
    await client.query("CREATE SCHEMA IF NOT EXISTS cdc_registry");
    await client.query(`CREATE TABLE IF NOT EXISTS cdc_registry.schema_migrations (
      version integer PRIMARY KEY,
      name text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now())`);
    const pending = await pendingMigrations(client);
    for (const m of pending) {
      await client.query(m.sql);
      await client.query(
        "INSERT INTO cdc_registry.schema_migrations (version, name) VALUES ($1, $2)",
        [m.version, m.name],
      );
    }
    await client.query("COMMIT");
    return pending;
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {});
    throw new CdcError(
      "registry",
      `Cannot apply registry migrations: ${(error as Error).message.split("\n")[0]}`,
      { cause: error },
    );
  }
}
