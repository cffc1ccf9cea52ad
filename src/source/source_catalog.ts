/**
 * Questions about the source database's catalog: which tables the
 * publication holds. Registry questions go to {@linkcode Registry}.
 */

// @ts-types="npm:@types/pg@8.23.1"
import type pg from "pg";

/** A table in the publication, by name and relation OID. */
export interface PublishedTable {
  schema: string;
  table: string;
  oid: number;
}

/** Reads the source catalog. */
export class SourceCatalog {
  #client: pg.Client;

  constructor(client: pg.Client) {
    this.#client = client;
  }

  /** The publication's user tables (registry tables left out). */
  async publishedTables(publication: string): Promise<PublishedTable[]> {
    const res = await this.#client.query(
      `SELECT p.schemaname AS schema, p.tablename AS table,
              to_regclass(format('%I.%I', p.schemaname, p.tablename))::oid::int8 AS oid
       FROM pg_publication_tables p
       WHERE p.pubname = $1 AND p.schemaname <> 'cdc_registry'`,
      [publication],
    );
    return res.rows.flatMap((r) =>
      r.oid === null ? [] : [{ schema: r.schema, table: r.table, oid: Number(r.oid) }]
    );
  }
}
