/**
 * The lifecycle of ONE agent connection to the edge (DESIGN §3 Liveness/Shutdown/HA, §5 Actors):
 *
 *   dialing ──ok──▶ connected ──HEARTBEAT_LOST | SOCKET_CLOSED | DRAIN──▶ reconnecting ──backoff──▶ dialing
 *      │ fatal, or retries used up                │ SHUTDOWN graceful
 *      ▼                                          ▼
 *    failed                                   draining ──drained | error | grace elapsed──▶ closed
 *
 * `SHUTDOWN` in `dialing`/`reconnecting` goes straight to `closed`; `SHUTDOWN now` anywhere aborts the
 * live connection, if any, and goes to `closed`. `closed` and `failed` are final.
 *
 * Backoff: full jitter with a ceiling that doubles per consecutive failure (`backoff.ts`), except for a
 * dial refused outright (an error flagged `refused`, see `connectionRefused`: nothing listens, as while
 * an edge restarts). Up to `backoff.flatRetryLimit` of those in a row are retried within `baseMs` and do
 * not raise the ceiling, so an agent finds a restarted edge within `baseMs` of it listening again
 * instead of waiting out a ceiling that grew while it was down. Refusals still count towards
 * `maxRetries`.
 *
 * Effects live in three named actors that the agent provides with `machine.provide({ actors })`:
 * `connect`, `watch` and `drain`. The defaults here only fail with "not provided". All waiting goes
 * through XState's `after` with named delays, so the clock handed to `createActor(m, { clock })`
 * drives every timer and leaving a state cancels its timer and stops its invoked actor.
 *
 * End it with `SHUTDOWN`, not `actor.stop()`: stopping cancels the invoked actors and timers but runs
 * no transition, so a live connection would be left open.
 */

import type { EventObject, SnapshotFrom } from 'xstate';
import { assign, fromCallback, fromPromise, setup } from 'xstate';
import { WarrenError } from '../shared/errors.ts';
import type { BackoffPolicy } from './backoff.ts';
import { backoffDelayMs, DEFAULT_FLAT_RETRY_LIMIT } from './backoff.ts';

/** A registered connection to the edge, as the `connect` actor hands it over. */
export interface LiveConnection {
  connectionId: string;
  pop: string;
  /** Stop now, no grace. Idempotent; the machine may call it on a connection that is already closed. */
  abort(reason: Error): void;
}

export interface ConnectionInput {
  /** 0..N-1 among the agent's HA connections; goes into `register`. */
  connIndex: number;
  backoff: BackoffPolicy;
  /** How long a graceful shutdown lets in-flight streams finish before the connection is aborted. */
  gracePeriodMs: number;
  /** Draw in [0, 1) for the backoff jitter; default `Math.random`. Tests pass a seeded one. */
  random?: () => number;
  /**
   * Consecutive failures allowed before giving up: a dial failure that brings the count past this
   * ends in `failed`. 0 means the first failed dial is final. Default Infinity (retry forever).
   */
  maxRetries?: number;
}

export type ConnectionOutput = { status: 'closed' } | { status: 'failed'; error: Error };

/** Input of the `connect` actor. */
export interface ConnectInput {
  connIndex: number;
  /** Dials this machine finished (succeeded or failed) before this one; goes into `register`. */
  previousAttempts: number;
  /**
   * Consecutive failures before this dial (failed dials and lost connections; 0 again once a connection
   * has been healthy). The agent rotates through its edge endpoints with it.
   */
  attempts: number;
}

/** Input of the `watch` actor. */
export interface WatchInput {
  connection: LiveConnection;
}

/** Input of the `drain` actor. */
export interface DrainInput {
  connection: LiveConnection;
  gracePeriodMs: number;
}

/** What `watch` sends back about the live connection; callers may also send these to the actor. */
export type ConnectionSignal =
  | { type: 'SOCKET_CLOSED'; error?: Error }
  | { type: 'HEARTBEAT_LOST' }
  /** The edge asked us to move (its `drain` control message). */
  | { type: 'DRAIN' };

export type ShutdownMode = 'graceful' | 'now';

export type ConnectionEvent = ConnectionSignal | { type: 'SHUTDOWN'; mode: ShutdownMode };

export interface ConnectionContext {
  readonly connIndex: number;
  readonly backoff: BackoffPolicy;
  readonly gracePeriodMs: number;
  readonly maxRetries: number;
  readonly flatRetryLimit: number;
  readonly random: () => number;
  /** Consecutive failures (failed dials and connections lost); reset once a connection is healthy. */
  attempts: number;
  /** Refused dials (`refused` errors) in a row; any other outcome of a dial resets it. */
  refusedInRow: number;
  /**
   * Failures among `attempts` that were retried flat (refusals within `flatRetryLimit`): they do not
   * raise the backoff ceiling, so the exponent is `attempts - 1 - flatRetries`.
   */
  flatRetries: number;
  /** Dials finished over this machine's whole life, never reset. */
  previousAttempts: number;
  /**
   * Why the last dial failed or the last connection ended, until the next dial succeeds; its
   * `retryAfterMs` stretches the backoff.
   */
  lastError: Error | null;
  /** The live connection in `connected` and `draining`, null elsewhere. */
  connection: LiveConnection | null;
  /** The delay `reconnecting` waits, chosen on entry; kept for logs and metrics. */
  retryDelayMs: number;
  /** Set only in `failed`. */
  error: Error | null;
}

export type ConnectionStatus = 'dialing' | 'connected' | 'reconnecting' | 'draining' | 'closed' | 'failed';

function notProvided(name: string): Error {
  return new Error(`connection.machine: actor '${name}' not provided; pass it with machine.provide()`);
}

/** Whatever an actor rejected with, as an Error; foreign values become a non-retryable WarrenError. */
function toError(value: unknown): Error {
  if (value instanceof Error) return value;
  return new WarrenError('dial_failed', `connection failed: ${String(value)}`, { cause: value });
}

/** Only an error that says it is retryable is retried: the boundary that made it knows best. */
function isRetryable(err: Error): boolean {
  return (err as { retryable?: unknown }).retryable === true;
}

/** A dial error that says nothing listened at the edge (TCP connection refused); see `connectionRefused`. */
export type RefusedError = WarrenError & { readonly refused: true };

/**
 * The error the `connect` actor rejects with when the edge's port refused the TCP connection: retryable
 * `dial_failed`, flagged `refused` so that the machine retries it without escalating the backoff.
 */
export function connectionRefused(message: string, cause?: unknown): RefusedError {
  const err = new WarrenError('dial_failed', message, { retryable: true, cause });
  return Object.assign(err, { refused: true as const });
}

function isRefused(err: Error): boolean {
  return (err as { refused?: unknown }).refused === true;
}

function retryAfterMs(err: Error | null): number {
  const ms = (err as { retryAfterMs?: unknown } | null)?.retryAfterMs;
  return typeof ms === 'number' && Number.isFinite(ms) && ms > 0 ? ms : 0;
}

function lossReason(signal: ConnectionSignal): Error {
  switch (signal.type) {
    case 'HEARTBEAT_LOST':
      return new WarrenError('heartbeat_timeout', 'the edge stopped answering pings', { retryable: true });
    case 'SOCKET_CLOSED':
      return (
        signal.error ??
        new WarrenError('session_closed', 'the connection to the edge closed', { retryable: true })
      );
    case 'DRAIN':
      return new WarrenError('edge_draining', 'the edge asked this connection to move', { retryable: true });
    default: {
      const unreachable: never = signal;
      return unreachable;
    }
  }
}

const shutdownReason = (): Error => new WarrenError('session_closed', 'the agent is shutting down now');

export const connectionMachine = setup({
  types: {
    context: {} as ConnectionContext,
    events: {} as ConnectionEvent,
    input: {} as ConnectionInput,
    output: {} as ConnectionOutput,
  },
  actors: {
    /**
     * Dial TCP, TLS 1.3 handshake, `hello`, `register`, `registered`. Rejects with a WarrenError whose
     * `retryable` (and `retryAfterMs`) decide what happens next. When its `signal` aborts it must give up
     * and close anything it opened, even a connection that just registered: the machine has left
     * `dialing` and will never see it. That holds after it has resolved too: if the machine leaves
     * `dialing` before it has taken the result, the signal aborts and XState drops the result; once the
     * machine has taken it, the signal never aborts.
     */
    connect: fromPromise<LiveConnection, ConnectInput>(async () => {
      throw notProvided('connect');
    }),
    /**
     * Watches the live connection and sends back a `ConnectionSignal` (`SOCKET_CLOSED`, `HEARTBEAT_LOST`,
     * `DRAIN`). Its cleanup runs when the machine leaves `connected`; it must not close the connection.
     * If it throws, the connection counts as lost.
     */
    watch: fromCallback<EventObject, WatchInput>(() => {
      throw notProvided('watch');
    }),
    /**
     * Graceful close: `unregister`, let in-flight streams finish, then GOAWAY and close. It needs no timer
     * of its own: when `gracePeriodMs` elapses the machine stops it (its `signal` aborts) and aborts the
     * connection.
     */
    drain: fromPromise<void, DrainInput>(async () => {
      throw notProvided('drain');
    }),
  },
  actions: {
    /** The one side effect on a connection; `forgetConnection`/`recordLoss` then drop the reference. */
    abortConnection: ({ context }, params: { reason: Error }) => {
      context.connection?.abort(params.reason);
    },
    recordConnection: assign(({ context }, params: { connection: LiveConnection }) => ({
      connection: params.connection,
      previousAttempts: context.previousAttempts + 1,
      lastError: null,
      refusedInRow: 0,
    })),
    recordDialFailure: assign(({ context }, params: { error: Error }) => {
      const refusedInRow = isRefused(params.error) ? context.refusedInRow + 1 : 0;
      const flat = refusedInRow > 0 && refusedInRow <= context.flatRetryLimit;
      return {
        attempts: context.attempts + 1,
        previousAttempts: context.previousAttempts + 1,
        lastError: params.error,
        refusedInRow,
        flatRetries: context.flatRetries + (flat ? 1 : 0),
      };
    }),
    /** A lost connection counts as a failure, so a connection that flaps keeps backing off. */
    recordLoss: assign(({ context }, params: { reason: Error; failure: boolean }) => ({
      connection: null,
      lastError: params.reason,
      attempts: context.attempts + (params.failure ? 1 : 0),
    })),
    forgetConnection: assign({ connection: null }),
    resetAttempts: assign({ attempts: 0, flatRetries: 0 }),
    /**
     * Full-jitter backoff, but never sooner than the edge asked for with `retryAfterMs`. A flat retry
     * (a refusal within the limit) draws under `baseMs`; any other failure under a ceiling raised only
     * by the failures before it that were not flat.
     */
    planRetry: assign(({ context }) => {
      const flat = context.refusedInRow > 0 && context.refusedInRow <= context.flatRetryLimit;
      const step = flat ? 0 : context.attempts - 1 - context.flatRetries;
      return {
        retryDelayMs: Math.max(
          backoffDelayMs(step, context.backoff, context.random),
          retryAfterMs(context.lastError),
        ),
      };
    }),
    giveUp: assign(({ context }) => ({
      error: context.lastError ?? new WarrenError('dial_failed', 'connection failed'),
    })),
  },
  guards: {
    isFatal: (_, params: { error: Error }) => !isRetryable(params.error),
    /** Checked before `recordDialFailure` counts the failure at hand, hence the +1. */
    retriesExhausted: ({ context }) => context.attempts + 1 > context.maxRetries,
    isGraceful: ({ event }) => event.type === 'SHUTDOWN' && event.mode === 'graceful',
    isNow: ({ event }) => event.type === 'SHUTDOWN' && event.mode === 'now',
  },
  delays: {
    backoff: ({ context }) => context.retryDelayMs,
    healthyAfter: ({ context }) => context.backoff.healthyAfterMs,
    gracePeriod: ({ context }) => context.gracePeriodMs,
  },
}).createMachine({
  id: 'connection',
  context: ({ input }) => ({
    connIndex: input.connIndex,
    backoff: input.backoff,
    gracePeriodMs: input.gracePeriodMs,
    maxRetries: input.maxRetries ?? Number.POSITIVE_INFINITY,
    flatRetryLimit: input.backoff.flatRetryLimit ?? DEFAULT_FLAT_RETRY_LIMIT,
    random: input.random ?? Math.random,
    attempts: 0,
    refusedInRow: 0,
    flatRetries: 0,
    previousAttempts: 0,
    lastError: null,
    connection: null,
    retryDelayMs: 0,
    error: null,
  }),
  initial: 'dialing',
  output: ({ context }): ConnectionOutput =>
    context.error ? { status: 'failed', error: context.error } : { status: 'closed' },
  states: {
    /**
     * One state for TCP connect, TLS handshake and registration (DESIGN §5 draws them as three). They
     * are one promise in `connect` because they fail and retry as a unit, are cancelled by one signal,
     * and nothing outside waits on the steps in between; splitting them would add states with
     * identical transitions. Logs and metrics about the steps belong inside `connect`.
     */
    dialing: {
      invoke: {
        src: 'connect',
        input: ({ context }) => ({
          connIndex: context.connIndex,
          previousAttempts: context.previousAttempts,
          attempts: context.attempts,
        }),
        onDone: {
          target: 'connected',
          actions: { type: 'recordConnection', params: ({ event }) => ({ connection: event.output }) },
        },
        onError: [
          {
            guard: { type: 'isFatal', params: ({ event }) => ({ error: toError(event.error) }) },
            target: 'failed',
            actions: { type: 'recordDialFailure', params: ({ event }) => ({ error: toError(event.error) }) },
          },
          {
            guard: 'retriesExhausted',
            target: 'failed',
            actions: { type: 'recordDialFailure', params: ({ event }) => ({ error: toError(event.error) }) },
          },
          {
            target: 'reconnecting',
            actions: { type: 'recordDialFailure', params: ({ event }) => ({ error: toError(event.error) }) },
          },
        ],
      },
      // Leaving `dialing` stops `connect`, which aborts its signal.
      on: { SHUTDOWN: { target: 'closed' } },
    },

    connected: {
      invoke: {
        src: 'watch',
        input: ({ context }) => ({ connection: context.connection! }),
        onError: {
          target: 'reconnecting',
          actions: [
            { type: 'abortConnection', params: ({ event }) => ({ reason: toError(event.error) }) },
            { type: 'recordLoss', params: ({ event }) => ({ reason: toError(event.error), failure: true }) },
          ],
        },
      },
      after: { healthyAfter: { actions: 'resetAttempts' } },
      on: {
        HEARTBEAT_LOST: {
          target: 'reconnecting',
          actions: [
            { type: 'abortConnection', params: ({ event }) => ({ reason: lossReason(event) }) },
            { type: 'recordLoss', params: ({ event }) => ({ reason: lossReason(event), failure: true }) },
          ],
        },
        SOCKET_CLOSED: {
          target: 'reconnecting',
          actions: [
            { type: 'abortConnection', params: ({ event }) => ({ reason: lossReason(event) }) },
            { type: 'recordLoss', params: ({ event }) => ({ reason: lossReason(event), failure: true }) },
          ],
        },
        // Being asked to move is not a failure: the count stays, the retry still gets jitter so that
        // every agent of a draining edge does not redial in the same millisecond.
        DRAIN: {
          target: 'reconnecting',
          actions: [
            { type: 'abortConnection', params: ({ event }) => ({ reason: lossReason(event) }) },
            { type: 'recordLoss', params: ({ event }) => ({ reason: lossReason(event), failure: false }) },
          ],
        },
        SHUTDOWN: [
          { guard: 'isGraceful', target: 'draining' },
          {
            target: 'closed',
            actions: [
              { type: 'abortConnection', params: () => ({ reason: shutdownReason() }) },
              'forgetConnection',
            ],
          },
        ],
      },
    },

    reconnecting: {
      // `planRetry` runs before the `after` timer is armed: XState appends delayed events to `entry`.
      entry: 'planRetry',
      after: { backoff: { target: 'dialing' } },
      on: { SHUTDOWN: { target: 'closed' } },
    },

    draining: {
      invoke: {
        src: 'drain',
        input: ({ context }) => ({ connection: context.connection!, gracePeriodMs: context.gracePeriodMs }),
        onDone: { target: 'closed', actions: 'forgetConnection' },
        onError: {
          target: 'closed',
          actions: [
            { type: 'abortConnection', params: ({ event }) => ({ reason: toError(event.error) }) },
            'forgetConnection',
          ],
        },
      },
      after: {
        gracePeriod: {
          target: 'closed',
          actions: [
            {
              type: 'abortConnection',
              params: ({ context }) => ({
                reason: new WarrenError(
                  'session_closed',
                  `grace period of ${context.gracePeriodMs} ms elapsed with streams still open`,
                ),
              }),
            },
            'forgetConnection',
          ],
        },
      },
      on: {
        SHUTDOWN: {
          guard: 'isNow',
          target: 'closed',
          actions: [
            { type: 'abortConnection', params: () => ({ reason: shutdownReason() }) },
            'forgetConnection',
          ],
        },
        // Nothing left to drain: the connection is gone, and we are on our way out anyway.
        HEARTBEAT_LOST: {
          target: 'closed',
          actions: [
            { type: 'abortConnection', params: ({ event }) => ({ reason: lossReason(event) }) },
            'forgetConnection',
          ],
        },
        SOCKET_CLOSED: {
          target: 'closed',
          actions: [
            { type: 'abortConnection', params: ({ event }) => ({ reason: lossReason(event) }) },
            'forgetConnection',
          ],
        },
      },
    },

    closed: { type: 'final' },
    failed: { type: 'final', entry: 'giveUp' },
  },
});

export type ConnectionMachine = typeof connectionMachine;
export type ConnectionSnapshot = SnapshotFrom<ConnectionMachine>;

/** The connection's one status: the machine's state value. */
export function connectionStatus(snapshot: ConnectionSnapshot): ConnectionStatus {
  return snapshot.value;
}
