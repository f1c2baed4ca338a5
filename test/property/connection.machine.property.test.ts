/**
 * Model-based runs of the connection machine: arbitrary sequences of dial outcomes, connection
 * signals, clock advances and shutdowns, checked step by step against a small model of what the
 * machine should do, on a manual clock with a seeded random source.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { createActor } from 'xstate';
import type { BackoffPolicy } from '../../src/actors/backoff.ts';
import { backoffDelayMs } from '../../src/actors/backoff.ts';
import type { ConnectionSignal, ConnectionStatus } from '../../src/actors/connection.machine.ts';
import { connectionRefused, connectionStatus } from '../../src/actors/connection.machine.ts';
import { ManualClock } from '../../src/shared/clock.ts';
import { WarrenError } from '../../src/shared/errors.ts';
import { FakeEdge, flush } from '../support/fake-connection.ts';
import { mulberry32 } from '../support/mulberry32.ts';

const STATUSES: readonly ConnectionStatus[] = [
  'dialing',
  'connected',
  'reconnecting',
  'draining',
  'closed',
  'failed',
];
const FLAT_RETRY_LIMIT = 3;
const policy: BackoffPolicy = {
  baseMs: 1000,
  capMs: 8000,
  healthyAfterMs: 10_000,
  flatRetryLimit: FLAT_RETRY_LIMIT,
};
const gracePeriodMs = 5000;

type Command =
  | { kind: 'connectOk' }
  | { kind: 'connectFail'; retryAfterMs: number | undefined }
  /** Nothing listens (TCP refused): retried within baseMs, up to FLAT_RETRY_LIMIT in a row. */
  | { kind: 'connectRefused' }
  | { kind: 'connectFatal' }
  | { kind: 'heartbeatLost'; viaWatcher: boolean }
  | { kind: 'socketClosed'; viaWatcher: boolean; retryAfterMs: number | undefined }
  | { kind: 'drain'; viaWatcher: boolean }
  | { kind: 'drainSettles'; ok: boolean }
  | { kind: 'advance'; ms: number }
  | { kind: 'shutdown'; mode: 'graceful' | 'now' };

const retryAfterArb = fc.option(fc.integer({ min: 0, max: 20_000 }), { nil: undefined });
const commandArb: fc.Arbitrary<Command> = fc.oneof(
  { weight: 4, arbitrary: fc.constant<Command>({ kind: 'connectOk' }) },
  {
    weight: 4,
    arbitrary: retryAfterArb.map((retryAfterMs): Command => ({ kind: 'connectFail', retryAfterMs })),
  },
  { weight: 3, arbitrary: fc.constant<Command>({ kind: 'connectRefused' }) },
  { weight: 1, arbitrary: fc.constant<Command>({ kind: 'connectFatal' }) },
  {
    weight: 2,
    arbitrary: fc.boolean().map((viaWatcher): Command => ({ kind: 'heartbeatLost', viaWatcher })),
  },
  {
    weight: 2,
    arbitrary: fc
      .record({ viaWatcher: fc.boolean(), retryAfterMs: retryAfterArb })
      .map((r): Command => ({ kind: 'socketClosed', ...r })),
  },
  { weight: 2, arbitrary: fc.boolean().map((viaWatcher): Command => ({ kind: 'drain', viaWatcher })) },
  { weight: 2, arbitrary: fc.boolean().map((ok): Command => ({ kind: 'drainSettles', ok })) },
  {
    weight: 6,
    arbitrary: fc
      .oneof(fc.integer({ min: 0, max: 1500 }), fc.integer({ min: 0, max: 40_000 }))
      .map((ms): Command => ({ kind: 'advance', ms })),
  },
  { weight: 2, arbitrary: fc.constant<Command>({ kind: 'shutdown', mode: 'graceful' }) },
  { weight: 1, arbitrary: fc.constant<Command>({ kind: 'shutdown', mode: 'now' }) },
);

// ---------------------------------------------------------------------------------------------
// The model: what the machine should be doing, derived independently of its implementation.

interface Model {
  status: ConnectionStatus;
  attempts: number;
  refusedInRow: number;
  flatRetries: number;
  /** Planned retry delay while reconnecting. */
  retryDelayMs: number;
  /** Clock times of the one pending timer of the current state, if any. */
  retryAt: number | null;
  healthyAt: number | null;
  graceAt: number | null;
  error: Error | null;
}

function isFinal(status: ConnectionStatus): boolean {
  return status === 'closed' || status === 'failed';
}

describe('connection machine (model-based)', () => {
  it('follows the model under arbitrary dial outcomes, signals, time and shutdowns', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(commandArb, { minLength: 1, maxLength: 80, size: 'max' }),
        fc.integer(),
        // Usually unlimited, so that runs live long enough to reach the later states.
        fc.option(fc.integer({ min: 0, max: 6 }), { nil: undefined, freq: 3 }),
        async (commands, seed, maxRetries) => {
          const clock = new ManualClock();
          const edge = new FakeEdge();
          const replica = mulberry32(seed);
          const actor = createActor(edge.connectionMachine(), {
            clock,
            input: {
              connIndex: 1,
              backoff: policy,
              gracePeriodMs,
              random: mulberry32(seed),
              ...(maxRetries === undefined ? {} : { maxRetries }),
            },
          });
          const model: Model = {
            status: 'dialing',
            attempts: 0,
            refusedInRow: 0,
            flatRetries: 0,
            retryDelayMs: 0,
            retryAt: null,
            healthyAt: null,
            graceAt: null,
            error: null,
          };
          const enter = (status: ConnectionStatus, retryAfterMs = 0) => {
            model.status = status;
            model.retryAt = null;
            model.healthyAt = null;
            model.graceAt = null;
            if (status === 'reconnecting') {
              const flat = model.refusedInRow > 0 && model.refusedInRow <= FLAT_RETRY_LIMIT;
              const step = flat ? 0 : model.attempts - 1 - model.flatRetries;
              model.retryDelayMs = Math.max(backoffDelayMs(step, policy, replica), retryAfterMs);
              model.retryAt = clock.now() + model.retryDelayMs;
            } else if (status === 'connected') {
              model.healthyAt = clock.now() + policy.healthyAfterMs;
            } else if (status === 'draining') {
              model.graceAt = clock.now() + gracePeriodMs;
            }
          };
          const lost = (retryAfterMs: number, failure: boolean) => {
            if (model.status === 'connected') {
              if (failure) model.attempts++;
              enter('reconnecting', retryAfterMs);
            } else if (model.status === 'draining' && failure) {
              enter('closed');
            }
          };
          const signal = (viaWatcher: boolean, event: ConnectionSignal) => {
            const watcher = edge.activeWatchers()[0];
            if (viaWatcher && watcher) watcher.sendBack(event);
            else actor.send(event);
          };

          actor.start();
          for (const cmd of commands) {
            const before = model.status;
            switch (cmd.kind) {
              case 'connectOk': {
                const dial = edge.pendingDials()[0];
                if (dial) {
                  dial.succeed();
                  model.refusedInRow = 0;
                  enter('connected');
                }
                break;
              }
              case 'connectFail': {
                const dial = edge.pendingDials()[0];
                if (dial) {
                  const err = new WarrenError('dial_failed', 'refused', {
                    retryable: true,
                    ...(cmd.retryAfterMs === undefined ? {} : { retryAfterMs: cmd.retryAfterMs }),
                  });
                  dial.fail(err);
                  model.attempts++;
                  model.refusedInRow = 0;
                  if (model.attempts > (maxRetries ?? Number.POSITIVE_INFINITY)) {
                    model.error = err; // retries used up: the last error is the answer
                    enter('failed');
                  } else {
                    enter('reconnecting', cmd.retryAfterMs ?? 0);
                  }
                }
                break;
              }
              case 'connectRefused': {
                const dial = edge.pendingDials()[0];
                if (dial) {
                  const err = connectionRefused('connect ECONNREFUSED');
                  dial.fail(err);
                  model.attempts++;
                  model.refusedInRow++;
                  if (model.refusedInRow <= FLAT_RETRY_LIMIT) model.flatRetries++;
                  if (model.attempts > (maxRetries ?? Number.POSITIVE_INFINITY)) {
                    model.error = err;
                    enter('failed');
                  } else {
                    enter('reconnecting');
                  }
                }
                break;
              }
              case 'connectFatal': {
                const dial = edge.pendingDials()[0];
                if (dial) {
                  const err = new WarrenError('tunnel_deleted', 'gone');
                  dial.fail(err);
                  model.attempts++;
                  model.refusedInRow = 0;
                  model.error = err;
                  enter('failed');
                }
                break;
              }
              case 'heartbeatLost':
                signal(cmd.viaWatcher, { type: 'HEARTBEAT_LOST' });
                lost(0, true);
                break;
              case 'socketClosed': {
                const error =
                  cmd.retryAfterMs === undefined
                    ? undefined
                    : new WarrenError('session_closed', 'reset', {
                        retryable: true,
                        retryAfterMs: cmd.retryAfterMs,
                      });
                signal(cmd.viaWatcher, error ? { type: 'SOCKET_CLOSED', error } : { type: 'SOCKET_CLOSED' });
                lost(cmd.retryAfterMs ?? 0, true);
                break;
              }
              case 'drain':
                signal(cmd.viaWatcher, { type: 'DRAIN' });
                lost(0, false);
                break;
              case 'drainSettles': {
                const drain = edge.pendingDrains()[0];
                if (drain) {
                  if (cmd.ok) drain.finish();
                  else drain.fail(new WarrenError('session_closed', 'unregister failed'));
                  enter('closed');
                }
                break;
              }
              case 'advance': {
                const target = clock.now() + cmd.ms;
                clock.advance(cmd.ms);
                if (model.healthyAt !== null && model.healthyAt <= target) {
                  model.attempts = 0;
                  model.flatRetries = 0;
                  model.healthyAt = null;
                } else if (model.retryAt !== null && model.retryAt <= target) {
                  enter('dialing');
                } else if (model.graceAt !== null && model.graceAt <= target) {
                  enter('closed');
                }
                break;
              }
              case 'shutdown':
                actor.send({ type: 'SHUTDOWN', mode: cmd.mode });
                if (isFinal(model.status)) break;
                if (cmd.mode === 'now' || model.status === 'dialing' || model.status === 'reconnecting') {
                  enter('closed');
                } else if (model.status === 'connected') {
                  enter('draining');
                }
                break;
              default: {
                const unreachable: never = cmd;
                throw new Error(`unknown command ${JSON.stringify(unreachable)}`);
              }
            }
            await flush();

            const snapshot = actor.getSnapshot();
            const status = connectionStatus(snapshot);
            const where = `after ${JSON.stringify(cmd)} from ${before}`;
            assert.ok(STATUSES.includes(status), `unknown status ${status}`);
            assert.equal(status, model.status, where);
            assert.equal(snapshot.context.attempts, model.attempts, `attempts ${where}`);
            assert.equal(snapshot.context.refusedInRow, model.refusedInRow, `refusedInRow ${where}`);
            assert.equal(snapshot.context.flatRetries, model.flatRetries, `flatRetries ${where}`);

            // Never more than one live connection, and exactly one where the status says so.
            assert.ok(edge.handedOut - edge.ends <= 1, `${edge.handedOut - edge.ends} live ${where}`);
            const hasConnection = status === 'connected' || status === 'draining';
            assert.equal(edge.live.size, hasConnection ? 1 : 0, `live connections ${where}`);
            assert.equal(snapshot.context.connection, hasConnection ? [...edge.live][0] : null);

            // Invoked actors and timers exist only in their state.
            assert.equal(edge.pendingDials().length, status === 'dialing' ? 1 : 0, `dials ${where}`);
            assert.equal(edge.activeWatchers().length, status === 'connected' ? 1 : 0, `watchers ${where}`);
            assert.equal(edge.pendingDrains().length, status === 'draining' ? 1 : 0, `drains ${where}`);
            const timers = [model.retryAt, model.healthyAt, model.graceAt].filter((t) => t !== null).length;
            assert.equal(clock.pendingTimers, timers, `pending timers ${where}`);
            if (status === 'reconnecting') assert.equal(snapshot.context.retryDelayMs, model.retryDelayMs);

            if (cmd.kind === 'connectFatal' && before === 'dialing') assert.equal(status, 'failed');
            if (cmd.kind === 'shutdown' && cmd.mode === 'now' && !isFinal(before))
              assert.equal(status, 'closed');
            if (isFinal(status)) {
              assert.equal(snapshot.status, 'done');
              assert.equal(clock.pendingTimers, 0);
              if (status === 'failed') {
                assert.deepEqual(snapshot.output, { status: 'failed', error: model.error });
                assert.equal(snapshot.output?.status === 'failed' && snapshot.output.error, model.error);
              } else {
                assert.deepEqual(snapshot.output, { status: 'closed' });
              }
            }
          }
          actor.stop();
          await flush();
          assert.equal(clock.pendingTimers, 0, 'stopping the actor leaves no timer');
          assert.equal(edge.pendingDials().length, 0, 'stopping the actor cancels the dial');
        },
      ),
      { numRuns: 300 },
    );
  });
});
