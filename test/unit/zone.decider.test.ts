import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  type AddDnsRecord,
  type DeleteDnsRecords,
  type DnsDeleteReason,
  type DnsRecord,
  type DnsRecordAdded,
  type DnsRecordDeleted,
  decide,
  evolve,
  initialState,
  inZone,
  normalizeHostname,
  type ZoneAdded,
  type ZoneCommand,
  type ZoneEvent,
  zoneDecider,
  zoneStream,
} from '../../src/events/zone.ts';
import { isWarrenError, WarrenError } from '../../src/shared/errors.ts';
import { deciderSpec, throughStoredFormat } from '../support/decider-spec.ts';

const Z = 'example.com';
const OWNER = 'acc-1';
const NOW = Date.UTC(2026, 0, 1);
const T1 = 't-1';
const T2 = 't-2';

const zoneAdded: ZoneAdded = {
  type: 'ZoneAdded',
  data: { zone: Z, zoneId: 'z-1', accountId: OWNER, addedAt: NOW },
};

const target = (tunnelId: string) => `${tunnelId}.tunnels.edge.test`;

/** A route: a CNAME at `name` to the tunnel, as `tunnel route dns` (manual) or `run --hostname` (auto) asks. */
function route(
  recordId: string,
  name: string,
  tunnelId: string,
  over: Partial<AddDnsRecord> = {},
): AddDnsRecord {
  return {
    type: 'AddDnsRecord',
    zone: Z,
    accountId: OWNER,
    recordId,
    name,
    recordType: 'CNAME',
    content: target(tunnelId),
    tunnelId,
    origin: 'manual',
    overwrite: false,
    now: NOW + 10,
    ...over,
  };
}

function address(
  recordId: string,
  name: string,
  recordType: 'A' | 'AAAA',
  content: string,
  over: Partial<AddDnsRecord> = {},
): AddDnsRecord {
  return route(recordId, name, T1, { recordType, content, tunnelId: null, ...over });
}

/** The event `command` adds when nothing is in its way. */
function added(command: AddDnsRecord): DnsRecordAdded {
  return {
    type: 'DnsRecordAdded',
    data: {
      zone: command.zone,
      recordId: command.recordId,
      name: command.name,
      type: command.recordType,
      content: command.content,
      tunnelId: command.tunnelId,
      origin: command.origin,
      addedAt: command.now,
    },
  };
}

function deleted(record: DnsRecordAdded, reason: DnsDeleteReason, at: number): DnsRecordDeleted {
  const d = record.data;
  return {
    type: 'DnsRecordDeleted',
    data: {
      zone: d.zone,
      recordId: d.recordId,
      name: d.name,
      type: d.type,
      tunnelId: d.tunnelId,
      reason,
      deletedAt: at,
    },
  };
}

function remove(over: Partial<DeleteDnsRecords>): DeleteDnsRecords {
  return {
    type: 'DeleteDnsRecords',
    zone: Z,
    accountId: null,
    reason: 'tunnel_inactive',
    now: NOW + 100,
    ...over,
  };
}

const wwwManual = route('r-1', 'www.example.com', T1);
const wwwAuto = route('r-1', 'www.example.com', T1, { origin: 'auto' });

const { fold, given } = deciderSpec(zoneDecider);

describe('zone decider', () => {
  it('names the stream zone-<name>', () => {
    assert.equal(zoneStream(Z), 'zone-example.com');
  });

  describe('AddZone', () => {
    const addZone: ZoneCommand = { type: 'AddZone', zone: Z, zoneId: 'z-1', accountId: OWNER, now: NOW };

    it('adds a zone nobody owns', () => {
      given([]).when(addZone).emits([zoneAdded]);
    });

    it('is a no-op when the owner adds it again', () => {
      given([zoneAdded]).when(addZone).emits([]);
    });

    it('refuses a zone another account owns with already_exists', () => {
      given([zoneAdded])
        .when({ ...addZone, accountId: 'acc-2' })
        .refused('already_exists');
    });
  });

  describe('any record command', () => {
    const commands: ZoneCommand[] = [wwwManual, remove({ name: 'www.example.com', reason: 'manual' })];

    it('is refused with not_found while the zone is not served', () => {
      for (const command of commands) given([]).when(command).refused('not_found');
    });

    it('is refused with bad_request when addressed to another zone', () => {
      for (const command of commands) {
        given([zoneAdded])
          .when({ ...command, zone: 'example.net' })
          .refused('bad_request');
      }
    });

    it('is refused with forbidden for an account that does not own the zone', () => {
      given([zoneAdded])
        .when({ ...wwwManual, accountId: 'acc-2' })
        .refused('forbidden');
      given([zoneAdded, added(wwwManual)])
        .when(remove({ accountId: 'acc-2', name: 'www.example.com', reason: 'manual' }))
        .refused('forbidden');
    });
  });

  describe('AddDnsRecord', () => {
    it('adds a route as a CNAME to the tunnel', () => {
      given([zoneAdded])
        .when(wwwManual)
        .emits([added(wwwManual)]);
    });

    it('adds records at the apex and at a wildcard name', () => {
      const apex = route('r-1', Z, T1);
      const wildcard = route('r-2', '*.example.com', T1);
      given([zoneAdded])
        .when(apex)
        .emits([added(apex)]);
      given([zoneAdded])
        .when(wildcard)
        .emits([added(wildcard)]);
    });

    it('refuses a name outside the zone with bad_request', () => {
      for (const name of ['www.example.net', 'notexample.com', 'example.com.evil.test', 'com']) {
        given([zoneAdded])
          .when(route('r-1', name, T1))
          .refused('bad_request');
      }
    });

    it('keeps one A and one AAAA side by side at a name', () => {
      const a = address('r-1', 'host.example.com', 'A', '192.0.2.1');
      const aaaa = address('r-2', 'host.example.com', 'AAAA', '2001:db8::1');
      given([zoneAdded, added(a)])
        .when(aaaa)
        .emits([added(aaaa)]);
    });

    it('refuses with dns_record_exists what cannot coexist with a record at the name, without overwrite', () => {
      const a = added(address('r-1', 'host.example.com', 'A', '192.0.2.1'));
      const cname = added(route('r-1', 'host.example.com', T1));
      // A CNAME where an address record is; an address record where a CNAME is; a second A; a re-point.
      given([zoneAdded, a])
        .when(route('r-2', 'host.example.com', T1))
        .refused('dns_record_exists');
      given([zoneAdded, cname])
        .when(address('r-2', 'host.example.com', 'AAAA', '2001:db8::1'))
        .refused('dns_record_exists');
      given([zoneAdded, a])
        .when(address('r-2', 'host.example.com', 'A', '192.0.2.2'))
        .refused('dns_record_exists');
      given([zoneAdded, cname])
        .when(route('r-2', 'host.example.com', T2))
        .refused('dns_record_exists');
    });

    it('with overwrite, deletes what is in the way (reason overwritten), then adds', () => {
      const old = added(route('r-1', 'www.example.com', T1));
      const repoint = route('r-2', 'www.example.com', T2, { overwrite: true, now: NOW + 20 });
      given([zoneAdded, old])
        .when(repoint)
        .emits([deleted(old, 'overwritten', NOW + 20), added(repoint)]);
      assert.deepEqual(
        Object.keys(fold([zoneAdded, old, deleted(old, 'overwritten', NOW + 20), added(repoint)]).records),
        ['r-2'],
      );
    });

    it('with overwrite, a CNAME replaces both address records at the name', () => {
      const a = added(address('r-1', 'host.example.com', 'A', '192.0.2.1'));
      const aaaa = added(address('r-2', 'host.example.com', 'AAAA', '2001:db8::1'));
      const other = added(address('r-3', 'other.example.com', 'A', '192.0.2.3'));
      const cname = route('r-4', 'host.example.com', T1, { overwrite: true });
      given([zoneAdded, a, aaaa, other])
        .when(cname)
        .emits([deleted(a, 'overwritten', NOW + 10), deleted(aaaa, 'overwritten', NOW + 10), added(cname)]);
    });

    it('is a no-op for the same route again, with or without overwrite', () => {
      given([zoneAdded, added(wwwManual)])
        .when(route('r-2', 'www.example.com', T1))
        .emits([]);
      given([zoneAdded, added(wwwManual)])
        .when(route('r-2', 'www.example.com', T1, { overwrite: true }))
        .emits([]);
      given([zoneAdded, added(wwwAuto)])
        .when(route('r-2', 'www.example.com', T1, { origin: 'auto' }))
        .emits([]);
      const a = address('r-1', 'host.example.com', 'A', '192.0.2.1');
      given([zoneAdded, added(a)])
        .when({ ...a, recordId: 'r-2' })
        .emits([]);
    });

    it('never downgrades a manual route to auto, which the delayed cleanup would take', () => {
      given([zoneAdded, added(wwwManual)])
        .when(route('r-2', 'www.example.com', T1, { origin: 'auto' }))
        .emits([]);
      given([zoneAdded, added(wwwManual)])
        .when(route('r-2', 'www.example.com', T1, { origin: 'auto', overwrite: true }))
        .emits([]);
    });

    it('upgrades an auto route asked for manually, without needing overwrite', () => {
      const manual = route('r-2', 'www.example.com', T1, { now: NOW + 30 });
      given([zoneAdded, added(wwwAuto)])
        .when(manual)
        .emits([deleted(added(wwwAuto), 'overwritten', NOW + 30), added(manual)]);
    });
  });

  describe('DeleteDnsRecords', () => {
    const www = added(route('r-1', 'www.example.com', T1, { origin: 'auto', now: NOW + 10 }));
    const api = added(route('r-2', 'api.example.com', T1, { origin: 'manual', now: NOW + 10 }));
    const late = added(route('r-3', 'late.example.com', T1, { origin: 'auto', now: NOW + 50 }));
    const other = added(route('r-4', 'other.example.com', T2, { origin: 'auto', now: NOW + 10 }));
    const a = added(address('r-5', 'www.example.com', 'A', '192.0.2.1'));
    const all = [zoneAdded, www, api, late, other];

    it('deletes every record at a name when asked by name', () => {
      given([zoneAdded, added(address('r-6', 'host.example.com', 'A', '192.0.2.1')), a])
        .when(remove({ accountId: OWNER, name: 'www.example.com', reason: 'manual' }))
        .emits([deleted(a, 'manual', NOW + 100)]);
    });

    it('refuses a manual delete of a name without records with not_found', () => {
      given(all)
        .when(remove({ accountId: OWNER, name: 'nothing.example.com', reason: 'manual' }))
        .refused('not_found');
    });

    it('deletes nothing, without refusing, when a cleanup finds nothing left', () => {
      given(all)
        .when(remove({ name: 'nothing.example.com', reason: 'tunnel_inactive' }))
        .emits([]);
      given([zoneAdded])
        .when(remove({ onlyTunnelId: T1, reason: 'tunnel_deleted' }))
        .emits([]);
    });

    it('with onlyTunnelId, spares records of other tunnels', () => {
      given(all)
        .when(remove({ onlyTunnelId: T1, reason: 'tunnel_deleted' }))
        .emits([www, api, late].map((r) => deleted(r, 'tunnel_deleted', NOW + 100)));
    });

    it('with onlyTunnelId, spares a record that was re-pointed to another tunnel', () => {
      const repointed = added(
        route('r-6', 'www.example.com', T2, { origin: 'auto', overwrite: true, now: NOW + 20 }),
      );
      given([zoneAdded, www, deleted(www, 'overwritten', NOW + 20), repointed])
        .when(remove({ name: 'www.example.com', onlyTunnelId: T1, reason: 'tunnel_inactive' }))
        .emits([]);
    });

    it('with onlyOrigin, spares records of the other origin', () => {
      given(all)
        .when(remove({ onlyTunnelId: T1, onlyOrigin: 'auto', reason: 'tunnel_inactive' }))
        .emits([www, late].map((r) => deleted(r, 'tunnel_inactive', NOW + 100)));
    });

    it('with addedBefore, spares records added after it, and takes one added at it', () => {
      given(all)
        .when(
          remove({ onlyTunnelId: T1, onlyOrigin: 'auto', addedBefore: NOW + 10, reason: 'tunnel_inactive' }),
        )
        .emits([deleted(www, 'tunnel_inactive', NOW + 100)]);
      given(all)
        .when(
          remove({ onlyTunnelId: T1, onlyOrigin: 'auto', addedBefore: NOW + 9, reason: 'tunnel_inactive' }),
        )
        .emits([]);
    });

    it('with onlyRecordIds, takes only the listed records, and none that no longer match', () => {
      given(all)
        .when(remove({ onlyTunnelId: T1, onlyRecordIds: [www.data.recordId], reason: 'tunnel_inactive' }))
        .emits([deleted(www, 'tunnel_inactive', NOW + 100)]);
      given(all)
        .when(remove({ onlyTunnelId: T2, onlyRecordIds: [www.data.recordId], reason: 'tunnel_inactive' }))
        .emits([]);
    });

    it('deletes nothing the second time', () => {
      const cleanup = remove({
        onlyTunnelId: T1,
        onlyOrigin: 'auto',
        addedBefore: NOW + 60,
        reason: 'tunnel_inactive',
      });
      const first = decide(cleanup, fold(all));
      assert.equal(first.length, 2);
      given([...all, ...first])
        .when(cleanup)
        .emits([]);
    });
  });

  describe('normalizeHostname', () => {
    it('lower-cases, trims and drops the trailing dot', () => {
      assert.equal(normalizeHostname('WWW.Example.COM.'), 'www.example.com');
      assert.equal(normalizeHostname('  api.example.com '), 'api.example.com');
      assert.equal(normalizeHostname('*.example.com'), '*.example.com');
      assert.equal(normalizeHostname('xn--bcher-kva.example'), 'xn--bcher-kva.example');
      assert.equal(normalizeHostname('a-b.0.example.com'), 'a-b.0.example.com');
    });

    it('accepts a 63-byte label and a 253-byte name', () => {
      const label = 'a'.repeat(63);
      assert.equal(normalizeHostname(`${label}.example.com`), `${label}.example.com`);
      // 3 labels of 63 and one of 61, joined by dots: 253.
      const longest = [label, label, label, 'b'.repeat(61)].join('.');
      assert.equal(longest.length, 253);
      assert.equal(normalizeHostname(longest), longest);
    });

    it('refuses what is not a hostname with bad_request', () => {
      const label = 'a'.repeat(63);
      for (const input of [
        '',
        '.',
        'localhost',
        '-www.example.com',
        'www-.example.com',
        'www..example.com',
        'www.*.example.com',
        '**.example.com',
        'under_score.example.com',
        'white space.example.com',
        'example.com..',
        'bücher.example',
        `${'a'.repeat(64)}.example.com`,
        [label, label, label, 'b'.repeat(62)].join('.'),
      ]) {
        assert.throws(
          () => normalizeHostname(input),
          (err: unknown) => isWarrenError(err, 'bad_request'),
          `${JSON.stringify(input)} should be refused`,
        );
      }
    });

    it('places names in zones on label boundaries', () => {
      assert.ok(inZone('example.com', 'example.com'));
      assert.ok(inZone('a.b.example.com', 'example.com'));
      assert.ok(!inZone('notexample.com', 'example.com'));
      assert.ok(!inZone('example.com', 'www.example.com'));
    });
  });

  describe('evolve', () => {
    it('folds a zone and its records', () => {
      const state = fold([zoneAdded, added(wwwManual)]);
      assert.equal(state.status, 'active');
      assert.equal(state.accountId, OWNER);
      assert.equal(state.zoneId, 'z-1');
      const record: DnsRecord = {
        recordId: 'r-1',
        name: 'www.example.com',
        type: 'CNAME',
        content: target(T1),
        tunnelId: T1,
        origin: 'manual',
        addedAt: NOW + 10,
      };
      assert.deepEqual(state.records, { 'r-1': record });
    });

    it('never changes the state it is given', () => {
      const before = fold([zoneAdded, added(wwwManual)]);
      const snapshot = structuredClone(before);
      evolve(before, added(route('r-2', 'api.example.com', T1)));
      evolve(before, deleted(added(wwwManual), 'manual', NOW));
      assert.deepEqual(before, snapshot);
    });

    it('ignores event types it does not know (written by a newer version)', () => {
      const state = fold([zoneAdded]);
      assert.equal(evolve(state, { type: 'FromTheFuture', data: {} } as unknown as ZoneEvent), state);
    });
  });

  it('folds to the same state after the log went through the stored format, with DNS rules kept', () => {
    const name = fc.constantFrom('example.com', 'www.example.com', 'api.example.com', '*.example.com');
    const now = fc.integer({ min: 0, max: 2 ** 45 });
    const tunnelId = fc.constantFrom(T1, T2);
    let nextId = 0;
    const command: fc.Arbitrary<ZoneCommand> = fc.oneof(
      fc.record(
        {
          type: fc.constant('AddZone' as const),
          zone: fc.constant(Z),
          zoneId: fc.constant('z-1'),
          accountId: fc.constantFrom(OWNER, 'acc-2'),
          now,
        },
        { noNullPrototype: true },
      ),
      fc
        .record(
          {
            name,
            recordType: fc.constantFrom('CNAME' as const, 'A' as const, 'AAAA' as const),
            tunnelId,
            content: fc.constantFrom('192.0.2.1', '2001:db8::1'),
            origin: fc.constantFrom('auto' as const, 'manual' as const),
            overwrite: fc.boolean(),
            accountId: fc.constantFrom(OWNER, OWNER, 'acc-2'),
            now,
          },
          { noNullPrototype: true },
        )
        .map(
          (r): AddDnsRecord => ({
            type: 'AddDnsRecord',
            zone: Z,
            recordId: '',
            ...r,
            ...(r.recordType === 'CNAME' ? { content: target(r.tunnelId) } : { tunnelId: null }),
          }),
        ),
      fc.record(
        {
          type: fc.constant('DeleteDnsRecords' as const),
          zone: fc.constant(Z),
          accountId: fc.constantFrom(OWNER, null),
          name: fc.option(name, { nil: undefined }),
          onlyTunnelId: fc.option(tunnelId, { nil: undefined }),
          onlyOrigin: fc.option(fc.constantFrom('auto' as const, 'manual' as const), { nil: undefined }),
          addedBefore: fc.option(now, { nil: undefined }),
          reason: fc.constantFrom('manual' as const, 'tunnel_deleted' as const, 'tunnel_inactive' as const),
          now,
        },
        { noNullPrototype: true },
      ),
    );
    fc.assert(
      fc.property(fc.array(command, { maxLength: 30 }), (commands) => {
        const log: ZoneEvent[] = [];
        let state = initialState();
        for (const c of commands) {
          // Record ids are drawn fresh for every command, as the edge does.
          const fresh = c.type === 'AddDnsRecord' ? { ...c, recordId: `r-${nextId++}` } : c;
          let events: ZoneEvent[];
          try {
            events = decide(fresh, state);
          } catch (err) {
            assert.ok(err instanceof WarrenError);
            continue;
          }
          for (const e of events) {
            log.push(e);
            state = evolve(state, e);
            // As in DNS: a CNAME is alone at its name, and there is at most one A and one AAAA.
            const records = Object.values(state.records);
            for (const r of records) {
              const here = records.filter((o) => o.name === r.name);
              if (r.type === 'CNAME') assert.equal(here.length, 1);
              else assert.equal(here.filter((o) => o.type === r.type).length, 1);
            }
          }
        }
        const roundTripped = throughStoredFormat(zoneStream(Z), log);
        assert.deepEqual(fold(roundTripped), state);
      }),
      { numRuns: 200 },
    );
  });
});
