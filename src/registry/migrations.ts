/**
 * Numbered, append-only migrations of the `cdc_registry` schema. Each has a
 * registry part (`sql`) and a source part (`source`: the DDL capture, which
 * must live in the source because it reaches the stream through the WAL).
 * `init` applies the missing parts of each side in one transaction per
 * database under an advisory lock, so two concurrent `init`s cannot both
 * apply them; each database records the versions it applied per side. Never
 * edit a released migration: add a new one, and put anything that touches
 * `ddl_history` or its trigger functions in `source`.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { CdcError } from "../errors.ts";

/**
 * Which database a part of a migration belongs to. The DDL capture
 * (`ddl_history`, its trigger functions) reaches the stream through the WAL,
 * so it lives in the source; everything else lives in the registry. With the
 * registry in the source database (the default) both parts go there.
 */
export type MigrationSide = "source" | "registry";

/**
 * One schema change. `sql` is the registry part, `source` the source part
 * (DDL capture); either may be missing. Each side records the versions it
 * has applied in its own `cdc_registry.schema_migrations`, with the side.
 */
export interface Migration {
  version: number;
  name: string;
  sql?: string;
  source?: string;
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

`,
    source: `
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
    source: `
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
    version: 3,
    name: "tables by relation oid, reload gates, value-changing DDL",
    // A table is its relation, not its name: table_state and file_log carry
    // the oid, and a name that comes to mean another relation starts a new
    // history. The DDL capture records column defaults and whether the
    // command changed existing rows without row events (a rewrite, or an
    // added column whose value is a stored "missing" default).
    sql: `
DELETE FROM cdc_registry.table_state WHERE relation_oid IS NULL;
ALTER TABLE cdc_registry.table_state DROP CONSTRAINT table_state_pkey;
ALTER TABLE cdc_registry.table_state ADD PRIMARY KEY (slot_name, relation_oid);
ALTER TABLE cdc_registry.table_state ADD COLUMN previous_schema text,
  ADD COLUMN previous_table text;
CREATE INDEX table_state_name_idx ON cdc_registry.table_state (slot_name, schema_name, table_name);

ALTER TABLE cdc_registry.file_log ADD COLUMN relation_oid oid,
  ADD COLUMN reload_reason text;
UPDATE cdc_registry.file_log f SET relation_oid = s.relation_oid
FROM cdc_registry.table_state s
WHERE s.slot_name = f.slot_name AND s.schema_name = f.schema_name AND s.table_name = f.table_name;
CREATE INDEX file_log_relation_idx ON cdc_registry.file_log (slot_name, relation_oid, start_lsn);

ALTER TABLE cdc_registry.reload_operations ADD COLUMN relation_oid oid,
  ADD COLUMN reason text NOT NULL DEFAULT 'requested',
  ADD COLUMN hold_lsn pg_lsn,
  ADD COLUMN hold_seq integer,
  -- What a waiting export waits for (the oldest transaction with an xid).
  ADD COLUMN waiting_for text;
`,
    // The DDL capture reaches the stream through the WAL: it lives in the source.
    source: `
ALTER TABLE cdc_registry.ddl_history ADD COLUMN rewrites boolean NOT NULL DEFAULT false;

CREATE FUNCTION cdc_registry.capture_rewrite() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  -- Read back by capture_ddl at the end of the same command.
  PERFORM set_config('cdc_registry.rewrite_' || pg_event_trigger_table_rewrite_oid(), 'on', true);
END
$fn$;

CREATE OR REPLACE FUNCTION cdc_registry.capture_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  r record;
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
    IF r.schema_name IS DISTINCT FROM 'cdc_registry' THEN
      INSERT INTO cdc_registry.ddl_history
        (command_tag, object_type, schema_name, object_identity, objid, command, columns,
         replica_identity, rewrites)
      SELECT r.command_tag, r.object_type, r.schema_name, r.object_identity, r.objid,
             current_query(),
             CASE WHEN c.oid IS NOT NULL THEN (
               SELECT jsonb_agg(jsonb_build_object(
                        'attnum', a.attnum, 'name', a.attname,
                        'type', format_type(a.atttypid, a.atttypmod),
                        'type_oid', a.atttypid, 'type_modifier', a.atttypmod,
                        'nullable', NOT a.attnotnull, 'generated', a.attgenerated <> '',
                        'default', pg_get_expr(d.adbin, d.adrelid),
                        -- An added column whose existing rows read a stored default
                        -- changed values without row events.
                        'fills_existing', a.atthasmissing
                          AND a.xmin::text = (pg_current_xact_id()::xid)::text,
                        'is_pk', EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid
                                           AND i.indisprimary AND a.attnum = ANY(i.indkey)),
                        'is_key', c.relreplident = 'f' OR EXISTS (
                          SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid
                            AND ((c.relreplident = 'd' AND i.indisprimary)
                              OR (c.relreplident = 'i' AND i.indisreplident))
                            AND a.attnum = ANY(i.indkey)))
                      ORDER BY a.attnum)
               FROM pg_attribute a
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) END,
             c.relreplident,
             COALESCE(current_setting('cdc_registry.rewrite_' || c.oid, true) = 'on', false)
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
    version: 4,
    name: "history gaps of recreated slots",
    // One row per table when init --recreate-slot replaces a lost slot: the
    // changes between from_lsn and to_lsn were never captured.
    sql: `
CREATE TABLE cdc_registry.history_gap (
  id bigserial PRIMARY KEY,
  slot_name text NOT NULL,
  schema_name text NOT NULL,
  table_name text NOT NULL,
  relation_oid oid,
  -- the table's files are complete up to here (old checkpoint, or its own last row or export)
  from_lsn pg_lsn,
  -- the new slot's consistent point; NULL while init --recreate-slot is still running
  to_lsn pg_lsn,
  -- the source's WAL position when the gap was opened: a slot confirmed past it is the new one
  opened_at_lsn pg_lsn,
  -- why the old slot was lost (invalidation_reason, "missing", or "forced")
  reason text NOT NULL,
  -- the full export requested to close the gap
  reload_id bigint,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX history_gap_table_idx ON cdc_registry.history_gap (slot_name, schema_name, table_name);
`,
  },
  {
    version: 5,
    name: "which source owns each slot",
    // One registry may serve several sources; rows are keyed by slot, so a
    // slot name must belong to one source database only.
    sql: `
CREATE TABLE cdc_registry.slot_owner (
  slot_name text PRIMARY KEY,
  system_identifier text NOT NULL,
  database_name text NOT NULL,
  claimed_at timestamptz NOT NULL DEFAULT now()
);
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
  {
    version: 7,
    name: "status and verify --since at thousands of tables",
    // status reads per-table file totals from file_totals, kept by statement
    // triggers on file_log (one aggregate per INSERT, however many files it
    // registers), instead of aggregating every file row. The indexes serve
    // status's reload lists and verify --since (files after an id or time).
    sql: `
CREATE TABLE cdc_registry.file_totals (
  slot_name text NOT NULL,
  schema_name text NOT NULL,
  table_name text NOT NULL,
  file_count bigint NOT NULL,
  row_count bigint NOT NULL,
  byte_size bigint NOT NULL,
  PRIMARY KEY (slot_name, schema_name, table_name)
);
INSERT INTO cdc_registry.file_totals
SELECT slot_name, schema_name, table_name, count(*), sum(row_count), sum(byte_size)
FROM cdc_registry.file_log GROUP BY 1, 2, 3;

CREATE FUNCTION cdc_registry.file_totals_apply() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM cdc_registry.file_totals;
    RETURN NULL;
  END IF;
  -- Transition tables exist only for the trigger's own event: plpgsql plans
  -- each statement when it first runs, so the other branch is never parsed.
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    UPDATE cdc_registry.file_totals t
    SET file_count = t.file_count - o.n, row_count = t.row_count - o.r,
        byte_size = t.byte_size - o.b
    FROM (SELECT slot_name, schema_name, table_name, count(*) AS n, sum(row_count) AS r,
                 sum(byte_size) AS b
          FROM old_files GROUP BY 1, 2, 3) o
    WHERE (t.slot_name, t.schema_name, t.table_name) = (o.slot_name, o.schema_name, o.table_name);
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO cdc_registry.file_totals AS t
    SELECT slot_name, schema_name, table_name, count(*), sum(row_count), sum(byte_size)
    FROM new_files GROUP BY 1, 2, 3
    ON CONFLICT (slot_name, schema_name, table_name) DO UPDATE
      SET file_count = t.file_count + EXCLUDED.file_count,
          row_count = t.row_count + EXCLUDED.row_count,
          byte_size = t.byte_size + EXCLUDED.byte_size;
  END IF;
  DELETE FROM cdc_registry.file_totals WHERE file_count <= 0;
  RETURN NULL;
END
$fn$;
CREATE TRIGGER file_totals_insert AFTER INSERT ON cdc_registry.file_log
  REFERENCING NEW TABLE AS new_files
  FOR EACH STATEMENT EXECUTE FUNCTION cdc_registry.file_totals_apply();
CREATE TRIGGER file_totals_update AFTER UPDATE ON cdc_registry.file_log
  REFERENCING OLD TABLE AS old_files NEW TABLE AS new_files
  FOR EACH STATEMENT EXECUTE FUNCTION cdc_registry.file_totals_apply();
CREATE TRIGGER file_totals_delete AFTER DELETE ON cdc_registry.file_log
  REFERENCING OLD TABLE AS old_files
  FOR EACH STATEMENT EXECUTE FUNCTION cdc_registry.file_totals_apply();
CREATE TRIGGER file_totals_truncate AFTER TRUNCATE ON cdc_registry.file_log
  FOR EACH STATEMENT EXECUTE FUNCTION cdc_registry.file_totals_apply();

CREATE INDEX file_log_slot_id_idx ON cdc_registry.file_log (slot_name, id);
CREATE INDEX file_log_slot_created_idx ON cdc_registry.file_log (slot_name, created_at);
CREATE INDEX reload_operations_table_idx
  ON cdc_registry.reload_operations (slot_name, schema_name, table_name, id);
CREATE INDEX reload_operations_open_idx ON cdc_registry.reload_operations (slot_name, id)
  WHERE state IN ('requested', 'exporting');
CREATE INDEX reload_operations_failed_idx ON cdc_registry.reload_operations (slot_name, id)
  WHERE state = 'failed';
CREATE INDEX history_gap_open_idx ON cdc_registry.history_gap (slot_name, opened_at_lsn)
  WHERE to_lsn IS NULL;
`,
  },
  {
    version: 8,
    name: "object storage: storage location and upload intents",
    // Where each slot's files are (a directory or s3://bucket/prefix), and
    // the keys being uploaded: an intent is written before an upload and
    // removed in the transaction that registers the key, so start-up
    // recovery can delete what was uploaded but never registered (and abort
    // multipart uploads by id) without listing the bucket.
    sql: `
CREATE TABLE IF NOT EXISTS cdc_registry.storage_location (
  slot_name text PRIMARY KEY,
  url text NOT NULL,
  recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS cdc_registry.upload_intent (
  slot_name text NOT NULL,
  path text NOT NULL,
  upload_id text,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (slot_name, path)
);
`,
  },
];

const LOCK_KEY = "hashtext('cdc_registry.migrations')";

/** Both parts, in the order a single database applies them. */
export const BOTH_SIDES: readonly MigrationSide[] = ["source", "registry"];

/**
 * Versions applied on `side` so far (empty when the schema does not exist).
 * Rows written before migrations had sides count for both.
 */
export async function appliedMigrations(
  client: pg.Client,
  side: MigrationSide,
): Promise<number[]> {
  const exists = await client.query(
    `SELECT to_regclass('cdc_registry.schema_migrations') IS NOT NULL AS ok,
            EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid =
                      to_regclass('cdc_registry.schema_migrations') AND attname = 'side') AS sided`,
  );
  if (!exists.rows[0].ok) return [];
  const res = await client.query(
    exists.rows[0].sided
      ? "SELECT DISTINCT version FROM cdc_registry.schema_migrations WHERE side IN ($1, 'both') ORDER BY 1"
      : "SELECT version FROM cdc_registry.schema_migrations ORDER BY 1",
    exists.rows[0].sided ? [side] : [],
  );
  return res.rows.map((r) => Number(r.version));
}

/** Migrations not yet applied on `side`. */
export async function pendingMigrations(
  client: pg.Client,
  side: MigrationSide,
): Promise<Migration[]> {
  const applied = new Set(await appliedMigrations(client, side));
  return MIGRATIONS.filter((m) => !applied.has(m.version));
}

/**
 * Applies the pending migrations of `sides` on one database in one
 * transaction, under an advisory lock; returns the versions it applied.
 * The registry in the source database gets both sides; a separate registry
 * gets "registry" and the source "source". A database reached twice (a
 * registry URL that names the source) works too: each side is recorded.
 */
export async function applyMigrations(
  client: pg.Client,
  sides: readonly MigrationSide[],
): Promise<number[]> {
  await client.query("BEGIN");
  try {
    await client.query(`SELECT pg_advisory_xact_lock(${LOCK_KEY})`);
    await client.query("CREATE SCHEMA IF NOT EXISTS cdc_registry");
    await client.query(`CREATE TABLE IF NOT EXISTS cdc_registry.schema_migrations (
      version integer NOT NULL,
      name text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now())`);
    // Before sides existed one row stood for the whole migration: 'both'.
    await client.query(
      "ALTER TABLE cdc_registry.schema_migrations ADD COLUMN IF NOT EXISTS side text NOT NULL DEFAULT 'both'",
    );
    await client.query(
      "ALTER TABLE cdc_registry.schema_migrations DROP CONSTRAINT IF EXISTS schema_migrations_pkey",
    );
    await client.query(
      `CREATE UNIQUE INDEX IF NOT EXISTS schema_migrations_version_side
         ON cdc_registry.schema_migrations (version, side)`,
    );
    const applied = new Set<number>();
    for (const side of sides) {
      for (const m of await pendingMigrations(client, side)) {
        const sql = side === "source" ? m.source : m.sql;
        if (sql) await client.query(sql);
        await client.query(
          "INSERT INTO cdc_registry.schema_migrations (version, name, side) VALUES ($1, $2, $3)",
          [m.version, m.name, side],
        );
        applied.add(m.version);
      }
    }
    await client.query("COMMIT");
    return [...applied].sort((a, b) => a - b);
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {});
    throw new CdcError(
      "registry",
      `Cannot apply ${sides.length === 1 ? sides[0] + " " : ""}migrations: ${
        (error as Error).message.split("\n")[0]
      }`,
      { cause: error },
    );
  }
}
