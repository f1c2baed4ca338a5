/**
 * An account runs at most `accountTunnelLimit` (default 1000) tunnels at once. One edge in this
 * process, 1001 named tunnels made through the control API, and a light agent on the real protocol
 * (TLS, hello, register with the HMAC proof) holding one connection per tunnel: the first 1000
 * register, the 1001st is refused with `account_tunnel_limit`, a second connection of a tunnel that
 * is already active does not count, and once one tunnel goes away the 1001st gets its slot.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import { parseCredentialsFile } from '../../src/agent/credentials.ts';
import type { AgentConnection, TunnelCredentials } from '../../src/agent/tunnel-connection.ts';
import { defaultEdgeConfig, type Edge } from '../../src/edge/edge.ts';
import { systemClock } from '../../src/shared/clock.ts';
import { isWarrenError } from '../../src/shared/errors.ts';
import { silentLogger } from '../../src/shared/log.ts';
import { request } from '../support/http.ts';
import { LightAgent } from '../support/light-agent.ts';
import { startTestEdge } from '../support/stack.ts';
import { waitFor, withDeadline } from '../support/wait.ts';

const _ANY_PORT = { host: '127.0.0.1', port: 0 };
const LIMIT = defaultEdgeConfig.accountTunnelLimit;
const TUNNELS = LIMIT + 1;
/** API requests and TLS handshakes in flight at once. */
const API_CONCURRENCY = 8;
const CONNECT_CONCURRENCY = 32;
const STEP_MS = 30_000;

interface Created {
  tunnelId: string;
  credentials: TunnelCredentials;
}

describe(`an account's ${LIMIT + 1}st concurrent tunnel`, { timeout: 120_000 }, () => {
  let edge: Edge;
  let accountId: string;
  let tunnels: Created[];
  let agent: LightAgent;
  let connections: AgentConnection[];
  const api = new http.Agent({ keepAlive: true, maxSockets: API_CONCURRENCY });

  const activeTunnels = () => edge.controlPlane.directory.activeTunnels(accountId);
  const liveConnections = (t: Created) =>
    edge.controlPlane.directory.tunnels.get(t.tunnelId)!.connections.size;
  const headPosition = () => edge.controlPlane.directory.position;

  before(async () => {
    const clock = systemClock;
    edge = await startTestEdge();
    assert.equal(edge.config.accountTunnelLimit, 1000, 'the default limit is what this test is about');
    const account = await edge.controlPlane.initialize({
      accountName: 'limits',
      zone: 'limits.example',
      member: 'ops@limits.example',
    });
    accountId = account.accountId;

    // Through the API as `warren tunnel create` does: the answer carries the credentials file.
    const create = async (i: number): Promise<Created> => {
      const res = await request({
        port: edge.apiPort,
        method: 'POST',
        path: `/v1/accounts/${accountId}/tunnels`,
        headers: { authorization: `Bearer ${account.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: `t${i}` }),
        agent: api,
      });
      assert.equal(res.status, 201, res.body.toString());
      const { result } = JSON.parse(res.body.toString()) as { result: { id: string; credentials: unknown } };
      return {
        tunnelId: result.id,
        credentials: parseCredentialsFile(JSON.stringify(result.credentials), `t${i}.json`),
      };
    };
    tunnels = new Array(TUNNELS);
    let next = 0;
    await withDeadline(
      Promise.all(
        Array.from({ length: API_CONCURRENCY }, async () => {
          while (next < TUNNELS) {
            const i = next++;
            tunnels[i] = await create(i);
          }
        }),
      ),
      STEP_MS,
      `creating ${TUNNELS} tunnels through the API`,
    );
    agent = new LightAgent({ clock, log: silentLogger });
  });

  after(async () => {
    await agent?.closeAll();
    await edge?.close();
    api.destroy();
  });

  it(`registers one connection for each of the first ${LIMIT} tunnels`, async () => {
    connections = await withDeadline(
      agent.connectMany(
        tunnels.slice(0, LIMIT).map((t) => t.credentials),
        { concurrency: CONNECT_CONCURRENCY },
      ),
      STEP_MS,
      `registering ${LIMIT} tunnels`,
    );
    assert.equal(connections.length, LIMIT);
    assert.equal(agent.openConnections, LIMIT);
    // The edge appends the event before it answers `registered`, so the count is already there.
    assert.equal(activeTunnels(), LIMIT);
    assert.equal(edge.routing.connectionCount, LIMIT);
  });

  it('lets a tunnel that is already active add a connection at the limit', async () => {
    const second = await withDeadline(
      agent.connect(tunnels[0]!.credentials, { connIndex: 1 }),
      STEP_MS,
      'second connection of an active tunnel',
    );
    assert.equal(second.connIndex, 1);
    assert.equal(liveConnections(tunnels[0]!), 2);
    assert.equal(activeTunnels(), LIMIT);
  });

  it(`refuses the ${LIMIT + 1}st tunnel with account_tunnel_limit and records nothing`, async () => {
    const before = headPosition();
    const refused = await agent.connect(tunnels[LIMIT]!.credentials).then(
      () => assert.fail('the edge registered a tunnel past the account limit'),
      (err: unknown) => err,
    );
    assert.ok(isWarrenError(refused, 'account_tunnel_limit'), `got ${String(refused)}`);
    assert.equal(refused.retryable, false);
    assert.match(refused.message, /already runs 1000 tunnels, its limit is 1000/);
    assert.match(refused.message, /stop or delete one/);
    assert.equal(headPosition(), before, 'a refused registration appends no event');
    assert.equal(liveConnections(tunnels[LIMIT]!), 0);
    assert.equal(activeTunnels(), LIMIT);
  });

  it(`registers the ${LIMIT + 1}st once one of the ${LIMIT} has gone away`, async () => {
    const leaving = tunnels[1]!;
    await withDeadline(agent.disconnect(connections[1]!), STEP_MS, 'graceful disconnect');
    await waitFor(() => liveConnections(leaving) === 0 && activeTunnels() === LIMIT - 1, {
      timeoutMs: STEP_MS,
      message: 'the unregistration to be recorded',
    });
    const unregistered = edge.controlPlane.directory
      .audit(accountId)
      .findLast((e) => e.action === 'connection.unregister');
    assert.equal(unregistered?.tunnelId, leaving.tunnelId);
    assert.equal(unregistered?.details.reason, 'graceful');

    const late = await withDeadline(agent.connect(tunnels[LIMIT]!.credentials), STEP_MS, `${LIMIT + 1}st`);
    assert.ok(late.connectionId);
    assert.equal(liveConnections(tunnels[LIMIT]!), 1);
    assert.equal(activeTunnels(), LIMIT);

    // The slot is taken again: the tunnel that left cannot come back now.
    await assert.rejects(agent.connect(leaving.credentials), (err: unknown) =>
      isWarrenError(err, 'account_tunnel_limit'),
    );
  });

  it('records every connection as gone when the agent closes them', async () => {
    await withDeadline(agent.closeAll(), STEP_MS, 'closing every connection');
    await waitFor(() => activeTunnels() === 0, {
      timeoutMs: STEP_MS,
      message: 'every unregistration to be recorded',
    });
    assert.equal(edge.routing.connectionCount, 0);
  });
});
