/**
 * `status` with thousands of tables and hundreds of thousands of file rows
 * (`CDC_TEST_STATUS_TABLES` / `CDC_TEST_STATUS_FILES`, default 2,000 /
 * 200,000; the figure is 10,000 / 1,000,000): no status query reads
 * `file_log` or `reload_operations` by a sequential scan (EXPLAIN (FORMAT
 * JSON) on the seeded registry, whose statistics are fresh), the totals and
 * per-table figures agree with aggregates over `file_log`, and the text form
 * lists the tables needing attention plus a count of the others, while
 * `--all-tables` lists them all.
 */

import assert from "node:assert/strict";
// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";
import { testMajors } from "../../scripts/embedded_postgres.ts";
import {
  STATUS_QUERIES,
  type StatusQueryName,
  statusQueryParams,
} from "../../src/registry/status_queries.ts";
import { runCli } from "../harness/cli.ts";
import { largeRegistrySize, seedLargeRegistry } from "../harness/large_registry.ts";
import { layoutSuffix, streamEnv } from "../harness/stream_env.ts";

// deno-lint-ignore no-explicit-any
type Doc = any;

/** Every plan node of an EXPLAIN (FORMAT JSON) plan. */
function planNodes(plan: Doc): Doc[] {
  return [plan, ...((plan.Plans ?? []) as Doc[]).flatMap(planNodes)];
}

/** Tables a status query must never read whole: they grow with files and reloads. */
const BIG = new Set(["file_log", "reload_operations", "history_gap"]);

async function plan(db: pg.Client, name: StatusQueryName): Promise<Doc[]> {
  const res = await db.query(
    `EXPLAIN (FORMAT JSON) ${STATUS_QUERIES[name]}`,
    statusQueryParams(name, "cdc_egress", 20),
  );
  return planNodes(res.rows[0]["QUERY PLAN"][0].Plan);
}

/** The per-table figures computed from file_log itself, by name. */
async function expectedTables(db: pg.Client): Promise<Map<string, Doc>> {
  const res = await db.query(
    `SELECT schema_name || '.' || table_name AS name, count(*)::int AS files,
            sum(row_count)::int8 AS rows, sum(byte_size)::int8 AS bytes
     FROM cdc_registry.file_log WHERE slot_name = 'cdc_egress' GROUP BY 1`,
  );
  return new Map(res.rows.map((r) => [r.name, r]));
}

for (const version of testMajors()) {
  Deno.test(`status at ${largeRegistrySize().tables} tables uses indexes and summarizes (PG ${version}${layoutSuffix()})`, async (t) => {
    await using w = await streamEnv(version);
    await w.init();
    const size = largeRegistrySize();
    const seeded = await seedLargeRegistry(w.registry, "cdc_egress", size);
    assert.ok(seeded.files >= size.files);

    await t.step(
      "no status query reads file_log, reload_operations or open gaps by a seq scan",
      async () => {
        for (const name of Object.keys(STATUS_QUERIES) as StatusQueryName[]) {
          const nodes = await plan(w.registry, name);
          // `gaps` returns every gap of the slot: reading them all is its job.
          const scans = nodes.filter((n) =>
            BIG.has(n["Relation Name"]) &&
            !(name === "gaps" && n["Relation Name"] === "history_gap")
          );
          for (const n of scans) {
            assert.match(
              n["Node Type"],
              /^(Index Scan|Index Only Scan|Bitmap Heap Scan)$/,
              `${name} reads ${n["Relation Name"]} by ${n["Node Type"]}`,
            );
          }
          if (name === "tables") {
            // The per-table totals come from file_totals, not from file_log.
            assert.equal(scans.length, 0, "tables reads file_log");
            assert.ok(nodes.some((n) => n["Relation Name"] === "file_totals"));
          }
        }
      },
    );

    const r = await runCli(["status", "--json"], w.env);
    assert.equal(r.code, 0, r.stderr);
    const doc: Doc = JSON.parse(r.stdout);

    await t.step("--json: every table, totals equal to aggregates over file_log", async () => {
      const expected = await expectedTables(w.registry);
      const states = await w.registry.query(
        `SELECT mode, count(*)::int AS n FROM cdc_registry.table_state
         WHERE slot_name = 'cdc_egress' GROUP BY 1`,
      );
      assert.equal(doc.tables.length, size.tables);
      assert.equal(doc.table_summary.tables, size.tables);
      assert.deepEqual(
        doc.table_summary.modes,
        Object.fromEntries(states.rows.map((x) => [x.mode, x.n])),
      );
      assert.equal(doc.table_summary.files, seeded.files);
      for (const table of doc.tables) {
        const e = expected.get(table.name);
        assert.ok(e, `${table.name} has no files`);
        assert.deepEqual([table.files, table.rows, table.bytes], [
          e.files,
          Number(e.rows),
          Number(e.bytes),
        ], table.name);
      }
      // The other slots' tables and files are not counted.
      assert.ok(doc.tables.every((x: Doc) => !x.name.includes("other")));
      assert.deepEqual(
        doc.other_slots.map((o: Doc) => o.slot),
        ["cdc_egress_other_a", "cdc_egress_other_b"],
      );
    });

    await t.step(
      "problems: failed, waiting and exporting reloads; dropped is not one",
      async () => {
        // Independently of status: a table needs attention when it is not dropped
        // and its newest reload failed, or it waits for or runs a reload.
        const res = await w.registry.query(
          `SELECT s.schema_name || '.' || s.table_name AS name
         FROM cdc_registry.table_state s
         LEFT JOIN LATERAL (SELECT state FROM cdc_registry.reload_operations o
                            WHERE o.slot_name = s.slot_name AND o.schema_name = s.schema_name
                              AND o.table_name = s.table_name ORDER BY id DESC LIMIT 1) o ON true
         WHERE s.slot_name = 'cdc_egress' AND s.mode <> 'dropped'
           AND (o.state = 'failed' OR s.mode IN ('pending_reload', 'reloading'))
         ORDER BY 1`,
        );
        const flagged = doc.tables.filter((x: Doc) => x.problem !== null).map((x: Doc) => x.name);
        assert.deepEqual(flagged.sort(), res.rows.map((x) => x.name).sort());
        assert.ok(flagged.length > 0);
        assert.equal(doc.table_summary.needing_attention, flagged.length);
        const failed = doc.tables.find((x: Doc) => x.last_reload?.state === "failed");
        assert.match(failed.problem, /^reload failed: relation does not exist$/);
      },
    );

    await t.step("text: a summary, the tables needing attention, a count of the rest", async () => {
      const text = await runCli(["status"], w.env);
      assert.equal(text.code, 0, text.stderr);
      const lines = text.stdout.split("\n");
      const n = doc.table_summary.needing_attention;
      const modes = Object.entries(doc.table_summary.modes as Record<string, number>)
        .sort((a, b) => b[1] - a[1]).map(([m, k]) => `${k} ${m}`).join(", ");
      const summary = lines.find((l) => l.startsWith("tables: "));
      assert.ok(
        summary?.startsWith(
          `tables: ${size.tables} (${modes}); ${seeded.files} files, ${doc.table_summary.rows} rows, `,
        ),
        String(summary),
      );
      assert.ok(lines.includes(`tables needing attention (${n}):`));
      assert.ok(lines.some((l) => l.startsWith(`${size.tables - n} other tables not listed`)));
      const section = (out: string[], header: RegExp) => {
        const from = out.findIndex((l) => header.test(l));
        assert.ok(from >= 0, `no ${header}`);
        const to = out.indexOf("", from);
        return out.slice(from + 1, to < 0 ? undefined : to);
      };
      const listed = section(lines, /^tables needing attention/).filter((l) =>
        /^s\d\.t\d+ /.test(l)
      );
      assert.equal(listed.length, Math.min(n, 50));
      if (n > 50) assert.ok(lines.includes(`... and ${n - 50} more needing attention`));
      // Every table has a (closed) history gap: 50 of them are shown, and a count.
      const gaps = section(lines, /^history gaps \(\d+\)/);
      assert.ok(lines.some((l) => l.startsWith(`history gaps (${size.tables}): `)));
      assert.equal(gaps.filter((l) => /^s\d\.t\d+ /.test(l)).length, 50);
      assert.ok(
        gaps.includes(`... and ${size.tables - 50} more (--all-tables lists them all, --json too)`),
      );
      assert.equal(doc.history_gaps.length, size.tables);
      assert.ok(lines.length < 300, `${lines.length} lines`);
      const all = await runCli(["status", "--all-tables"], w.env);
      assert.equal(all.code, 0, all.stderr);
      const allLines = all.stdout.split("\n");
      assert.equal(
        section(allLines, /^tables \(\d+\):$/).filter((l) => /^s\d\.t\d+ /.test(l)).length,
        size.tables,
      );
      assert.equal(
        section(allLines, /^history gaps/).filter((l) => /^s\d\.t\d+ /.test(l)).length,
        size.tables,
      );
    });
  });
}
