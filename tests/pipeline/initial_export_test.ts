/**
 * The initial export of a fresh slot (DESIGN §5): every published table is
 * exported from one temporary-slot snapshot by a pool of workers, largest
 * first, while a concurrent workload writes to all of them; the rows of each
 * table are in its full_reload or in the streaming files after it, exactly
 * once, so replay equals the source.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { parse as parseYaml } from "yaml";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import { waitFor } from "../harness/cli.ts";
import {
  assertChangesOnce,
  assertNoStraddle,
  checkDataDir,
  createMixedTables,
  lsnValue,
  MIXED_TABLES,
  readRegisteredCsv,
  stopCleanly,
  Workload,
} from "../harness/export_world.ts";
import { layoutSuffix, streamEnv } from "../harness/stream_env.ts";

const BIG_ROWS = 2_000_000;
const WORKERS = 3;

for (const version of testMajors()) {
  Deno.test({
    name:
      `initial export: ten tables from one snapshot under concurrent writes (PG ${version}${layoutSuffix()})`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    const started = Date.now();
    // The server log tells the order in which the export COPYs started.
    await using w = await streamEnv(version, {
      log_statement: "'all'",
      log_line_prefix: "'%m [%p] %a: '",
    });
    await createMixedTables(w.db, BIG_ROWS);
    // Sizes as the coordinator should rank them: the data an export reads
    // (heap and TOAST main forks), a partitioned table by its partitions.
    const sizes = await w.db.query(
      `SELECT n.nspname AS schema, c.relname AS table,
              COALESCE((SELECT sum(pg_relation_size(t.oid) + CASE WHEN t.reltoastrelid <> 0
                                     THEN pg_relation_size(t.reltoastrelid) ELSE 0 END)
                        FROM pg_partition_tree(c.oid) p JOIN pg_class t ON t.oid = p.relid),
                       pg_relation_size(c.oid) + CASE WHEN c.reltoastrelid <> 0
                         THEN pg_relation_size(c.reltoastrelid) ELSE 0 END)::int8 AS size
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
         AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       ORDER BY size DESC`,
    );
    const largest = sizes.rows.slice(0, WORKERS).map((r) => `${r.schema}.${r.table}`);
    assert.deepEqual(largest, ["public.big", "public.parted", "public.medium"]);
    await w.init();
    const fillTime = Date.now() - started;

    // The workload starts with the process, so transactions commit before,
    // across and after the snapshot; the tables whose export contents are
    // asserted exactly stay quiet until the snapshot is taken.
    const stream = w.stream({ CDC_EXPORT_WORKERS: String(WORKERS) });
    await using workload = await Workload.start(w.cluster.url(), 0xe4 + version, BIG_ROWS, {
      quiet: () => !stream.stderr.includes('"export started"'),
    });
    // Sample the export connections while the exports run.
    let maxExporters = 0;
    await waitFor("every table to be exported", async () => {
      // Export connections are on the source, files in the registry.
      const active = await w.db.query(
        `SELECT count(*)::int AS exporters FROM pg_stat_activity
         WHERE application_name = 'cdc-egress/export' AND backend_type = 'client backend'`,
      );
      const res = await w.registry.query(
        `SELECT count(DISTINCT (schema_name, table_name))::int AS exported FROM cdc_registry.file_log
         WHERE file_type = 'full_reload'`,
      );
      maxExporters = Math.max(maxExporters, active.rows[0].exporters);
      await workload.check();
      return res.rows[0].exported === MIXED_TABLES.length;
    }, 180_000);
    const exportTime = Date.now() - started - fillTime;
    // Keep writing until every table has streamed changes registered after its export.
    await waitFor("streaming files after the exports", async () => {
      await workload.check();
      const res = await w.registry.query(
        `SELECT count(DISTINCT (s.schema_name, s.table_name))::int AS n
         FROM cdc_registry.file_log s JOIN cdc_registry.file_log r
           ON r.schema_name = s.schema_name AND r.table_name = s.table_name
          AND r.file_type = 'full_reload'
         WHERE s.file_type = 'streaming' AND s.start_lsn > r.start_lsn`,
      );
      return res.rows[0].n === MIXED_TABLES.length;
    }, 120_000);
    const transactions = await workload.stop();
    await w.caughtUp(180_000);
    await stopCleanly(stream);

    for (const t of MIXED_TABLES) await w.assertReplayEquals(t.schema, t.table);

    const files = await checkDataDir(w);
    const reloads = files.filter((f) => f.fileType === "full_reload");
    // Exactly one export per table, all at the same snapshot LSN.
    assert.deepEqual(
      reloads.map((f) => `${f.schema}.${f.table}`).sort(),
      MIXED_TABLES.map((t) => `${t.schema}.${t.table}`).sort(),
    );
    const lsns = new Set(reloads.map((f) => f.startLsn));
    assert.equal(lsns.size, 1, `one snapshot for all exports: ${[...lsns]}`);
    const [snapshotLsn] = lsns;
    for (const f of reloads) {
      assert.equal(f.endLsn, f.startLsn, f.path);
      assert.equal(f.startSeq, null, f.path);
      assert.match(f.path, /\/full_reload\.csv\.gz$/);
      const { header, rows } = await readRegisteredCsv(w.dataDir, f.path);
      assert.equal(f.rows, rows.length, `row_count of ${f.path} is its COPY row count`);
      const yml = parseYaml(
        await Deno.readTextFile(join(w.dataDir, f.path.replace(/[^/]+$/, "schema.yml"))),
      );
      assert.equal(yml.schema, f.schema, f.path);
      assert.equal(yml.table, f.table, f.path);
      assert.equal(yml.valid_from_lsn, f.startLsn, `schema.yml of ${f.path}`);
      assert.deepEqual(
        header,
        yml.columns.map((c: { name: string }) => c.name),
        `header of ${f.path} is its schema.yml columns`,
      );
    }
    const byTable = new Map(reloads.map((f) => [`${f.schema}.${f.table}`, f]));
    assert.equal(byTable.get("public.empty")!.rows, 0);
    assert.equal(byTable.get("public.small")!.rows, 10);
    assert.equal(byTable.get("public.lookup")!.rows, 50);
    // Rows written before the export started are in the exports, none lost:
    // the big table held its BIG_ROWS (minus the workload's few deletes).
    assert.ok(byTable.get("public.big")!.rows > BIG_ROWS * 0.99, "big table export row count");
    assert.deepEqual(
      reloads.filter((f) => f.rows === 0).map((f) => `${f.schema}.${f.table}`),
      ["public.empty"],
    );

    // Streaming files come after the exports: none before the snapshot, none straddling it.
    for (const f of files.filter((f) => f.fileType === "streaming")) {
      assert.ok(
        lsnValue(f.startLsn) >= lsnValue(snapshotLsn),
        `${f.path} starts at ${f.startLsn}, before the snapshot ${snapshotLsn}`,
      );
    }
    await assertNoStraddle(w.registry);
    await assertChangesOnce(w, MIXED_TABLES);

    // Largest first: the three largest tables went to the three workers, one
    // each, as their first COPY. (When each COPY starts across workers is up
    // to the scheduler: a worker may take a table and start its COPY after
    // another worker went through several small ones.)
    const matches = [
      ...(await Deno.readTextFile(join(w.cluster.dir, "server.log"))).matchAll(
        // `COPY (SELECT ... FROM [ONLY] "s"."t") TO STDOUT` or `COPY "s"."t" (cols) TO STDOUT`.
        /\[(\d+)\] cdc-egress\/export: LOG: {2}(?:statement|execute [^:]*): COPY (?:\(SELECT .* FROM (?:ONLY )?)?"((?:[^"]|"")+)"\."((?:[^"]|"")+)"(?:\)|\s\()[^\n]*?TO STDOUT/g,
      ),
    ];
    const copies = matches.map((m) =>
      `${m[2].replaceAll('""', '"')}.${m[3].replaceAll('""', '"')}`
    );
    const firstOfWorker = new Map<string, string>();
    matches.forEach((m, i) => {
      if (!firstOfWorker.has(m[1])) firstOfWorker.set(m[1], copies[i]);
    });
    assert.deepEqual(
      [...copies].sort(),
      MIXED_TABLES.map((t) => `${t.schema}.${t.table}`).sort(),
      `one COPY per table: ${copies}`,
    );
    assert.deepEqual(
      [...firstOfWorker.values()].sort(),
      [...largest].sort(),
      `first COPY of each worker: ${[...firstOfWorker.values()]}; all: ${copies}`,
    );
    assert.ok(maxExporters <= WORKERS, `${maxExporters} export connections, limit ${WORKERS}`);
    assert.ok(maxExporters >= 2, `exports ran one at a time (${maxExporters} connections seen)`);
    const logs = stream.stderr.split("\n").filter((l) => l.includes('"export started"'));
    assert.equal(logs.length, 1, `one export start: ${logs.join("\n")}`);
    assert.equal(JSON.parse(logs[0]).tables, MIXED_TABLES.length);
    assert.equal(JSON.parse(logs[0]).workers, WORKERS);

    const modes = await w.registry.query(
      "SELECT schema_name || '.' || table_name AS t, mode FROM cdc_registry.table_state ORDER BY 1",
    );
    assert.deepEqual(
      modes.rows.filter((r) => r.mode !== "streaming"),
      [],
      "tables not streaming",
    );
    assert.equal(modes.rowCount, MIXED_TABLES.length);
    const ops = await w.registry.query(
      "SELECT state, count(*)::int AS n FROM cdc_registry.reload_operations GROUP BY 1",
    );
    assert.deepEqual(ops.rows, [{ state: "done", n: MIXED_TABLES.length }]);
    console.log(
      `PG ${version}: fill ${Math.round(fillTime / 1000)} s, export ${
        Math.round(exportTime / 1000)
      } s, ${transactions} workload transactions, ${files.length} files, total ${
        Math.round((Date.now() - started) / 1000)
      } s`,
    );
  });
}
