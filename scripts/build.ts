/**
 * `deno task build`: compiles ./cdc-egress with the permission flags the
 * tests run main.ts with. `deno compile` downloads Deno's runtime (denort)
 * from dl.deno.land; where that is unreachable, set DENORT_BIN to a denort
 * binary of the same Deno version.
 */

import { PERMISSION_FLAGS } from "./permissions.ts";

const args = [
  "compile",
  ...PERMISSION_FLAGS,
  "--output",
  "cdc-egress",
  "main.ts",
];
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
