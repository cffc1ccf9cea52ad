/**
 * Settings without a server: precedence flag > env > YAML > default, and the
 * duration and byte-size parsers.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { DEFAULTS, loadConfig, parseByteSize, parseDuration } from "../src/config.ts";

function envOf(vars: Record<string, string>): (name: string) => string | undefined {
  return (name) => vars[name];
}

async function withYaml(text: string, fn: (path: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cdc-config-" });
  try {
    const path = join(dir, "cdc.yml");
    await Deno.writeTextFile(path, text);
    await fn(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("loadConfig: defaults when nothing is set", async () => {
  const config = await loadConfig({}, envOf({}));
  assert.deepEqual(config, DEFAULTS);
  assert.equal(config.dataDir, "./data");
  assert.equal(config.slot, "cdc_egress");
  assert.equal(config.batchIntervalMs, 5 * 60_000);
  assert.equal(config.exportWorkers, 4);
  assert.equal(config.metricsAddr, "127.0.0.1:9187");
});

Deno.test("loadConfig: flag > env > YAML > default, per setting", async () => {
  const yaml = [
    "source: postgres://yaml@h/db",
    "data_dir: /yaml/data",
    "slot: yaml_slot",
    "publication: yaml_pub",
    "batch_interval: 90s",
    "batch_max_rows: 300",
    "tables: [public.a, sales.*]",
  ].join("\n");
  await withYaml(yaml, async (path) => {
    const env = envOf({
      CDC_DATA_DIR: "/env/data",
      CDC_SLOT: "env_slot",
      CDC_BATCH_INTERVAL: "2m",
      CDC_EXPORT_WORKERS: "7",
    });
    const config = await loadConfig(
      { config: path, "data-dir": "/flag/data", "batch-interval": "500ms" },
      env,
    );
    // flag beats env and YAML
    assert.equal(config.dataDir, "/flag/data");
    assert.equal(config.batchIntervalMs, 500);
    // env beats YAML
    assert.equal(config.slot, "env_slot");
    // env beats default
    assert.equal(config.exportWorkers, 7);
    // YAML beats default
    assert.equal(config.sourceUrl, "postgres://yaml@h/db");
    assert.equal(config.publication, "yaml_pub");
    assert.equal(config.batchMaxRows, 300);
    assert.deepEqual(config.tables, ["public.a", "sales.*"]);
    // default when nobody sets it
    assert.equal(config.batchMaxBytes, DEFAULTS.batchMaxBytes);
    assert.equal(config.metricsAddr, DEFAULTS.metricsAddr);
  });
});

Deno.test("loadConfig: CDC_CONFIG names the file; --config beats it", async () => {
  await withYaml("slot: from_env_file\n", async (envFile) => {
    await withYaml("slot: from_flag_file\n", async (flagFile) => {
      const viaEnv = await loadConfig({}, envOf({ CDC_CONFIG: envFile }));
      assert.equal(viaEnv.slot, "from_env_file");
      const viaFlag = await loadConfig({ config: flagFile }, envOf({ CDC_CONFIG: envFile }));
      assert.equal(viaFlag.slot, "from_flag_file");
    });
  });
});

Deno.test("loadConfig: an empty environment variable does not hide the YAML value", async () => {
  await withYaml("slot: yaml_slot\n", async (path) => {
    const config = await loadConfig({ config: path }, envOf({ CDC_SLOT: "" }));
    assert.equal(config.slot, "yaml_slot");
  });
});

Deno.test("loadConfig: bad values name where they came from", async () => {
  await assert.rejects(
    loadConfig({ "batch-interval": "5x" }, envOf({})),
    {
      name: "TypeError",
      message: 'Cannot use --batch-interval "5x": expected a duration such as 90s, 5m or 1h',
    },
  );
  await assert.rejects(
    loadConfig({}, envOf({ CDC_BATCH_MAX_ROWS: "-3" })),
    { name: "TypeError", message: /^Cannot use CDC_BATCH_MAX_ROWS "-3": / },
  );
  await withYaml("batch_max_bytes: lots\n", async (path) => {
    await assert.rejects(
      loadConfig({ config: path }, envOf({})),
      { name: "TypeError", message: /^Cannot use config "batch_max_bytes" "lots": / },
    );
  });
  // A flag that is valid hides an invalid env value and YAML value.
  await withYaml("batch_interval: never\n", async (path) => {
    const config = await loadConfig(
      { config: path, "batch-interval": "1s" },
      envOf({ CDC_BATCH_INTERVAL: "soon" }),
    );
    assert.equal(config.batchIntervalMs, 1000);
  });
});

Deno.test("loadConfig: --spool-max-bytes takes a size of at least 1MiB", async () => {
  assert.equal(DEFAULTS.spoolMaxBytes, 1024 ** 3);
  const config = await loadConfig({}, envOf({ CDC_SPOOL_MAX_BYTES: "64MiB" }));
  assert.equal(config.spoolMaxBytes, 64 * 1024 * 1024);
  await assert.rejects(
    loadConfig({ "spool-max-bytes": "512KiB" }, envOf({})),
    { name: "TypeError", message: 'Cannot use --spool-max-bytes "512KiB": at least 1MiB' },
  );
  await assert.rejects(
    loadConfig({}, envOf({ CDC_SPOOL_MAX_BYTES: "lots" })),
    { name: "TypeError", message: /^Cannot use CDC_SPOOL_MAX_BYTES "lots": / },
  );
});

Deno.test("loadConfig: malformed YAML, unknown keys and missing files are rejected", async () => {
  await withYaml("slot: [unclosed\n", async (path) => {
    await assert.rejects(loadConfig({ config: path }, envOf({})), {
      name: "SyntaxError",
      message: new RegExp(`^Cannot parse config file "${path}": [^\\n]+ at line 2, column 1$`),
    });
  });
  await withYaml("slot: a\nbatch_intervall: 5m\n", async (path) => {
    await assert.rejects(loadConfig({ config: path }, envOf({})), {
      name: "TypeError",
      message: `Cannot use config file "${path}": unknown setting "batch_intervall"`,
    });
  });
  await withYaml("- slot\n- a\n", async (path) => {
    await assert.rejects(loadConfig({ config: path }, envOf({})), {
      message: `Cannot parse config file "${path}": expected a mapping of settings`,
    });
  });
  await withYaml("slot:\n  nested: 1\n", async (path) => {
    await assert.rejects(loadConfig({ config: path }, envOf({})), {
      message: `Cannot use config file "${path}": setting "slot" must be a string or number`,
    });
  });
  await assert.rejects(loadConfig({ config: "/nonexistent/cdc.yml" }, envOf({})), {
    message: 'Cannot read config file "/nonexistent/cdc.yml": no such file',
  });
  // An empty file is no settings at all.
  await withYaml("", async (path) => {
    assert.deepEqual(await loadConfig({ config: path }, envOf({})), DEFAULTS);
  });
});

Deno.test("parseDuration", () => {
  const ok: [string, number][] = [
    ["1ms", 1],
    ["500ms", 500],
    ["1s", 1000],
    ["90s", 90_000],
    ["1.5s", 1500],
    ["5m", 300_000],
    ["1h", 3_600_000],
    ["1m30s", 90_000],
    ["1h2m3s4ms", 3_723_004],
    [" 5m ", 300_000],
  ];
  for (const [raw, ms] of ok) assert.equal(parseDuration(raw), ms, raw);
  const bad = [
    "",
    " ",
    "5",
    "5x",
    "x5s",
    "5s5",
    "0s",
    "0ms",
    "0.5ms",
    "-5s",
    "5 m",
    "5M",
    "1d",
    "s",
  ];
  for (const raw of bad) {
    assert.throws(() => parseDuration(raw, "--batch-interval"), {
      name: "TypeError",
      message: `Cannot use --batch-interval "${raw}": expected a duration such as 90s, 5m or 1h`,
    }, JSON.stringify(raw));
  }
});

Deno.test("parseByteSize", () => {
  const ok: [string, number][] = [
    ["1", 1],
    ["1048576", 1_048_576],
    ["1b", 1],
    ["10kb", 10_000],
    ["10KB", 10_000],
    ["10MB", 10_000_000],
    ["2GB", 2_000_000_000],
    ["1KiB", 1024],
    ["64MiB", 64 * 1024 * 1024],
    ["64mib", 64 * 1024 * 1024],
    ["1GiB", 1024 ** 3],
    [" 64 MiB ", 64 * 1024 * 1024],
  ];
  for (const [raw, n] of ok) assert.equal(parseByteSize(raw), n, raw);
  const bad = ["", "0", "0MiB", "-1", "1.5MiB", "64XB", "MiB", "1e6", "64 Mi B", "9999999999GiB"];
  for (const raw of bad) {
    assert.throws(() => parseByteSize(raw, "--batch-max-bytes"), {
      name: "TypeError",
      message:
        `Cannot use --batch-max-bytes "${raw}": expected a positive size such as 64MiB or 1048576`,
    }, JSON.stringify(raw));
  }
});
