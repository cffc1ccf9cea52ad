/**
 * Profiling aid for the stream pipeline, outside the end-to-end benchmark:
 * `capture` records the raw CopyData frames of a replication slot into a
 * file; `replay` feeds them to a real {@linkcode StreamPipeline} (real files,
 * real registry) as fast as it takes them, so our CPU cost per change can be
 * measured and profiled without the server's share.
 *
 *   deno run -A scripts/bench_replay.ts capture URL SLOT FILE [MAX_SECONDS]
 *   deno run -A [--cpu-prof] scripts/bench_replay.ts replay URL FILE [INTERVAL_MS]
 *
 * `capture` does not acknowledge anything; the slot keeps its position.
 * `replay` registers under the slot name `bench_replay` in URL's registry.
 *
 * @module
 */

import { ReplicationStream } from "../src/source/replication_stream.ts";
import { StreamPipeline } from "../src/pipeline/stream_pipeline.ts";
import { Registry } from "../src/registry/registry.ts";
import { SchemaLookup } from "../src/pipeline/relation_catalog.ts";
import { connect } from "../src/source/connect.ts";
import { Logger } from "../src/log.ts";
import { SourceCatalog } from "../src/source/source_catalog.ts";
import { tableDirName } from "../src/write/table_dir.ts";
import { type Lsn, ZERO_LSN } from "../src/lsn.ts";
import { decodeCopyFrame } from "../src/decode/copy_frame.ts";
import { cpuUsage } from "node:process";

const [mode, url, ...rest] = Deno.args;

if (mode === "capture") {
  const [slot, file, maxSeconds = "600"] = rest;
  const out = await Deno.open(file, { write: true, create: true, truncate: true });
  const stream = await ReplicationStream.start(url, {
    slot,
    publication: "cdc_egress",
    protocol: 4,
    streaming: true,
    startLsn: ZERO_LSN,
  });
  const started = performance.now();
  let frames = 0;
  let bytes = 0;
  let idle = 0;
  let buf = new Uint8Array(1 << 20);
  let len = 0;
  const flush = async () => {
    let off = 0;
    while (off < len) off += await out.write(buf.subarray(off, len));
    len = 0;
  };
  while (performance.now() - started < Number(maxSeconds) * 1000) {
    const frame = await stream.next(1000);
    if (!frame) {
      if (++idle >= 2) break;
      continue;
    }
    const f = decodeCopyFrame(frame);
    if (f.type === "keepalive") {
      if (++idle >= 50) break;
      continue;
    }
    idle = 0;
    if (len + frame.length + 4 > buf.length) {
      await flush();
      if (frame.length + 4 > buf.length) buf = new Uint8Array(frame.length + 4);
    }
    new DataView(buf.buffer).setUint32(len, frame.length);
    buf.set(frame, len + 4);
    len += frame.length + 4;
    frames++;
    bytes += frame.length;
  }
  await flush();
  out.close();
  await stream.close();
  const cpu = cpuUsage();
  console.log(
    `captured ${frames} frames, ${bytes} bytes in ${
      ((performance.now() - started) / 1000).toFixed(2)
    } s, cpu ${((cpu.user + cpu.system) / 1e6).toFixed(2)} s`,
  );
} else if (mode === "replay") {
  const [file, intervalMs = "1000"] = rest;
  const data = await Deno.readFile(file);
  const frames: Uint8Array[] = [];
  const view = new DataView(data.buffer);
  for (let off = 0; off < data.length;) {
    const n = view.getUint32(off);
    frames.push(data.subarray(off + 4, off + 4 + n));
    off += 4 + n;
  }
  const dataDir = await Deno.makeTempDir({ prefix: "cdc-replay-" });
  const registryClient = await connect(url, { role: "registry" });
  const source = await connect(url, { role: "source" });
  const registry = new Registry(registryClient, "bench_replay");
  let next = 0;
  let pipeline: StreamPipeline | null = null;
  const fake = {
    next(_timeoutMs: number): Promise<Uint8Array | undefined> {
      return Promise.resolve(this.poll());
    },
    poll(): Uint8Array | undefined {
      if (next < frames.length) return frames[next++];
      pipeline?.stop();
      return undefined;
    },
    sendStatus(_lsn: Lsn): void {},
    get queuedBytes() {
      return 0;
    },
  };
  pipeline = new StreamPipeline(
    registry,
    new SchemaLookup(source),
    fake as unknown as ReplicationStream,
    {
      dataDir,
      protocol: 4,
      limits: { maxRows: 1_000_000, maxBytes: 256 * 1024 * 1024, intervalMs: Number(intervalMs) },
      maxOpenFiles: 128,
      memoryBudget: 96 * 1024 * 1024,
      startLsn: ZERO_LSN,
      // Every published table streams from the start: no exports here.
      tables: new Map(
        (await new SourceCatalog(source).publishedTables("cdc_egress")).map((t) => [t.oid, {
          ...t,
          tableDir: tableDirName(t.schema, t.table),
          mode: "streaming",
          reloadLsn: ZERO_LSN,
          last: null,
          lastBatchTs: null,
        }]),
      ),
      reloadAfterDdl: "never",
      logger: new Logger({ level: "warn", format: "json" }),
    },
  );
  const started = performance.now();
  const cpu0 = cpuUsage();
  await pipeline.run();
  const seconds = (performance.now() - started) / 1000;
  const cpu1 = cpuUsage(cpu0);
  const s = pipeline.stats;
  console.log(
    `replayed ${frames.length} frames: ${s.rowsWritten} rows, ${s.filesWritten} files, ${s.bytesWritten} gzip bytes in ${
      seconds.toFixed(2)
    } s, cpu ${((cpu1.user + cpu1.system) / 1e6).toFixed(2)} s, peak RSS ${
      (Number(/VmHWM:\s+(\d+)/.exec(Deno.readTextFileSync("/proc/self/status"))?.[1]) / 1024)
        .toFixed(0)
    } MB; ${(s.rowsWritten / seconds / 1000).toFixed(0)}k rows/s`,
  );
  await registryClient.end();
  await source.end();
  if (Deno.env.get("REPLAY_KEEP")) console.log(`files kept in ${dataDir}`);
  else await Deno.remove(dataDir, { recursive: true });
} else {
  console.error("usage: bench_replay.ts capture URL SLOT FILE | replay URL FILE [INTERVAL_MS]");
  Deno.exit(2);
}
