/**
 * Fills a registry with many tables and file rows shaped like a long-running
 * deployment's, with set-based inserts (generate_series), so `status` and its
 * query plans can be checked at 10,000 tables and 1,000,000 file rows.
 *
 * The slot under test gets `tables` relations and about `files` file rows;
 * two other slots share the registry (a fifth of the rows each), so every
 * query must filter by slot. Per slot: one `initial` full_reload per table
 * and a done reload operation, a few ddl files, the rest streaming files
 * with growing LSNs and batch_ts; some tables pending, reloading or dropped,
 * some with failed or requested reloads, and a closed history gap for every
 * table (a slot recreated long ago).
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";

/** What {@linkcode seedLargeRegistry} made for the slot under test. */
export interface LargeRegistry {
  tables: number;
  files: number;
}

/** The sizes from `CDC_TEST_STATUS_TABLES` / `CDC_TEST_STATUS_FILES` (default 2,000 / 200,000). */
export function largeRegistrySize(): { tables: number; files: number } {
  const int = (name: string, dflt: number) => {
    const v = Deno.env.get(name);
    if (v === undefined || v === "") return dflt;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 10) throw new RangeError(`Cannot use ${name}="${v}"`);
    return n;
  };
  return {
    tables: int("CDC_TEST_STATUS_TABLES", 2000),
    files: int("CDC_TEST_STATUS_FILES", 200_000),
  };
}

/**
 * Seeds `slot` (and two other slots) in a registry whose migrations are
 * applied; ANALYZEs the tables so plans are those of a settled registry.
 */
export async function seedLargeRegistry(
  client: pg.Client,
  slot: string,
  size: { tables: number; files: number },
): Promise<LargeRegistry> {
  const slots: [string, number, number][] = [
    [slot, size.tables, size.files],
    [`${slot}_other_a`, Math.ceil(size.tables / 5), Math.ceil(size.files / 5)],
    [`${slot}_other_b`, Math.ceil(size.tables / 5), Math.ceil(size.files / 5)],
  ];
  for (const [name, tables, files] of slots) {
    await client.query(
      `INSERT INTO cdc_registry.table_state (slot_name, schema_name, table_name, table_dir,
         relation_oid, mode, reload_lsn, last_lsn, last_seq, last_batch_ts, updated_at)
       SELECT $1, 's' || (i % 7), 't' || i, 's' || (i % 7) || '.t' || i, 100000 + i,
              CASE WHEN i % 997 = 0 THEN 'dropped' WHEN i % 499 = 0 THEN 'pending_reload'
                   WHEN i % 991 = 0 THEN 'reloading' ELSE 'streaming' END,
              ('0/' || to_hex(1000 + i))::pg_lsn,
              ('1/' || to_hex(100000 + i * 16))::pg_lsn, i % 50,
              to_char(timestamp '2026-11-01' + i * interval '1 second',
                      'YYYYMMDD"T"HH24MISS".000Z"'),
              now() - i * interval '1 second'
       FROM generate_series(1, $2::int) i`,
      [name, tables],
    );
    // One initial export per table, then streaming (and every 50th a ddl) files
    // spread over the tables round-robin, LSNs growing with the id.
    await client.query(
      `INSERT INTO cdc_registry.file_log (slot_name, schema_name, table_name, table_dir,
         relation_oid, batch_ts, path, file_type, start_lsn, end_lsn, start_seq, end_seq,
         row_count, byte_size, sha256, has_ddl, reload_reason)
       SELECT $1, 's' || (t % 7), 't' || t, 's' || (t % 7) || '.t' || t, 100000 + t,
              bts, 's' || (t % 7) || '.t' || t || '/' || bts || '/' ||
                CASE kind WHEN 'full_reload' THEN 'full_reload.csv.gz'
                          WHEN 'ddl' THEN 'ddl.sql' ELSE 'streaming.csv.gz' END,
              kind, ('0/' || to_hex(1000 + g * 16))::pg_lsn,
              ('0/' || to_hex(1000 + g * 16 + 8))::pg_lsn,
              CASE WHEN kind = 'streaming' THEN 0 END, CASE WHEN kind = 'streaming' THEN g % 9 END,
              CASE WHEN kind = 'ddl' THEN 0 ELSE 1 + g % 40 END, 200 + g % 4000,
              md5(g::text) || md5(t::text), kind = 'ddl',
              CASE WHEN kind = 'full_reload' THEN 'initial' END
       FROM (SELECT g, 1 + (g - 1) % $2::int AS t,
                    CASE WHEN g <= $2::int THEN 'full_reload'
                         WHEN g % 50 = 0 THEN 'ddl' ELSE 'streaming' END AS kind,
                    to_char(timestamp '2026-11-01' + g * interval '100 milliseconds',
                            'YYYYMMDD"T"HH24MISS".MS"Z') AS bts
             FROM generate_series(1, greatest($3::int, $2::int)) g) x`,
      [name, tables, files],
    );
    await client.query(
      `INSERT INTO cdc_registry.reload_operations (slot_name, schema_name, table_name,
         relation_oid, state, requested_at, consistent_lsn, started_at, finished_at, reason)
       SELECT $1, 's' || (i % 7), 't' || i, 100000 + i, 'done', now() - interval '30 days',
              ('0/' || to_hex(1000 + i * 16))::pg_lsn, now() - interval '30 days',
              now() - interval '30 days', 'initial'
       FROM generate_series(1, $2::int) i`,
      [name, tables],
    );
    // Later reloads: every 499th requested, every 250th failed (a few of
    // those later done again), every 991st exporting.
    await client.query(
      `INSERT INTO cdc_registry.reload_operations (slot_name, schema_name, table_name,
         relation_oid, state, requested_at, finished_at, error, reason)
       SELECT $1, 's' || (i % 7), 't' || i, 100000 + i, st, now() - interval '1 day',
              CASE WHEN st IN ('failed', 'done') THEN now() END,
              CASE WHEN st = 'failed' THEN 'relation does not exist' END, 'requested'
       FROM generate_series(1, $2::int) i,
            LATERAL (VALUES (CASE WHEN i % 499 = 0 THEN 'requested'
                                  WHEN i % 991 = 0 THEN 'exporting'
                                  WHEN i % 250 = 0 THEN 'failed' END)) v(st)
       WHERE st IS NOT NULL`,
      [name, tables],
    );
    await client.query(
      `INSERT INTO cdc_registry.reload_operations (slot_name, schema_name, table_name,
         relation_oid, state, requested_at, finished_at, reason)
       SELECT $1, 's' || (i % 7), 't' || i, 100000 + i, 'done', now(), now(), 'requested'
       FROM generate_series(1000, $2::int, 1000) i`,
      [name, tables],
    );
    // A slot recreated long ago: a closed gap per table (each table's initial
    // export comes after it, so its history is complete again).
    await client.query(
      `INSERT INTO cdc_registry.history_gap (slot_name, schema_name, table_name, relation_oid,
         from_lsn, to_lsn, opened_at_lsn, reason, created_at)
       SELECT $1, 's' || (i % 7), 't' || i, 100000 + i, '0/10', '0/20', '0/18', 'wal_removed',
              now() - interval '60 days'
       FROM generate_series(1, $2::int) i`,
      [name, tables],
    );
    await client.query(
      `INSERT INTO cdc_registry.checkpoint (slot_name, checkpoint_lsn) VALUES ($1, '1/0')
       ON CONFLICT (slot_name) DO UPDATE SET checkpoint_lsn = EXCLUDED.checkpoint_lsn`,
      [name],
    );
  }
  await client.query(
    `ANALYZE cdc_registry.file_log, cdc_registry.table_state, cdc_registry.reload_operations,
       cdc_registry.file_totals, cdc_registry.history_gap`,
  );
  const n = await client.query(
    "SELECT count(*)::int AS n FROM cdc_registry.file_log WHERE slot_name = $1",
    [slot],
  );
  return { tables: size.tables, files: n.rows[0].n };
}
