/**
 * The DNS janitor (DESIGN §4 "Delayed DNS cleanup", §5): holds the pending cleanup deadlines the edge
 * reads from its projection and fires each one, never before its `dueAt`.
 *
 *   idle ──SCHEDULE──▶ waiting ──earliest due──▶ firing ──ok──▶ (next due one, or waiting, or idle)
 *                        ▲  │ earliest changed          │ failed
 *                        └──┘ (re-armed)                ▼
 *                                                   backingOff ──retryDelayMs──▶ (next due one, …)
 *
 *   STOP, anywhere ──▶ stopped (final)
 *
 * One timer at a time, for the earliest deadline. Every choice of what to do next is made in `idle`:
 * its eventless transitions leave at once for `firing` when something is due and for `waiting` when
 * something is pending, so at rest `idle` means nothing is pending.
 *
 * Fires run one at a time through the `fireCleanup` actor, which the edge provides with
 * `machine.provide({ actors: { fireCleanup } })`. A fire settles only the deadline it was started
 * for: a SCHEDULE or CANCEL for that tunnel while it runs wins. After a failure the janitor pauses all
 * fires for `retryDelayMs` (the failure is most likely the store's, shared by every fire), then picks
 * the due entry that has failed the fewest times: a tunnel whose cleanup keeps failing takes turns with
 * the others instead of blocking them.
 *
 * `now` is read only to measure the distance to deadlines (the timer's delay and whether the earliest
 * is due yet); the time it returns is never stored or sent. End the janitor with STOP or `actor.stop()`: both clear the
 * timer and stop an in-flight fire (its `signal` aborts).
 */

import type { SnapshotFrom } from 'xstate';
import { assign, fromPromise, setup } from 'xstate';

/**
 * The longest delay a Node timer takes; a longer one overflows and fires after 1 ms. Longer waits are
 * made of several timers, each re-armed from the clock when the previous one ends.
 */
export const MAX_TIMER_DELAY_MS = 2 ** 31 - 1;

export interface DnsJanitorInput {
  /** Epoch ms, from the same clock the actor is created with. */
  now: () => number;
  /** Pause after a failed fire before the next one; default 30 000 ms. */
  retryDelayMs?: number;
  /**
   * Deadlines known at start (the edge reads them from its projection). Taken in one pass: a SCHEDULE
   * each would copy the whole map every time, quadratic in the inactive tunnels of a large edge.
   */
  pending?: Iterable<FireCleanupInput>;
}

/** Input of the `fireCleanup` actor: the deadline that passed. */
export interface FireCleanupInput {
  tunnelId: string;
  dueAt: number;
}

export type DnsJanitorEvent =
  /** Adds or replaces the tunnel's deadline (epoch ms). A non-finite `dueAt` is ignored. */
  | { type: 'SCHEDULE'; tunnelId: string; dueAt: number }
  | { type: 'CANCEL'; tunnelId: string }
  | { type: 'STOP' };

export interface PendingCleanup {
  readonly dueAt: number;
  /** New for every deadline set anew; a finished fire settles only the entry it was started for. */
  readonly seq: number;
  /** Failed fires for this deadline; retries go to the entries that failed least. */
  readonly failures: number;
}

export interface DnsJanitorContext {
  readonly now: () => number;
  readonly retryDelayMs: number;
  /** By tunnel id. A Map, so that any string, "__proto__" included, is only data. */
  pending: ReadonlyMap<string, PendingCleanup>;
  /** The entry the running fire was started for; set in `firing` only. */
  inFlight: ({ tunnelId: string } & PendingCleanup) | null;
  nextSeq: number;
}

export type DnsJanitorStatus = 'idle' | 'waiting' | 'firing' | 'backingOff' | 'stopped';

export const DEFAULT_RETRY_DELAY_MS = 30_000;

type PendingChange = Extract<DnsJanitorEvent, { type: 'SCHEDULE' | 'CANCEL' }>;

/**
 * The pending map after one SCHEDULE or CANCEL. Copy-on-write, so earlier snapshots keep their
 * context; linear in the entries, which are one per inactive tunnel.
 */
function applyChange(
  context: Pick<DnsJanitorContext, 'pending' | 'nextSeq'>,
  change: PendingChange,
): Pick<DnsJanitorContext, 'pending' | 'nextSeq'> {
  const { pending, nextSeq } = context;
  if (change.type === 'CANCEL') {
    if (!pending.has(change.tunnelId)) return context;
    const next = new Map(pending);
    next.delete(change.tunnelId);
    return { pending: next, nextSeq };
  }
  if (!Number.isFinite(change.dueAt)) return context;
  // The same deadline again is no change: an in-flight fire for it still settles it.
  if (pending.get(change.tunnelId)?.dueAt === change.dueAt) return context;
  const next = new Map(pending);
  next.set(change.tunnelId, { dueAt: change.dueAt, seq: nextSeq, failures: 0 });
  return { pending: next, nextSeq: nextSeq + 1 };
}

function earliestDueAt(pending: ReadonlyMap<string, PendingCleanup>): number {
  let earliest = Number.POSITIVE_INFINITY;
  for (const entry of pending.values()) earliest = Math.min(earliest, entry.dueAt);
  return earliest;
}

/** The due entry to fire next: fewest failures first, then earliest deadline, then scheduled first. */
function nextDue(
  pending: ReadonlyMap<string, PendingCleanup>,
  horizon: number,
): ({ tunnelId: string } & PendingCleanup) | null {
  let best: ({ tunnelId: string } & PendingCleanup) | null = null;
  for (const [tunnelId, entry] of pending) {
    if (entry.dueAt > horizon) continue;
    if (
      !best ||
      entry.failures < best.failures ||
      (entry.failures === best.failures &&
        (entry.dueAt < best.dueAt || (entry.dueAt === best.dueAt && entry.seq < best.seq)))
    ) {
      best = { tunnelId, ...entry };
    }
  }
  return best;
}

function notProvided(name: string): Error {
  return new Error(`dns-janitor.machine: actor '${name}' not provided; pass it with machine.provide()`);
}

function validRetryDelayMs(ms: number | undefined): number {
  if (ms === undefined) return DEFAULT_RETRY_DELAY_MS;
  if (!Number.isFinite(ms) || ms < 0) {
    throw new RangeError(`dns-janitor.machine: retryDelayMs must be a finite number >= 0, got ${ms}`);
  }
  return Math.min(ms, MAX_TIMER_DELAY_MS);
}

export const dnsJanitorMachine = setup({
  types: {
    context: {} as DnsJanitorContext,
    events: {} as DnsJanitorEvent,
    input: {} as DnsJanitorInput,
  },
  actors: {
    /**
     * Appends the cleanup for the tunnel whose deadline passed and deletes its automatic DNS records.
     * It must be idempotent and check the tunnel's state itself: it may run for a deadline that was
     * cancelled while it ran, and again after a failure. Rejecting keeps the entry for a retry.
     */
    fireCleanup: fromPromise<void, FireCleanupInput>(async () => {
      throw notProvided('fireCleanup');
    }),
  },
  actions: {
    applyChange: assign(({ context }, params: { change: PendingChange }) =>
      applyChange(context, params.change),
    ),
    /**
     * The guard that led here saw the earliest entry due; reading the clock again must not come up
     * empty if the wall clock stepped back in between, hence the horizon is at least that deadline.
     */
    takeNextDue: assign(({ context }) => ({
      inFlight: nextDue(context.pending, Math.max(context.now(), earliestDueAt(context.pending))),
    })),
    /** Done with the entry, unless it was rescheduled or cancelled (and rescheduled) meanwhile. */
    settleFire: assign(({ context }) => {
      const fired = context.inFlight;
      if (!fired || context.pending.get(fired.tunnelId)?.seq !== fired.seq) return { inFlight: null };
      const pending = new Map(context.pending);
      pending.delete(fired.tunnelId);
      return { pending, inFlight: null };
    }),
    recordFailure: assign(({ context }) => {
      const fired = context.inFlight;
      const entry = fired ? context.pending.get(fired.tunnelId) : undefined;
      if (!fired || !entry || entry.seq !== fired.seq) return { inFlight: null };
      const pending = new Map(context.pending);
      pending.set(fired.tunnelId, { ...entry, failures: entry.failures + 1 });
      return { pending, inFlight: null };
    }),
  },
  guards: {
    somethingPending: ({ context }) => context.pending.size > 0,
    nothingPending: ({ context }) => context.pending.size === 0,
    earliestIsDue: ({ context }) => earliestDueAt(context.pending) <= context.now(),
    /** Only then does the timer need re-arming. */
    movesEarliest: ({ context }, params: { change: PendingChange }) =>
      earliestDueAt(applyChange(context, params.change).pending) !== earliestDueAt(context.pending),
  },
  delays: {
    /** Capped so that a deadline weeks away is reached in steps instead of overflowing the timer. */
    untilEarliest: ({ context }) =>
      Math.min(MAX_TIMER_DELAY_MS, Math.max(0, earliestDueAt(context.pending) - context.now())),
    retryDelay: ({ context }) => context.retryDelayMs,
  },
}).createMachine({
  id: 'dnsJanitor',
  context: ({ input }) => {
    const pending = new Map<string, PendingCleanup>();
    let nextSeq = 1;
    for (const { tunnelId, dueAt } of input.pending ?? []) {
      if (Number.isFinite(dueAt)) pending.set(tunnelId, { dueAt, seq: nextSeq++, failures: 0 });
    }
    return {
      now: input.now,
      retryDelayMs: validRetryDelayMs(input.retryDelayMs),
      pending,
      inFlight: null,
      nextSeq,
    };
  },
  initial: 'idle',
  // In `firing` and `backingOff` a change only updates the entries; the next choice sees it.
  on: {
    SCHEDULE: { actions: { type: 'applyChange', params: ({ event }) => ({ change: event }) } },
    CANCEL: { actions: { type: 'applyChange', params: ({ event }) => ({ change: event }) } },
    STOP: { target: '.stopped' },
  },
  states: {
    idle: {
      always: [
        { guard: 'earliestIsDue', target: 'firing' },
        { guard: 'somethingPending', target: 'waiting' },
      ],
    },

    waiting: {
      // A capped step ends here too; `idle` then finds nothing due and arms the next step.
      after: { untilEarliest: { target: 'idle' } },
      on: {
        SCHEDULE: [
          {
            guard: { type: 'movesEarliest', params: ({ event }) => ({ change: event }) },
            target: 'idle',
            actions: { type: 'applyChange', params: ({ event }) => ({ change: event }) },
          },
          { actions: { type: 'applyChange', params: ({ event }) => ({ change: event }) } },
        ],
        CANCEL: [
          {
            guard: { type: 'movesEarliest', params: ({ event }) => ({ change: event }) },
            target: 'idle',
            actions: { type: 'applyChange', params: ({ event }) => ({ change: event }) },
          },
          { actions: { type: 'applyChange', params: ({ event }) => ({ change: event }) } },
        ],
      },
    },

    firing: {
      entry: 'takeNextDue',
      invoke: {
        src: 'fireCleanup',
        input: ({ context }) => ({ tunnelId: context.inFlight!.tunnelId, dueAt: context.inFlight!.dueAt }),
        onDone: { target: 'idle', actions: 'settleFire' },
        onError: { target: 'backingOff', actions: 'recordFailure' },
      },
    },

    backingOff: {
      always: { guard: 'nothingPending', target: 'idle' },
      after: { retryDelay: { target: 'idle' } },
    },

    stopped: { type: 'final' },
  },
});

export type DnsJanitorMachine = typeof dnsJanitorMachine;
export type DnsJanitorSnapshot = SnapshotFrom<DnsJanitorMachine>;

/** The janitor's one status: the machine's state value. */
export function dnsJanitorStatus(snapshot: DnsJanitorSnapshot): DnsJanitorStatus {
  return snapshot.value;
}
