/**
 * Bad input to `init` and `stream`: every case prints exactly one `error:`
 * line on stderr, exits 2 (usage/config) or 1 (run time), writes no file and
 * no registry row, leaves the slot where it was and never prints a password.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { type CliResult, runCli, waitFor } from "../harness/cli.ts";
import { type StreamEnv, streamEnv } from "../harness/stream_env.ts";

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Every path under `dir`, relative, sorted. */
async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (sub: string) => {
    for await (const e of Deno.readDir(join(dir, sub))) {
      const rel = sub ? `${sub}/${e.name}` : e.name;
      out.push(rel);
      if (e.isDirectory) await walk(rel);
    }
  };
  await walk("");
  return out.sort();
}

/** What must not change when a command fails: slots and registry contents. */
async function serverState(db: pg.Client): Promise<string> {
  const slots = await db.query(
    `SELECT slot_name, confirmed_flush_lsn::text AS confirmed FROM pg_replication_slots
     ORDER BY slot_name`,
  );
  const hasRegistry =
    (await db.query("SELECT to_regclass('cdc_registry.file_log') IS NOT NULL AS ok")).rows[0].ok;
  const registry = hasRegistry
    ? (await db.query(
      `SELECT (SELECT count(*) FROM cdc_registry.file_log)::int AS files,
              (SELECT count(*) FROM cdc_registry.table_state)::int AS tables,
              (SELECT count(*) FROM cdc_registry.reload_operations)::int AS reloads,
              (SELECT coalesce(string_agg(slot_name || '=' || checkpoint_lsn::text, ','), '')
                 FROM cdc_registry.checkpoint) AS checkpoints`,
    )).rows[0]
    : "no registry";
  return JSON.stringify({ slots: slots.rows, registry });
}

interface Expectation {
  /** Exit code: 2 for usage/config errors, 1 at run time. */
  code: 1 | 2;
  /** The whole stderr line after `error: `. */
  message: string | RegExp;
  /** Strings that must appear nowhere in the output (the cluster password always). */
  secrets?: string[];
  /** Data dir that must stay empty (the world's by default). */
  dataDir?: string;
}

/**
 * Runs the CLI and checks the failure contract. Changes a row first, so a
 * stream that wrongly ran would have something to acknowledge.
 */
async function expectFailure(
  w: StreamEnv,
  args: string[],
  env: Record<string, string>,
  expected: Expectation,
  db: pg.Client = w.db,
): Promise<CliResult> {
  await w.db.query(
    "INSERT INTO public.items (id, v) VALUES ((SELECT coalesce(max(id), 0) + 1 FROM public.items), 'x')",
  );
  const dataDir = expected.dataDir ?? w.dataDir;
  const before = await serverState(db);
  const r = await runCli(args, { ...w.env, ...env });
  const what = `cdc-egress ${args.join(" ")}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
  assert.equal(r.code, expected.code, `exit code of ${what}`);
  const lines = r.stderr.split("\n").filter((l) => l.length > 0);
  assert.equal(lines.length, 1, `exactly one stderr line from ${what}`);
  assert.ok(r.stderr.endsWith("\n"), what);
  const [line] = lines;
  assert.ok(line.startsWith("error: "), what);
  if (typeof expected.message === "string") {
    assert.equal(line.slice("error: ".length), expected.message, what);
  } else {
    assert.match(line.slice("error: ".length), expected.message, what);
  }
  assert.equal(r.stdout, "", `nothing on stdout from ${what}`);
  for (const secret of [w.cluster.password, ...(expected.secrets ?? [])]) {
    assert.ok(!(r.stdout + r.stderr).includes(secret), `a password leaked from ${what}`);
  }
  assert.deepEqual(await listTree(dataDir), [], `files left in the data dir by ${what}`);
  assert.equal(await serverState(db), before, `server state changed by ${what}`);
  return r;
}

for (const version of testMajors()) {
  Deno.test({
    name: `errors: bad input fails cleanly (PostgreSQL ${version})`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async (t) => {
    await using w = await streamEnv(version);
    const port = w.cluster.port;
    await w.db.query("CREATE TABLE public.items (id int PRIMARY KEY, v text)");
    await t.step("stream before init", async () => {
      await expectFailure(w, ["stream"], {}, {
        code: 1,
        message:
          `Cannot use the registry: schema cdc_registry does not exist; run "cdc-egress init" first`,
      });
      const left = await w.db.query(
        `SELECT (SELECT count(*) FROM pg_replication_slots)::int AS slots,
                (SELECT count(*) FROM pg_namespace WHERE nspname = 'cdc_registry')::int AS schemas`,
      );
      assert.deepEqual(left.rows[0], { slots: 0, schemas: 0 });
    });
    await w.init();
    const scratch = await Deno.makeTempDir({ prefix: "cdc-errors-" });
    try {
      await t.step("unreachable host", async () => {
        const dead = freePort();
        for (const cmd of ["init", "stream"]) {
          await expectFailure(w, [cmd], {
            CDC_SOURCE_URL: w.cluster.url().replace(`:${port}/`, `:${dead}/`),
          }, {
            code: 1,
            message:
              `Cannot connect to source PostgreSQL at 127.0.0.1:${dead}/postgres: connection refused`,
          });
        }
      });

      await t.step("bad password", async () => {
        const wrong = "wrong-" + crypto.randomUUID().slice(0, 8);
        for (const cmd of ["init", "stream"]) {
          await expectFailure(w, [cmd], {
            CDC_SOURCE_URL: w.cluster.url("postgres", "postgres", wrong),
          }, {
            code: 1,
            message:
              `Cannot connect to source PostgreSQL at 127.0.0.1:${port}/postgres: password authentication failed for user "postgres"`,
            secrets: [wrong],
          });
          // The same through --registry-url: the registry is named, the source is fine.
          await expectFailure(
            w,
            [cmd, "--registry-url", w.cluster.url("postgres", "postgres", wrong)],
            {},
            {
              code: 1,
              message:
                `Cannot connect to registry PostgreSQL at 127.0.0.1:${port}/postgres: password authentication failed for user "postgres"`,
              secrets: [wrong],
            },
          );
        }
        // The password given as a flag is not printed either.
        await expectFailure(w, ["init", "--source", w.cluster.url("postgres", "postgres", wrong)], {
          CDC_SOURCE_URL: "",
        }, {
          code: 1,
          message: /password authentication failed for user "postgres"$/,
          secrets: [wrong],
        });
      });

      await t.step("unknown database", async () => {
        for (const cmd of ["init", "stream"]) {
          await expectFailure(w, [cmd], { CDC_SOURCE_URL: w.cluster.url("no_such_db") }, {
            code: 1,
            message:
              `Cannot connect to source PostgreSQL at 127.0.0.1:${port}/no_such_db: database "no_such_db" does not exist`,
          });
        }
      });

      await t.step("missing privilege: LOGIN without REPLICATION", async () => {
        const pw = "plain-" + crypto.randomUUID().slice(0, 8);
        await w.db.query(`CREATE ROLE plain LOGIN PASSWORD '${pw}'`);
        for (const cmd of ["init", "stream"]) {
          await expectFailure(
            w,
            [cmd],
            { CDC_SOURCE_URL: w.cluster.url("postgres", "plain", pw) },
            {
              code: 1,
              message:
                `Cannot replicate as role "plain": it needs the REPLICATION attribute (ALTER ROLE "plain" REPLICATION)`,
              secrets: [pw],
            },
          );
        }
      });

      await t.step("slot missing, or of another database", async () => {
        // An initialized database, but a slot that init never created.
        await expectFailure(w, ["stream", "--slot", "never_made"], {}, {
          code: 1,
          message:
            `Cannot stream: replication slot "never_made" does not exist; run "cdc-egress init" first`,
        });
        await w.db.query("CREATE DATABASE other");
        const { default: pg } = await import("pg");
        const other = new pg.Client({ connectionString: w.cluster.url("other") });
        await other.connect();
        try {
          for (const cmd of ["init", "stream"]) {
            await expectFailure(w, [cmd], { CDC_SOURCE_URL: w.cluster.url("other") }, {
              code: 1,
              message:
                `Cannot use slot "cdc_egress": it belongs to database "postgres", not "other"`,
            }, other);
          }
          const schema = await other.query(
            "SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = 'cdc_registry'",
          );
          assert.equal(schema.rows[0].n, 0);
        } finally {
          await other.end();
        }
      });

      await t.step("unwritable data dir", async () => {
        const file = join(scratch, "a-file");
        await Deno.writeTextFile(file, "keep me\n");
        await expectFailure(w, ["stream"], { CDC_DATA_DIR: join(file, "sub") }, {
          code: 1,
          message: `Cannot use data dir "${join(file, "sub")}": Not a directory (os error 20)`,
        });
        await expectFailure(w, ["stream", "--data-dir", file], {}, {
          code: 1,
          message: `Cannot use data dir "${file}": not a directory`,
        });
        assert.equal(await Deno.readTextFile(file), "keep me\n");
        assert.deepEqual(await listTree(scratch), ["a-file"]);
      });

      await t.step("malformed duration", async () => {
        for (const cmd of ["init", "stream"]) {
          await expectFailure(w, [cmd, "--batch-interval", "5x"], {}, {
            code: 2,
            message: `Cannot use --batch-interval "5x": expected a duration such as 90s, 5m or 1h`,
          });
        }
        await expectFailure(w, ["stream"], { CDC_BATCH_INTERVAL: "5x" }, {
          code: 2,
          message: `Cannot use CDC_BATCH_INTERVAL "5x": expected a duration such as 90s, 5m or 1h`,
        });
        // A source URL with the password on the command line is not echoed.
        await expectFailure(
          w,
          ["stream", "--source", w.cluster.url(), "--batch-max-rows", "0"],
          {},
          {
            code: 2,
            message: `Cannot use --batch-max-rows "0": expected a positive integer`,
          },
        );
      });

      await t.step("malformed YAML config", async () => {
        const bad = join(scratch, "bad.yml");
        await Deno.writeTextFile(
          bad,
          `source: ${w.cluster.url()}\nslot: [unclosed\ndata_dir: ${w.dataDir}\n`,
        );
        for (const cmd of ["init", "stream"]) {
          await expectFailure(w, [cmd, "--config", bad], {}, {
            code: 2,
            message: new RegExp(
              `^Cannot parse config file "${bad}": \\S.* at line \\d+, column \\d+$`,
            ),
          });
        }
        await expectFailure(w, ["stream"], { CDC_CONFIG: bad }, {
          code: 2,
          message: new RegExp(
            `^Cannot parse config file "${bad}": \\S.* at line \\d+, column \\d+$`,
          ),
        });
      });

      await t.step("unknown key in YAML config", async () => {
        const unknown = join(scratch, "unknown.yml");
        await Deno.writeTextFile(unknown, `source: ${w.cluster.url()}\nbatch_intervall: 5m\n`);
        for (const cmd of ["init", "stream"]) {
          await expectFailure(w, [cmd, "--config", unknown], {}, {
            code: 2,
            message: `Cannot use config file "${unknown}": unknown setting "batch_intervall"`,
          });
        }
        await expectFailure(w, ["stream", "--config", join(scratch, "missing.yml")], {}, {
          code: 2,
          message: `Cannot read config file "${join(scratch, "missing.yml")}": no such file`,
        });
      });

      await t.step("unknown flag, stray argument, unknown command", async () => {
        await expectFailure(w, ["stream", "--bogus"], {}, {
          code: 2,
          message: `unknown flag "--bogus" (try: cdc-egress stream --help)`,
        });
        await expectFailure(w, ["init", "--data-dri", "/tmp/x"], {}, {
          code: 2,
          message: `unknown flag "--data-dri" (try: cdc-egress init --help)`,
        });
        await expectFailure(w, ["stream", "public.items"], {}, {
          code: 2,
          message: `unexpected argument "public.items" (usage: cdc-egress stream [settings])`,
        });
        await expectFailure(w, ["frobnicate"], {}, {
          code: 2,
          message: `unknown command "frobnicate" (try: cdc-egress --help)`,
        });
      });

      await t.step("unknown table, no table (reload)", async () => {
        await expectFailure(w, ["reload", "public.nope"], {}, {
          code: 1,
          message: `Cannot reload "public.nope": no such table`,
        });
        await expectFailure(w, ["reload"], {}, {
          code: 2,
          message: "Cannot reload: name at least one table (cdc-egress reload public.orders)",
        });
      });

      await t.step("second stream on the same slot", async () => {
        const first = w.stream({ CDC_BATCH_INTERVAL: "200ms" });
        await waitFor("the first stream to start", () => first.stderr.includes('"streaming"'));
        await waitFor("the initial export", async () =>
          (await w.db.query(
            "SELECT 1 FROM cdc_registry.file_log WHERE file_type = 'full_reload'",
          )).rowCount);
        await w.db.query("INSERT INTO public.items (id, v) VALUES (-1, 'before')");
        await w.caughtUp();
        const files = await w.db.query("SELECT path FROM cdc_registry.file_log");
        assert.ok((files.rowCount ?? 0) > 0);
        const r = await runCli(["stream"], w.env);
        const what = `second stream\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
        assert.equal(r.code, 1, what);
        assert.equal(r.stdout, "", what);
        assert.ok(!(r.stdout + r.stderr).includes(w.cluster.password), what);
        const m = /^error: Cannot stream from slot "cdc_egress": it is active in process (\d+)\n$/
          .exec(r.stderr);
        assert.ok(m, what);
        // The named process is one of the first stream's PostgreSQL backends.
        const holder = await w.db.query(
          "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
          [Number(m[1])],
        );
        assert.match(holder.rows[0]?.application_name ?? "", /^cdc-egress/, what);
        // The first stream is unaffected: still running, still registering.
        const exitedEarly = await Promise.race([
          first.exited().then(() => true),
          new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 500)),
        ]);
        assert.equal(exitedEarly, false, `first stream died: ${first.stderr}`);
        await w.db.query("INSERT INTO public.items (id, v) VALUES (-2, 'after')");
        await w.db.query("UPDATE public.items SET v = 'updated' WHERE id = 1");
        await w.caughtUp();
        for (const f of files.rows) await Deno.stat(join(w.dataDir, f.path));
        const code = await first.stop("SIGTERM");
        assert.equal(code, 0, first.stderr);
        assert.ok(!first.stderr.includes('"level":"error"'), first.stderr);
        await w.assertReplayEquals("public", "items");
      });
    } finally {
      await Deno.remove(scratch, { recursive: true });
    }
  });

  Deno.test({
    name: `errors: wal_level=replica (PostgreSQL ${version})`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    await using w = await streamEnv(version, { wal_level: "replica" });
    await w.db.query("CREATE TABLE public.items (id int PRIMARY KEY, v text)");
    for (const cmd of ["init", "stream"]) {
      await expectFailure(w, [cmd], {}, {
        code: 1,
        message:
          `Cannot decode changes: wal_level is "replica", set wal_level = logical and restart PostgreSQL`,
      });
    }
    const left = await w.db.query(
      `SELECT (SELECT count(*) FROM pg_replication_slots)::int AS slots,
              (SELECT count(*) FROM pg_namespace WHERE nspname = 'cdc_registry')::int AS schemas,
              (SELECT count(*) FROM pg_publication)::int AS publications`,
    );
    assert.deepEqual(left.rows[0], { slots: 0, schemas: 0, publications: 0 });
  });
}
