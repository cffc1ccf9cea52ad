/**
 * The registry as the stream process uses it: per-table positions, the
 * checkpoint LSN, and one transaction per flush that records files, table
 * state and checkpoint together.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { CdcError } from "../errors.ts";
import { formatLsn, type Lsn, parseLsn } from "../lsn.ts";
import { appliedMigrations, MIGRATIONS } from "./migrations.ts";

/** Position of the last registered row of a table: (commit LSN, seq). */
export interface TablePosition {
  lsn: Lsn;
  seq: number;
}

/** What the registry holds about a table. */
export interface TableState {
  schema: string;
  table: string;
  tableDir: string;
  mode: string;
  reloadLsn: Lsn | null;
  last: TablePosition | null;
  lastBatchTs: string | null;
}

/** A file to record in `file_log`. */
export interface FileRecord {
  schema: string;
  table: string;
  tableDir: string;
  batchTs: string;
  /** Relative to the data dir, with `/` separators. */
  path: string;
  fileType: "streaming" | "full_reload" | "ddl";
  startLsn: Lsn;
  endLsn: Lsn;
  startSeq: number | null;
  endSeq: number | null;
  rowCount: number;
  byteSize: number;
  sha256: string;
  hasDdl: boolean;
}

/** The table-state change that goes with a file. */
export interface TableStateUpdate {
  schema: string;
  table: string;
  tableDir: string;
  relationOid: number | null;
  last: TablePosition;
  lastBatchTs: string;
  /** Set to change the table's mode (e.g. "dropped"). */
  mode?: "dropped";
}

/** application_name of the registry session of `stream`, which holds the slot lock. */
export const REGISTRY_APPLICATION_NAME = "cdc-egress/registry";

/** How long a lock holder must look dead before it is taken over. */
const STALE_LOCK_MS = 45_000;

/** Options for {@linkcode Registry.lockSlot}. */
export interface LockSlotOptions {
  /**
   * Whether the slot has a walsender now. Without it no holder is ever taken
   * for dead (the registry may be another server than the slot's).
   */
  slotActive?: () => Promise<boolean>;
  /** A holder idle this long while the slot is inactive is dead (default 45 s). */
  staleAfterMs?: number;
  /** Called once per holder that is being waited out. */
  onWait?: (pid: number) => void;
  /** Called after a dead holder was terminated. */
  onTakeOver?: (pid: number) => void;
}

/** Registry access bound to one slot. */
export class Registry {
  readonly client: pg.Client;
  readonly slot: string;
  /** Serializes transactions: the stream loop and export workers share the client. */
  #tail: Promise<unknown> = Promise.resolve();

  constructor(client: pg.Client, slot: string) {
    this.client = client;
    this.slot = slot;
  }

  /** Throws not_initialized unless every migration is applied. */
  async assertInitialized(): Promise<void> {
    let applied: number[];
    try {
      applied = await appliedMigrations(this.client);
    } catch (error) {
      throw new CdcError("registry", `Cannot read the registry: ${(error as Error).message}`, {
        cause: error,
      });
    }
    const missing = MIGRATIONS.filter((m) => !applied.includes(m.version));
    if (missing.length > 0) {
      throw new CdcError(
        "not_initialized",
        `Cannot use the registry: ${
          applied.length === 0 ? "schema cdc_registry does not exist" : "migrations are missing"
        }; run "cdc-egress init" first`,
      );
    }
  }

  /**
   * Takes the session advisory lock that makes this process the only
   * stream for the slot; returns null when taken, else the holder's pid.
   *
   * A holder that looks dead is taken over (see {@linkcode LockSlotOptions}):
   * it is a `stream` registry session ({@linkcode REGISTRY_APPLICATION_NAME}),
   * idle (not in a transaction) for `staleAfterMs`, while the slot has had
   * no walsender all along. A live stream always has its walsender on the
   * slot, except for the moments between taking the lock and starting
   * replication, which are far shorter. Such a holder is waited for until
   * it has been idle that long, then terminated. Anything else (the slot
   * active, another application, a transaction open) is returned at once.
   */
  async lockSlot(options: LockSlotOptions = {}): Promise<number | null> {
    const staleAfter = options.staleAfterMs ?? STALE_LOCK_MS;
    const tryLock = async () =>
      (await this.client.query(
        "SELECT pg_try_advisory_lock(hashtext('cdc-egress stream'), hashtext($1)) AS ok",
        [this.slot],
      )).rows[0].ok as boolean;
    let announced: number | null = null;
    for (let round = 0;; round++) {
      if (await tryLock()) return null;
      const res = await this.client.query(
        `SELECT l.pid, a.application_name = $2 AND a.state = 'idle' AS candidate,
                (extract(epoch FROM now() - a.state_change) * 1000)::float8 AS idle_ms
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted
           AND l.classid = hashtext('cdc-egress stream')::oid AND l.objid = hashtext($1)::oid
         LIMIT 1`,
        [this.slot, REGISTRY_APPLICATION_NAME],
      );
      const holder = res.rows[0];
      // Released between the two queries: try again (a few times at most).
      if (!holder) {
        if (round < 5) continue;
        return -1;
      }
      const pid = Number(holder.pid);
      if (!holder.candidate || !options.slotActive || await options.slotActive()) return pid;
      const idleMs = Number(holder.idle_ms);
      if (idleMs < staleAfter) {
        if (announced !== pid) options.onWait?.(pid);
        announced = pid;
        await new Promise((r) => setTimeout(r, Math.min(1000, staleAfter - idleMs + 50)));
        continue;
      }
      // Terminate only if it is still the same idle session (state_change
      // unchanged means it has not run anything since we looked).
      const killed = await this.client.query(
        `SELECT pg_terminate_backend(a.pid) AS ok FROM pg_stat_activity a
         WHERE a.pid = $1 AND a.application_name = $2 AND a.state = 'idle'
           AND now() - a.state_change >= $3 * interval '1 millisecond'`,
        [pid, REGISTRY_APPLICATION_NAME, staleAfter],
      ).catch(() => null);
      if (!killed?.rows[0]?.ok) return pid;
      options.onTakeOver?.(pid);
      // The backend exits asynchronously; its lock goes with it.
      for (let i = 0; i < 100; i++) {
        if (await tryLock()) return null;
        await new Promise((r) => setTimeout(r, 100));
      }
      return pid;
    }
  }

  /** The checkpoint LSN, or null before the first one. */
  async checkpoint(): Promise<Lsn | null> {
    const res = await this.client.query(
      "SELECT checkpoint_lsn::text AS lsn FROM cdc_registry.checkpoint WHERE slot_name = $1",
      [this.slot],
    );
    return res.rows[0] ? parseLsn(res.rows[0].lsn) : null;
  }

  /** Every table's state for this slot, keyed by `schema\0table`. */
  async tableStates(): Promise<Map<string, TableState>> {
    const res = await this.client.query(
      `SELECT schema_name, table_name, table_dir, mode, reload_lsn::text AS reload_lsn,
              last_lsn::text AS last_lsn, last_seq, last_batch_ts
       FROM cdc_registry.table_state WHERE slot_name = $1`,
      [this.slot],
    );
    const out = new Map<string, TableState>();
    for (const r of res.rows) {
      out.set(tableKey(r.schema_name, r.table_name), {
        schema: r.schema_name,
        table: r.table_name,
        tableDir: r.table_dir,
        mode: r.mode,
        reloadLsn: r.reload_lsn ? parseLsn(r.reload_lsn) : null,
        last: r.last_lsn ? { lsn: parseLsn(r.last_lsn), seq: Number(r.last_seq ?? 0) } : null,
        lastBatchTs: r.last_batch_ts,
      });
    }
    return out;
  }

  /** Paths of every registered file of this slot (relative to the data dir). */
  async registeredPaths(): Promise<Set<string>> {
    const res = await this.client.query(
      "SELECT path FROM cdc_registry.file_log WHERE slot_name = $1",
      [this.slot],
    );
    return new Set(res.rows.map((r) => r.path as string));
  }

  /**
   * Records files, table positions and the checkpoint in one transaction.
   * The checkpoint only moves forward.
   */
  commitFlush(files: FileRecord[], states: TableStateUpdate[], checkpoint: Lsn): Promise<void> {
    return this.#exclusive(() => this.#commitFlush(files, states, checkpoint));
  }

  /** Runs `fn` after every earlier exclusive operation has finished. */
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(fn, fn);
    this.#tail = run.catch(() => {});
    return run;
  }

  async #insertFile(f: FileRecord): Promise<void> {
    await this.client.query(
      `INSERT INTO cdc_registry.file_log (slot_name, schema_name, table_name, table_dir, batch_ts,
         path, file_type, start_lsn, end_lsn, start_seq, end_seq, row_count, byte_size, sha256, has_ddl)
       VALUES ($1,$2,$3,$4,$5,$6,$7,$8::pg_lsn,$9::pg_lsn,$10,$11,$12,$13,$14,$15)`,
      [
        this.slot,
        f.schema,
        f.table,
        f.tableDir,
        f.batchTs,
        f.path,
        f.fileType,
        formatLsn(f.startLsn),
        formatLsn(f.endLsn),
        f.startSeq,
        f.endSeq,
        f.rowCount,
        f.byteSize,
        f.sha256,
        f.hasDdl,
      ],
    );
  }

  async #commitFlush(
    files: FileRecord[],
    states: TableStateUpdate[],
    checkpoint: Lsn,
  ): Promise<void> {
    const c = this.client;
    await c.query("BEGIN");
    try {
      for (const f of files) await this.#insertFile(f);
      for (const s of states) {
        await c.query(
          `INSERT INTO cdc_registry.table_state (slot_name, schema_name, table_name, table_dir,
             relation_oid, mode, last_lsn, last_seq, last_batch_ts, updated_at)
           VALUES ($1,$2,$3,$4,$5,COALESCE($9, 'streaming'),$6::pg_lsn,$7,$8,now())
           ON CONFLICT (slot_name, schema_name, table_name) DO UPDATE SET
             table_dir = EXCLUDED.table_dir, mode = COALESCE($9, table_state.mode),
             relation_oid = COALESCE(EXCLUDED.relation_oid, table_state.relation_oid),
             last_lsn = EXCLUDED.last_lsn, last_seq = EXCLUDED.last_seq,
             last_batch_ts = EXCLUDED.last_batch_ts, updated_at = now()`,
          [
            this.slot,
            s.schema,
            s.table,
            s.tableDir,
            s.relationOid,
            formatLsn(s.last.lsn),
            s.last.seq,
            s.lastBatchTs,
            s.mode ?? null,
          ],
        );
      }
      await this.#saveCheckpoint(checkpoint);
      await c.query("COMMIT");
    } catch (error) {
      await c.query("ROLLBACK").catch(() => {});
      throw new CdcError("registry", `Cannot register files: ${(error as Error).message}`, {
        cause: error,
      });
    }
  }

  /** Moves the checkpoint forward (never back) on its own. */
  async saveCheckpoint(lsn: Lsn): Promise<void> {
    try {
      await this.#exclusive(() => this.#saveCheckpoint(lsn));
    } catch (error) {
      throw new CdcError("registry", `Cannot save the checkpoint: ${(error as Error).message}`, {
        cause: error,
      });
    }
  }

  /** Reload operations not finished yet (requested or exporting), oldest first. */
  pendingReloads(): Promise<ReloadRequest[]> {
    return this.#exclusive(async () => {
      const res = await this.client.query(
        `SELECT id, schema_name, table_name, state FROM cdc_registry.reload_operations
         WHERE slot_name = $1 AND state IN ('requested', 'exporting') ORDER BY id`,
        [this.slot],
      );
      return res.rows.map((r) => ({
        id: Number(r.id),
        schema: r.schema_name as string,
        table: r.table_name as string,
      }));
    });
  }

  /**
   * Requests a reload of each published table that has never been exported
   * (a fresh slot, or a table added to the publication), unless one is
   * pending or the table is dropped.
   */
  requestMissingExports(publication: string): Promise<number> {
    return this.#exclusive(async () => {
      const res = await this.client.query(
        `INSERT INTO cdc_registry.reload_operations (slot_name, schema_name, table_name)
         SELECT $1, p.schemaname, p.tablename FROM pg_publication_tables p
         WHERE p.pubname = $2 AND p.schemaname <> 'cdc_registry'
           AND NOT EXISTS (SELECT 1 FROM cdc_registry.table_state s WHERE s.slot_name = $1
                             AND s.schema_name = p.schemaname AND s.table_name = p.tablename
                             AND (s.reload_lsn IS NOT NULL OR s.mode = 'dropped'))
           AND NOT EXISTS (SELECT 1 FROM cdc_registry.reload_operations o WHERE o.slot_name = $1
                             AND o.schema_name = p.schemaname AND o.table_name = p.tablename
                             AND o.state IN ('requested', 'exporting'))`,
        [this.slot, publication],
      );
      return res.rowCount ?? 0;
    });
  }

  /** Marks operations exporting at `lsn` and their tables reloading. */
  startReloads(ops: ReloadRequest[], lsn: Lsn, tableDirs: Map<string, string>): Promise<void> {
    return this.#exclusive(() =>
      this.#transaction(async (c) => {
        for (const op of ops) {
          await c.query(
            `UPDATE cdc_registry.reload_operations SET state = 'exporting', consistent_lsn = $2::pg_lsn,
               started_at = now(), error = NULL WHERE id = $1`,
            [op.id, formatLsn(lsn)],
          );
          await c.query(
            `INSERT INTO cdc_registry.table_state (slot_name, schema_name, table_name, table_dir, mode)
             VALUES ($1, $2, $3, $4, 'reloading')
             ON CONFLICT (slot_name, schema_name, table_name) DO UPDATE SET mode = 'reloading',
               updated_at = now()`,
            [this.slot, op.schema, op.table, tableDirs.get(tableKey(op.schema, op.table)) ?? ""],
          );
        }
      })
    );
  }

  /** Records a finished export: its file, the table's reload LSN, the operations done. */
  finishReload(ops: ReloadRequest[], file: FileRecord, relationOid: number): Promise<void> {
    return this.#exclusive(() =>
      this.#transaction(async (c) => {
        await this.#insertFile(file);
        await c.query(
          `INSERT INTO cdc_registry.table_state (slot_name, schema_name, table_name, table_dir,
             relation_oid, mode, reload_lsn, last_batch_ts)
           VALUES ($1, $2, $3, $4, $5, 'streaming', $6::pg_lsn, $7)
           ON CONFLICT (slot_name, schema_name, table_name) DO UPDATE SET mode = 'streaming',
             table_dir = EXCLUDED.table_dir, relation_oid = EXCLUDED.relation_oid,
             reload_lsn = EXCLUDED.reload_lsn,
             last_batch_ts = GREATEST(table_state.last_batch_ts, EXCLUDED.last_batch_ts),
             updated_at = now()`,
          [
            this.slot,
            file.schema,
            file.table,
            file.tableDir,
            relationOid,
            formatLsn(file.startLsn),
            file.batchTs,
          ],
        );
        await c.query(
          `UPDATE cdc_registry.reload_operations SET state = 'done', finished_at = now()
           WHERE id = ANY($1::bigint[])`,
          [ops.map((o) => o.id)],
        );
      })
    );
  }

  /** Records a failed export attempt; the operation stays pending and is retried. */
  noteReloadError(ops: ReloadRequest[], message: string, final: boolean): Promise<void> {
    return this.#exclusive(async () => {
      await this.client.query(
        `UPDATE cdc_registry.reload_operations SET error = $2,
           state = CASE WHEN $3 THEN 'failed' ELSE state END,
           finished_at = CASE WHEN $3 THEN now() ELSE finished_at END
         WHERE id = ANY($1::bigint[])`,
        [ops.map((o) => o.id), message, final],
      );
      if (final) {
        for (const op of ops) {
          await this.client.query(
            `UPDATE cdc_registry.table_state SET mode = 'dropped', updated_at = now()
             WHERE slot_name = $1 AND schema_name = $2 AND table_name = $3`,
            [this.slot, op.schema, op.table],
          );
        }
      }
    });
  }

  async #transaction(fn: (c: pg.Client) => Promise<void>): Promise<void> {
    const c = this.client;
    await c.query("BEGIN");
    try {
      await fn(c);
      await c.query("COMMIT");
    } catch (error) {
      await c.query("ROLLBACK").catch(() => {});
      throw new CdcError("registry", `Cannot update the registry: ${(error as Error).message}`, {
        cause: error,
      });
    }
  }

  async #saveCheckpoint(lsn: Lsn): Promise<void> {
    await this.client.query(
      `INSERT INTO cdc_registry.checkpoint (slot_name, checkpoint_lsn) VALUES ($1, $2::pg_lsn)
       ON CONFLICT (slot_name) DO UPDATE
         SET checkpoint_lsn = GREATEST(checkpoint.checkpoint_lsn, EXCLUDED.checkpoint_lsn),
             updated_at = now()`,
      [this.slot, formatLsn(lsn)],
    );
  }
}

/** A reload operation to carry out. */
export interface ReloadRequest {
  id: number;
  schema: string;
  table: string;
}

/** Map key for a table. */
export function tableKey(schema: string, table: string): string {
  return `${schema}\0${table}`;
}
