import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { createActor, fromPromise } from 'xstate';
import type { DnsJanitorEvent, FireCleanupInput } from '../../src/actors/dns-janitor.machine.ts';
import {
  DEFAULT_RETRY_DELAY_MS,
  dnsJanitorMachine,
  dnsJanitorStatus,
  MAX_TIMER_DELAY_MS,
} from '../../src/actors/dns-janitor.machine.ts';
import { ManualClock } from '../../src/shared/clock.ts';

const HOUR_MS = 3_600_000;

/** Remembers every delay asked for, to show that no single timer is longer than Node allows. */
class RecordingClock extends ManualClock {
  readonly delays: number[] = [];
  override setTimeout(fn: () => void, delayMs: number): unknown {
    this.delays.push(delayMs);
    return super.setTimeout(fn, delayMs);
  }
}

interface Fire {
  input: FireCleanupInput;
  /** Clock time the janitor invoked `fireCleanup`. */
  at: number;
  signal: AbortSignal;
  settled: boolean;
  succeed(): void;
  fail(err?: Error): void;
}

/** Lets settled promises reach the machine: one macrotask turn drains every queued microtask. */
const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

function start(opts: { retryDelayMs?: number; provide?: boolean; pending?: FireCleanupInput[] } = {}) {
  const clock = new RecordingClock();
  const fires: Fire[] = [];
  const machine =
    opts.provide === false
      ? dnsJanitorMachine
      : dnsJanitorMachine.provide({
          actors: {
            fireCleanup: fromPromise<void, FireCleanupInput>(
              ({ input, signal }) =>
                new Promise<void>((resolve, reject) => {
                  const fire: Fire = {
                    input,
                    at: clock.now(),
                    signal,
                    settled: false,
                    succeed: () => {
                      assert.ok(!fire.settled, 'fire already settled');
                      fire.settled = true;
                      resolve();
                    },
                    fail: (err = new Error('event log unavailable')) => {
                      assert.ok(!fire.settled, 'fire already settled');
                      fire.settled = true;
                      reject(err);
                    },
                  };
                  fires.push(fire);
                }),
            ),
          },
        });
  const actor = createActor(machine, {
    clock,
    input: {
      now: () => clock.now(),
      ...(opts.retryDelayMs === undefined ? {} : { retryDelayMs: opts.retryDelayMs }),
      ...(opts.pending === undefined ? {} : { pending: opts.pending }),
    },
  });
  actor.start();
  const t0 = clock.now();
  const send = (event: DnsJanitorEvent) => actor.send(event);
  const schedule = (tunnelId: string, dueAt: number) => send({ type: 'SCHEDULE', tunnelId, dueAt });
  const cancel = (tunnelId: string) => send({ type: 'CANCEL', tunnelId });
  const status = () => dnsJanitorStatus(actor.getSnapshot());
  const pending = () =>
    [...actor.getSnapshot().context.pending].map(([tunnelId, e]) => ({ tunnelId, dueAt: e.dueAt }));
  const lastFire = () => {
    const fire = fires.at(-1);
    assert.ok(fire, 'no fire yet');
    return fire;
  };
  const succeed = async () => {
    lastFire().succeed();
    await flush();
  };
  const fail = async (err?: Error) => {
    lastFire().fail(err);
    await flush();
  };
  const fired = () => fires.map((f) => f.input.tunnelId);
  return { clock, t0, actor, fires, schedule, cancel, status, pending, lastFire, succeed, fail, fired };
}

describe('dns janitor machine', () => {
  it('starts idle with no timer', () => {
    const t = start();
    assert.equal(t.status(), 'idle');
    assert.equal(t.clock.pendingTimers, 0);
    t.actor.stop();
  });

  it('takes the deadlines known at start as if each had been scheduled', async () => {
    const t0 = new ManualClock().now();
    const t = start({
      pending: [
        { tunnelId: 'later', dueAt: t0 + 2 * HOUR_MS },
        { tunnelId: 'overdue', dueAt: t0 - HOUR_MS },
        { tunnelId: 'soon', dueAt: t0 + HOUR_MS },
        { tunnelId: 'broken', dueAt: Number.NaN },
      ],
    });
    assert.deepEqual(t.fired(), ['overdue'], 'an overdue deadline fires at start');
    await t.succeed();
    assert.equal(t.status(), 'waiting');
    assert.deepEqual(
      t.pending().map((p) => p.tunnelId),
      ['later', 'soon'],
      'a non-finite deadline is ignored, as SCHEDULE ignores it',
    );
    t.clock.advance(HOUR_MS);
    assert.deepEqual(t.fired(), ['overdue', 'soon']);
    await t.succeed();
    t.clock.advance(HOUR_MS);
    assert.deepEqual(t.fired(), ['overdue', 'soon', 'later']);
    await t.succeed();
    assert.equal(t.status(), 'idle');
    t.actor.stop();
  });

  it('never fires early: not at dueAt - 1, once at dueAt', async () => {
    const t = start();
    const dueAt = t.t0 + 24 * HOUR_MS;
    t.schedule('t1', dueAt);
    assert.equal(t.status(), 'waiting');
    assert.equal(t.clock.pendingTimers, 1);

    t.clock.advance(24 * HOUR_MS - 1);
    assert.equal(t.fires.length, 0);
    assert.equal(t.status(), 'waiting');

    t.clock.advance(1);
    assert.equal(t.fires.length, 1);
    assert.deepEqual(t.lastFire().input, { tunnelId: 't1', dueAt });
    assert.equal(t.lastFire().at, dueAt);
    assert.equal(t.status(), 'firing');
    assert.equal(t.clock.pendingTimers, 0, 'no timer while firing');

    await t.succeed();
    assert.equal(t.status(), 'idle');
    assert.deepEqual(t.pending(), []);
    assert.equal(t.clock.pendingTimers, 0);
    t.clock.advance(48 * HOUR_MS);
    await flush();
    assert.equal(t.fires.length, 1, 'fired once only');
    t.actor.stop();
  });

  it('fires at once for a deadline already past, e.g. after a restart that lasted past it', () => {
    const t = start();
    t.schedule('t1', t.t0 - HOUR_MS);
    assert.equal(t.status(), 'firing');
    assert.deepEqual(t.lastFire().input, { tunnelId: 't1', dueAt: t.t0 - HOUR_MS });
    t.actor.stop();
  });

  it('fires several tunnels in dueAt order, each at its deadline', async () => {
    const t = start();
    t.schedule('c', t.t0 + 3 * HOUR_MS);
    t.schedule('a', t.t0 + 1 * HOUR_MS);
    t.schedule('b', t.t0 + 2 * HOUR_MS);
    assert.equal(t.clock.pendingTimers, 1, 'one timer, for the earliest');
    for (const [i, id] of ['a', 'b', 'c'].entries()) {
      t.clock.advance(HOUR_MS);
      assert.deepEqual(t.fired().slice(i), [id]);
      assert.equal(t.lastFire().at, t.t0 + (i + 1) * HOUR_MS);
      await t.succeed();
    }
    assert.equal(t.status(), 'idle');
    t.actor.stop();
  });

  it('after one long advance, fires every due tunnel one at a time in dueAt order', async () => {
    const t = start();
    t.schedule('c', t.t0 + 30 * HOUR_MS);
    t.schedule('a', t.t0 + 25 * HOUR_MS);
    t.schedule('b', t.t0 + 26 * HOUR_MS);
    t.schedule('later', t.t0 + 47 * HOUR_MS);
    t.clock.advance(40 * HOUR_MS);
    assert.deepEqual(t.fired(), ['a']);
    await t.succeed();
    assert.deepEqual(t.fired(), ['a', 'b'], 'the next due one fires as soon as the previous is done');
    await t.succeed();
    assert.deepEqual(t.fired(), ['a', 'b', 'c']);
    await t.succeed();
    assert.equal(t.status(), 'waiting');
    assert.deepEqual(t.pending(), [{ tunnelId: 'later', dueAt: t.t0 + 47 * HOUR_MS }]);
    t.clock.advance(7 * HOUR_MS);
    assert.deepEqual(t.fired(), ['a', 'b', 'c', 'later']);
    t.actor.stop();
  });

  it('a re-schedule moves the deadline later', () => {
    const t = start();
    t.schedule('t1', t.t0 + 2 * HOUR_MS);
    t.schedule('t1', t.t0 + 5 * HOUR_MS);
    assert.equal(t.clock.pendingTimers, 1);
    t.clock.advance(5 * HOUR_MS - 1);
    assert.equal(t.fires.length, 0);
    t.clock.advance(1);
    assert.deepEqual(t.lastFire().input, { tunnelId: 't1', dueAt: t.t0 + 5 * HOUR_MS });
    t.actor.stop();
  });

  it('a re-schedule moves the deadline earlier', () => {
    const t = start();
    t.schedule('t1', t.t0 + 5 * HOUR_MS);
    t.schedule('t1', t.t0 + 1 * HOUR_MS);
    assert.equal(t.clock.pendingTimers, 1);
    t.clock.advance(HOUR_MS);
    assert.deepEqual(t.lastFire().input, { tunnelId: 't1', dueAt: t.t0 + HOUR_MS });
    assert.equal(t.fires.length, 1);
    t.actor.stop();
  });

  it('keeps the armed timer when a change leaves the earliest deadline where it was', () => {
    const t = start();
    t.schedule('a', t.t0 + HOUR_MS);
    const timers = t.clock.delays.length;
    t.schedule('b', t.t0 + 2 * HOUR_MS);
    t.schedule('a', t.t0 + HOUR_MS);
    t.cancel('b');
    t.cancel('nobody');
    assert.equal(t.clock.delays.length, timers, 'no timer re-armed');
    t.schedule('c', t.t0 + HOUR_MS / 2);
    assert.equal(t.clock.delays.length, timers + 1, 're-armed for the new earliest');
    assert.equal(t.clock.pendingTimers, 1);
    t.actor.stop();
  });

  it('a cancel before the deadline means it never fires', async () => {
    const t = start();
    t.schedule('a', t.t0 + HOUR_MS);
    t.schedule('b', t.t0 + 2 * HOUR_MS);
    t.cancel('a');
    t.clock.advance(HOUR_MS);
    assert.equal(t.fires.length, 0);
    t.cancel('b');
    assert.equal(t.status(), 'idle');
    assert.equal(t.clock.pendingTimers, 0);
    t.clock.advance(96 * HOUR_MS);
    await flush();
    assert.equal(t.fires.length, 0);
    t.actor.stop();
  });

  it('a SCHEDULE during a fire wins: the new deadline stays and fires later', async () => {
    const t = start();
    const first = t.t0 + HOUR_MS;
    const second = t.t0 + 30 * HOUR_MS;
    t.schedule('t1', first);
    t.clock.advance(HOUR_MS);
    assert.equal(t.status(), 'firing');
    t.schedule('t1', second);
    t.schedule('other', t.t0 + 40 * HOUR_MS);
    assert.equal(t.status(), 'firing', 'changes while firing only update the entries');
    assert.equal(t.clock.pendingTimers, 0);
    await t.succeed();
    assert.equal(t.status(), 'waiting');
    assert.deepEqual(t.pending(), [
      { tunnelId: 't1', dueAt: second },
      { tunnelId: 'other', dueAt: t.t0 + 40 * HOUR_MS },
    ]);
    t.clock.advance(29 * HOUR_MS - 1);
    assert.equal(t.fires.length, 1);
    t.clock.advance(1);
    assert.deepEqual(t.lastFire().input, { tunnelId: 't1', dueAt: second });
    t.actor.stop();
  });

  it('the same deadline scheduled again during its fire is settled by that fire', async () => {
    const t = start();
    const dueAt = t.t0 + HOUR_MS;
    t.schedule('t1', dueAt);
    t.clock.advance(HOUR_MS);
    t.schedule('t1', dueAt);
    await t.succeed();
    assert.equal(t.status(), 'idle');
    assert.equal(t.fires.length, 1);
    t.actor.stop();
  });

  it('a tunnel that became due during a fire fires right after it', async () => {
    const t = start();
    t.schedule('a', t.t0 + HOUR_MS);
    t.clock.advance(HOUR_MS);
    t.schedule('b', t.t0 - 1);
    await t.succeed();
    assert.deepEqual(t.fired(), ['a', 'b']);
    t.actor.stop();
  });

  it('a CANCEL during a fire does not abort it, and the entry is not fired again', async () => {
    const t = start();
    t.schedule('t1', t.t0 + HOUR_MS);
    t.clock.advance(HOUR_MS);
    const fire = t.lastFire();
    t.cancel('t1');
    assert.equal(t.status(), 'firing');
    assert.equal(fire.signal.aborted, false);
    await t.succeed();
    assert.equal(t.status(), 'idle');
    t.clock.advance(96 * HOUR_MS);
    await flush();
    assert.equal(t.fires.length, 1);
    t.actor.stop();
  });

  it('a cancelled entry whose fire fails is not retried', async () => {
    const t = start({ retryDelayMs: 1000 });
    t.schedule('t1', t.t0 + HOUR_MS);
    t.clock.advance(HOUR_MS);
    t.cancel('t1');
    await t.fail();
    assert.equal(t.status(), 'idle');
    assert.equal(t.clock.pendingTimers, 0);
    t.clock.advance(HOUR_MS);
    await flush();
    assert.equal(t.fires.length, 1);
    t.actor.stop();
  });

  it('after a failure keeps the entry and retries after retryDelayMs, then succeeds', async () => {
    const retryDelayMs = 60_000;
    const t = start({ retryDelayMs });
    const dueAt = t.t0 + HOUR_MS;
    t.schedule('t1', dueAt);
    t.clock.advance(HOUR_MS);
    await t.fail();
    assert.equal(t.status(), 'backingOff');
    assert.deepEqual(t.pending(), [{ tunnelId: 't1', dueAt }]);
    assert.equal(t.actor.getSnapshot().context.pending.get('t1')?.failures, 1);

    t.clock.advance(retryDelayMs - 1);
    assert.equal(t.fires.length, 1);
    t.clock.advance(1);
    assert.equal(t.fires.length, 2);
    assert.deepEqual(t.lastFire().input, { tunnelId: 't1', dueAt });
    assert.equal(t.lastFire().at, dueAt + retryDelayMs);

    await t.succeed();
    assert.equal(t.status(), 'idle');
    assert.deepEqual(t.pending(), []);
    assert.equal(t.clock.pendingTimers, 0);
    t.actor.stop();
  });

  it('retries after 30 s by default', async () => {
    const t = start();
    t.schedule('t1', t.t0);
    await t.fail();
    t.clock.advance(DEFAULT_RETRY_DELAY_MS - 1);
    assert.equal(t.fires.length, 1);
    t.clock.advance(1);
    assert.equal(t.fires.length, 2);
    t.actor.stop();
  });

  it('a failing tunnel takes turns with the other due ones instead of blocking them', async () => {
    const retryDelayMs = 1000;
    const t = start({ retryDelayMs });
    t.schedule('bad', t.t0 + HOUR_MS);
    t.schedule('good1', t.t0 + HOUR_MS + 1);
    t.schedule('good2', t.t0 + HOUR_MS + 2);
    t.clock.advance(2 * HOUR_MS);
    assert.deepEqual(t.fired(), ['bad']);
    await t.fail();
    t.clock.advance(retryDelayMs);
    assert.deepEqual(t.fired(), ['bad', 'good1'], 'the entry that failed goes behind the others');
    await t.succeed();
    assert.deepEqual(t.fired(), ['bad', 'good1', 'good2']);
    await t.succeed();
    assert.deepEqual(t.fired(), ['bad', 'good1', 'good2', 'bad']);
    await t.fail();
    t.clock.advance(retryDelayMs);
    assert.deepEqual(t.fired().at(-1), 'bad');
    await t.succeed();
    assert.equal(t.status(), 'idle');
    t.actor.stop();
  });

  it('changes while backing off wait for the retry delay', async () => {
    const retryDelayMs = 1000;
    const t = start({ retryDelayMs });
    t.schedule('a', t.t0);
    await t.fail();
    t.schedule('b', t.t0);
    assert.equal(t.status(), 'backingOff');
    assert.equal(t.fires.length, 1);
    t.cancel('a');
    t.clock.advance(retryDelayMs);
    assert.deepEqual(t.fired(), ['a', 'b']);
    await t.succeed();
    t.cancel('b');
    assert.equal(t.status(), 'idle');
    t.actor.stop();
  });

  it('backing off ends at once when the last entry is cancelled', async () => {
    const t = start();
    t.schedule('a', t.t0);
    await t.fail();
    t.cancel('a');
    assert.equal(t.status(), 'idle');
    assert.equal(t.clock.pendingTimers, 0);
    t.actor.stop();
  });

  it('fires a 48 h deadline within one clock.advance(48 h)', () => {
    const t = start();
    t.schedule('t1', t.t0 + 48 * HOUR_MS);
    t.clock.advance(48 * HOUR_MS);
    assert.deepEqual(t.lastFire().input, { tunnelId: 't1', dueAt: t.t0 + 48 * HOUR_MS });
    assert.equal(t.lastFire().at, t.t0 + 48 * HOUR_MS);
    t.actor.stop();
  });

  it('reaches deadlines beyond 2^31-1 ms in timer steps Node can hold, still never early', () => {
    const t = start();
    const distance = 3 * MAX_TIMER_DELAY_MS + 5;
    t.schedule('far', t.t0 + distance);
    assert.equal(t.clock.pendingTimers, 1);
    t.clock.advance(distance - 1);
    assert.equal(t.fires.length, 0);
    assert.equal(t.status(), 'waiting');
    assert.equal(t.clock.pendingTimers, 1);
    t.clock.advance(1);
    assert.deepEqual(t.lastFire().input, { tunnelId: 'far', dueAt: t.t0 + distance });
    assert.ok(t.clock.delays.length >= 4, `armed in steps: ${t.clock.delays}`);
    for (const d of t.clock.delays) assert.ok(d >= 0 && d <= MAX_TIMER_DELAY_MS, `timer of ${d} ms`);
    t.actor.stop();
  });

  it('a nearer deadline scheduled during a long step is not held up by it', () => {
    const t = start();
    t.schedule('far', t.t0 + 10 * MAX_TIMER_DELAY_MS);
    t.clock.advance(HOUR_MS);
    t.schedule('near', t.t0 + 2 * HOUR_MS);
    t.clock.advance(HOUR_MS);
    assert.deepEqual(t.fired(), ['near']);
    t.actor.stop();
  });

  it('STOP while waiting: final `stopped`, no timer left, nothing fires', async () => {
    const t = start();
    t.schedule('a', t.t0 + HOUR_MS);
    t.schedule('b', t.t0 + 2 * HOUR_MS);
    t.actor.send({ type: 'STOP' });
    assert.equal(t.status(), 'stopped');
    assert.equal(t.actor.getSnapshot().status, 'done');
    assert.equal(t.clock.pendingTimers, 0);
    t.clock.advance(96 * HOUR_MS);
    t.schedule('c', t.t0);
    await flush();
    assert.equal(t.fires.length, 0);
  });

  it('STOP while firing stops the fire (its signal aborts) and leaves no timer', async () => {
    const t = start();
    t.schedule('a', t.t0 + HOUR_MS);
    t.schedule('b', t.t0 + 2 * HOUR_MS);
    t.clock.advance(HOUR_MS);
    const fire = t.lastFire();
    t.actor.send({ type: 'STOP' });
    assert.equal(t.status(), 'stopped');
    assert.equal(fire.signal.aborted, true);
    assert.equal(t.clock.pendingTimers, 0);
    fire.succeed();
    await flush();
    assert.equal(t.status(), 'stopped');
    assert.equal(t.fires.length, 1);
  });

  it('STOP while backing off leaves no timer', async () => {
    const t = start();
    t.schedule('a', t.t0);
    await t.fail();
    assert.equal(t.clock.pendingTimers, 1);
    t.actor.send({ type: 'STOP' });
    assert.equal(t.status(), 'stopped');
    assert.equal(t.clock.pendingTimers, 0);
  });

  it('actor.stop() also leaves no timer', () => {
    const t = start();
    t.schedule('a', t.t0 + HOUR_MS);
    t.actor.stop();
    assert.equal(t.clock.pendingTimers, 0);
  });

  it('takes "__proto__" and other Object.prototype names as plain tunnel ids', async () => {
    const t = start();
    t.schedule('__proto__', t.t0 + HOUR_MS);
    t.schedule('constructor', t.t0 + 2 * HOUR_MS);
    t.schedule('hasOwnProperty', t.t0 + 3 * HOUR_MS);
    assert.deepEqual(
      t.pending().map((p) => p.tunnelId),
      ['__proto__', 'constructor', 'hasOwnProperty'],
    );
    t.cancel('hasOwnProperty');
    t.clock.advance(HOUR_MS);
    assert.deepEqual(t.lastFire().input, { tunnelId: '__proto__', dueAt: t.t0 + HOUR_MS });
    await t.succeed();
    t.clock.advance(2 * HOUR_MS);
    await t.succeed();
    assert.deepEqual(t.fired(), ['__proto__', 'constructor']);
    assert.equal(t.status(), 'idle');
    assert.equal(Object.getPrototypeOf({}), Object.prototype);
    assert.equal(({} as Record<string, unknown>).dueAt, undefined, 'Object.prototype untouched');
    t.actor.stop();
  });

  it('ignores a SCHEDULE whose dueAt is not a finite number', () => {
    const t = start();
    t.schedule('nan', Number.NaN);
    t.schedule('inf', Number.POSITIVE_INFINITY);
    assert.equal(t.status(), 'idle');
    assert.deepEqual(t.pending(), []);
    assert.equal(t.clock.pendingTimers, 0);
    t.actor.stop();
  });

  it('without a provided fireCleanup, fires fail with "not provided" and are retried', async () => {
    const t = start({ provide: false });
    const errors: unknown[] = [];
    t.actor.subscribe({ error: (err) => errors.push(err) });
    t.schedule('t1', t.t0);
    await flush();
    assert.equal(t.status(), 'backingOff');
    assert.deepEqual(t.pending(), [{ tunnelId: 't1', dueAt: t.t0 }]);
    assert.deepEqual(errors, []);
    t.actor.send({ type: 'STOP' });
    assert.equal(t.clock.pendingTimers, 0);
  });

  it('the default fireCleanup rejects with "not provided"', async () => {
    const clock = new ManualClock();
    const failures: unknown[] = [];
    const actor = createActor(dnsJanitorMachine, { clock, input: { now: () => clock.now() } });
    actor.system.inspect((e) => {
      if (e.type === '@xstate.event' && e.event.type.startsWith('xstate.error.actor')) {
        failures.push((e.event as { error?: unknown }).error);
      }
    });
    actor.start();
    actor.send({ type: 'SCHEDULE', tunnelId: 't1', dueAt: clock.now() });
    await flush();
    assert.equal(failures.length, 1);
    assert.match(String((failures[0] as Error).message), /not provided/);
    actor.stop();
  });
});

// ---------------------------------------------------------------------------------------------
// Arbitrary sequences of SCHEDULE / CANCEL / clock advances / settling, with fires that succeed or
// fail at random, checked against a model of the pending deadlines.

type Command =
  | { kind: 'schedule'; tunnelId: string; offsetMs: number }
  | { kind: 'cancel'; tunnelId: string }
  | { kind: 'advance'; ms: number }
  | { kind: 'settle' };

const tunnelIdArb = fc.constantFrom('a', 'b', 'c', '__proto__', 'constructor');
const commandArb: fc.Arbitrary<Command> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc
      .record({
        tunnelId: tunnelIdArb,
        offsetMs: fc.oneof(fc.integer({ min: -HOUR_MS, max: 48 * HOUR_MS }), fc.integer({ min: 0, max: 10 })),
      })
      .map((r): Command => ({ kind: 'schedule', ...r })),
  },
  { weight: 2, arbitrary: tunnelIdArb.map((tunnelId): Command => ({ kind: 'cancel', tunnelId })) },
  {
    weight: 4,
    arbitrary: fc
      .oneof(fc.integer({ min: 0, max: 10 }), fc.integer({ min: 0, max: 30 * HOUR_MS }))
      .map((ms): Command => ({ kind: 'advance', ms })),
  },
  { weight: 3, arbitrary: fc.constant<Command>({ kind: 'settle' }) },
);

describe('dns janitor machine, property', () => {
  it('fires each deadline once, never early, only while it is pending', async () => {
    const retryDelayMs = 30_000;
    await fc.assert(
      fc.asyncProperty(
        fc.array(commandArb, { maxLength: 40 }),
        fc.array(fc.boolean(), { minLength: 1, maxLength: 8 }),
        async (commands, failPattern) => {
          const clock = new ManualClock();
          /** The model: each deadline is a generation; a new dueAt for a tunnel is a new one. */
          const model = new Map<string, { dueAt: number; gen: number }>();
          const succeeded = new Map<number, number>();
          /** Generations that ended by CANCEL or replacement, so owe no fire. */
          const withdrawn = new Set<number>();
          let nextGen = 1;
          let inFlight = 0;
          let fireCount = 0;
          let failing = true;
          const violations: string[] = [];

          const machine = dnsJanitorMachine.provide({
            actors: {
              fireCleanup: fromPromise<void, FireCleanupInput>(async ({ input }) => {
                // A throw in here would only count as a failed fire, so violations are collected.
                const entry = model.get(input.tunnelId);
                if (!entry) {
                  violations.push(`fired ${input.tunnelId}, which is not pending`);
                  return;
                }
                if (entry.dueAt !== input.dueAt) violations.push(`fired ${input.tunnelId} for a stale dueAt`);
                if (clock.now() < input.dueAt) violations.push(`fired ${input.dueAt - clock.now()} ms early`);
                if (inFlight !== 0) violations.push('two fires at once');
                inFlight++;
                const fail = failing && failPattern[fireCount++ % failPattern.length] === true;
                await Promise.resolve();
                inFlight--;
                if (fail) throw new Error('event log unavailable');
                succeeded.set(entry.gen, (succeeded.get(entry.gen) ?? 0) + 1);
                if (model.get(input.tunnelId)?.gen === entry.gen) model.delete(input.tunnelId);
              }),
            },
          });
          const actor = createActor(machine, { clock, input: { now: () => clock.now(), retryDelayMs } });
          actor.start();

          for (const c of commands) {
            switch (c.kind) {
              case 'schedule': {
                const dueAt = clock.now() + c.offsetMs;
                const prev = model.get(c.tunnelId);
                if (prev?.dueAt !== dueAt) {
                  if (prev) withdrawn.add(prev.gen);
                  model.set(c.tunnelId, { dueAt, gen: nextGen++ });
                }
                actor.send({ type: 'SCHEDULE', tunnelId: c.tunnelId, dueAt });
                break;
              }
              case 'cancel': {
                const prev = model.get(c.tunnelId);
                if (prev) withdrawn.add(prev.gen);
                model.delete(c.tunnelId);
                actor.send({ type: 'CANCEL', tunnelId: c.tunnelId });
                break;
              }
              case 'advance':
                clock.advance(c.ms);
                break;
              case 'settle':
                await flush();
                break;
              default: {
                const unreachable: never = c;
                throw new Error(`unknown command ${JSON.stringify(unreachable)}`);
              }
            }
          }

          // Past every deadline and retry, with fires that now succeed, everything pending is done.
          failing = false;
          for (let i = 0; i < 10 && model.size > 0; i++) {
            await flush();
            clock.advance(49 * HOUR_MS + retryDelayMs);
            await flush();
          }
          await flush();

          assert.deepEqual(violations, []);
          assert.equal(model.size, 0, `still pending: ${[...model.keys()]}`);
          assert.equal(actor.getSnapshot().context.pending.size, 0);
          assert.equal(dnsJanitorStatus(actor.getSnapshot()), 'idle');
          assert.equal(clock.pendingTimers, 0);
          for (const [gen, n] of succeeded) assert.equal(n, 1, `generation ${gen} fired ${n} times`);
          for (let gen = 1; gen < nextGen; gen++) {
            if (!withdrawn.has(gen)) assert.equal(succeeded.get(gen), 1, `generation ${gen} never fired`);
          }
          actor.send({ type: 'STOP' });
          assert.equal(clock.pendingTimers, 0);
        },
      ),
      { numRuns: 200 },
    );
  });
});
