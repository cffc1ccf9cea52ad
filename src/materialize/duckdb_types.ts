/**
 * How PostgreSQL column types map to DuckDB without losing information.
 *
 * A value is stored in a native DuckDB type only when DuckDB holds it
 * exactly; where some values of a type would not fit or would change
 * (numeric beyond DECIMAL(38), NaN in numeric, BC dates, money, intervals
 * with months, arrays, ranges, ...) the column stays VARCHAR with
 * PostgreSQL's text. Types that are mostly exact carry a checked
 * conversion: a value it cannot hold exactly stops the load, and
 * `materialize` then keeps that column VARCHAR ("widens" it) and loads again.
 */

/** The DuckDB side of one column. */
export interface DuckdbColumnType {
  /** DuckDB type name. */
  type: string;
  /** SQL turning the VARCHAR expression `x` (PostgreSQL text) into `type`. */
  cast(x: string): string;
  /**
   * SQL giving the non-NULL text `x` as `type`, or NULL where DuckDB cannot
   * hold that value exactly; null when every value fits.
   */
  exact: ((x: string) => string) | null;
}

const VARCHAR: DuckdbColumnType = { type: "VARCHAR", cast: (x) => x, exact: null };

function plain(type: string): DuckdbColumnType {
  return { type, cast: (x) => `CAST(${x} AS ${type})`, exact: null };
}

/** Exact when DuckDB prints the value back as PostgreSQL printed it. */
function roundTrip(type: string): DuckdbColumnType {
  return {
    type,
    cast: (x) => `CAST(${x} AS ${type})`,
    exact: (x) =>
      `CASE WHEN CAST(TRY_CAST(${x} AS ${type}) AS VARCHAR) = ${x} THEN CAST(${x} AS ${type}) END`,
  };
}

/**
 * numeric(p,s) with p <= 38: PostgreSQL prints exactly s decimals (NaN and
 * the infinities do not parse), so a value that parses with at most s
 * decimals is held exactly (cheaper than printing it back).
 */
function decimal(p: number, s: number): DuckdbColumnType {
  const type = `DECIMAL(${p},${s})`;
  return {
    type,
    cast: (x) => `CAST(${x} AS ${type})`,
    exact: (x) =>
      `CASE WHEN strpos(${x}, '.') = 0 OR length(${x}) - strpos(${x}, '.') <= ${s} THEN TRY_CAST(${x} AS ${type}) END`,
  };
}

/**
 * timestamptz: exact when PostgreSQL printed it in UTC (`+00`) with a
 * four-digit year and at most microseconds (not BC), or as `infinity` or
 * `-infinity`. Checked on the text: printing a TIMESTAMPTZ back goes
 * through ICU's calendar, which cost more than the load itself.
 */
const TIMESTAMPTZ: DuckdbColumnType = {
  type: "TIMESTAMPTZ",
  cast: (x) => `CAST(${x} AS TIMESTAMPTZ)`,
  exact: (x) =>
    `CASE WHEN (${x} LIKE '____-__-__ __:__:__%+00' AND length(${x}) <= 29)
       OR ${x} IN ('infinity', '-infinity') THEN TRY_CAST(${x} AS TIMESTAMPTZ) END`,
};

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
      return TIMESTAMPTZ;
    case "uuid":
      return roundTrip("UUID");
    case "bytea":
      // PostgreSQL's hex output: \x then two hex digits per byte.
      return {
        type: "BLOB",
        cast: (x) => `unhex(substr(${x}, 3))`,
        exact: (x) =>
          `CASE WHEN regexp_full_match(${x}, '\\\\x([0-9a-fA-F]{2})*') THEN unhex(substr(${x}, 3)) END`,
      };
  }
  const numeric = /^numeric\((\d+),(\d+)\)$/.exec(pgType);
  if (numeric && Number(numeric[1]) <= 38) {
    return decimal(Number(numeric[1]), Number(numeric[2]));
  }
  const ts = /^(timestamp|time)\(\d\) with(out)? time zone$/.exec(pgType);
  if (ts) {
    if (ts[1] === "time") return ts[2] ? roundTrip("TIME") : VARCHAR;
    return ts[2] ? roundTrip("TIMESTAMP") : TIMESTAMPTZ;
  }
  return VARCHAR;
}

/** The VARCHAR mapping, for a widened column. */
export const DUCKDB_VARCHAR: DuckdbColumnType = VARCHAR;
