import assert from "node:assert/strict";
import { parse } from "yaml";
import {
  renderSchemaYml,
  renderWithLibrary,
  type TableSchema,
} from "../../src/write/schema_yml.ts";

const ORDERS: TableSchema = {
  schema: "public",
  table: "orders",
  relationOid: 16384,
  validFromLsn: "0/16B3748",
  replicaIdentity: "default",
  primaryKey: ["id"],
  columns: [
    { name: "id", type: "integer", typeOid: 23, typeModifier: -1, nullable: false, isKey: true },
    {
      name: "note",
      type: "character varying(20)",
      typeOid: 1043,
      typeModifier: 24,
      nullable: true,
      isKey: false,
    },
  ],
};

/** What a consumer reads back from the YAML, in our TableSchema shape. */
function readBack(yml: string): TableSchema {
  // deno-lint-ignore no-explicit-any
  const doc = parse(yml) as any;
  return {
    schema: doc.schema,
    table: doc.table,
    relationOid: doc.relation_oid,
    validFromLsn: doc.valid_from_lsn,
    replicaIdentity: doc.replica_identity,
    primaryKey: doc.primary_key,
    // deno-lint-ignore no-explicit-any
    columns: doc.columns.map((c: any) => ({
      name: c.name,
      type: c.type,
      typeOid: c.type_oid,
      typeModifier: c.type_modifier,
      nullable: c.nullable,
      isKey: c.is_key,
    })),
  };
}

Deno.test("renderSchemaYml renders fixed keys in a fixed order", () => {
  assert.equal(
    renderSchemaYml(ORDERS),
    `schema: "public"
table: "orders"
relation_oid: 16384
valid_from_lsn: "0/16B3748"
replica_identity: "default"
primary_key:
  - "id"
columns:
  - name: "id"
    type: "integer"
    type_oid: 23
    type_modifier: -1
    nullable: false
    is_key: true
  - name: "note"
    type: "character varying(20)"
    type_oid: 1043
    type_modifier: 24
    nullable: true
    is_key: false
`,
  );
});

Deno.test("renderSchemaYml is deterministic", () => {
  assert.equal(renderSchemaYml(ORDERS), renderSchemaYml(structuredClone(ORDERS)));
});

Deno.test("renderSchemaYml renders a table without primary key or columns", () => {
  const schema: TableSchema = {
    ...ORDERS,
    replicaIdentity: "full",
    primaryKey: [],
    columns: [],
  };
  assert.match(renderSchemaYml(schema), /^primary_key: \[\]$/m);
  assert.deepEqual(readBack(renderSchemaYml(schema)), schema);
});

Deno.test("renderSchemaYml quotes names so that any characters read back exactly", () => {
  const names = [
    "yes",
    "null",
    "123",
    "0x1F",
    "~",
    "- dash",
    "key: value",
    "# not a comment",
    "'single'",
    '"double"',
    " padded ",
    "new\nline",
    "tab\there",
    "back\\slash",
    "ünïcödé 😀 日本語",
    "ctl\u0001\u007f\u0085\u009f",
    "sep\u2028\u2029",
    "bom\ufeff",
    "&anchor",
    "*alias",
    "!tag",
    "{a: 1}",
    "[1, 2]",
    "x".repeat(300),
  ];
  const schema: TableSchema = {
    schema: "we: ird # schema",
    table: 'ta"ble\n',
    relationOid: 4_294_967_295,
    validFromLsn: "FFFFFFFF/FFFFFFFF",
    replicaIdentity: "index",
    primaryKey: names.slice(0, 3),
    columns: names.map((name, i) => ({
      name,
      type: i % 2 ? `"My Type"` : "timestamp(3) with time zone[]",
      typeOid: 16_000 + i,
      typeModifier: i - 1,
      nullable: i % 2 === 0,
      isKey: i < 3,
    })),
  };
  const yml = renderSchemaYml(schema);
  assert.deepEqual(readBack(yml), schema);
  // Only YAML-printable characters appear raw.
  // deno-lint-ignore no-control-regex
  assert.doesNotMatch(yml, /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\ufeff]/);
  // No line folding of long names.
  assert.ok(yml.includes(`"${"x".repeat(300)}"`));
});

Deno.test("renderSchemaYml() writes what the YAML library writes, for any names", () => {
  // Its fast path (plain ASCII strings) must not change a byte of the output.
  let seed = 0x5eed;
  const random = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x80000000;
  };
  const alphabet = ["a", "Z", "0", " ", "_", ".", "-", "'", "#", ":", "[", "{", "!", "&", "*", "%"];
  const rare = ['"', "\\", "\n", "é", "☃", "\u0001", "\u2028", "\ud83d\ude00", "\ud800"];
  const text = () => {
    const n = Math.floor(random() * 12);
    let out = "";
    for (let i = 0; i < n; i++) {
      out += random() < 0.05
        ? rare[Math.floor(random() * rare.length)]
        : alphabet[Math.floor(random() * alphabet.length)];
    }
    return out;
  };
  let plain = 0;
  for (let i = 0; i < 2000; i++) {
    const columns = Array.from({ length: Math.floor(random() * 4) }, (_, k) => ({
      name: text(),
      type: random() < 0.5 ? "integer" : text(),
      typeOid: Math.floor(random() * 100000),
      typeModifier: random() < 0.5 ? -1 : Math.floor(random() * 1000),
      nullable: random() < 0.5,
      isKey: random() < 0.5,
      ...(random() < 0.5 ? { attnum: k + 1 } : {}),
      ...(random() < 0.3 ? { default: text() } : {}),
    }));
    const schema: TableSchema = {
      schema: text(),
      table: text(),
      relationOid: Math.floor(random() * 1e9),
      ...(random() < 0.2 ? { previousName: text() } : {}),
      validFromLsn: "0/16B3748",
      replicaIdentity: (["default", "nothing", "full", "index"] as const)[Math.floor(random() * 4)],
      primaryKey: columns.filter(() => random() < 0.4).map((c) => c.name),
      columns,
    };
    const fast = renderSchemaYml(schema);
    assert.equal(fast, renderWithLibrary(schema), JSON.stringify(schema));
    if (!/\\/.test(fast)) plain++;
  }
  assert.ok(plain > 500, `only ${plain} schemas took the plain path`);
});
