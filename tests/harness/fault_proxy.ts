/**
 * A fault-injecting HTTP proxy for the S3 tests, between cdc-egress and
 * s3rver. It reads each request's head, forces `Connection: close` (so
 * every request comes on a new connection and can be judged alone), and
 * either forwards it or applies the first matching rule:
 *
 * - `drop`: closes the connection without an answer;
 * - `status`: answers 500/503 (or another status) with an S3 error body;
 * - `stall`: holds the connection without answering for `ms`;
 * - `cut`: forwards, but closes after `bytes` bytes of the answer;
 * - `hold`: forwards (the server acts on it) but holds the answer for `ms`;
 * - `down()`/`up()`: drops every connection until brought up again.
 */

/** What to do with a matching request. */
export type FaultAction =
  | { kind: "drop" }
  | { kind: "status"; status: number }
  | { kind: "stall"; ms: number }
  | { kind: "cut"; bytes: number }
  | { kind: "hold"; ms: number };

/** A rule: which requests, what to do, how often. */
export interface FaultRule {
  method?: string;
  /** Matched against the request target (path and query). */
  path?: RegExp;
  action: FaultAction;
  /** Let this many matching requests through first. */
  skip?: number;
  /** Fire this many times (default 1). */
  times?: number;
}

/** A request the proxy saw, and what it did with it. */
export interface SeenRequest {
  method: string;
  target: string;
  fault: FaultAction["kind"] | null;
}

const HEAD_END = new TextEncoder().encode("\r\n\r\n");

function indexOf(buf: Uint8Array, pattern: Uint8Array): number {
  outer: for (let i = 0; i + pattern.length <= buf.length; i++) {
    for (let j = 0; j < pattern.length; j++) if (buf[i + j] !== pattern[j]) continue outer;
    return i;
  }
  return -1;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}

/** A running proxy in front of `upstreamPort`. */
export class FaultProxy {
  readonly port: number;
  readonly seen: SeenRequest[] = [];
  #listener: Deno.Listener;
  #upstreamPort: number;
  #rules: (FaultRule & { fired: number; matched: number })[] = [];
  #down = false;
  #conns = new Set<Deno.Conn>();

  private constructor(listener: Deno.Listener, upstreamPort: number) {
    this.#listener = listener;
    this.port = (listener.addr as Deno.NetAddr).port;
    this.#upstreamPort = upstreamPort;
    this.#accept();
  }

  /** Starts a proxy on a free port. */
  static start(upstreamPort: number): FaultProxy {
    return new FaultProxy(Deno.listen({ hostname: "127.0.0.1", port: 0 }), upstreamPort);
  }

  /** `http://127.0.0.1:PORT`. */
  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Adds a rule (checked in the order added). */
  inject(rule: FaultRule): void {
    this.#rules.push({ ...rule, fired: 0, matched: 0 });
  }

  /** How many times each rule fired, in the order added. */
  get fired(): number[] {
    return this.#rules.map((r) => r.fired);
  }

  /** Drops every connection from now on (S3 unreachable). */
  down(): void {
    this.#down = true;
  }

  /** Forwards again. */
  up(): void {
    this.#down = false;
  }

  async #accept(): Promise<void> {
    try {
      for await (const conn of this.#listener) this.#handle(conn).catch(() => {});
    } catch {
      // closed
    }
  }

  #pick(method: string, target: string): FaultAction | null {
    for (const r of this.#rules) {
      if (r.method && r.method !== method) continue;
      if (r.path && !r.path.test(target)) continue;
      if (r.fired >= (r.times ?? 1)) continue;
      if (r.matched++ < (r.skip ?? 0)) continue;
      r.fired++;
      return r.action;
    }
    return null;
  }

  async #handle(client: Deno.Conn): Promise<void> {
    this.#conns.add(client);
    let upstream: Deno.Conn | null = null;
    try {
      if (this.#down) return;
      let buf: Uint8Array = new Uint8Array(0);
      const chunk = new Uint8Array(64 * 1024);
      let end = -1;
      while ((end = indexOf(buf, HEAD_END)) < 0) {
        const n = await client.read(chunk);
        if (n === null) return;
        buf = concat(buf, chunk.subarray(0, n));
      }
      const head = new TextDecoder().decode(buf.subarray(0, end));
      const [requestLine, ...headers] = head.split("\r\n");
      const [method, target] = requestLine.split(" ");
      const action = this.#pick(method, target);
      this.seen.push({ method, target, fault: action?.kind ?? null });
      if (action?.kind === "drop") return;
      if (action?.kind === "stall") {
        await new Promise((r) => setTimeout(r, action.ms));
        return;
      }
      if (action?.kind === "status") {
        const body = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${
          action.status === 503 ? "SlowDown" : "InternalError"
        }</Code><Message>injected by the test proxy</Message></Error>`;
        const bytes = new TextEncoder().encode(body);
        await writeAll(
          client,
          new TextEncoder().encode(
            `HTTP/1.1 ${action.status} Injected\r\nContent-Type: application/xml\r\nContent-Length: ${bytes.length}\r\nConnection: close\r\n\r\n`,
          ),
        );
        await writeAll(client, bytes);
        return;
      }
      upstream = await Deno.connect({ hostname: "127.0.0.1", port: this.#upstreamPort });
      this.#conns.add(upstream);
      const kept = headers.filter((h) => !/^connection:/i.test(h));
      const newHead = [requestLine, ...kept, "Connection: close"].join("\r\n") + "\r\n\r\n";
      await writeAll(upstream, new TextEncoder().encode(newHead));
      await writeAll(upstream, buf.subarray(end + HEAD_END.length));
      const up = upstream;
      const toUpstream = (async () => {
        const b = new Uint8Array(64 * 1024);
        try {
          for (let n; (n = await client.read(b)) !== null;) await writeAll(up, b.subarray(0, n));
        } catch {
          // either side closed
        }
      })();
      let left = action?.kind === "cut" ? action.bytes : Infinity;
      const b = new Uint8Array(64 * 1024);
      if (action?.kind === "hold") {
        // Read the whole answer (the server has acted), then deliver it late.
        let answer: Uint8Array = new Uint8Array(0);
        for (let n; (n = await up.read(b)) !== null;) answer = concat(answer, b.subarray(0, n));
        await new Promise((r) => setTimeout(r, action.ms));
        await writeAll(client, answer);
        left = 0;
      }
      for (let n; left > 0 && (n = await up.read(b)) !== null;) {
        const take = Math.min(n, left);
        await writeAll(client, b.subarray(0, take));
        left -= take;
      }
      void toUpstream;
    } finally {
      for (const c of [client, upstream]) {
        if (!c) continue;
        this.#conns.delete(c);
        try {
          c.close();
        } catch {
          // already closed
        }
      }
    }
  }

  /** Stops listening and closes every open connection. */
  stop(): void {
    try {
      this.#listener.close();
    } catch {
      // already closed
    }
    for (const c of this.#conns) {
      try {
        c.close();
      } catch {
        // already closed
      }
    }
  }
}
