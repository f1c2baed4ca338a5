import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  type ConnectionRegistered,
  type CreateTunnel,
  decide,
  evolve,
  initialState,
  type RegisterConnection,
  type TunnelCommand,
  type TunnelCreated,
  type TunnelEvent,
  type TunnelState,
  tunnelDecider,
  tunnelStream,
  type UnregisterConnection,
} from '../../src/events/tunnel.ts';
import { ManualClock } from '../../src/shared/clock.ts';
import { isWarrenError, WarrenError } from '../../src/shared/errors.ts';
import { decodeEnvelope, ENVELOPE_SCHEMA, encodeEnvelope } from '../../src/store/codec.ts';
import { handleCommand } from '../../src/store/command-handler.ts';
import type { EventLog } from '../../src/store/event-log.ts';
import { openMemoryEventLog } from '../../src/store/memory-event-log.ts';

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
    now: NOW + 1_000,
    ...over,
  };
}

function unregister(
  connectionId: string,
  reason: UnregisterConnection['reason'] = 'graceful',
): UnregisterConnection {
  return { type: 'UnregisterConnection', tunnelId: T, connectionId, reason, now: NOW + 2_000 };
}

const created: TunnelCreated = {
  type: 'TunnelCreated',
  data: { tunnelId: T, name: 'web', accountId: 'acc-1', quick: false, hostname: null, createdAt: NOW },
};

function registered(connectionId: string, connIndex = 0): ConnectionRegistered {
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
      registeredAt: NOW + 1_000,
    },
  };
}

function fold(events: readonly TunnelEvent[]): TunnelState {
  return events.reduce(evolve, initialState());
}

/** given events / when command / then it emits events, or is refused with a code. */
function given(events: TunnelEvent[]) {
  return {
    when(command: TunnelCommand) {
      return {
        emits(expected: TunnelEvent[]) {
          assert.deepEqual(decide(command, fold(events)), expected);
        },
        refused(code: string) {
          assert.throws(
            () => decide(command, fold(events)),
            (err: unknown) => isWarrenError(err) && err.code === code,
          );
        },
      };
    },
  };
}

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

  describe('UnregisterConnection', () => {
    it('unregisters a live connection with its reason', () => {
      given([created, registered('c-1')])
        .when(unregister('c-1', 'lost'))
        .emits([
          {
            type: 'ConnectionUnregistered',
            data: { tunnelId: T, connectionId: 'c-1', reason: 'lost', unregisteredAt: NOW + 2_000 },
          },
        ]);
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

  describe('DeleteTunnel', () => {
    it('revokes every live connection, then deletes the tunnel', () => {
      given([created, registered('c-1'), registered('c-2', 1)])
        .when({ type: 'DeleteTunnel', tunnelId: T, now: NOW + 5 })
        .emits([
          {
            type: 'ConnectionUnregistered',
            data: { tunnelId: T, connectionId: 'c-1', reason: 'revoked', unregisteredAt: NOW + 5 },
          },
          {
            type: 'ConnectionUnregistered',
            data: { tunnelId: T, connectionId: 'c-2', reason: 'revoked', unregisteredAt: NOW + 5 },
          },
          { type: 'TunnelDeleted', data: { tunnelId: T, deletedAt: NOW + 5 } },
        ]);
    });

    it('is a no-op on a deleted tunnel and refused on an absent one', () => {
      const del = { type: 'DeleteTunnel', tunnelId: T, now: NOW } as const;
      given([created, { type: 'TunnelDeleted', data: { tunnelId: T, deletedAt: NOW } }])
        .when(del)
        .emits([]);
      given([]).when(del).refused('bad_request');
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
          now,
        },
        { noNullPrototype: true },
      ),
      fc.record(
        { type: fc.constant('DeleteTunnel' as const), tunnelId: fc.constant(T), now },
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
        const roundTripped = log.map((e, i) => {
          const stored = decodeEnvelope(
            encodeEnvelope({
              stream: tunnelStream(T),
              version: i + 1,
              position: i + 1,
              recordedAt: 0,
              schema: ENVELOPE_SCHEMA,
              type: e.type,
              data: e.data,
              meta: {},
            }),
          );
          return { type: stored.type, data: stored.data } as TunnelEvent;
        });
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
