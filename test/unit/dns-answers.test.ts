/**
 * The DNS server's answers, without sockets: `answerQuery` against a real `Directory` folded from
 * zone and tunnel events, so the read model the edge serves from is the one under test.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Answer } from 'dns-packet';
import { answerQuery, type DnsAnswer, type DnsAnswerInit } from '../../src/edge/dns-server.ts';
import { Directory } from '../../src/events/directory.ts';

const EDGE = 'warren-edge.localhost';
const NOW = Date.UTC(2026, 0, 1);
const LIVE = '6f1c2d3e-0000-4000-8000-00000000000a';
const GONE = '6f1c2d3e-0000-4000-8000-00000000000b';
const LIVE_TARGET = `${LIVE}.tunnels.${EDGE}`;
const GONE_TARGET = `${GONE}.tunnels.${EDGE}`;

const INIT: DnsAnswerInit = {
  edgeDomain: EDGE,
  addresses: { ipv4: ['203.0.113.1', '203.0.113.2'], ipv6: ['2001:db8::1'] },
  tunnelEndpoints: [
    { host: '198.51.100.7', port: 7844 },
    { host: '2001:db8::7', port: 7845 },
    { host: 'pop.example.net', port: 7846 },
  ],
};

class Events {
  readonly directory = new Directory();
  #position = 0;
  #recordId = 0;

  add(type: string, data: unknown): this {
    this.#position += 1;
    this.directory.apply({ position: this.#position, recordedAt: NOW, type, data, meta: {} });
    return this;
  }

  zone(zone: string): this {
    return this.add('ZoneAdded', { zone, zoneId: `z-${zone}`, accountId: 'acc-1', addedAt: NOW });
  }

  tunnel(tunnelId: string, hostname: string | null = null): this {
    return this.add('TunnelCreated', {
      tunnelId,
      name: `t-${tunnelId}`,
      accountId: 'acc-1',
      quick: hostname !== null,
      hostname,
      createdAt: NOW,
    });
  }

  record(
    zone: string,
    name: string,
    type: 'CNAME' | 'A' | 'AAAA',
    content: string,
    tunnelId: string | null = null,
  ): this {
    this.#recordId += 1;
    return this.add('DnsRecordAdded', {
      zone,
      recordId: `r${this.#recordId}`,
      name,
      type,
      content,
      tunnelId,
      origin: 'manual',
      addedAt: NOW,
    });
  }
}

/**
 * example.com: routes to a live and a deleted tunnel, plain addresses, an external CNAME, and a
 * flattened apex. example.org: a wildcard, and an apex flattened through a chain in example.com.
 * example.net: an apex with its own addresses and a name CNAMEd outside.
 */
function world(): Events {
  return new Events()
    .tunnel(LIVE)
    .tunnel(GONE)
    .tunnel('6f1c2d3e-0000-4000-8000-00000000000c', 'brisk-otter-fern-3f9a.quick.localhost')
    .add('TunnelDeleted', { tunnelId: GONE, deletedAt: NOW })
    .zone('example.com')
    .record('example.com', 'example.com', 'CNAME', LIVE_TARGET, LIVE)
    .record('example.com', 'www.example.com', 'CNAME', LIVE_TARGET, LIVE)
    .record('example.com', 'old.example.com', 'CNAME', GONE_TARGET, GONE)
    .record('example.com', 'v4.example.com', 'A', '192.0.2.10')
    .record('example.com', 'v6.example.com', 'AAAA', '2001:db8::10')
    .record('example.com', 'both.example.com', 'A', '192.0.2.11')
    .record('example.com', 'both.example.com', 'AAAA', '2001:db8::11')
    .record('example.com', 'ext.example.com', 'CNAME', 'target.elsewhere.test')
    .zone('example.org')
    .record('example.org', 'example.org', 'CNAME', 'www.example.com')
    .record('example.org', '*.example.org', 'CNAME', LIVE_TARGET, LIVE)
    .record('example.org', 'api.example.org', 'A', '192.0.2.20')
    .zone('example.net')
    .record('example.net', 'example.net', 'A', '192.0.2.30')
    .record('example.net', 'example.net', 'AAAA', '2001:db8::30')
    .record('example.net', 'away.example.net', 'CNAME', 'example.invalid');
}

const directory = world().directory;

function ask(name: string, type: string, init: DnsAnswerInit = INIT, cls?: string): DnsAnswer {
  return answerQuery(directory, init, cls === undefined ? { name, type } : { name, type, class: cls });
}

/** `owner TYPE data` per record, in answer order: what dig shows, and easy to compare. */
function show(records: Answer[]): string[] {
  return records.map((r) => {
    const data = 'data' in r ? r.data : undefined;
    if (r.type === 'SRV') {
      const d = r.data;
      return `${r.name} SRV ${d.priority} ${d.weight} ${d.port} ${d.target}`;
    }
    if (r.type === 'SOA') return `${r.name} SOA ${r.data.mname} ${r.data.rname}`;
    return `${r.name} ${r.type} ${String(data)}`;
  });
}

function assertNegative(a: DnsAnswer, rcode: 'NOERROR' | 'NXDOMAIN', apex: string): void {
  assert.equal(a.rcode, rcode);
  assert.deepEqual(a.answers, []);
  assert.deepEqual(show(a.authorities), [`${apex} SOA ns1.${EDGE} hostmaster.${EDGE}`]);
  const soa = a.authorities[0]!;
  assert.equal(soa.type === 'SOA' && soa.ttl, 60, 'negative answers are cached for 60 s');
  assert.equal(soa.type === 'SOA' && soa.data.minimum, 60);
}

const EDGE_A = [`203.0.113.1`, `203.0.113.2`];

describe('a CNAME route to a tunnel', () => {
  it('answers a CNAME query with the CNAME alone', () => {
    const a = ask('www.example.com', 'CNAME');
    assert.equal(a.rcode, 'NOERROR');
    assert.deepEqual(show(a.answers), [`www.example.com CNAME ${LIVE_TARGET}`]);
    assert.deepEqual(a.authorities, []);
  });

  it('chases the CNAME into the edge domain for A, AAAA and ANY', () => {
    assert.deepEqual(show(ask('www.example.com', 'A').answers), [
      `www.example.com CNAME ${LIVE_TARGET}`,
      ...EDGE_A.map((ip) => `${LIVE_TARGET} A ${ip}`),
    ]);
    assert.deepEqual(show(ask('www.example.com', 'AAAA').answers), [
      `www.example.com CNAME ${LIVE_TARGET}`,
      `${LIVE_TARGET} AAAA 2001:db8::1`,
    ]);
    assert.deepEqual(show(ask('www.example.com', 'ANY').answers), [
      `www.example.com CNAME ${LIVE_TARGET}`,
      ...EDGE_A.map((ip) => `${LIVE_TARGET} A ${ip}`),
      `${LIVE_TARGET} AAAA 2001:db8::1`,
    ]);
  });

  it('answers other types with the CNAME only, for the resolver to follow', () => {
    const a = ask('www.example.com', 'TXT');
    assert.equal(a.rcode, 'NOERROR');
    assert.deepEqual(show(a.answers), [`www.example.com CNAME ${LIVE_TARGET}`]);
  });

  it('gives records the default 300 s TTL', () => {
    for (const r of ask('www.example.com', 'A').answers) assert.equal(r.type !== 'OPT' && r.ttl, 300);
  });

  it('is NXDOMAIN with the CNAME when the tunnel it points at is deleted', () => {
    const a = ask('old.example.com', 'A');
    assert.equal(a.rcode, 'NXDOMAIN');
    assert.deepEqual(show(a.answers), [`old.example.com CNAME ${GONE_TARGET}`]);
    assert.deepEqual(show(a.authorities), [`${EDGE} SOA ns1.${EDGE} hostmaster.${EDGE}`]);
  });

  it('does not chase a target outside our data', () => {
    const a = ask('ext.example.com', 'A');
    assert.equal(a.rcode, 'NOERROR');
    assert.deepEqual(show(a.answers), ['ext.example.com CNAME target.elsewhere.test']);
    assert.deepEqual(a.authorities, []);
  });

  it('compares names case-insensitively and ignores the trailing dot', () => {
    assert.deepEqual(ask('WWW.Example.COM.', 'a'), ask('www.example.com', 'A'));
  });
});

describe('address records', () => {
  it('answers A and AAAA with the records of that type', () => {
    assert.deepEqual(show(ask('v4.example.com', 'A').answers), ['v4.example.com A 192.0.2.10']);
    assert.deepEqual(show(ask('v6.example.com', 'AAAA').answers), ['v6.example.com AAAA 2001:db8::10']);
    assert.deepEqual(show(ask('both.example.com', 'ANY').answers), [
      'both.example.com A 192.0.2.11',
      'both.example.com AAAA 2001:db8::11',
    ]);
  });

  it('is NODATA (NOERROR, SOA) when the name has records but none of the type asked', () => {
    assertNegative(ask('v4.example.com', 'AAAA'), 'NOERROR', 'example.com');
    assertNegative(ask('v6.example.com', 'A'), 'NOERROR', 'example.com');
    assertNegative(ask('v4.example.com', 'CNAME'), 'NOERROR', 'example.com');
    assertNegative(ask('v4.example.com', 'MX'), 'NOERROR', 'example.com');
  });

  it('is NXDOMAIN (with the SOA) for a name in the zone with no records', () => {
    assertNegative(ask('nothing.example.com', 'A'), 'NXDOMAIN', 'example.com');
    assertNegative(ask('deeper.www.example.com', 'A'), 'NXDOMAIN', 'example.com');
  });
});

describe('the zone apex', () => {
  it('flattens a CNAME into the target addresses, owned by the apex', () => {
    const a = ask('example.com', 'A');
    assert.equal(a.rcode, 'NOERROR');
    assert.deepEqual(
      show(a.answers),
      EDGE_A.map((ip) => `example.com A ${ip}`),
    );
    assert.deepEqual(show(ask('example.com', 'AAAA').answers), ['example.com AAAA 2001:db8::1']);
  });

  it('flattens through a chain of CNAMEs in our own zones', () => {
    assert.deepEqual(
      show(ask('example.org', 'A').answers),
      EDGE_A.map((ip) => `example.org A ${ip}`),
    );
  });

  it('never shows the apex CNAME itself', () => {
    assertNegative(ask('example.com', 'CNAME'), 'NOERROR', 'example.com');
    const any = show(ask('example.com', 'ANY').answers);
    assert.deepEqual(any, [
      `example.com SOA ns1.${EDGE} hostmaster.${EDGE}`,
      `example.com NS ns1.${EDGE}`,
      ...EDGE_A.map((ip) => `example.com A ${ip}`),
      'example.com AAAA 2001:db8::1',
    ]);
  });

  it('answers SOA and NS', () => {
    const soa = ask('example.com', 'SOA');
    assert.equal(soa.rcode, 'NOERROR');
    assert.deepEqual(show(soa.answers), [`example.com SOA ns1.${EDGE} hostmaster.${EDGE}`]);
    assert.deepEqual(show(ask('example.com', 'NS').answers), [`example.com NS ns1.${EDGE}`]);
  });

  it('answers its own address records', () => {
    assert.deepEqual(show(ask('example.net', 'A').answers), ['example.net A 192.0.2.30']);
    assert.deepEqual(show(ask('example.net', 'AAAA').answers), ['example.net AAAA 2001:db8::30']);
  });

  it('is NODATA, never NXDOMAIN, for a type it does not have', () => {
    assertNegative(ask('example.net', 'MX'), 'NOERROR', 'example.net');
    assertNegative(ask('example.net', 'CNAME'), 'NOERROR', 'example.net');
  });

  it('is NODATA when the flattened target is outside our data', () => {
    const events = new Events()
      .zone('example.com')
      .record('example.com', 'example.com', 'CNAME', 'somewhere.else.test');
    const a = answerQuery(events.directory, INIT, { name: 'example.com', type: 'A' });
    assertNegative(a, 'NOERROR', 'example.com');
  });
});

describe('wildcards', () => {
  it('synthesize the record for a name with none of its own, and are chased', () => {
    const a = ask('anything.example.org', 'A');
    assert.equal(a.rcode, 'NOERROR');
    assert.deepEqual(show(a.answers), [
      `anything.example.org CNAME ${LIVE_TARGET}`,
      ...EDGE_A.map((ip) => `${LIVE_TARGET} A ${ip}`),
    ]);
  });

  it('lose to a record at the name itself', () => {
    assert.deepEqual(show(ask('api.example.org', 'A').answers), ['api.example.org A 192.0.2.20']);
    assertNegative(ask('api.example.org', 'AAAA'), 'NOERROR', 'example.org');
  });

  it('match one level only', () => {
    assertNegative(ask('a.b.example.org', 'A'), 'NXDOMAIN', 'example.org');
  });

  it('answer for the literal wildcard name too', () => {
    assert.deepEqual(show(ask('*.example.org', 'CNAME').answers), [`*.example.org CNAME ${LIVE_TARGET}`]);
  });
});

describe('tunnel names in the edge domain', () => {
  it('answer the edge addresses for a live tunnel', () => {
    assert.deepEqual(
      show(ask(LIVE_TARGET, 'A').answers),
      EDGE_A.map((ip) => `${LIVE_TARGET} A ${ip}`),
    );
    assert.deepEqual(show(ask(LIVE_TARGET, 'AAAA').answers), [`${LIVE_TARGET} AAAA 2001:db8::1`]);
    assert.equal(ask(LIVE_TARGET.toUpperCase(), 'A').answers.length, 2);
  });

  it('are NXDOMAIN for a deleted or unknown tunnel', () => {
    assertNegative(ask(GONE_TARGET, 'A'), 'NXDOMAIN', EDGE);
    assertNegative(ask(`no-such-tunnel.tunnels.${EDGE}`, 'A'), 'NXDOMAIN', EDGE);
    assertNegative(ask(`x.${LIVE_TARGET}`, 'A'), 'NXDOMAIN', EDGE);
  });

  it('are NODATA for other types, and when the edge has no address of the type', () => {
    assertNegative(ask(LIVE_TARGET, 'TXT'), 'NOERROR', EDGE);
    const v4only = { ...INIT, addresses: { ipv4: ['203.0.113.1'], ipv6: [] } };
    assertNegative(ask(LIVE_TARGET, 'AAAA', v4only), 'NOERROR', EDGE);
  });

  it('make `tunnels.<edge>` exist without records', () => {
    assertNegative(ask(`tunnels.${EDGE}`, 'A'), 'NOERROR', EDGE);
  });
});

describe('cdn names (partial setup)', () => {
  it('answer the edge addresses for a hostname routed to a tunnel', () => {
    const name = `www.example.com.cdn.${EDGE}`;
    assert.deepEqual(
      show(ask(name, 'A').answers),
      EDGE_A.map((ip) => `${name} A ${ip}`),
    );
    assert.deepEqual(show(ask(name, 'AAAA').answers), [`${name} AAAA 2001:db8::1`]);
    const quick = `brisk-otter-fern-3f9a.quick.localhost.cdn.${EDGE}`;
    assert.equal(ask(quick, 'A').answers.length, 2);
    assert.equal(ask(`anything.example.org.cdn.${EDGE}`, 'A').answers.length, 2, 'wildcard routes count');
  });

  it('are NXDOMAIN for a hostname with no live tunnel', () => {
    assertNegative(ask(`nothing.example.com.cdn.${EDGE}`, 'A'), 'NXDOMAIN', EDGE);
    assertNegative(ask(`old.example.com.cdn.${EDGE}`, 'A'), 'NXDOMAIN', EDGE);
    assertNegative(ask(`v4.example.com.cdn.${EDGE}`, 'A'), 'NXDOMAIN', EDGE);
  });

  it('stop answering once the tunnel is deleted', () => {
    const events = new Events()
      .tunnel(LIVE)
      .zone('example.com')
      .record('example.com', 'www.example.com', 'CNAME', LIVE_TARGET, LIVE);
    const name = `www.example.com.cdn.${EDGE}`;
    assert.equal(answerQuery(events.directory, INIT, { name, type: 'A' }).answers.length, 2);
    events.add('TunnelDeleted', { tunnelId: LIVE, deletedAt: NOW });
    assertNegative(answerQuery(events.directory, INIT, { name, type: 'A' }), 'NXDOMAIN', EDGE);
  });
});

describe('the SRV record and the edge apex', () => {
  const SRV = `_warren._tcp.${EDGE}`;

  it('lists one SRV per tunnel endpoint, with the addresses of the targets as additionals', () => {
    const a = ask(SRV, 'SRV');
    assert.equal(a.rcode, 'NOERROR');
    assert.deepEqual(show(a.answers), [
      `${SRV} SRV 1 1 7844 region1.${EDGE}`,
      `${SRV} SRV 1 1 7845 region2.${EDGE}`,
      `${SRV} SRV 1 1 7846 pop.example.net`,
    ]);
    assert.deepEqual(show(a.additionals), [
      `region1.${EDGE} A 198.51.100.7`,
      `region2.${EDGE} AAAA 2001:db8::7`,
    ]);
  });

  it('is NODATA for other types at the SRV name', () => {
    assertNegative(ask(SRV, 'A'), 'NOERROR', EDGE);
    assertNegative(ask(`_tcp.${EDGE}`, 'A'), 'NOERROR', EDGE);
  });

  it('answers region names given by address', () => {
    assert.deepEqual(show(ask(`region1.${EDGE}`, 'A').answers), [`region1.${EDGE} A 198.51.100.7`]);
    assertNegative(ask(`region1.${EDGE}`, 'AAAA'), 'NOERROR', EDGE);
    assert.deepEqual(show(ask(`region2.${EDGE}`, 'AAAA').answers), [`region2.${EDGE} AAAA 2001:db8::7`]);
    assertNegative(ask(`region3.${EDGE}`, 'A'), 'NXDOMAIN', EDGE);
    assertNegative(ask(`region4.${EDGE}`, 'A'), 'NXDOMAIN', EDGE);
    assertNegative(ask(`region01.${EDGE}`, 'A'), 'NXDOMAIN', EDGE);
  });

  it('answers SOA and NS at the edge apex, and NODATA for the rest', () => {
    assert.deepEqual(show(ask(EDGE, 'SOA').answers), [`${EDGE} SOA ns1.${EDGE} hostmaster.${EDGE}`]);
    assert.deepEqual(show(ask(EDGE, 'NS').answers), [`${EDGE} NS ns1.${EDGE}`]);
    assertNegative(ask(EDGE, 'A'), 'NOERROR', EDGE);
  });

  it('is NXDOMAIN for other names in the edge domain', () => {
    assertNegative(ask(`unknown.${EDGE}`, 'A'), 'NXDOMAIN', EDGE);
  });

  it('serves the edge domain even inside one of our zones', () => {
    const events = new Events().tunnel(LIVE).zone('example.com');
    const init = { ...INIT, edgeDomain: 'edge.example.com' };
    const target = `${LIVE}.tunnels.edge.example.com`;
    assert.equal(answerQuery(events.directory, init, { name: target, type: 'A' }).answers.length, 2);
    const other = answerQuery(events.directory, init, { name: 'other.example.com', type: 'A' });
    assert.equal(other.rcode, 'NXDOMAIN');
    assert.equal(other.authorities[0]?.name, 'example.com');
  });
});

describe('what we are not authoritative for', () => {
  it('is REFUSED with nothing else', () => {
    for (const name of ['example.edu', 'com', 'localhost', 'notexample.com', 'quick.localhost']) {
      assert.deepEqual(ask(name, 'A'), { rcode: 'REFUSED', answers: [], authorities: [], additionals: [] });
    }
  });

  it('refuses other classes and zone transfers', () => {
    assert.equal(ask('www.example.com', 'A', INIT, 'CH').rcode, 'REFUSED');
    assert.equal(ask('example.com', 'AXFR').rcode, 'REFUSED');
    assert.equal(ask('example.com', 'IXFR').rcode, 'REFUSED');
  });
});

describe('TTLs', () => {
  it('come from ttlSeconds, and negative ones are never longer than the records', () => {
    const init = { ...INIT, ttlSeconds: 30 };
    for (const r of ask('www.example.com', 'A', init).answers) assert.equal(r.type !== 'OPT' && r.ttl, 30);
    const soa = ask('nothing.example.com', 'A', init).authorities[0]!;
    assert.equal(soa.type === 'SOA' && soa.ttl, 30);
    const long = { ...INIT, ttlSeconds: 3600 };
    const soaLong = ask('nothing.example.com', 'A', long).authorities[0]!;
    assert.equal(soaLong.type === 'SOA' && soaLong.ttl, 60);
  });
});
