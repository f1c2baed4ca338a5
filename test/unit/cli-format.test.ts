import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { AuditEntryJson, ConnectionJson, TunnelJson } from '../../src/cli/api-client.ts';
import { parseTimeFlag } from '../../src/cli/args.ts';
import {
  auditText,
  connectionSummary,
  connectorRows,
  detailsText,
  formatTable,
  formatTime,
  labelled,
  membersText,
  tunnelInfoText,
  tunnelListText,
} from '../../src/cli/format.ts';

const T1 = '0c9a5e7f-0000-4000-8000-000000000001';

function conn(over: Partial<ConnectionJson>): ConnectionJson {
  return {
    id: 'c-1',
    conn_index: 0,
    pop: 'dev',
    client_version: '0.1.0',
    os: 'linux',
    arch: 'x64',
    connector_id: 'agent-a',
    origin_ip: '10.0.0.5',
    opened_at: '2026-01-01T10:00:00.000Z',
    ...over,
  };
}

function tunnel(over: Partial<TunnelJson> = {}): TunnelJson {
  return {
    id: T1,
    name: 'web',
    created_at: '2026-01-01T09:00:00.123Z',
    deleted_at: null,
    inactive_at: null,
    dns_cleanup_due_at: null,
    connections: [],
    ...over,
  };
}

describe('formatTable', () => {
  it('pads every column to its widest cell and trims line ends', () => {
    assert.equal(
      formatTable(
        ['ID', 'NAME', 'X'],
        [
          ['1', 'a-long-name', ''],
          ['22', 'b', 'z'],
        ],
      ),
      ['ID   NAME          X', '1    a-long-name', '22   b             z'].join('\n'),
    );
  });

  it('with no rows is the header alone', () => {
    assert.equal(formatTable(['A', 'B'], []), 'A   B');
  });
});

describe('connectionSummary', () => {
  it('counts connections per PoP, PoPs in name order', () => {
    const conns = [{ pop: 'lhr' }, { pop: 'dev' }, { pop: 'dev' }];
    assert.equal(connectionSummary(conns), '2xdev, 1xlhr');
  });

  it('is empty without connections', () => {
    assert.equal(connectionSummary([]), '');
  });
});

describe('formatTime', () => {
  it('is ISO 8601 in UTC to the second', () => {
    assert.equal(formatTime('2026-01-01T09:00:00.123Z'), '2026-01-01T09:00:00Z');
    assert.equal(formatTime(Date.UTC(2026, 1, 3, 4, 5, 6)), '2026-02-03T04:05:06Z');
  });

  it("shows '-' for no time and passes through what it cannot read", () => {
    assert.equal(formatTime(null), '-');
    assert.equal(formatTime(undefined), '-');
    assert.equal(formatTime('soon'), 'soon');
  });
});

describe('tunnelListText', () => {
  it('has ID, NAME, CREATED and CONNECTIONS per PoP', () => {
    const text = tunnelListText([
      tunnel({ connections: [conn({ pop: 'dev' }), conn({ pop: 'dev' }), conn({ pop: 'lhr' })] }),
      tunnel({ id: 'id-2', name: 'idle' }),
    ]);
    const [header, first, second] = text.split('\n');
    assert.match(header!, /^ID\s+NAME\s+CREATED\s+CONNECTIONS$/);
    assert.match(first!, new RegExp(`^${T1}\\s+web\\s+2026-01-01T09:00:00Z\\s+2xdev, 1xlhr$`));
    assert.match(second!, /^id-2\s+idle\s+2026-01-01T09:00:00Z$/);
  });

  it('says how to create one when there are none', () => {
    assert.match(tunnelListText([]), /No tunnels.*warren tunnel create/);
  });
});

describe('connectorRows', () => {
  it('groups connections by connector, oldest connector first, with its connections per PoP', () => {
    const rows = connectorRows([
      conn({
        id: 'b1',
        connector_id: 'agent-b',
        opened_at: '2026-01-01T11:00:00Z',
        pop: 'lhr',
        arch: 'arm64',
      }),
      conn({ id: 'a1', connector_id: 'agent-a', opened_at: '2026-01-01T10:00:05Z' }),
      conn({ id: 'a2', connector_id: 'agent-a', opened_at: '2026-01-01T10:00:00Z', pop: 'lhr' }),
      conn({ id: 'a3', connector_id: 'agent-a', opened_at: '2026-01-01T10:00:09Z' }),
    ]);
    assert.deepEqual(rows, [
      {
        connectorId: 'agent-a',
        created: '2026-01-01T10:00:00Z',
        architecture: 'linux_x64',
        version: '0.1.0',
        originIp: '10.0.0.5',
        edge: '2xdev, 1xlhr',
      },
      {
        connectorId: 'agent-b',
        created: '2026-01-01T11:00:00Z',
        architecture: 'linux_arm64',
        version: '0.1.0',
        originIp: '10.0.0.5',
        edge: '1xlhr',
      },
    ]);
  });

  it("puts connections without a connector id under '-'", () => {
    const rows = connectorRows([conn({ connector_id: null }), conn({ connector_id: undefined })]);
    assert.equal(rows.length, 1);
    assert.equal(rows[0]!.connectorId, '-');
    assert.equal(rows[0]!.edge, '2xdev');
  });
});

describe('tunnelInfoText', () => {
  it('shows the tunnel, then one row per connector', () => {
    const text = tunnelInfoText(
      tunnel({ connections: [conn({}), conn({ id: 'c-2', pop: 'lhr' }), conn({ connector_id: 'agent-b' })] }),
    );
    const lines = text.split('\n');
    assert.deepEqual(lines.slice(0, 3), [
      'NAME:     web',
      `ID:       ${T1}`,
      'CREATED:  2026-01-01T09:00:00Z',
    ]);
    assert.equal(lines[3], '');
    assert.match(lines[4]!, /^CONNECTOR ID\s+CREATED\s+ARCHITECTURE\s+VERSION\s+ORIGIN IP\s+EDGE$/);
    assert.match(
      lines[5]!,
      /^agent-a\s+2026-01-01T10:00:00Z\s+linux_x64\s+0\.1\.0\s+10\.0\.0\.5\s+1xdev, 1xlhr$/,
    );
    assert.match(lines[6]!, /^agent-b\s+.*\s+1xdev$/);
    assert.equal(lines.length, 7);
  });

  it('says when the tunnel has no connection, and shows a pending DNS cleanup and a deletion', () => {
    const text = tunnelInfoText(
      tunnel({ deleted_at: '2026-01-02T00:00:00Z', dns_cleanup_due_at: '2026-01-03T00:00:00Z' }),
    );
    assert.match(text, /^DELETED:\s+2026-01-02T00:00:00Z$/m);
    assert.match(text, /^DNS CLEANUP:\s+2026-01-03T00:00:00Z/m);
    assert.match(text, /Tunnel web has no active connection\.$/);
  });
});

describe('labelled', () => {
  it('aligns the values after the longest label', () => {
    assert.equal(
      labelled([
        ['A', '1'],
        ['LONG', '2'],
      ]),
      'A:     1\nLONG:  2',
    );
  });
});

describe('audit', () => {
  const entry: AuditEntryJson = {
    id: 7,
    time: '2026-01-01T10:00:00.500Z',
    action: 'connection.register',
    actor: 'agent',
    tunnel_id: T1,
    tunnel_name: 'web',
    connection_id: 'c-1',
    pop: 'dev',
    client_version: '0.1.0',
    details: { connIndex: 0, originIp: '10.0.0.5', note: 'two words', empty: null },
  };

  it('details are key=value, quoted when they hold spaces, nulls left out', () => {
    assert.equal(detailsText(entry.details), 'connIndex=0 originIp=10.0.0.5 note="two words"');
  });

  it('has TIME, ACTION, ACTOR, TUNNEL, CONNECTION, POP, VERSION and DETAILS', () => {
    const [header, row] = auditText([
      entry,
      {
        ...entry,
        tunnel_id: null,
        tunnel_name: null,
        connection_id: null,
        pop: null,
        client_version: null,
        details: {},
      },
    ]).split('\n');
    assert.match(header!, /^TIME\s+ACTION\s+ACTOR\s+TUNNEL\s+CONNECTION\s+POP\s+VERSION\s+DETAILS$/);
    assert.match(
      row!,
      /^2026-01-01T10:00:00Z\s+connection\.register\s+agent\s+web\s+c-1\s+dev\s+0\.1\.0\s+connIndex=0/,
    );
    const text = auditText([{ ...entry, tunnel_name: null, connection_id: null, pop: null }]);
    assert.match(text.split('\n')[1]!, new RegExp(`agent\\s+${T1}\\s+-\\s+-\\s+0\\.1\\.0`));
  });

  it('says so when nothing matches', () => {
    assert.match(auditText([]), /No audit log entries/);
  });
});

describe('membersText', () => {
  it('lists token ids, members, roles and when they were issued', () => {
    const text = membersText([
      { tokenId: 'abc', member: 'carol', role: 'member', issuedAt: Date.UTC(2026, 0, 1) },
    ]);
    assert.match(text.split('\n')[1]!, /^abc\s+carol\s+member\s+2026-01-01T00:00:00Z$/);
  });
});

describe('parseTimeFlag', () => {
  const now = Date.UTC(2026, 0, 2, 12);

  it('reads ISO dates, epoch milliseconds and durations ago', () => {
    assert.equal(parseTimeFlag('2026-01-01T00:00:00Z', '--since', now), Date.UTC(2026, 0, 1));
    assert.equal(parseTimeFlag('2026-01-01', '--since', now), Date.UTC(2026, 0, 1));
    assert.equal(parseTimeFlag('1767225600000', '--since', now), 1767225600000);
    assert.equal(parseTimeFlag('2h', '--since', now), now - 2 * 3_600_000);
    assert.equal(parseTimeFlag('90m', '--since', now), now - 90 * 60_000);
  });

  it('refuses anything else with a bad_config that names the flag', () => {
    for (const bad of ['yesterday', '2026-13-45', '12', '']) {
      assert.throws(
        () => parseTimeFlag(bad, '--before', now),
        (err: unknown) => {
          assert.equal((err as { code?: string }).code, 'bad_config');
          assert.match((err as Error).message, /^--before: /);
          return true;
        },
        bad,
      );
    }
  });
});
