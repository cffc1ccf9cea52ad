import assert from "node:assert/strict";
import { CsvChunkParser, parseCsv } from "../../src/replay/csv_reader.ts";

Deno.test("CsvChunkParser() gives the rows of parseCsv() at every split point", () => {
  const text = 'h1,h2,h3\n1,"a,b",\n2,"",""""\n3,"multi\nline\r\nvalue","x"\r\n4,,"end"';
  const whole = parseCsv(text);
  for (let cut = 0; cut <= text.length; cut++) {
    for (const step of [1, 3, text.length]) {
      const p = new CsvChunkParser();
      const rows = [...p.push(text.slice(0, cut))];
      for (let at = cut; at < text.length; at += step) {
        rows.push(...p.push(text.slice(at, at + step)));
      }
      rows.push(...p.end());
      assert.deepEqual(rows, whole, `cut ${cut} step ${step}`);
    }
  }
  // NULL (unquoted empty) and the empty string ("") stay apart.
  assert.deepEqual(whole[2], ["2", "", '"']);
  assert.deepEqual(whole[1], ["1", "a,b", null]);
});

Deno.test("CsvChunkParser() rejects a stray character after a closing quote", () => {
  const p = new CsvChunkParser();
  assert.throws(() => p.push('"a"b,c\n'), SyntaxError);
});
