/**
 * `cdc-egress stream`: the long-running service. Checks everything that can
 * be checked before touching the slot, repairs the data dir after a crash,
 * then runs the pipeline until SIGTERM/SIGINT, when it flushes, registers,
 * acknowledges and returns (see {@linkcode superviseStream}).
 */

import type { Config } from "../config.ts";
import { Logger } from "../log.ts";
import { superviseStream } from "../pipeline/stream_supervisor.ts";

/** Runs `stream` until a signal asks it to stop; throws what ends it otherwise. */
export async function streamCommand(config: Config): Promise<void> {
  const logger = new Logger({ level: config.logLevel, format: config.logFormat });
  await superviseStream(config, logger);
}
