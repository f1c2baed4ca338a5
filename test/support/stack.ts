/**
 * A whole tunnel in this process: an edge (in-memory event log, every listener on 127.0.0.1 port 0),
 * the test origin, a quick tunnel from the edge's API and an agent serving it. Integration and
 * differential tests use it when they do not need separate processes.
 */
import { Registry } from 'prom-client';
import { type Agent, type AgentConfig, defaultAgentConfig, startAgent } from '../../src/agent/agent.ts';
import { requestQuickTunnel } from '../../src/agent/quick-tunnel.ts';
import type { TunnelCredentials } from '../../src/agent/tunnel-connection.ts';
import { defaultEdgeConfig, type Edge, type EdgeConfig, startEdge } from '../../src/edge/edge.ts';
import { systemClock } from '../../src/shared/clock.ts';
import { type Logger, silentLogger } from '../../src/shared/log.ts';
import { openMemoryEventLog } from '../../src/store/memory-event-log.ts';
import { type RequestOptions, type Response, request } from './http.ts';
import { startTestOrigin, type TestOrigin } from './origin.ts';

export interface StackOptions {
  /**
   * Where the agent sends requests. The test origin is started either way (it is cheap and keeps
   * `stack.origin` always there); this only redirects the agent, e.g. to a closed port.
   */
  originUrl?: string;
  /** Agent connections to the edge (default 1, so every request shares one warren/1 session). */
  haConnections?: number;
  /** Heartbeats on both sides (defaults: the product's, 5 s × 3). */
  heartbeatIntervalMs?: number;
  heartbeatMissedLimit?: number;
  edge?: Partial<EdgeConfig>;
  agent?: Partial<Omit<AgentConfig, 'credentials'>>;
  /** Default: silent. */
  log?: Logger;
}

export type StackRequestOptions = Omit<RequestOptions, 'port' | 'path'>;

export interface Stack {
  readonly edge: Edge;
  readonly origin: TestOrigin;
  readonly agent: Agent;
  /** The quick tunnel's hostname: the Host header visitors send. */
  readonly hostname: string;
  readonly visitorPort: number;
  /** A request to the tunnel through the edge's visitor listener (Host = the tunnel's hostname). */
  request(path: string, opts?: StackRequestOptions): Promise<Response>;
  /** Stops the agent at once, then the edge and the origin. Idempotent. */
  close(): Promise<void>;
}

const ANY_PORT = { host: '127.0.0.1', port: 0 };

/**
 * An edge in this process on an in-memory log, every listener on 127.0.0.1 port 0, no DNS server and a
 * short drain (tests close their agents first; a failed test must not hang in close()).
 */
export function startTestEdge(config: Partial<EdgeConfig> = {}, log: Logger = silentLogger): Promise<Edge> {
  const clock = systemClock;
  return startEdge(
    { clock, log, registry: new Registry(), eventLog: openMemoryEventLog({ clock }) },
    {
      ...defaultEdgeConfig,
      visitor: ANY_PORT,
      tunnel: ANY_PORT,
      api: ANY_PORT,
      dns: null,
      drainTimeoutMs: 2000,
      ...config,
    },
  );
}

/**
 * An agent in this process serving `credentials` from `originUrl`: the product's defaults but a 5 s
 * grace period (a failed test must not hang in shutdown), then `config` (its `origin`, if given, wins
 * over `originUrl`).
 */
export function startTestAgent(
  credentials: TunnelCredentials,
  originUrl: string,
  config: Partial<Omit<AgentConfig, 'credentials'>> = {},
  log: Logger = silentLogger,
): Promise<Agent> {
  return startAgent(
    { clock: systemClock, log, registry: new Registry() },
    {
      ...defaultAgentConfig,
      gracePeriodMs: 5000,
      ...config,
      credentials,
      origin: config.origin ?? { originUrl: new URL(originUrl) },
    },
  );
}

export async function startStack(opts: StackOptions = {}): Promise<Stack> {
  const log = opts.log ?? silentLogger;
  const heartbeat = {
    ...(opts.heartbeatIntervalMs !== undefined ? { heartbeatIntervalMs: opts.heartbeatIntervalMs } : {}),
    ...(opts.heartbeatMissedLimit !== undefined ? { heartbeatMissedLimit: opts.heartbeatMissedLimit } : {}),
  };
  const origin = await startTestOrigin();
  let edge: Edge | undefined;
  let agent: Agent | undefined;
  try {
    edge = await startTestEdge({ ...heartbeat, ...opts.edge }, log);
    const quick = await requestQuickTunnel(edge.apiUrl);
    agent = await startTestAgent(
      quick.credentials,
      opts.originUrl ?? origin.url,
      { haConnections: opts.haConnections ?? 1, ...heartbeat, ...opts.agent },
      log,
    );
    await agent.firstRegistration;
    const started = edge;
    const runningAgent = agent;
    let closing: Promise<void> | undefined;
    return {
      edge: started,
      origin,
      agent: runningAgent,
      hostname: quick.hostname,
      visitorPort: started.visitorPort,
      request: (path, requestOpts = {}) =>
        request({ host: quick.hostname, ...requestOpts, port: started.visitorPort, path }),
      close() {
        closing ??= (async () => {
          await runningAgent.shutdown('now');
          await started.close();
          await origin.close();
        })();
        return closing;
      },
    };
  } catch (err) {
    await agent?.shutdown('now');
    await edge?.close().catch(() => {});
    await origin.close();
    throw err;
  }
}
