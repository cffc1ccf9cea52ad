import assert from "node:assert/strict";
import { MATERIALIZE_V8_FLAGS, permissionFlagsFor, V8_FLAGS } from "../../scripts/permissions.ts";

Deno.test("permissionFlagsFor() gives a materialize build its V8 heap flags, and other commands theirs", () => {
  const env = { CDC_SOURCE_URL: "postgres://u@db.example:5432/app", HOME: "/home/u" };
  for (const to of ["duckdb:/w/t.duckdb", "postgres://u@target.example/r", "csv:/out"]) {
    const flags = permissionFlagsFor(["materialize", "--to", to], env);
    assert.equal(flags.filter((f) => f.startsWith("--v8-flags")).length, 1, to);
    assert.ok(flags.includes(MATERIALIZE_V8_FLAGS), to);
  }
  for (const args of [["stream"], ["materialize"], ["export"], ["verify", "--deep"]]) {
    const flags = permissionFlagsFor(args, env);
    assert.deepEqual(flags.filter((f) => f.startsWith("--v8-flags")), [V8_FLAGS], args.join(" "));
  }
  // The flags must be ones this Deno's V8 accepts: a run with them evaluates code.
  for (const v8 of [MATERIALIZE_V8_FLAGS, V8_FLAGS]) {
    const out = new Deno.Command(Deno.execPath(), {
      args: ["eval", v8, "console.log(6 * 7)"],
      stdout: "piped",
      stderr: "piped",
    }).outputSync();
    assert.equal(new TextDecoder().decode(out.stdout).trim(), "42");
    assert.equal(new TextDecoder().decode(out.stderr).trim(), "");
  }
});
