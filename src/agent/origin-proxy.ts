/**
 * Carries one warren/1 stream to the origin over a keep-alive pool and the answer back. Bodies are
 * wired with `.pipe()` both ways (backpressure end to end, no whole-body buffering) and errors by hand.
 * When the origin cannot be reached the visitor gets a 502/504 whose head carries an error code.
 */
import http from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import type { Clock } from '../shared/clock.ts';
import type { Logger } from '../shared/log.ts';
import { headerValue, stripHopByHop } from '../transport/hop-by-hop.ts';
import type { ResponseHead } from '../transport/messages.ts';
import type { MuxStream } from '../transport/session.ts';

export interface OriginProxyInit {
  /** http(s)://host:port — where requests go. */
  originUrl: URL;
  /** TCP connect timeout to the origin (default 30 s, as cloudflared). */
  connectTimeoutMs?: number;
  /** Idle origin connections kept open (default 1024, the stream limit: fewer makes busy tunnels reconnect to the origin). */
  keepAliveConnections?: number;
  /** How long an idle origin connection is kept (default 90 s). */
  keepAliveTimeoutMs?: number;
  /** Overrides the Host header sent to the origin. */
  httpHostHeader?: string;
  /** Skip verifying an https origin's certificate (off by default). */
  noTlsVerify?: boolean;
}

export interface OriginProxyComponents {
  clock: Clock;
  log: Logger;
}

type OriginErrorCode = 'origin_unreachable' | 'origin_timeout' | 'origin_tls' | 'origin_reset';

function classify(err: NodeJS.ErrnoException): OriginErrorCode {
  const code = err.code ?? '';
  if (code === 'ETIMEDOUT' || code === 'ORIGIN_CONNECT_TIMEOUT') return 'origin_timeout';
  if (code === 'ECONNRESET' || code === 'EPIPE') return 'origin_reset';
  if (code.startsWith('ERR_TLS') || code.startsWith('ERR_SSL') || code.includes('CERT')) return 'origin_tls';
  return 'origin_unreachable';
}

/** Sends the origin's head; one that cannot be sent (over 64 KiB encoded) resets the stream instead. */
function respondOrAbort(stream: MuxStream, response: ResponseHead): boolean {
  try {
    stream.respond(response);
    return true;
  } catch {
    stream.destroy();
    return false;
  }
}

export class OriginProxy {
  readonly #c: OriginProxyComponents;
  readonly #url: URL;
  readonly #agent: http.Agent;
  readonly #request: typeof http.request;
  readonly #connectTimeoutMs: number;
  readonly #hostHeader: string | undefined;
  readonly #sockets = new Set<Duplex>();

  constructor(components: OriginProxyComponents, init: OriginProxyInit) {
    this.#c = components;
    this.#url = init.originUrl;
    const secure = init.originUrl.protocol === 'https:' || init.originUrl.protocol === 'wss:';
    const agentOptions = {
      keepAlive: true,
      maxFreeSockets: init.keepAliveConnections ?? 1024,
      timeout: init.keepAliveTimeoutMs ?? 90_000,
      scheduling: 'lifo' as const,
    };
    this.#agent = secure
      ? new https.Agent({ ...agentOptions, rejectUnauthorized: init.noTlsVerify !== true })
      : new http.Agent(agentOptions);
    this.#request = secure ? https.request : http.request;
    this.#connectTimeoutMs = init.connectTimeoutMs ?? 30_000;
    this.#hostHeader = init.httpHostHeader;
  }

  get originUrl(): URL {
    return this.#url;
  }

  /** Serves one stream; resolves when it is over, whatever the outcome. Never rejects. */
  handle(stream: MuxStream): Promise<void> {
    // Reset while it waited for a slot: 'close' has been and gone, and the origin need not hear of it.
    if (stream.destroyed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      stream.once('close', resolve);
      try {
        this.#forward(stream);
      } catch (err) {
        this.#c.log.error({ err: (err as Error).message }, 'origin proxy failed on a stream');
        stream.destroy();
      }
    });
  }

  #forward(stream: MuxStream): void {
    const head = stream.requestHead!;
    const upgrade = head.kind !== 'http';
    let headers = head.headers;
    if (this.#hostHeader !== undefined) {
      headers = [];
      for (let i = 0; i < head.headers.length; i += 2) {
        if (head.headers[i]!.toLowerCase() !== 'host') headers.push(head.headers[i]!, head.headers[i + 1]!);
      }
      headers.push('Host', this.#hostHeader);
    }
    if (!upgrade && !stream.remoteEnded && headerValue(headers, 'content-length') === undefined) {
      // A body without Content-Length came chunked from the visitor, and the edge dropped
      // Transfer-Encoding as hop-by-hop. Ask for chunked framing again: without it node frames a body
      // only for methods it expects one on (POST, PUT, PATCH …) and writes a GET, DELETE or OPTIONS
      // body unframed, which the origin then parses as the next request on the connection.
      headers = [...headers, 'Transfer-Encoding', 'chunked'];
    }
    const req = this.#request({
      protocol:
        this.#url.protocol === 'wss:'
          ? 'https:'
          : this.#url.protocol === 'ws:'
            ? 'http:'
            : this.#url.protocol,
      host: this.#url.hostname.replace(/^\[|\]$/g, ''),
      port: this.#url.port || undefined,
      method: head.method,
      path: head.target,
      headers,
      agent: upgrade ? false : this.#agent,
    });

    let answered = false;
    let responseComplete = false;
    const fail = (err: NodeJS.ErrnoException) => {
      if (answered) {
        stream.destroy();
        return;
      }
      answered = true;
      const code = classify(err);
      this.#c.log.info({ code, origin: this.#url.origin }, `origin request failed: ${err.message}`);
      const response: ResponseHead = {
        status: code === 'origin_timeout' ? 504 : 502,
        headers: [],
        error: { code, message: err.message || code },
      };
      stream.resume();
      try {
        stream.respond(response, { endStream: true });
      } catch {
        stream.destroy();
      }
    };

    req.once('socket', (socket) => {
      if (!(socket as { connecting?: boolean }).connecting) return;
      const timer = this.#c.clock.setTimeout(() => {
        const err: NodeJS.ErrnoException = new Error(
          `no connection to the origin within ${this.#connectTimeoutMs} ms`,
        );
        err.code = 'ORIGIN_CONNECT_TIMEOUT';
        req.destroy(err);
      }, this.#connectTimeoutMs);
      socket.once('connect', () => this.#c.clock.clearTimeout(timer));
      socket.once('close', () => this.#c.clock.clearTimeout(timer));
    });
    req.on('error', fail);

    req.once('response', (res: http.IncomingMessage) => {
      answered = true;
      const response: ResponseHead = {
        status: res.statusCode ?? 502,
        headers: stripHopByHop(res.rawHeaders),
      };
      if (res.statusMessage) response.statusText = res.statusMessage;
      if (!respondOrAbort(stream, response)) {
        res.destroy();
        return;
      }
      res.once('end', () => {
        responseComplete = true;
      });
      res.pipe(stream);
      res.once('error', () => stream.destroy());
      res.once('aborted', () => stream.destroy());
    });

    if (upgrade) {
      req.once('upgrade', (res: http.IncomingMessage, socket: Duplex, upgradeHead: Buffer) => {
        answered = true;
        this.#sockets.add(socket);
        socket.once('close', () => this.#sockets.delete(socket));
        const response: ResponseHead = { status: res.statusCode ?? 101, headers: res.rawHeaders };
        if (res.statusMessage) response.statusText = res.statusMessage;
        if (!respondOrAbort(stream, response)) {
          socket.destroy();
          return;
        }
        if (upgradeHead.length > 0) stream.write(upgradeHead);
        socket.on('error', () => stream.destroy());
        socket.once('close', () => stream.destroy());
        stream.once('close', () => socket.destroy());
        socket.pipe(stream);
        stream.pipe(socket);
      });
      // Bytes that follow an upgrade request belong to the upgraded connection, not to a body.
      req.end();
    } else if (stream.remoteEnded) {
      req.end();
      // Nothing to read, but the stream only ends (and closes, and frees its slot) once its readable
      // side has been consumed.
      stream.resume();
    } else {
      stream.pipe(req);
    }
    // The visitor went away or the tunnel broke: stop talking to the origin.
    stream.once('close', () => {
      if (!req.destroyed && !responseComplete) req.destroy();
    });
  }

  /** Closes pooled origin connections and any upgraded ones still open. */
  close(): void {
    this.#agent.destroy();
    for (const s of this.#sockets) s.destroy();
  }
}
