/**
 * Composition root of the agent: N connection machines (one per HA connection index) sharing one
 * origin proxy, a readiness view, Prometheus metrics and shutdown. The machines decide; this file
 * only wires their actors to real sockets.
 */
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, type Registry } from 'prom-client';
import { type Actor, createActor, type EventObject, fromCallback, fromPromise } from 'xstate';
import { type BackoffPolicy, defaultBackoff } from '../actors/backoff.ts';
import {
  type ConnectInput,
  connectionMachine,
  connectionStatus,
  type DrainInput,
  type LiveConnection,
  type WatchInput,
} from '../actors/connection.machine.ts';
import type { Clock } from '../shared/clock.ts';
import { describeError, type WarrenError } from '../shared/errors.ts';
import type { Logger } from '../shared/log.ts';
import { OriginProxy, type OriginProxyInit } from './origin-proxy.ts';
import {
  type AgentConnection,
  agentClientInfo,
  connectTunnel,
  drainConnection,
  type TunnelCredentials,
  watchConnection,
} from './tunnel-connection.ts';

export const AGENT_VERSION = '0.1.0';

export interface AgentConfig {
  credentials: TunnelCredentials;
  origin: OriginProxyInit;
  /** Connections kept to the edge (default 4; quick tunnels use 1). */
  haConnections: number;
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
  readonly metricsPort: number | undefined;
  /** Resolves once the first connection registers, or rejects with the error that ended the agent. */
  readonly firstRegistration: Promise<AgentConnection>;
  /** Resolves when every connection is over. */
  readonly done: Promise<AgentExit>;
  /** `graceful`: unregister, finish in-flight streams within the grace period, close. `now`: close at once. */
  shutdown(mode: 'graceful' | 'now'): Promise<AgentExit>;
}

export async function startAgent(components: AgentComponents, config: AgentConfig): Promise<Agent> {
  const { clock, log, registry } = components;
  const connectorId = randomUUID();
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

  const live = new Map<number, AgentConnection>();
  let resolveFirst!: (c: AgentConnection) => void;
  let rejectFirst!: (e: unknown) => void;
  const firstRegistration = new Promise<AgentConnection>((res, rej) => {
    resolveFirst = res;
    rejectFirst = rej;
  });
  firstRegistration.catch(() => {});

  const machine = connectionMachine.provide({
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
          { connIndex: input.connIndex, previousAttempts: input.previousAttempts, signal },
        );
        live.set(input.connIndex, conn);
        registrations.inc();
        haGauge.set(live.size);
        void conn.session.closed.then(() => {
          if (live.get(input.connIndex) === conn) live.delete(input.connIndex);
          haGauge.set(live.size);
        });
        resolveFirst(conn);
        return conn;
      }),
      watch: fromCallback<EventObject, WatchInput>(({ input, sendBack }) =>
        watchConnection(input.connection as AgentConnection, sendBack),
      ),
      drain: fromPromise<void, DrainInput>(({ input }) =>
        drainConnection(clock, input.connection as AgentConnection, input.gracePeriodMs),
      ),
    },
  });

  const actors: Actor<typeof machine>[] = [];
  for (let connIndex = 0; connIndex < config.haConnections; connIndex++) {
    const actor = createActor(machine, {
      clock,
      input: {
        connIndex,
        backoff: config.backoff,
        gracePeriodMs: config.gracePeriodMs,
        ...(components.random ? { random: components.random } : {}),
        ...(config.maxRetries !== undefined ? { maxRetries: config.maxRetries } : {}),
      },
    });
    let lastStatus = '';
    actor.subscribe({
      next: (snapshot) => {
        const status = connectionStatus(snapshot);
        if (status === lastStatus) return;
        lastStatus = status;
        const err = snapshot.context.lastError;
        log.debug({ connIndex, status, ...(err ? { error: describeError(err) } : {}) }, 'connection status');
        if (status === 'reconnecting' && err) {
          log.warn({ connIndex, error: describeError(err) }, 'connection to the edge failed; retrying');
        }
      },
      error: (err) => log.error({ connIndex, err: describeError(err) }, 'connection machine crashed'),
    });
    actors.push(actor);
  }

  // When one connection fails for good (bad credentials, deleted tunnel), the others would too: stop all.
  const outcomes = actors.map(
    (actor) =>
      new Promise<AgentExit>((resolve) => {
        actor.subscribe({
          complete: () => {
            const out = actor.getSnapshot().output;
            if (out?.status === 'failed') {
              for (const other of actors) other.send({ type: 'SHUTDOWN', mode: 'now' });
              resolve({ exitCode: 1, error: out.error as WarrenError });
            } else resolve({ exitCode: 0 });
          },
          error: (err) => resolve({ exitCode: 1, error: err as WarrenError }),
        });
      }),
  );
  const done = Promise.all(outcomes).then((all) => {
    proxy.close();
    metricsServer?.close();
    metricsServer?.closeAllConnections();
    const failed = all.find((o) => o.exitCode !== 0);
    if (failed) rejectFirst(failed.error);
    else rejectFirst(new Error('the agent stopped before any connection registered'));
    return failed ?? { exitCode: 0 };
  });

  let metricsServer: http.Server | undefined;
  let metricsPort: number | undefined;
  if (config.metrics) {
    metricsServer = http.createServer((req, res) => {
      const url = req.url ?? '/';
      if (url === '/ready') {
        const body = JSON.stringify({
          status: live.size > 0 ? 200 : 503,
          readyConnections: live.size,
          connectorId,
        });
        res.writeHead(live.size > 0 ? 200 : 503, { 'content-type': 'application/json' }).end(body);
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

  for (const actor of actors) actor.start();

  let shuttingDown: Promise<AgentExit> | undefined;
  return {
    connectorId,
    get readyConnections() {
      return live.size;
    },
    metricsPort,
    firstRegistration,
    done,
    shutdown(mode) {
      for (const actor of actors) actor.send({ type: 'SHUTDOWN', mode });
      if (mode === 'now') return done;
      shuttingDown ??= done;
      return shuttingDown;
    },
  };
}
