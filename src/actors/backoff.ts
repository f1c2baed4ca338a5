/**
 * Reconnect backoff: exponential with full jitter (the AWS "Exponential Backoff And Jitter" scheme that
 * cloudflared's `retry` package also uses). Pure: the random draw is injected, so a seeded source
 * replays the same delays.
 */
export interface BackoffPolicy {
  /** Ceiling of the first retry's delay; each further consecutive failure doubles the ceiling. */
  baseMs: number;
  /** The ceiling never grows past this. */
  capMs: number;
  /** A connection that stays up this long resets the consecutive-failure count. */
  healthyAfterMs: number;
  /**
   * Dials refused outright (TCP `ECONNREFUSED`: nothing listens, as while an edge restarts) that are
   * retried within `baseMs` without raising the ceiling, in a row; past that, refusals back off like
   * any other failure. A restarting edge is usually back within seconds, and escalating while it is
   * down would make the agent wait up to `capMs` after it is up again. Default 20
   * (`DEFAULT_FLAT_RETRY_LIMIT`), about 10 s of redials at the default base; 0 turns the rule off.
   */
  flatRetryLimit?: number;
}

export const DEFAULT_FLAT_RETRY_LIMIT = 20;

/**
 * The agent's defaults (DESIGN §3 HA): first retry within 1 s, ceilings 1, 2, 4 … 32 s, and a
 * connection that has stayed up for 10 s counts as healthy, so the next loss starts again at 1 s.
 * `flatRetryLimit` is left out, so it takes its default: up to 20 refused dials in a row are retried
 * within 1 s each.
 */
export const defaultBackoff: Readonly<BackoffPolicy> = Object.freeze({
  baseMs: 1000,
  capMs: 32_000,
  healthyAfterMs: 10_000,
});

/**
 * 2^1023 is the largest finite power of two; past it `base * 2 ** attempt` is Infinity (or NaN when
 * `base` is 0). Any exponent that large is far beyond any cap, so clamping changes nothing else.
 */
const MAX_EXPONENT = 1023;

/**
 * The delay before the next retry: `random() * min(capMs, baseMs * 2^attempt)`, floored to whole ms.
 *
 * @param attempt 0-based index of this retry within the current run of consecutive failures: 0 for the
 *   retry after the first failure (ceiling `baseMs`), 1 after the second (ceiling `2 * baseMs`) and so on.
 *   Negative values and NaN count as 0; huge values and Infinity are safe (the ceiling is then `capMs`).
 * @param random a draw in [0, 1), like `Math.random`; values outside are clamped, NaN counts as 0.
 */
export function backoffDelayMs(attempt: number, policy: BackoffPolicy, random: () => number): number {
  const baseMs = Math.max(0, policy.baseMs);
  const capMs = Math.max(0, policy.capMs);
  const exponent = Number.isNaN(attempt) ? 0 : Math.min(Math.max(0, Math.floor(attempt)), MAX_EXPONENT);
  const ceilingMs = Math.min(capMs, baseMs * 2 ** exponent);
  const r = random();
  const draw = r > 0 ? Math.min(r, 1) : 0; // also maps NaN to 0
  return Math.floor(draw * ceilingMs);
}
