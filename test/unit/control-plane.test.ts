/**
 * The control plane over an in-memory log with a manual clock: read-your-writes, the account limit
 * under concurrent registrations, and the start-up recovery of work a crash interrupted.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'node:test';
import { ControlPlane, type ControlPlaneInit, type Principal } from '../../src/edge/control-plane.ts';
import { accountStream } from '../../src/events/account.ts';
import { tunnelStream } from '../../src/events/tunnel.ts';
import { ManualClock } from '../../src/shared/clock.ts';
import { isWarrenError } from '../../src/shared/errors.ts';
import { silentLogger } from '../../src/shared/log.ts';
import type { EventLog } from '../../src/store/event-log.ts';
import { openMemoryEventLog } from '../../src/store/memory-event-log.ts';
import { waitFor } from '../support/wait.ts';

const INIT: ControlPlaneInit = {
  edgeDomain: 'edge.test',
  accountTunnelLimit: 2,
  dnsCleanupWindowMs: { minMs: 1000, maxMs: 2000 },
};

async function setup(log?: EventLog, clock = new ManualClock()) {
  const eventLog = log ?? openMemoryEventLog({ clock });
  const cp = await ControlPlane.open({ clock, log: silentLogger, eventLog, random: () => 0.5 }, INIT);
  return { cp, eventLog, clock };
}

async function account(cp: ControlPlane): Promise<Principal> {
  const created = await cp.initialize({ accountName: 'ops', zone: 'example.test', member: 'admin' });
  return cp.authenticate(created.token);
}

const connection = (tunnelId: string, connectionId = randomUUID()) => ({
  tunnelId,
  connectionId,
  connIndex: 0,
  pop: 'dev',
  clientVersion: '1',
  clientOs: 'linux',
  clientArch: 'x64',
  originIp: '127.0.0.1',
  connectorId: 'c-1',
});

describe('control plane', () => {
  it('reads its own writes: a created tunnel is in the directory when the call returns', async () => {
    const { cp } = await setup();
    const p = await account(cp);
    const t = await cp.createTunnel(p, p.accountId, 'web');
    assert.equal(cp.directory.tunnelByName(p.accountId, 'web')?.tunnelId, t.tunnelId);
    cp.close();
  });

  it('takes a burst of concurrent writes to one account without refusing any', async () => {
    const { cp } = await setup();
    const p = await account(cp);
    const names = Array.from({ length: 32 }, (_, i) => `burst-${i}`);
    const created = await Promise.all(names.map((n) => cp.createTunnel(p, p.accountId, n)));
    assert.equal(new Set(created.map((t) => t.tunnelId)).size, names.length);
    assert.equal(cp.listTunnels(p, p.accountId).length, names.length);
    cp.close();
  });

  it('lets only one of two concurrent registrations take the last slot of the account limit', async () => {
    const { cp } = await setup();
    const p = await account(cp);
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((n) => cp.createTunnel(p, p.accountId, n)));
    await cp.registerConnection(connection(a!.tunnelId));
    const results = await Promise.allSettled([
      cp.registerConnection(connection(b!.tunnelId)),
      cp.registerConnection(connection(c!.tunnelId)),
    ]);
    const refused = results.filter((r) => r.status === 'rejected');
    assert.equal(refused.length, 1);
    assert.ok(isWarrenError((refused[0] as PromiseRejectedResult).reason, 'account_tunnel_limit'));
    assert.equal(cp.directory.activeTunnels(p.accountId), 2);
    // A second connection of an active tunnel is not a new tunnel.
    await cp.registerConnection(connection(a!.tunnelId));
    cp.close();
  });

  it('at start, releases a name whose tunnel was never created (a crash between the two appends)', async () => {
    const clock = new ManualClock();
    const first = await setup(undefined, clock);
    const p = await account(first.cp);
    first.cp.close();
    await first.eventLog.append(accountStream(p.accountId), [
      {
        type: 'TunnelNameClaimed',
        data: { accountId: p.accountId, name: 'ghost', tunnelId: randomUUID(), claimedAt: clock.now() },
      },
    ]);
    const second = await setup(first.eventLog, clock);
    await waitFor(() => second.cp.directory.tunnelByName(p.accountId, 'ghost') === undefined, {
      timeoutMs: 5000,
      message: 'orphan claim released',
    });
    // The name can be used now.
    await second.cp.createTunnel(p, p.accountId, 'ghost');
    second.cp.close();
  });

  it('at start, finishes a deletion that a crash interrupted: records go, the name is released', async () => {
    const clock = new ManualClock();
    const first = await setup(undefined, clock);
    const p = await account(first.cp);
    const t = await first.cp.createTunnel(p, p.accountId, 'web');
    await first.cp.routeDns(p, p.accountId, 'web', {
      hostname: 'web.example.test',
      overwrite: false,
      origin: 'manual',
    });
    first.cp.close();
    // Only the tunnel stream saw the deletion before the crash.
    const version = (await first.eventLog.readStream(tunnelStream(t.tunnelId))).length;
    await first.eventLog.append(
      tunnelStream(t.tunnelId),
      [{ type: 'TunnelDeleted', data: { tunnelId: t.tunnelId, deletedAt: clock.now() } }],
      { expectedVersion: version },
    );
    const second = await setup(first.eventLog, clock);
    await waitFor(
      () =>
        second.cp.directory.recordsAt('web.example.test').length === 0 &&
        second.cp.directory.tunnelByName(p.accountId, 'web') === undefined,
      { timeoutMs: 5000, message: 'deletion finished' },
    );
    second.cp.close();
  });

  it('deletes an auto record once the window passes, and never a manual one; close leaves no timer', async () => {
    const clock = new ManualClock();
    const { cp } = await setup(undefined, clock);
    const p = await account(cp);
    const t = await cp.createTunnel(p, p.accountId, 'web');
    await cp.routeDns(p, p.accountId, 'web', {
      hostname: 'auto.example.test',
      overwrite: false,
      origin: 'auto',
    });
    await cp.routeDns(p, p.accountId, 'web', {
      hostname: 'kept.example.test',
      overwrite: false,
      origin: 'manual',
    });
    const c = connection(t.tunnelId);
    await cp.registerConnection(c);
    await cp.unregisterConnection(c, 'graceful');
    // random() = 0.5 → 1000 + floor(0.5 × 1001) = 1500 ms.
    assert.equal(cp.directory.tunnels.get(t.tunnelId)?.pendingCleanup?.dueAt, clock.now() + 1500);
    clock.advance(1499);
    assert.equal(cp.directory.recordsAt('auto.example.test').length, 1);
    clock.advance(1);
    await waitFor(() => cp.directory.recordsAt('auto.example.test').length === 0, {
      timeoutMs: 5000,
      message: 'auto record deleted',
    });
    assert.equal(cp.directory.recordsAt('kept.example.test').length, 1);
    cp.close();
    assert.equal(clock.pendingTimers, 0);
  });
});
