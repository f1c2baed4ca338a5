/**
 * The HA supervisor under arbitrary sequences of dial outcomes, connection signals, drains, clock
 * advances and shutdowns, checked after every command against a small model (fast-check
 * `fc.commands`), on a manual clock with a seeded random source. Then races (`fc.scheduler`) between
 * registration answers, heartbeat loss and shutdown, in every order.
 *
 * The fakes keep the `connect` contract the agent's real actor keeps: a connection handed over after
 * the machine stopped waiting for it (its signal aborted) is closed, since nobody will ever hold it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { EventObject } from 'xstate';
import { createActor, fromCallback, fromPromise } from 'xstate';
import type { BackoffPolicy } from '../../src/actors/backoff.ts';
import { backoffDelayMs } from '../../src/actors/backoff.ts';
import type {
  ConnectInput,
  ConnectionSignal,
  ConnectionStatus,
  DrainInput,
  LiveConnection,
  ShutdownMode,
  WatchInput,
} from '../../src/actors/connection.machine.ts';
import { connectionMachine, connectionRefused } from '../../src/actors/connection.machine.ts';
import type { SupervisorStatus } from '../../src/actors/supervisor.machine.ts';
import {
  connectionChildId,
  supervisorMachine,
  supervisorStatus,
  supervisorView,
} from '../../src/actors/supervisor.machine.ts';
import { ManualClock } from '../../src/shared/clock.ts';
import { isWarrenError, WarrenError } from '../../src/shared/errors.ts';
import { FakeEdge, flush } from '../support/fake-connection.ts';
import { mulberry32 } from '../support/mulberry32.ts';

const FLAT_RETRY_LIMIT = 2;
const policy: BackoffPolicy = {
  baseMs: 1000,
  capMs: 8000,
  healthyAfterMs: 10_000,
  flatRetryLimit: FLAT_RETRY_LIMIT,
};
const gracePeriodMs = 5000;

// ---------------------------------------------------------------------------------------------
// The model.

type SlotStatus = ConnectionStatus | 'pending';

interface SlotModel {
  status: SlotStatus;
  attempts: number;
  refusedInRow: number;
  flatRetries: number;
  retryAt: number | null;
  healthyAt: number | null;
  graceAt: number | null;
}

interface Model {
  readonly haConnections: number;
  readonly staggerMs: number;
  readonly maxRetries: number;
  /** Replays the machines' draws: they happen one at a time, in command order. */
  readonly random: () => number;
  now: number;
  slots: SlotModel[];
  launched: number;
  nextLaunchAt: number | null;
  status: SupervisorStatus;
  error: Error | null;
}

interface Real {
  clock: ManualClock;
  edge: FakeEdge;
  actor: ReturnType<typeof createActor<ReturnType<FakeEdge['supervisorMachine']>>>;
}

const isFinal = (s: SlotStatus) => s === 'closed' || s === 'failed';

function setStatus(slot: SlotModel, status: SlotStatus): void {
  slot.status = status;
  slot.retryAt = null;
  slot.healthyAt = null;
  slot.graceAt = null;
}

function dialing(slot: SlotModel): void {
  setStatus(slot, 'dialing');
}

function connected(m: Model, slot: SlotModel): void {
  setStatus(slot, 'connected');
  slot.refusedInRow = 0;
  slot.healthyAt = m.now + policy.healthyAfterMs;
}

function reconnecting(m: Model, slot: SlotModel, retryAfterMs: number): void {
  const flat = slot.refusedInRow > 0 && slot.refusedInRow <= FLAT_RETRY_LIMIT;
  const step = flat ? 0 : slot.attempts - 1 - slot.flatRetries;
  const delay = Math.max(backoffDelayMs(step, policy, m.random), retryAfterMs);
  setStatus(slot, 'reconnecting');
  slot.retryAt = m.now + delay;
}

function launch(m: Model): void {
  const slot = m.slots[m.launched];
  assert.ok(slot);
  dialing(slot);
  m.launched++;
}

/** What SHUTDOWN does to one connection. */
function shutdownSlot(m: Model, slot: SlotModel, mode: ShutdownMode): void {
  switch (slot.status) {
    case 'dialing':
    case 'reconnecting':
      setStatus(slot, 'closed');
      break;
    case 'connected':
      if (mode === 'now') setStatus(slot, 'closed');
      else {
        setStatus(slot, 'draining');
        slot.graceAt = m.now + gracePeriodMs;
      }
      break;
    case 'draining':
      if (mode === 'now') setStatus(slot, 'closed');
      break;
    default:
      break;
  }
}

/** The supervisor ends once every started connection has. */
function settle(m: Model): void {
  if (m.status !== 'stopping') return;
  if (m.slots.slice(0, m.launched).every((s) => isFinal(s.status))) m.status = m.error ? 'failed' : 'closed';
}

function shutdown(m: Model, mode: ShutdownMode): void {
  if (m.status === 'closed' || m.status === 'failed') return;
  m.status = 'stopping';
  m.nextLaunchAt = null;
  for (const slot of m.slots) shutdownSlot(m, slot, mode);
  settle(m);
}

function slotFailed(m: Model, slot: SlotModel, err: Error): void {
  setStatus(slot, 'failed');
  m.error ??= err;
  shutdown(m, 'now');
}

function modelTimers(m: Model): number {
  let n = m.nextLaunchAt !== null ? 1 : 0;
  for (const s of m.slots) n += [s.retryAt, s.healthyAt, s.graceAt].filter((t) => t !== null).length;
  return n;
}

function slotsIn(m: Model, status: SlotStatus): number[] {
  return m.slots.flatMap((s, i) => (s.status === status ? [i] : []));
}

// ---------------------------------------------------------------------------------------------
// Invariants, checked after every command.

function checkInvariants(m: Model, r: Real, where: string): void {
  const snapshot = r.actor.getSnapshot();
  const view = supervisorView(snapshot);
  assert.equal(supervisorStatus(snapshot), m.status, `supervisor ${where}`);
  assert.equal(view.connections.length, m.haConnections);
  assert.ok(snapshot.context.children.length <= m.haConnections, `children ${where}`);
  assert.equal(snapshot.context.children.length, m.launched, `launched ${where}`);
  for (const [i, slot] of m.slots.entries()) {
    assert.equal(view.connections[i]?.status, slot.status, `conn-${i} ${where}`);
    const child = snapshot.context.children[i];
    if (child) {
      assert.equal(child.id, connectionChildId(i));
      assert.equal(child.getSnapshot().context.attempts, slot.attempts, `conn-${i} attempts ${where}`);
    }
  }

  // Never more live connections than N, each index at most once, and each one held by its machine.
  assert.ok(view.connected <= m.haConnections);
  assert.equal(view.connected, slotsIn(m, 'connected').length);
  const byIndex = new Map<number, number>();
  for (const conn of r.edge.live) {
    byIndex.set(conn.connIndex, (byIndex.get(conn.connIndex) ?? 0) + 1);
    const held = snapshot.context.children[conn.connIndex]?.getSnapshot().context.connection;
    assert.equal(held, conn, `conn-${conn.connIndex}: a live connection nobody holds ${where}`);
  }
  for (const [i, count] of byIndex)
    assert.equal(count, 1, `conn-${i} has ${count} live connections ${where}`);
  const holding = m.slots.filter((s) => s.status === 'connected' || s.status === 'draining').length;
  assert.equal(r.edge.live.size, holding, `live connections ${where}`);

  // Invoked actors and timers exist only where the model says.
  assert.deepEqual(
    r.edge
      .pendingDials()
      .map((d) => d.input.connIndex)
      .sort(),
    slotsIn(m, 'dialing'),
    `dials ${where}`,
  );
  assert.deepEqual(
    r.edge
      .activeWatchers()
      .map((w) => w.connection.connIndex)
      .sort(),
    slotsIn(m, 'connected'),
    `watchers ${where}`,
  );
  assert.deepEqual(
    r.edge
      .pendingDrains()
      .map((d) => d.connection.connIndex)
      .sort(),
    slotsIn(m, 'draining'),
    `drains ${where}`,
  );
  assert.equal(r.clock.pendingTimers, modelTimers(m), `pending timers ${where}`);

  if (m.status === 'closed' || m.status === 'failed') {
    assert.equal(snapshot.status, 'done', where);
    assert.equal(r.clock.pendingTimers, 0, `timers left ${where}`);
    assert.equal(r.edge.live.size, 0, `connections left ${where}`);
    assert.equal(r.edge.activeWatchers().length, 0);
    assert.equal(r.edge.pendingDials().length, 0);
    assert.equal(r.edge.pendingDrains().length, 0);
    if (m.status === 'failed') {
      assert.equal(snapshot.output?.status, 'failed');
      assert.equal(snapshot.output?.status === 'failed' && snapshot.output.error, m.error, where);
    } else assert.deepEqual(snapshot.output, { status: 'closed' }, where);
  } else {
    assert.equal(snapshot.status, 'active', where);
  }
}

// ---------------------------------------------------------------------------------------------
// Commands.

type Cmd = fc.AsyncCommand<Model, Real>;

/** The `pick`-th connection (mod their count) in `status`, if any. */
function pickSlot(m: Readonly<Model>, status: SlotStatus, pick: number): number | undefined {
  const candidates = slotsIn(m as Model, status);
  return candidates.length === 0 ? undefined : candidates[pick % candidates.length];
}

async function checkAfter(m: Model, r: Real, cmd: Cmd): Promise<void> {
  await flush();
  checkInvariants(m, r, `after ${cmd.toString()}`);
}

class DialSucceeds implements Cmd {
  constructor(readonly pick: number) {}
  check = (m: Readonly<Model>) => pickSlot(m, 'dialing', this.pick) !== undefined;
  async run(m: Model, r: Real) {
    const i = pickSlot(m, 'dialing', this.pick)!;
    assert.ok(r.edge.pendingDial(i)?.succeed());
    connected(m, m.slots[i]!);
    await checkAfter(m, r, this);
  }
  toString = () => `dialSucceeds(${this.pick})`;
}

type FailureKind = 'retryable' | 'refused' | 'fatal';

class DialFails implements Cmd {
  constructor(
    readonly pick: number,
    readonly kind: FailureKind,
    readonly retryAfterMs: number | undefined,
  ) {}
  check = (m: Readonly<Model>) => pickSlot(m, 'dialing', this.pick) !== undefined;
  async run(m: Model, r: Real) {
    const i = pickSlot(m, 'dialing', this.pick)!;
    const slot = m.slots[i]!;
    const err =
      this.kind === 'fatal'
        ? new WarrenError(this.pick % 2 === 0 ? 'auth_failed' : 'tunnel_deleted', 'refused for good')
        : this.kind === 'refused'
          ? connectionRefused('connect ECONNREFUSED')
          : new WarrenError('dial_failed', 'unreachable', {
              retryable: true,
              ...(this.retryAfterMs === undefined ? {} : { retryAfterMs: this.retryAfterMs }),
            });
    r.edge.pendingDial(i)!.fail(err);
    slot.attempts++;
    slot.refusedInRow = this.kind === 'refused' ? slot.refusedInRow + 1 : 0;
    if (slot.refusedInRow > 0 && slot.refusedInRow <= FLAT_RETRY_LIMIT) slot.flatRetries++;
    if (this.kind === 'fatal' || slot.attempts > m.maxRetries) slotFailed(m, slot, err);
    else reconnecting(m, slot, this.kind === 'retryable' ? (this.retryAfterMs ?? 0) : 0);
    await checkAfter(m, r, this);
  }
  toString = () => `dialFails(${this.pick}, ${this.kind}, ${this.retryAfterMs})`;
}

class ConnectionSignalled implements Cmd {
  constructor(
    readonly pick: number,
    readonly signal: ConnectionSignal['type'],
    readonly retryAfterMs: number | undefined,
  ) {}
  check = (m: Readonly<Model>) =>
    pickSlot(m, 'connected', this.pick) !== undefined || pickSlot(m, 'draining', this.pick) !== undefined;
  async run(m: Model, r: Real) {
    const i = pickSlot(m, 'connected', this.pick);
    if (i === undefined) {
      // A draining connection has no watcher; its socket closing reaches the machine directly in the
      // agent, so here the drain fails the way the closed session would make it fail.
      const j = pickSlot(m, 'draining', this.pick)!;
      r.edge
        .pendingDrain(j)!
        .fail(new WarrenError('session_closed', 'connection closed', { retryable: true }));
      setStatus(m.slots[j]!, 'closed');
      settle(m);
      await checkAfter(m, r, this);
      return;
    }
    const slot = m.slots[i]!;
    const watcher = r.edge.watcher(i)!;
    if (this.signal === 'SOCKET_CLOSED') {
      const error =
        this.retryAfterMs === undefined
          ? undefined
          : new WarrenError('session_closed', 'reset', { retryable: true, retryAfterMs: this.retryAfterMs });
      watcher.sendBack(error ? { type: 'SOCKET_CLOSED', error } : { type: 'SOCKET_CLOSED' });
      slot.attempts++;
      reconnecting(m, slot, this.retryAfterMs ?? 0);
    } else if (this.signal === 'HEARTBEAT_LOST') {
      watcher.sendBack({ type: 'HEARTBEAT_LOST' });
      slot.attempts++;
      reconnecting(m, slot, 0);
    } else {
      watcher.sendBack({ type: 'DRAIN' });
      reconnecting(m, slot, 0);
    }
    await checkAfter(m, r, this);
  }
  toString = () => `signal(${this.pick}, ${this.signal}, ${this.retryAfterMs})`;
}

class DrainSettles implements Cmd {
  constructor(readonly pick: number) {}
  check = (m: Readonly<Model>) => pickSlot(m, 'draining', this.pick) !== undefined;
  async run(m: Model, r: Real) {
    const i = pickSlot(m, 'draining', this.pick)!;
    r.edge.pendingDrain(i)!.finish();
    setStatus(m.slots[i]!, 'closed');
    settle(m);
    await checkAfter(m, r, this);
  }
  toString = () => `drainSettles(${this.pick})`;
}

class Advance implements Cmd {
  constructor(readonly ms: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const target = m.now + this.ms;
    r.clock.advance(this.ms);
    for (;;) {
      // The earliest due timer; timers of different connections do not interact, so ties may go either way.
      let due: { at: number; fire: () => void } | undefined;
      const consider = (at: number | null, fire: () => void) => {
        if (at !== null && at <= target && (!due || at < due.at)) due = { at, fire };
      };
      consider(m.nextLaunchAt, () => {
        launch(m);
        m.nextLaunchAt = m.launched < m.haConnections ? m.now + m.staggerMs : null;
      });
      for (const slot of m.slots) {
        consider(slot.retryAt, () => dialing(slot));
        consider(slot.healthyAt, () => {
          slot.attempts = 0;
          slot.flatRetries = 0;
          slot.healthyAt = null;
        });
        consider(slot.graceAt, () => {
          setStatus(slot, 'closed');
          settle(m);
        });
      }
      if (!due) break;
      m.now = due.at;
      due.fire();
    }
    m.now = target;
    await checkAfter(m, r, this);
  }
  toString = () => `advance(${this.ms})`;
}

/** An edge that is down: the dial is refused, and time passes until that connection dials again. */
class RefusedThenRedial implements Cmd {
  constructor(readonly pick: number) {}
  check = (m: Readonly<Model>) => pickSlot(m, 'dialing', this.pick) !== undefined;
  async run(m: Model, r: Real) {
    const i = pickSlot(m, 'dialing', this.pick)!;
    await new DialFails(this.pick, 'refused', undefined).run(m, r);
    const retryAt = m.slots[i]!.retryAt;
    if (retryAt !== null) await new Advance(retryAt - m.now).run(m, r);
  }
  toString = () => `refusedThenRedial(${this.pick})`;
}

/**
 * Advances to just before (`offset` -1) or exactly to (0) the model's next timer: a machine timer armed
 * even 1 ms off the model's shows up as a status that differs.
 */
class AdvanceToNextTimer implements Cmd {
  constructor(readonly offset: -1 | 0) {}
  check = (m: Readonly<Model>) => nextTimerAt(m) !== null;
  async run(m: Model, r: Real) {
    const at = nextTimerAt(m)!;
    await new Advance(Math.max(0, at - m.now + this.offset)).run(m, r);
  }
  toString = () => `advanceToNextTimer(${this.offset})`;
}

function nextTimerAt(m: Readonly<Model>): number | null {
  const all = [m.nextLaunchAt, ...m.slots.flatMap((s) => [s.retryAt, s.healthyAt, s.graceAt])];
  const due = all.filter((t): t is number => t !== null);
  return due.length === 0 ? null : Math.min(...due);
}

class Shutdown implements Cmd {
  constructor(readonly mode: ShutdownMode) {}
  check = () => true;
  async run(m: Model, r: Real) {
    r.actor.send({ type: 'SHUTDOWN', mode: this.mode });
    shutdown(m, this.mode);
    await checkAfter(m, r, this);
  }
  toString = () => `shutdown(${this.mode})`;
}

const pickArb = fc.nat({ max: 7 });
const retryAfterArb = fc.option(fc.integer({ min: 1, max: 20_000 }), { nil: undefined });
const commandArbs: fc.Arbitrary<Cmd>[] = [
  pickArb.map((p) => new DialSucceeds(p)),
  pickArb.map((p) => new DialSucceeds(p)),
  fc
    .tuple(
      pickArb,
      fc.constantFrom<FailureKind>('retryable', 'retryable', 'refused', 'refused', 'fatal'),
      retryAfterArb,
    )
    .map(([p, kind, ra]) => new DialFails(p, kind, ra)),
  fc
    .tuple(
      pickArb,
      fc.constantFrom<ConnectionSignal['type']>('HEARTBEAT_LOST', 'SOCKET_CLOSED', 'DRAIN'),
      retryAfterArb,
    )
    .map(([p, signal, ra]) => new ConnectionSignalled(p, signal, ra)),
  pickArb.map((p) => new DrainSettles(p)),
  fc
    .oneof(fc.integer({ min: 0, max: 1200 }), fc.integer({ min: 0, max: 30_000 }))
    .map((ms) => new Advance(ms)),
  fc
    .oneof(fc.integer({ min: 0, max: 1200 }), fc.integer({ min: 0, max: 30_000 }))
    .map((ms) => new Advance(ms)),
  pickArb.map((p) => new RefusedThenRedial(p)),
  pickArb.map((p) => new RefusedThenRedial(p)),
  fc.constantFrom<-1 | 0>(-1, 0).map((offset) => new AdvanceToNextTimer(offset)),
  fc.constantFrom<-1 | 0>(-1, 0).map((offset) => new AdvanceToNextTimer(offset)),
  fc.constantFrom<ShutdownMode>('graceful', 'now').map((mode) => new Shutdown(mode)),
];

function setupRun(opts: {
  haConnections: number;
  staggerMs: number;
  maxRetries: number | undefined;
  seed: number;
}) {
  const clock = new ManualClock();
  // The fakes keep the `connect` contract described at the top of this file.
  const edge = new FakeEdge({ closeUnclaimed: true });
  const actor = createActor(edge.supervisorMachine(), {
    clock,
    input: {
      haConnections: opts.haConnections,
      staggerMs: opts.staggerMs,
      connection: {
        backoff: policy,
        gracePeriodMs,
        random: mulberry32(opts.seed),
        ...(opts.maxRetries === undefined ? {} : { maxRetries: opts.maxRetries }),
      },
    },
  });
  const model: Model = {
    haConnections: opts.haConnections,
    staggerMs: opts.staggerMs,
    maxRetries: opts.maxRetries ?? Number.POSITIVE_INFINITY,
    random: mulberry32(opts.seed),
    now: clock.now(),
    slots: Array.from({ length: opts.haConnections }, () => ({
      status: 'pending' as SlotStatus,
      attempts: 0,
      refusedInRow: 0,
      flatRetries: 0,
      retryAt: null,
      healthyAt: null,
      graceAt: null,
    })),
    launched: 0,
    nextLaunchAt: null,
    status: 'running',
    error: null,
  };
  actor.start();
  launch(model);
  while (opts.staggerMs === 0 && model.launched < opts.haConnections) launch(model);
  if (model.launched < opts.haConnections) model.nextLaunchAt = model.now + opts.staggerMs;
  return { model, real: { clock, edge, actor } satisfies Real };
}

describe('supervisor machine (model-based)', () => {
  it('follows the model under arbitrary dial outcomes, signals, drains, time and shutdowns', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 4 }),
        fc.constantFrom(0, 250, 1000),
        // Usually unlimited, so that runs live long enough to reach the later states.
        fc.option(fc.integer({ min: 0, max: 5 }), { nil: undefined, freq: 3 }),
        fc.integer(),
        fc.commands(commandArbs, { maxCommands: 60, size: 'max' }),
        fc.constantFrom<ShutdownMode>('graceful', 'now'),
        async (haConnections, staggerMs, maxRetries, seed, commands, finalMode) => {
          const { model, real } = setupRun({ haConnections, staggerMs, maxRetries, seed });
          checkInvariants(model, real, 'at start');
          await fc.asyncModelRun(() => ({ model, real }), commands);

          // Whatever happened, a shutdown ends it: `now` at once, `graceful` within the grace period.
          await new Shutdown(finalMode).run(model, real);
          if (model.status === 'stopping') await new Advance(gracePeriodMs).run(model, real);
          assert.ok(model.status === 'closed' || model.status === 'failed', `ended ${model.status}`);
          if (model.error) assert.equal(model.status, 'failed', 'a fatal error always ends in failed');
        },
      ),
      { numRuns: 250 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Races: registration answers, heartbeat loss, edge drains and shutdown, in every order.

/** `okThenShutdown`: registered, and a shutdown arrives before the machine has taken the connection. */
type Answer = 'ok' | 'okThenShutdown' | 'retryable' | 'refused' | 'fatal';

interface RaceConnection extends LiveConnection {
  connIndex: number;
  ended: boolean;
}

describe('supervisor machine (races)', () => {
  it('holds its invariants whatever order answers, losses and shutdown arrive in', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.scheduler(),
        fc.integer({ min: 1, max: 3 }),
        fc.array(
          fc.constantFrom<Answer>('ok', 'ok', 'ok', 'okThenShutdown', 'retryable', 'refused', 'fatal'),
          {
            maxLength: 8,
          },
        ),
        fc.array(
          fc.record({
            connIndex: fc.nat({ max: 2 }),
            what: fc.constantFrom('heartbeatLost', 'socketClosed', 'drain', 'advance'),
          }),
          { maxLength: 6 },
        ),
        fc.constantFrom<ShutdownMode>('graceful', 'now'),
        async (s, haConnections, answers, disturbances, mode) => {
          const clock = new ManualClock();
          const live = new Set<RaceConnection>();
          const watchers: { connIndex: number; active: boolean; sendBack(e: ConnectionSignal): void }[] = [];
          const pendingDials = new Map<number, (err: Error) => void>();
          let answered = 0;
          let nextId = 1;
          let fatalDelivered = false;

          const connection = connectionMachine.provide({
            actors: {
              connect: fromPromise<LiveConnection, ConnectInput>(({ input, signal }) => {
                // A dial ends once: the edge's answer, or an abandon (lost while registering, or aborted).
                let over = false;
                let abandon!: (err: Error) => void;
                const abandoned = new Promise<never>((_, reject) => {
                  abandon = (err) => {
                    over = true;
                    reject(err);
                  };
                });
                pendingDials.set(input.connIndex, abandon);
                signal.addEventListener('abort', () => abandon(signal.reason), { once: true });
                const answer = s
                  .schedule(Promise.resolve(answers[answered++] ?? 'ok'), `answer conn-${input.connIndex}`)
                  .then((a): LiveConnection => {
                    if (over) throw new Error('answer after the dial ended');
                    if (a === 'fatal') {
                      fatalDelivered = true;
                      throw new WarrenError('tunnel_deleted', 'gone');
                    }
                    if (a === 'refused') throw connectionRefused('connect ECONNREFUSED');
                    if (a === 'retryable')
                      throw new WarrenError('edge_draining', 'busy', { retryable: true });
                    const conn: RaceConnection = {
                      connectionId: `c${nextId++}`,
                      pop: 'lhr',
                      connIndex: input.connIndex,
                      ended: false,
                      abort() {
                        conn.ended = true;
                        live.delete(conn);
                      },
                    };
                    live.add(conn);
                    signal.addEventListener('abort', () => conn.abort(signal.reason), { once: true });
                    if (a === 'okThenShutdown') actor.send({ type: 'SHUTDOWN', mode });
                    return conn;
                  });
                return Promise.race([answer, abandoned]).finally(() => {
                  if (pendingDials.get(input.connIndex) === abandon) pendingDials.delete(input.connIndex);
                });
              }),
              watch: fromCallback<EventObject, WatchInput>(({ input, sendBack }) => {
                const w = {
                  connIndex: (input.connection as RaceConnection).connIndex,
                  active: true,
                  sendBack,
                };
                watchers.push(w);
                return () => {
                  w.active = false;
                };
              }),
              drain: fromPromise<void, DrainInput>(({ input }) =>
                s
                  .schedule(Promise.resolve(), `drain conn-${(input.connection as RaceConnection).connIndex}`)
                  .then(() => {
                    input.connection.abort(new Error('drained'));
                  }),
              ),
            },
          });
          const actor = createActor(supervisorMachine.provide({ actors: { connection } }), {
            clock,
            input: {
              haConnections,
              staggerMs: 0,
              connection: { backoff: policy, gracePeriodMs, random: mulberry32(1) },
            },
          });
          actor.start();

          const check = (where: string) => {
            const snapshot = actor.getSnapshot();
            const view = supervisorView(snapshot);
            assert.ok(view.connected <= haConnections, where);
            const seen = new Set<number>();
            for (const conn of live) {
              assert.ok(!seen.has(conn.connIndex), `conn-${conn.connIndex} twice ${where}`);
              seen.add(conn.connIndex);
              const held = snapshot.context.children[conn.connIndex]?.getSnapshot().context.connection;
              assert.equal(held, conn, `conn-${conn.connIndex} open and held by nobody ${where}`);
            }
          };

          for (const d of disturbances) {
            void s.schedule(Promise.resolve(), d.what).then(() => {
              if (d.what === 'advance') {
                clock.advance(1000);
                return;
              }
              const w = watchers.find((x) => x.active && x.connIndex === d.connIndex % haConnections);
              if (w) {
                w.sendBack(
                  d.what === 'heartbeatLost'
                    ? { type: 'HEARTBEAT_LOST' }
                    : d.what === 'drain'
                      ? { type: 'DRAIN' }
                      : { type: 'SOCKET_CLOSED' },
                );
              } else {
                // Lost while registering: the dial fails the way the closed session makes it fail.
                pendingDials.get(d.connIndex % haConnections)?.(
                  new WarrenError('heartbeat_timeout', 'silent edge', { retryable: true }),
                );
              }
            });
          }
          void s.schedule(Promise.resolve(), `shutdown ${mode}`).then(() => {
            actor.send({ type: 'SHUTDOWN', mode });
          });

          while (s.count() > 0) {
            await s.waitOne();
            await flush();
            check(`after ${s.report().at(-1)?.label ?? '?'}`);
          }
          await flush();
          // Retry timers of connections that were reconnecting went with the shutdown; a graceful one may
          // still wait on drains, which the scheduler has settled by now, or on the grace period.
          clock.advance(gracePeriodMs);
          await flush();

          const snapshot = actor.getSnapshot();
          assert.equal(
            snapshot.status,
            'done',
            `supervisor still ${supervisorStatus(snapshot)}\n${s
              .report()
              .map((r) => r.label)
              .join(' → ')}`,
          );
          // A fatal answer the machine saw (before the shutdown, or it would have been abandoned) wins.
          assert.equal(supervisorStatus(snapshot), fatalDelivered ? 'failed' : 'closed');
          if (fatalDelivered) {
            assert.ok(
              snapshot.output?.status === 'failed' && isWarrenError(snapshot.output.error, 'tunnel_deleted'),
            );
          } else assert.deepEqual(snapshot.output, { status: 'closed' });
          assert.equal(live.size, 0, 'no connection left open');
          assert.equal(watchers.filter((w) => w.active).length, 0, 'no watcher left');
          assert.equal(clock.pendingTimers, 0, 'no timer left');
          assert.equal(pendingDials.size, 0, 'no dial left');
        },
      ),
      { numRuns: 300 },
    );
  });
});
