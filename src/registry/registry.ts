/**
 * The registry as the stream process uses it: per-table positions, the
 * checkpoint LSN, and one transaction per flush that records files, table
 * state and checkpoint together.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { CdcError } from "../errors.ts";
import { formatLsn, type Lsn, parseLsn } from "../lsn.ts";
import type { PublishedTable, SourceIdentity } from "../source/source_catalog.ts";
import { appliedMigrations, MIGRATIONS } from "./migrations.ts";
import { HistoryGapLog } from "./history_gap.ts";
import { STATUS_QUERIES, type StatusQueryName, statusQueryParams } from "./status_queries.ts";

/** Position of the last registered row of a table: (commit LSN, seq). */
export interface TablePosition {
  lsn: Lsn;
  seq: number;
}

/** What the registry holds about a table (a relation, by OID). */
export interface TableState {
  oid: number;
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
  /** The relation the file belongs to. */
  relationOid: number;
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
  /** Why a full_reload was taken (`initial`, `requested`, `ddl`, `rename`). */
  reloadReason?: string | null;
  /**
   * Absolute path of the sealed bytes when they are not at the usual place
   * at registration, `<data dir>/<dir>/.tmp-<name>` (the upload to object
   * storage reads them from there). Not stored.
   */
  localPath?: string;
}

/** The table-state change that goes with files. */
export interface TableStateUpdate {
  oid: number;
  schema: string;
  table: string;
  tableDir: string;
  /** The newest registered change, when the files hold changes. */
  last: TablePosition | null;
  lastBatchTs: string;
  /** Set to change the table's mode. */
  mode?: "dropped" | "streaming";
  /** Set when a full_reload is registered. */
  reloadLsn?: Lsn;
}

/** A reload to request in the same transaction as a flush (value-changing DDL). */
export interface ReloadInsert {
  oid: number;
  schema: string;
  table: string;
  reason: string;
  /** Changes after this position wait for the reload. */
  hold: TablePosition;
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

/**
 * Registry access bound to one slot: file rows, table state, checkpoints and
 * reload operations, on the registry's connection (the source database or
 * another server). Catalog questions about the source are not asked here
 * (see {@linkcode SourceCatalog}): the connection stays private.
 */
export class Registry {
  private readonly client: pg.Client;
  readonly slot: string;
  /** Serializes transactions: the stream loop and export workers share the client. */
  #tail: Promise<unknown> = Promise.resolve();

  constructor(client: pg.Client, slot: string) {
    this.client = client;
    this.slot = slot;
  }

  /** With object storage: puts files into the bucket before they are registered. */
  #beforeRegister: ((files: FileRecord[]) => Promise<void>) | null = null;

  /**
   * Sets what must happen to files before any transaction registers them
   * (the upload to object storage): it runs before {@linkcode commitFlush}
   * and {@linkcode finishReload} open their transaction, and a failure
   * leaves them unregistered.
   */
  setBeforeRegister(fn: ((files: FileRecord[]) => Promise<void>) | null): void {
    this.#beforeRegister = fn;
  }

  /** Throws not_initialized unless every migration is applied. */
  async assertInitialized(): Promise<void> {
    let applied: number[];
    try {
      applied = await appliedMigrations(this.client, "registry");
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

  /** Every relation's state for this slot, keyed by OID. */
  async tableStates(): Promise<Map<number, TableState>> {
    const res = await this.client.query(
      `SELECT relation_oid::int8 AS oid, schema_name, table_name, table_dir, mode,
              reload_lsn::text AS reload_lsn, last_lsn::text AS last_lsn, last_seq, last_batch_ts
       FROM cdc_registry.table_state WHERE slot_name = $1`,
      [this.slot],
    );
    const out = new Map<number, TableState>();
    for (const r of res.rows) {
      out.set(Number(r.oid), {
        oid: Number(r.oid),
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
  async commitFlush(
    files: FileRecord[],
    states: TableStateUpdate[],
    checkpoint: Lsn,
    reloads: ReloadInsert[] = [],
  ): Promise<void> {
    if (files.length > 0 && this.#beforeRegister) await this.#beforeRegister(files);
    return await this.#exclusive(() =>
      this.#transaction(async () => {
        await this.#insertFiles(files);
        await this.#upsertStates(states);
        await this.#insertReloads(reloads);
        await this.#saveCheckpoint(checkpoint);
      }, "Cannot register files")
    );
  }

  /** Runs `fn` after every earlier exclusive operation has finished. */
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(fn, fn);
    this.#tail = run.catch(() => {});
    return run;
  }

  /** One INSERT for many files. */
  async #insertFiles(files: FileRecord[]): Promise<void> {
    if (files.length === 0) return;
    const col = <T>(f: (r: FileRecord) => T) => files.map(f);
    await this.client.query(
      `INSERT INTO cdc_registry.file_log (slot_name, schema_name, table_name, table_dir,
         relation_oid, batch_ts, path, file_type, start_lsn, end_lsn, start_seq, end_seq,
         row_count, byte_size, sha256, has_ddl, reload_reason)
       SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::oid[], $6::text[],
         $7::text[], $8::text[], $9::pg_lsn[], $10::pg_lsn[], $11::int4[], $12::int4[],
         $13::int8[], $14::int8[], $15::text[], $16::bool[], $17::text[])`,
      [
        this.slot,
        col((f) => f.schema),
        col((f) => f.table),
        col((f) => f.tableDir),
        col((f) => f.relationOid),
        col((f) => f.batchTs),
        col((f) => f.path),
        col((f) => f.fileType),
        col((f) => formatLsn(f.startLsn)),
        col((f) => formatLsn(f.endLsn)),
        col((f) => f.startSeq),
        col((f) => f.endSeq),
        col((f) => f.rowCount),
        col((f) => f.byteSize),
        col((f) => f.sha256),
        col((f) => f.hasDdl),
        col((f) => f.reloadReason ?? null),
      ],
    );
    // Registered keys are no longer intents: neither the files nor their folders' schema.yml.
    await this.client.query(
      `DELETE FROM cdc_registry.upload_intent
       WHERE slot_name = $1 AND regexp_replace(path, '/[^/]*$', '') = ANY($2::text[])`,
      [this.slot, [...new Set(files.map((f) => f.path.replace(/\/[^/]*$/, "")))]],
    );
  }

  /**
   * One upsert for many relations' states. A changed name keeps the old one
   * as the previous name, so consumers can follow a renamed table.
   */
  async #upsertStates(updates: TableStateUpdate[]): Promise<void> {
    if (updates.length === 0) return;
    const states = [...new Map(updates.map((u) => [u.oid, u])).values()];
    const col = <T>(f: (r: TableStateUpdate) => T) => states.map(f);
    await this.client.query(
      `INSERT INTO cdc_registry.table_state AS t (slot_name, relation_oid, schema_name, table_name,
         table_dir, mode, last_lsn, last_seq, last_batch_ts, reload_lsn, updated_at)
       SELECT $1, u.oid, u.schema, u.tab, u.dir, COALESCE(u.mode, 'streaming'), u.last_lsn,
              u.last_seq, u.batch_ts, u.reload_lsn, now()
       FROM unnest($2::oid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::pg_lsn[],
                   $8::int4[], $9::text[], $10::pg_lsn[])
         AS u(oid, schema, tab, dir, mode, last_lsn, last_seq, batch_ts, reload_lsn)
       ON CONFLICT (slot_name, relation_oid) DO UPDATE SET
         previous_schema = CASE WHEN (t.schema_name, t.table_name)
             IS DISTINCT FROM (EXCLUDED.schema_name, EXCLUDED.table_name)
           THEN t.schema_name ELSE t.previous_schema END,
         previous_table = CASE WHEN (t.schema_name, t.table_name)
             IS DISTINCT FROM (EXCLUDED.schema_name, EXCLUDED.table_name)
           THEN t.table_name ELSE t.previous_table END,
         schema_name = EXCLUDED.schema_name, table_name = EXCLUDED.table_name,
         table_dir = EXCLUDED.table_dir,
         mode = CASE WHEN t.mode = 'dropped' THEN 'dropped'
                     WHEN EXCLUDED.mode = 'dropped' OR EXCLUDED.reload_lsn IS NOT NULL
                       THEN EXCLUDED.mode
                     WHEN t.mode IN ('reloading', 'pending_reload') THEN t.mode
                     ELSE EXCLUDED.mode END,
         last_lsn = COALESCE(EXCLUDED.last_lsn, t.last_lsn),
         last_seq = CASE WHEN EXCLUDED.last_lsn IS NULL THEN t.last_seq ELSE EXCLUDED.last_seq END,
         last_batch_ts = GREATEST(t.last_batch_ts, EXCLUDED.last_batch_ts),
         reload_lsn = COALESCE(EXCLUDED.reload_lsn, t.reload_lsn),
         updated_at = now()`,
      [
        this.slot,
        col((s) => s.oid),
        col((s) => s.schema),
        col((s) => s.table),
        col((s) => s.tableDir),
        col((s) => s.mode ?? null),
        col((s) => (s.last ? formatLsn(s.last.lsn) : null)),
        col((s) => s.last?.seq ?? null),
        col((s) => s.lastBatchTs),
        col((s) => (s.reloadLsn === undefined ? null : formatLsn(s.reloadLsn))),
      ],
    );
  }

  async #insertReloads(reloads: ReloadInsert[]): Promise<void> {
    for (const r of reloads) {
      await this.client.query(
        `INSERT INTO cdc_registry.reload_operations (slot_name, schema_name, table_name,
           relation_oid, reason, hold_lsn, hold_seq)
         VALUES ($1, $2, $3, $4, $5, $6::pg_lsn, $7)`,
        [this.slot, r.schema, r.table, r.oid, r.reason, formatLsn(r.hold.lsn), r.hold.seq],
      );
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
        `SELECT id, schema_name, table_name, relation_oid::int8 AS oid, reason,
                hold_lsn::text AS hold_lsn, hold_seq
         FROM cdc_registry.reload_operations
         WHERE slot_name = $1 AND state IN ('requested', 'exporting') ORDER BY id`,
        [this.slot],
      );
      return res.rows.map((r) => ({
        id: Number(r.id),
        schema: r.schema_name as string,
        table: r.table_name as string,
        oid: r.oid === null ? null : Number(r.oid),
        reason: r.reason as string,
        hold: r.hold_lsn === null
          ? null
          : { lsn: parseLsn(r.hold_lsn), seq: Number(r.hold_seq ?? 0) },
      }));
    });
  }

  /**
   * Requests the first export of each published relation that has none
   * (a fresh slot, a table added to the publication, a name that now means
   * another relation), unless one is pending or the relation is dropped.
   */
  requestMissingExports(published: PublishedTable[]): Promise<number> {
    if (published.length === 0) return Promise.resolve(0);
    return this.#exclusive(async () => {
      const res = await this.client.query(
        `INSERT INTO cdc_registry.reload_operations (slot_name, schema_name, table_name,
           relation_oid, reason)
         SELECT $1, p.schema, p.tab, p.oid, 'initial'
         FROM unnest($2::text[], $3::text[], $4::oid[]) AS p(schema, tab, oid)
         WHERE NOT EXISTS (SELECT 1 FROM cdc_registry.table_state s WHERE s.slot_name = $1
                             AND s.relation_oid = p.oid
                             AND (s.reload_lsn IS NOT NULL OR s.mode = 'dropped'))
           -- Two anti-joins, not one with OR: each hashes, so thousands of
           -- tables cost one pass instead of one scan per table.
           AND NOT EXISTS (SELECT 1 FROM cdc_registry.reload_operations o WHERE o.slot_name = $1
                             AND o.state IN ('requested', 'exporting') AND o.relation_oid = p.oid)
           AND NOT EXISTS (SELECT 1 FROM cdc_registry.reload_operations o WHERE o.slot_name = $1
                             AND o.state IN ('requested', 'exporting') AND o.relation_oid IS NULL
                             AND o.schema_name = p.schema AND o.table_name = p.tab)`,
        [
          this.slot,
          published.map((p) => p.schema),
          published.map((p) => p.table),
          published.map((p) => p.oid),
        ],
      );
      return res.rowCount ?? 0;
    });
  }

  /** Marks operations exporting at `lsn` (bound to their relation) and the tables reloading. */
  startReloads(
    ops: ReloadRequest[],
    lsn: Lsn,
    tables: Map<number, { schema: string; table: string; tableDir: string }>,
    oidOf: (op: ReloadRequest) => number,
  ): Promise<void> {
    return this.#exclusive(() =>
      this.#transaction(async (c) => {
        await c.query(
          `UPDATE cdc_registry.reload_operations o SET state = 'exporting',
             consistent_lsn = $2::pg_lsn, started_at = now(), error = NULL, waiting_for = NULL,
             relation_oid = u.oid
           FROM unnest($1::int8[], $3::oid[]) AS u(id, oid) WHERE o.id = u.id`,
          [ops.map((o) => o.id), formatLsn(lsn), ops.map(oidOf)],
        );
        if (tables.size === 0) return;
        const rows = [...tables];
        // One statement for every table: thousands of tables start in one round trip.
        await c.query(
          `INSERT INTO cdc_registry.table_state (slot_name, relation_oid, schema_name, table_name,
             table_dir, mode)
           SELECT $1, u.oid, u.schema, u.tab, u.dir, 'reloading'
           FROM unnest($2::oid[], $3::text[], $4::text[], $5::text[]) AS u(oid, schema, tab, dir)
           ON CONFLICT (slot_name, relation_oid) DO UPDATE SET
             mode = CASE WHEN table_state.mode = 'dropped' THEN 'dropped' ELSE 'reloading' END,
             updated_at = now()`,
          [
            this.slot,
            rows.map(([oid]) => oid),
            rows.map(([, t]) => t.schema),
            rows.map(([, t]) => t.table),
            rows.map(([, t]) => t.tableDir),
          ],
        );
      }, "Cannot start the export")
    );
  }

  /**
   * Records a finished export with the files held back for it, the table's
   * new state, the operations done and the checkpoint, in one transaction.
   */
  finishReload(
    ops: ReloadRequest[],
    files: FileRecord[],
    state: TableStateUpdate,
    checkpoint: Lsn,
  ): Promise<void> {
    return this.finishReloads([{ ops, files, state }], checkpoint);
  }

  /**
   * Records many finished exports (each with its held files, new table
   * state and operations) and the checkpoint in one transaction of four
   * statements, however many exports: all of them are registered, or none.
   */
  async finishReloads(exports: FinishedExport[], checkpoint: Lsn): Promise<void> {
    const files = exports.flatMap((e) => e.files);
    if (files.length > 0 && this.#beforeRegister) await this.#beforeRegister(files);
    return await this.#exclusive(() =>
      this.#transaction(async (c) => {
        await this.#insertFiles(exports.flatMap((e) => e.files));
        await this.#upsertStates(exports.map((e) => e.state));
        const ids: number[] = [];
        const lsns: (string | null)[] = [];
        for (const e of exports) {
          const full = e.files.find((f) => f.fileType === "full_reload");
          for (const op of e.ops) {
            ids.push(op.id);
            lsns.push(full ? formatLsn(full.startLsn) : null);
          }
        }
        await c.query(
          `UPDATE cdc_registry.reload_operations o SET state = 'done', finished_at = now(),
             consistent_lsn = COALESCE(u.lsn, o.consistent_lsn)
           FROM unnest($1::bigint[], $2::pg_lsn[]) AS u(id, lsn) WHERE o.id = u.id`,
          [ids, lsns],
        );
        await this.#saveCheckpoint(checkpoint);
      }, "Cannot register the export")
    );
  }

  /** Notes what an export waits for (shown by `status`). */
  noteWaiting(ops: ReloadRequest[], text: string): Promise<void> {
    return this.#exclusive(async () => {
      await this.client.query(
        `UPDATE cdc_registry.reload_operations SET waiting_for = $2 WHERE id = ANY($1::bigint[])`,
        [ops.map((o) => o.id), text],
      );
    });
  }

  /** Records a failed export attempt; unless final, the operation stays pending. */
  noteReloadError(ops: ReloadRequest[], message: string, final: boolean): Promise<void> {
    return this.#exclusive(async () => {
      await this.client.query(
        `UPDATE cdc_registry.reload_operations SET error = $2,
           state = CASE WHEN $3 THEN 'failed' ELSE state END,
           finished_at = CASE WHEN $3 THEN now() ELSE finished_at END
         WHERE id = ANY($1::bigint[])`,
        [ops.map((o) => o.id), message, final],
      );
      if (!final) return;
      // A final failure means the table is gone: its relation, or whatever
      // relation its name meant (no relation has that name any more).
      await this.client.query(
        `UPDATE cdc_registry.table_state s SET mode = 'dropped', updated_at = now()
         FROM unnest($2::text[], $3::text[], $4::oid[]) AS o(schema, tab, oid)
         WHERE s.slot_name = $1 AND s.mode <> 'dropped'
           AND (s.relation_oid = o.oid
             OR (o.oid IS NULL AND s.schema_name = o.schema AND s.table_name = o.tab))`,
        [this.slot, ops.map((o) => o.schema), ops.map((o) => o.table), ops.map((o) => o.oid)],
      );
    });
  }

  async #transaction(
    fn: (c: pg.Client) => Promise<void>,
    what = "Cannot update the registry",
  ): Promise<void> {
    const c = this.client;
    await c.query("BEGIN");
    try {
      await fn(c);
      await c.query("COMMIT");
    } catch (error) {
      await c.query("ROLLBACK").catch(() => {});
      throw new CdcError("registry", `${what}: ${(error as Error).message}`, { cause: error });
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

  // --- Reads and requests of the operator commands (status, verify, reload) and of
  // --- sharing one registry between sources. Kept here so the connection stays private.

  /** A query whose failure (the registry went away, say) becomes one clear registry error. */
  async #read(sql: string, params: unknown[] = []): Promise<pg.QueryResult> {
    try {
      return await this.client.query(sql, params);
    } catch (error) {
      throw new CdcError(
        "registry",
        `Cannot query the registry: ${(error as Error).message.split("\n")[0]}`,
        { cause: error },
      );
    }
  }

  /**
   * Records that this slot belongs to `source` (first come), then throws
   * like {@linkcode assertOwnedBy} when another source owns it.
   */
  async claimSlot(source: SourceIdentity, action: string): Promise<void> {
    await this.#read(
      `INSERT INTO cdc_registry.slot_owner (slot_name, system_identifier, database_name)
       VALUES ($1, $2, $3) ON CONFLICT (slot_name) DO NOTHING`,
      [this.slot, source.systemIdentifier, source.database],
    );
    await this.assertOwnedBy(source, action);
  }

  /**
   * Throws when the registry records this slot for another source than
   * `source`: a command pointed at the wrong source (or reusing a slot name
   * of another source in a shared registry) must not read or change its rows.
   */
  async assertOwnedBy(source: SourceIdentity, action: string): Promise<void> {
    const res = await this.#read(
      `SELECT system_identifier, database_name FROM cdc_registry.slot_owner WHERE slot_name = $1`,
      [this.slot],
    );
    const r = res.rows[0];
    if (!r) return;
    if (r.system_identifier === source.systemIdentifier && r.database_name === source.database) {
      return;
    }
    throw new CdcError(
      "config",
      `Cannot ${action} slot "${this.slot}": the registry records it for another source (database "${r.database_name}", system identifier ${r.system_identifier}); give each source its own --slot, or check --source`,
    );
  }

  /** The history gaps of this slot (lost slots recreated). */
  historyGaps(): HistoryGapLog {
    return new HistoryGapLog(this.client, this.slot);
  }

  /** Every slot this registry knows, with the source database that owns it (when recorded). */
  async slots(): Promise<{ slot: string; database: string | null }[]> {
    const res = await this.#read(STATUS_QUERIES.slots);
    return res.rows.map((r) => ({ slot: r.slot_name, database: r.database_name ?? null }));
  }

  /** The pid holding this slot's stream lock in the registry, or null. */
  async streamLockHolder(): Promise<number | null> {
    const res = await this.#read(
      `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
         AND classid = hashtext('cdc-egress stream')::oid AND objid = hashtext($1)::oid LIMIT 1`,
      [this.slot],
    );
    return res.rows[0]?.pid ?? null;
  }

  // --- Object storage (migration 8): the slot's storage location and upload intents.

  /** The storage URL recorded for this slot, or null. */
  async storageUrl(): Promise<string | null> {
    const res = await this.#read(
      "SELECT url FROM cdc_registry.storage_location WHERE slot_name = $1",
      [this.slot],
    );
    return res.rows[0]?.url ?? null;
  }

  /** Records `url` as the slot's storage location unless one is recorded; returns the recorded one. */
  async recordStorageUrl(url: string): Promise<string> {
    return await this.#exclusive(async () => {
      await this.client.query(
        `INSERT INTO cdc_registry.storage_location (slot_name, url) VALUES ($1, $2)
         ON CONFLICT (slot_name) DO NOTHING`,
        [this.slot, url],
      );
      const res = await this.client.query(
        "SELECT url FROM cdc_registry.storage_location WHERE slot_name = $1",
        [this.slot],
      );
      return res.rows[0].url as string;
    });
  }

  /** Whether the slot has registered any file. */
  async hasFiles(): Promise<boolean> {
    const res = await this.#read(
      "SELECT EXISTS (SELECT 1 FROM cdc_registry.file_log WHERE slot_name = $1) AS any",
      [this.slot],
    );
    return res.rows[0].any === true;
  }

  /** Records that `paths` are about to be uploaded (committed before the first byte is sent). */
  addUploadIntents(paths: string[]): Promise<void> {
    return this.#exclusive(async () => {
      await this.client.query(
        `INSERT INTO cdc_registry.upload_intent (slot_name, path)
         SELECT $1, p FROM unnest($2::text[]) AS p
         ON CONFLICT (slot_name, path) DO UPDATE SET upload_id = NULL, created_at = now()`,
        [this.slot, paths],
      );
    });
  }

  /** Records the multipart upload id of an intent (before its first part is sent). */
  setUploadId(path: string, uploadId: string): Promise<void> {
    return this.#exclusive(async () => {
      await this.client.query(
        `UPDATE cdc_registry.upload_intent SET upload_id = $3 WHERE slot_name = $1 AND path = $2`,
        [this.slot, path, uploadId],
      );
    });
  }

  /** Every upload intent of this slot. */
  async uploadIntents(): Promise<{ path: string; uploadId: string | null }[]> {
    const res = await this.#read(
      `SELECT path, upload_id FROM cdc_registry.upload_intent WHERE slot_name = $1 ORDER BY path`,
      [this.slot],
    );
    return res.rows.map((r) => ({ path: r.path, uploadId: r.upload_id }));
  }

  /** Removes the intents of `paths` (settled by recovery). */
  dropUploadIntents(paths: string[]): Promise<void> {
    return this.#exclusive(async () => {
      await this.client.query(
        "DELETE FROM cdc_registry.upload_intent WHERE slot_name = $1 AND path = ANY($2::text[])",
        [this.slot, paths],
      );
    });
  }

  /**
   * Of the folders `dirs` (relative), those holding a registered file of
   * this slot: a folder's files can only be named `names`, so this asks
   * the path index for those instead of scanning.
   */
  async registeredDirs(dirs: string[], names: readonly string[]): Promise<Set<string>> {
    const candidates = dirs.flatMap((d) => names.map((n) => `${d}/${n}`));
    const found = await this.registeredAmong(candidates);
    return new Set([...found].map((p) => p.replace(/\/[^/]*$/, "")));
  }

  /** Of `paths`, those registered for this slot. */
  async registeredAmong(paths: string[]): Promise<Set<string>> {
    const res = await this.#read(
      "SELECT path FROM cdc_registry.file_log WHERE slot_name = $1 AND path = ANY($2::text[])",
      [this.slot, paths],
    );
    return new Set(res.rows.map((r) => r.path as string));
  }

  /**
   * The file rows of this slot in id order (for verify): every one, or with
   * `range` those with `after < id <= upTo` (an index range scan).
   */
  async fileRows(range?: { after: number; upTo: number }): Promise<RegisteredFile[]> {
    const res = await this.#read(
      `SELECT ${FILE_COLUMNS} FROM cdc_registry.file_log
       WHERE slot_name = $1 AND ($2::int8 IS NULL OR (id > $2::int8 AND id <= $3::int8))
       ORDER BY id`,
      [this.slot, range?.after ?? null, range?.upTo ?? null],
    );
    return res.rows.map(registeredFile);
  }

  /** The newest file id of this slot, 0 when it has none. */
  async newestFileId(): Promise<number> {
    const res = await this.#read(
      "SELECT coalesce(max(id), 0)::int8 AS id FROM cdc_registry.file_log WHERE slot_name = $1",
      [this.slot],
    );
    return Number(res.rows[0].id);
  }

  /** When file `id` of this slot was registered, or null when the slot has no such file. */
  async fileRegisteredAt(id: number): Promise<Date | null> {
    const res = await this.#read(
      "SELECT created_at FROM cdc_registry.file_log WHERE slot_name = $1 AND id = $2::int8",
      [this.slot, id],
    );
    return res.rows[0]?.created_at ?? null;
  }

  /**
   * The first file of this slot registered after `time` (null when none),
   * and whether `time` is still in the future for the registry's clock.
   */
  async firstFileAfter(time: Date): Promise<{ id: number | null; future: boolean }> {
    const res = await this.#read(
      `SELECT (SELECT id FROM cdc_registry.file_log WHERE slot_name = $1 AND created_at > $2
               ORDER BY created_at, id LIMIT 1) AS id, $2::timestamptz > now() AS future`,
      [this.slot, time],
    );
    const r = res.rows[0];
    return { id: r.id === null ? null : Number(r.id), future: Boolean(r.future) };
  }

  /**
   * For each relation (and each name, for files without one) in `files`, the
   * files before id `mark` that its newer files continue: the newest file,
   * the newest streaming file and the newest full_reload at or before the
   * mark. One index probe each.
   */
  async filesBefore(mark: number, files: RegisteredFile[]): Promise<RegisteredFile[]> {
    const oids = [...new Set(files.filter((f) => f.oid !== null).map((f) => f.oid!))];
    const names = [
      ...new Map(
        files.filter((f) => f.oid === null).map((f) => [tableKey(f.schema, f.table), f]),
      ).values(),
    ];
    const probe = (where: string) =>
      ["NULL", "'streaming'", "'full_reload'"].map((type) =>
        `(SELECT ${FILE_COLUMNS} FROM cdc_registry.file_log f
          WHERE f.slot_name = $1 AND ${where} AND f.id <= $2::int8
            AND (${type}::text IS NULL OR f.file_type = ${type})
          ORDER BY f.start_lsn DESC, f.id DESC LIMIT 1)`
      ).join(" UNION ");
    const res = await this.#read(
      `SELECT DISTINCT ON (id) * FROM (
         SELECT b.* FROM unnest($3::oid[]) AS r(oid),
           LATERAL (${probe("f.relation_oid = r.oid")}) b
         UNION ALL
         SELECT b.* FROM unnest($4::text[], $5::text[]) AS n(schema_name, table_name),
           LATERAL (${
        probe(
          "f.schema_name = n.schema_name AND f.table_name = n.table_name AND " +
            "f.relation_oid IS NULL",
        )
      }) b) x
       ORDER BY id`,
      [this.slot, mark, oids, names.map((n) => n.schema), names.map((n) => n.table)],
    );
    return res.rows.map(registeredFile);
  }

  /** Whether a relation has a registered full_reload or streaming file. */
  async hasDataFiles(oid: number): Promise<boolean> {
    const res = await this.#read(
      `SELECT 1 FROM cdc_registry.file_log WHERE slot_name = $1 AND relation_oid = $2
         AND file_type IN ('full_reload', 'streaming') LIMIT 1`,
      [this.slot, oid],
    );
    return (res.rowCount ?? 0) > 0;
  }

  /** The relation (OID) that a table name means in the registry, or null. */
  async registeredOid(schema: string, table: string): Promise<number | null> {
    const res = await this.#read(
      `SELECT relation_oid::int8 AS oid FROM cdc_registry.table_state
       WHERE slot_name = $1 AND schema_name = $2 AND table_name = $3
       ORDER BY mode <> 'dropped' DESC, updated_at DESC LIMIT 1`,
      [this.slot, schema, table],
    );
    return res.rows[0] ? Number(res.rows[0].oid) : null;
  }

  /**
   * The files of one relation in replay order: a full_reload (the newest at
   * or before `asOf`, or with `first` the first of its current history:
   * after the newest one forced by DDL that changed rows or by a name that
   * came to mean it), then the DDL and streaming files that reach past it
   * (and, with `asOf`, start at or before it).
   */
  async replayFiles(oid: number, from: "newest" | "first" = "newest", asOf?: Lsn): Promise<
    {
      id: string;
      path: string;
      fileType: "full_reload" | "streaming" | "ddl";
      startLsn: Lsn;
      endLsn: Lsn;
      startSeq: number | null;
      endSeq: number | null;
      maxId: string;
    }[]
  > {
    const res = await this.#read(
      `WITH reloads AS (
         SELECT id, start_lsn, reload_reason FROM cdc_registry.file_log
         WHERE slot_name = $1 AND relation_oid = $2 AND file_type = 'full_reload'
           AND ($4::pg_lsn IS NULL OR start_lsn <= $4::pg_lsn)),
       base AS (
         SELECT CASE WHEN $3 = 'first'
           THEN COALESCE((SELECT max(start_lsn) FROM reloads WHERE reload_reason IN ('ddl', 'rename')),
                         (SELECT min(start_lsn) FROM reloads))
           ELSE (SELECT max(start_lsn) FROM reloads) END AS lsn),
       base_id AS (SELECT max(r.id) AS id FROM reloads r, base WHERE r.start_lsn = base.lsn)
       SELECT f.id::text AS id, f.path, f.file_type, f.start_lsn::text AS start_lsn,
              f.end_lsn::text AS end_lsn, f.start_seq, f.end_seq,
              max(f.id) OVER ()::text AS max_id
       FROM cdc_registry.file_log f, base, base_id
       WHERE f.slot_name = $1 AND f.relation_oid = $2
         AND ((f.file_type = 'full_reload' AND f.id = base_id.id)
           OR (f.file_type = 'streaming' AND (base.lsn IS NULL OR f.end_lsn >= base.lsn)
               AND ($4::pg_lsn IS NULL OR f.start_lsn <= $4::pg_lsn))
           OR (f.file_type = 'ddl' AND base.lsn IS NOT NULL AND f.start_lsn >= base.lsn
               AND ($4::pg_lsn IS NULL OR f.start_lsn <= $4::pg_lsn)))
       ORDER BY f.start_lsn, COALESCE(f.start_seq, -1), f.id`,
      [this.slot, oid, from, asOf === undefined ? null : formatLsn(asOf)],
    );
    return res.rows.map((r) => ({
      id: r.id,
      path: r.path,
      fileType: r.file_type,
      startLsn: parseLsn(r.start_lsn),
      endLsn: parseLsn(r.end_lsn),
      startSeq: r.start_seq,
      endSeq: r.end_seq,
      maxId: r.max_id,
    }));
  }

  /** The rows `status` shows for this slot: checkpoint, tables with file totals, reloads. */
  async statusRows(failedShown: number): Promise<StatusRows> {
    const q = (name: StatusQueryName) =>
      this.#read(STATUS_QUERIES[name], statusQueryParams(name, this.slot, failedShown));
    const checkpoint = await q("checkpoint");
    const tables = await q("tables");
    const lastReloads = await q("lastReloads");
    const pending = await q("pendingReloads");
    const failed = await q("failedReloads");
    return {
      checkpoint: checkpoint.rows[0] ?? null,
      tables: tables.rows,
      lastReloads: lastReloads.rows,
      pending: pending.rows,
      failed: failed.rows,
    };
  }

  /**
   * Records reload requests for `tables` in one transaction (state
   * `requested`; a streaming table becomes `pending_reload`); returns the ids.
   */
  requestReloads(tables: { schema: string; table: string }[]): Promise<number[]> {
    return this.#exclusive(async () => {
      const ids: number[] = [];
      await this.#transaction(async (c) => {
        for (const t of tables) {
          const res = await c.query(
            `INSERT INTO cdc_registry.reload_operations (slot_name, schema_name, table_name)
             VALUES ($1, $2, $3) RETURNING id`,
            [this.slot, t.schema, t.table],
          );
          await c.query(
            `UPDATE cdc_registry.table_state SET mode = 'pending_reload', updated_at = now()
             WHERE slot_name = $1 AND schema_name = $2 AND table_name = $3 AND mode = 'streaming'`,
            [this.slot, t.schema, t.table],
          );
          ids.push(Number(res.rows[0].id));
        }
      });
      return ids;
    });
  }

  /** The reload operations `ids` as they stand. */
  async reloadOutcomes(ids: number[]): Promise<
    {
      id: number;
      schema: string;
      table: string;
      state: string;
      lsn: string | null;
      error: string | null;
    }[]
  > {
    const res = await this.#read(
      `SELECT id, schema_name, table_name, state, consistent_lsn::text AS lsn, error
       FROM cdc_registry.reload_operations WHERE id = ANY($1::bigint[])`,
      [ids],
    );
    return res.rows.map((r) => ({
      id: Number(r.id),
      schema: r.schema_name,
      table: r.table_name,
      state: r.state,
      lsn: r.lsn ?? null,
      error: r.error ?? null,
    }));
  }
}

const FILE_COLUMNS = `id, relation_oid::int8 AS oid, schema_name, table_name, table_dir, batch_ts,
  path, file_type, start_lsn::text AS start_lsn, end_lsn::text AS end_lsn, start_seq, end_seq,
  row_count, byte_size, sha256`;

function registeredFile(r: Record<string, unknown>): RegisteredFile {
  return {
    id: Number(r.id),
    oid: r.oid === null ? null : Number(r.oid),
    schema: r.schema_name as string,
    table: r.table_name as string,
    tableDir: r.table_dir as string,
    batchTs: r.batch_ts as string,
    path: r.path as string,
    fileType: r.file_type as RegisteredFile["fileType"],
    start: { lsn: parseLsn(r.start_lsn as string), seq: Number(r.start_seq ?? 0) },
    end: { lsn: parseLsn(r.end_lsn as string), seq: Number(r.end_seq ?? 0) },
    rowCount: Number(r.row_count),
    byteSize: Number(r.byte_size),
    sha256: r.sha256 as string,
  };
}

/** One finished export for {@linkcode Registry.finishReloads}. */
export interface FinishedExport {
  ops: ReloadRequest[];
  /** The full_reload and the files held back for it. */
  files: FileRecord[];
  state: TableStateUpdate;
}

/** A file_log row as verify reads it. */
export interface RegisteredFile {
  id: number;
  /** The relation; null for files registered before registry migration 3. */
  oid: number | null;
  schema: string;
  table: string;
  tableDir: string;
  batchTs: string;
  path: string;
  fileType: "streaming" | "full_reload" | "ddl";
  start: TablePosition;
  end: TablePosition;
  rowCount: number;
  byteSize: number;
  sha256: string;
}

/** Raw rows behind `status` (shaped by the command). */
export interface StatusRows {
  checkpoint: Record<string, unknown> | null;
  tables: Record<string, unknown>[];
  lastReloads: Record<string, unknown>[];
  pending: Record<string, unknown>[];
  failed: Record<string, unknown>[];
}

/** A reload operation to carry out. */
export interface ReloadRequest {
  id: number;
  schema: string;
  table: string;
  /** The relation, once known (set by `reload` and when the export starts). */
  oid: number | null;
  /** `initial`, `requested`, `ddl`, `rename`, ... */
  reason: string;
  /** For a reload after DDL: changes after this position wait for it. */
  hold: TablePosition | null;
}

/** Map key for a table. */
export function tableKey(schema: string, table: string): string {
  return `${schema}\0${table}`;
}
