/**
 * The control plane end to end, through the `warren` CLI as a user runs it: real edge and agent
 * processes on loopback (ephemeral ports), a LevelDB data dir and a WARREN_HOME per suite, `dig`
 * against the edge's DNS server, visitors through the edge's visitor port. Covers edge init, login
 * (token and browser), named tunnels, routes, the audit log, the delayed DNS cleanup (also across an
 * edge restart), deleting a running tunnel, a stale cert.pem after a token roll, accounts kept apart,
 * and an edge killed with SIGKILL in the middle of a burst of API writes.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rename, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ApiClient, type AuditEntryJson, type TunnelJson } from '../../src/cli/api-client.ts';
import { isWarrenError } from '../../src/shared/errors.ts';
import { request } from '../support/http.ts';
import { startTestOrigin, type TestOrigin } from '../support/origin.ts';
import {
  type CliResult,
  type EdgeProcess,
  killAll,
  runCli,
  spawnCli,
  startEdgeProcess,
} from '../support/processes.ts';
import { waitFor } from '../support/wait.ts';

const ZONE = 'warren.localhost';
const EDGE_DOMAIN = 'warren-edge.localhost';
const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
/** The shortened DNS cleanup window of these edges. */
const CLEANUP_WINDOW = { minMs: 2000, maxMs: 4000 };

/** The answer section of `dig`: `name. ttl IN TYPE data` lines. */
function dig(port: number, name: string, type = 'CNAME'): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      'dig',
      ['@127.0.0.1', '-p', String(port), '+time=3', '+tries=1', '+noall', '+answer', name, type],
      { timeout: 10_000 },
      (err, stdout, stderr) =>
        err ? reject(new Error(`dig failed: ${err.message}\n${stderr}`)) : resolve(stdout),
    );
  });
}

function cnameTo(tunnelId: string): RegExp {
  return new RegExp(`\\sIN\\s+CNAME\\s+${tunnelId}\\.tunnels\\.${EDGE_DOMAIN.replace(/\./g, '\\.')}\\.`);
}

function ok(r: CliResult, what: string): CliResult {
  assert.equal(r.code, 0, `${what} exited ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  return r;
}

function refused(r: CliResult, what: string, message: RegExp): void {
  assert.equal(r.code, 1, `${what} exited ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  assert.match(r.stderr, message, what);
}

/** A user of the CLI: their own WARREN_HOME (cert.pem and credentials files live there). */
interface User {
  home: string;
  run(args: string[], opts?: { timeoutMs?: number }): Promise<CliResult>;
}

function user(home: string): User {
  return { home, run: (args, opts = {}) => runCli(args, { env: { WARREN_HOME: home }, ...opts }) };
}

async function initEdge(
  dataDir: string,
  extra: string[] = [],
): Promise<{ token: string; accountId: string }> {
  const r = ok(await runCli(['edge', 'init', '--data-dir', dataDir, ...extra]), 'edge init');
  const token = /API token: (wrn_\S+)/.exec(r.stdout)?.[1];
  const accountId = new RegExp(`account:\\s+\\S+ \\((${UUID})\\)`).exec(r.stdout)?.[1];
  assert.ok(token && accountId, r.stdout);
  assert.match(r.stdout, /not stored anywhere/);
  return { token, accountId };
}

function startEdge(dataDir: string, extra: string[] = []): Promise<EdgeProcess> {
  return startEdgeProcess([
    '--data-dir',
    dataDir,
    '--dns-cleanup-window',
    `${CLEANUP_WINDOW.minMs}ms-${CLEANUP_WINDOW.maxMs}ms`,
    '--drain-timeout',
    '2s',
    '--loglevel',
    'warn',
    ...extra,
  ]);
}

async function createTunnel(u: User, name: string): Promise<string> {
  const r = ok(await u.run(['tunnel', 'create', name]), `tunnel create ${name}`);
  const id = new RegExp(`Created tunnel ${name} with id (${UUID})`).exec(r.stdout)?.[1];
  assert.ok(id, r.stdout);
  return id;
}

async function auditJson(u: User, args: string[] = []): Promise<AuditEntryJson[]> {
  return JSON.parse(ok(await u.run(['audit', '--output', 'json', ...args]), 'audit').stdout);
}

describe('control plane through the CLI', () => {
  const dirs: string[] = [];
  let origin: TestOrigin;
  let dataDir: string;
  let edge: EdgeProcess;
  let admin: User;
  let adminToken: string;
  /** The API as the admin, for polling where a CLI start-up per poll would be too slow. */
  let adminApi: ApiClient;
  let accountId: string;

  const tmp = async (prefix: string) => {
    const d = await mkdtemp(path.join(os.tmpdir(), prefix));
    dirs.push(d);
    return d;
  };

  /** `warren tunnel run NAME …` as `u`, resolved once it says it is connected. */
  const runTunnel = async (u: User, args: string[]) => {
    const agent = spawnCli(['tunnel', 'run', ...args, '--loglevel', 'warn'], {
      env: { WARREN_HOME: u.home },
    });
    await agent.waitForStdout(/is connected to the edge/, 30_000);
    return agent;
  };

  before(async () => {
    origin = await startTestOrigin();
    dataDir = await tmp('warren-cp-edge-');
    ({ token: adminToken, accountId } = await initEdge(dataDir));
    edge = await startEdge(dataDir);
    admin = user(await tmp('warren-cp-admin-'));
    adminApi = new ApiClient({ apiUrl: edge.apiUrl, token: adminToken });
  });

  after(async () => {
    await killAll();
    await origin?.close();
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });

  it('init, login, create, route dns, run: dig and visitors see the route, the audit log the events; stopped, its automatic route goes after the window and the manual one stays', async () => {
    // Initialised once; and never while the edge holds the data dir.
    refused(
      await runCli(['edge', 'init', '--data-dir', dataDir]),
      'edge init (running)',
      /stop the edge first/,
    );

    const login = ok(await admin.run(['login', '--edge-api', edge.apiUrl, '--token', adminToken]), 'login');
    const certFile = path.join(admin.home, 'cert.pem');
    assert.match(login.stdout, new RegExp(certFile.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
    assert.equal((await stat(certFile)).mode & 0o777, 0o600);
    refused(
      await admin.run(['login', '--edge-api', edge.apiUrl, '--token', adminToken]),
      'login again',
      /already exists; move it away/,
    );

    const id = await createTunnel(admin, 'web');
    const credsFile = path.join(admin.home, `${id}.json`);
    assert.equal((await stat(credsFile)).mode & 0o777, 0o400);
    refused(await admin.run(['tunnel', 'create', 'web']), 'tunnel create (same name)', /already exists/);
    refused(await admin.run(['tunnel', 'create', id]), 'tunnel create (UUID name)', /looks like a tunnel ID/);

    const route = ok(await admin.run(['tunnel', 'route', 'dns', 'web', `app.${ZONE}`]), 'route dns');
    assert.match(route.stdout, new RegExp(`Added CNAME app\\.${ZONE} which will route to this tunnel`));

    const agent = await runTunnel(admin, [
      'web',
      '--url',
      origin.url,
      '--hostname',
      `auto.${ZONE}`,
      '--ha-connections',
      '2',
    ]);
    assert.match(agent.stdout, new RegExp(`Added CNAME auto\\.${ZONE}`));

    assert.match(await dig(edge.dnsPort, `app.${ZONE}`), cnameTo(id));
    assert.match(await dig(edge.dnsPort, `auto.${ZONE}`), cnameTo(id));

    // Both registered connections carry visitors: wait for the second one too.
    await waitFor(async () => (await adminApi.getTunnel(accountId, id)).connections.length === 2, {
      timeoutMs: 15_000,
      intervalMs: 50,
      message: 'both HA connections to register',
    });
    for (const host of [`app.${ZONE}`, `auto.${ZONE}`]) {
      const res = await request({ port: edge.visitorPort, host, path: '/echo', timeoutMs: 10_000 });
      assert.equal(res.status, 200, res.body.toString());
      assert.equal(JSON.parse(res.body.toString()).method, 'GET');
    }

    const list = ok(await admin.run(['tunnel', 'list']), 'tunnel list');
    assert.match(list.stdout, /^ID\s+NAME\s+CREATED\s+CONNECTIONS$/m);
    assert.match(list.stdout, new RegExp(`^${id}\\s+web\\s+\\S+Z\\s+2xdev$`, 'm'));
    const info = ok(await admin.run(['tunnel', 'info', 'web']), 'tunnel info');
    assert.match(info.stdout, /^CONNECTOR ID\s+CREATED\s+ARCHITECTURE\s+VERSION\s+ORIGIN IP\s+EDGE$/m);
    assert.match(
      info.stdout,
      new RegExp(
        `^${UUID}\\s+\\S+Z\\s+${process.platform}_${os.arch()}\\s+\\S+\\s+127\\.0\\.0\\.1\\s+2xdev$`,
        'm',
      ),
    );

    const seen = await auditJson(admin, ['--tunnel', 'web']);
    const actions = seen.map((e) => e.action);
    assert.ok(actions.includes('connection.register'), actions.join());
    assert.deepEqual(
      seen
        .filter((e) => e.action === 'dns.cname_add')
        .map((e) => [e.details.hostname, e.details.origin])
        .sort(),
      [
        [`app.${ZONE}`, 'manual'],
        [`auto.${ZONE}`, 'auto'],
      ],
    );
    const table = ok(await admin.run(['audit', '--action', 'connection.register']), 'audit table');
    assert.match(table.stdout, /^TIME\s+ACTION\s+ACTOR\s+TUNNEL\s+CONNECTION\s+POP\s+VERSION\s+DETAILS$/m);
    assert.match(
      table.stdout,
      new RegExp(`connection\\.register\\s+agent\\s+web\\s+${UUID}\\s+dev\\s+\\S+\\s+connIndex=`),
    );

    agent.signal('SIGINT');
    assert.deepEqual(await agent.waitExit(15_000), { code: 0, signal: null }, agent.stderr);
    const unregistered = await waitFor(
      async () => {
        const entries = await adminApi.auditLogs(accountId, {
          tunnelId: id,
          actions: ['connection.unregister'],
        });
        return entries.length === 2 ? entries : null;
      },
      { timeoutMs: 10_000, intervalMs: 50, message: 'both connections to be unregistered' },
    );
    ok(await admin.run(['audit', '--action', 'connection.unregister', '--tunnel', id]), 'audit unregister');

    await waitFor(async () => !cnameTo(id).test(await dig(edge.dnsPort, `auto.${ZONE}`)), {
      timeoutMs: CLEANUP_WINDOW.maxMs + 10_000,
      intervalMs: 100,
      message: `auto.${ZONE} to be deleted after the cleanup window`,
    });
    assert.match(await dig(edge.dnsPort, `app.${ZONE}`), cnameTo(id), 'the manual route stays');
    // Not early: the deletion came at least the window's minimum after the last connection left.
    const deleted = await auditJson(admin, ['--tunnel', id, '--action', 'dns.delete']);
    assert.equal(deleted.length, 1, JSON.stringify(deleted));
    assert.equal(deleted[0]!.details.hostname, `auto.${ZONE}`);
    assert.equal(deleted[0]!.details.reason, 'tunnel_inactive');
    const lastLeft = Math.max(...unregistered!.map((e) => Date.parse(e.time)));
    assert.ok(
      Date.parse(deleted[0]!.time) - lastLeft >= CLEANUP_WINDOW.minMs,
      `deleted ${Date.parse(deleted[0]!.time) - lastLeft} ms after the last connection left`,
    );
  });

  it('an edge stopped across the cleanup deadline deletes the overdue record as soon as it is back', async (t) => {
    await createTunnel(admin, 'restart');
    const agent = await runTunnel(admin, [
      'restart',
      '--url',
      origin.url,
      '--hostname',
      `r.${ZONE}`,
      '--ha-connections',
      '1',
    ]);
    const id = (await adminApi.getTunnel(accountId, 'restart')).id;
    agent.signal('SIGINT');
    await agent.waitExit(15_000);
    // Stop the edge the moment the cleanup is scheduled, well before it falls due.
    const dueAt = await waitFor(
      async () => {
        const t: TunnelJson = await adminApi.getTunnel(accountId, id);
        return t.dns_cleanup_due_at ? Date.parse(t.dns_cleanup_due_at) : 0;
      },
      { timeoutMs: 10_000, intervalMs: 20, message: 'the DNS cleanup to be scheduled' },
    );
    edge.signal('SIGTERM');
    assert.deepEqual(await edge.waitExit(10_000), { code: 0, signal: null }, edge.stderr);
    const stoppedAt = Date.now();
    t.diagnostic(`the edge was stopped ${dueAt - stoppedAt} ms before the cleanup deadline`);
    assert.ok(
      stoppedAt < dueAt,
      `the edge stopped ${stoppedAt - dueAt} ms after the deadline; too slow a machine?`,
    );

    await waitFor(() => Date.now() > dueAt + 200, {
      timeoutMs: CLEANUP_WINDOW.maxMs + 1000,
      intervalMs: 50,
      message: 'the cleanup deadline to pass while the edge is down',
    });
    // The same API port, so that cert.pem (which names it) still works.
    edge = await startEdge(dataDir, ['--api-listen', `127.0.0.1:${edge.apiPort}`]);
    const restartedAt = Date.now();
    await waitFor(async () => !cnameTo(id).test(await dig(edge.dnsPort, `r.${ZONE}`)), {
      timeoutMs: 5000,
      intervalMs: 50,
      message: `r.${ZONE} to be deleted right after the restart`,
    });
    const deleted = await auditJson(admin, ['--tunnel', 'restart', '--action', 'dns.delete,dns_cleanup.due']);
    assert.deepEqual(deleted.map((e) => e.action).sort(), ['dns.delete', 'dns_cleanup.due']);
    for (const e of deleted) assert.ok(Date.parse(e.time) >= restartedAt - 1000, `${e.action} at ${e.time}`);
    // The manual route of the first test survived the restart too.
    assert.match(await dig(edge.dnsPort, `app.${ZONE}`), /\sCNAME\s/);
  });

  it('deleting a running tunnel: refused without --force; with it the agent exits non-zero and its credentials stop working', async () => {
    const id = await createTunnel(admin, 'doomed');
    const token = ok(await admin.run(['tunnel', 'token', 'doomed']), 'tunnel token').stdout.trim();
    assert.match(token, /^[A-Za-z0-9+/=]+$/);
    const agent = await runTunnel(admin, ['doomed', '--url', origin.url, '--ha-connections', '2']);

    refused(
      await admin.run(['tunnel', 'delete', 'doomed']),
      'delete without --force',
      /tunnel_active: .*--force/,
    );
    const del = ok(await admin.run(['tunnel', 'delete', 'doomed', '--force']), 'delete --force');
    assert.match(del.stdout, new RegExp(`Deleted tunnel doomed \\(${id}\\)`));
    await assert.rejects(stat(path.join(admin.home, `${id}.json`)), /ENOENT/);

    const exit = await agent.waitExit(30_000);
    assert.equal(exit.code, 1, agent.stderr);
    assert.match(agent.stderr, /warren: tunnel_deleted: .*has been deleted/);

    const again = spawnCli(['tunnel', 'run', '--token', token, '--url', origin.url, '--loglevel', 'warn'], {
      env: { WARREN_HOME: admin.home },
    });
    assert.equal((await again.waitExit(30_000)).code, 1);
    assert.match(again.stderr, /tunnel_deleted: .*has been deleted/);
    assert.doesNotMatch(again.stdout, /is connected/);
  });

  it('a member whose token was rolled gets "run `warren login` again" with the old cert.pem, and logs in again', async () => {
    const added = ok(await admin.run(['account', 'member', 'add', 'carol']), 'member add');
    const carolToken = /: (wrn_\S+)/.exec(added.stdout)?.[1];
    assert.ok(carolToken, added.stdout);
    const carol = user(await tmp('warren-cp-carol-'));
    ok(await carol.run(['login', '--edge-api', edge.apiUrl, '--token', carolToken]), 'carol login');
    ok(await carol.run(['tunnel', 'list']), 'carol tunnel list');

    const rolled = ok(await carol.run(['token', 'roll']), 'token roll');
    const newToken = /New token \(id \w+\): (wrn_\S+)/.exec(rolled.stdout)?.[1];
    assert.ok(newToken, rolled.stdout);
    assert.match(rolled.stdout, /still holds the old token/);

    const stale = await carol.run(['tunnel', 'list']);
    refused(stale, 'tunnel list with the old cert.pem', /token_revoked: .*rolled.*run `warren login` again/);
    assert.match(stale.stderr, /move it away first/);
    refused(
      await carol.run(['login', '--edge-api', edge.apiUrl, '--token', newToken]),
      'login over the old cert.pem',
      /already exists/,
    );
    const certFile = path.join(carol.home, 'cert.pem');
    await rename(certFile, `${certFile}.old`);
    ok(await carol.run(['login', '--edge-api', edge.apiUrl, '--token', newToken]), 'carol login again');
    ok(await carol.run(['tunnel', 'list']), 'tunnel list after logging in again');

    // Removing the member has the same effect.
    const members = ok(await admin.run(['account', 'member', 'list']), 'member list').stdout;
    const carolId = /^(\w+)\s+carol\s+member\s/m.exec(members)?.[1];
    assert.ok(carolId, members);
    ok(await admin.run(['account', 'member', 'remove', carolId]), 'member remove');
    refused(
      await carol.run(['tunnel', 'list']),
      'tunnel list after removal',
      /token_revoked: .*revoked.*warren login/,
    );
  });

  it('a second account (browser login) cannot route or run a hostname in the first account zone', async () => {
    const created = ok(
      await admin.run(['account', 'create', 'other', '--zone', 'other.localhost', '--member', 'bob']),
      'account create',
    );
    const bobToken = /: (wrn_\S+)/.exec(created.stdout)?.[1];
    assert.ok(bobToken, created.stdout);

    // Bob logs in in a browser: the command prints a URL and waits for the approval there.
    const bob = user(await tmp('warren-cp-bob-'));
    const login = spawnCli(['login', '--edge-api', edge.apiUrl], { env: { WARREN_HOME: bob.home } });
    const url = (await login.waitForStdout(/approve: (http:\/\/\S+)/, 30_000))[1]!;
    const approve = await fetch(`${url}/approve`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token: bobToken, zone: 'other.localhost' }).toString(),
    });
    assert.equal(approve.status, 200, await approve.text());
    assert.equal((await login.waitExit(15_000)).code, 0, login.stderr);
    assert.match(login.stdout, /zone other\.localhost/);

    await createTunnel(bob, 'b');
    refused(
      await bob.run(['tunnel', 'route', 'dns', 'b', `x.${ZONE}`]),
      'route dns in another zone',
      /forbidden: .*belongs to another account/,
    );
    const run = await bob.run(['tunnel', 'run', 'b', '--url', origin.url, '--hostname', `y.${ZONE}`]);
    refused(run, 'run --hostname in another zone', /forbidden: .*belongs to another account/);
    assert.doesNotMatch(run.stdout, /is connected/);
    ok(await bob.run(['tunnel', 'route', 'dns', 'b', 'www.other.localhost']), 'route dns in its own zone');
    assert.equal(await dig(edge.dnsPort, `x.${ZONE}`), '');

    // Nor may the first account route names of the second, and only the operator creates accounts.
    refused(
      await admin.run(['tunnel', 'route', 'dns', 'web', 'api.other.localhost']),
      'admin routes in the other zone',
      /forbidden/,
    );
    refused(
      await bob.run(['account', 'create', 'third', '--zone', 'third.localhost']),
      'account create by a non-operator',
      /forbidden: only admins of the operator account/,
    );
  });

  it('clear errors: no cert.pem, an edge that is not running', async () => {
    const nobody = user(await tmp('warren-cp-nobody-'));
    const r = await nobody.run(['tunnel', 'list']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /no origin certificate at .*cert\.pem; run `warren login` first/);
    refused(
      await nobody.run(['login', '--edge-api', 'http://127.0.0.1:9', '--token', adminToken]),
      'login to a closed port',
      /cannot reach the edge API at http:\/\/127\.0\.0\.1:9.*is `warren edge` running\?/,
    );
  });
});

describe('crash safety through the API', () => {
  const dirs: string[] = [];
  after(async () => {
    await killAll();
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });

  it('kill -9 in the middle of a burst of writes: every acknowledged write is there after a restart', async (t) => {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'warren-crash-'));
    dirs.push(dataDir);
    const { token, accountId } = await initEdge(dataDir);
    const first = await startEdge(dataDir);
    const api = new ApiClient({ apiUrl: first.apiUrl, token, timeoutMs: 10_000 });

    // Writers keep CONCURRENCY creates in flight; the edge is killed once KILL_AFTER were acknowledged,
    // so several are always mid-way (some written and not yet answered, some not yet written).
    const acked: string[] = [];
    const CONCURRENCY = 8;
    const KILL_AFTER = 150;
    let next = 0;
    let killed = false;
    let conflicts = 0;
    const worker = async () => {
      while (!killed) {
        const name = `t-${next++}`;
        try {
          await api.createTunnel(accountId, name);
          acked.push(name);
        } catch (err) {
          if (killed) return;
          // Concurrent creates in one account can exhaust the edge's optimistic retries: a refusal
          // like that is not an acknowledgement, and the burst goes on.
          if (!isWarrenError(err, 'version_conflict')) throw err;
          conflicts++;
          continue;
        }
        if (acked.length >= KILL_AFTER && !killed) {
          killed = true;
          first.child.kill('SIGKILL');
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    assert.equal((await first.waitExit(10_000)).signal, 'SIGKILL');
    assert.ok(acked.length >= KILL_AFTER, `${acked.length} acknowledged`);
    t.diagnostic(
      `${acked.length} creates acknowledged before the kill, ${conflicts} refused with version_conflict`,
    );

    // The log reads back whole; and an edge is initialised once.
    refused(
      await runCli(['edge', 'init', '--data-dir', dataDir]),
      'edge init again',
      /already_exists: this edge is already initialised/,
    );
    const second = await startEdge(dataDir);
    const after = new ApiClient({ apiUrl: second.apiUrl, token });
    const names = new Set((await after.listTunnels(accountId)).map((t) => t.name));
    const lost = acked.filter((n) => !names.has(n));
    assert.deepEqual(lost, [], `${lost.length} of ${acked.length} acknowledged creates are missing`);
    // The whole log replays (the edge started) and its audit projection has every acknowledged create.
    const created = new Set(
      (await after.auditLogs(accountId, { actions: ['tunnel.create'] })).map((e) => String(e.details.name)),
    );
    assert.deepEqual(
      acked.filter((n) => !created.has(n)),
      [],
    );
    // And the edge keeps taking writes on the recovered log.
    await after.createTunnel(accountId, 'after-the-crash');
    await second.kill();
  });
});
