/**
 * The visitor hold on a manual clock: held requests go on when a connection registers, time out,
 * stay within their bounds, are let go when the visitor leaves or the edge closes, and leave no timer
 * behind.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RoutingTable } from '../../src/edge/routing.ts';
import { type HoldOutcome, VisitorHold, type VisitorHoldSettings } from '../../src/edge/visitor-hold.ts';
import { ManualClock } from '../../src/shared/clock.ts';

const settings: VisitorHoldSettings = { timeoutMs: 5000, recentMs: 15_000, maxPerTunnel: 3, maxTotal: 5 };

function setup(overrides: Partial<VisitorHoldSettings> = {}) {
  const clock = new ManualClock();
  const lastSeen = new Map<string, number>();
  const outcomes: HoldOutcome[] = [];
  const heldCounts: number[] = [];
  const hold = new VisitorHold(
    {
      clock,
      lastConnectedAt: (id) => lastSeen.get(id),
      onOutcome: (o) => outcomes.push(o),
      onHeldChange: (n) => heldCounts.push(n),
    },
    { ...settings, ...overrides },
  );
  return { clock, lastSeen, outcomes, heldCounts, hold };
}

/** Whether a promise has settled, without waiting for it. */
async function settled<T>(p: Promise<T>): Promise<{ value: T } | undefined> {
  const marker = Symbol('pending');
  const v = await Promise.race([p, Promise.resolve().then(() => marker)]);
  return v === marker ? undefined : { value: v as T };
}

describe('VisitorHold', () => {
  it('lets a held request go on as soon as a connection of its tunnel registers', async () => {
    const { clock, lastSeen, hold, outcomes } = setup();
    lastSeen.set('t1', clock.now());
    const waiting = hold.wait('t1');
    clock.advance(1000);
    assert.equal(await settled(waiting), undefined, 'still held after 1 s');
    assert.equal(hold.held, 1);
    hold.connected('t2');
    assert.equal(await settled(waiting), undefined, "another tunnel's connection does not release it");
    hold.connected('t1');
    assert.equal(await waiting, 'connected');
    assert.equal(hold.held, 0);
    assert.deepEqual(outcomes, ['connected']);
    assert.equal(clock.pendingTimers, 0, 'the timeout timer is cleared');
  });

  it('answers timeout once the hold time has passed, not before', async () => {
    const { clock, lastSeen, hold } = setup();
    lastSeen.set('t1', clock.now());
    const waiting = hold.wait('t1');
    clock.advance(4999);
    assert.equal(await settled(waiting), undefined);
    clock.advance(1);
    assert.equal(await waiting, 'timeout');
    assert.equal(hold.held, 0);
  });

  it('does not hold for a tunnel never seen or gone longer than recentMs', async () => {
    const { clock, lastSeen, hold } = setup();
    assert.equal(await hold.wait('never'), 'not_recent');
    lastSeen.set('old', clock.now() - 15_001);
    assert.equal(await hold.wait('old'), 'not_recent');
    lastSeen.set('edge', clock.now() - 15_000);
    const waiting = hold.wait('edge');
    assert.equal(await settled(waiting), undefined, 'exactly recentMs ago still counts');
    hold.close();
    assert.equal(await waiting, 'closed');
  });

  it('holds nothing when the hold time is 0', async () => {
    const { clock, lastSeen, hold } = setup({ timeoutMs: 0 });
    lastSeen.set('t1', clock.now());
    assert.equal(await hold.wait('t1'), 'not_recent');
    assert.equal(clock.pendingTimers, 0);
  });

  it('bounds held requests per tunnel and in total; past them the answer is full at once', async () => {
    const { clock, lastSeen, hold } = setup();
    for (const id of ['a', 'b']) lastSeen.set(id, clock.now());
    const a = [hold.wait('a'), hold.wait('a'), hold.wait('a')];
    assert.equal(await hold.wait('a'), 'full', 'the fourth for one tunnel');
    const b = [hold.wait('b'), hold.wait('b')];
    assert.equal(hold.held, 5);
    assert.equal(await hold.wait('b'), 'full', 'the sixth in total');
    hold.connected('a');
    assert.deepEqual(await Promise.all(a), ['connected', 'connected', 'connected']);
    const again = hold.wait('b');
    assert.equal(await settled(again), undefined, 'room again once some left');
    hold.connected('b');
    assert.deepEqual(await Promise.all([...b, again]), ['connected', 'connected', 'connected']);
    assert.equal(clock.pendingTimers, 0);
  });

  it('lets go of a request whose visitor went away, and frees its place', async () => {
    const { clock, lastSeen, hold, heldCounts } = setup({ maxPerTunnel: 1 });
    lastSeen.set('t1', clock.now());
    const ac = new AbortController();
    const waiting = hold.wait('t1', ac.signal);
    ac.abort();
    assert.equal(await waiting, 'cancelled');
    assert.equal(hold.held, 0);
    assert.deepEqual(heldCounts, [1, 0]);
    assert.equal(clock.pendingTimers, 0);
    const aborted = new AbortController();
    aborted.abort();
    assert.equal(await hold.wait('t1', aborted.signal), 'cancelled');
    const next = hold.wait('t1');
    hold.connected('t1');
    assert.equal(await next, 'connected');
  });

  it('after close holds nothing and answers closed', async () => {
    const { clock, lastSeen, hold } = setup();
    lastSeen.set('t1', clock.now());
    const waiting = [hold.wait('t1'), hold.wait('t1')];
    hold.close();
    assert.deepEqual(await Promise.all(waiting), ['closed', 'closed']);
    assert.equal(await hold.wait('t1'), 'closed');
    assert.equal(clock.pendingTimers, 0);
  });
});

describe('RoutingTable.lastLiveAt', () => {
  const session = { goingAway: false, activeStreams: 0 } as never;
  it('is now while a tunnel has a connection, then the time its last one left', () => {
    const clock = new ManualClock();
    const added: string[] = [];
    const routing = new RoutingTable(() => undefined, {
      now: () => clock.now(),
      onAdded: (c) => added.push(c.connectionId),
    });
    assert.equal(routing.lastLiveAt('t1'), undefined);
    routing.add({ connectionId: 'c1', tunnelId: 't1', connIndex: 0, clientId: 'x', session });
    routing.add({ connectionId: 'c2', tunnelId: 't1', connIndex: 1, clientId: 'x', session });
    assert.deepEqual(added, ['c1', 'c2']);
    clock.advance(1000);
    assert.equal(routing.lastLiveAt('t1'), clock.now());
    routing.remove('t1', 'c1');
    clock.advance(1000);
    assert.equal(routing.lastLiveAt('t1'), clock.now(), 'one connection is still live');
    const leftAt = clock.now();
    routing.remove('t1', 'c2');
    clock.advance(3000);
    assert.equal(routing.lastLiveAt('t1'), leftAt);
  });

  it('forgets tunnels gone longer than forgetAfterMs once many have come and gone', () => {
    const clock = new ManualClock();
    const routing = new RoutingTable(() => undefined, { now: () => clock.now(), forgetAfterMs: 60_000 });
    routing.add({ connectionId: 'old', tunnelId: 'old', connIndex: 0, clientId: 'x', session });
    routing.remove('old', 'old');
    clock.advance(61_000);
    for (let i = 0; i < 1100; i++) {
      routing.add({ connectionId: `c${i}`, tunnelId: `t${i}`, connIndex: 0, clientId: 'x', session });
      routing.remove(`t${i}`, `c${i}`);
    }
    assert.equal(routing.lastLiveAt('old'), undefined, 'swept');
    assert.equal(routing.lastLiveAt('t1099'), clock.now(), 'recent ones are kept');
  });
});
