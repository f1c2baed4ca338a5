/**
 * The agent's keep-alive connections to the origin: undici `Client`s (one HTTP/1.1 connection each,
 * no pipelining), handed out last-in first-out so a warm connection is reused before a cold one.
 *
 * Why not undici's own `Pool`: it scans every client on each request and never forgets one, so a
 * burst of 4096 streams would leave 4096 clients behind for good. Here idle clients are a stack
 * bounded by `maxIdle`; one returned to a full stack is closed.
 *
 * Connections are made by `connect()` below (plain TCP, or TLS for an https origin) with the
 * injected clock's timer for the connect timeout, so every wait in the agent runs on one clock.
 */
import net from 'node:net';
import tls from 'node:tls';
import { type buildConnector, Client } from 'undici';
import type { Clock } from '../shared/clock.ts';

export interface OriginPoolInit {
  /** http(s)://host:port (ws/wss are the same origins). */
  originUrl: URL;
  /** TCP (and TLS) connect timeout. */
  connectTimeoutMs: number;
  /** Idle connections kept; one more is closed when its request ends. */
  maxIdle: number;
  /** Skip verifying an https origin's certificate. */
  noTlsVerify: boolean;
}

/** Which of Warren's origin error codes a failure maps to, when the error itself does not say. */
export type OriginFailure = 'origin_timeout' | 'origin_tls';

/** An error from `connect()`, tagged with the code it stands for. */
export interface OriginConnectError extends NodeJS.ErrnoException {
  originFailure?: OriginFailure;
}

export class OriginPool {
  readonly #clock: Clock;
  readonly #init: OriginPoolInit;
  readonly #url: string;
  readonly #host: string;
  readonly #port: number;
  readonly #secure: boolean;
  readonly #idle: Client[] = [];
  readonly #all = new Set<Client>();
  #closed = false;

  constructor(clock: Clock, init: OriginPoolInit) {
    this.#clock = clock;
    this.#init = init;
    const u = init.originUrl;
    this.#secure = u.protocol === 'https:' || u.protocol === 'wss:';
    this.#host = u.hostname.replace(/^\[|\]$/g, '');
    this.#port = Number(u.port) || (this.#secure ? 443 : 80);
    // undici only uses the origin for the default Host header and its own bookkeeping.
    this.#url = `${this.#secure ? 'https' : 'http'}://${u.host}`;
  }

  /** A client for one request; give it back with `release` when the exchange is over. */
  acquire(): Client {
    const idle = this.#idle.pop();
    if (idle !== undefined && !idle.closed && !idle.destroyed) return idle;
    if (idle !== undefined) this.#all.delete(idle);
    const client = new Client(this.#url, {
      pipelining: 1,
      // An SSE stream or a long poll may be silent for as long as it likes: no response deadlines.
      headersTimeout: 0,
      bodyTimeout: 0,
      // Honours the origin's `Keep-Alive: timeout=` hint, else drops an idle connection after 90 s.
      keepAliveTimeout: 90_000,
      keepAliveMaxTimeout: 90_000,
      connect: (_options, callback) => this.#connect(callback),
    });
    this.#all.add(client);
    return client;
  }

  release(client: Client): void {
    if (this.#closed || client.closed || client.destroyed || this.#idle.length >= this.#init.maxIdle) {
      this.#all.delete(client);
      void client.destroy().catch(() => {});
      return;
    }
    this.#idle.push(client);
  }

  /** Closes every connection, busy or idle. */
  close(): void {
    this.#closed = true;
    this.#idle.length = 0;
    for (const c of this.#all) void c.destroy().catch(() => {});
    this.#all.clear();
  }

  #connect(callback: buildConnector.Callback): void {
    const secure = this.#secure;
    const socket = secure
      ? tls.connect({
          host: this.#host,
          port: this.#port,
          ...(net.isIP(this.#host) === 0 ? { servername: this.#host } : {}),
          rejectUnauthorized: !this.#init.noTlsVerify,
          ALPNProtocols: ['http/1.1'],
        })
      : net.connect({ host: this.#host, port: this.#port });
    let settled = false;
    let tcpConnected = false;
    const settle = (err: OriginConnectError | null) => {
      if (settled) return;
      settled = true;
      this.#clock.clearTimeout(timer);
      socket.off('error', onError);
      if (err) {
        socket.destroy();
        callback(err, null);
      } else {
        socket.setNoDelay(true);
        // A long silent response (SSE) from an origin that vanished without a reset is noticed.
        socket.setKeepAlive(true, 60_000);
        callback(null, socket);
      }
    };
    const onError = (err: OriginConnectError) => {
      if (secure && tcpConnected) err.originFailure = 'origin_tls';
      settle(err);
    };
    const timer = this.#clock.setTimeout(() => {
      const err: OriginConnectError = new Error(
        `no connection to the origin within ${this.#init.connectTimeoutMs} ms`,
      );
      err.code = 'ORIGIN_CONNECT_TIMEOUT';
      err.originFailure = 'origin_timeout';
      settle(err);
    }, this.#init.connectTimeoutMs);
    socket.once('connect', () => {
      tcpConnected = true;
      if (!secure) settle(null);
    });
    if (secure) socket.once('secureConnect', () => settle(null));
    socket.on('error', onError);
  }
}
