/**
 * Composition root of the agent: one HA supervisor (`supervisor.machine.ts`) keeping N connection
 * machines, one per connection index, over the known edge endpoints, sharing one origin proxy, a
 * readiness view, Prometheus metrics and shutdown. The machines decide; this file only wires their
 * actors to real sockets.
 */
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, type Registry } from 'prom-client';
import { createActor, type EventObject, fromCallback, fromPromise } from 'xstate';
import { type BackoffPolicy, defaultBackoff } from '../actors/backoff.ts';
import {
  type ConnectInput,
  type ConnectionStatus,
  connectionMachine,
  type DrainInput,
  type LiveConnection,
  type WatchInput,
} from '../actors/connection.machine.ts';
import { type SupervisorView, supervisorMachine, supervisorView } from '../actors/supervisor.machine.ts';
import type { Clock } from '../shared/clock.ts';
import { describeError, WarrenError } from '../shared/errors.ts';
import type { Logger } from '../shared/log.ts';
import { OriginProxy, type OriginProxyInit } from './origin-proxy.ts';
import {
  type AgentConnection,
  agentClientInfo,
  connectTunnel,
  drainConnection,
  type EdgeEndpoint,
  type TunnelCredentials,
  watchConnection,
} from './tunnel-connection.ts';

export const AGENT_VERSION = '0.1.0';

export interface AgentConfig {
  credentials: TunnelCredentials;
  /**
   * The edge's tunnel endpoints (from `--edge`, or an SRV lookup). Connection i dials
   * `edges[(i + consecutive failures) % edges.length]`: healthy connections spread over every endpoint
   * and a failing one moves on to the next. Default: the one in the credentials.
   */
  edges?: readonly EdgeEndpoint[];
  origin: OriginProxyInit;
  /** Connections kept to the edge (default 4; quick tunnels use 1). */
  haConnections: number;
  /** Connection i starts i × this after the agent (default 250 ms), so the handshakes do not come at once. */
  staggerMs?: number;
  /** How long in-flight requests may take to finish on shutdown (default 30 s). */
  gracePeriodMs: number;
  backoff: BackoffPolicy;
  /** Consecutive failed attempts per connection before giving up (default: never). */
  maxRetries?: number;
  heartbeatIntervalMs: number;
  heartbeatMissedLimit: number;
  handshakeTimeoutMs: number;
  maxConcurrentStreams: number;
  /** Where to serve /ready, /healthcheck and /metrics; none when undefined. */
  metrics?: { host: string; port: number };
}

export const defaultAgentConfig = {
  haConnections: 4,
  gracePeriodMs: 30_000,
  backoff: defaultBackoff,
  heartbeatIntervalMs: 5000,
  heartbeatMissedLimit: 3,
  handshakeTimeoutMs: 15_000,
  maxConcurrentStreams: 1024,
} satisfies Partial<AgentConfig>;

export interface AgentComponents {
  clock: Clock;
  log: Logger;
  registry: Registry;
  random?: () => number;
}

export interface AgentExit {
  /** 0 after a requested shutdown, 1 when a connection gave up (the error says why). */
  exitCode: number;
  error?: WarrenError;
}

export interface Agent {
  readonly connectorId: string;
  /** Registered connections right now. */
  readonly readyConnections: number;
  /** Each connection index's status, as the supervisor sees it. */
  status(): SupervisorView;
  readonly metricsPort: number | undefined;
  /** Resolves once the first connection registers, or rejects with the error that ended the agent. */
  readonly firstRegistration: Promise<AgentConnection>;
  /** Resolves when every connection is over. */
  readonly done: Promise<AgentExit>;
  /** `graceful`: unregister, finish in-flight streams within the grace period, close. `now`: close at once. */
  shutdown(mode: 'graceful' | 'now'): Promise<AgentExit>;
}

/**
 * The endpoint connection `connIndex` dials after `attempts` consecutive failures: indexes start spread
 * over the endpoints, and each failure moves that connection on to the next one.
 */
export function pickEndpoint(
  endpoints: readonly EdgeEndpoint[],
  connIndex: number,
  attempts: number,
): EdgeEndpoint {
  if (endpoints.length === 0) throw new WarrenError('bad_config', 'no edge endpoint to dial');
  return endpoints[(connIndex + attempts) % endpoints.length]!;
}

export async function startAgent(components: AgentComponents, config: AgentConfig): Promise<Agent> {
  const { clock, log, registry } = components;
  const connectorId = randomUUID();
  const endpoints = config.edges && config.edges.length > 0 ? [...config.edges] : [config.credentials.edge];
  const proxy = new OriginProxy({ clock, log }, config.origin);
  const client = agentClientInfo(connectorId, AGENT_VERSION);

  const haGauge = new Gauge({
    name: 'warren_agent_ha_connections',
    help: 'Registered connections to the edge',
    registers: [registry],
  });
  const reconnects = new Counter({
    name: 'warren_agent_reconnects_total',
    help: 'Connection attempts after the first',
    registers: [registry],
  });
  const registrations = new Counter({
    name: 'warren_agent_registrations_total',
    help: 'Successful registrations',
    registers: [registry],
  });

  let resolveFirst!: (c: AgentConnection) => void;
  let rejectFirst!: (e: unknown) => void;
  const firstRegistration = new Promise<AgentConnection>((res, rej) => {
    resolveFirst = res;
    rejectFirst = rej;
  });
  firstRegistration.catch(() => {});

  const connection = connectionMachine.provide({
    actors: {
      connect: fromPromise<LiveConnection, ConnectInput>(async ({ input, signal }) => {
        if (input.previousAttempts > 0) reconnects.inc();
        const conn = await connectTunnel(
          {
            clock,
            log,
            credentials: config.credentials,
            proxy,
            client,
            heartbeatIntervalMs: config.heartbeatIntervalMs,
            heartbeatMissedLimit: config.heartbeatMissedLimit,
            handshakeTimeoutMs: config.handshakeTimeoutMs,
            maxConcurrentStreams: config.maxConcurrentStreams,
          },
          {
            connIndex: input.connIndex,
            previousAttempts: input.previousAttempts,
            endpoint: pickEndpoint(endpoints, input.connIndex, input.attempts),
            signal,
          },
        );
        // The machine may leave `dialing` between this return and the moment it takes the result;
        // XState then drops the result and aborts the signal. Nobody would hold the connection: end it.
        // (Once the machine has it, the signal never aborts.)
        signal.addEventListener(
          'abort',
          () => conn.abort(new WarrenError('session_closed', 'the connection was no longer wanted')),
          { once: true },
        );
        registrations.inc();
        resolveFirst(conn);
        return conn;
      }),
      watch: fromCallback<EventObject, WatchInput>(({ input, sendBack }) =>
        watchConnection(input.connection as AgentConnection, sendBack),
      ),
      drain: fromPromise<void, DrainInput>(({ input, signal }) =>
        drainConnection(clock, input.connection as AgentConnection, input.gracePeriodMs, signal),
      ),
    },
  });

  // Logs each connection's status changes; also keeps the gauge current.
  const lastStatus = new Map<number, ConnectionStatus | 'pending'>();
  let started = false;
  const observe = () => {
    if (!started) return;
    const snapshot = supervisor.getSnapshot();
    const view = supervisorView(snapshot);
    haGauge.set(view.connected);
    for (const c of view.connections) {
      if (lastStatus.get(c.connIndex) === c.status) continue;
      lastStatus.set(c.connIndex, c.status);
      const err = snapshot.context.children[c.connIndex]?.getSnapshot().context.lastError;
      const { connIndex, status } = c;
      log.debug({ connIndex, status, ...(err ? { error: describeError(err) } : {}) }, 'connection status');
      if (status === 'reconnecting' && err) {
        log.warn({ connIndex, error: describeError(err) }, 'connection to the edge failed; retrying');
      }
    }
  };

  const supervisor = createActor(supervisorMachine.provide({ actors: { connection } }), {
    clock,
    input: {
      haConnections: config.haConnections,
      ...(config.staggerMs !== undefined ? { staggerMs: config.staggerMs } : {}),
      connection: {
        backoff: config.backoff,
        gracePeriodMs: config.gracePeriodMs,
        ...(components.random ? { random: components.random } : {}),
        ...(config.maxRetries !== undefined ? { maxRetries: config.maxRetries } : {}),
      },
    },
    // Child snapshots do not reach the supervisor's subscribers; inspection sees every one.
    inspect: (event) => {
      if (event.type === '@xstate.snapshot') observe();
    },
  });

  const done = new Promise<AgentExit>((resolve) => {
    supervisor.subscribe({
      next: observe,
      complete: () => {
        const out = supervisor.getSnapshot().output;
        if (out?.status === 'failed') resolve({ exitCode: 1, error: asWarrenError(out.error) });
        else resolve({ exitCode: 0 });
      },
      error: (err) => {
        log.error({ err: describeError(err) }, 'connection supervisor crashed');
        resolve({ exitCode: 1, error: asWarrenError(err) });
      },
    });
  }).then((exit) => {
    haGauge.set(0);
    proxy.close();
    metricsServer?.close();
    metricsServer?.closeAllConnections();
    rejectFirst(exit.error ?? new Error('the agent stopped before any connection registered'));
    return exit;
  });

  const readyConnections = () => supervisorView(supervisor.getSnapshot()).connected;

  let metricsServer: http.Server | undefined;
  let metricsPort: number | undefined;
  if (config.metrics) {
    metricsServer = http.createServer((req, res) => {
      const url = req.url ?? '/';
      if (url === '/ready') {
        const ready = readyConnections();
        const body = JSON.stringify({ status: ready > 0 ? 200 : 503, readyConnections: ready, connectorId });
        res.writeHead(ready > 0 ? 200 : 503, { 'content-type': 'application/json' }).end(body);
      } else if (url === '/healthcheck') {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('OK\n');
      } else if (url === '/metrics') {
        registry.metrics().then(
          (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
          () => res.writeHead(500).end(),
        );
      } else res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    });
    metricsServer.listen(config.metrics.port, config.metrics.host);
    await once(metricsServer, 'listening');
    metricsPort = (metricsServer.address() as AddressInfo).port;
  }

  started = true;
  supervisor.start();

  return {
    connectorId,
    get readyConnections() {
      return readyConnections();
    },
    status: () => supervisorView(supervisor.getSnapshot()),
    metricsPort,
    firstRegistration,
    done,
    shutdown(mode) {
      supervisor.send({ type: 'SHUTDOWN', mode });
      return done;
    },
  };
}

function asWarrenError(err: unknown): WarrenError {
  if (err instanceof WarrenError) return err;
  return new WarrenError('dial_failed', describeError(err), { cause: err });
}
