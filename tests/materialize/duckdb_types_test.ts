import assert from "node:assert/strict";
import { duckdbColumnType } from "../../src/materialize/duckdb_types.ts";

/**
 * Converts PostgreSQL's text `value` of type `pgType` with the target's
 * checked conversion in a real DuckDB; returns DuckDB's text of the value,
 * or "widen" when the value does not fit exactly.
 */
async function convert(
  conn: { runAndReadAll(sql: string): Promise<{ getRowsJS(): unknown[][] }> },
  pgType: string,
  value: string,
): Promise<string> {
  const t = duckdbColumnType(pgType);
  assert.ok(t.exact, `${pgType} has a checked conversion`);
  const x = `'${value.replaceAll("'", "''")}'`;
  try {
    const r = await conn.runAndReadAll(
      `SELECT CAST(coalesce(${t.exact(x)}, error('widen')) AS VARCHAR)`,
    );
    return String(r.getRowsJS()[0][0]);
  } catch (error) {
    if (/widen/.test(String((error as Error).message))) return "widen";
    throw error;
  }
}

Deno.test("duckdbColumnType() keeps exactly the values DuckDB holds and widens the rest", async () => {
  const { DuckDBInstance } = await import("@duckdb/node-api");
  const db = await DuckDBInstance.create(":memory:");
  const conn = await db.connect();
  await conn.run("SET TimeZone = 'UTC'");
  try {
    const cases: [string, string, string][] = [
      // timestamptz: UTC text with a four-digit year, or an infinity.
      ["timestamp with time zone", "2026-01-02 01:04:05.5+00", "2026-01-02 01:04:05.5+00"],
      [
        "timestamp with time zone",
        "1999-12-31 23:59:59.123456+00",
        "1999-12-31 23:59:59.123456+00",
      ],
      ["timestamp with time zone", "-infinity", "-infinity"],
      ["timestamp with time zone", "infinity", "infinity"],
      ["timestamp with time zone", "2026-01-02 03:04:05+02", "widen"],
      ["timestamp with time zone", "0044-03-15 00:00:00+00 BC", "widen"],
      ["timestamp with time zone", "10000-01-01 00:00:00+00", "widen"],
      ["timestamp(3) with time zone", "2026-01-02 03:04:05.123+00", "2026-01-02 03:04:05.123+00"],
      // numeric(p,s): at most s decimals and p digits; no NaN or infinities.
      ["numeric(12,2)", "-0.50", "-0.50"],
      ["numeric(12,2)", "1234567890.12", "1234567890.12"],
      ["numeric(12,2)", "12345678901.00", "widen"],
      ["numeric(12,2)", "1.005", "widen"],
      ["numeric(12,2)", "NaN", "widen"],
      ["numeric(10,0)", "42", "42"],
      [
        "numeric(38,10)",
        "1234567890123456789012345678.0123456789",
        "1234567890123456789012345678.0123456789",
      ],
      // Printed back as PostgreSQL printed them.
      ["date", "2026-12-31", "2026-12-31"],
      ["date", "0044-03-15 BC", "widen"],
      ["timestamp without time zone", "2026-01-02 03:04:05.123456", "2026-01-02 03:04:05.123456"],
      ["uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
      ["bytea", "\\x00ff10", "\\x00\\xFF\\x10"],
      ["bytea", "\\x0", "widen"],
    ];
    for (const [type, value, want] of cases) {
      assert.equal(await convert(conn, type, value), want, `${type} ${value}`);
    }
  } finally {
    conn.closeSync();
    db.closeSync();
  }
});
