import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createActor } from 'xstate';
import type { BackoffPolicy } from '../../src/actors/backoff.ts';
import {
  DEFAULT_STAGGER_MS,
  supervisorMachine,
  supervisorStatus,
  supervisorView,
} from '../../src/actors/supervisor.machine.ts';
import { pickEndpoint } from '../../src/agent/agent.ts';
import { discoverEdgeEndpoints } from '../../src/agent/tunnel-connection.ts';
import { startDnsServer } from '../../src/edge/dns-server.ts';
import { ManualClock } from '../../src/shared/clock.ts';
import { isWarrenError, WarrenError } from '../../src/shared/errors.ts';
import { silentLogger } from '../../src/shared/log.ts';
import { FakeEdge, flush } from '../support/fake-connection.ts';

const policy: BackoffPolicy = { baseMs: 1000, capMs: 8000, healthyAfterMs: 10_000 };

function start(opts: { haConnections: number; staggerMs?: number }) {
  const clock = new ManualClock();
  const edge = new FakeEdge({ clock });
  const actor = createActor(edge.supervisorMachine(), {
    clock,
    input: {
      haConnections: opts.haConnections,
      ...(opts.staggerMs === undefined ? {} : { staggerMs: opts.staggerMs }),
      connection: { backoff: policy, gracePeriodMs: 5000, random: () => 0.5 },
    },
  });
  actor.start();
  const startedAt = clock.now();
  const view = () => supervisorView(actor.getSnapshot());
  return { clock, actor, startedAt, view, dials: edge.dials, drains: edge.drains };
}

describe('supervisor machine', () => {
  it(`starts connection i at i × staggerMs (default ${DEFAULT_STAGGER_MS} ms), as children conn-0 … conn-N-1`, () => {
    const t = start({ haConnections: 4 });
    assert.deepEqual(
      t.dials.map((d) => d.input.connIndex),
      [0],
    );
    assert.deepEqual(
      t.view().connections.map((c) => c.status),
      ['dialing', 'pending', 'pending', 'pending'],
    );
    t.clock.advance(DEFAULT_STAGGER_MS * 3);
    assert.deepEqual(
      t.dials.map((d) => [d.input.connIndex, d.at - t.startedAt]),
      [
        [0, 0],
        [1, 250],
        [2, 500],
        [3, 750],
      ],
    );
    assert.deepEqual(
      t.actor.getSnapshot().context.children.map((c) => c.id),
      ['conn-0', 'conn-1', 'conn-2', 'conn-3'],
    );
    assert.equal(t.clock.pendingTimers, 0, 'no stagger timer once all have started');
    t.actor.send({ type: 'SHUTDOWN', mode: 'now' });
  });

  it('staggerMs 0 starts every connection at once', () => {
    const t = start({ haConnections: 3, staggerMs: 0 });
    assert.equal(t.dials.length, 3);
    assert.equal(t.clock.pendingTimers, 0);
    t.actor.send({ type: 'SHUTDOWN', mode: 'now' });
  });

  it('counts connected children in its view', async () => {
    const t = start({ haConnections: 2, staggerMs: 0 });
    t.dials[1]!.succeed();
    await flush();
    const view = t.view();
    assert.equal(view.status, 'running');
    assert.equal(view.connected, 1);
    assert.deepEqual(view.connections, [
      { connIndex: 0, status: 'dialing', connectionId: null, pop: null },
      { connIndex: 1, status: 'connected', connectionId: 'c1', pop: 'lhr' },
    ]);
    t.actor.send({ type: 'SHUTDOWN', mode: 'now' });
  });

  it('a fatal error on one connection stops the others now and ends failed with that error', async () => {
    const t = start({ haConnections: 3, staggerMs: 100 });
    t.clock.advance(100);
    const live = t.dials[1]!.succeed();
    await flush();
    const denied = new WarrenError('tunnel_deleted', 'this tunnel has been deleted');
    t.dials[0]!.fail(denied);
    await flush();

    const snapshot = t.actor.getSnapshot();
    assert.equal(snapshot.status, 'done');
    assert.equal(supervisorStatus(snapshot), 'failed');
    assert.deepEqual(snapshot.output, { status: 'failed', error: denied });
    assert.ok(live.aborted, 'the live connection was closed at once');
    assert.equal(t.drains.length, 0, 'no graceful drain after a fatal error');
    assert.equal(t.dials.length, 2, 'conn-2 never started');
    assert.equal(t.clock.pendingTimers, 0);
    assert.equal(t.view().connections[2]?.status, 'pending');
  });

  it('graceful shutdown drains every connection and ends closed once the last drain is done', async () => {
    const t = start({ haConnections: 3, staggerMs: 0 });
    const a = t.dials[0]!.succeed();
    t.dials[1]!.succeed();
    await flush();
    t.actor.send({ type: 'SHUTDOWN', mode: 'graceful' });
    assert.equal(supervisorStatus(t.actor.getSnapshot()), 'stopping');
    assert.ok(t.dials[2]!.signal.aborted, 'the dial in progress is dropped');
    assert.deepEqual(
      t.drains.map((d) => d.connIndex),
      [0, 1],
    );
    t.drains[0]!.finish();
    await flush();
    assert.equal(supervisorStatus(t.actor.getSnapshot()), 'stopping', 'one drain is still running');
    t.drains[1]!.finish();
    await flush();
    assert.equal(supervisorStatus(t.actor.getSnapshot()), 'closed');
    assert.deepEqual(t.actor.getSnapshot().output, { status: 'closed' });
    assert.equal(a.aborted, false, 'a drained connection is not aborted');
    assert.equal(t.clock.pendingTimers, 0);
  });

  it('SHUTDOWN now during a graceful shutdown hurries the drains', async () => {
    const t = start({ haConnections: 1 });
    const conn = t.dials[0]!.succeed();
    await flush();
    t.actor.send({ type: 'SHUTDOWN', mode: 'graceful' });
    t.actor.send({ type: 'SHUTDOWN', mode: 'now' });
    assert.equal(supervisorStatus(t.actor.getSnapshot()), 'closed');
    assert.ok(conn.aborted);
    assert.equal(t.clock.pendingTimers, 0);
  });

  it('connections not started yet never start after a shutdown', () => {
    const t = start({ haConnections: 4 });
    t.actor.send({ type: 'SHUTDOWN', mode: 'graceful' });
    assert.equal(supervisorStatus(t.actor.getSnapshot()), 'closed');
    t.clock.advance(3_600_000);
    assert.equal(t.dials.length, 1);
    assert.equal(t.clock.pendingTimers, 0);
  });

  it('retries exhausted on one connection count as failing for good', async () => {
    const clock = new ManualClock();
    const edge = new FakeEdge({ clock });
    const actor = createActor(edge.supervisorMachine(), {
      clock,
      input: {
        haConnections: 2,
        staggerMs: 0,
        connection: { backoff: policy, gracePeriodMs: 5000, random: () => 0, maxRetries: 0 },
      },
    });
    actor.start();
    const last = new WarrenError('dial_failed', 'unreachable', { retryable: true });
    edge.dials[1]!.fail(last);
    await flush();
    assert.deepEqual(actor.getSnapshot().output, { status: 'failed', error: last });
    assert.ok(edge.dials[0]!.signal.aborted);
  });

  it('rejects an input it cannot honour', () => {
    const clock = new ManualClock();
    const connection = { backoff: policy, gracePeriodMs: 1000 };
    for (const input of [
      { haConnections: 0, connection },
      { haConnections: 1.5, connection },
      { haConnections: 2, staggerMs: -1, connection },
    ]) {
      const actor = createActor(supervisorMachine, { clock, input });
      let error: unknown;
      actor.subscribe({ error: (e) => (error = e) });
      actor.start();
      assert.ok(error instanceof RangeError, `${JSON.stringify(input)}: ${String(error)}`);
    }
  });

  it('a child whose actors were not provided fails, and so does the supervisor', async () => {
    const actor = createActor(supervisorMachine, {
      clock: new ManualClock(),
      input: { haConnections: 2, staggerMs: 0, connection: { backoff: policy, gracePeriodMs: 1000 } },
    });
    actor.start();
    await flush();
    const output = actor.getSnapshot().output;
    assert.equal(output?.status, 'failed');
    assert.ok(output?.status === 'failed' && /not provided/.test(output.error.message));
    assert.ok(!isWarrenError(output?.status === 'failed' ? output.error : null));
  });
});

// ---------------------------------------------------------------------------------------------

describe('HA endpoints (where the supervised connections dial)', () => {
  const endpoints = ['a', 'b', 'c'].map((host) => ({ host, port: 7844, serverName: 'edge.test' }));

  it('spreads healthy connections over every endpoint and moves a failing one on', () => {
    assert.deepEqual(
      [0, 1, 2, 3].map((i) => pickEndpoint(endpoints, i, 0).host),
      ['a', 'b', 'c', 'a'],
    );
    assert.deepEqual(
      [0, 1, 2, 3, 4].map((attempts) => pickEndpoint(endpoints, 1, attempts).host),
      ['b', 'c', 'a', 'b', 'c'],
    );
    assert.equal(pickEndpoint(endpoints.slice(0, 1), 3, 7).host, 'a');
    assert.throws(
      () => pickEndpoint([], 0, 0),
      (e) => isWarrenError(e, 'bad_config'),
    );
  });

  it("finds the endpoints in the edge's SRV record, addresses from the same DNS server", async () => {
    const dns = await startDnsServer(
      {
        clock: new ManualClock(),
        log: silentLogger,
        view: {
          zoneOf: () => undefined,
          recordsAt: () => [],
          tunnelForHost: () => undefined,
          tunnels: new Map(),
        },
      },
      {
        host: '127.0.0.1',
        port: 0,
        edgeDomain: 'warren-edge.test',
        addresses: { ipv4: ['127.0.0.1'], ipv6: [] },
        tunnelEndpoints: [
          { host: '127.0.0.1', port: 7001 },
          { host: '::1', port: 7002 },
          { host: 'pop3.example.net', port: 7003 },
        ],
      },
    );
    try {
      const resolver = { host: '127.0.0.1', port: dns.port };
      const found = await discoverEdgeEndpoints('warren-edge.test', { serverName: 'tunnel.test', resolver });
      assert.deepEqual(found, [
        { host: '127.0.0.1', port: 7001, serverName: 'tunnel.test' },
        { host: '::1', port: 7002, serverName: 'tunnel.test' },
        // A name the edge does not answer for is left to the dial.
        { host: 'pop3.example.net', port: 7003, serverName: 'tunnel.test' },
      ]);
      assert.deepEqual(
        await discoverEdgeEndpoints('_warren._tcp.warren-edge.test', { serverName: 'tunnel.test', resolver }),
        found,
        'a whole SRV name works too',
      );
      await assert.rejects(
        discoverEdgeEndpoints('elsewhere.test', { serverName: 'tunnel.test', resolver, timeoutMs: 2000 }),
        (e) => isWarrenError(e),
      );
    } finally {
      await dns.close();
    }
  });
});
