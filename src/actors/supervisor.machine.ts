/**
 * The agent's HA supervisor (DESIGN §3 HA, §5 Actors): keeps `haConnections` connection machines
 * (`connection.machine.ts`) as spawned children `conn-0` … `conn-<N-1>`, one per connection index.
 *
 *   running ──SHUTDOWN graceful|now (forwarded to every started child)──▶ stopping ──all children final──▶ closed
 *      │                                                                    ▲                         └──▶ failed
 *      └──a child ends failed (SHUTDOWN now to the others)──────────────────┘
 *
 * - Staggered start: connection i starts i × `staggerMs` after the supervisor (default 250 ms), so the
 *   N handshakes of one agent, and of a fleet restarted together, do not reach the edge in the same
 *   millisecond. A connection not started when the supervisor leaves `running` is never started.
 * - Each child redials its own connection, so the supervisor never respawns one: it holds at most N
 *   children over its whole life, each index once.
 * - A child ends on its own only when it fails for good: a non-retryable error (`auth_failed`,
 *   `tunnel_deleted`, a certificate the edge CA does not vouch for) or its retries used up. The other
 *   connections would fail the same way, so they are told to stop now and the supervisor ends `failed`
 *   with that first error once every child is final. A child that crashes counts as failed.
 * - The supervisor is final only once every child is: no child and no timer outlives it.
 *
 * The connection machine comes in as the `connection` actor; the agent provides one whose
 * `connect`/`watch`/`drain` actors use real sockets with `supervisorMachine.provide({ actors: { connection } })`,
 * tests one with fakes. All waiting is XState `after` with named delays, on the clock handed to
 * `createActor(machine, { clock })`, which the children share.
 *
 * End it with `SHUTDOWN`, not `actor.stop()`: stopping stops the children without running their
 * transitions, so their live connections would be left open.
 */

import type { ActorRefFrom, DoneActorEvent, ErrorActorEvent, SnapshotFrom } from 'xstate';
import { and, assign, enqueueActions, setup } from 'xstate';
import { WarrenError } from '../shared/errors.ts';
import {
  type ConnectionInput,
  type ConnectionOutput,
  type ConnectionStatus,
  connectionMachine,
  connectionStatus,
  type ShutdownMode,
} from './connection.machine.ts';

/** Default delay between the starts of two consecutive connections. */
export const DEFAULT_STAGGER_MS = 250;

/** What every connection gets; the supervisor adds the `connIndex`. */
export type ConnectionSettings = Omit<ConnectionInput, 'connIndex'>;

export interface SupervisorInput {
  /** Connections to keep, indexes 0..N-1; at least 1. */
  haConnections: number;
  /** Connection i starts i × this after the supervisor; default 250 ms (`DEFAULT_STAGGER_MS`). 0 starts all at once. */
  staggerMs?: number;
  connection: ConnectionSettings;
}

/** `closed` after a requested shutdown; `failed` with the error of the first connection that gave up. */
export type SupervisorOutput = ConnectionOutput;

/** What callers send. */
export type SupervisorEvent = { type: 'SHUTDOWN'; mode: ShutdownMode };

/** Child actor ids are `conn-<connIndex>`. */
export type ConnectionChildId = `conn-${number}`;

type SupervisorMachineEvent =
  | SupervisorEvent
  | DoneActorEvent<ConnectionOutput, ConnectionChildId>
  | ErrorActorEvent<unknown, ConnectionChildId>;

type ConnectionRef = ActorRefFrom<typeof connectionMachine>;

export interface SupervisorContext {
  readonly haConnections: number;
  readonly staggerMs: number;
  readonly connection: ConnectionSettings;
  /** Children started so far; entry i is `conn-i`. */
  children: readonly ConnectionRef[];
  /** Indexes of the children that are final (or crashed). */
  ended: readonly number[];
  /** The first failure; set before `failed`. */
  error: Error | null;
}

export type SupervisorStatus = 'running' | 'stopping' | 'closed' | 'failed';

const CHILD_PREFIX = 'conn-';

export function connectionChildId(connIndex: number): ConnectionChildId {
  return `${CHILD_PREFIX}${connIndex}`;
}

function childIndex(actorId: string): number {
  return Number(actorId.slice(CHILD_PREFIX.length));
}

function validInput(input: SupervisorInput): { haConnections: number; staggerMs: number } {
  const { haConnections } = input;
  if (!Number.isSafeInteger(haConnections) || haConnections < 1) {
    throw new RangeError(`supervisor.machine: haConnections must be an integer >= 1, got ${haConnections}`);
  }
  const staggerMs = input.staggerMs ?? DEFAULT_STAGGER_MS;
  if (!Number.isFinite(staggerMs) || staggerMs < 0) {
    throw new RangeError(`supervisor.machine: staggerMs must be a finite number >= 0, got ${staggerMs}`);
  }
  return { haConnections, staggerMs };
}

/** A crashed child's error as an Error; foreign values become a WarrenError. */
function crashError(value: unknown): Error {
  if (value instanceof Error) return value;
  return new WarrenError('dial_failed', `connection machine crashed: ${String(value)}`, { cause: value });
}

const childDone = ({ event }: { event: DoneActorEvent<ConnectionOutput, ConnectionChildId> }) => ({
  connIndex: childIndex(event.actorId),
  error: event.output.status === 'failed' ? event.output.error : null,
});

const childCrashed = ({ event }: { event: ErrorActorEvent<unknown, ConnectionChildId> }) => ({
  connIndex: childIndex(event.actorId),
  error: crashError(event.error),
});

const now = { mode: 'now' } as const;

export const supervisorMachine = setup({
  types: {
    context: {} as SupervisorContext,
    events: {} as SupervisorMachineEvent,
    input: {} as SupervisorInput,
    output: {} as SupervisorOutput,
  },
  actors: {
    /** One HA connection; provide the agent's (or a test's) with `supervisorMachine.provide()`. */
    connection: connectionMachine,
  },
  actions: {
    /** Starts the next connection, or every remaining one when there is no stagger. */
    launchNext: assign(({ context, spawn }) => {
      const children = [...context.children];
      do {
        const connIndex = children.length;
        children.push(
          spawn('connection', {
            id: connectionChildId(connIndex),
            input: { ...context.connection, connIndex },
          }),
        );
      } while (context.staggerMs === 0 && children.length < context.haConnections);
      return { children };
    }),
    /** Children that are final ignore events anyway; skipping them keeps the forward to the living. */
    forwardShutdown: enqueueActions(({ context, enqueue }, params: { mode: ShutdownMode }) => {
      for (const [connIndex, child] of context.children.entries()) {
        if (!context.ended.includes(connIndex))
          enqueue.sendTo(child, { type: 'SHUTDOWN', mode: params.mode });
      }
    }),
    /** The first failure is the answer; any later one is a consequence of it or of the shutdown. */
    recordChildEnd: assign(({ context }, params: { connIndex: number; error: Error | null }) => ({
      ended: context.ended.includes(params.connIndex) ? context.ended : [...context.ended, params.connIndex],
      error: context.error ?? params.error,
    })),
  },
  guards: {
    allLaunched: ({ context }) => context.children.length >= context.haConnections,
    allEnded: ({ context }) => context.ended.length >= context.children.length,
    hasFailed: ({ context }) => context.error !== null,
    childFailed: (_, params: { output: ConnectionOutput }) => params.output.status === 'failed',
  },
  delays: {
    stagger: ({ context }) => context.staggerMs,
  },
}).createMachine({
  id: 'supervisor',
  context: ({ input }) => ({
    ...validInput(input),
    connection: input.connection,
    children: [],
    ended: [],
    error: null,
  }),
  initial: 'running',
  output: ({ context }): SupervisorOutput =>
    context.error ? { status: 'failed', error: context.error } : { status: 'closed' },
  states: {
    running: {
      initial: 'launching',
      states: {
        launching: {
          // Once the last one is started, `always` leaves at once and the stagger timer goes with it.
          entry: 'launchNext',
          always: { guard: 'allLaunched', target: 'launched' },
          after: { stagger: { target: 'launching', reenter: true } },
        },
        launched: {},
      },
      // Only reachable if something else shut every child down: nothing is left to supervise.
      always: { guard: and(['allLaunched', 'allEnded']), target: 'stopping' },
      on: {
        SHUTDOWN: {
          target: 'stopping',
          actions: { type: 'forwardShutdown', params: ({ event }) => ({ mode: event.mode }) },
        },
        'xstate.done.actor.*': [
          {
            guard: { type: 'childFailed', params: ({ event }) => ({ output: event.output }) },
            target: 'stopping',
            actions: [
              { type: 'recordChildEnd', params: childDone },
              { type: 'forwardShutdown', params: now },
            ],
          },
          { actions: { type: 'recordChildEnd', params: childDone } },
        ],
        'xstate.error.actor.*': {
          target: 'stopping',
          actions: [
            { type: 'recordChildEnd', params: childCrashed },
            { type: 'forwardShutdown', params: now },
          ],
        },
      },
    },

    stopping: {
      always: [
        { guard: and(['allEnded', 'hasFailed']), target: 'failed' },
        { guard: 'allEnded', target: 'closed' },
      ],
      on: {
        // A graceful shutdown can be hurried: `now` reaches children still draining.
        SHUTDOWN: { actions: { type: 'forwardShutdown', params: ({ event }) => ({ mode: event.mode }) } },
        'xstate.done.actor.*': { actions: { type: 'recordChildEnd', params: childDone } },
        'xstate.error.actor.*': { actions: { type: 'recordChildEnd', params: childCrashed } },
      },
    },

    closed: { type: 'final' },
    failed: { type: 'final' },
  },
});

export type SupervisorMachine = typeof supervisorMachine;
export type SupervisorSnapshot = SnapshotFrom<SupervisorMachine>;

/** One connection index as the supervisor sees it. */
export interface SupervisedConnection {
  connIndex: number;
  /** `pending` until its staggered start (or for good, if the supervisor stopped first). */
  status: ConnectionStatus | 'pending';
  /** The registered connection's id and PoP while `connected` or `draining`. */
  connectionId: string | null;
  pop: string | null;
}

export interface SupervisorView {
  status: SupervisorStatus;
  /** Connections registered with the edge and serving right now (children in `connected`). */
  connected: number;
  /** One entry per index, 0..N-1. */
  connections: readonly SupervisedConnection[];
}

/** The supervisor's one status: the top-level state. */
export function supervisorStatus(snapshot: SupervisorSnapshot): SupervisorStatus {
  if (snapshot.matches('running')) return 'running';
  if (snapshot.matches('stopping')) return 'stopping';
  return snapshot.matches('failed') ? 'failed' : 'closed';
}

/** What the agent shows (`/ready`, metrics, logs): each connection's status, read from its child. */
export function supervisorView(snapshot: SupervisorSnapshot): SupervisorView {
  const { haConnections, children } = snapshot.context;
  const connections: SupervisedConnection[] = [];
  let connected = 0;
  for (let connIndex = 0; connIndex < haConnections; connIndex++) {
    const child = children[connIndex];
    if (!child) {
      connections.push({ connIndex, status: 'pending', connectionId: null, pop: null });
      continue;
    }
    const childSnapshot = child.getSnapshot();
    const status = connectionStatus(childSnapshot);
    if (status === 'connected') connected++;
    const live = childSnapshot.context.connection;
    connections.push({
      connIndex,
      status,
      connectionId: live?.connectionId ?? null,
      pop: live?.pop ?? null,
    });
  }
  return { status: supervisorStatus(snapshot), connected, connections };
}
