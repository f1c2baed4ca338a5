/**
 * Faults with real processes: an agent killed outright or frozen (the edge must stop routing to it
 * within the heartbeat timeout), an agent asked to stop while a response is in flight (the response
 * finishes, the agent exits 0), and an edge restarted on the same data dir and ports, gracefully and
 * after a crash (the agent reconnects and the quick tunnel, kept in the LevelDB log, serves again).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { collectText, type Response, request, requestStream } from '../support/http.ts';
import { startTestOrigin, type TestOrigin } from '../support/origin.ts';
import {
  type EdgeProcess,
  edgeRestartSuite,
  killAll,
  restartEdgeProcess,
  startEdgeProcess,
  startTunnelProcess,
  type TunnelProcess,
} from '../support/processes.ts';
import { waitFor, withDeadline } from '../support/wait.ts';

/**
 * Edge heartbeats for these tests: a silent agent is dead after 3 × 200 ms. The visitor hold is off,
 * so that a dropped agent shows at once as 530 (test/integration/visitor-hold.test.ts covers the hold).
 */
const HEARTBEAT_ARGS = ['--heartbeat-interval', '200ms', '--heartbeat-count', '3', '--visitor-hold', '0'];
/** What "within the heartbeat timeout" may take on a loaded machine, detection and routing included. */
const DROP_DEADLINE_MS = 4000;

function visit(port: number, host: string, path = '/status/200', timeoutMs = 2000): Promise<Response> {
  return request({ port, host, path, timeoutMs });
}

async function expectServed(port: number, host: string): Promise<void> {
  const res = await visit(port, host, '/echo', 10_000);
  assert.equal(res.status, 200, res.body.toString());
  assert.equal(JSON.parse(res.body.toString()).method, 'GET');
}

/** Polls until visitors of `host` get 530 no_tunnel; returns how long that took. */
async function waitForNoTunnel(port: number, host: string, timeoutMs: number): Promise<number> {
  const started = performance.now();
  await waitFor(
    async () => {
      // A request routed to a connection that is about to be dropped may hang or fail: not yet.
      const res = await visit(port, host, '/status/200', 1000);
      return res.status === 530 && res.headers['warren-error'] === 'no_tunnel';
    },
    { timeoutMs, intervalMs: 25, message: `visitors of ${host} to get 530 no_tunnel` },
  );
  return performance.now() - started;
}

describe('agent faults (edge and agents as processes)', () => {
  let origin: TestOrigin;
  let edge: EdgeProcess;
  before(async () => {
    origin = await startTestOrigin();
    edge = await startEdgeProcess(['--memory', ...HEARTBEAT_ARGS]);
  });
  after(async () => {
    await killAll();
    await origin?.close();
  });

  it('SIGKILL: visitors get 530 within the heartbeat timeout', async (t) => {
    const agent = await startTunnelProcess(origin.url, edge.apiUrl, ['--loglevel', 'warn']);
    await expectServed(edge.visitorPort, agent.hostname);
    agent.signal('SIGKILL');
    const took = await waitForNoTunnel(edge.visitorPort, agent.hostname, DROP_DEADLINE_MS);
    assert.equal((await agent.waitExit(5000)).signal, 'SIGKILL');
    t.diagnostic(`530 after ${took.toFixed(0)} ms`);
    assert.ok(edge.running, 'the edge survives');
  });

  it('SIGSTOP: a silent agent (socket still open) is dropped by heartbeats, then visitors get 530', async (t) => {
    const agent = await startTunnelProcess(origin.url, edge.apiUrl, ['--loglevel', 'warn']);
    try {
      await expectServed(edge.visitorPort, agent.hostname);
      agent.signal('SIGSTOP');
      const took = await waitForNoTunnel(edge.visitorPort, agent.hostname, DROP_DEADLINE_MS);
      t.diagnostic(`530 after ${took.toFixed(0)} ms`);
      // Its TCP connection is still open: only the missed heartbeats can have told the edge.
      await edge.waitForStderr(/heartbeat lost/, 2000);
    } finally {
      await agent.kill();
    }
  });

  it('SIGINT during a slow response: the response completes, new requests get 530, the agent exits 0', async () => {
    const agent = await startTunnelProcess(origin.url, edge.apiUrl);
    const res = await requestStream({ port: edge.visitorPort, host: agent.hostname, path: '/slow' });
    assert.equal(res.statusCode, 200);
    const { text, ended } = collectText(res);
    await waitFor(() => text() === 'slow start\n', { timeoutMs: 5000, message: 'the first part of /slow' });

    agent.signal('SIGINT');
    await agent.waitForStderr(/SIGINT: shutting down gracefully/, 5000);
    // The agent unregistered: the edge routes nothing new to it, while the slow response is still open.
    await waitForNoTunnel(edge.visitorPort, agent.hostname, 5000);
    assert.equal(text(), 'slow start\n');
    assert.ok(agent.running, 'the agent waits for the in-flight response');

    origin.release();
    await withDeadline(ended, 5000, 'the rest of /slow');
    assert.equal(text(), 'slow start\nslow end\n');
    const exit = await agent.waitExit(10_000);
    assert.deepEqual(exit, { code: 0, signal: null });
  });
});

describe('edge restart (LevelDB data dir, same ports)', () => {
  const suite = edgeRestartSuite();

  // One agent per scenario: a connection lost within 10 s of the last one keeps backing off from where
  // the previous outage left it, so a shared agent would make the second outage's wait much longer.
  for (const stop of ['SIGTERM', 'SIGKILL'] as const) {
    it(`${stop} of the edge: the agent reconnects to the restarted edge and the quick tunnel serves again`, async (t) => {
      const common = await suite.dataDirArgs();
      const first = await startEdgeProcess(common);
      const agent: TunnelProcess = await startTunnelProcess(suite.origin.url, first.apiUrl);
      await expectServed(first.visitorPort, agent.hostname);

      first.signal(stop);
      const exit = await first.waitExit(10_000);
      if (stop === 'SIGTERM') assert.deepEqual(exit, { code: 0, signal: null }, first.stderr);
      else assert.equal(exit.signal, 'SIGKILL');
      await assert.rejects(visit(first.visitorPort, agent.hostname), /ECONNREFUSED/);

      const restartedAt = performance.now();
      const second = await restartEdgeProcess(first, common);
      assert.deepEqual(
        [second.visitorPort, second.tunnelPort, second.apiPort],
        [first.visitorPort, first.tunnelPort, first.apiPort],
      );
      await waitFor(
        async () => (await visit(second.visitorPort, agent.hostname, '/status/200', 2000)).status === 200,
        // Redials back off with full jitter (ceilings 1, 2, 4, 8 s …) while the edge is down, so the
        // redial that finds the new edge can come several seconds after it is up.
        { timeoutMs: 20_000, intervalMs: 50, message: `the agent to serve again after ${stop} of the edge` },
      );
      t.diagnostic(`served again ${(performance.now() - restartedAt).toFixed(0)} ms after the restart began`);
      await expectServed(second.visitorPort, agent.hostname);
      // The same agent and the same quick tunnel: its hostname came back from the edge's log.
      assert.ok(agent.running, 'the agent kept running');
      assert.match(agent.stderr, /retrying/);
      assert.equal((agent.stdout.match(/quick tunnel is up/g) ?? []).length, 1);
      await Promise.all([agent.kill(), second.kill()]);
    });
  }
});
