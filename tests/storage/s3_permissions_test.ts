import assert from "node:assert/strict";
import { permissionFlagsFor } from "../../scripts/permissions.ts";

function flag(flags: string[], name: string): string[] {
  return flags.find((f) => f.startsWith(`--${name}=`))?.slice(name.length + 3).split(",") ?? [];
}

Deno.test("permissionFlagsFor() grants an s3:// data dir its endpoint, the credential chain and the spool only", () => {
  const aws = permissionFlagsFor(
    ["stream", "--data-dir", "s3://acme/shop", "--spool-dir", "/var/spool/cdc"],
    { HOME: "/home/cdc", AWS_REGION: "eu-west-1", CDC_SOURCE_URL: "postgres://db:5432/x" },
  );
  const net = flag(aws, "allow-net");
  for (
    const host of [
      "db:5432",
      "acme.s3.eu-west-1.amazonaws.com:443",
      "s3.eu-west-1.amazonaws.com:443",
      "sts.eu-west-1.amazonaws.com:443",
      "169.254.169.254:80",
    ]
  ) assert(net.includes(host), host);
  assert.deepEqual(flag(aws, "allow-write"), ["/var/spool/cdc"]);
  const read = flag(aws, "allow-read");
  assert(read.includes("/home/cdc/.aws/credentials") && read.includes("/home/cdc/.aws/config"));
  assert(!read.some((p) => p.includes("s3:")), "no path made of the URL");
  assert(flag(aws, "allow-env").includes("AWS_*"));
  assert.deepEqual(flag(aws, "allow-sys"), ["osRelease"]);

  const minio = permissionFlagsFor(["stream"], {
    CDC_DATA_DIR: "s3://cdc/x",
    CDC_S3_ENDPOINT: "http://minio.internal:9000",
    AWS_WEB_IDENTITY_TOKEN_FILE: "/var/run/secrets/token",
  });
  assert(flag(minio, "allow-net").includes("minio.internal:9000"));
  assert(!flag(minio, "allow-net").some((h) => h.startsWith("s3.")), "no AWS S3 host");
  assert(flag(minio, "allow-read").includes("/var/run/secrets/token"));

  // A local data dir gets nothing of this.
  const local = permissionFlagsFor(["stream", "--data-dir", "/data"], {});
  assert(!local.some((f) => f.startsWith("--allow-sys")));
  assert(!flag(local, "allow-net").some((h) => h.includes("amazonaws")));
});
