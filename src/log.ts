/**
 * Structured logging to stderr: JSON lines for machines, readable lines on a
 * TTY. Callers pass fields, never URLs or passwords.
 */

/** Log levels in increasing severity. */
export type LogLevel = "debug" | "info" | "warn" | "error";

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** A logger bound to a format and a minimum level. */
export class Logger {
  #min: number;
  #json: boolean;
  #encoder = new TextEncoder();
  /** A progress line is on screen without a newline: records first clear it. */
  #statusShown = false;

  constructor(options: { level?: LogLevel; format?: "auto" | "json" | "text" } = {}) {
    this.#min = RANK[options.level ?? "info"];
    const format = options.format ?? "auto";
    this.#json = format === "json" || (format === "auto" && !Deno.stderr.isTerminal());
  }

  /** Whether records go to a person at a terminal (text on a TTY), who can see a progress bar. */
  get interactive(): boolean {
    return !this.#json && Deno.stderr.isTerminal();
  }

  /** Rewrites the current terminal line (progress bars); `done` ends the line. */
  status(line: string, done = false): void {
    this.#statusShown = !done;
    Deno.stderr.writeSync(this.#encoder.encode(`\r\x1b[2K${line}${done ? "\n" : ""}`));
  }

  /** Writes one record if its level is enabled. */
  log(level: LogLevel, msg: string, fields: Record<string, unknown> = {}): void {
    if (RANK[level] < this.#min) return;
    const ts = new Date().toISOString();
    let line: string;
    if (this.#json) {
      line = JSON.stringify(
        { ts, level, msg, ...fields },
        (_k, v) => typeof v === "bigint" ? v.toString() : v,
      );
    } else {
      const extra = Object.entries(fields).map(([k, v]) => `${k}=${String(v)}`).join(" ");
      line = `${ts.slice(11, 23)} ${level.toUpperCase().padEnd(5)} ${msg}${
        extra ? " " + extra : ""
      }`;
    }
    const clear = this.#statusShown ? "\r\x1b[2K" : "";
    this.#statusShown = false;
    Deno.stderr.writeSync(this.#encoder.encode(clear + line + "\n"));
  }

  debug(msg: string, fields?: Record<string, unknown>): void {
    this.log("debug", msg, fields);
  }
  info(msg: string, fields?: Record<string, unknown>): void {
    this.log("info", msg, fields);
  }
  warn(msg: string, fields?: Record<string, unknown>): void {
    this.log("warn", msg, fields);
  }
  error(msg: string, fields?: Record<string, unknown>): void {
    this.log("error", msg, fields);
  }
}
