/** Counting CSV records in a stream of bytes. */

/**
 * Counts CSV records in a byte stream, quote-aware: a newline inside a
 * quoted field does not end a record. Doubled quotes toggle twice, so they
 * need no special case.
 */
export class CsvRecordCounter {
  records = 0;
  #inQuote = false;
  #pending = false;

  /** Feeds the next chunk. */
  push(chunk: Uint8Array): void {
    let inQuote = this.#inQuote;
    let records = this.records;
    let pending = this.#pending;
    const n = chunk.length;
    for (let i = 0; i < n; i++) {
      const b = chunk[i];
      if (b === 0x22) inQuote = !inQuote;
      else if (b === 0x0a && !inQuote) records++;
    }
    if (n > 0) pending = chunk[n - 1] !== 0x0a || inQuote;
    this.#inQuote = inQuote;
    this.records = records;
    this.#pending = pending;
  }

  /** Ends the stream: the record count, counting a last line without `\n`. */
  finish(): { records: number; unclosedQuote: boolean } {
    return { records: this.records + (this.#pending ? 1 : 0), unclosedQuote: this.#inQuote };
  }
}
