/**
 * One agent connection to the edge, as the connection machine's actors use it: dial TLS, wait for
 * `hello`, `register` with the HMAC proof, then serve the streams the edge opens. Remote error
 * answers become typed `WarrenError`s here, once; so does a refused TCP connect (flagged `refused`,
 * which the machine retries without escalating). Also where the edge endpoints come from when the
 * agent discovers them (the edge's SRV record).
 */
import { Resolver } from 'node:dns/promises';
import net from 'node:net';
import os from 'node:os';
import { filter, firstValueFrom, mergeMap, type Subscription, take } from 'rxjs';
import { connectionRefused } from '../actors/connection.machine.ts';
import { type Clock, clockTimeout } from '../shared/clock.ts';
import { type ErrorCode, WarrenError } from '../shared/errors.ts';
import type { Logger } from '../shared/log.ts';
import { type ClientInfo, type ControlMessage, PROTOCOL_VERSION } from '../transport/messages.ts';
import { registrationProof } from '../transport/proof.ts';
import { MuxSession } from '../transport/session.ts';
import { dialEdge } from '../transport/tls.ts';
import type { OriginProxy } from './origin-proxy.ts';

/** One address of the edge's tunnel listener. */
export interface EdgeEndpoint {
  host: string;
  port: number;
  /** SNI, and the name the edge certificate must carry. */
  serverName: string;
}

export interface TunnelCredentials {
  tunnelId: string;
  secret: Buffer;
  /** The endpoint the credentials name; the agent's default when it is given no list. */
  edge: EdgeEndpoint;
  edgeCaPem: string;
}

/** What one dial needs to know about itself. */
export interface ConnectAttempt {
  connIndex: number;
  previousAttempts: number;
  /** Where to dial; default `credentials.edge`. */
  endpoint?: EdgeEndpoint;
  signal: AbortSignal;
}

export interface TunnelConnectionDeps {
  clock: Clock;
  log: Logger;
  credentials: TunnelCredentials;
  proxy: OriginProxy;
  client: ClientInfo;
  heartbeatIntervalMs: number;
  heartbeatMissedLimit: number;
  /** From TCP connect to `registered` (default 15 s). */
  handshakeTimeoutMs: number;
  /** Streams served at once on one connection; more wait (default 1024). */
  maxConcurrentStreams: number;
}

/** A registered connection. `abort` ends it now; `drain` moves off it gracefully. */
export interface AgentConnection {
  connectionId: string;
  pop: string;
  hostname: string;
  connIndex: number;
  session: MuxSession;
  /**
   * Ends the connection. After the edge asked to drain, in-flight streams may still finish until the
   * edge's deadline (the session closes gracefully in the background); otherwise it ends now.
   */
  abort(reason: Error): void;
  /** The edge sent `drain`: remember its deadline for `abort`. */
  markDraining(deadlineMs: number): void;
}

const KNOWN_CODES = new Set<ErrorCode>([
  'auth_failed',
  'tunnel_deleted',
  'duplicate_connection',
  'account_tunnel_limit',
  'edge_draining',
  'bad_request',
]);

export function agentClientInfo(id: string, version: string): ClientInfo {
  return { id, version, os: process.platform, arch: os.arch(), features: [] };
}

export async function connectTunnel(
  deps: TunnelConnectionDeps,
  attempt: ConnectAttempt,
): Promise<AgentConnection> {
  const deadline = clockTimeout(deps.clock, deps.handshakeTimeoutMs);
  try {
    return await connectWithin(deps, attempt, deadline.signal);
  } finally {
    deadline.clear();
  }
}

async function connectWithin(
  deps: TunnelConnectionDeps,
  attempt: ConnectAttempt,
  deadline: AbortSignal,
): Promise<AgentConnection> {
  const { clock, log, credentials } = deps;
  const endpoint = attempt.endpoint ?? credentials.edge;
  const signal = AbortSignal.any([attempt.signal, deadline]);
  const socket = await dialEdge({
    host: endpoint.host,
    port: endpoint.port,
    servername: endpoint.serverName,
    caPem: credentials.edgeCaPem,
    timeoutMs: deps.handshakeTimeoutMs,
    signal,
  }).catch((err: unknown) => {
    // Nothing listens there (an edge restarting, most likely): the machine retries this one quickly.
    if ((err as { cause?: NodeJS.ErrnoException }).cause?.code === 'ECONNREFUSED') {
      throw connectionRefused((err as Error).message, (err as Error).cause);
    }
    throw err;
  });
  const session = new MuxSession(
    socket,
    { clock, log },
    {
      role: 'agent',
      heartbeatIntervalMs: deps.heartbeatIntervalMs,
      heartbeatMissedLimit: deps.heartbeatMissedLimit,
      maxConcurrentStreams: deps.maxConcurrentStreams,
    },
  );
  const onAbort = () =>
    session.destroy(
      deadline.aborted
        ? new WarrenError('handshake_timeout', `no registration within ${deps.handshakeTimeoutMs} ms`, {
            retryable: true,
          })
        : undefined,
    );
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    const next = (types: ControlMessage['type'][]) =>
      firstValueFrom(
        session.control$.pipe(
          filter((m) => types.includes(m.type)),
          take(1),
        ),
        {
          defaultValue: undefined,
        },
      );
    const hello = await next(['hello']);
    if (hello?.type !== 'hello') throw closedError(await session.closed);
    if (hello.protocolVersion !== PROTOCOL_VERSION) {
      throw new WarrenError(
        'protocol_error',
        `the edge speaks warren/${hello.protocolVersion}; this agent speaks warren/${PROTOCOL_VERSION}`,
      );
    }
    const answer = next(['registered', 'error']);
    // Serve streams from before `register` goes out: the edge may open one right behind `registered`,
    // in the same read, before the code after `await answer` runs; `streams$` does not replay.
    const subscription: Subscription = session.streams$
      .pipe(mergeMap((stream) => deps.proxy.handle(stream), deps.maxConcurrentStreams))
      .subscribe();
    void session.closed.then(() => subscription.unsubscribe());
    session.sendControl({
      type: 'register',
      id: 1,
      tunnelId: credentials.tunnelId,
      connIndex: attempt.connIndex,
      proof: registrationProof(credentials.secret, hello.nonce, credentials.tunnelId, attempt.connIndex),
      client: deps.client,
      originLocalIp: socket.localAddress ?? '',
      replaceExisting: attempt.previousAttempts > 0,
      previousAttempts: attempt.previousAttempts,
    });
    const reply = await answer;
    if (!reply) throw closedError(await session.closed);
    if (reply.type === 'error') {
      const code: ErrorCode = KNOWN_CODES.has(reply.code as ErrorCode)
        ? (reply.code as ErrorCode)
        : 'bad_request';
      const opts: { retryable: boolean; retryAfterMs?: number } = { retryable: reply.retryable };
      if (reply.retryAfterMs !== undefined) opts.retryAfterMs = reply.retryAfterMs;
      throw new WarrenError(code, `the edge refused this connection: ${reply.message}`, opts);
    }
    if (reply.type !== 'registered') throw new WarrenError('protocol_error', 'unexpected answer to register');
    signal.removeEventListener('abort', onAbort);
    // The caller may have given up at the very moment the answer came: do not hand over a connection nobody holds.
    if (signal.aborted) throw new WarrenError('dial_failed', 'dial aborted', { retryable: true });
    log.info(
      {
        tunnelId: credentials.tunnelId,
        connIndex: attempt.connIndex,
        connectionId: reply.connectionId,
        pop: reply.pop,
        edge: `${endpoint.host}:${endpoint.port}`,
      },
      'tunnel connection registered',
    );
    let drainDeadlineMs: number | undefined;
    return {
      connectionId: reply.connectionId,
      pop: reply.pop,
      hostname: reply.hostname,
      connIndex: attempt.connIndex,
      session,
      abort: (reason) => {
        if (drainDeadlineMs === undefined) {
          session.destroy(reason instanceof WarrenError ? reason : undefined);
          return;
        }
        void closeWithin(clock, session, drainDeadlineMs, 'moving to another edge');
      },
      markDraining: (deadlineMs) => {
        drainDeadlineMs = deadlineMs;
      },
    };
  } catch (err) {
    signal.removeEventListener('abort', onAbort);
    session.destroy();
    if (err instanceof WarrenError) throw err;
    throw new WarrenError('dial_failed', (err as Error).message, { retryable: true, cause: err });
  }
}

function closedError(info: { error?: WarrenError }): WarrenError {
  return (
    info.error ??
    new WarrenError('session_closed', 'the edge closed the connection during the handshake', {
      retryable: true,
    })
  );
}

/**
 * Reports how a registered connection ends: heartbeat loss, socket close, or an edge asking agents
 * to move (`drain`). Returns the teardown.
 */
export function watchConnection(
  connection: AgentConnection,
  sendBack: (
    event: { type: 'SOCKET_CLOSED'; error?: Error } | { type: 'HEARTBEAT_LOST' } | { type: 'DRAIN' },
  ) => void,
): () => void {
  let stopped = false;
  const drainSub = connection.session.control$.subscribe((m) => {
    if (m.type !== 'drain' || stopped) return;
    connection.markDraining(m.deadlineMs);
    sendBack({ type: 'DRAIN' });
  });
  void connection.session.closed.then((info) => {
    if (stopped) return;
    if (info.error?.code === 'heartbeat_timeout') sendBack({ type: 'HEARTBEAT_LOST' });
    else sendBack(info.error ? { type: 'SOCKET_CLOSED', error: info.error } : { type: 'SOCKET_CLOSED' });
  });
  return () => {
    stopped = true;
    drainSub.unsubscribe();
  };
}

/**
 * Graceful end: `unregister`, then a PING round trip as a barrier, then GOAWAY, and in-flight streams
 * finish; all within the grace period (or until `signal` aborts).
 *
 * The barrier is what makes the shutdown lose nothing. The edge may have opened streams on this
 * connection before it read `unregister`; their HEADERS are on the wire, and a GOAWAY sent at once
 * would make this side refuse them. The edge handles frames in order and queues HEADERS, CONTROL and
 * PING ACK frames in one FIFO, so once the ACK for a PING sent after `unregister` arrives, every stream
 * the edge opened before it retired the connection has arrived and is in flight here.
 */
export async function drainConnection(
  clock: Clock,
  connection: AgentConnection,
  gracePeriodMs: number,
  signal?: AbortSignal,
): Promise<void> {
  const { session } = connection;
  if (session.state === 'closed') return;
  const grace = clockTimeout(clock, gracePeriodMs);
  const within = signal ? AbortSignal.any([signal, grace.signal]) : grace.signal;
  try {
    try {
      session.sendControl({ type: 'unregister', gracePeriodMs });
      await session.roundTrip(within);
    } catch {
      // Closed or out of time already: the close below is then immediate.
    }
    await session.close({ signal: within, reason: 'agent shutting down' });
  } finally {
    grace.clear();
  }
}

/** Graceful close that gives in-flight streams at most `ms`, then ends the session. */
async function closeWithin(clock: Clock, session: MuxSession, ms: number, reason: string): Promise<void> {
  const timeout = clockTimeout(clock, ms);
  try {
    await session.close({ signal: timeout.signal, reason });
  } finally {
    timeout.clear();
  }
}

/** The SRV service the edge publishes its tunnel endpoints under (see src/edge/dns-server.ts). */
export const EDGE_SRV_SERVICE = '_warren._tcp';

export interface EdgeDiscoveryOptions {
  /** SNI and certificate name for every endpoint found (the SRV record has no such field). */
  serverName: string;
  /**
   * A DNS server to ask (`--dns-resolver`, e.g. the edge's own), for the SRV record and the targets'
   * addresses. Default: the system's resolvers, and targets are left as names for the dial to resolve.
   */
  resolver?: { host: string; port: number };
  /** Per query (default 5000 ms). */
  timeoutMs?: number;
}

/**
 * The edge's tunnel endpoints from its SRV record (DESIGN §3 HA). `name` is the edge domain
 * (`warren-edge.example`, looked up as `_warren._tcp.warren-edge.example`) or a whole SRV name starting
 * with `_`. Ordered by priority (lowest first), then weight (heaviest first), then as listed.
 */
export async function discoverEdgeEndpoints(
  name: string,
  opts: EdgeDiscoveryOptions,
): Promise<EdgeEndpoint[]> {
  const srvName = name.startsWith('_') ? name : `${EDGE_SRV_SERVICE}.${name}`;
  const resolver = new Resolver({ timeout: opts.timeoutMs ?? 5000, tries: 2 });
  if (opts.resolver) {
    const { host, port } = opts.resolver;
    resolver.setServers([net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`]);
  }
  let records: Awaited<ReturnType<Resolver['resolveSrv']>>;
  try {
    records = await resolver.resolveSrv(srvName);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const missing = code === 'ENOTFOUND' || code === 'ENODATA';
    throw new WarrenError(
      missing ? 'bad_config' : 'dial_failed',
      missing
        ? `no SRV record at ${srvName}; check --edge-srv (the edge's domain) and --dns-resolver`
        : `cannot look up ${srvName}: ${(err as Error).message}`,
      { retryable: !missing, cause: err },
    );
  }
  if (records.length === 0)
    throw new WarrenError('bad_config', `the SRV record at ${srvName} lists no endpoint`);
  const ordered = records
    .map((r, i) => ({ ...r, i }))
    .sort((a, b) => a.priority - b.priority || b.weight - a.weight || a.i - b.i);
  return Promise.all(
    ordered.map(async (r) => ({
      // Names like `region1.<edge-domain>` exist only in the edge's own DNS: ask the same server.
      host: opts.resolver ? await addressOf(resolver, r.name) : r.name,
      port: r.port,
      serverName: opts.serverName,
    })),
  );
}

/** The target's first IPv4 address, else its first IPv6 one, else the name itself. */
async function addressOf(resolver: Resolver, target: string): Promise<string> {
  if (net.isIP(target) !== 0) return target;
  for (const lookup of [() => resolver.resolve4(target), () => resolver.resolve6(target)]) {
    const found = await lookup().catch(() => [] as string[]);
    if (found[0]) return found[0];
  }
  return target;
}
