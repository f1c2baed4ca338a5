/**
 * Waiting for events with deadlines. Tests never sleep for a fixed time: they wait for the thing
 * they expect and fail with a clear message when it does not come in time.
 */

import type { EventEmitter } from 'node:events';
import { once } from 'node:events';

export interface WaitForOptions {
  timeoutMs: number;
  /** Pause between polls; 10 ms by default. */
  intervalMs?: number;
  message: string;
}

/**
 * Calls `fn` until it returns (or resolves to) a truthy value and returns that value. A throwing
 * `fn` counts as "not yet"; its last error becomes the timeout error's `cause`.
 */
export async function waitFor<T>(fn: () => T | Promise<T>, opts: WaitForOptions): Promise<T> {
  const intervalMs = opts.intervalMs ?? 10;
  const deadline = Date.now() + opts.timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await fn();
      if (value) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      throw new Error(
        `waitFor timed out after ${opts.timeoutMs} ms: ${opts.message}`,
        lastError === undefined ? undefined : { cause: lastError },
      );
    }
    await new Promise<void>((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** Resolves with the event's arguments, or rejects after `timeoutMs` (or on the emitter's 'error'). */
export async function onceWithDeadline(
  emitter: EventEmitter,
  event: string | symbol,
  timeoutMs: number,
): Promise<unknown[]> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  try {
    return await once(emitter, event, { signal: ac.signal });
  } catch (err) {
    if (ac.signal.aborted) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for '${String(event)}'`);
    }
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** `promise`, or a rejection with `message` if it has not settled within `ms`. */
export async function withDeadline<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${message}`)), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}
