/**
 * Parses `materialize --to`: `duckdb:PATH`, `postgres://...` (or
 * `postgresql://`), `csv:DIR`, `parquet:DIR`.
 */

/** A parsed `--to` value. */
export type TargetSpec =
  | { kind: "duckdb"; path: string }
  | { kind: "postgres"; url: string }
  | { kind: "csv"; dir: string }
  | { kind: "parquet"; dir: string };

/** Parses a `--to` value; throws TypeError on anything else. */
export function parseTargetSpec(text: string | undefined): TargetSpec {
  if (!text) {
    throw new TypeError(
      "Cannot materialize: --to is required (duckdb:PATH, postgres://..., csv:DIR or parquet:DIR)",
    );
  }
  if (/^postgres(ql)?:\/\//.test(text)) return { kind: "postgres", url: text };
  const m = /^(duckdb|csv|parquet):(.+)$/s.exec(text);
  if (m) {
    if (m[1] === "duckdb") return { kind: "duckdb", path: m[2] };
    return { kind: m[1] as "csv" | "parquet", dir: m[2] };
  }
  throw new TypeError(
    `Cannot use --to "${
      text.replace(/\/\/[^@/]*@/, "//***@")
    }": expected duckdb:PATH, postgres://..., csv:DIR or parquet:DIR`,
  );
}

/**
 * Parts of a DuckDB rebuild's staging files (`<db>.cdc-stage.csv.<part>`,
 * keys split by a hash): a flush applies a few parts at a time, so that
 * DuckDB hashes a bounded number of keys (1M keys at once took 30-40 MB more).
 */
export const STAGE_PARTS = 16;

/** Files the CLI writes for a spec (for the binary's permission flags). */
export function targetPaths(spec: TargetSpec): { read: string[]; write: string[] } {
  switch (spec.kind) {
    case "duckdb":
      // DuckDB itself (native code) writes PATH.wal and PATH.tmp/; Deno writes the stage files.
      return {
        read: [spec.path],
        write: [
          `${spec.path}.cdc-stage.csv`,
          ...Array.from({ length: STAGE_PARTS }, (_v, i) => `${spec.path}.cdc-stage.csv.${i}`),
        ],
      };
    case "csv":
    case "parquet":
      return { read: [spec.dir], write: [spec.dir] };
    default:
      return { read: [], write: [] };
  }
}
