/**
 * Which S3 failures are worth a retry, and how long to wait. 5xx answers,
 * 429/SlowDown, timeouts and connections that were refused, reset or cut
 * short pass by themselves; access denied, a missing bucket or a bad request
 * do not, and retrying them would only hide them.
 *
 * @module
 */

/** System error codes of a connection that failed or broke. */
const NETWORK_CODES = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EAI_AGAIN",
  "ENETUNREACH",
  "EHOSTUNREACH",
  "ERR_STREAM_PREMATURE_CLOSE",
  "UND_ERR_SOCKET",
]);

/** Error names the SDK and Node use for timeouts and throttling. */
const TRANSIENT_NAMES = new Set([
  "TimeoutError",
  "RequestTimeout",
  "RequestTimeoutException",
  "SlowDown",
  "Throttling",
  "ThrottlingException",
  "InternalError",
  "ServiceUnavailable",
  "AbortError",
]);

interface SdkLikeError {
  name?: unknown;
  code?: unknown;
  message?: unknown;
  cause?: unknown;
  $metadata?: { httpStatusCode?: number };
}

/** The HTTP status of a failed S3 call, when a server answered. */
export function httpStatus(error: unknown): number | undefined {
  return (error as SdkLikeError | null)?.$metadata?.httpStatusCode;
}

/** Whether a retry of the failed S3 call can succeed without anyone acting. */
export function isTransientS3Error(error: unknown): boolean {
  const seen = new Set<unknown>();
  for (let e = error as SdkLikeError | undefined; e && !seen.has(e); e = e.cause as SdkLikeError) {
    seen.add(e);
    if (typeof e !== "object") break;
    // Deno's permission errors never pass by themselves.
    if (e.name === "NotCapable" || e.name === "PermissionDenied") return false;
    const status = e.$metadata?.httpStatusCode;
    if (status !== undefined && status !== 200) return status >= 500 || status === 429;
    if (typeof e.code === "string" && NETWORK_CODES.has(e.code)) return true;
    if (typeof e.name === "string" && TRANSIENT_NAMES.has(e.name)) return true;
    const message = typeof e.message === "string" ? e.message : "";
    if (
      /socket hang up|aborted|premature close|ECONNRESET|ECONNREFUSED|timed? ?out/i.test(message)
    ) {
      return true;
    }
    // A 200 answer whose body was cut short or garbled: the SDK cannot parse it.
    if (status === 200) return true;
  }
  return false;
}

/** Backoff before retry number `attempt` (0-based): 200 ms doubling up to `capMs`, jittered. */
export function s3RetryDelayMs(attempt: number, capMs = 30_000): number {
  const base = Math.min(capMs, 200 * 2 ** Math.min(attempt, 20));
  return Math.round(base / 2 + Math.random() * base / 2);
}
