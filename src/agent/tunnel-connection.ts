/**
 * One agent connection to the edge, as the connection machine's actors use it: dial TLS, wait for
 * `hello`, `register` with the HMAC proof, then serve the streams the edge opens. Remote error
 * answers become typed `WarrenError`s here, once.
 */
import os from 'node:os';
import { filter, firstValueFrom, mergeMap, type Subscription, take } from 'rxjs';
import { type Clock, clockTimeout } from '../shared/clock.ts';
import { type ErrorCode, WarrenError } from '../shared/errors.ts';
import type { Logger } from '../shared/log.ts';
import { type ClientInfo, type ControlMessage, PROTOCOL_VERSION } from '../transport/messages.ts';
import { registrationProof } from '../transport/proof.ts';
import { MuxSession } from '../transport/session.ts';
import { dialEdge } from '../transport/tls.ts';
import type { OriginProxy } from './origin-proxy.ts';

export interface TunnelCredentials {
  tunnelId: string;
  secret: Buffer;
  edge: { host: string; port: number; serverName: string };
  edgeCaPem: string;
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
  attempt: { connIndex: number; previousAttempts: number; signal: AbortSignal },
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
  attempt: { connIndex: number; previousAttempts: number; signal: AbortSignal },
  deadline: AbortSignal,
): Promise<AgentConnection> {
  const { clock, log, credentials } = deps;
  const signal = AbortSignal.any([attempt.signal, deadline]);
  const socket = await dialEdge({
    host: credentials.edge.host,
    port: credentials.edge.port,
    servername: credentials.edge.serverName,
    caPem: credentials.edgeCaPem,
    timeoutMs: deps.handshakeTimeoutMs,
    signal,
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
    const subscription: Subscription = session.streams$
      .pipe(mergeMap((stream) => deps.proxy.handle(stream), deps.maxConcurrentStreams))
      .subscribe();
    void session.closed.then(() => subscription.unsubscribe());
    log.info(
      {
        tunnelId: credentials.tunnelId,
        connIndex: attempt.connIndex,
        connectionId: reply.connectionId,
        pop: reply.pop,
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

/** Graceful end: stop new streams, let in-flight ones finish within the grace period, close. */
export async function drainConnection(
  clock: Clock,
  connection: AgentConnection,
  gracePeriodMs: number,
): Promise<void> {
  const { session } = connection;
  if (session.state === 'closed') return;
  try {
    session.sendControl({ type: 'unregister', gracePeriodMs });
  } catch {
    // closing already
  }
  await closeWithin(clock, session, gracePeriodMs, 'agent shutting down');
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
