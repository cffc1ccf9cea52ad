/**
 * A private certificate authority for TLS tests, made with the `openssl`
 * command (`.ci/run` installs it where it is missing): a CA, a server
 * certificate for 127.0.0.1/localhost signed by it, a client certificate,
 * an unrelated CA (for "wrong root" cases) and a CRL that revokes the server
 * certificate.
 */

import { join } from "node:path";

/** Paths of the generated PEM files. */
export interface TestCa {
  dir: string;
  caCert: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** A CA that signed nothing we use. */
  otherCaCert: string;
  /** A CRL of `caCert` revoking `serverCert`. */
  revokingCrl: string;
  [Symbol.asyncDispose](): Promise<void>;
}

async function openssl(dir: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", {
    args,
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  if (!out.success) {
    throw new Error(
      `openssl ${args[0]} failed: ${new TextDecoder().decode(out.stderr).trim()}`,
    );
  }
}

/** Generates the CA and certificates in a fresh temp dir. */
export async function makeTestCa(): Promise<TestCa> {
  const dir = await Deno.makeTempDir({ prefix: "cdc-tls-" });
  const rsa = ["-newkey", "rsa:2048", "-nodes"];
  await openssl(
    dir,
    "req",
    "-x509",
    ...rsa,
    "-keyout",
    "ca.key",
    "-out",
    "ca.crt",
    "-days",
    "2",
    "-subj",
    "/CN=cdc-egress test CA",
  );
  await openssl(
    dir,
    "req",
    "-x509",
    ...rsa,
    "-keyout",
    "other.key",
    "-out",
    "other.crt",
    "-days",
    "2",
    "-subj",
    "/CN=unrelated CA",
  );
  await Deno.writeTextFile(join(dir, "server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  await openssl(
    dir,
    "req",
    ...rsa,
    "-keyout",
    "server.key",
    "-out",
    "server.csr",
    "-subj",
    "/CN=127.0.0.1",
  );
  await openssl(
    dir,
    "x509",
    "-req",
    "-in",
    "server.csr",
    "-CA",
    "ca.crt",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "server.crt",
    "-days",
    "2",
    "-extfile",
    "server.ext",
  );
  await openssl(
    dir,
    "req",
    ...rsa,
    "-keyout",
    "client.key",
    "-out",
    "client.csr",
    "-subj",
    "/CN=postgres",
  );
  await openssl(
    dir,
    "x509",
    "-req",
    "-in",
    "client.csr",
    "-CA",
    "ca.crt",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "client.crt",
    "-days",
    "2",
  );
  await Deno.chmod(join(dir, "client.key"), 0o600);
  await Deno.writeTextFile(
    join(dir, "ca.cnf"),
    [
      "[ ca ]",
      "default_ca = CA_default",
      "[ CA_default ]",
      `database = ${join(dir, "index.txt")}`,
      `crlnumber = ${join(dir, "crlnumber")}`,
      "default_md = sha256",
      "default_crl_days = 2",
      "",
    ].join("\n"),
  );
  await Deno.writeTextFile(join(dir, "index.txt"), "");
  await Deno.writeTextFile(join(dir, "crlnumber"), "01\n");
  await openssl(
    dir,
    "ca",
    "-config",
    "ca.cnf",
    "-keyfile",
    "ca.key",
    "-cert",
    "ca.crt",
    "-revoke",
    "server.crt",
  );
  await openssl(
    dir,
    "ca",
    "-config",
    "ca.cnf",
    "-keyfile",
    "ca.key",
    "-cert",
    "ca.crt",
    "-gencrl",
    "-out",
    "revoked.crl",
  );
  return {
    dir,
    caCert: join(dir, "ca.crt"),
    serverCert: join(dir, "server.crt"),
    serverKey: join(dir, "server.key"),
    clientCert: join(dir, "client.crt"),
    clientKey: join(dir, "client.key"),
    otherCaCert: join(dir, "other.crt"),
    revokingCrl: join(dir, "revoked.crl"),
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
