/**
 * Fault injection for integration tests: restart PostgreSQL (fast or
 * immediate), terminate a backend of `stream` by the application_name it
 * sets (`src/source/connect.ts` and callers), make a registry COMMIT end in
 * an ambiguous outcome (committed on the server, an error on the client),
 * and fill the data dir's filesystem.
 *
 * application_names of a `stream` process:
 * - `cdc-egress/<slot>`: the walsender of the replication connection;
 * - `cdc-egress/registry`: the registry session (holds the slot lock);
 * - `cdc-egress/export`: export workers (client backends) and the
 *   connection that holds the export snapshot (a walsender);
 * - `cdc-egress`: the source session (catalog queries);
 * - `cdc-egress/monitor`: the slot monitor.
 */

import { join } from "node:path";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { waitFor } from "./cli.ts";
import type { StreamEnv } from "./stream_env.ts";

/** A backend as pg_stat_activity shows it. */
export interface Backend {
  pid: number;
  applicationName: string;
  backendType: string;
  state: string | null;
  waitEvent: string | null;
  query: string;
  /** Whether the current statement runs inside a longer transaction. */
  inTransaction: boolean;
}

/** Which backends to pick. */
export type BackendFilter = (b: Backend) => boolean;

/** The walsender streaming the slot. */
export const walsender = (slot = "cdc_egress"): BackendFilter => (b) =>
  b.applicationName === `cdc-egress/${slot}` && b.backendType === "walsender";

/** The registry session of `stream`. */
export const registrySession: BackendFilter = (b) => b.applicationName === "cdc-egress/registry";

/** An export worker (not the snapshot's walsender); `copying` only while its COPY runs. */
export const exportWorker = (copying = false): BackendFilter => (b) =>
  b.applicationName === "cdc-egress/export" && b.backendType === "client backend" &&
  (!copying || (b.state === "active" && /^\s*COPY/i.test(b.query)));

/** The connection creating or holding an export snapshot (a walsender). */
export const exportSnapshotSession: BackendFilter = (b) =>
  b.applicationName === "cdc-egress/export" && b.backendType === "walsender";

/** Faults on one test world. Reconnects `world.db` after a restart. */
export class Faults {
  readonly world: StreamEnv;

  constructor(world: StreamEnv) {
    this.world = world;
  }

  /** Every cdc-egress backend now. */
  async backends(): Promise<Backend[]> {
    const res = await this.world.db.query(
      `SELECT pid, application_name, backend_type, state, wait_event, query,
              xact_start IS NOT NULL AND xact_start < query_start AS in_tx
       FROM pg_stat_activity WHERE application_name LIKE 'cdc-egress%' AND pid <> pg_backend_pid()`,
    );
    return res.rows.map((r) => ({
      pid: r.pid,
      applicationName: r.application_name,
      backendType: r.backend_type,
      state: r.state,
      waitEvent: r.wait_event,
      query: r.query ?? "",
      inTransaction: r.in_tx === true,
    }));
  }

  /** Terminates every backend that `filter` picks; returns their pids. */
  async terminate(filter: BackendFilter): Promise<number[]> {
    const pids = (await this.backends()).filter(filter).map((b) => b.pid);
    for (const pid of pids) {
      await this.world.db.query("SELECT pg_terminate_backend($1)", [pid]);
    }
    return pids;
  }

  /** Waits until a backend that `filter` picks exists, then terminates it; returns the pids. */
  async terminateWhen(what: string, filter: BackendFilter, timeoutMs = 60_000): Promise<number[]> {
    return await waitFor(what, async () => {
      const pids = await this.terminate(filter);
      return pids.length > 0 ? pids : undefined;
    }, timeoutMs) as number[];
  }

  /**
   * Restarts PostgreSQL: `fast` (clean shutdown, sessions terminated with
   * 57P01) or `immediate` (like a crash: no checkpoint, crash recovery on
   * start). Reconnects the world's admin client.
   */
  async restart(mode: "fast" | "immediate" = "fast"): Promise<void> {
    await this.world.db.end().catch(() => {});
    await this.world.cluster.stopServer(mode);
    await this.world.cluster.startServer();
    this.world.db = await connectAdmin(this.world);
  }

  /**
   * Makes the next COMMIT of the registry session that runs `blockedSql`
   * (a regex over its statement text) end ambiguously: it commits on the
   * server, but the session is terminated while waiting for a synchronous
   * standby that does not exist, so the client sees an error.
   *
   * How: `lockSql` runs in a transaction of ours and takes a lock (e.g.
   * `LOCK TABLE ... IN EXCLUSIVE MODE`: reads pass, writes wait; or a row's
   * `FOR UPDATE`) until the registry session is seen blocked in a statement
   * matching `blockedSql` inside its transaction; then
   * synchronous_standby_names names a missing standby and the lock is
   * released. The registry session (synchronous_commit = on) now waits in
   * COMMIT (wait event SyncRep) and is terminated there. Other sessions of
   * the test cluster run with synchronous_commit = off and never wait.
   * Returns when the outcome is in.
   */
  async ambiguousRegistryCommit(
    lockSql: string,
    blockedSql: RegExp,
    timeoutMs = 60_000,
  ): Promise<void> {
    const url = this.world.cluster.url();
    const locker = new pg.Client({ connectionString: url });
    await locker.connect();
    try {
      await locker.query("BEGIN");
      await locker.query(lockSql);
      const blocked = await waitFor(`the registry session to block on ${blockedSql}`, async () => {
        const b = (await this.backends()).find((b) =>
          registrySession(b) && b.inTransaction && b.waitEvent !== null &&
          blockedSql.test(b.query)
        );
        return b;
      }, timeoutMs) as Backend;
      await this.world.db.query(
        "ALTER SYSTEM SET synchronous_standby_names = 'cdc_fault_missing_standby'",
      );
      await this.world.db.query("SELECT pg_reload_conf()");
      // Every backend rereads the configuration at its next command.
      await new Promise((r) => setTimeout(r, 200));
      await locker.query("COMMIT");
      await waitFor(
        "the registry COMMIT to wait for the missing standby",
        async () =>
          (await this.backends()).some((b) => b.pid === blocked.pid && b.waitEvent === "SyncRep"),
        30_000,
      );
      await this.world.db.query("SELECT pg_terminate_backend($1)", [blocked.pid]);
    } finally {
      await locker.query("ROLLBACK").catch(() => {});
      await locker.end().catch(() => {});
      await this.world.db.query("ALTER SYSTEM RESET synchronous_standby_names").catch(() => {});
      await this.world.db.query("SELECT pg_reload_conf()").catch(() => {});
    }
  }
}

/** A new admin connection to the world's cluster (after a restart). */
export async function connectAdmin(world: StreamEnv): Promise<pg.Client> {
  return await waitFor("PostgreSQL to accept connections", async () => {
    const client = new pg.Client({ connectionString: world.cluster.url() });
    try {
      await client.connect();
      return client;
    } catch (error) {
      await client.end().catch(() => {});
      throw error;
    }
  }, 60_000);
}

/**
 * A small filesystem mounted over a directory, to fill it up: a tmpfs of
 * `sizeBytes`. Needs root (and a kernel that lets this container mount);
 * {@linkcode SmallDisk.available} says whether it works here.
 */
export class SmallDisk {
  readonly path: string;
  #filler: string;

  private constructor(path: string) {
    this.path = path;
    this.#filler = join(path, ".fault-filler");
  }

  /** Whether a tmpfs can be mounted here (root, mount permitted). */
  static async available(): Promise<boolean> {
    if (Deno.uid() !== 0) return false;
    const dir = await Deno.makeTempDir({ prefix: "cdc-mnt-probe-" });
    try {
      const m = await new Deno.Command("mount", {
        args: ["-t", "tmpfs", "-o", "size=1m", "tmpfs", dir],
        stdout: "null",
        stderr: "null",
      }).output();
      if (!m.success) return false;
      await new Deno.Command("umount", { args: [dir] }).output();
      return true;
    } finally {
      await Deno.remove(dir).catch(() => {});
    }
  }

  /** Mounts a tmpfs of `sizeBytes` on the empty directory `path` (mode 0700). */
  static async mount(path: string, sizeBytes: number): Promise<SmallDisk> {
    const m = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", `size=${sizeBytes},mode=0700`, "tmpfs", path],
      stderr: "piped",
    }).output();
    if (!m.success) {
      throw new Error(`Cannot mount a tmpfs on ${path}: ${new TextDecoder().decode(m.stderr)}`);
    }
    return new SmallDisk(path);
  }

  /** Bytes still free. */
  async freeBytes(): Promise<number> {
    const out = await new Deno.Command("df", { args: ["-B1", "--output=avail", this.path] })
      .output();
    return Number(new TextDecoder().decode(out.stdout).trim().split("\n").pop());
  }

  /** Fills the filesystem up to `leaveBytes` of free space (0: completely). */
  async fill(leaveBytes = 0): Promise<void> {
    const file = await Deno.open(this.#filler, { write: true, create: true, append: true });
    try {
      const chunk = new Uint8Array(64 * 1024);
      while (true) {
        const free = await this.freeBytes();
        if (free <= leaveBytes) break;
        const n = Math.min(chunk.length, free - leaveBytes);
        try {
          await file.write(chunk.subarray(0, Math.max(n, 1)));
        } catch {
          break; // full
        }
      }
    } finally {
      file.close();
    }
  }

  /** Frees what {@linkcode fill} took. */
  async free(): Promise<void> {
    await Deno.remove(this.#filler).catch(() => {});
  }

  /** Unmounts (lazily, in case a process still has a file open). */
  async unmount(): Promise<void> {
    await new Deno.Command("umount", { args: ["-l", this.path] }).output();
  }
}
