/**
 * A directory snapshot changes nothing: for arbitrary event histories (any order of any event type
 * over a few ids, so also sequences no decider would produce), a snapshot taken at an arbitrary
 * position, read back and followed by the rest of the log gives exactly the directory a fold of the
 * whole log gives — every container, in its order, audit lists and indexes included. Page sizes are
 * drawn small so that lists span pages, and the audit limit is drawn so that trimming happens. The
 * same holds for a snapshot written from a `captureDirectoryState` copy while the fold goes on.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Directory, type DirectoryEvent } from '../../src/events/directory.ts';
import {
  captureDirectoryState,
  directorySnapshotPages,
  readDirectorySnapshot,
} from '../../src/store/snapshot-codec.ts';
import { assertSameDirectory } from '../support/same-directory.ts';

const ACCOUNTS = ['a0', 'a1', 'a2'];
const ZONES = ['z0.test', 'z1.test'];
const TUNNELS = ['t0', 't1', 't2', 't3', 't4'];
const CONNECTIONS = ['c0', 'c1', 'c2', 'c3', 'c4', 'c5'];
const RECORDS = ['r0', 'r1', 'r2', 'r3', 'r4', 'r5'];
const NAMES = ['app.z0.test', 'www.z0.test', 'z1.test', '*.z1.test', 'q.edge.test'];
const TOKENS = ['k0', 'k1', 'k2', 'k3', 'k4'];

const pick = <T>(...values: T[]) => fc.constantFrom(...values);
const time = fc.integer({ min: 0, max: 10_000 });
const account = pick(...ACCOUNTS);
const tunnel = pick(...TUNNELS);
const rec = <T>(model: { [K in keyof T]: fc.Arbitrary<T[K]> }) =>
  fc.record(model, { noNullPrototype: true }) as fc.Arbitrary<T>;
const event = <T extends string>(type: T, data: fc.Arbitrary<Record<string, unknown>>) =>
  rec({ type: fc.constant(type), data });

const anyEvent: fc.Arbitrary<{ type: string; data: Record<string, unknown> }> = fc.oneof(
  event(
    'AccountCreated',
    rec({ accountId: account, name: pick('ops', 'dev'), operator: fc.boolean(), createdAt: time }),
  ),
  event(
    'ApiTokenIssued',
    rec({
      accountId: account,
      tokenId: pick(...TOKENS),
      member: pick('m0', 'm1'),
      role: pick('admin', 'member'),
      tokenHash: pick('h0', 'h1'),
      issuedAt: time,
    }),
  ),
  event(
    'ApiTokenRolled',
    rec({
      accountId: account,
      tokenId: pick(...TOKENS),
      newTokenId: pick(...TOKENS),
      tokenHash: pick('h2'),
      rolledAt: time,
    }),
  ),
  event('ApiTokenRevoked', rec({ accountId: account, tokenId: pick(...TOKENS), revokedAt: time })),
  event(
    'OriginCertificateIssued',
    rec({
      accountId: account,
      serial: pick('s0', 's1'),
      zone: pick(...ZONES),
      tokenId: pick(...TOKENS),
      notAfter: time,
      issuedAt: time,
    }),
  ),
  event(
    'TunnelNameClaimed',
    rec({ accountId: account, name: pick('web', 'api'), tunnelId: tunnel, claimedAt: time }),
  ),
  event(
    'TunnelNameReleased',
    rec({ accountId: account, name: pick('web', 'api'), tunnelId: tunnel, releasedAt: time }),
  ),
  event(
    'ZoneAdded',
    rec({ zone: pick(...ZONES), zoneId: pick('zid0', 'zid1'), accountId: account, addedAt: time }),
  ),
  event(
    'DnsRecordAdded',
    rec({
      zone: pick(...ZONES),
      recordId: pick(...RECORDS),
      name: pick(...NAMES),
      type: pick('CNAME', 'A', 'AAAA'),
      content: pick('t0.tunnels.edge.test', '192.0.2.1', '2001:db8::1'),
      tunnelId: fc.option(tunnel, { nil: null }),
      origin: pick('auto', 'manual'),
      addedAt: time,
    }),
  ),
  event(
    'DnsRecordDeleted',
    rec({
      zone: pick(...ZONES),
      recordId: pick(...RECORDS),
      name: pick(...NAMES),
      type: pick('CNAME', 'A', 'AAAA'),
      tunnelId: fc.option(tunnel, { nil: null }),
      reason: pick('manual', 'tunnel_deleted', 'tunnel_inactive'),
      deletedAt: time,
    }),
  ),
  event(
    'TunnelCreated',
    fc.oneof(
      rec({
        tunnelId: tunnel,
        name: pick('web', 'api'),
        accountId: account,
        quick: fc.constant(false),
        hostname: fc.constant(null),
        createdAt: time,
      }),
      rec({
        tunnelId: tunnel,
        name: pick('q.edge.test'),
        accountId: fc.constant(null),
        quick: fc.constant(true),
        hostname: pick('q.edge.test'),
        createdAt: time,
      }),
    ),
  ),
  event('TunnelDeleted', rec({ tunnelId: tunnel, deletedAt: time })),
  event(
    'ConnectionRegistered',
    fc.record(
      {
        tunnelId: tunnel,
        connectionId: pick(...CONNECTIONS),
        connIndex: fc.nat({ max: 3 }),
        pop: pick('ams', 'fra'),
        clientVersion: pick('1.0', '1.1'),
        clientOs: pick('linux', 'darwin'),
        clientArch: pick('amd64', 'arm64'),
        originIp: pick('10.0.0.1', '10.0.0.2'),
        // Absent in events written before connectors were recorded.
        connectorId: pick('k-a', 'k-b'),
        registeredAt: time,
      },
      {
        requiredKeys: [
          'tunnelId',
          'connectionId',
          'connIndex',
          'pop',
          'clientVersion',
          'clientOs',
          'clientArch',
          'originIp',
          'registeredAt',
        ],
        noNullPrototype: true,
      },
    ),
  ),
  event(
    'ConnectionUnregistered',
    rec({
      tunnelId: tunnel,
      connectionId: pick(...CONNECTIONS),
      reason: pick('graceful', 'lost'),
      unregisteredAt: time,
    }),
  ),
  event('TunnelBecameInactive', rec({ tunnelId: tunnel, inactiveAt: time })),
  event('DnsCleanupScheduled', rec({ tunnelId: tunnel, dueAt: time, scheduledAt: time })),
  event('DnsCleanupCancelled', rec({ tunnelId: tunnel, dueAt: time, cancelledAt: time })),
  event('DnsCleanupDue', rec({ tunnelId: tunnel, dueAt: time, firedAt: time })),
  event('SomethingNewer', rec({ tunnelId: tunnel })),
);

const history = fc
  .array(fc.tuple(anyEvent, fc.option(pick('agent', 'edge', 'janitor', 'token:k0'), { nil: undefined })), {
    minLength: 1,
    maxLength: 150,
    size: 'max',
  })
  .map((items) =>
    items.map(
      ([e, actor], i): DirectoryEvent => ({
        position: i + 1,
        recordedAt: 1_000_000 + i,
        type: e.type,
        data: e.data,
        meta: actor === undefined ? {} : { actor },
      }),
    ),
  );

function fold(events: readonly DirectoryEvent[], maxAudit: number): Directory {
  const d = new Directory({ maxAuditEntriesPerAccount: maxAudit });
  for (const e of events) d.apply(e);
  return d;
}

async function* asPages(pages: Iterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  yield* pages;
}

/** Writes `state` as pages and reads them into a fresh directory. */
async function roundTrip(
  source: Directory,
  state: ReturnType<Directory['exportState']>,
  pageRows: number,
  events: readonly DirectoryEvent[],
): Promise<Directory> {
  const position = source.position;
  const anchorEvent = events[position - 1];
  const pages = directorySnapshotPages(state, {
    position,
    anchor: anchorEvent ? { stream: 'any', version: position, recordedAt: anchorEvent.recordedAt } : null,
    maxAuditEntriesPerAccount: source.maxAuditEntriesPerAccount,
    pageRows,
  });
  const { header, state: read } = await readDirectorySnapshot(
    asPages(pages),
    { maxAuditEntriesPerAccount: source.maxAuditEntriesPerAccount },
    async () => {},
  );
  assert.equal(header.position, position);
  const d = new Directory({ maxAuditEntriesPerAccount: source.maxAuditEntriesPerAccount });
  d.importState(read, header.position);
  return d;
}

describe('directory snapshot', () => {
  it('snapshot at any position + the rest of the log = the whole log folded', async () => {
    await fc.assert(
      fc.asyncProperty(
        history,
        fc.nat(),
        fc.integer({ min: 1, max: 5 }),
        pick(2, 3, 100_000),
        async (events, cutSeed, pageRows, maxAudit) => {
          const cut = cutSeed % (events.length + 1);
          const full = fold(events, maxAudit);

          const head = fold(events.slice(0, cut), maxAudit);
          const restored = await roundTrip(head, head.exportState(), pageRows, events);
          assertSameDirectory(restored, head);
          for (const e of events.slice(cut)) restored.apply(e);
          assertSameDirectory(restored, full);

          // A copy taken at the cut, written while the original folds on, is the directory at the cut.
          const live = fold(events.slice(0, cut), maxAudit);
          const copy = captureDirectoryState(live.exportState());
          const at = live.position;
          for (const e of events.slice(cut)) live.apply(e);
          assertSameDirectory(live, full);
          const fromCopy = await roundTrip(
            Object.assign(new Directory({ maxAuditEntriesPerAccount: maxAudit }), { position: at }),
            copy,
            pageRows,
            events,
          );
          assertSameDirectory(fromCopy, head);
          for (const e of events.slice(cut)) fromCopy.apply(e);
          assertSameDirectory(fromCopy, full);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('reaches the states worth snapshotting', () => {
    // The generator is only worth something if folds get to live connections, pending cleanups,
    // records by tunnel and trimmed audit lists.
    const seen = new Set<string>();
    fc.assert(
      fc.property(history, (events) => {
        const d = fold(events, 3);
        for (const t of d.tunnels.values()) {
          if (t.connections.size > 0) seen.add('connections');
          if (t.pendingCleanup) seen.add('pendingCleanup');
          if (t.cleanupDueAt !== null) seen.add('cleanupDue');
          if (d.recordsOf(t.tunnelId).length > 0) seen.add('recordsByTunnel');
        }
        for (const a of ACCOUNTS) if (d.audit(a).length >= 3) seen.add('audit');
      }),
      { numRuns: 200 },
    );
    assert.deepEqual([...seen].sort(), [
      'audit',
      'cleanupDue',
      'connections',
      'pendingCleanup',
      'recordsByTunnel',
    ]);
  });
});
