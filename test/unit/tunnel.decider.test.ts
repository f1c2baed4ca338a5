import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  type ConnectionRegistered,
  type ConnectionUnregistered,
  type CreateTunnel,
  type DnsCleanupCancelled,
  type DnsCleanupDue,
  type DnsCleanupScheduled,
  decide,
  evolve,
  initialState,
  type RegisterConnection,
  type TunnelCommand,
  type TunnelCreated,
  type TunnelDeleted,
  type TunnelEvent,
  tunnelDecider,
  tunnelStream,
  type UnregisterConnection,
} from '../../src/events/tunnel.ts';
import { ManualClock } from '../../src/shared/clock.ts';
import { isWarrenError, WarrenError } from '../../src/shared/errors.ts';
import { handleCommand } from '../../src/store/command-handler.ts';
import type { EventLog } from '../../src/store/event-log.ts';
import { openMemoryEventLog } from '../../src/store/memory-event-log.ts';
import { deciderSpec, throughStoredFormat } from '../support/decider-spec.ts';

const T = 'b7e1c3a0-1111-4222-8333-444455556666';
const NOW = Date.UTC(2026, 0, 1);

const create: CreateTunnel = {
  type: 'CreateTunnel',
  tunnelId: T,
  name: 'web',
  accountId: 'acc-1',
  quick: false,
  now: NOW,
};

function register(connectionId: string, over: Partial<RegisterConnection> = {}): RegisterConnection {
  return {
    type: 'RegisterConnection',
    tunnelId: T,
    connectionId,
    connIndex: 0,
    pop: 'ams',
    clientVersion: '2026.1.0',
    clientOs: 'linux',
    clientArch: 'x64',
    originIp: '192.0.2.10',
    connectorId: 'connector-1',
    now: NOW + 1_000,
    ...over,
  };
}

function unregister(
  connectionId: string,
  reason: UnregisterConnection['reason'] = 'graceful',
  over: Partial<UnregisterConnection> = {},
): UnregisterConnection {
  return { type: 'UnregisterConnection', tunnelId: T, connectionId, reason, now: NOW + 2_000, ...over };
}

const HOUR = 3_600_000;
/** A draw in the 24–48 h cleanup window, as the edge makes it. */
const DELAY = 30 * HOUR;
/** Time of the unregistration that made the tunnel inactive in the cleanup specs below. */
const GONE = NOW + 2_000;
const DUE = GONE + DELAY;

const created: TunnelCreated = {
  type: 'TunnelCreated',
  data: { tunnelId: T, name: 'web', accountId: 'acc-1', quick: false, hostname: null, createdAt: NOW },
};

function registered(connectionId: string, connIndex = 0, registeredAt = NOW + 1_000): ConnectionRegistered {
  return {
    type: 'ConnectionRegistered',
    data: {
      tunnelId: T,
      connectionId,
      connIndex,
      pop: 'ams',
      clientVersion: '2026.1.0',
      clientOs: 'linux',
      clientArch: 'x64',
      originIp: '192.0.2.10',
      connectorId: 'connector-1',
      registeredAt,
    },
  };
}

function unregistered(
  connectionId: string,
  reason: UnregisterConnection['reason'] = 'graceful',
  at = GONE,
): ConnectionUnregistered {
  return {
    type: 'ConnectionUnregistered',
    data: { tunnelId: T, connectionId, reason, unregisteredAt: at },
  };
}

const inactive = (at = GONE): TunnelEvent => ({
  type: 'TunnelBecameInactive',
  data: { tunnelId: T, inactiveAt: at },
});

const scheduled = (dueAt = DUE, at = GONE): DnsCleanupScheduled => ({
  type: 'DnsCleanupScheduled',
  data: { tunnelId: T, dueAt, scheduledAt: at },
});

const cancelled = (dueAt: number, at: number): DnsCleanupCancelled => ({
  type: 'DnsCleanupCancelled',
  data: { tunnelId: T, dueAt, cancelledAt: at },
});

const cleanupDue = (dueAt: number, at: number): DnsCleanupDue => ({
  type: 'DnsCleanupDue',
  data: { tunnelId: T, dueAt, firedAt: at },
});

const deletedAt = (at: number): TunnelDeleted => ({
  type: 'TunnelDeleted',
  data: { tunnelId: T, deletedAt: at },
});

/** A named tunnel whose only connection went away with a cleanup scheduled for DUE. */
const pending: TunnelEvent[] = [created, registered('c-1'), unregistered('c-1'), inactive(), scheduled()];

const fire = (dueAt: number, now: number): TunnelCommand => ({
  type: 'FireDnsCleanup',
  tunnelId: T,
  dueAt,
  now,
});

const { fold, given } = deciderSpec(tunnelDecider);

describe('tunnel decider', () => {
  it('names the stream tunnel-<id>', () => {
    assert.equal(tunnelStream(T), `tunnel-${T}`);
  });

  describe('CreateTunnel', () => {
    it('creates an absent tunnel, stamped with the command time', () => {
      given([]).when(create).emits([created]);
    });

    it('is a no-op when the same tunnel is created again (a retry)', () => {
      given([created]).when(create).emits([]);
    });

    it('refuses a different tunnel under the same id', () => {
      given([created])
        .when({ ...create, name: 'other' })
        .refused('bad_request');
    });

    it('refuses to bring back a deleted tunnel', () => {
      given([created, { type: 'TunnelDeleted', data: { tunnelId: T, deletedAt: NOW } }])
        .when(create)
        .refused('tunnel_deleted');
    });

    it('creates quick tunnels without an account, with their hostname', () => {
      const hostname = 'calm-otter.trycloudflare.test';
      const quick = { ...create, accountId: null, quick: true, hostname };
      const quickCreated: TunnelCreated = {
        type: 'TunnelCreated',
        data: { ...created.data, accountId: null, quick: true, hostname },
      };
      given([]).when(quick).emits([quickCreated]);
      assert.equal(fold([quickCreated]).hostname, hostname);
      given([quickCreated]).when(quick).emits([]);
      given([quickCreated])
        .when({ ...quick, hostname: 'other.trycloudflare.test' })
        .refused('bad_request');
    });
  });

  describe('RegisterConnection', () => {
    it('registers a connection on an active tunnel', () => {
      given([created])
        .when(register('c-1'))
        .emits([registered('c-1')]);
    });

    it('refuses a tunnel that was never created', () => {
      given([]).when(register('c-1')).refused('bad_request');
    });

    it('refuses a deleted tunnel with tunnel_deleted', () => {
      given([created, { type: 'TunnelDeleted', data: { tunnelId: T, deletedAt: NOW } }])
        .when(register('c-1'))
        .refused('tunnel_deleted');
    });

    it('is a no-op for a connection that is already registered', () => {
      given([created, registered('c-1')])
        .when(register('c-1'))
        .emits([]);
    });

    it('refuses a command addressed to another tunnel', () => {
      given([created])
        .when(register('c-1', { tunnelId: 'someone-else' }))
        .refused('bad_request');
    });

    it('stores exactly the event fields, nothing else the caller passed', () => {
      const command = { ...register('c-1'), secret: 'do not store' } as RegisterConnection;
      given([created])
        .when(command)
        .emits([registered('c-1')]);
    });
  });

  describe('RegisterConnection under the account limit', () => {
    const limit = (activeTunnels: number, maxActiveTunnels = 3) => ({ activeTunnels, maxActiveTunnels });

    it('refuses with account_tunnel_limit when the tunnel would become active past the limit', () => {
      given([created])
        .when(register('c-1', { accountLimit: limit(3) }))
        .refused('account_tunnel_limit');
      given([created])
        .when(register('c-1', { accountLimit: limit(4) }))
        .refused('account_tunnel_limit');
    });

    it('registers while the account is under its limit', () => {
      given([created])
        .when(register('c-1', { accountLimit: limit(2) }))
        .emits([registered('c-1')]);
    });

    it('does not count against the limit when the tunnel is already active', () => {
      // The tunnel is among the account's active ones already: another connection adds no tunnel.
      given([created, registered('c-1')])
        .when(register('c-2', { connIndex: 1, accountLimit: limit(3) }))
        .emits([registered('c-2', 1)]);
    });

    it('lets a repeated registration through as a no-op even at the limit', () => {
      given([created, registered('c-1')])
        .when(register('c-1', { accountLimit: limit(3) }))
        .emits([]);
    });

    it('applies again once the tunnel went inactive, and then leaves the pending cleanup alone', () => {
      given(pending)
        .when(register('c-2', { accountLimit: limit(3) }))
        .refused('account_tunnel_limit');
    });
  });

  describe('UnregisterConnection', () => {
    it('unregisters the last connection with its reason, and says the tunnel became inactive', () => {
      given([created, registered('c-1')])
        .when(unregister('c-1', 'lost'))
        .emits([unregistered('c-1', 'lost'), inactive()]);
    });

    it('only unregisters while other connections remain', () => {
      given([created, registered('c-1'), registered('c-2', 1)])
        .when(unregister('c-1', 'replaced', { cleanupDelayMs: DELAY }))
        .emits([unregistered('c-1', 'replaced')]);
    });

    it('is a no-op for an unknown connection, including names of Object.prototype members', () => {
      given([created, registered('c-1')])
        .when(unregister('c-2'))
        .emits([]);
      given([created]).when(unregister('__proto__')).emits([]);
      given([created]).when(unregister('constructor')).emits([]);
      given([]).when(unregister('c-1')).emits([]);
    });

    it('is a no-op for a connection already unregistered', () => {
      const gone = decide(unregister('c-1'), fold([created, registered('c-1')]));
      given([created, registered('c-1'), ...gone])
        .when(unregister('c-1'))
        .emits([]);
    });
  });

  describe('delayed DNS cleanup', () => {
    it('schedules a cleanup cleanupDelayMs after the last connection of a named tunnel went away', () => {
      given([created, registered('c-1')])
        .when(unregister('c-1', 'graceful', { cleanupDelayMs: DELAY }))
        .emits([unregistered('c-1'), inactive(), scheduled(DUE, GONE)]);
    });

    it('schedules a cleanup due at once for a zero delay', () => {
      given([created, registered('c-1')])
        .when(unregister('c-1', 'graceful', { cleanupDelayMs: 0 }))
        .emits([unregistered('c-1'), inactive(), scheduled(GONE, GONE)]);
    });

    it('never schedules one for a quick tunnel: it has no DNS records', () => {
      const quickCreated: TunnelCreated = {
        type: 'TunnelCreated',
        data: { ...created.data, accountId: null, quick: true, hostname: 'calm-otter.quick.test' },
      };
      given([quickCreated, registered('c-1')])
        .when(unregister('c-1', 'graceful', { cleanupDelayMs: DELAY }))
        .emits([unregistered('c-1'), inactive()]);
    });

    it('schedules nothing when the caller gives no cleanupDelayMs', () => {
      given([created, registered('c-1')])
        .when(unregister('c-1', 'edge_shutdown'))
        .emits([unregistered('c-1', 'edge_shutdown'), inactive()]);
    });

    it('refuses a cleanupDelayMs that is negative or not an integer', () => {
      for (const cleanupDelayMs of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
        given([created, registered('c-1')])
          .when(unregister('c-1', 'graceful', { cleanupDelayMs }))
          .refused('bad_request');
      }
    });

    it('cancels the pending cleanup before a re-registration', () => {
      given(pending)
        .when(register('c-2', { now: GONE + HOUR }))
        .emits([cancelled(DUE, GONE + HOUR), registered('c-2', 0, GONE + HOUR)]);
    });

    it('cancels nothing on a registration when no cleanup is pending', () => {
      given([created, registered('c-1'), unregistered('c-1'), inactive()])
        .when(register('c-2'))
        .emits([registered('c-2')]);
    });

    it('emits DnsCleanupDue when the timer fires at or after dueAt', () => {
      given(pending)
        .when(fire(DUE, DUE))
        .emits([cleanupDue(DUE, DUE)]);
      given(pending)
        .when(fire(DUE, DUE + 48 * HOUR))
        .emits([cleanupDue(DUE, DUE + 48 * HOUR)]);
    });

    it('emits DnsCleanupDue only once', () => {
      given([...pending, cleanupDue(DUE, DUE)])
        .when(fire(DUE, DUE + 1))
        .emits([]);
    });

    it('does nothing when fired early', () => {
      given(pending)
        .when(fire(DUE, DUE - 1))
        .emits([]);
    });

    it('does nothing once the cleanup was cancelled by a re-registration', () => {
      given([...pending, cancelled(DUE, GONE + HOUR), registered('c-2')])
        .when(fire(DUE, DUE))
        .emits([]);
    });

    it('does nothing for a stale dueAt, from a timer armed before a re-schedule', () => {
      const later = DUE + 10 * HOUR;
      const rescheduled = [
        ...pending,
        cancelled(DUE, GONE + HOUR),
        registered('c-2'),
        unregistered('c-2', 'graceful', GONE + 2 * HOUR),
        inactive(GONE + 2 * HOUR),
        scheduled(later, GONE + 2 * HOUR),
      ];
      given(rescheduled).when(fire(DUE, DUE)).emits([]);
      given(rescheduled)
        .when(fire(later, later))
        .emits([cleanupDue(later, later)]);
    });

    it('does nothing for a tunnel that never had a cleanup, or does not exist', () => {
      given([created]).when(fire(DUE, DUE)).emits([]);
      given([]).when(fire(DUE, DUE)).emits([]);
    });

    it('folds the pending cleanup and the last due time', () => {
      assert.deepEqual(fold(pending).pendingCleanup, { dueAt: DUE });
      assert.equal(fold(pending).cleanupDueAt, null);
      const fired = fold([...pending, cleanupDue(DUE, DUE)]);
      assert.equal(fired.pendingCleanup, null);
      assert.equal(fired.cleanupDueAt, DUE);
      assert.equal(fold([...pending, cancelled(DUE, GONE + 1)]).pendingCleanup, null);
    });
  });

  describe('DeleteTunnel', () => {
    const del = (over: Partial<Extract<TunnelCommand, { type: 'DeleteTunnel' }>> = {}): TunnelCommand => ({
      type: 'DeleteTunnel',
      tunnelId: T,
      now: NOW + 5,
      ...over,
    });

    it('refuses with tunnel_active while connections are live, unless forced', () => {
      given([created, registered('c-1')])
        .when(del())
        .refused('tunnel_active');
      given([created, registered('c-1')])
        .when(del({ force: false }))
        .refused('tunnel_active');
    });

    it('with force, revokes every live connection, then deletes the tunnel', () => {
      given([created, registered('c-1'), registered('c-2', 1)])
        .when(del({ force: true }))
        .emits([
          unregistered('c-1', 'revoked', NOW + 5),
          unregistered('c-2', 'revoked', NOW + 5),
          deletedAt(NOW + 5),
        ]);
    });

    it('deletes a tunnel without connections, with or without force', () => {
      given([created])
        .when(del())
        .emits([deletedAt(NOW + 5)]);
      given([created])
        .when(del({ force: true }))
        .emits([deletedAt(NOW + 5)]);
    });

    it('cancels a pending cleanup: deletion removes every record of the tunnel anyway', () => {
      given(pending)
        .when(del({ now: GONE + HOUR }))
        .emits([cancelled(DUE, GONE + HOUR), deletedAt(GONE + HOUR)]);
    });

    it('leaves a deleted tunnel with no connections and nothing pending', () => {
      const state = fold([
        created,
        registered('c-1'),
        ...decide(del({ force: true }), fold([created, registered('c-1')])),
      ]);
      assert.equal(state.status, 'deleted');
      assert.deepEqual(state.connections, {});
      assert.equal(state.pendingCleanup, null);
      assert.equal(fold([...pending, deletedAt(GONE + 1)]).pendingCleanup, null);
    });

    it('is a no-op on a deleted tunnel and refused on an absent one', () => {
      given([created, deletedAt(NOW)])
        .when(del())
        .emits([]);
      given([]).when(del()).refused('bad_request');
    });

    it('makes a pending timer fire into nothing after the deletion', () => {
      given([...pending, cancelled(DUE, GONE + 1), deletedAt(GONE + 1)])
        .when(fire(DUE, DUE))
        .emits([]);
    });
  });

  describe('evolve', () => {
    it('folds a tunnel and its connections', () => {
      const state = fold([created, registered('c-1'), registered('c-2', 1)]);
      assert.equal(state.status, 'active');
      assert.equal(state.tunnelId, T);
      assert.equal(state.name, 'web');
      assert.deepEqual(Object.keys(state.connections), ['c-1', 'c-2']);
      assert.deepEqual(state.connections['c-2'], {
        connectionId: 'c-2',
        connIndex: 1,
        pop: 'ams',
        clientVersion: '2026.1.0',
        clientOs: 'linux',
        clientArch: 'x64',
        originIp: '192.0.2.10',
        connectorId: 'connector-1',
        registeredAt: NOW + 1_000,
      });
    });

    it('never changes the state it is given', () => {
      const before = fold([created, registered('c-1')]);
      const snapshot = structuredClone(before);
      evolve(before, registered('c-2'));
      evolve(before, decide(unregister('c-1'), before)[0]!);
      assert.deepEqual(before, snapshot);
    });

    it('ignores event types it does not know (written by a newer version)', () => {
      const state = fold([created]);
      assert.equal(evolve(state, { type: 'FromTheFuture', data: {} } as unknown as TunnelEvent), state);
    });
  });

  it('folds to the same state after the log went through the stored format', () => {
    const id = fc.constantFrom('c-1', 'c-2', 'c-3', '__proto__', 'constructor');
    const text = fc.string({ unit: 'grapheme', maxLength: 12 });
    const now = fc.integer({ min: 0, max: 2 ** 45 });
    const command: fc.Arbitrary<TunnelCommand> = fc.oneof(
      fc.record(
        {
          type: fc.constant('CreateTunnel' as const),
          tunnelId: fc.constant(T),
          name: text,
          accountId: fc.option(text, { nil: null }),
          quick: fc.boolean(),
          hostname: fc.option(text, { nil: null }),
          now,
        },
        { noNullPrototype: true },
      ),
      fc.record(
        {
          type: fc.constant('RegisterConnection' as const),
          tunnelId: fc.constant(T),
          connectionId: id,
          connIndex: fc.integer({ min: 0, max: 3 }),
          pop: text,
          clientVersion: text,
          clientOs: text,
          clientArch: text,
          originIp: text,
          now,
        },
        { noNullPrototype: true },
      ),
      fc.record(
        {
          type: fc.constant('UnregisterConnection' as const),
          tunnelId: fc.constant(T),
          connectionId: id,
          reason: fc.constantFrom('graceful', 'lost', 'replaced', 'revoked', 'edge_shutdown' as const),
          cleanupDelayMs: fc.option(fc.integer({ min: 0, max: 2 ** 40 }), { nil: undefined }),
          now,
        },
        { noNullPrototype: true },
      ),
      fc.record(
        { type: fc.constant('DeleteTunnel' as const), tunnelId: fc.constant(T), force: fc.boolean(), now },
        { noNullPrototype: true },
      ),
      fc.record(
        {
          type: fc.constant('FireDnsCleanup' as const),
          tunnelId: fc.constant(T),
          dueAt: fc.integer({ min: 0, max: 2 ** 45 }),
          now,
        },
        { noNullPrototype: true },
      ),
    );
    fc.assert(
      fc.property(fc.array(command, { maxLength: 30 }), (commands) => {
        // Run the commands the way the handler would, keeping the events of those accepted.
        const log: TunnelEvent[] = [];
        let state = initialState();
        for (const c of commands) {
          let events: TunnelEvent[];
          try {
            events = decide(c, state);
          } catch (err) {
            assert.ok(err instanceof WarrenError);
            continue;
          }
          for (const e of events) {
            log.push(e);
            state = evolve(state, e);
          }
        }
        const roundTripped = throughStoredFormat(tunnelStream(T), log);
        assert.deepEqual(fold(roundTripped), state);
      }),
      { numRuns: 200 },
    );
  });
});

describe('handleCommand with the tunnel decider', () => {
  const stream = tunnelStream(T);

  it('loads, decides and appends with meta, and appends nothing when there is nothing to do', async () => {
    const log = openMemoryEventLog({ clock: new ManualClock() });
    assert.deepEqual(await handleCommand(log, stream, tunnelDecider, create, { actor: 'admin' }), [created]);
    assert.deepEqual(await handleCommand(log, stream, tunnelDecider, create), []);
    assert.equal(log.headPosition, 1);
    const [stored] = await log.readStream(stream);
    assert.deepEqual(stored?.meta, { actor: 'admin' });
    await log.close();
  });

  it('lets refusals through unchanged', async () => {
    const log = openMemoryEventLog({ clock: new ManualClock() });
    await assert.rejects(handleCommand(log, stream, tunnelDecider, register('c-1')), (err: unknown) =>
      isWarrenError(err, 'bad_request'),
    );
    await log.close();
  });

  it('decides again on a version conflict, so concurrent registrations both land', async () => {
    const log = openMemoryEventLog({ clock: new ManualClock() });
    await handleCommand(log, stream, tunnelDecider, create);
    await Promise.all(
      ['c-1', 'c-2', 'c-3'].map((id) => handleCommand(log, stream, tunnelDecider, register(id))),
    );
    const state = fold(
      (await log.readStream(stream)).map((e) => ({ type: e.type, data: e.data }) as TunnelEvent),
    );
    assert.deepEqual(Object.keys(state.connections).sort(), ['c-1', 'c-2', 'c-3']);
    await log.close();
  });

  it('gives up after maxAttempts conflicts with the last version_conflict', async () => {
    const inner = openMemoryEventLog({ clock: new ManualClock() });
    let appends = 0;
    const alwaysConflicting: EventLog = {
      append: async () => {
        appends++;
        throw new WarrenError('version_conflict', 'someone else was faster', { retryable: true });
      },
      readStream: (s, o) => inner.readStream(s, o),
      readAll: (o) => inner.readAll(o),
      subscribe: (from) => inner.subscribe(from),
      get headPosition() {
        return inner.headPosition;
      },
      close: () => inner.close(),
    };
    await assert.rejects(
      handleCommand(alwaysConflicting, stream, tunnelDecider, create, undefined, { maxAttempts: 3 }),
      (err: unknown) => isWarrenError(err, 'version_conflict'),
    );
    assert.equal(appends, 3);
    await inner.close();
  });
});
