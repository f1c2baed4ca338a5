/**
 * The edge's authoritative DNS server, UDP and TCP on one port. It answers for the zones in the
 * directory (CNAMEs to tunnels, A/AAAA, wildcards, CNAME flattening at the apex) and for the edge's own
 * domain (`<tunnel-id>.tunnels.`, `<host>.cdn.`, the `_warren._tcp` SRV record that agents discover
 * PoPs with). It is not a resolver: anything else is REFUSED.
 *
 * `answerQuery` is the whole of the DNS logic and does no I/O; the server around it only decodes,
 * frames, truncates and bounds connections.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import dnsPacket, { type Answer, type DecodedPacket, type OptAnswer, type SoaAnswer } from 'dns-packet';
import { inZone } from '../events/zone.ts';
import type { Clock, TimerHandle } from '../shared/clock.ts';
import { describeError, WarrenError } from '../shared/errors.ts';
import type { Logger } from '../shared/log.ts';

/** What the DNS server reads; `Directory` (src/events/directory.ts) satisfies it structurally. */
export interface DnsView {
  zoneOf(name: string): { zone: string } | undefined;
  recordsAt(
    name: string,
  ): { name: string; type: 'CNAME' | 'A' | 'AAAA'; content: string; tunnelId: string | null }[];
  tunnelForHost(hostname: string): string | undefined;
  readonly tunnels: ReadonlyMap<string, { deletedAt: number | null }>;
}

export interface DnsServerInit {
  host: string;
  /** One port for UDP and TCP; 0 picks a free one (see `DnsServer.port`). */
  port: number;
  /** The edge's own domain, e.g. `warren-edge.localhost`. */
  edgeDomain: string;
  /** The addresses visitors reach the edge on: the answer for tunnel and `cdn` names. */
  addresses: { ipv4: string[]; ipv6: string[] };
  /** Listed by the `_warren._tcp.<edgeDomain>` SRV record, in order, as `region1`, `region2`… */
  tunnelEndpoints: { host: string; port: number }[];
  /** TTL of positive answers; default 300. Negative answers are cached for min(this, 60). */
  ttlSeconds?: number;
  /** Concurrent TCP connections; more are closed at once. Default 256. */
  maxTcpConnections?: number;
}

export interface DnsServer {
  readonly port: number;
  /** Stops both listeners; answers already written on TCP are flushed first. Idempotent. */
  close(): Promise<void>;
}

/** The part of the init that decides answers. */
export type DnsAnswerInit = Pick<
  DnsServerInit,
  'edgeDomain' | 'addresses' | 'tunnelEndpoints' | 'ttlSeconds'
>;

export interface DnsAnswer {
  rcode: 'NOERROR' | 'NXDOMAIN' | 'REFUSED';
  answers: Answer[];
  authorities: Answer[];
  additionals: Answer[];
}

const DEFAULT_TTL_SECONDS = 300;
const MAX_NEGATIVE_TTL_SECONDS = 60;
const DEFAULT_MAX_TCP_CONNECTIONS = 256;
const TCP_IDLE_MS = 10_000;
/** Without EDNS a UDP answer may be 512 bytes (RFC 1035). */
const UDP_PLAIN_MAX_BYTES = 512;
/** The most we advertise and send over UDP with EDNS: DNS flag day 2020's size, clear of fragmentation. */
const UDP_EDNS_MAX_BYTES = 1232;
const TCP_MAX_BYTES = 65_535;
/** A frame shorter than a DNS header cannot be a query. */
const DNS_HEADER_BYTES = 12;
/** CNAME chains we follow inside our own data; a loop ends here too. */
const MAX_CHASE = 8;
/** Times a port-0 start retries when the free TCP port turns out to be taken for UDP. */
const BIND_ATTEMPTS = 5;

const RCODE = { NOERROR: 0, FORMERR: 1, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
/** BADVERS (16) is carried in the OPT record's upper rcode bits: 16 >> 4. */
const EXTENDED_RCODE_BADVERS = 1;

// ---- answers (pure) ----

interface Ctx {
  view: DnsView;
  edge: string;
  ttl: number;
  negativeTtl: number;
  ipv4: string[];
  ipv6: string[];
  endpoints: { host: string; port: number }[];
}

type Authority = { kind: 'zone'; apex: string } | { kind: 'edge' };

/**
 * The answer to one question, from the view alone. Names are compared lower case without the trailing
 * dot; owner names in the answer are lower case.
 */
export function answerQuery(
  view: DnsView,
  init: DnsAnswerInit,
  question: { name: string; type: string; class?: string },
): DnsAnswer {
  const ttl = init.ttlSeconds ?? DEFAULT_TTL_SECONDS;
  const ctx: Ctx = {
    view,
    edge: normalizeName(init.edgeDomain),
    ttl,
    negativeTtl: Math.min(ttl, MAX_NEGATIVE_TTL_SECONDS),
    ipv4: init.addresses.ipv4,
    ipv6: init.addresses.ipv6,
    endpoints: init.tunnelEndpoints,
  };
  const qclass = (question.class ?? 'IN').toUpperCase();
  const qtype = question.type.toUpperCase();
  // Zone transfers are not offered; other classes (CHAOS `version.bind`…) are not ours.
  if ((qclass !== 'IN' && qclass !== 'ANY') || qtype === 'AXFR' || qtype === 'IXFR') return refused();
  return resolve(ctx, normalizeName(question.name), qtype, 0);
}

function resolve(ctx: Ctx, name: string, qtype: string, depth: number): DnsAnswer {
  const authority = authorityFor(ctx, name);
  if (!authority) return refused();
  return authority.kind === 'edge'
    ? resolveEdge(ctx, name, qtype)
    : resolveZone(ctx, authority.apex, name, qtype, depth);
}

/** The most specific of our zones and the edge domain that holds `name`, as delegation would pick. */
function authorityFor(ctx: Ctx, name: string): Authority | undefined {
  const zone = ctx.view.zoneOf(name)?.zone;
  if (inZone(name, ctx.edge) && (zone === undefined || zone.length <= ctx.edge.length)) {
    return { kind: 'edge' };
  }
  return zone === undefined ? undefined : { kind: 'zone', apex: zone };
}

function resolveZone(ctx: Ctx, apex: string, name: string, qtype: string, depth: number): DnsAnswer {
  let records = ctx.view.recordsAt(name);
  if (name === apex) return resolveApex(ctx, apex, records, qtype, depth);
  if (records.length === 0) {
    // One level of wildcard, as the visitor router matches, so DNS never names a host it won't serve.
    const parent = name.slice(name.indexOf('.') + 1);
    if (inZone(parent, apex)) records = ctx.view.recordsAt(`*.${parent}`);
  }
  if (records.length === 0) return negative(ctx, 'NXDOMAIN', apex);
  const cname = records.find((r) => r.type === 'CNAME');
  if (cname) {
    const target = normalizeName(cname.content);
    if (qtype === 'A' || qtype === 'AAAA' || qtype === 'ANY') return chase(ctx, name, target, qtype, depth);
    return positive([{ name, type: 'CNAME', ttl: ctx.ttl, data: target }]);
  }
  const matching = addressAnswers(ctx, name, records, qtype);
  return matching.length > 0 ? positive(matching) : negative(ctx, 'NOERROR', apex);
}

/** The apex always exists (SOA, NS); a CNAME there is flattened into the target's addresses. */
function resolveApex(
  ctx: Ctx,
  apex: string,
  records: ReturnType<DnsView['recordsAt']>,
  qtype: string,
  depth: number,
): DnsAnswer {
  const cname = records.find((r) => r.type === 'CNAME');
  let addresses: Answer[] = [];
  if (qtype === 'A' || qtype === 'AAAA' || qtype === 'ANY') {
    addresses = cname
      ? flatten(ctx, apex, normalizeName(cname.content), qtype, depth)
      : addressAnswers(ctx, apex, records, qtype);
  }
  const answers = [
    ...(qtype === 'SOA' || qtype === 'ANY' ? [soa(ctx, apex, ctx.ttl)] : []),
    ...(qtype === 'NS' || qtype === 'ANY' ? [ns(ctx, apex)] : []),
    ...addresses,
  ];
  return answers.length > 0 ? positive(answers) : negative(ctx, 'NOERROR', apex);
}

/** The target's A/AAAA with the apex as owner; empty when the target is not ours to know. */
function flatten(ctx: Ctx, apex: string, target: string, qtype: string, depth: number): Answer[] {
  if (depth >= MAX_CHASE) return [];
  const sub = resolve(ctx, target, qtype, depth + 1);
  return sub.answers
    .filter((a) => a.type === 'A' || a.type === 'AAAA')
    .map((a) => ({ ...a, name: apex, ttl: ctx.ttl }) as Answer);
}

/**
 * A CNAME answer plus the target's addresses when we are authoritative for the target too, so a
 * resolver needs one round trip. The rcode is the target's (RFC 6604): a CNAME to a deleted tunnel
 * is NXDOMAIN with the CNAME in the answer.
 */
function chase(ctx: Ctx, owner: string, target: string, qtype: string, depth: number): DnsAnswer {
  const rr: Answer = { name: owner, type: 'CNAME', ttl: ctx.ttl, data: target };
  if (depth >= MAX_CHASE) return positive([rr]);
  const sub = resolve(ctx, target, qtype, depth + 1);
  if (sub.rcode === 'REFUSED') return positive([rr]);
  const followed = sub.answers.filter((a) => a.type === 'A' || a.type === 'AAAA' || a.type === 'CNAME');
  return {
    rcode: sub.rcode,
    answers: [rr, ...followed],
    authorities: followed.length > 0 ? [] : sub.authorities,
    additionals: [],
  };
}

function addressAnswers(
  ctx: Ctx,
  owner: string,
  records: ReturnType<DnsView['recordsAt']>,
  qtype: string,
): Answer[] {
  return records
    .filter((r) => (r.type === 'A' || r.type === 'AAAA') && (qtype === 'ANY' || r.type === qtype))
    .filter((r) => (r.type === 'A' ? net.isIPv4(r.content) : net.isIPv6(r.content)))
    .map((r) => ({ name: owner, type: r.type as 'A' | 'AAAA', ttl: ctx.ttl, data: r.content }));
}

function resolveEdge(ctx: Ctx, name: string, qtype: string): DnsAnswer {
  const edge = ctx.edge;
  if (name === edge) {
    const answers = [
      ...(qtype === 'SOA' || qtype === 'ANY' ? [soa(ctx, edge, ctx.ttl)] : []),
      ...(qtype === 'NS' || qtype === 'ANY' ? [ns(ctx, edge)] : []),
    ];
    return answers.length > 0 ? positive(answers) : negative(ctx, 'NOERROR', edge);
  }
  const rel = name.slice(0, -(edge.length + 1));
  if (rel === '_warren._tcp') return srv(ctx, qtype);
  // Names that exist only because names below them do: NODATA, never NXDOMAIN (RFC 8020).
  if (rel === 'tunnels' || rel === 'cdn' || rel === '_tcp') return negative(ctx, 'NOERROR', edge);
  const region = /^region([1-9][0-9]*)$/.exec(rel);
  if (region) {
    const host = ctx.endpoints[Number(region[1]) - 1]?.host;
    if (host === undefined || net.isIP(host) === 0) return negative(ctx, 'NXDOMAIN', edge);
    return edgeAddresses(ctx, name, qtype, net.isIPv4(host) ? [host] : [], net.isIPv6(host) ? [host] : []);
  }
  if (rel.endsWith('.tunnels')) {
    const id = rel.slice(0, -'.tunnels'.length);
    const tunnel = id.includes('.') ? undefined : ctx.view.tunnels.get(id);
    if (tunnel && tunnel.deletedAt === null) return edgeAddresses(ctx, name, qtype, ctx.ipv4, ctx.ipv6);
    return negative(ctx, 'NXDOMAIN', edge);
  }
  if (rel.endsWith('.cdn')) {
    const host = rel.slice(0, -'.cdn'.length);
    if (ctx.view.tunnelForHost(host) !== undefined) {
      return edgeAddresses(ctx, name, qtype, ctx.ipv4, ctx.ipv6);
    }
  }
  return negative(ctx, 'NXDOMAIN', ctx.edge);
}

function edgeAddresses(ctx: Ctx, owner: string, qtype: string, ipv4: string[], ipv6: string[]): DnsAnswer {
  const answers: Answer[] = [
    ...(qtype === 'A' || qtype === 'ANY' ? ipv4 : []).map(
      (ip) => ({ name: owner, type: 'A', ttl: ctx.ttl, data: ip }) as Answer,
    ),
    ...(qtype === 'AAAA' || qtype === 'ANY' ? ipv6 : []).map(
      (ip) => ({ name: owner, type: 'AAAA', ttl: ctx.ttl, data: ip }) as Answer,
    ),
  ];
  return answers.length > 0 ? positive(answers) : negative(ctx, 'NOERROR', ctx.edge);
}

/**
 * One SRV per tunnel endpoint. An endpoint given by address is named `region<N>.<edgeDomain>` with
 * its address in the additional section; one given by hostname is the target itself, since an SRV
 * target may not be an alias (RFC 2782).
 */
function srv(ctx: Ctx, qtype: string): DnsAnswer {
  if (qtype !== 'SRV' && qtype !== 'ANY') return negative(ctx, 'NOERROR', ctx.edge);
  const owner = `_warren._tcp.${ctx.edge}`;
  const answers: Answer[] = [];
  const additionals: Answer[] = [];
  ctx.endpoints.forEach((endpoint, i) => {
    const kind = net.isIP(endpoint.host);
    const target = kind === 0 ? normalizeName(endpoint.host) : `region${i + 1}.${ctx.edge}`;
    answers.push({
      name: owner,
      type: 'SRV',
      ttl: ctx.ttl,
      data: { priority: 1, weight: 1, port: endpoint.port, target },
    });
    if (kind !== 0) {
      additionals.push({ name: target, type: kind === 4 ? 'A' : 'AAAA', ttl: ctx.ttl, data: endpoint.host });
    }
  });
  if (answers.length === 0) return negative(ctx, 'NOERROR', ctx.edge);
  return { rcode: 'NOERROR', answers, authorities: [], additionals };
}

function soa(ctx: Ctx, apex: string, ttl: number): SoaAnswer {
  return {
    name: apex,
    type: 'SOA',
    ttl,
    data: {
      mname: `ns1.${ctx.edge}`,
      rname: `hostmaster.${ctx.edge}`,
      // Answers come from the live directory and there are no secondaries to notify of a change.
      serial: 1,
      refresh: 3600,
      retry: 600,
      expire: 604_800,
      minimum: ctx.negativeTtl,
    },
  };
}

function ns(ctx: Ctx, apex: string): Answer {
  return { name: apex, type: 'NS', ttl: ctx.ttl, data: `ns1.${ctx.edge}` };
}

function positive(answers: Answer[]): DnsAnswer {
  return { rcode: 'NOERROR', answers, authorities: [], additionals: [] };
}

/** NXDOMAIN, or NOERROR with no answer (NODATA); the SOA tells resolvers how long to remember it. */
function negative(ctx: Ctx, rcode: 'NOERROR' | 'NXDOMAIN', apex: string): DnsAnswer {
  return { rcode, answers: [], authorities: [soa(ctx, apex, ctx.negativeTtl)], additionals: [] };
}

function refused(): DnsAnswer {
  return { rcode: 'REFUSED', answers: [], authorities: [], additionals: [] };
}

function normalizeName(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

// ---- wire ----

type Reply = { kind: 'answer'; bytes: Buffer } | { kind: 'ignore' } | { kind: 'malformed'; err: unknown };

/** The reply to one DNS message: 64 KiB on TCP; on UDP 512 bytes, or what EDNS allows up to 1232. */
function reply(init: DnsAnswerInit, view: DnsView, message: Buffer, transport: 'udp' | 'tcp'): Reply {
  let query: DecodedPacket;
  try {
    query = dnsPacket.decode(message);
  } catch (err) {
    return { kind: 'malformed', err };
  }
  // Never answer an answer: two servers pointed at each other would loop forever.
  if (query.flag_qr) return { kind: 'ignore' };
  try {
    const opt = query.additionals?.find((a): a is OptAnswer => a.type === 'OPT');
    const maxBytes =
      transport === 'tcp'
        ? TCP_MAX_BYTES
        : opt
          ? Math.min(Math.max(opt.udpPayloadSize, UDP_PLAIN_MAX_BYTES), UDP_EDNS_MAX_BYTES)
          : UDP_PLAIN_MAX_BYTES;
    const questions = query.questions ?? [];
    const opcode = ((query.flags ?? 0) >> 11) & 0xf;
    let rcode: number;
    let extendedRcode = 0;
    let answer: DnsAnswer = refused();
    if (opcode !== 0) rcode = RCODE.NOTIMP;
    else if (questions.length !== 1) rcode = RCODE.FORMERR;
    else if (opt && opt.ednsVersion !== 0) {
      rcode = RCODE.NOERROR;
      extendedRcode = EXTENDED_RCODE_BADVERS;
    } else {
      answer = answerQuery(view, init, questions[0]!);
      rcode = RCODE[answer.rcode];
    }
    const authoritative = rcode === RCODE.NOERROR || rcode === RCODE.NXDOMAIN;
    const flags =
      ((query.flags ?? 0) & dnsPacket.RECURSION_DESIRED) |
      (authoritative && extendedRcode === 0 ? dnsPacket.AUTHORITATIVE_ANSWER : 0) |
      rcode;
    const ourOpt: Answer[] = opt
      ? [
          {
            name: '.',
            type: 'OPT',
            udpPayloadSize: UDP_EDNS_MAX_BYTES,
            extendedRcode,
            ednsVersion: 0,
            flags: 0,
            flag_do: false,
            options: [],
          },
        ]
      : [];
    const full = {
      id: query.id ?? 0,
      type: 'response' as const,
      flags,
      questions,
      answers: answer.answers,
      authorities: answer.authorities,
      additionals: [...answer.additionals, ...ourOpt],
    };
    let bytes = dnsPacket.encode(full);
    // Additional records are a convenience: drop them first, without TC (RFC 2181 9).
    if (bytes.length > maxBytes) bytes = dnsPacket.encode({ ...full, additionals: ourOpt });
    if (bytes.length > maxBytes) {
      bytes = dnsPacket.encode({
        ...full,
        flags: flags | dnsPacket.TRUNCATED_RESPONSE,
        answers: [],
        authorities: [],
        additionals: ourOpt,
      });
    }
    return { kind: 'answer', bytes };
  } catch (err) {
    // A question that decodes but cannot be echoed (odd bytes in a label) is as good as garbage.
    return { kind: 'malformed', err };
  }
}

/** Starts the DNS server on `init.host:init.port` (UDP and TCP). */
export async function startDnsServer(
  components: { clock: Clock; log: Logger; view: DnsView },
  init: DnsServerInit,
): Promise<DnsServer> {
  const { clock, log, view } = components;
  for (const ip of init.addresses.ipv4) {
    if (!net.isIPv4(ip)) throw new WarrenError('bad_config', `DNS: ${ip} is not an IPv4 address`);
  }
  for (const ip of init.addresses.ipv6) {
    if (!net.isIPv6(ip)) throw new WarrenError('bad_config', `DNS: ${ip} is not an IPv6 address`);
  }
  const maxTcpConnections = init.maxTcpConnections ?? DEFAULT_MAX_TCP_CONNECTIONS;
  const connections = new Set<net.Socket>();
  let closing: Promise<void> | undefined;

  const onDatagram = (udp: dgram.Socket) => (message: Buffer, from: dgram.RemoteInfo) => {
    const r = reply(init, view, message, 'udp');
    if (r.kind === 'malformed') {
      log.debug(
        { remoteAddress: from.address, err: describeError(r.err) },
        'DNS: ignoring a malformed UDP message',
      );
      return;
    }
    if (r.kind === 'ignore') return;
    udp.send(r.bytes, from.port, from.address, (err) => {
      if (err) log.debug({ remoteAddress: from.address, err: describeError(err) }, 'DNS: UDP send failed');
    });
  };

  const onConnection = (socket: net.Socket) => {
    if (closing || connections.size >= maxTcpConnections) {
      log.debug({ remoteAddress: socket.remoteAddress, maxTcpConnections }, 'DNS: TCP connection refused');
      socket.destroy();
      return;
    }
    connections.add(socket);
    let pending: Buffer = Buffer.alloc(0);
    let waitingForDrain = false;
    let idle: TimerHandle = clock.setTimeout(onIdle, TCP_IDLE_MS);

    function onIdle() {
      log.debug({ remoteAddress: socket.remoteAddress }, 'DNS: closing an idle TCP connection');
      socket.destroy();
    }

    // Queries are answered in order; while the peer does not read our answers we stop reading its
    // queries, so neither buffer grows past one frame and one socket chunk.
    function drain() {
      while (!socket.destroyed && !closing && pending.length >= 2) {
        const length = pending.readUInt16BE(0);
        if (length < DNS_HEADER_BYTES) {
          log.debug({ remoteAddress: socket.remoteAddress, length }, 'DNS: bad TCP frame length; closing');
          socket.destroy();
          return;
        }
        if (pending.length < 2 + length) return;
        const message = pending.subarray(2, 2 + length);
        pending = pending.subarray(2 + length);
        clock.clearTimeout(idle);
        idle = clock.setTimeout(onIdle, TCP_IDLE_MS);
        const r = reply(init, view, message, 'tcp');
        if (r.kind === 'malformed') {
          log.debug(
            { remoteAddress: socket.remoteAddress, err: describeError(r.err) },
            'DNS: malformed TCP message; closing',
          );
          socket.destroy();
          return;
        }
        if (r.kind === 'ignore') continue;
        const prefix = Buffer.alloc(2);
        prefix.writeUInt16BE(r.bytes.length);
        if (!socket.write(Buffer.concat([prefix, r.bytes]))) {
          waitingForDrain = true;
          socket.pause();
          socket.once('drain', () => {
            waitingForDrain = false;
            socket.resume();
            drain();
          });
          return;
        }
      }
    }

    socket.on('data', (chunk: Buffer) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      if (!waitingForDrain) drain();
    });
    socket.on('error', (err) => {
      log.debug(
        { remoteAddress: socket.remoteAddress, err: describeError(err) },
        'DNS: TCP connection error',
      );
    });
    socket.on('close', () => {
      connections.delete(socket);
      clock.clearTimeout(idle);
    });
  };

  const { tcp, udp, port } = await bindBoth(init, onConnection);
  udp.on('message', onDatagram(udp));
  // Errors after the bind (a failed accept, a failed receive) are logged; the listeners stay up.
  tcp.on('error', (err) => log.warn({ err: describeError(err) }, 'DNS: TCP listener error'));
  udp.on('error', (err) => log.warn({ err: describeError(err) }, 'DNS: UDP socket error'));
  log.debug({ host: init.host, port }, 'DNS server listening');

  return {
    port,
    close() {
      closing ??= (async () => {
        const udpClosed = new Promise<void>((resolve) => udp.close(() => resolve()));
        const tcpClosed = new Promise<void>((resolve) => tcp.close(() => resolve()));
        // Everything a connection was asked has been answered (synchronously); flush it, then go.
        for (const socket of connections) socket.end(() => socket.destroy());
        await Promise.all([udpClosed, tcpClosed]);
      })();
      return closing;
    },
  };
}

/**
 * TCP first, then UDP on the same port. With port 0 the free TCP port may be taken for UDP; then
 * both are given up and another port is tried.
 */
async function bindBoth(
  init: DnsServerInit,
  onConnection: (socket: net.Socket) => void,
): Promise<{ tcp: net.Server; udp: dgram.Socket; port: number }> {
  for (let attempt = 1; ; attempt++) {
    const tcp = net.createServer(onConnection);
    await new Promise<void>((resolve, reject) => {
      tcp.once('error', reject);
      tcp.listen(init.port, init.host, () => {
        tcp.off('error', reject);
        resolve();
      });
    });
    const port = (tcp.address() as net.AddressInfo).port;
    const udp = dgram.createSocket(net.isIPv6(init.host) ? 'udp6' : 'udp4');
    try {
      await new Promise<void>((resolve, reject) => {
        udp.once('error', reject);
        udp.bind(port, init.host, () => {
          udp.off('error', reject);
          resolve();
        });
      });
      return { tcp, udp, port };
    } catch (err) {
      await new Promise<void>((resolve) => udp.close(() => resolve()));
      await new Promise<void>((resolve) => tcp.close(() => resolve()));
      const taken = (err as NodeJS.ErrnoException).code === 'EADDRINUSE';
      if (init.port !== 0 || !taken || attempt >= BIND_ATTEMPTS) throw err;
    }
  }
}
