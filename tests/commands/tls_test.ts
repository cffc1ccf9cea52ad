/**
 * TLS under the binary's own permission flags: a TLS-only cluster
 * (`hostssl` lines only, scram-sha-256) with a certificate from a private CA
 * made in the test. `init`, `stream` (walsender, export workers, registry)
 * and `verify` connect with sslmode=verify-full; plain and wrongly verified
 * connections fail with one clear line.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
// @ts-types="npm:@types/pg@8.23.1"
import pg from "pg";
import { startCluster, testMajors } from "../../scripts/embedded_postgres.ts";
import { permissionFlagsFor } from "../../scripts/permissions.ts";
import { CliProcess, type CliResult, runCli, waitFor } from "../harness/cli.ts";
import { makeTestCa } from "../harness/tls_ca.ts";

/** Exactly one `error:` line on stderr, matching `pattern`, exit 1, no password. */
function assertOneLine(r: CliResult, pattern: RegExp, password: string): void {
  assert.equal(r.code, 1, `exit code; stderr: ${r.stderr}`);
  const errors = r.stderr.split("\n").filter((l) => l.startsWith("error:"));
  assert.equal(errors.length, 1, `one error line: ${r.stderr}`);
  assert.match(errors[0], pattern);
  assert.ok(!(r.stderr + r.stdout).includes(password), "the password leaked");
}

Deno.test("permissionFlagsFor() grants reads of every TLS file the settings may name", () => {
  const flags = permissionFlagsFor(
    ["stream", "--registry-url", "postgres://h2/db?sslmode=verify-ca&sslrootcert=/etc/reg/ca.pem"],
    {
      CDC_SOURCE_URL:
        "postgres://h/db?sslmode=verify-full&sslrootcert=/etc/src/root.crt&sslcert=/etc/src/c.crt" +
        "&sslkey=/etc/src/c.key&sslcrl=/etc/src/r.crl",
      PGSSLROOTCERT: "/env/root.crt",
      HOME: "/home/cdc",
    },
  );
  const read = flags.find((f) => f.startsWith("--allow-read="))!.slice(13).split(",");
  for (
    const path of [
      "/etc/src/root.crt",
      "/etc/src/c.crt",
      "/etc/src/c.key",
      "/etc/src/r.crl",
      "/etc/reg/ca.pem",
      // What no URL or variable names: libpq's defaults.
      "/home/cdc/.postgresql/postgresql.crt",
      "/home/cdc/.postgresql/postgresql.key",
      "/home/cdc/.postgresql/root.crl",
    ]
  ) assert.ok(read.includes(path), `${path} readable: ${read}`);
  // Without a URL parameter the variable names the root certificate.
  const envOnly = permissionFlagsFor(["status"], {
    CDC_SOURCE_URL: "postgres://h/db",
    PGSSLROOTCERT: "/env/root.crt",
    PGSSLCERT: "/env/c.crt",
    PGSSLKEY: "/env/c.key",
    PGSSLCRL: "/env/r.crl",
    HOME: "/home/cdc",
  });
  const read2 = envOnly.find((f) => f.startsWith("--allow-read="))!.slice(13).split(",");
  for (const path of ["/env/root.crt", "/env/c.crt", "/env/c.key", "/env/r.crl"]) {
    assert.ok(read2.includes(path), `${path} readable: ${read2}`);
  }
  const defaults = permissionFlagsFor(["status"], {
    CDC_SOURCE_URL: "postgres://h/db",
    HOME: "/home/x",
  });
  const read3 = defaults.find((f) => f.startsWith("--allow-read="))!.slice(13).split(",");
  for (const name of ["root.crt", "postgresql.crt", "postgresql.key", "root.crl"]) {
    assert.ok(read3.includes(`/home/x/.postgresql/${name}`), `${name} readable: ${read3}`);
  }
});

for (const version of testMajors()) {
  Deno.test(`TLS-only server with a private CA, verify-full, the binary's flags (PG ${version})`, async (t) => {
    await using ca = await makeTestCa();
    await using cluster = await startCluster({
      version,
      tls: { cert: ca.serverCert, key: ca.serverKey, ca: ca.caCert },
      hba: [
        "hostssl all all 127.0.0.1/32 scram-sha-256",
        "hostssl replication all 127.0.0.1/32 scram-sha-256",
      ],
    });
    // The test's own session uses the Unix socket (trust).
    const db = new pg.Client({ host: cluster.dir, port: cluster.port, user: "postgres" });
    await db.connect();
    const dataDir = await Deno.makeTempDir({ prefix: "cdc-data-" });
    const home = await Deno.makeTempDir({ prefix: "cdc-home-" });
    try {
      await db.query("CREATE TABLE public.items (id int PRIMARY KEY, v text)");
      await db.query("INSERT INTO public.items SELECT g, 'v' || g FROM generate_series(1, 500) g");
      const base = cluster.url();
      const verifyFull = `${base}?sslmode=verify-full&sslrootcert=${encodeURIComponent(ca.caCert)}`;
      // HOME without a ~/.postgresql: nothing but the URL's files.
      const env = {
        CDC_SOURCE_URL: verifyFull,
        CDC_DATA_DIR: dataDir,
        CDC_BATCH_INTERVAL: "1s",
        CDC_METRICS_ADDR: "127.0.0.1:0",
        HOME: home,
      };

      await t.step("init, stream and verify connect with verify-full", async () => {
        const init = await runCli(["init"], env);
        assert.equal(init.code, 0, init.stderr);
        const stream = new CliProcess(["stream"], env);
        try {
          // Every connection of the stream is encrypted: walsender, registry, source.
          await waitFor("the stream's sessions over TLS", async () => {
            const res = await db.query(
              `SELECT a.application_name, s.ssl FROM pg_stat_activity a
               JOIN pg_stat_ssl s ON s.pid = a.pid WHERE a.application_name LIKE 'cdc-egress%'`,
            );
            const names = res.rows.map((r) => r.application_name);
            if (res.rows.some((r) => !r.ssl)) throw new Error(`plain session: ${names}`);
            return names.includes("cdc-egress/registry") &&
              names.includes("cdc-egress/cdc_egress");
          }, 60_000);
          const registered = (type: string) => async () =>
            (await db.query(
              `SELECT count(*)::int AS n FROM cdc_registry.file_log
               WHERE table_name = 'items' AND file_type = $1`,
              [type],
            )).rows[0].n > 0;
          await waitFor("the initial export", registered("full_reload"), 60_000);
          await db.query("INSERT INTO public.items VALUES (1001, 'streamed')");
          await waitFor("the streamed row in a registered file", registered("streaming"), 60_000);
        } catch (error) {
          throw new Error(`${error}; stream stderr: ${stream.stderr.slice(-3000)}`);
        } finally {
          const code = await stream.stop("SIGTERM");
          assert.equal(code, 0, stream.stderr.slice(-3000));
        }
        const verify = await runCli(["verify", "--deep"], env);
        assert.equal(verify.code, 0, verify.stdout + verify.stderr);
      });

      await t.step("PGSSLROOTCERT and ~/.postgresql/root.crt work like in libpq", async () => {
        const viaEnv = await runCli(["status"], {
          ...env,
          CDC_SOURCE_URL: base,
          PGSSLMODE: "verify-full",
          PGSSLROOTCERT: ca.caCert,
        });
        assert.equal(viaEnv.code, 0, viaEnv.stderr);
        await Deno.mkdir(join(home, ".postgresql"));
        await Deno.copyFile(ca.caCert, join(home, ".postgresql", "root.crt"));
        try {
          const viaDefault = await runCli(["status"], {
            ...env,
            CDC_SOURCE_URL: `${base}?sslmode=verify-full`,
          });
          assert.equal(viaDefault.code, 0, viaDefault.stderr);
        } finally {
          await Deno.remove(join(home, ".postgresql"), { recursive: true });
        }
      });

      await t.step("a plain connection gets one clear line", async () => {
        for (const url of [`${base}?sslmode=disable`, `${base}?sslmode=allow`]) {
          // allow falls back to TLS (like libpq), so only disable fails.
          const r = await runCli(["status"], { ...env, CDC_SOURCE_URL: url });
          if (url.endsWith("allow")) {
            assert.equal(r.code, 0, r.stderr);
            continue;
          }
          assertOneLine(r, /accepts only TLS connections: use sslmode=require/, cluster.password);
        }
      });

      await t.step("the default sslmode (prefer) uses TLS, like libpq", async () => {
        const r = await runCli(["status"], { ...env, CDC_SOURCE_URL: base });
        assert.equal(r.code, 0, r.stderr);
      });

      await t.step("verification failures get one clear line each", async () => {
        const cases: [string, RegExp][] = [
          [
            `${base}?sslmode=verify-full&sslrootcert=${encodeURIComponent(ca.otherCaCert)}`,
            /sslmode=verify-full: check sslrootcert/,
          ],
          [
            `${base}?sslmode=verify-full`,
            /root certificate file ".*\/\.postgresql\/root\.crt" does not exist/,
          ],
          [
            `${base}?sslmode=verify-full&sslrootcert=${encodeURIComponent(ca.dir + "/nope.crt")}`,
            /root certificate "[^"]*nope\.crt" does not exist/,
          ],
          [
            `${verifyFull}&sslcrl=${encodeURIComponent(ca.revokingCrl)}`,
            /server certificate is revoked/,
          ],
          [`${base}?sslmode=verify-everything`, /sslmode "verify-everything"/],
        ];
        for (const [url, pattern] of cases) {
          const r = await runCli(["status"], { ...env, CDC_SOURCE_URL: url });
          assert.notEqual(r.code, 0, `${url} must fail`);
          const errors = r.stderr.split("\n").filter((l) => l.startsWith("error:"));
          assert.equal(errors.length, 1, r.stderr);
          assert.match(errors[0], pattern);
          assert.ok(!r.stderr.includes(cluster.password));
        }
      });

      await t.step("a client certificate from the URL is sent", async () => {
        // Require a CA-signed client certificate on a second role.
        await db.query("CREATE ROLE certuser LOGIN PASSWORD 'pw-cert'");
        await db.query("GRANT pg_read_all_stats TO certuser");
        const hba = join(cluster.dir, "data", "pg_hba.conf");
        const text = await Deno.readTextFile(hba);
        await Deno.writeTextFile(
          hba,
          "hostssl all certuser 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n" + text,
        );
        await db.query("SELECT pg_reload_conf()");
        const url = `${cluster.url("postgres", "certuser", "pw-cert")}?sslmode=verify-full` +
          `&sslrootcert=${encodeURIComponent(ca.caCert)}`;
        const client = await import("../../src/source/connect.ts");
        await assert.rejects(client.connect(url), /certificate/i);
        const ok = await client.connect(
          `${url}&sslcert=${encodeURIComponent(ca.clientCert)}&sslkey=${
            encodeURIComponent(ca.clientKey)
          }`,
        );
        const res = await ok.query(
          "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        );
        await ok.end();
        assert.equal(res.rows[0].ssl, true);
        assert.match(res.rows[0].client_dn ?? "", /postgres/);
      });
    } finally {
      await db.end().catch(() => {});
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  });
}
