/**
 * Visitor hold: a request for a tunnel that has no live connection right now, but had one a moment
 * ago, waits a little for a connection to register instead of getting 530 at once. An agent that
 * restarts, or an edge that restarts under its agents, then loses no request: the visitor sees a
 * slower answer, not an error page.
 *
 * Bounded on every side: each request waits at most `timeoutMs`; at most `maxPerTunnel` wait for one
 * tunnel and `maxTotal` in all, past which requests get 530 immediately; only tunnels whose last
 * connection left within `recentMs` are held for (a tunnel that has been gone for a while is not
 * coming back in the next five seconds, and holding for it would only delay the 530).
 */
import type { Clock, TimerHandle } from '../shared/clock.ts';

export interface VisitorHoldSettings {
  /** Longest a request waits for a connection (default 5 s); 0 turns the hold off. */
  timeoutMs: number;
  /** Only tunnels whose last connection left this recently are held for (default 15 s). */
  recentMs: number;
  /** Requests held for one tunnel at once (default 1024); more get 530 at once. */
  maxPerTunnel: number;
  /** Requests held in all at once (default 8192). */
  maxTotal: number;
}

export const defaultVisitorHold: Readonly<VisitorHoldSettings> = Object.freeze({
  timeoutMs: 5000,
  recentMs: 15_000,
  maxPerTunnel: 1024,
  maxTotal: 8192,
});

/** Why a hold ended: a connection came, the time ran out, the bounds were full, or the visitor left. */
export type HoldOutcome = 'connected' | 'timeout' | 'full' | 'not_recent' | 'cancelled' | 'closed';

interface Waiter {
  resolve(outcome: HoldOutcome): void;
}

export interface VisitorHoldComponents {
  clock: Clock;
  /** When the tunnel last had a live connection (epoch ms), or undefined if never or unknown. */
  lastConnectedAt(tunnelId: string): number | undefined;
  /** Called on every hold that ends, for metrics. */
  onOutcome?(outcome: HoldOutcome, heldMs: number): void;
  /** Called whenever the number of held requests changes, for metrics. */
  onHeldChange?(held: number): void;
}

export class VisitorHold {
  readonly #c: VisitorHoldComponents;
  readonly #s: VisitorHoldSettings;
  readonly #waiting = new Map<string, Set<Waiter>>();
  #total = 0;
  #closed = false;

  constructor(components: VisitorHoldComponents, settings: VisitorHoldSettings) {
    this.#c = components;
    this.#s = settings;
  }

  /** Requests waiting right now. */
  get held(): number {
    return this.#total;
  }

  /**
   * Waits for a connection of `tunnelId` to register. Resolves `connected` when one does (the caller
   * picks it then, synchronously), or why it did not; never rejects. `signal`: the visitor went away.
   */
  wait(tunnelId: string, signal?: AbortSignal): Promise<HoldOutcome> {
    const { clock } = this.#c;
    if (this.#closed) return Promise.resolve(this.#done('closed', 0));
    if (this.#s.timeoutMs <= 0) return Promise.resolve(this.#done('not_recent', 0));
    const last = this.#c.lastConnectedAt(tunnelId);
    if (last === undefined || clock.now() - last > this.#s.recentMs) {
      return Promise.resolve(this.#done('not_recent', 0));
    }
    const set = this.#waiting.get(tunnelId);
    if (this.#total >= this.#s.maxTotal || (set?.size ?? 0) >= this.#s.maxPerTunnel) {
      return Promise.resolve(this.#done('full', 0));
    }
    if (signal?.aborted) return Promise.resolve(this.#done('cancelled', 0));
    const waiters = set ?? new Set<Waiter>();
    if (!set) this.#waiting.set(tunnelId, waiters);
    const startedAt = clock.now();
    return new Promise<HoldOutcome>((resolve) => {
      let timer: TimerHandle | undefined;
      const onAbort = () => waiter.resolve('cancelled');
      const waiter: Waiter = {
        resolve: (outcome) => {
          if (!waiters.delete(waiter)) return;
          this.#total--;
          this.#c.onHeldChange?.(this.#total);
          if (waiters.size === 0 && this.#waiting.get(tunnelId) === waiters) this.#waiting.delete(tunnelId);
          clock.clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          resolve(this.#done(outcome, clock.now() - startedAt));
        },
      };
      waiters.add(waiter);
      this.#total++;
      this.#c.onHeldChange?.(this.#total);
      timer = clock.setTimeout(() => waiter.resolve('timeout'), this.#s.timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** A connection of `tunnelId` registered: every request held for it goes on. */
  connected(tunnelId: string): void {
    const waiters = this.#waiting.get(tunnelId);
    if (!waiters) return;
    for (const w of [...waiters]) w.resolve('connected');
  }

  /** The edge is stopping: release every held request (they get 530) and hold no more. */
  close(): void {
    this.#closed = true;
    for (const waiters of [...this.#waiting.values()]) for (const w of [...waiters]) w.resolve('closed');
  }

  #done(outcome: HoldOutcome, heldMs: number): HoldOutcome {
    this.#c.onOutcome?.(outcome, heldMs);
    return outcome;
  }
}
