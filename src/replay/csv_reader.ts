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

/**
 * Parses CSV text that arrives in pieces: {@linkcode push} returns the rows
 * completed so far and keeps the unfinished tail for the next piece.
 */
export class CsvChunkParser {
  #pending = "";
  /** Do not retry a tail shorter than this (a huge value spanning many pieces). */
  #retryAt = 0;

  /** Adds text; returns the complete rows it finished. */
  push(text: string): CsvField[][] {
    this.#pending += text;
    if (this.#pending.length < this.#retryAt) return [];
    const { rows, consumed } = parseCsvPrefix(this.#pending);
    this.#pending = this.#pending.slice(consumed);
    this.#retryAt = rows.length === 0 ? this.#pending.length * 2 : 0;
    return rows;
  }

  /** Ends the input; returns the last rows. Throws SyntaxError on a broken tail. */
  end(): CsvField[][] {
    const rows = this.#pending.length > 0 ? parseCsv(this.#pending) : [];
    this.#pending = "";
    return rows;
  }
}

/**
 * Parses the complete records at the start of `text` (each ending in a line
 * break); `consumed` is where the first incomplete record starts.
 */
function parseCsvPrefix(text: string): { rows: CsvField[][]; consumed: number } {
  const rows: CsvField[][] = [];
  const n = text.length;
  let start = 0;
  let i = 0;
  let row: CsvField[] = [];
  while (i < n) {
    let value: CsvField;
    if (text.charCodeAt(i) === 34) {
      let out = "";
      let closed = false;
      let k = i + 1;
      while (!closed) {
        const q = text.indexOf('"', k);
        if (q < 0 || q + 1 >= n) break; // the quote may continue in the next piece
        out += text.slice(k, q);
        if (text.charCodeAt(q + 1) === 34) {
          out += '"';
          k = q + 2;
        } else {
          k = q + 1;
          closed = true;
        }
      }
      if (!closed) break;
      i = k;
      value = out;
      const c = text.charCodeAt(i);
      if (c !== 44 && c !== 10 && c !== 13) {
        throw new SyntaxError(`Cannot parse CSV: unexpected character after quote at offset ${i}`);
      }
    } else {
      let j = i;
      while (j < n) {
        const c = text.charCodeAt(j);
        if (c === 44 || c === 10 || c === 13) break;
        j++;
      }
      if (j >= n) break;
      value = j === i ? null : text.slice(i, j);
      i = j;
    }
    row.push(value);
    const c = text.charCodeAt(i);
    if (c === 44) {
      i++;
      continue;
    }
    if (c === 13) {
      if (i + 1 >= n) break;
      i += text.charCodeAt(i + 1) === 10 ? 2 : 1;
    } else i++;
    rows.push(row);
    row = [];
    start = i;
  }
  return { rows, consumed: start };
}
