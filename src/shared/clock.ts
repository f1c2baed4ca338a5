/**
 * The one clock everything that waits goes through: heartbeats, backoff, grace periods, the DNS
 * janitor. Its shape is a superset of XState's `Clock`, so the same object is handed to
 * `createActor(machine, { clock })`. Tests use `ManualClock` and advance hours in one call.
 */
export type TimerHandle = unknown;

export interface Clock {
  /** Epoch milliseconds. */
  now(): number;
  setTimeout(fn: () => void, delayMs: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, delayMs) => {
    const t = setTimeout(fn, delayMs);
    // A pending timer must never keep a stopping process alive; owners clear their own timers.
    t.unref();
    return t;
  },
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

interface ManualTimer {
  id: number;
  dueAt: number;
  fn: () => void;
}

/** A clock that only moves when told to. Timers fire in due order, ties in creation order. */
export class ManualClock implements Clock {
  #now: number;
  #nextId = 1;
  #timers = new Map<number, ManualTimer>();

  constructor(startMs = Date.UTC(2026, 0, 1)) {
    this.#now = startMs;
  }

  now(): number {
    return this.#now;
  }

  setTimeout(fn: () => void, delayMs: number): TimerHandle {
    const id = this.#nextId++;
    this.#timers.set(id, { id, dueAt: this.#now + Math.max(0, delayMs), fn });
    return id;
  }

  clearTimeout(handle: TimerHandle): void {
    this.#timers.delete(handle as number);
  }

  /** Timers not yet fired or cleared; a leak check for tests. */
  get pendingTimers(): number {
    return this.#timers.size;
  }

  /** Moves time forward by `ms`, firing every timer that falls due, including ones set while firing. */
  advance(ms: number): void {
    const target = this.#now + ms;
    for (;;) {
      let next: ManualTimer | undefined;
      for (const t of this.#timers.values()) {
        if (
          t.dueAt <= target &&
          (!next || t.dueAt < next.dueAt || (t.dueAt === next.dueAt && t.id < next.id))
        ) {
          next = t;
        }
      }
      if (!next) break;
      this.#timers.delete(next.id);
      this.#now = Math.max(this.#now, next.dueAt);
      next.fn();
    }
    this.#now = target;
  }
}

/**
 * An AbortSignal that aborts after `delayMs` on the given clock (AbortSignal.timeout only knows real
 * time). `clear()` cancels the timer once the signal is no longer needed, so none is left pending.
 */
export function clockTimeout(clock: Clock, delayMs: number): { signal: AbortSignal; clear(): void } {
  const controller = new AbortController();
  const handle = clock.setTimeout(
    () => controller.abort(new Error(`timed out after ${delayMs} ms`)),
    delayMs,
  );
  return { signal: controller.signal, clear: () => clock.clearTimeout(handle) };
}
