/**
 * A light in-process agent for tests and benchmarks that hold many tunnels at once: each connection is
 * a real TLS connection to the edge's tunnel port with the real warren/1 handshake (`connectTunnel`:
 * hello, then register with the HMAC proof), but there is no connection machine, no reconnecting and
 * no origin behind it. A full agent per tunnel would cost a process or an origin pool each; the edge
 * cannot tell the difference.
 */
import { randomUUID } from 'node:crypto';
import { OriginProxy } from '../../src/agent/origin-proxy.ts';
import {
  type AgentConnection,
  connectTunnel,
  drainConnection,
  type TunnelCredentials,
} from '../../src/agent/tunnel-connection.ts';
import type { Clock } from '../../src/shared/clock.ts';
import type { Logger } from '../../src/shared/log.ts';

export interface LightAgentComponents {
  clock: Clock;
  log: Logger;
}

export interface LightAgentInit {
  /** The connector id the edge records (default: a random UUID, as a real agent process has). */
  clientId?: string;
  /** Heartbeat interval of every connection (default 5000 ms, the product's). */
  heartbeatIntervalMs?: number;
  /** From TCP connect to `registered` (default 15 s). */
  handshakeTimeoutMs?: number;
}

export interface ConnectOptions {
  /** Default 0. */
  connIndex?: number;
  signal?: AbortSignal;
}

export class LightAgent {
  readonly clientId: string;
  readonly #c: LightAgentComponents;
  readonly #heartbeatIntervalMs: number;
  readonly #handshakeTimeoutMs: number;
  /** Nothing reaches it: the edge opens streams only for visitors, and these tunnels have none. */
  readonly #proxy: OriginProxy;
  readonly #open = new Set<AgentConnection>();

  constructor(components: LightAgentComponents, init: LightAgentInit = {}) {
    this.#c = components;
    this.clientId = init.clientId ?? randomUUID();
    this.#heartbeatIntervalMs = init.heartbeatIntervalMs ?? 5000;
    this.#handshakeTimeoutMs = init.handshakeTimeoutMs ?? 15_000;
    this.#proxy = new OriginProxy(components, { originUrl: new URL('http://127.0.0.1:9') });
  }

  /** Connections registered and not yet closed. */
  get openConnections(): number {
    return this.#open.size;
  }

  /** One registered connection, or the edge's refusal as a typed `WarrenError`. */
  async connect(credentials: TunnelCredentials, opts: ConnectOptions = {}): Promise<AgentConnection> {
    const connection = await connectTunnel(
      {
        ...this.#c,
        credentials,
        proxy: this.#proxy,
        client: {
          id: this.clientId,
          version: 'light-agent',
          os: process.platform,
          arch: process.arch,
          features: [],
        },
        heartbeatIntervalMs: this.#heartbeatIntervalMs,
        heartbeatMissedLimit: 3,
        handshakeTimeoutMs: this.#handshakeTimeoutMs,
        maxConcurrentStreams: 16,
      },
      {
        connIndex: opts.connIndex ?? 0,
        previousAttempts: 0,
        signal: opts.signal ?? new AbortController().signal,
      },
    );
    this.#open.add(connection);
    void connection.session.closed.then(() => this.#open.delete(connection));
    return connection;
  }

  /**
   * One connection per credentials, at most `concurrency` handshakes in flight (a burst of thousands
   * of TLS handshakes would only queue in the listen backlog). Every attempt runs to its end; the
   * first failure is thrown after that, and the connections that did register stay open (close them
   * with `closeAll`).
   */
  async connectMany(
    all: readonly TunnelCredentials[],
    opts: { concurrency: number; signal?: AbortSignal },
  ): Promise<AgentConnection[]> {
    const out: AgentConnection[] = new Array(all.length);
    let next = 0;
    let failure: unknown;
    const worker = async () => {
      while (next < all.length) {
        const i = next++;
        try {
          out[i] = await this.connect(all[i]!, opts.signal ? { signal: opts.signal } : {});
        } catch (err) {
          failure ??= err;
          return;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(opts.concurrency, all.length) }, worker));
    if (failure !== undefined) throw failure;
    return out;
  }

  /** Unregisters gracefully (the edge records reason `graceful`) and closes. */
  async disconnect(connection: AgentConnection, gracePeriodMs = 1000): Promise<void> {
    await drainConnection(this.#c.clock, connection, gracePeriodMs);
    await connection.session.closed;
  }

  /** Ends every open connection now and waits until their sockets are closed. */
  async closeAll(): Promise<void> {
    const open = [...this.#open];
    for (const c of open) c.session.destroy();
    await Promise.all(open.map((c) => c.session.closed));
  }
}
