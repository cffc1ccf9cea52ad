import assert from "node:assert/strict";
import { join } from "node:path";
import { CdcError } from "../../src/errors.ts";
import {
  revokedSerials,
  stripTlsParams,
  tlsFilePaths,
  tlsFileSettings,
  tlsPlan,
} from "../../src/source/tls_settings.ts";
import { makeTestCa } from "../harness/tls_ca.ts";

const env = (vars: Record<string, string>) => (k: string) => vars[k];

Deno.test("tlsFileSettings() takes URL parameters first, then PGSSL* variables, then libpq defaults", () => {
  const s = tlsFileSettings(
    "postgres://h/db?sslrootcert=/u/root.crt&sslmode=verify-ca",
    env({ PGSSLROOTCERT: "/e/root.crt", PGSSLCERT: "/e/c.crt", PGSSLMODE: "disable", HOME: "/h" }),
  );
  assert.equal(s.mode, "verify-ca");
  assert.equal(s.rootCert, "/u/root.crt");
  assert.equal(s.cert, "/e/c.crt");
  assert.equal(s.key, "/h/.postgresql/postgresql.key");
  assert.equal(s.crl, "/h/.postgresql/root.crl");
  assert.deepEqual(s.explicit, { rootCert: true, cert: true, key: false, crl: false });
  assert.equal(tlsFileSettings("postgres://h/db", env({})).mode, "prefer");
  assert.throws(() => tlsFileSettings("postgres://h/db?sslmode=on", env({})), /sslmode "on"/);
});

Deno.test("tlsFilePaths() lists every file, even with a bad sslmode, never 'system'", () => {
  assert.deepEqual(
    tlsFilePaths("postgres://h/db?sslmode=bad&sslrootcert=system", env({ HOME: "/h" })),
    ["/h/.postgresql/postgresql.crt", "/h/.postgresql/postgresql.key", "/h/.postgresql/root.crl"],
  );
});

Deno.test("stripTlsParams() removes what pg would read itself and keeps the rest", () => {
  assert.equal(
    stripTlsParams(
      "postgres://u:p%40ss@h:5433/db?sslmode=verify-full&sslrootcert=/r.crt&application_name=x&sslcrl=/c",
    ),
    "postgres://u:p%40ss@h:5433/db?application_name=x",
  );
  assert.equal(stripTlsParams("postgres://h/db"), "postgres://h/db");
});

Deno.test("tlsPlan() follows libpq: prefer falls back, require checks the chain only with a root file", async () => {
  const home = await Deno.makeTempDir({ prefix: "cdc-home-" });
  await using ca = await makeTestCa();
  try {
    const e = env({ HOME: home });
    const prefer = await tlsPlan("postgres://h/db", e, "source");
    assert.equal(prefer.mode, "prefer");
    assert.equal(prefer.fallback, false);
    assert.ok(prefer.ssl && prefer.ssl.rejectUnauthorized === false);
    const allow = await tlsPlan("postgres://h/db?sslmode=allow", e, "source");
    assert.equal(allow.ssl, false);
    assert.ok(allow.fallback);
    assert.equal((await tlsPlan("postgres://h/db?sslmode=disable", e, "source")).ssl, false);
    // Unix-domain sockets never use TLS.
    const socket = await tlsPlan("postgres://u@%2Ftmp%2Fpg/db?sslmode=verify-full", e, "source");
    assert.equal(socket.ssl, false);
    await assert.rejects(
      tlsPlan("postgres://h/db?sslmode=verify-full", e, "source"),
      (err) =>
        err instanceof CdcError && /root certificate file .* does not exist/.test(err.message),
    );
    await Deno.mkdir(join(home, ".postgresql"));
    await Deno.copyFile(ca.caCert, join(home, ".postgresql", "root.crt"));
    const require = await tlsPlan("postgres://h/db?sslmode=require", e, "source");
    assert.ok(require.ssl && require.ssl.ca && require.ssl.rejectUnauthorized !== false);
    // verify-ca semantics: no host name check.
    assert.equal(require.ssl.checkServerIdentity!("other.example", {} as never), undefined);
    await assert.rejects(
      tlsPlan(`postgres://h/db?sslmode=require&sslcert=${ca.clientCert}`, e, "source"),
      /has no key/,
    );
    const withCert = await tlsPlan(
      `postgres://h/db?sslmode=verify-full&sslcert=${ca.clientCert}&sslkey=${ca.clientKey}`,
      e,
      "source",
    );
    assert.ok(withCert.ssl && withCert.ssl.cert && withCert.ssl.key);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("revokedSerials() reads the serials a CRL revokes", async () => {
  await using ca = await makeTestCa();
  const serial = new TextDecoder().decode(
    (await new Deno.Command("openssl", {
      args: ["x509", "-in", ca.serverCert, "-noout", "-serial"],
      stdout: "piped",
    }).output()).stdout,
  ).trim().replace(/^serial=/, "").replace(/^0+/, "");
  const serials = revokedSerials(await Deno.readTextFile(ca.revokingCrl), ca.revokingCrl);
  assert.deepEqual([...serials], [serial.toUpperCase()]);
  assert.throws(() => revokedSerials("not a crl", "/x.crl"), /not a valid CRL/);
});

Deno.test("tlsPlan() passes sslpassword and protocol versions on, and refuses sslcrldir", async () => {
  const e = env({ HOME: "/nonexistent-home" });
  const plan = await tlsPlan(
    "postgres://h/db?sslmode=require&sslpassword=k3y&ssl_min_protocol_version=TLSv1.3",
    e,
    "source",
  );
  assert.ok(plan.ssl);
  assert.equal(plan.ssl.passphrase, "k3y");
  assert.equal(plan.ssl.minVersion, "TLSv1.3");
  await assert.rejects(
    tlsPlan("postgres://h/db?ssl_max_protocol_version=TLSv9", e, "source"),
    /ssl_max_protocol_version "TLSv9"/,
  );
  await assert.rejects(
    tlsPlan("postgres://h/db?sslcrldir=/etc/crls", e, "source"),
    /sslcrldir is not supported/,
  );
});
