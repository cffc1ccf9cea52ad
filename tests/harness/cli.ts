/**
 * Runs the CLI as a user would: `deno run` on main.ts with the binary's
 * permission flags, in a child process.
 */

import { fileURLToPath as fromFileUrl } from "node:url";
import { permissionFlagsFor } from "../../scripts/permissions.ts";

const MAIN = fromFileUrl(new URL("../../main.ts", import.meta.url));
const CONFIG = fromFileUrl(new URL("../../deno.json", import.meta.url));

/** Result of a finished CLI run. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** How to run a CLI process. */
export interface CliOptions {
  /** Run under `ulimit -n` of this (soft and hard), as under systemd's LimitNOFILE=. */
  fdLimit?: number;
}

function command(
  args: string[],
  env: Record<string, string>,
  piped: boolean,
  options: CliOptions = {},
) {
  const fullEnv = { CDC_LOG_FORMAT: "json", NO_COLOR: "1", ...env };
  // Exactly the flags `deno task build` would compile in for these settings.
  const flags = permissionFlagsFor(args, { ...Deno.env.toObject(), ...fullEnv });
  const argv = ["run", "--config", CONFIG, ...flags, MAIN, ...args];
  if (options.fdLimit !== undefined) {
    // exec keeps the pid: the child is the CLI itself.
    return new Deno.Command("bash", {
      args: ["-c", `ulimit -n ${options.fdLimit} && exec "$0" "$@"`, Deno.execPath(), ...argv],
      env: fullEnv,
      stdout: "piped",
      stderr: "piped",
      stdin: piped ? "piped" : "null",
    });
  }
  return new Deno.Command(Deno.execPath(), {
    args: argv,
    env: fullEnv,
    stdout: "piped",
    stderr: "piped",
    stdin: piped ? "piped" : "null",
  });
}

/** Runs the CLI to completion. */
export async function runCli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const out = await command(args, env, false).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** A CLI process left running (stream). */
export class CliProcess {
  readonly child: Deno.ChildProcess;
  stderr = "";
  stdout = "";
  #done: Promise<Deno.CommandStatus>;

  constructor(args: string[], env: Record<string, string> = {}, options: CliOptions = {}) {
    this.child = command(args, env, false, options).spawn();
    const collect = async (stream: ReadableStream<Uint8Array>, into: "stderr" | "stdout") => {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) this[into] += chunk;
    };
    const a = collect(this.child.stderr, "stderr");
    const b = collect(this.child.stdout, "stdout");
    this.#done = Promise.all([a, b]).then(() => this.child.status);
  }

  /** Sends a signal and waits for the exit code. */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<number> {
    try {
      this.child.kill(signal);
    } catch {
      // already gone
    }
    return (await this.#done).code;
  }

  /** Waits for the process to exit. */
  async exited(): Promise<number> {
    return (await this.#done).code;
  }
}

/** Polls `check` until it returns a truthy value or `timeoutMs` passes. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T> | T,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await check();
      if (v) return v;
    } catch (error) {
      last = error;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`Timed out waiting for ${what}${last ? `: ${last}` : ""}`);
}
