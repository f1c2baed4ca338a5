/**
 * Connections that survive faults, with real TLS through the fault proxy (test/support/fault-proxy.ts)
 * between agent and edge, and steady visitor load (test/support/load.ts) all along:
 *
 *   - one of four connections black-holed (packets stop, no FIN/RST): both sides notice within
 *     heartbeat interval × count, the edge records it `lost`, the agent replaces it, and the load sees
 *     no error beyond the requests that were in flight on that connection;
 *   - all four reset at once: all four come back;
 *   - a rolling restart of two replicas of one tunnel: no request fails;
 *   - the edge restarted under load with one agent (processes, LevelDB): no request fails, thanks to
 *     the visitor hold (connects refused while no edge process listens are retried, as a load
 *     balancer in front of several edges would);
 *   - SIGTERM to an agent in the middle of a 30 s streaming response: the response completes.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Registry } from 'prom-client';
import type { Agent, AgentConfig } from '../../src/agent/agent.ts';
import { type QuickTunnel, requestQuickTunnel } from '../../src/agent/quick-tunnel.ts';
import { defaultEdgeConfig, type Edge, startEdge } from '../../src/edge/edge.ts';
import { systemClock } from '../../src/shared/clock.ts';
import { silentLogger } from '../../src/shared/log.ts';
import type { EventLog } from '../../src/store/event-log.ts';
import { openMemoryEventLog } from '../../src/store/memory-event-log.ts';
import { type FaultProxy, startFaultProxy } from '../support/fault-proxy.ts';
import { collectText, requestStream } from '../support/http.ts';
import { startLoad } from '../support/load.ts';
import { startTestOrigin, type TestOrigin } from '../support/origin.ts';
import {
  edgeRestartSuite,
  killAll,
  restartEdgeProcess,
  startEdgeProcess,
  startTunnelProcess,
} from '../support/processes.ts';
import { startTestAgent } from '../support/stack.ts';
import { waitFor, withDeadline } from '../support/wait.ts';

/** Both sides: a silent peer is dead after 3 × 200 ms. */
const HEARTBEAT = { heartbeatIntervalMs: 200, heartbeatMissedLimit: 3 };
const ANY_PORT = { host: '127.0.0.1', port: 0 };

async function startEdgeOn(eventLog: EventLog): Promise<Edge> {
  return startEdge(
    { clock: systemClock, log: silentLogger, registry: new Registry(), eventLog },
    {
      ...defaultEdgeConfig,
      ...HEARTBEAT,
      visitor: ANY_PORT,
      tunnel: ANY_PORT,
      api: ANY_PORT,
      dns: null,
      drainTimeoutMs: 2000,
    },
  );
}

function startReplica(
  quick: QuickTunnel,
  origin: TestOrigin,
  overrides: Partial<AgentConfig> = {},
): Promise<Agent> {
  return startTestAgent(quick.credentials, origin.url, {
    ...HEARTBEAT,
    haConnections: 4,
    // Redial fast: these tests are about what is lost, not about how long backoff waits.
    backoff: { baseMs: 50, capMs: 500, healthyAfterMs: 2000 },
    ...overrides,
  });
}

/** The unregistration reasons the edge recorded for the tunnel's connections, in log order. */
async function unregisterReasons(eventLog: EventLog, tunnelId: string): Promise<string[]> {
  const events = await eventLog.readStream(`tunnel-${tunnelId}`);
  return events
    .filter((e) => e.type === 'ConnectionUnregistered')
    .map((e) => (e.data as { reason: string }).reason);
}

describe('faults between agent and edge (fault proxy, in-process edge and agent)', () => {
  let origin: TestOrigin;
  let eventLog: EventLog;
  let edge: Edge;
  let proxy: FaultProxy;
  let quick: QuickTunnel;
  before(async () => {
    origin = await startTestOrigin();
    eventLog = openMemoryEventLog({ clock: systemClock });
    edge = await startEdgeOn(eventLog);
    proxy = await startFaultProxy({ target: { host: '127.0.0.1', port: edge.tunnelPort } });
  });
  after(async () => {
    await proxy?.close();
    await edge?.close();
    await origin?.close();
  });

  /** A quick tunnel whose agents dial the proxy instead of the edge. */
  async function proxiedTunnel(): Promise<QuickTunnel> {
    const q = await requestQuickTunnel(edge.apiUrl);
    return { ...q, credentials: { ...q.credentials, edge: { ...q.credentials.edge, port: proxy.port } } };
  }

  const liveAtEdge = (tunnelId: string) => edge.routing.connectionsOf(tunnelId).length;

  it('a black-holed connection is noticed on both sides, recorded lost and replaced; the load only loses what was on it', async (t) => {
    quick = await proxiedTunnel();
    // The agent's heartbeat gives up later (3 × 400 ms) than the edge's (3 × 200 ms), so the edge drops
    // the dead session first and records it `lost`; the other way round, the agent's redial would
    // replace it first and the log would say `replaced`.
    const agent = await startReplica(quick, origin, { heartbeatIntervalMs: 400 });
    const concurrency = 8;
    await waitFor(() => agent.readyConnections === 4 && liveAtEdge(quick.credentials.tunnelId) === 4, {
      timeoutMs: 10_000,
      message: 'four registered connections',
    });
    const load = startLoad({ port: edge.visitorPort, host: quick.hostname, concurrency, timeoutMs: 5000 });
    try {
      await load.succeeded(200, 10_000);
      const victim = proxy.connections.at(-1)!;
      const before = new Set(
        edge.routing.connectionsOf(quick.credentials.tunnelId).map((c) => c.connectionId),
      );
      const accepted = proxy.accepted;
      const cutAt = performance.now();
      victim.set({ kind: 'blackhole' });
      // Replaced: a new proxied connection, four live again at the edge, one of them new.
      await waitFor(
        () =>
          proxy.accepted > accepted &&
          liveAtEdge(quick.credentials.tunnelId) === 4 &&
          edge.routing.connectionsOf(quick.credentials.tunnelId).some((c) => !before.has(c.connectionId)),
        { timeoutMs: 10_000, message: 'the black-holed connection to be replaced' },
      );
      const replacedMs = performance.now() - cutAt;
      await load.succeeded(200, 10_000);
      const report = await load.stop();
      t.diagnostic(
        `replaced after ${replacedMs.toFixed(0)} ms; load sent ${report.sent}, failed ${report.failed} (${report.failures.map((f) => f.status ?? f.code).join(', ')})`,
      );
      assert.ok(
        report.failed <= concurrency,
        `at most the requests in flight on it failed: ${report.failed}`,
      );
      for (const f of report.failures)
        assert.equal(f.status, 502, `a dropped stream, not ${f.status ?? f.code}`);
      assert.deepEqual(await unregisterReasons(eventLog, quick.credentials.tunnelId), ['lost']);
      assert.equal(agent.readyConnections, 4);
    } finally {
      await load.stop();
      await agent.shutdown('now');
    }
  });

  it('all four connections reset at once: all four come back and serve', async () => {
    quick = await proxiedTunnel();
    const agent = await startReplica(quick, origin);
    try {
      await waitFor(() => agent.readyConnections === 4 && liveAtEdge(quick.credentials.tunnelId) === 4, {
        timeoutMs: 10_000,
        message: 'four registered connections',
      });
      const accepted = proxy.accepted;
      proxy.resetAll();
      await waitFor(
        () =>
          proxy.accepted >= accepted + 4 &&
          agent.readyConnections === 4 &&
          liveAtEdge(quick.credentials.tunnelId) === 4,
        { timeoutMs: 15_000, message: 'all four connections back' },
      );
      const load = startLoad({ port: edge.visitorPort, host: quick.hostname, concurrency: 4 });
      await load.succeeded(100, 10_000);
      const report = await load.stop();
      assert.deepEqual(report.failures, []);
      assert.equal(
        (await unregisterReasons(eventLog, quick.credentials.tunnelId)).length,
        4,
        'each reset connection is recorded as gone',
      );
    } finally {
      await agent.shutdown('now');
    }
  });

  it('a rolling restart of two replicas under steady load fails no request', async (t) => {
    quick = await proxiedTunnel();
    let a = await startReplica(quick, origin, { haConnections: 2 });
    let b = await startReplica(quick, origin, { haConnections: 2 });
    await waitFor(() => liveAtEdge(quick.credentials.tunnelId) === 4, {
      timeoutMs: 10_000,
      message: 'both replicas up',
    });
    const load = startLoad({
      port: edge.visitorPort,
      host: quick.hostname,
      ratePerSecond: 300,
      concurrency: 64,
    });
    try {
      await load.succeeded(150, 10_000);
      for (const which of ['a', 'b'] as const) {
        const old = which === 'a' ? a : b;
        assert.equal((await old.shutdown('graceful')).exitCode, 0);
        const next = await startReplica(quick, origin, { haConnections: 2 });
        await waitFor(() => next.readyConnections === 2, {
          timeoutMs: 10_000,
          message: `replica ${which} back`,
        });
        if (which === 'a') a = next;
        else b = next;
        await load.succeeded(150, 10_000);
      }
      const report = await load.stop();
      t.diagnostic(`sent ${report.sent}, ok ${report.ok}, failed ${report.failed}`);
      assert.deepEqual(report.failures, []);
    } finally {
      await load.stop();
      await Promise.all([a.shutdown('now'), b.shutdown('now')]);
    }
  });
});

describe('restarts with real processes', () => {
  const suite = edgeRestartSuite();

  it('the edge restarted under steady load with one agent: no request fails', async (t) => {
    const common = await suite.dataDirArgs();
    const first = await startEdgeProcess(common);
    const agent = await startTunnelProcess(suite.origin.url, first.apiUrl);
    const load = startLoad({
      port: first.visitorPort,
      host: agent.hostname,
      ratePerSecond: 100,
      concurrency: 64,
      retryRefusedConnect: true,
      timeoutMs: 15_000,
    });
    try {
      await load.succeeded(50, 10_000);
      first.signal('SIGTERM');
      assert.deepEqual(await first.waitExit(10_000), { code: 0, signal: null }, first.stderr);
      await restartEdgeProcess(first, common);
      await load.succeeded(100, 15_000);
      const report = await load.stop();
      t.diagnostic(
        `sent ${report.sent}, ok ${report.ok}, connect retried ${report.retriedConnects}, max latency ${Math.max(...report.latenciesMs)} ms`,
      );
      assert.deepEqual(report.failures, []);
      assert.ok(agent.running, 'the same agent serves on');
    } finally {
      await load.stop();
      await killAll();
    }
  });

  it('SIGTERM to the agent during a 30 s streaming response: the response completes, the agent exits 0', async () => {
    const edge = await startEdgeProcess(['--memory']);
    const agent = await startTunnelProcess(suite.origin.url, edge.apiUrl);
    const events = 30;
    const res = await requestStream({
      port: edge.visitorPort,
      host: agent.hostname,
      path: `/sse?n=${events}`,
    });
    assert.equal(res.statusCode, 200);
    const { text, ended } = collectText(res);
    const received = () => (text().match(/^data: /gm) ?? []).length;
    await waitFor(() => received() === 1, { timeoutMs: 5000, message: 'the first event' });
    agent.signal('SIGTERM');
    await agent.waitForStderr(/shutting down gracefully/, 5000);
    // The origin sends one event a second for the remaining 29 s, inside the default 30 s grace period.
    // The pause is the workload (a response that streams for 30 s), not a wait for something to happen.
    for (let i = 2; i <= events; i++) {
      await new Promise<void>((resolve) => setTimeout(resolve, 1000));
      suite.origin.sse.next();
      await waitFor(() => received() === i, { timeoutMs: 5000, message: `event ${i}` });
    }
    await withDeadline(ended, 5000, 'the end of the stream');
    assert.equal(received(), events);
    assert.deepEqual(await agent.waitExit(10_000), { code: 0, signal: null });
  });
});
