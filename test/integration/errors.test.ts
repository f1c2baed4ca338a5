/**
 * What visitors and agents see when something is wrong: the origin is down, the host has no tunnel,
 * the agent's tunnel secret is wrong (HMAC proof refused), or the edge's certificate is not signed by
 * the CA the agent was told to trust.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { defaultAgentConfig, startAgent } from '../../src/agent/agent.ts';
import { requestQuickTunnel } from '../../src/agent/quick-tunnel.ts';
import type { Edge } from '../../src/edge/edge.ts';
import { systemClock } from '../../src/shared/clock.ts';
import { isWarrenError } from '../../src/shared/errors.ts';
import { silentLogger } from '../../src/shared/log.ts';
import { request } from '../support/http.ts';
import { startTestOrigin, type TestOrigin } from '../support/origin.ts';
import { killAll, spawnTunnel } from '../support/processes.ts';
import { type Stack, startStack, startTestEdge } from '../support/stack.ts';
import { withDeadline } from '../support/wait.ts';

const _ANY_PORT = { host: '127.0.0.1', port: 0 };

function startBareEdge(): Promise<Edge> {
  return startTestEdge();
}

/** A loopback port that nothing listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe('origin down', () => {
  let stack: Stack;
  before(async () => {
    stack = await startStack({ originUrl: `http://127.0.0.1:${await closedPort()}` });
  });
  after(async () => {
    await stack?.close();
  });

  it('answers 502 with Warren-Error origin_unreachable, and the tunnel stays up', async () => {
    for (const method of ['GET', 'POST']) {
      const res = await stack.request('/anything', {
        method,
        ...(method === 'POST' ? { body: Buffer.alloc(100_000, 1) } : {}),
      });
      assert.equal(res.status, 502);
      assert.equal(res.headers['warren-error'], 'origin_unreachable');
      assert.match(res.headers['content-type'] ?? '', /^text\/html/);
      assert.match(res.body.toString(), /origin_unreachable/);
      assert.match(res.body.toString(), new RegExp(stack.hostname.replace(/\./g, '\\.')));
    }
    assert.equal(stack.agent.readyConnections, 1);
  });
});

describe('unknown host', () => {
  let stack: Stack;
  before(async () => {
    stack = await startStack();
  });
  after(async () => {
    await stack?.close();
  });

  it('answers 530 with Warren-Error no_tunnel', async () => {
    for (const host of ['no-such-tunnel-0000.warren.localhost', 'example.com:8080', '127.0.0.1']) {
      const res = await request({ port: stack.visitorPort, host, path: '/' });
      assert.equal(res.status, 530, host);
      assert.equal(res.headers['warren-error'], 'no_tunnel');
      assert.match(res.body.toString(), /no_tunnel/);
    }
    // The real hostname still works, whatever its case.
    const ok = await request({
      port: stack.visitorPort,
      host: stack.hostname.toUpperCase(),
      path: '/status/200',
    });
    assert.equal(ok.status, 200);
    assert.equal(stack.origin.requests, 1);
  });
});

describe('wrong tunnel secret', () => {
  let edge: Edge;
  let origin: TestOrigin;
  before(async () => {
    origin = await startTestOrigin();
    edge = await startBareEdge();
  });
  after(async () => {
    await edge?.close();
    await origin?.close();
  });

  it('the edge refuses the HMAC proof with auth_failed and the agent stops with exit code 1', async () => {
    const quick = await requestQuickTunnel(edge.apiUrl);
    const secret = Buffer.from(quick.credentials.secret);
    secret[7]! ^= 0x01;
    const agent = await startAgent(
      { clock: systemClock, log: silentLogger, registry: new Registry() },
      {
        ...defaultAgentConfig,
        haConnections: 2,
        credentials: { ...quick.credentials, secret },
        origin: { originUrl: new URL(origin.url) },
      },
    );
    try {
      const exit = await withDeadline(agent.done, 10_000, 'the agent to give up');
      assert.equal(exit.exitCode, 1);
      assert.ok(isWarrenError(exit.error, 'auth_failed'), `expected auth_failed, got ${exit.error}`);
      assert.equal(exit.error.retryable, false);
      await assert.rejects(agent.firstRegistration, (err) => isWarrenError(err, 'auth_failed'));
      assert.equal(agent.readyConnections, 0);
      const res = await request({ port: edge.visitorPort, host: quick.hostname, path: '/' });
      assert.equal(res.status, 530);
      assert.equal(origin.requests, 0);
    } finally {
      await agent.shutdown('now');
    }
  });
});

describe('wrong edge CA', () => {
  let edge: Edge;
  let otherEdge: Edge;
  let origin: TestOrigin;
  let dir: string;
  before(async () => {
    origin = await startTestOrigin();
    [edge, otherEdge] = await Promise.all([startBareEdge(), startBareEdge()]);
    dir = await mkdtemp(path.join(os.tmpdir(), 'warren-ca-'));
  });
  after(async () => {
    await killAll();
    await Promise.all([edge?.close(), otherEdge?.close(), origin?.close()]);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('warren tunnel --edge-ca <another edge CA> refuses the edge and exits non-zero', async () => {
    assert.notEqual(edge.caCertPem, otherEdge.caCertPem);
    const caFile = path.join(dir, 'other-edge-ca.pem');
    await writeFile(caFile, otherEdge.caCertPem);
    const agent = spawnTunnel(origin.url, edge.apiUrl, ['--edge-ca', caFile, '--loglevel', 'warn']);
    const exit = await agent.waitExit(30_000);
    assert.notEqual(exit.code, 0, `exit ${JSON.stringify(exit)}`);
    assert.equal(exit.signal, null);
    assert.match(agent.stderr, /tls_verify_failed/);
    assert.match(agent.stderr, /certificate/i);
    assert.match(agent.stderr, /edge CA/);
    // It never claimed to be up.
    assert.doesNotMatch(agent.stdout, /quick tunnel is up/i);
    assert.equal(origin.requests, 0);
  });
});
