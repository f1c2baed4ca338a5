/**
 * The DNS server on real loopback sockets: `dig` over UDP and TCP for the answers, truncation and
 * the fallback to TCP; a dns-packet client for what dig will not send (garbage, bad frames) and for
 * the TCP limits (connection cap, idle timeout on the injected clock).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import dgram from 'node:dgram';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import dnsPacket, { type DecodedPacket, type Packet, type Question } from 'dns-packet';
import { pino } from 'pino';
import { type DnsServer, type DnsServerInit, startDnsServer } from '../../src/edge/dns-server.ts';
import { Directory } from '../../src/events/directory.ts';
import { ManualClock } from '../../src/shared/clock.ts';
import { type Logger, silentLogger } from '../../src/shared/log.ts';
import { onceWithDeadline, waitFor, withDeadline } from '../support/wait.ts';

const EDGE = 'warren-edge.localhost';
const NOW = Date.UTC(2026, 0, 1);
const TUNNEL = '0c9a5e7f-0000-4000-8000-000000000001';
const TARGET = `${TUNNEL}.tunnels.${EDGE}`;
const DEADLINE_MS = 10_000;

function directoryWithRoutes(): Directory {
  const d = new Directory();
  let position = 0;
  const apply = (type: string, data: unknown) =>
    d.apply({ position: ++position, recordedAt: NOW, type, data, meta: {} });
  const record = (name: string, type: string, content: string, tunnelId: string | null) =>
    apply('DnsRecordAdded', {
      zone: 'example.com',
      recordId: `r${position}`,
      name,
      type,
      content,
      tunnelId,
      origin: 'manual',
      addedAt: NOW,
    });
  apply('TunnelCreated', {
    tunnelId: TUNNEL,
    name: 'web',
    accountId: 'acc-1',
    quick: false,
    hostname: null,
    createdAt: NOW,
  });
  apply('ZoneAdded', { zone: 'example.com', zoneId: 'z1', accountId: 'acc-1', addedAt: NOW });
  record('example.com', 'CNAME', TARGET, TUNNEL);
  record('www.example.com', 'CNAME', TARGET, TUNNEL);
  record('v4.example.com', 'A', '192.0.2.10', null);
  return d;
}

const BASE: DnsServerInit = {
  host: '127.0.0.1',
  port: 0,
  edgeDomain: EDGE,
  addresses: { ipv4: ['127.0.0.1'], ipv6: ['::1'] },
  tunnelEndpoints: [{ host: '127.0.0.1', port: 7844 }],
};

async function start(
  init: Partial<DnsServerInit> = {},
  clock = new ManualClock(),
  log: Logger = silentLogger,
): Promise<DnsServer> {
  return startDnsServer({ clock, log, view: directoryWithRoutes() }, { ...BASE, ...init });
}

// ---- dig ----

function dig(port: number, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      'dig',
      ['@127.0.0.1', '-p', String(port), '+time=5', '+tries=1', ...args],
      { timeout: DEADLINE_MS },
      (err, stdout, stderr) => {
        if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') {
          reject(new Error('dig not found: install it with `apt-get install -y bind9-dnsutils`'));
        } else if (err)
          reject(new Error(`dig ${args.join(' ')} failed: ${stderr || stdout}`, { cause: err }));
        else resolve(stdout);
      },
    );
  });
}

/** The records dig prints with +short, one per line. */
async function short(port: number, ...args: string[]): Promise<string[]> {
  const out = await dig(port, ['+short', ...args]);
  return out.split('\n').filter((line) => line.length > 0);
}

/** The header of dig's answer: status and flags. */
async function header(port: number, ...args: string[]): Promise<{ status: string; flags: string[] }> {
  const out = await dig(port, ['+noall', '+comments', ...args]);
  const status = /status: ([A-Z]+)/.exec(out)?.[1];
  const flags = /;; flags: ([a-z ]+);/.exec(out)?.[1];
  assert.ok(status && flags !== undefined, `dig printed no header:\n${out}`);
  return { status, flags: flags.trim().split(' ') };
}

// ---- a dns-packet client ----

let nextId = 1;
function query(name: string, type: Question['type']): Packet {
  return { type: 'query', id: nextId++, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type }] };
}

async function withUdp<T>(fn: (socket: dgram.Socket) => Promise<T>): Promise<T> {
  const socket = dgram.createSocket('udp4');
  socket.bind(0, '127.0.0.1');
  await onceWithDeadline(socket, 'listening', DEADLINE_MS);
  try {
    return await fn(socket);
  } finally {
    socket.close();
  }
}

/** Sends `bytes` and resolves with the first answer carrying `id`. */
async function udpExchange(
  socket: dgram.Socket,
  port: number,
  bytes: Buffer,
  id: number,
): Promise<DecodedPacket> {
  const answer = new Promise<DecodedPacket>((resolve) => {
    const onMessage = (message: Buffer) => {
      const packet = dnsPacket.decode(message);
      if (packet.id !== id) return;
      socket.off('message', onMessage);
      resolve(packet);
    };
    socket.on('message', onMessage);
  });
  socket.send(bytes, port, '127.0.0.1');
  return withDeadline(answer, DEADLINE_MS, `UDP answer to query ${id}`);
}

/** A TCP connection that collects length-prefixed answers. */
class TcpClient {
  readonly answers: DecodedPacket[] = [];
  closed = false;
  #pending: Buffer = Buffer.alloc(0);

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.#pending = Buffer.concat([this.#pending, chunk]);
      while (this.#pending.length >= 2 && this.#pending.length >= 2 + this.#pending.readUInt16BE(0)) {
        const length = this.#pending.readUInt16BE(0);
        this.answers.push(dnsPacket.decode(this.#pending.subarray(2, 2 + length)));
        this.#pending = this.#pending.subarray(2 + length);
      }
    });
    socket.on('close', () => {
      this.closed = true;
    });
    socket.on('error', () => {});
  }

  static async connect(port: number): Promise<TcpClient> {
    const socket = net.connect(port, '127.0.0.1');
    const client = new TcpClient(socket);
    await onceWithDeadline(socket, 'connect', DEADLINE_MS);
    return client;
  }

  send(packet: Packet): void {
    this.socket.write(dnsPacket.streamEncode(packet));
  }

  async answer(id: number): Promise<DecodedPacket> {
    const found = await waitFor(() => this.answers.find((a) => a.id === id), {
      timeoutMs: DEADLINE_MS,
      message: `TCP answer to query ${id}`,
    });
    return found!;
  }

  async waitClosed(message: string): Promise<void> {
    await waitFor(() => this.closed, { timeoutMs: DEADLINE_MS, message });
  }
}

function rcodeOf(packet: DecodedPacket): number {
  return (packet.flags ?? 0) & 0xf;
}

function dataOf(packet: DecodedPacket): string[] {
  return (packet.answers ?? []).map((a) => `${a.type} ${'data' in a ? String(a.data) : ''}`);
}

// ---- tests ----

describe('DNS server answering dig', () => {
  let server: DnsServer;
  before(async () => {
    server = await start();
  });
  after(async () => {
    await server?.close();
  });

  it('answers a CNAME route, chased to the edge addresses, over UDP and TCP', async () => {
    for (const transport of ['+notcp', '+tcp']) {
      assert.deepEqual(await short(server.port, transport, 'www.example.com', 'A'), [
        `${TARGET}.`,
        '127.0.0.1',
      ]);
      assert.deepEqual(await short(server.port, transport, 'WWW.EXAMPLE.COM.', 'AAAA'), [
        `${TARGET}.`,
        '::1',
      ]);
    }
  });

  it('sets AA and echoes the question', async () => {
    const out = await dig(server.port, ['+noall', '+comments', '+question', 'www.example.com', 'A']);
    assert.match(out, /flags: qr aa rd;/);
    assert.match(out, /;www\.example\.com\.\s+IN\s+A/);
  });

  it('flattens the apex CNAME', async () => {
    assert.deepEqual(await short(server.port, 'example.com', 'A'), ['127.0.0.1']);
    assert.deepEqual(await short(server.port, '+tcp', 'example.com', 'AAAA'), ['::1']);
    assert.deepEqual(await short(server.port, 'example.com', 'CNAME'), []);
  });

  it('answers SOA and NS at the apex', async () => {
    const [soa] = await short(server.port, 'example.com', 'SOA');
    assert.match(soa ?? '', new RegExp(`^ns1\\.${EDGE}\\. hostmaster\\.${EDGE}\\. 1 3600 600 604800 60$`));
    assert.deepEqual(await short(server.port, 'example.com', 'NS'), [`ns1.${EDGE}.`]);
  });

  it('tells NXDOMAIN from NODATA, both authoritative', async () => {
    assert.deepEqual(await header(server.port, 'nothing.example.com', 'A'), {
      status: 'NXDOMAIN',
      flags: ['qr', 'aa', 'rd'],
    });
    assert.deepEqual(await header(server.port, '+tcp', 'v4.example.com', 'AAAA'), {
      status: 'NOERROR',
      flags: ['qr', 'aa', 'rd'],
    });
    const authority = await dig(server.port, ['+noall', '+authority', 'v4.example.com', 'AAAA']);
    assert.match(authority, /^example\.com\.\s+60\s+IN\s+SOA\s/m);
  });

  it('answers tunnel names and refuses what is not ours', async () => {
    assert.deepEqual(await short(server.port, TARGET, 'A'), ['127.0.0.1']);
    assert.equal((await header(server.port, `nope.tunnels.${EDGE}`, 'A')).status, 'NXDOMAIN');
    assert.deepEqual(await header(server.port, 'example.org', 'A'), {
      status: 'REFUSED',
      flags: ['qr', 'rd'],
    });
  });

  it('answers cdn names for routed hostnames', async () => {
    assert.deepEqual(await short(server.port, `www.example.com.cdn.${EDGE}`, 'A'), ['127.0.0.1']);
    assert.equal((await header(server.port, `v4.example.com.cdn.${EDGE}`, 'A')).status, 'NXDOMAIN');
  });

  it('lists the tunnel endpoints in the SRV record, with their addresses as additionals', async () => {
    assert.deepEqual(await short(server.port, `_warren._tcp.${EDGE}`, 'SRV'), [`1 1 7844 region1.${EDGE}.`]);
    const additional = await dig(server.port, ['+noall', '+additional', `_warren._tcp.${EDGE}`, 'SRV']);
    assert.match(additional, new RegExp(`^region1\\.${EDGE}\\.\\s+300\\s+IN\\s+A\\s+127\\.0\\.0\\.1$`, 'm'));
    assert.deepEqual(await short(server.port, '+tcp', `region1.${EDGE}`, 'A'), ['127.0.0.1']);
  });
});

describe('DNS server truncation', () => {
  // Ten addresses make an answer of about 700 bytes: over 512, under EDNS's 1232.
  const addresses = Array.from({ length: 10 }, (_, i) => `10.0.0.${i + 1}`);
  let server: DnsServer;
  before(async () => {
    server = await start({ addresses: { ipv4: addresses, ipv6: [] } });
  });
  after(async () => {
    await server?.close();
  });

  it('sets TC over UDP without EDNS, and dig gets the whole answer over TCP', async () => {
    const truncated = await header(server.port, '+noedns', '+ignore', TARGET, 'A');
    assert.deepEqual(truncated, { status: 'NOERROR', flags: ['qr', 'aa', 'tc', 'rd'] });
    assert.deepEqual(await short(server.port, '+noedns', '+ignore', TARGET, 'A'), []);
    assert.deepEqual((await short(server.port, '+noedns', TARGET, 'A')).sort(), [...addresses].sort());
  });

  it('fits the answer in one datagram when EDNS allows it', async () => {
    assert.deepEqual(await header(server.port, '+bufsize=1232', '+ignore', TARGET, 'A'), {
      status: 'NOERROR',
      flags: ['qr', 'aa', 'rd'],
    });
    assert.equal((await short(server.port, '+bufsize=1232', '+ignore', TARGET, 'A')).length, 10);
  });
});

describe('DNS server and bad input', () => {
  let server: DnsServer;
  const logLines: { msg: string }[] = [];
  before(async () => {
    const log = pino({ level: 'debug' }, { write: (line: string) => logLines.push(JSON.parse(line)) });
    server = await start({}, new ManualClock(), log);
  });
  after(async () => {
    await server?.close();
  });

  it('ignores garbage datagrams and answers the next query', async () => {
    await withUdp(async (socket) => {
      const garbage = [
        Buffer.alloc(0),
        Buffer.from([1, 2, 3]),
        Buffer.from('this is not a DNS message at all, not even close'),
        // A header that promises five questions and carries none.
        Buffer.from([0, 1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0]),
        // A question name with a compression pointer to itself.
        Buffer.from([0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1]),
        // A response (QR set): never answered, so two servers cannot loop.
        dnsPacket.encode({ ...query('www.example.com', 'A'), type: 'response' }),
      ];
      for (const bytes of garbage) socket.send(bytes, server.port, '127.0.0.1');
      const q = query('www.example.com', 'A');
      const answer = await udpExchange(socket, server.port, dnsPacket.encode(q), q.id!);
      assert.equal(rcodeOf(answer), 0);
      assert.equal(answer.flag_aa, true);
      assert.deepEqual(dataOf(answer), [`CNAME ${TARGET}`, 'A 127.0.0.1']);
      // Loopback keeps datagrams in order: the garbage arrived before the query, and each of the five
      // malformed ones was logged (the response is dropped without a word).
      const malformed = logLines.filter((l) => l.msg === 'DNS: ignoring a malformed UDP message');
      assert.equal(malformed.length, 5);
    });
  });

  it('answers FORMERR to a query without a question, and NOTIMP to other opcodes', async () => {
    await withUdp(async (socket) => {
      const empty = { type: 'query' as const, id: 4242, flags: 0, questions: [] };
      const formerr = await udpExchange(socket, server.port, dnsPacket.encode(empty), 4242);
      assert.equal(rcodeOf(formerr), 1);
      const notify = { ...query('example.com', 'SOA'), flags: 4 << 11 };
      const notimp = await udpExchange(socket, server.port, dnsPacket.encode(notify), notify.id!);
      assert.equal(rcodeOf(notimp), 4);
    });
  });

  it('answers an unknown EDNS version with BADVERS', async () => {
    await withUdp(async (socket) => {
      const q: Packet = {
        ...query('www.example.com', 'A'),
        additionals: [
          {
            name: '.',
            type: 'OPT',
            udpPayloadSize: 1232,
            extendedRcode: 0,
            ednsVersion: 1,
            flags: 0,
            flag_do: false,
            options: [],
          },
        ],
      };
      const answer = await udpExchange(socket, server.port, dnsPacket.encode(q), q.id!);
      const opt = answer.additionals?.find((a) => a.type === 'OPT');
      assert.ok(opt && opt.type === 'OPT');
      assert.equal(opt.extendedRcode, 1);
      assert.deepEqual(answer.answers, []);
    });
  });

  it('closes a TCP connection whose frame length is too short, and keeps serving', async () => {
    const bad = await TcpClient.connect(server.port);
    bad.socket.write(Buffer.from([0, 3, 1, 2, 3]));
    await bad.waitClosed('the server closes a connection with a 3-byte frame');

    const garbage = await TcpClient.connect(server.port);
    const junk = Buffer.alloc(40, 0xff);
    const frame = Buffer.alloc(2);
    frame.writeUInt16BE(junk.length);
    garbage.socket.write(Buffer.concat([frame, junk]));
    await garbage.waitClosed('the server closes a connection that sent an undecodable frame');

    const good = await TcpClient.connect(server.port);
    const q = query('v4.example.com', 'A');
    good.send(q);
    assert.deepEqual(dataOf(await good.answer(q.id!)), ['A 192.0.2.10']);
    good.socket.destroy();
  });

  it('answers queries pipelined on one TCP connection, split across writes, in order', async () => {
    const client = await TcpClient.connect(server.port);
    const queries = [
      query('v4.example.com', 'A'),
      query('example.com', 'SOA'),
      query('nothing.example.com', 'A'),
    ];
    const bytes = Buffer.concat(queries.map((q) => dnsPacket.streamEncode(q)));
    // One byte, then the rest in two uneven pieces: framing must not depend on how TCP splits it.
    client.socket.write(bytes.subarray(0, 1));
    client.socket.write(bytes.subarray(1, 30));
    client.socket.write(bytes.subarray(30));
    await waitFor(() => client.answers.length === 3, { timeoutMs: DEADLINE_MS, message: 'three answers' });
    assert.deepEqual(
      client.answers.map((a) => a.id),
      queries.map((q) => q.id),
    );
    assert.deepEqual(client.answers.map(rcodeOf), [0, 0, 3]);
    client.socket.destroy();
  });
});

describe('DNS server TCP limits', () => {
  it('closes connections past maxTcpConnections, and accepts again once one goes', async () => {
    const server = await start({ maxTcpConnections: 2 });
    try {
      const first = await TcpClient.connect(server.port);
      const second = await TcpClient.connect(server.port);
      // An answer on each proves the server has counted both.
      for (const client of [first, second]) {
        const q = query('v4.example.com', 'A');
        client.send(q);
        await client.answer(q.id!);
      }
      const third = await TcpClient.connect(server.port);
      await third.waitClosed('the third connection is closed at once');

      first.socket.destroy();
      await first.waitClosed('the first connection goes');
      const fourth = await waitFor(
        async () => {
          const c = await TcpClient.connect(server.port);
          const q = query('v4.example.com', 'A');
          c.send(q);
          // The server may not have seen the first one go yet: then this one is closed too; try again.
          const outcome = await waitFor(
            () => c.answers.find((a) => a.id === q.id) ?? (c.closed && 'closed'),
            {
              timeoutMs: DEADLINE_MS,
              message: 'an answer or a close',
            },
          );
          return outcome === 'closed' ? undefined : c;
        },
        { timeoutMs: DEADLINE_MS, message: 'a new connection is served once one went away' },
      );
      fourth!.socket.destroy();
      second.socket.destroy();
    } finally {
      await server.close();
    }
  });

  it('closes a TCP connection idle for 10 s on the injected clock', async () => {
    const clock = new ManualClock();
    const server = await start({}, clock);
    try {
      const client = await TcpClient.connect(server.port);
      const q1 = query('v4.example.com', 'A');
      client.send(q1);
      await client.answer(q1.id!);
      clock.advance(9_999);
      // A query within the 10 s keeps the connection, and restarts its idle time.
      const q2 = query('v4.example.com', 'A');
      client.send(q2);
      await client.answer(q2.id!);
      clock.advance(9_999);
      assert.equal(client.closed, false);
      clock.advance(1);
      await client.waitClosed('the idle connection is closed');
      await waitFor(() => clock.pendingTimers === 0, {
        timeoutMs: DEADLINE_MS,
        message: 'no timer left once the connection is gone',
      });
    } finally {
      await server.close();
    }
  });

  it('closes with a TCP connection still open, and stops answering', async () => {
    const clock = new ManualClock();
    const server = await start({}, clock);
    const client = await TcpClient.connect(server.port);
    const q = query('v4.example.com', 'A');
    client.send(q);
    await client.answer(q.id!);
    await withDeadline(server.close(), DEADLINE_MS, 'close() with an open connection');
    await withDeadline(server.close(), DEADLINE_MS, 'close() again');
    await client.waitClosed('the server closed the connection');
    assert.equal(clock.pendingTimers, 0);
    await assert.rejects(TcpClient.connect(server.port));
  });
});

describe('DNS server start', () => {
  it('fails with EADDRINUSE when the UDP port is taken, and leaves the TCP port free', async () => {
    const squatter = dgram.createSocket('udp4');
    squatter.bind(0, '127.0.0.1');
    await onceWithDeadline(squatter, 'listening', DEADLINE_MS);
    const port = squatter.address().port;
    try {
      await assert.rejects(start({ port }), { code: 'EADDRINUSE' });
      const probe = net.createServer();
      probe.listen(port, '127.0.0.1');
      await onceWithDeadline(probe, 'listening', DEADLINE_MS);
      await new Promise<void>((resolve) => probe.close(() => resolve()));
    } finally {
      squatter.close();
    }
  });

  it('rejects edge addresses that are not IP addresses', async () => {
    await assert.rejects(start({ addresses: { ipv4: ['edge.example.com'], ipv6: [] } }), {
      code: 'bad_config',
    });
  });
});
