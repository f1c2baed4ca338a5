/** Parsing of the CLI's option values, with errors that say what was expected. */
import { WarrenError } from '../shared/errors.ts';

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** `30s`, `1m30s`, `500ms`, `2h`; a bare number is seconds (as cloudflared's flags). */
export function parseDurationMs(text: string, flag: string): number {
  const t = text.trim();
  if (/^\d+(\.\d+)?$/.test(t)) return Math.round(Number(t) * 1000);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  let total = 0;
  let matched = 0;
  for (let m = re.exec(t); m; m = re.exec(t)) {
    total += Number(m[1]) * UNITS[m[2]!]!;
    matched = re.lastIndex;
  }
  if (matched !== t.length || t.length === 0) {
    throw new WarrenError('bad_config', `${flag}: "${text}" is not a duration; use e.g. 30s, 1m or 500ms`);
  }
  return Math.round(total);
}

/** `host:port`, `[::1]:port` or `:port` (loopback). */
export function parseHostPort(text: string, flag: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || port > 65535) {
    throw new WarrenError('bad_config', `${flag}: "${text}" is not host:port; use e.g. 127.0.0.1:8080`);
  }
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

export function parsePositiveInt(text: string, flag: string, max = 1_000_000): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > max) {
    throw new WarrenError('bad_config', `${flag}: "${text}" must be a whole number from 1 to ${max}`);
  }
  return n;
}

export function parseOriginUrl(text: string, flag: string): URL {
  let url: URL;
  try {
    url = new URL(/^[a-z]+:\/\//i.test(text) ? text : `http://${text}`);
  } catch {
    throw new WarrenError('bad_config', `${flag}: "${text}" is not a URL; use e.g. http://localhost:3000`);
  }
  if (!['http:', 'https:', 'ws:', 'wss:'].includes(url.protocol)) {
    throw new WarrenError(
      'bad_config',
      `${flag}: only http, https, ws and wss origins are supported, not ${url.protocol}`,
    );
  }
  return url;
}

/** `24h-48h`, `2s-4s`: a window of durations, min ≤ max. */
export function parseDurationRange(text: string, flag: string): { minMs: number; maxMs: number } {
  const parts = text.split('-');
  if (parts.length !== 2) {
    throw new WarrenError('bad_config', `${flag}: "${text}" is not a range; use e.g. 24h-48h`);
  }
  const minMs = parseDurationMs(parts[0]!, flag);
  const maxMs = parseDurationMs(parts[1]!, flag);
  if (minMs > maxMs)
    throw new WarrenError('bad_config', `${flag}: the first duration must not exceed the second`);
  return { minMs, maxMs };
}

/**
 * A point in time for a filter: an ISO 8601 date (`2026-01-02`, `2026-01-02T10:00:00Z`), epoch
 * milliseconds (10 digits or more), or a duration meaning that long before `now` (`90m`, `2h`).
 */
export function parseTimeFlag(text: string, flag: string, now: number): number {
  const t = text.trim();
  if (/^\d{10,}$/.test(t)) return Number(t);
  if (/^\d{4}-\d{2}-\d{2}/.test(t)) {
    const ms = Date.parse(t);
    if (Number.isFinite(ms)) return ms;
  } else if (/^[\d.]+(ms|s|m|h)/.test(t)) {
    return now - parseDurationMs(t, flag);
  }
  throw new WarrenError(
    'bad_config',
    `${flag}: "${text}" is not a time; use an ISO date (2026-01-02T10:00:00Z), epoch milliseconds, or a duration ago (90m, 2h)`,
  );
}
