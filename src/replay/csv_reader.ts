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

/**
 * A streaming row as read for replay: the metadata columns decoded, the
 * table's values kept as their CSV text (no line break), decoded only when
 * needed ({@linkcode csvFields}). Most changes pass to a target as that text.
 */
export interface ChangeLine {
  meta: CsvField[];
  values: string;
}

/**
 * Decodes the first `count` fields of one row's CSV text (no line break);
 * fields beyond the text are NULL.
 */
export function csvFields(text: string, count: number): CsvField[] {
  const out: CsvField[] = [];
  const n = text.length;
  let i = 0;
  while (out.length < count) {
    if (i > n) {
      out.push(null);
      continue;
    }
    if (text.charCodeAt(i) === 34) {
      let value = "";
      let k = i + 1;
      while (true) {
        const q = text.indexOf('"', k);
        if (q < 0) throw new SyntaxError(`Cannot parse CSV: unclosed quote at offset ${i}`);
        value += text.slice(k, q);
        if (text.charCodeAt(q + 1) === 34) {
          value += '"';
          k = q + 2;
        } else {
          k = q + 1;
          break;
        }
      }
      if (k < n && text.charCodeAt(k) !== 44) {
        throw new SyntaxError(`Cannot parse CSV: unexpected character after quote at offset ${k}`);
      }
      out.push(value);
      i = k + 1;
    } else {
      let j = text.indexOf(",", i);
      if (j < 0) j = n;
      out.push(j === i ? null : text.slice(i, j));
      i = j + 1;
    }
  }
  return out;
}

/**
 * Parses streaming rows that arrive in pieces into {@linkcode ChangeLine}s
 * (`meta` metadata columns first); keeps the unfinished tail for the next piece.
 */
export class ChangeLineParser {
  readonly #meta: number;
  #pending = "";
  #retryAt = 0;

  constructor(meta: number) {
    this.#meta = meta;
  }

  /** Adds text; returns the complete rows it finished. */
  push(text: string): ChangeLine[] {
    this.#pending += text;
    if (this.#pending.length < this.#retryAt) return [];
    const { lines, consumed } = parseLinesPrefix(this.#pending, this.#meta);
    this.#pending = this.#pending.slice(consumed);
    this.#retryAt = lines.length === 0 ? this.#pending.length * 2 : 0;
    return lines;
  }

  /** Ends the input; returns the last row. Throws SyntaxError on a broken tail. */
  end(): ChangeLine[] {
    const tail = this.#pending;
    this.#pending = "";
    // Complete rows held back by the retry threshold, then a last row without a line break.
    const { lines, consumed } = parseLinesPrefix(tail, this.#meta);
    const rest = tail.slice(consumed);
    if (rest.length === 0) return lines;
    const last = parseLinesPrefix(rest + "\n", this.#meta);
    if (last.consumed < rest.length + 1) throw new SyntaxError("Cannot parse CSV: unclosed quote");
    return [...lines, ...last.lines];
  }
}

/**
 * The complete rows at the start of `text` as {@linkcode ChangeLine}s;
 * `consumed` is where the first incomplete row starts.
 */
function parseLinesPrefix(text: string, meta: number): { lines: ChangeLine[]; consumed: number } {
  const lines: ChangeLine[] = [];
  const n = text.length;
  let start = 0;
  // The next quote at or after the scan position (-1: none left).
  let quoteAt = text.indexOf('"');
  rows: while (start < n) {
    let i = start;
    const fields: CsvField[] = [];
    let rowEnded = false;
    while (fields.length < meta) {
      let value: CsvField;
      if (text.charCodeAt(i) === 34) {
        let out = "";
        let closed = false;
        let k = i + 1;
        while (!closed) {
          const q = text.indexOf('"', k);
          if (q < 0 || q + 1 >= n) break rows; // the quote may continue in the next piece
          out += text.slice(k, q);
          if (text.charCodeAt(q + 1) === 34) {
            out += '"';
            k = q + 2;
          } else {
            k = q + 1;
            closed = true;
          }
        }
        i = k;
        value = out;
        const c = text.charCodeAt(i);
        if (c !== 44 && c !== 10 && c !== 13) {
          throw new SyntaxError(
            `Cannot parse CSV: unexpected character after quote at offset ${i}`,
          );
        }
      } else {
        let j = i;
        while (j < n) {
          const c = text.charCodeAt(j);
          if (c === 44 || c === 10 || c === 13) break;
          j++;
        }
        if (j >= n) break rows;
        value = j === i ? null : text.slice(i, j);
        i = j;
      }
      fields.push(value);
      const c = text.charCodeAt(i);
      if (c === 44) {
        i++;
        continue;
      }
      // A line break: a row without table columns.
      if (c === 13) {
        if (i + 1 >= n) break rows;
        i += text.charCodeAt(i + 1) === 10 ? 2 : 1;
      } else i++;
      rowEnded = true;
      break;
    }
    if (rowEnded) {
      lines.push({ meta: fields, values: "" });
      start = i;
      continue;
    }
    // The table's values: up to the line break, which a quoted value may contain.
    const nl = text.indexOf("\n", i);
    if (nl < 0) break;
    if (quoteAt !== -1 && quoteAt < i) quoteAt = text.indexOf('"', i);
    let end = nl;
    if (quoteAt !== -1 && quoteAt < nl) {
      // Walk the fields: a quoted one ends at its closing quote.
      let k = i;
      while (true) {
        if (text.charCodeAt(k) === 34) {
          // The closing quote: the first one not doubled.
          let q = text.indexOf('"', k + 1);
          while (q >= 0 && q + 1 < n && text.charCodeAt(q + 1) === 34) q = text.indexOf('"', q + 2);
          if (q < 0 || q + 1 >= n) break rows;
          k = q + 1;
          const c = text.charCodeAt(k);
          if (c === 44) {
            k++;
            continue;
          }
          if (c === 10) {
            end = k;
            break;
          }
          if (c === 13 && text.charCodeAt(k + 1) === 10) {
            end = k + 1;
            break;
          }
          if (c === 13) break rows;
          throw new SyntaxError(
            `Cannot parse CSV: unexpected character after quote at offset ${k}`,
          );
        }
        const comma = text.indexOf(",", k);
        const lf = text.indexOf("\n", k);
        if (lf < 0) break rows;
        if (comma >= 0 && comma < lf) {
          k = comma + 1;
          continue;
        }
        end = lf;
        break;
      }
      quoteAt = text.indexOf('"', end);
    }
    // A CRLF line break leaves its CR out of the values.
    const last = end > i && text.charCodeAt(end - 1) === 13 ? end - 1 : end;
    lines.push({ meta: fields, values: text.slice(i, last) });
    start = end + 1;
  }
  return { lines, consumed: start };
}
