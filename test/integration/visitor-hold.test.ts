/**
 * The visitor hold with a real edge, real agents and the test origin in this process: restarting a
 * tunnel's only agent under steady load loses no request; a hold that runs out, a full hold and a
 * tunnel gone for long all answer 530.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Agent } from '../../src/agent/agent.ts';
import { type QuickTunnel, requestQuickTunnel } from '../../src/agent/quick-tunnel.ts';
import type { Edge } from '../../src/edge/edge.ts';
import { request } from '../support/http.ts';
import { startLoad } from '../support/load.ts';
import { startTestOrigin, type TestOrigin } from '../support/origin.ts';
import { startTestAgent, startTestEdge } from '../support/stack.ts';
import { waitFor } from '../support/wait.ts';

function agentFor(quick: QuickTunnel, origin: TestOrigin): Promise<Agent> {
  return startTestAgent(quick.credentials, origin.url, { haConnections: 2 });
}

async function holdCount(edge: Edge, outcome: string): Promise<number> {
  const res = await request({ port: edge.apiPort, path: '/metrics', timeoutMs: 5000 });
  const m = res.body
    .toString()
    .match(new RegExp(`warren_edge_visitor_holds_total\\{outcome="${outcome}"\\} (\\d+)`));
  return m ? Number(m[1]) : 0;
}

describe('visitor hold', () => {
  let origin: TestOrigin;
  before(async () => {
    origin = await startTestOrigin();
  });
  after(async () => {
    await origin.close();
  });

  it('restarting the only agent under steady load loses no request', async (t) => {
    const edge = await startTestEdge({
      visitorHold: { timeoutMs: 5000, recentMs: 15_000, maxPerTunnel: 1024, maxTotal: 8192 },
    });
    const quick = await requestQuickTunnel(edge.apiUrl);
    const first = await agentFor(quick, origin);
    await first.firstRegistration;
    const load = startLoad({
      port: edge.visitorPort,
      host: quick.hostname,
      ratePerSecond: 200,
      concurrency: 64,
    });
    try {
      await load.succeeded(100, 10_000);
      assert.equal((await first.shutdown('graceful')).exitCode, 0);
      // The edge now has no connection for this tunnel: requests are held, not answered 530.
      const second = await agentFor(quick, origin);
      await second.firstRegistration;
      await load.succeeded(200, 10_000);
      const report = await load.stop();
      await second.shutdown('now');
      const held = await holdCount(edge, 'connected');
      t.diagnostic(`sent ${report.sent}, ok ${report.ok}, held then served ${held}`);
      assert.deepEqual(report.failures, [], 'no request failed');
      assert.ok(held > 0, 'some requests waited in the hold and were then served');
    } finally {
      await load.stop();
      await edge.close();
    }
  });

  it('a hold that runs out answers 530; a full hold and an unknown host answer 530 at once', async () => {
    const edge = await startTestEdge({
      visitorHold: { timeoutMs: 400, recentMs: 15_000, maxPerTunnel: 2, maxTotal: 8192 },
    });
    try {
      const quick = await requestQuickTunnel(edge.apiUrl);
      const agent = await agentFor(quick, origin);
      await agent.firstRegistration;
      await agent.shutdown('graceful');
      const visit = () => {
        const started = Date.now();
        return request({
          port: edge.visitorPort,
          host: quick.hostname,
          path: '/status/200',
          timeoutMs: 5000,
        }).then((res) => ({
          status: res.status,
          code: res.headers['warren-error'],
          ms: Date.now() - started,
        }));
      };
      const [a, b, c] = await Promise.all([visit(), visit(), visit()]);
      const answers = [a, b, c].sort((x, y) => x.ms - y.ms);
      for (const r of answers) assert.deepEqual([r.status, r.code], [530, 'no_tunnel']);
      assert.ok(answers[0]!.ms < 300, `the third held request was refused at once (${answers[0]!.ms} ms)`);
      assert.ok(answers[1]!.ms >= 380 && answers[2]!.ms >= 380, 'two waited out the hold');
      const unknown = await request({
        port: edge.visitorPort,
        host: 'nobody.warren.localhost',
        path: '/',
        timeoutMs: 5000,
      });
      assert.equal(unknown.status, 530);
      assert.equal(await holdCount(edge, 'timeout'), 2);
      assert.equal(await holdCount(edge, 'full'), 1);
    } finally {
      await edge.close();
    }
  });

  it('does not hold for a tunnel whose last connection left longer ago than recentMs', async () => {
    const edge = await startTestEdge({
      visitorHold: { timeoutMs: 5000, recentMs: 0, maxPerTunnel: 8, maxTotal: 8 },
    });
    try {
      const quick = await requestQuickTunnel(edge.apiUrl);
      const agent = await agentFor(quick, origin);
      await agent.firstRegistration;
      await agent.shutdown('graceful');
      // recentMs 0: once the edge has let go of every connection and the clock has moved past the
      // moment it did (as the routing table and the log each saw it), the tunnel is "long" gone.
      const tunnelId = quick.credentials.tunnelId;
      await waitFor(
        () => {
          if (edge.routing.connectionsOf(tunnelId).length > 0) return false;
          const left = edge.routing.lastLiveAt(tunnelId) ?? 0;
          const inactive = edge.controlPlane.directory.tunnels.get(tunnelId)?.inactiveAt ?? null;
          return inactive !== null && Date.now() > Math.max(left, inactive);
        },
        { timeoutMs: 5000, message: 'the edge to record that the tunnel has no connection' },
      );
      const started = Date.now();
      const res = await request({ port: edge.visitorPort, host: quick.hostname, path: '/', timeoutMs: 5000 });
      assert.equal(res.status, 530);
      assert.ok(Date.now() - started < 2000, 'answered without waiting out the hold');
    } finally {
      await edge.close();
    }
  });
});
