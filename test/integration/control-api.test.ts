/**
 * The control API over real HTTP against an in-process edge: bearer tokens, error bodies,
 * pagination, members and token rolls, tunnels, routes, DNS records, the audit log, the browser
 * login flow, and a named tunnel serving visitors through a route.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { defaultAgentConfig, startAgent } from '../../src/agent/agent.ts';
import { parseCredentialsFile } from '../../src/agent/credentials.ts';
import { defaultEdgeConfig, type Edge } from '../../src/edge/edge.ts';
import { systemClock } from '../../src/shared/clock.ts';
import { silentLogger } from '../../src/shared/log.ts';
import { request } from '../support/http.ts';
import { startTestOrigin, type TestOrigin } from '../support/origin.ts';
import { startTestEdge } from '../support/stack.ts';
import { waitFor } from '../support/wait.ts';

const _ANY_PORT = { host: '127.0.0.1', port: 0 };

interface Answer {
  status: number;
  body: Record<string, unknown>;
}

describe('control API', () => {
  let edge: Edge;
  let origin: TestOrigin;
  let admin: { accountId: string; token: string; zone: string };

  const api = async (method: string, path: string, opts: { token?: string; body?: unknown } = {}) => {
    const res = await fetch(new URL(path, edge.apiUrl), {
      method,
      headers: {
        ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
        ...(opts.body ? { 'content-type': 'application/json' } : {}),
      },
      ...(opts.body ? { body: JSON.stringify(opts.body) } : {}),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : {}, headers: res.headers } as Answer & {
      headers: Headers;
    };
  };
  const errorOf = (a: Answer) => a.body.error as { code: string; message: string };
  const resultOf = <T>(a: Answer) => a.body.result as T;

  before(async () => {
    origin = await startTestOrigin();
    edge = await startTestEdge();
    const created = await edge.controlPlane.initialize({
      accountName: 'ops',
      zone: 'warren.localhost',
      member: 'admin@example.com',
    });
    admin = { accountId: created.accountId, token: created.token, zone: created.zone };
  });

  after(async () => {
    await edge.close();
    await origin.close();
  });

  it('refuses requests without a token, with a wrong one, and names the fix', async () => {
    const none = await api('GET', '/v1/user/tokens/verify');
    assert.equal(none.status, 401);
    assert.equal(errorOf(none).code, 'unauthorized');
    assert.match(errorOf(none).message, /warren login/);

    const forged = `wrn_${'0'.repeat(16)}_${'A'.repeat(43)}`;
    const wrong = await api('GET', '/v1/user/tokens/verify', { token: forged });
    assert.equal(wrong.status, 401);
    assert.equal(errorOf(wrong).code, 'unauthorized');

    // The right id with a wrong secret is refused the same way.
    const sameId = `${admin.token.slice(0, 21)}${'B'.repeat(43)}`;
    assert.equal(errorOf(await api('GET', '/v1/user/tokens/verify', { token: sameId })).code, 'unauthorized');

    const ok = await api('GET', '/v1/user/tokens/verify', { token: admin.token });
    assert.equal(ok.status, 200);
    assert.equal(resultOf<{ account_id: string }>(ok).account_id, admin.accountId);
    assert.equal(ok.headers.get('cache-control'), 'no-store');
  });

  it('answers unknown routes and bad input with the error shape', async () => {
    const missing = await api('GET', '/v1/nothing', { token: admin.token });
    assert.equal(missing.status, 404);
    assert.equal(errorOf(missing).code, 'not_found');
    const bad = await api('POST', `/v1/accounts/${admin.accountId}/tunnels`, {
      token: admin.token,
      body: {},
    });
    assert.equal(bad.status, 400);
    assert.equal(errorOf(bad).code, 'bad_request');
    const uuidName = await api('POST', `/v1/accounts/${admin.accountId}/tunnels`, {
      token: admin.token,
      body: { name: '3f1c0a52-5d0e-4c4b-9d7e-2a1b3c4d5e6f' },
    });
    assert.equal(uuidName.status, 400);
    assert.match(errorOf(uuidName).message, /UUID/);
    const page = await api('GET', `/v1/accounts/${admin.accountId}/tunnels?per_page=5000`, {
      token: admin.token,
    });
    assert.equal(page.status, 400);
  });

  it('creates, lists with pagination, and refuses a duplicate name', async () => {
    for (const name of ['p-1', 'p-2', 'p-3']) {
      const r = await api('POST', `/v1/accounts/${admin.accountId}/tunnels`, {
        token: admin.token,
        body: { name },
      });
      assert.equal(r.status, 201);
      const creds = resultOf<{ credentials: Record<string, string> }>(r).credentials;
      // The credentials parse as a credentials file would, so `tunnel run` can use them.
      const parsed = parseCredentialsFile(JSON.stringify(creds), 'answer');
      assert.equal(parsed.accountId, admin.accountId);
    }
    const dup = await api('POST', `/v1/accounts/${admin.accountId}/tunnels`, {
      token: admin.token,
      body: { name: 'p-1' },
    });
    assert.equal(dup.status, 409);
    assert.equal(errorOf(dup).code, 'already_exists');

    const first = await api('GET', `/v1/accounts/${admin.accountId}/tunnels?per_page=2&page=1`, {
      token: admin.token,
    });
    const info = first.body.result_info as { count: number; total_count: number };
    assert.equal(info.count, 2);
    assert.ok(info.total_count >= 3);
    const second = await api('GET', `/v1/accounts/${admin.accountId}/tunnels?per_page=2&page=2`, {
      token: admin.token,
    });
    const names = [...resultOf<{ name: string }[]>(first), ...resultOf<{ name: string }[]>(second)].map(
      (t) => t.name,
    );
    assert.equal(new Set(names).size, names.length);
  });

  it('rolls and revokes member tokens; the old ones are told to log in again', async () => {
    const added = await api('POST', `/v1/accounts/${admin.accountId}/members`, {
      token: admin.token,
      body: { member: 'dev@example.com' },
    });
    assert.equal(added.status, 201);
    const member = resultOf<{ tokenId: string; token: string }>(added);
    // A member cannot add members.
    const denied = await api('POST', `/v1/accounts/${admin.accountId}/members`, {
      token: member.token,
      body: { member: 'x' },
    });
    assert.equal(denied.status, 403);

    const rolled = await api('POST', `/v1/accounts/${admin.accountId}/members/${member.tokenId}/roll`, {
      token: member.token,
    });
    assert.equal(rolled.status, 200);
    const next = resultOf<{ tokenId: string; token: string }>(rolled);
    const stale = await api('GET', '/v1/user/tokens/verify', { token: member.token });
    assert.equal(stale.status, 401);
    assert.equal(errorOf(stale).code, 'token_revoked');
    assert.match(errorOf(stale).message, /rolled.*warren login/);
    assert.equal((await api('GET', '/v1/user/tokens/verify', { token: next.token })).status, 200);

    const removed = await api('DELETE', `/v1/accounts/${admin.accountId}/members/${next.tokenId}`, {
      token: admin.token,
    });
    assert.equal(removed.status, 200);
    const gone = await api('GET', '/v1/user/tokens/verify', { token: next.token });
    assert.equal(errorOf(gone).code, 'token_revoked');
    assert.match(errorOf(gone).message, /member was removed/);
  });

  it('keeps accounts apart: no routes into another account’s zone, no access to its tunnels', async () => {
    const other = await api('POST', '/v1/accounts', {
      token: admin.token,
      body: { name: 'tenant', zone: 'tenant.localhost' },
    });
    assert.equal(other.status, 201);
    const tenant = resultOf<{ accountId: string; token: string }>(other);
    const t = await api('POST', `/v1/accounts/${tenant.accountId}/tunnels`, {
      token: tenant.token,
      body: { name: 'web' },
    });
    assert.equal(t.status, 201);
    const route = await api('POST', `/v1/accounts/${tenant.accountId}/tunnels/web/routes`, {
      token: tenant.token,
      body: { hostname: `steal.${admin.zone}` },
    });
    assert.equal(route.status, 403);
    assert.match(errorOf(route).message, /belongs to another account/);
    const peek = await api('GET', `/v1/accounts/${admin.accountId}/tunnels`, { token: tenant.token });
    assert.equal(peek.status, 403);
    // A zone overlapping one already served is refused.
    const nested = await api('POST', '/v1/accounts', {
      token: admin.token,
      body: { name: 'nested', zone: `sub.${admin.zone}` },
    });
    assert.equal(nested.status, 409);
    // Only the operator's admins create accounts.
    const notOperator = await api('POST', '/v1/accounts', {
      token: tenant.token,
      body: { name: 'x', zone: 'x.localhost' },
    });
    assert.equal(notOperator.status, 403);
  });

  it('routes a hostname to a named tunnel, serves visitors, audits it, and deletes it', async () => {
    const created = await api('POST', `/v1/accounts/${admin.accountId}/tunnels`, {
      token: admin.token,
      body: { name: 'site' },
    });
    const tunnel = resultOf<{ id: string; credentials: Record<string, string> }>(created);
    const hostname = `site.${admin.zone}`;
    const route = await api('POST', `/v1/accounts/${admin.accountId}/tunnels/site/routes`, {
      token: admin.token,
      body: { hostname },
    });
    assert.equal(route.status, 201);
    const again = await api('POST', `/v1/accounts/${admin.accountId}/tunnels/p-1/routes`, {
      token: admin.token,
      body: { hostname },
    });
    assert.equal(again.status, 409);
    assert.equal(errorOf(again).code, 'dns_record_exists');

    const records = await api('GET', `/v1/zones/${admin.zone}/dns_records?name=${hostname}`, {
      token: admin.token,
    });
    const [record] = resultOf<{ type: string; content: string }[]>(records);
    assert.equal(record?.type, 'CNAME');
    assert.equal(record?.content, `${tunnel.id}.tunnels.${defaultEdgeConfig.edgeDomain}`);

    const agent = await startAgent(
      { clock: systemClock, log: silentLogger, registry: new Registry() },
      {
        ...defaultAgentConfig,
        haConnections: 2,
        gracePeriodMs: 2000,
        credentials: parseCredentialsFile(JSON.stringify(tunnel.credentials), 'answer'),
        origin: { originUrl: new URL(origin.url) },
      },
    );
    try {
      await agent.firstRegistration;
      const res = await request({ port: edge.visitorPort, host: hostname, path: '/echo?x=1' });
      assert.equal(res.status, 200);

      const info = await api('GET', `/v1/accounts/${admin.accountId}/tunnels/site`, { token: admin.token });
      await waitFor(
        async () =>
          resultOf<{ connections: unknown[] }>(
            await api('GET', `/v1/accounts/${admin.accountId}/tunnels/site`, {
              token: admin.token,
            }),
          ).connections.length === 2,
        { timeoutMs: 10_000, message: 'both connections registered' },
      );
      assert.equal(info.status, 200);

      const busy = await api('DELETE', `/v1/accounts/${admin.accountId}/tunnels/site`, {
        token: admin.token,
      });
      assert.equal(busy.status, 409);
      assert.equal(errorOf(busy).code, 'tunnel_active');

      const audit = await api(
        'GET',
        `/v1/accounts/${admin.accountId}/audit_logs?action=connection.register,dns.cname_add&tunnel_id=${tunnel.id}`,
        {
          token: admin.token,
        },
      );
      const entries =
        resultOf<{ action: string; pop: string | null; client_version: string | null }[]>(audit);
      assert.deepEqual(entries.map((e) => e.action).sort(), [
        'connection.register',
        'connection.register',
        'dns.cname_add',
      ]);
      const registered = entries.find((e) => e.action === 'connection.register')!;
      assert.equal(registered.pop, defaultEdgeConfig.pop);
      assert.ok(registered.client_version);

      const forced = await api('DELETE', `/v1/accounts/${admin.accountId}/tunnels/site?force=true`, {
        token: admin.token,
      });
      assert.equal(forced.status, 200);
      const exit = await agent.done;
      assert.equal(exit.exitCode, 1);
      assert.equal(exit.error?.code, 'tunnel_deleted');
      const after = await request({ port: edge.visitorPort, host: hostname, path: '/' });
      assert.equal(after.status, 530);
      const left = await api('GET', `/v1/zones/${admin.zone}/dns_records?name=${hostname}`, {
        token: admin.token,
      });
      assert.deepEqual(resultOf(left), []);
      // The name is free again.
      const reuse = await api('POST', `/v1/accounts/${admin.accountId}/tunnels`, {
        token: admin.token,
        body: { name: 'site' },
      });
      assert.equal(reuse.status, 201);
    } finally {
      await agent.shutdown('now');
    }
  });

  it('filters the audit log by time and action', async () => {
    const all = await api('GET', `/v1/accounts/${admin.accountId}/audit_logs?per_page=1000`, {
      token: admin.token,
    });
    const entries = resultOf<{ id: number; time: string; action: string }[]>(all);
    assert.ok(entries.length > 5);
    // Newest first.
    assert.ok(entries.every((e, i) => i === 0 || entries[i - 1]!.id > e.id));
    const pivot = entries[Math.floor(entries.length / 2)]!;
    const since = await api(
      'GET',
      `/v1/accounts/${admin.accountId}/audit_logs?per_page=1000&since=${pivot.time}`,
      {
        token: admin.token,
      },
    );
    assert.ok(resultOf<{ time: string }[]>(since).every((e) => e.time >= pivot.time));
    const rolls = await api('GET', `/v1/accounts/${admin.accountId}/audit_logs?action=token.roll`, {
      token: admin.token,
    });
    assert.ok(resultOf<{ action: string }[]>(rolls).every((e) => e.action === 'token.roll'));
    assert.equal(resultOf<unknown[]>(rolls).length, 1);
    const bad = await api('GET', `/v1/accounts/${admin.accountId}/audit_logs?action=nope`, {
      token: admin.token,
    });
    assert.equal(bad.status, 400);
  });

  it('logs in through the browser flow: session, token page, zone pick, approval, one download', async () => {
    const started = await api('POST', '/v1/login_sessions');
    assert.equal(started.status, 201);
    const session = resultOf<{ id: string; login_url: string; poll_secret: string }>(started);
    const poll = () =>
      fetch(new URL(`/v1/login_sessions/${session.id}`, edge.apiUrl), {
        headers: { 'x-warren-poll-secret': session.poll_secret },
      });
    assert.equal((await poll()).status, 202);
    const wrongSecret = await fetch(new URL(`/v1/login_sessions/${session.id}`, edge.apiUrl), {
      headers: { 'x-warren-poll-secret': 'nope' },
    });
    assert.equal(wrongSecret.status, 401);

    const form = (body: Record<string, string>) => ({
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams(body).toString(),
    });
    const pageHtml = await (await fetch(session.login_url)).text();
    assert.match(pageHtml, /API token/);
    const badToken = await fetch(session.login_url, form({ token: 'wrn_nope' }));
    assert.equal(badToken.status, 401);
    const pick = await fetch(session.login_url, form({ token: admin.token }));
    const pickHtml = await pick.text();
    assert.match(pickHtml, new RegExp(`<option value="${admin.zone}">`));
    const approved = await fetch(
      `${session.login_url}/approve`,
      form({ token: admin.token, zone: admin.zone }),
    );
    assert.equal(approved.status, 200);

    const done = await poll();
    assert.equal(done.status, 200);
    const bundle = ((await done.json()) as { result: Record<string, string> }).result;
    assert.equal(bundle.status, 'approved');
    assert.equal(bundle.zone, admin.zone);
    assert.equal(bundle.apiToken, admin.token);
    assert.match(bundle.certPem!, /BEGIN CERTIFICATE/);
    assert.match(bundle.keyPem!, /BEGIN PRIVATE KEY/);
    // Handed out once.
    assert.equal((await poll()).status, 404);
  });
});
