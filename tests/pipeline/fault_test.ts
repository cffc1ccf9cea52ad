/**
 * Faults while `stream` runs under writes (DESIGN §8, issue 8): PostgreSQL
 * restarted (fast and immediate), the walsender terminated, the registry
 * session ended with an ambiguous COMMIT at a flush and at an export's
 * commit, an export worker terminated, replication slots exhausted when a
 * reload starts, and the data dir's disk full while streaming and while
 * exporting.
 *
 * After each fault: `stream` is still running, it catches up, replay of
 * the files equals the live tables, it stops cleanly, every registered file
 * is there and complete with nothing else in the data dir, and `verify`
 * exits 0. The tests look only at what a user sees (processes, files,
 * registry, pg_stat_activity), not at the coordinator's internals.
 *
 * Disk-full tests mount a small tmpfs over the data dir: they need root and
 * a kernel that allows the mount, and are ignored elsewhere.
 */

import assert from "node:assert/strict";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { type PgMajor, testMajors } from "../../scripts/embedded_postgres.ts";
import { type CliProcess, runCli, waitFor } from "../harness/cli.ts";
import { checkDataDir, fileLog, listTree, startStream } from "../harness/export_world.ts";
import {
  exportSnapshotSession,
  exportWorker,
  Faults,
  registrySession,
  SmallDisk,
  walsender,
} from "../harness/faults.ts";
import { prng } from "../harness/prng.ts";
import { type StreamEnv, streamEnv } from "../harness/stream_env.ts";

const BIG_ROWS = 400_000;
const TABLES = [
  { schema: "public", table: "hot" },
  { schema: "public", table: "big" },
  { schema: "public", table: "side" },
];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Writes to `hot`, `big` and `side` until stopped, reconnecting after any
 * error (a restart or a terminated session is what these tests do). A
 * commit whose outcome the client missed is fine: replay is compared with
 * the live tables.
 */
class ResilientWriter {
  #stop = false;
  #run: Promise<void>;
  committed = 0;
  errors = 0;

  constructor(world: StreamEnv, seed: number) {
    const random = prng(seed);
    const int = (n: number) => Math.floor(random() * n);
    this.#run = (async () => {
      let client: pg.Client | null = null;
      let next = 1_000_000;
      while (!this.#stop) {
        try {
          if (!client) {
            client = new pg.Client({ connectionString: world.cluster.url() });
            client.on("error", () => {});
            await client.connect();
          }
          await client.query("BEGIN");
          await client.query("INSERT INTO public.hot VALUES ($1, $2)", [next++, int(1000)]);
          await client.query("UPDATE public.hot SET v = v + 1 WHERE id = $1", [int(next)]);
          if (random() < 0.3) {
            await client.query("DELETE FROM public.hot WHERE id = $1", [int(next)]);
          }
          await client.query("UPDATE public.big SET v = v + 1 WHERE id = $1", [1 + int(BIG_ROWS)]);
          if (random() < 0.5) {
            await client.query("INSERT INTO public.side VALUES ($1, 's') ", [next++]);
          }
          await client.query("COMMIT");
          this.committed++;
        } catch {
          this.errors++;
          await client?.end().catch(() => {});
          client = null;
          await sleep(100);
        }
        await sleep(2);
      }
      await client?.end().catch(() => {});
    })();
  }

  async stop(): Promise<void> {
    this.#stop = true;
    await this.#run;
  }
}

/** Throws if the stream process has exited. */
async function assertRunning(p: CliProcess): Promise<void> {
  const exited = await Promise.race([p.exited(), sleep(0).then(() => null)]);
  if (exited !== null) throw new Error(`stream exited with ${exited}: ${p.stderr.slice(-3000)}`);
}

/** A fresh world with the three tables, `init` run and `stream` exported and streaming. */
async function faultWorld(
  version: PgMajor,
  settings: Record<string, string | number> = {},
  beforeInit?: (w: StreamEnv) => Promise<void>,
): Promise<StreamEnv> {
  const w = await streamEnv(version, settings);
  await w.db.query(`
    CREATE TABLE public.hot (id int PRIMARY KEY, v int);
    CREATE TABLE public.big (id int PRIMARY KEY, v int NOT NULL);
    CREATE TABLE public.side (id int PRIMARY KEY, v text);
    INSERT INTO public.hot SELECT g, g FROM generate_series(1, 1000) g;
    INSERT INTO public.big SELECT g, g % 1000 FROM generate_series(1, ${BIG_ROWS}) g;
    INSERT INTO public.side SELECT g, 's' FROM generate_series(1, 100) g;
  `);
  await beforeInit?.(w);
  await w.init();
  return w;
}

/**
 * The checks after a fault: still running, caught up, replay equals the
 * source, clean stop, every registered file there and nothing else, `verify`
 * exits 0, no reload left pending or failed.
 */
async function assertHealthy(w: StreamEnv, p: CliProcess, writer: ResilientWriter) {
  await assertRunning(p);
  await writer.stop();
  assert.ok(writer.committed > 0, "the writer committed nothing");
  try {
    await w.caughtUp(120_000);
  } catch (error) {
    throw new Error(`${error}; stream stderr: ${p.stderr.slice(-3000)}`);
  }
  await assertRunning(p);
  for (const t of TABLES) await w.assertReplayEquals(t.schema, t.table);
  const code = await p.stop("SIGTERM");
  assert.equal(code, 0, `stream exit code; stderr: ${p.stderr.slice(-3000)}`);
  await checkDataDir(w);
  const verify = await runCli(["verify"], w.env);
  assert.equal(verify.code, 0, `verify: ${verify.stdout}${verify.stderr}`);
  const reloads = await w.db.query(
    "SELECT state, count(*)::int AS n FROM cdc_registry.reload_operations GROUP BY 1 ORDER BY 1",
  );
  assert.deepEqual(reloads.rows.filter((r) => r.state !== "done"), [], "reloads not done");
}

/** Requests a reload of `big` and waits until its export's COPY runs. */
async function reloadBigUntilCopying(w: StreamEnv, p: CliProcess): Promise<void> {
  const r = await runCli(["reload", "public.big"], w.env);
  assert.equal(r.code, 0, r.stderr);
  const faults = new Faults(w);
  await waitFor("the reload's COPY to run", async () => {
    await assertRunning(p);
    return (await faults.backends()).some(exportWorker(true));
  }, 60_000);
}

/**
 * Requests a reload of `big` and waits until it is exporting: from its
 * snapshot until it is registered, a longer window than its COPY (which
 * can end between two looks at pg_stat_activity).
 */
async function reloadBigExporting(w: StreamEnv, p: CliProcess): Promise<void> {
  const r = await runCli(["reload", "public.big"], w.env);
  assert.equal(r.code, 0, r.stderr);
  await waitFor("the reload of big to export", async () => {
    await assertRunning(p);
    const res = await w.db.query(
      `SELECT count(*)::int AS n FROM cdc_registry.reload_operations
       WHERE table_name = 'big' AND state = 'exporting'`,
    );
    return res.rows[0].n > 0;
  }, 60_000);
}

/** Waits until every reload of `big` is done (the initial export's and the requested one). */
async function reloadDone(w: StreamEnv, p: CliProcess, timeoutMs = 120_000): Promise<void> {
  await waitFor("the reload to finish", async () => {
    await assertRunning(p);
    const res = await w.db.query(
      `SELECT bool_and(state = 'done') AS ok, count(*)::int AS n FROM cdc_registry.reload_operations
       WHERE table_name = 'big'`,
    );
    return res.rows[0].n > 1 && res.rows[0].ok;
  }, timeoutMs);
}

/** The stream logged a retry for this reason. */
function loggedRetry(p: CliProcess, reason: RegExp): boolean {
  return p.stderr.split("\n").some((l) => /reconnecting|retried/.test(l) && reason.test(l));
}

const OPTS = { sanitizeOps: false, sanitizeResources: false };
const canMount = await SmallDisk.available();

for (const version of testMajors()) {
  for (const mode of ["fast", "immediate"] as const) {
    Deno.test({
      ...OPTS,
      name: `faults: PostgreSQL ${mode} restart under writes while streaming (PG ${version})`,
    }, async () => {
      await using w = await faultWorld(version);
      const p = await startStream(w);
      await w.caughtUp();
      const writer = new ResilientWriter(w, 0xfa57 + version);
      await waitFor(
        "some streamed batches",
        async () => (await fileLog(w.db)).filter((f) => f.fileType === "streaming").length >= 2,
      );
      await new Faults(w).restart(mode);
      await waitFor("streaming again after the restart", async () => {
        await assertRunning(p);
        return (await w.db.query(
          "SELECT active FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
        )).rows[0]?.active;
      }, 90_000);
      assert.ok(loggedRetry(p, /restart|shutting down|terminated|connection/i), p.stderr);
      await assertHealthy(w, p, writer);
    });
  }

  Deno.test(
    { ...OPTS, name: `faults: walsender terminated under writes (PG ${version})` },
    async () => {
      await using w = await faultWorld(version);
      const p = await startStream(w);
      await w.caughtUp();
      const writer = new ResilientWriter(w, 0x3a1 + version);
      const faults = new Faults(w);
      const [old] = await faults.terminateWhen("the walsender", walsender());
      await waitFor("a new walsender", async () => {
        await assertRunning(p);
        return (await faults.backends()).some((b) => walsender()(b) && b.pid !== old);
      }, 60_000);
      await assertHealthy(w, p, writer);
    },
  );

  Deno.test({
    ...OPTS,
    name: `faults: registry session ends in an ambiguous COMMIT at a flush (PG ${version})`,
  }, async () => {
    await using w = await faultWorld(version);
    const p = await startStream(w);
    await w.caughtUp();
    const writer = new ResilientWriter(w, 0x4e9 + version);
    await new Faults(w).ambiguousRegistryCommit(
      "LOCK TABLE cdc_registry.file_log IN EXCLUSIVE MODE",
      /INSERT INTO cdc_registry\.file_log/,
    );
    await waitFor("a new registry session", async () => {
      await assertRunning(p);
      return (await new Faults(w).backends()).some(registrySession);
    }, 60_000);
    await assertHealthy(w, p, writer);
  });

  Deno.test({
    ...OPTS,
    name: `faults: walsender terminated during a reload's COPY (PG ${version})`,
  }, async () => {
    await using w = await faultWorld(version);
    const p = await startStream(w);
    await w.caughtUp();
    const writer = new ResilientWriter(w, 0x77 + version);
    await reloadBigUntilCopying(w, p);
    await new Faults(w).terminate(walsender());
    await reloadDone(w, p);
    await assertHealthy(w, p, writer);
  });

  Deno.test({
    // A failed attempt leaves nothing behind: exports are staged outside the
    // table folders until registered.
    ...OPTS,
    name: `faults: export worker terminated during a reload's COPY (PG ${version})`,
  }, async () => {
    await using w = await faultWorld(version);
    const p = await startStream(w);
    await w.caughtUp();
    const writer = new ResilientWriter(w, 0x99 + version);
    await reloadBigUntilCopying(w, p);
    const killed = await new Faults(w).terminate(exportWorker(true));
    assert.ok(killed.length > 0, "no export worker to terminate");
    await reloadDone(w, p);
    await assertHealthy(w, p, writer);
  });

  Deno.test({
    ...OPTS,
    name: `faults: PostgreSQL fast restart during a reload's COPY (PG ${version})`,
  }, async () => {
    await using w = await faultWorld(version);
    const p = await startStream(w);
    await w.caughtUp();
    const writer = new ResilientWriter(w, 0x5a + version);
    await reloadBigUntilCopying(w, p);
    await new Faults(w).restart("fast");
    await reloadDone(w, p);
    await assertHealthy(w, p, writer);
  });

  for (
    const [what, inject] of [
      ["PostgreSQL fast restart", (f: Faults) => f.restart("fast")],
      ["walsender terminated", (f: Faults) => f.terminate(walsender())],
      ["export worker terminated", (f: Faults) => f.terminate(exportWorker(true))],
    ] as const
  ) {
    Deno.test({
      ...OPTS,
      name: `faults: ${what} during the initial export's COPY (PG ${version})`,
    }, async () => {
      await using w = await faultWorld(version);
      const writer = new ResilientWriter(w, 0x1e + version);
      const p = w.stream();
      const faults = new Faults(w);
      await waitFor("the initial export's COPY", async () => {
        await assertRunning(p);
        return (await faults.backends()).some(exportWorker(true));
      }, 60_000);
      await inject(faults);
      await assertHealthy(w, p, writer);
    });
  }

  Deno.test({
    // The export's registering COMMIT succeeds on the server but the client
    // sees an error: the registry decides, the file stays and recovery
    // settles it.
    ...OPTS,
    name:
      `faults: registry session ends in an ambiguous COMMIT at an export's commit (PG ${version})`,
  }, async () => {
    await using w = await faultWorld(version);
    const p = await startStream(w);
    await w.caughtUp();
    const writer = new ResilientWriter(w, 0xec + version);
    await reloadBigExporting(w, p);
    // Holding the operation's row makes finishReload wait at its last statement.
    await new Faults(w).ambiguousRegistryCommit(
      `SELECT 1 FROM cdc_registry.reload_operations
       WHERE table_name = 'big' AND state = 'exporting' FOR UPDATE`,
      /SET state = 'done'/,
    );
    await reloadDone(w, p);
    await assertHealthy(w, p, writer);
  });

  Deno.test({
    ...OPTS,
    name: `faults: PostgreSQL fast restart while a reload's snapshot waits (PG ${version})`,
  }, async () => {
    await using w = await faultWorld(version);
    const p = await startStream(w);
    await w.caughtUp();
    const writer = new ResilientWriter(w, 0x5b + version);
    // An open transaction with an xid makes CREATE_REPLICATION_SLOT wait.
    const open = new pg.Client({ connectionString: w.cluster.url() });
    open.on("error", () => {});
    await open.connect();
    await open.query("BEGIN");
    await open.query("INSERT INTO public.side VALUES (-1, 'open')");
    const r = await runCli(["reload", "public.big"], w.env);
    assert.equal(r.code, 0, r.stderr);
    const faults = new Faults(w);
    await waitFor("the export snapshot to wait for the open transaction", async () => {
      await assertRunning(p);
      return (await faults.backends()).some((b) =>
        exportSnapshotSession(b) && /CREATE_REPLICATION_SLOT/i.test(b.query) &&
        b.state === "active"
      );
    }, 60_000);
    await faults.restart("fast");
    await open.end().catch(() => {});
    await reloadDone(w, p);
    await assertHealthy(w, p, writer);
  });

  Deno.test({
    ...OPTS,
    name: `faults: the slot lock of a frozen stream is taken over within a minute (PG ${version})`,
  }, async () => {
    // The frozen process keeps its TCP connections alive (the kernel
    // answers keepalives), so only the lock takeover frees its lock; its
    // walsender ends after wal_sender_timeout.
    await using w = await faultWorld(version, { wal_sender_timeout: "5s" });
    const frozen = await startStream(w);
    await w.caughtUp();
    const writer = new ResilientWriter(w, 0xf0 + version);
    frozen.child.kill("SIGSTOP");
    try {
      await waitFor("the frozen stream's walsender to time out", async () =>
        !(await w.db.query(
          "SELECT active FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
        )).rows[0].active, 60_000);
      const started = Date.now();
      const p = w.stream();
      await waitFor("the new stream to take the slot", async () => {
        await assertRunning(p);
        return (await w.db.query(
          "SELECT active FROM pg_replication_slots WHERE slot_name = 'cdc_egress'",
        )).rows[0].active;
      }, 90_000);
      const took = Date.now() - started;
      assert.ok(took < 60_000, `took ${took} ms`);
      assert.match(p.stderr, /took over the slot lock of a dead stream session/);
      await assertHealthy(w, p, writer);
    } finally {
      await frozen.stop("SIGKILL");
    }
  });

  Deno.test({
    ...OPTS,
    name:
      `faults: a dropped slot ends the stream with exit 3 and one line saying why (PG ${version})`,
  }, async () => {
    await using w = await faultWorld(version);
    const p = await startStream(w);
    await w.caughtUp();
    const faults = new Faults(w);
    // Between the walsender's end and the stream's reconnect the slot is free to drop.
    await waitFor("the slot to be dropped", async () => {
      await faults.terminate(walsender());
      try {
        await w.db.query("SELECT pg_drop_replication_slot('cdc_egress')");
        return true;
      } catch {
        return false;
      }
    }, 60_000);
    const code = await Promise.race([p.exited(), sleep(60_000).then(() => "still running")]);
    // The registry holds the slot's history: a missing slot is a lost one.
    assert.equal(code, 3, p.stderr.slice(-3000));
    const errors = p.stderr.split("\n").filter((l) => l.startsWith("error:"));
    assert.equal(errors.length, 1, p.stderr.slice(-3000));
    assert.match(errors[0], /slot "cdc_egress".*cdc-egress init --recreate-slot/);
  });

  Deno.test({
    ...OPTS,
    name: `faults: replication slots exhausted when a reload starts, then freed (PG ${version})`,
  }, async () => {
    // Our slot and two fillers take every slot.
    await using w = await faultWorld(version, { max_replication_slots: 3 });
    const p = await startStream(w);
    await w.caughtUp();
    const writer = new ResilientWriter(w, 0x510 + version);
    for (const name of ["filler_a", "filler_b"]) {
      await w.db.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [name]);
    }
    const r = await runCli(["reload", "public.big"], w.env);
    assert.equal(r.code, 0, r.stderr);
    await waitFor("the stream to log that slots are exhausted", async () => {
      await assertRunning(p);
      return p.stderr.includes("max_replication_slots");
    }, 60_000);
    await assertRunning(p);
    for (const name of ["filler_a", "filler_b"]) {
      await w.db.query("SELECT pg_drop_replication_slot($1)", [name]);
    }
    await reloadDone(w, p);
    await assertHealthy(w, p, writer);
  });

  Deno.test({
    ...OPTS,
    // Mounting a small tmpfs needs root and a kernel that allows it here.
    ignore: !canMount,
    name: `faults: data dir disk full while streaming, retried when space returns (PG ${version})`,
  }, async () => {
    await using w = await faultWorld(version);
    const disk = await SmallDisk.mount(w.dataDir, 32 * 1024 * 1024);
    try {
      const p = await startStream(w);
      await w.caughtUp();
      const writer = new ResilientWriter(w, 0xd15c + version);
      await disk.fill();
      await waitFor("the stream to log the full disk", async () => {
        await assertRunning(p);
        return /no space left/i.test(p.stderr);
      }, 60_000);
      // Nothing half-written is registered: every registered file is complete.
      for (const f of await fileLog(w.db)) {
        const tree = await listTree(w.dataDir);
        const temp = f.path.replace(/[^/]+$/, (n) => `.tmp-${n}`);
        assert.ok(tree.includes(f.path) || tree.includes(temp), `${f.path} missing`);
      }
      await disk.free();
      await assertHealthy(w, p, writer);
    } finally {
      await disk.unmount();
    }
  });

  Deno.test({
    ...OPTS,
    ignore: !canMount,
    name: `faults: data dir disk full during a reload, retried when space returns (PG ${version})`,
  }, async () => {
    await using w = await faultWorld(version);
    const disk = await SmallDisk.mount(w.dataDir, 32 * 1024 * 1024);
    try {
      const p = await startStream(w);
      await w.caughtUp();
      const writer = new ResilientWriter(w, 0xd15e + version);
      // Room for batches, not for big's export (about 1 MB of gzip).
      await disk.fill(200 * 1024);
      const r = await runCli(["reload", "public.big"], w.env);
      assert.equal(r.code, 0, r.stderr);
      await waitFor("the export to fail on the full disk", async () => {
        await assertRunning(p);
        return (await w.db.query(
          `SELECT bool_or(error ILIKE '%space%') AS full FROM cdc_registry.reload_operations
           WHERE table_name = 'big'`,
        )).rows[0].full || /no space left/i.test(p.stderr);
      }, 60_000);
      const halfWritten = (await fileLog(w.db)).filter((f) =>
        f.table === "big" && f.fileType === "full_reload"
      );
      assert.equal(halfWritten.length, 1, "only the initial export of big is registered");
      await disk.free();
      await reloadDone(w, p);
      await assertHealthy(w, p, writer);
    } finally {
      await disk.unmount();
    }
  });

  Deno.test({
    ...OPTS,
    name:
      `faults: replication slots exhausted when the initial export starts, then freed (PG ${version})`,
  }, async () => {
    await using w = await faultWorld(version, { max_replication_slots: 3 });
    for (const name of ["filler_a", "filler_b"]) {
      await w.db.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [name]);
    }
    const writer = new ResilientWriter(w, 0x511 + version);
    const p = w.stream();
    await waitFor("the stream to log that slots are exhausted", async () => {
      await assertRunning(p);
      return p.stderr.includes("max_replication_slots");
    }, 60_000);
    for (const name of ["filler_a", "filler_b"]) {
      await w.db.query("SELECT pg_drop_replication_slot($1)", [name]);
    }
    await assertHealthy(w, p, writer);
  });

  Deno.test({
    ...OPTS,
    name:
      `faults: PostgreSQL fast restart while the initial export's snapshot waits (PG ${version})`,
  }, async () => {
    await using w = await faultWorld(version);
    const open = new pg.Client({ connectionString: w.cluster.url() });
    open.on("error", () => {});
    await open.connect();
    await open.query("BEGIN");
    await open.query("INSERT INTO public.side VALUES (-1, 'open')");
    const writer = new ResilientWriter(w, 0x5c + version);
    const p = w.stream();
    const faults = new Faults(w);
    await waitFor("the initial snapshot to wait for the open transaction", async () => {
      await assertRunning(p);
      return (await faults.backends()).some((b) =>
        exportSnapshotSession(b) && /CREATE_REPLICATION_SLOT/i.test(b.query) &&
        b.state === "active"
      );
    }, 60_000);
    await faults.restart("fast");
    await open.end().catch(() => {});
    await assertHealthy(w, p, writer);
  });

  Deno.test({
    ...OPTS,
    name:
      `faults: registry session ends in an ambiguous COMMIT at the initial export's commit (PG ${version})`,
  }, async () => {
    await using w = await faultWorld(version);
    const writer = new ResilientWriter(w, 0xed + version);
    const p = w.stream();
    const faults = new Faults(w);
    await waitFor("the initial export of big to run", async () => {
      await assertRunning(p);
      return (await faults.backends()).some((b) => exportWorker(true)(b) && /"big"/.test(b.query));
    }, 60_000);
    await faults.ambiguousRegistryCommit(
      `SELECT 1 FROM cdc_registry.reload_operations
       WHERE table_name = 'big' AND state = 'exporting' FOR UPDATE`,
      /SET state = 'done'/,
    );
    await assertHealthy(w, p, writer);
  });
}
