/**
 * How PostgreSQL column types map to DuckDB without losing information.
 *
 * A value is stored in a native DuckDB type only when DuckDB holds it
 * exactly; where some values of a type would not fit or would change
 * (numeric beyond DECIMAL(38), NaN in numeric, BC dates, money, intervals
 * with months, arrays, ranges, ...) the column stays VARCHAR with
 * PostgreSQL's text. Types that are mostly exact carry a check: a value
 * whose DuckDB text would differ from PostgreSQL's stops the load, and
 * `materialize` then keeps that column VARCHAR ("widens" it) and loads again.
 */

/** The DuckDB side of one column. */
export interface DuckdbColumnType {
  /** DuckDB type name. */
  type: string;
  /** SQL turning the VARCHAR expression `x` (PostgreSQL text) into `type`. */
  cast(x: string): string;
  /** SQL that is true when `x` fits exactly; null when every value fits. */
  check: ((x: string) => string) | null;
}

const VARCHAR: DuckdbColumnType = { type: "VARCHAR", cast: (x) => x, check: null };

function plain(type: string): DuckdbColumnType {
  return { type, cast: (x) => `CAST(${x} AS ${type})`, check: null };
}

/** Exact when DuckDB prints the value back as PostgreSQL printed it. */
function roundTrip(type: string): DuckdbColumnType {
  return {
    type,
    cast: (x) => `CAST(${x} AS ${type})`,
    check: (x) => `CAST(TRY_CAST(${x} AS ${type}) AS VARCHAR) = ${x}`,
  };
}

/**
 * The DuckDB type for a PostgreSQL `format_type()` text. `varcharOnly`
 * keeps every column as text (the csv: target).
 */
export function duckdbColumnType(pgType: string, varcharOnly = false): DuckdbColumnType {
  if (varcharOnly || pgType.endsWith("]")) return VARCHAR;
  switch (pgType) {
    case "boolean":
      return plain("BOOLEAN");
    case "smallint":
      return plain("SMALLINT");
    case "integer":
      return plain("INTEGER");
    case "bigint":
      return plain("BIGINT");
    case "real":
      return plain("FLOAT");
    case "double precision":
      return plain("DOUBLE");
    case "date":
      return roundTrip("DATE");
    case "time without time zone":
      return roundTrip("TIME");
    case "timestamp without time zone":
      return roundTrip("TIMESTAMP");
    case "timestamp with time zone":
      return roundTrip("TIMESTAMPTZ");
    case "uuid":
      return roundTrip("UUID");
    case "bytea":
      // PostgreSQL's hex output: \x then two hex digits per byte.
      return {
        type: "BLOB",
        cast: (x) => `unhex(substr(${x}, 3))`,
        check: (x) => `regexp_full_match(${x}, '\\\\x([0-9a-fA-F]{2})*')`,
      };
  }
  const numeric = /^numeric\((\d+),(\d+)\)$/.exec(pgType);
  if (numeric && Number(numeric[1]) <= 38) {
    return roundTrip(`DECIMAL(${numeric[1]},${numeric[2]})`);
  }
  const ts = /^(timestamp|time)\(\d\) with(out)? time zone$/.exec(pgType);
  if (ts) {
    if (ts[1] === "time") return ts[2] ? roundTrip("TIME") : VARCHAR;
    return roundTrip(ts[2] ? "TIMESTAMP" : "TIMESTAMPTZ");
  }
  return VARCHAR;
}

/** The VARCHAR mapping, for a widened column. */
export const DUCKDB_VARCHAR: DuckdbColumnType = VARCHAR;
