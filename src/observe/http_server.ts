/**
 * The stream process's HTTP endpoints on `--metrics-addr`: `/metrics`
 * (Prometheus), `/healthz` (the process is alive) and `/readyz` (connected,
 * streaming, lag under `--ready-max-lag`).
 */

import { CdcError } from "../errors.ts";
import type { StreamMetrics } from "./metrics.ts";
import type { SlotMonitor } from "./slot_monitor.ts";

/** A running server. */
export interface ObserveServer {
  /** The bound port (useful with port 0). */
  port: number;
  close(): Promise<void>;
}

/** Starts the endpoints; throws a CdcError when the address cannot be bound. */
export function serveObservability(
  addr: string,
  metrics: StreamMetrics,
  monitor: SlotMonitor,
): ObserveServer {
  const at = addr.lastIndexOf(":");
  const hostname = addr.slice(0, at).replace(/^\[(.*)\]$/, "$1") || "0.0.0.0";
  const port = Number(addr.slice(at + 1));
  const controller = new AbortController();
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname,
      port,
      signal: controller.signal,
      onListen: () => {},
    }, async (req) => {
      const path = new URL(req.url).pathname;
      if (path === "/metrics") {
        return new Response(await metrics.render(), {
          headers: { "content-type": metrics.contentType },
        });
      }
      if (path === "/healthz") return new Response("ok\n");
      if (path === "/readyz") {
        const body = JSON.stringify(monitor.state) + "\n";
        return new Response(body, {
          status: monitor.ready ? 200 : 503,
          headers: { "content-type": "application/json" },
        });
      }
      return new Response("not found\n", { status: 404 });
    });
  } catch (error) {
    throw new CdcError(
      "config",
      `Cannot serve metrics on ${addr}: ${(error as Error).message.split("\n")[0]}`,
      { cause: error },
    );
  }
  return {
    port: server.addr.port,
    async close() {
      controller.abort();
      await server.finished.catch(() => {});
    },
  };
}
