/**
 * Reads PostgreSQL-dialect CSV (COPY ... FORMAT csv) back into fields,
 * keeping NULL (an unquoted empty field) apart from the empty string (`""`).
 */

/** One parsed field: null for SQL NULL. */
export type CsvField = string | null;

/**
 * Parses complete CSV text into rows. Throws SyntaxError on an unclosed
 * quote or a stray character after a closing quote.
 */
export function parseCsv(text: string): CsvField[][] {
  const rows: CsvField[][] = [];
  let row: CsvField[] = [];
  let i = 0;
  const n = text.length;
  while (i < n) {
    let value: CsvField;
    if (text[i] === '"') {
      let out = "";
      i++;
      while (true) {
        const q = text.indexOf('"', i);
        if (q < 0) throw new SyntaxError(`Cannot parse CSV: unclosed quote at offset ${i}`);
        out += text.slice(i, q);
        if (text[q + 1] === '"') {
          out += '"';
          i = q + 2;
        } else {
          i = q + 1;
          break;
        }
      }
      value = out;
      if (i < n && text[i] !== "," && text[i] !== "\n" && text[i] !== "\r") {
        throw new SyntaxError(`Cannot parse CSV: unexpected character after quote at offset ${i}`);
      }
    } else {
      let j = i;
      while (j < n && text[j] !== "," && text[j] !== "\n" && text[j] !== "\r") j++;
      value = j === i ? null : text.slice(i, j);
      i = j;
    }
    row.push(value);
    if (i >= n) {
      rows.push(row);
      row = [];
      break;
    }
    const c = text[i];
    if (c === ",") {
      i++;
      if (i >= n) {
        row.push(null);
        rows.push(row);
        row = [];
      }
    } else {
      i += c === "\r" && text[i + 1] === "\n" ? 2 : 1;
      rows.push(row);
      row = [];
    }
  }
  return rows;
}
