/**
 * The mark of `verify --since`: a `file_log.id` (as printed by the previous
 * run's `next: --since N`) or an ISO 8601 time with a zone (`Z` or an offset),
 * or a date (midnight UTC).
 */

/** A parsed `--since` value. */
export type SinceMark =
  | { kind: "id"; id: number }
  | { kind: "time"; time: Date; text: string };

const DATE = /^(\d{4})-(\d{2})-(\d{2})$/;
const DATE_TIME =
  /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})$/i;

/** Parses a `--since` value; throws a one-line `TypeError` for anything else. */
export function parseSinceMark(text: string): SinceMark {
  const bad = (why: string) =>
    new TypeError(
      `Cannot use --since "${text}": ${why}; expected a file id (as printed after "next: --since") or an ISO time with a zone, e.g. 2026-11-29T02:00:00Z`,
    );
  if (/^\d+$/.test(text)) {
    const id = Number(text);
    if (!Number.isSafeInteger(id)) throw bad("the id is too large");
    return { kind: "id", id };
  }
  const date = DATE.exec(text);
  const dt = date ? null : DATE_TIME.exec(text);
  if (!date && !dt) {
    if (/^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/.test(text)) {
      throw bad("the time has no zone (add Z or an offset such as +02:00)");
    }
    throw bad("not a file id or an ISO time");
  }
  const m = (date ?? dt)!;
  const [year, month, day] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const [hour, minute, second] = dt ? [Number(m[4]), Number(m[5]), Number(m[6] ?? 0)] : [0, 0, 0];
  // Date would roll 2026-02-30 over to March: check the fields themselves.
  const days = new Date(Date.UTC(year, month, 0)).getUTCDate();
  if (month < 1 || month > 12 || day < 1 || day > days || hour > 23 || minute > 59 || second > 59) {
    throw bad("no such date or time");
  }
  const iso = text.replace(" ", "T").toUpperCase().replace(/([+-]\d{2})(\d{2})$/, "$1:$2");
  const time = new Date(date ? `${text}T00:00:00Z` : iso);
  if (Number.isNaN(time.getTime())) throw bad("not a valid time");
  return { kind: "time", time, text };
}
