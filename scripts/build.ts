/**
 * `deno task build [settings]`: compiles ./cdc-egress with permissions for
 * the settings it is built for (flags, CDC_* variables or --config, as the
 * CLI reads them): network to the source and registry hosts and the metrics
 * address, read/write to the data dir, read of the config file, and only
 * the environment variables it reads. Rebuild when those settings change.
 *
 * `deno compile` downloads Deno's runtime (denort) from dl.deno.land; where
 * that is unreachable, set DENORT_BIN to a denort binary of the same version.
 */

import { permissionFlagsFor } from "./permissions.ts";

const flags = permissionFlagsFor(Deno.args, Deno.env.toObject());
const args = ["compile", ...flags, "--output", "cdc-egress", "main.ts"];
console.log(`deno ${args.join(" ")}`);
const { code } = await new Deno.Command(Deno.execPath(), {
  args,
  stdout: "inherit",
  stderr: "inherit",
}).output();
if (code !== 0) {
  console.error(
    "error: deno compile failed; without access to dl.deno.land set DENORT_BIN to a denort binary",
  );
}
Deno.exitCode = code;
