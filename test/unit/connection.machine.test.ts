import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { EventObject } from 'xstate';
import { createActor, fromCallback } from 'xstate';
import type { BackoffPolicy } from '../../src/actors/backoff.ts';
import { backoffDelayMs } from '../../src/actors/backoff.ts';
import type { WatchInput } from '../../src/actors/connection.machine.ts';
import {
  connectionMachine,
  connectionRefused,
  connectionStatus,
} from '../../src/actors/connection.machine.ts';
import { ManualClock } from '../../src/shared/clock.ts';
import { isWarrenError, WarrenError } from '../../src/shared/errors.ts';
import { FakeEdge, flush } from '../support/fake-connection.ts';
import { mulberry32 } from '../support/mulberry32.ts';

const policy: BackoffPolicy = { baseMs: 1000, capMs: 8000, healthyAfterMs: 10_000 };
const gracePeriodMs = 5000;
const retryable = (message = 'edge unreachable', retryAfterMs?: number) =>
  new WarrenError('dial_failed', message, {
    retryable: true,
    ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
  });

function start(opts: { random?: () => number; maxRetries?: number; backoff?: BackoffPolicy } = {}) {
  const clock = new ManualClock();
  const edge = new FakeEdge({ clock });
  const actor = createActor(edge.connectionMachine(), {
    clock,
    input: {
      connIndex: 2,
      backoff: opts.backoff ?? policy,
      gracePeriodMs,
      random: opts.random ?? (() => 0.9999),
      ...(opts.maxRetries === undefined ? {} : { maxRetries: opts.maxRetries }),
    },
  });
  actor.start();
  const status = () => connectionStatus(actor.getSnapshot());
  const context = () => actor.getSnapshot().context;
  /** Fails the pending dial and returns when the machine has taken it in. */
  const failDial = async (err: unknown) => {
    edge.lastDial.fail(err);
    await flush();
  };
  const succeedDial = async () => {
    const conn = edge.lastDial.succeed();
    await flush();
    return conn;
  };
  /** Advances through the planned retry delay and checks that exactly then `connect` runs again. */
  const waitOutBackoff = () => {
    assert.equal(status(), 'reconnecting');
    const delay = context().retryDelayMs;
    const dials = edge.dials.length;
    if (delay > 0) {
      clock.advance(delay - 1);
      assert.equal(edge.dials.length, dials, `redialled before the ${delay} ms backoff elapsed`);
    }
    clock.advance(delay > 0 ? 1 : 0);
    assert.equal(edge.dials.length, dials + 1, `no redial after the ${delay} ms backoff`);
    assert.equal(status(), 'dialing');
    return delay;
  };
  return { clock, edge, actor, status, context, failDial, succeedDial, waitOutBackoff };
}

// ---------------------------------------------------------------------------------------------

describe('connection machine', () => {
  it('dials at once, and is connected with a watched connection once connect resolves', async () => {
    const t = start();
    assert.equal(t.status(), 'dialing');
    assert.deepEqual(t.edge.lastDial.input, { connIndex: 2, previousAttempts: 0, attempts: 0 });

    const conn = await t.succeedDial();
    assert.equal(t.status(), 'connected');
    assert.equal(t.context().connection, conn);
    assert.equal(t.edge.activeWatchers().length, 1);
    assert.equal(t.edge.activeWatchers()[0]?.connection, conn);
    t.actor.stop();
  });

  it('backs off exponentially with full jitter, up to the cap', async () => {
    const seed = 7;
    const t = start({ random: mulberry32(seed) });
    const replica = mulberry32(seed);
    const observed: number[] = [];
    for (let k = 0; k < 8; k++) {
      const failedAt = t.clock.now();
      await t.failDial(retryable());
      assert.equal(t.context().attempts, k + 1);
      const delay = t.waitOutBackoff();
      assert.equal(t.edge.lastDial.at - failedAt, delay);
      assert.equal(delay, backoffDelayMs(k, policy, replica), `retry ${k}`);
      assert.ok(
        delay < Math.min(policy.capMs, policy.baseMs * 2 ** k),
        `retry ${k}: ${delay} over its ceiling`,
      );
      observed.push(delay);
    }
    assert.ok(new Set(observed).size > 4, `jitter should vary the delays: ${observed}`);
    assert.equal(t.edge.lastDial.input.previousAttempts, 8);
    t.actor.stop();
  });

  it('with the largest draw the delays double until they reach the cap', async () => {
    const t = start({ random: () => 0.9999 });
    const observed: number[] = [];
    for (let k = 0; k < 6; k++) {
      await t.failDial(retryable());
      observed.push(t.waitOutBackoff());
    }
    assert.deepEqual(observed, [999, 1999, 3999, 7999, 7999, 7999]);
    t.actor.stop();
  });

  it('resets the failure count once a connection has been healthy for healthyAfterMs', async () => {
    const t = start({ random: () => 0.9999 });
    for (let k = 0; k < 3; k++) {
      await t.failDial(retryable());
      t.waitOutBackoff();
    }
    await t.succeedDial();
    assert.equal(t.context().attempts, 3, 'a successful dial alone does not reset the count');
    t.clock.advance(policy.healthyAfterMs - 1);
    assert.equal(t.context().attempts, 3);
    t.clock.advance(1);
    assert.equal(t.context().attempts, 0);
    assert.equal(t.status(), 'connected');
    assert.equal(t.clock.pendingTimers, 0, 'the healthy timer fires once');

    t.actor.send({ type: 'SOCKET_CLOSED' });
    assert.equal(t.context().attempts, 1);
    assert.equal(t.waitOutBackoff(), 999, 'back to the first step after a healthy connection');
    t.actor.stop();
  });

  it('a connection lost before it was healthy keeps backing off', async () => {
    const t = start({ random: () => 0.9999 });
    await t.failDial(retryable());
    t.waitOutBackoff();
    await t.succeedDial();
    t.clock.advance(policy.healthyAfterMs - 1);
    t.actor.send({ type: 'SOCKET_CLOSED' });
    assert.equal(t.context().attempts, 2);
    assert.equal(t.waitOutBackoff(), 1999);
    t.actor.stop();
  });

  it('heartbeat loss aborts the connection and reconnects', async () => {
    const t = start();
    const conn = await t.succeedDial();
    const watcher = t.edge.activeWatchers()[0];
    assert.ok(watcher);
    watcher.sendBack({ type: 'HEARTBEAT_LOST' });

    assert.equal(t.status(), 'reconnecting');
    assert.ok(isWarrenError(conn.abortedWith, 'heartbeat_timeout'));
    assert.ok(isWarrenError(t.context().lastError, 'heartbeat_timeout'));
    assert.equal(t.context().connection, null);
    assert.equal(t.edge.activeWatchers().length, 0, 'the watcher stops with the connection');
    assert.equal(t.edge.live.size, 0);

    t.waitOutBackoff();
    assert.deepEqual(t.edge.lastDial.input, { connIndex: 2, previousAttempts: 1, attempts: 1 });
    const next = await t.succeedDial();
    assert.equal(t.context().connection, next);
    assert.equal(t.context().lastError, null, 'a successful dial clears the last error');
    assert.equal(t.edge.live.size, 1);
    t.actor.stop();
  });

  it('a socket closed with an error records that error and aborts what is left', async () => {
    const t = start();
    const conn = await t.succeedDial();
    const cause = new WarrenError('protocol_error', 'bad frame', { retryable: true });
    t.edge.activeWatchers()[0]?.sendBack({ type: 'SOCKET_CLOSED', error: cause });
    assert.equal(t.status(), 'reconnecting');
    assert.equal(conn.abortedWith, cause);
    assert.equal(t.context().lastError, cause);
    t.actor.stop();
  });

  it('DRAIN from the edge moves the connection: abort, then redial without counting a failure', async () => {
    const t = start();
    const first = await t.succeedDial();
    t.actor.send({ type: 'DRAIN' });

    assert.equal(t.status(), 'reconnecting');
    assert.ok(isWarrenError(first.abortedWith, 'edge_draining'));
    assert.equal(t.context().attempts, 0);

    t.waitOutBackoff();
    const second = await t.succeedDial();
    assert.equal(t.status(), 'connected');
    assert.notEqual(second, first);
    assert.deepEqual([...t.edge.live], [second]);
    t.actor.stop();
  });

  it('a watcher that crashes counts as a lost connection', async () => {
    const clock = new ManualClock();
    const edge = new FakeEdge({ clock });
    const crash = new WarrenError('session_closed', 'watcher crashed', { retryable: true });
    const machine = edge.connectionMachine().provide({
      actors: {
        watch: fromCallback<EventObject, WatchInput>(() => {
          throw crash;
        }),
      },
    });
    const actor = createActor(machine, { clock, input: { connIndex: 0, backoff: policy, gracePeriodMs } });
    actor.start();
    const conn = edge.lastDial.succeed();
    await flush();
    assert.equal(connectionStatus(actor.getSnapshot()), 'reconnecting');
    assert.equal(conn.abortedWith, crash);
    assert.equal(actor.getSnapshot().context.lastError, crash);
    actor.stop();
  });

  it('a non-retryable error ends in failed with that error', async () => {
    const t = start();
    const denied = new WarrenError('auth_failed', 'tunnel secret rejected');
    await t.failDial(denied);

    assert.equal(t.status(), 'failed');
    const snapshot = t.actor.getSnapshot();
    assert.equal(snapshot.status, 'done');
    assert.deepEqual(snapshot.output, { status: 'failed', error: denied });
    assert.equal(snapshot.context.error, denied);
    assert.equal(t.clock.pendingTimers, 0);
    t.clock.advance(3_600_000);
    assert.equal(t.edge.dials.length, 1, 'no retry after a fatal error');
  });

  it('a rejection that is not an Error is fatal and becomes a WarrenError', async () => {
    const t = start();
    await t.failDial('boom');
    assert.equal(t.status(), 'failed');
    const output = t.actor.getSnapshot().output;
    assert.equal(output?.status, 'failed');
    assert.ok(output?.status === 'failed' && isWarrenError(output.error, 'dial_failed'));
  });

  it('gives up after maxRetries consecutive failures', async () => {
    const t = start({ maxRetries: 2 });
    await t.failDial(retryable('one'));
    t.waitOutBackoff();
    await t.failDial(retryable('two'));
    t.waitOutBackoff();
    const last = retryable('three');
    await t.failDial(last);
    assert.equal(t.status(), 'failed');
    assert.deepEqual(t.actor.getSnapshot().output, { status: 'failed', error: last });
    assert.equal(t.edge.dials.length, 3);
    assert.equal(t.clock.pendingTimers, 0);
  });

  it('maxRetries 0 makes the first failure final', async () => {
    const t = start({ maxRetries: 0 });
    await t.failDial(retryable());
    assert.equal(t.status(), 'failed');
  });

  it("honours the edge's retryAfterMs when it is longer than the backoff", async () => {
    const t = start({ random: () => 0.5 });
    await t.failDial(retryable('edge busy', 20_000));
    assert.equal(t.context().retryDelayMs, 20_000);
    t.clock.advance(19_999);
    assert.equal(t.edge.dials.length, 1);
    t.clock.advance(1);
    assert.equal(t.edge.dials.length, 2);

    // Shorter than the backoff: the backoff wins.
    await t.failDial(retryable('edge busy', 100));
    assert.equal(t.context().retryDelayMs, 1000);
    t.actor.stop();
  });

  it('honours retryAfterMs carried by the error that closed the socket', async () => {
    const t = start({ random: () => 0 });
    await t.succeedDial();
    t.actor.send({
      type: 'SOCKET_CLOSED',
      error: new WarrenError('session_closed', 'edge restarting', { retryable: true, retryAfterMs: 3000 }),
    });
    assert.equal(t.waitOutBackoff(), 3000);
    t.actor.stop();
  });

  it('graceful shutdown while connected drains, then closes', async () => {
    const t = start();
    const conn = await t.succeedDial();
    t.actor.send({ type: 'SHUTDOWN', mode: 'graceful' });

    assert.equal(t.status(), 'draining');
    assert.equal(t.edge.activeWatchers().length, 0);
    assert.deepEqual(t.edge.lastDrain.input, { connection: conn, gracePeriodMs });

    t.actor.send({ type: 'SHUTDOWN', mode: 'graceful' });
    t.actor.send({ type: 'DRAIN' });
    assert.equal(t.status(), 'draining', 'a repeated graceful shutdown or a DRAIN changes nothing');

    t.edge.lastDrain.finish();
    await flush();
    assert.equal(t.status(), 'closed');
    assert.deepEqual(t.actor.getSnapshot().output, { status: 'closed' });
    assert.equal(conn.abortedWith, null, 'a drained connection is not aborted');
    assert.equal(t.edge.live.size, 0);
    assert.equal(t.clock.pendingTimers, 0);
  });

  it('aborts a drain that outlasts the grace period', async () => {
    const t = start();
    const conn = await t.succeedDial();
    t.actor.send({ type: 'SHUTDOWN', mode: 'graceful' });
    t.clock.advance(gracePeriodMs - 1);
    assert.equal(t.status(), 'draining');
    t.clock.advance(1);

    assert.equal(t.status(), 'closed');
    assert.ok(isWarrenError(conn.abortedWith, 'session_closed'));
    assert.ok(t.edge.lastDrain.signal.aborted, 'the drain actor is stopped');
    assert.equal(t.clock.pendingTimers, 0);
  });

  it('a failed drain aborts the connection and closes', async () => {
    const t = start();
    const conn = await t.succeedDial();
    t.actor.send({ type: 'SHUTDOWN', mode: 'graceful' });
    const err = new WarrenError('session_closed', 'unregister failed');
    t.edge.lastDrain.fail(err);
    await flush();
    assert.equal(t.status(), 'closed');
    assert.equal(conn.abortedWith, err);
    assert.deepEqual(t.actor.getSnapshot().output, { status: 'closed' });
  });

  for (const mode of ['graceful', 'now'] as const) {
    it(`shutdown (${mode}) while reconnecting ends cleanly with no timer left`, async () => {
      const t = start();
      await t.failDial(retryable());
      assert.equal(t.status(), 'reconnecting');
      assert.equal(t.clock.pendingTimers, 1);

      t.actor.send({ type: 'SHUTDOWN', mode });
      assert.equal(t.status(), 'closed');
      assert.deepEqual(t.actor.getSnapshot().output, { status: 'closed' });
      assert.equal(t.clock.pendingTimers, 0);
      t.clock.advance(3_600_000);
      assert.equal(t.edge.dials.length, 1);
    });

    it(`shutdown (${mode}) while dialing cancels the dial`, async () => {
      const t = start();
      const dial = t.edge.lastDial;
      t.actor.send({ type: 'SHUTDOWN', mode });
      assert.equal(t.status(), 'closed');
      assert.ok(dial.signal.aborted);
      await flush();
      assert.equal(t.clock.pendingTimers, 0);
      assert.equal(t.edge.live.size, 0);
    });
  }

  it('shutdown now while connected aborts at once', async () => {
    const t = start();
    const conn = await t.succeedDial();
    t.actor.send({ type: 'SHUTDOWN', mode: 'now' });
    assert.equal(t.status(), 'closed');
    assert.ok(isWarrenError(conn.abortedWith, 'session_closed'));
    assert.equal(t.edge.activeWatchers().length, 0);
    assert.equal(t.edge.drains.length, 0);
    assert.equal(t.clock.pendingTimers, 0, 'the healthy timer is cancelled');
  });

  it('shutdown now while draining aborts the connection', async () => {
    const t = start();
    const conn = await t.succeedDial();
    t.actor.send({ type: 'SHUTDOWN', mode: 'graceful' });
    const drain = t.edge.lastDrain;
    t.actor.send({ type: 'SHUTDOWN', mode: 'now' });

    assert.equal(t.status(), 'closed');
    assert.ok(isWarrenError(conn.abortedWith, 'session_closed'));
    assert.ok(drain.signal.aborted);
    assert.equal(t.edge.live.size, 0);
    assert.equal(t.clock.pendingTimers, 0);
    assert.deepEqual(t.actor.getSnapshot().output, { status: 'closed' });
  });

  it('ignores connection signals while there is no connection', async () => {
    const t = start();
    t.actor.send({ type: 'HEARTBEAT_LOST' });
    t.actor.send({ type: 'SOCKET_CLOSED' });
    t.actor.send({ type: 'DRAIN' });
    assert.equal(t.status(), 'dialing');
    assert.equal(t.edge.dials.length, 1);
    await t.failDial(retryable());
    t.actor.send({ type: 'HEARTBEAT_LOST' });
    assert.equal(t.status(), 'reconnecting');
    assert.equal(t.context().attempts, 1);
    t.actor.stop();
  });

  it('tells connect how many failures came before the dial, for the agent to rotate endpoints', async () => {
    const t = start();
    await t.failDial(retryable());
    t.waitOutBackoff();
    await t.failDial(retryable());
    t.waitOutBackoff();
    assert.deepEqual(t.edge.lastDial.input, { connIndex: 2, previousAttempts: 2, attempts: 2 });
    await t.succeedDial();
    t.actor.send({ type: 'DRAIN' });
    t.waitOutBackoff();
    assert.equal(t.edge.lastDial.input.attempts, 2, 'being asked to move is no failure');
    t.actor.stop();
  });

  it('the default actors say they were not provided', async () => {
    const actor = createActor(connectionMachine, {
      clock: new ManualClock(),
      input: { connIndex: 0, backoff: policy, gracePeriodMs },
    });
    actor.start();
    await flush();
    assert.equal(connectionStatus(actor.getSnapshot()), 'failed');
    const output = actor.getSnapshot().output;
    assert.ok(output?.status === 'failed' && /not provided/.test(output.error.message));
  });
});

// ---------------------------------------------------------------------------------------------

describe('connection machine: refused dials (an edge restarting)', () => {
  const refused = () => connectionRefused('connect ECONNREFUSED 127.0.0.1:7844');
  const limited = (flatRetryLimit: number): BackoffPolicy => ({ ...policy, flatRetryLimit });

  it('marks a refused dial retryable dial_failed with the refused flag', () => {
    const err = refused();
    assert.ok(isWarrenError(err, 'dial_failed'));
    assert.equal(err.retryable, true);
    assert.equal(err.refused, true);
  });

  it('retries refusals within baseMs, without escalating, up to flatRetryLimit in a row', async () => {
    const t = start({ random: () => 0.9999, backoff: limited(5) });
    const delays: number[] = [];
    for (let k = 0; k < 5; k++) {
      await t.failDial(refused());
      delays.push(t.waitOutBackoff());
    }
    assert.deepEqual(delays, [999, 999, 999, 999, 999]);
    assert.equal(t.context().attempts, 5, 'refusals still count as failures');
    assert.equal(t.context().flatRetries, 5);
    t.actor.stop();
  });

  it('past the limit, refusals back off exponentially, starting again from baseMs', async () => {
    const t = start({ random: () => 0.9999, backoff: limited(3) });
    const delays: number[] = [];
    for (let k = 0; k < 7; k++) {
      await t.failDial(refused());
      delays.push(t.waitOutBackoff());
    }
    assert.deepEqual(delays, [999, 999, 999, 999, 1999, 3999, 7999]);
    t.actor.stop();
  });

  it('defaults to 20 flat retries', async () => {
    const t = start({ random: () => 0.9999 });
    const delays: number[] = [];
    for (let k = 0; k < 22; k++) {
      await t.failDial(refused());
      delays.push(t.waitOutBackoff());
    }
    assert.deepEqual(delays, [...Array.from({ length: 21 }, () => 999), 1999]);
    t.actor.stop();
  });

  it('a different failure breaks the run: it escalates only by the failures that were not flat', async () => {
    const t = start({ random: () => 0.9999, backoff: limited(3) });
    await t.failDial(retryable());
    assert.equal(t.waitOutBackoff(), 999);
    await t.failDial(refused());
    assert.equal(t.waitOutBackoff(), 999);
    await t.failDial(refused());
    assert.equal(t.waitOutBackoff(), 999);
    await t.failDial(retryable());
    assert.equal(t.waitOutBackoff(), 1999, 'the second escalating failure of the run');
    assert.equal(t.context().refusedInRow, 0);
    await t.failDial(refused());
    assert.equal(t.waitOutBackoff(), 999, 'a new run of refusals is flat again');
    t.actor.stop();
  });

  it('an edge restart: the lost connection and the refused redials all wait under baseMs', async () => {
    const t = start({ random: () => 0.9999 });
    await t.succeedDial();
    t.clock.advance(policy.healthyAfterMs);
    t.actor.send({ type: 'SOCKET_CLOSED' });
    const waits = [t.waitOutBackoff()];
    for (let k = 0; k < 10; k++) {
      await t.failDial(refused());
      waits.push(t.waitOutBackoff());
    }
    // The edge listens again: the next dial comes within baseMs of the last refusal, whatever the count.
    assert.ok(
      waits.every((w) => w < policy.baseMs),
      `waits ${waits}`,
    );
    await t.succeedDial();
    assert.equal(t.status(), 'connected');
    assert.equal(t.context().refusedInRow, 0);
    t.actor.stop();
  });

  it('refusals count towards maxRetries', async () => {
    const t = start({ maxRetries: 2 });
    await t.failDial(refused());
    t.waitOutBackoff();
    await t.failDial(refused());
    t.waitOutBackoff();
    const last = refused();
    await t.failDial(last);
    assert.equal(t.status(), 'failed');
    assert.deepEqual(t.actor.getSnapshot().output, { status: 'failed', error: last });
  });

  it('flatRetryLimit 0 turns the rule off', async () => {
    const t = start({ random: () => 0.9999, backoff: limited(0) });
    const delays: number[] = [];
    for (let k = 0; k < 3; k++) {
      await t.failDial(refused());
      delays.push(t.waitOutBackoff());
    }
    assert.deepEqual(delays, [999, 1999, 3999]);
    t.actor.stop();
  });

  it('a healthy connection resets the flat count with the failure count', async () => {
    const t = start({ random: () => 0.9999, backoff: limited(2) });
    await t.failDial(refused());
    t.waitOutBackoff();
    await t.failDial(refused());
    t.waitOutBackoff();
    await t.succeedDial();
    t.clock.advance(policy.healthyAfterMs);
    assert.equal(t.context().attempts, 0);
    assert.equal(t.context().flatRetries, 0);
    t.actor.stop();
  });
});
