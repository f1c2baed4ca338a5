/**
 * Carries one warren/1 stream to the origin and the answer back.
 *
 * Ordinary requests go over a keep-alive pool of undici clients (`origin-pool.ts`) through undici's
 * handler callbacks: no request or response stream objects per request, and the response's raw
 * header list (order, case, duplicates) exactly as the origin sent it. On a tiny GET this costs less
 * than half the CPU of `http.request` with a keep-alive Agent. Bodies go both ways with backpressure
 * and are never buffered whole. Upgrades (WebSocket) take `http.request` on a connection of their
 * own, then `.pipe()` both ways. When the origin cannot be reached, or answers with something that is
 * not HTTP/1.1, the visitor gets a 502/504 whose head carries an error code.
 */
import http from 'node:http';
import https from 'node:https';
import type { Duplex, Readable } from 'node:stream';
import type { Client, Dispatcher } from 'undici';
import type { Clock } from '../shared/clock.ts';
import type { Logger } from '../shared/log.ts';
import { isHopByHop, stripHopByHop } from '../transport/hop-by-hop.ts';
import { INLINE_BODY_BYTES, type ResponseHead } from '../transport/messages.ts';
import type { MuxStream } from '../transport/session.ts';
import { type OriginConnectError, OriginPool } from './origin-pool.ts';

export interface OriginProxyInit {
  /** http(s)://host:port — where requests go. */
  originUrl: URL;
  /** TCP (and TLS) connect timeout to the origin (default 30 s, as cloudflared). */
  connectTimeoutMs?: number;
  /** Idle origin connections kept (default 1024, the stream limit: fewer makes busy tunnels reconnect to the origin). */
  keepAliveConnections?: number;
  /** Overrides the Host header sent to the origin. */
  httpHostHeader?: string;
  /** Skip verifying an https origin's certificate (off by default). */
  noTlsVerify?: boolean;
}

export interface OriginProxyComponents {
  clock: Clock;
  log: Logger;
}

type OriginErrorCode =
  | 'origin_unreachable'
  | 'origin_timeout'
  | 'origin_tls'
  | 'origin_reset'
  | 'origin_bad_response'
  | 'origin_request_invalid';

function classify(err: OriginConnectError): OriginErrorCode {
  if (err.originFailure !== undefined) return err.originFailure;
  const code = err.code ?? '';
  if (code === 'ETIMEDOUT') return 'origin_timeout';
  if (code === 'ECONNRESET' || code === 'EPIPE' || code === 'UND_ERR_SOCKET') return 'origin_reset';
  if (code.startsWith('ERR_TLS') || code.startsWith('ERR_SSL') || code.includes('CERT')) return 'origin_tls';
  // A request undici will not send as HTTP/1.1 (a target that is not a path, such as `OPTIONS *`):
  // the origin was never asked.
  if (code === 'UND_ERR_INVALID_ARG' || code === 'UND_ERR_NOT_SUPPORTED') return 'origin_request_invalid';
  // llhttp's parse errors (matched by name: their code depends on undici's error table), a head over
  // 16 KiB, a body that does not match its Content-Length.
  if (
    err.name === 'HTTPParserError' ||
    code === 'UND_ERR_HEADERS_OVERFLOW' ||
    code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH'
  ) {
    return 'origin_bad_response';
  }
  return 'origin_unreachable';
}

const noop = (): void => {};

/**
 * A request body for undici: the stream's chunks one by one as they arrive, with backpressure (the
 * stream is paused while a chunk waits to be taken). Not the stream itself, which undici destroys once
 * sent, while this one still has the response to carry; and not `stream.iterator()`, whose `read()`
 * joins every buffered chunk into one new Buffer on each step. Ending the iteration (undici gives up)
 * stops listening and leaves the stream open.
 */
class RequestBody implements AsyncIterable<Buffer>, AsyncIterator<Buffer> {
  readonly #stream: MuxStream;
  #chunk: Buffer | undefined;
  #ended = false;
  #failed: Error | undefined;
  #waiter: (() => void) | undefined;

  constructor(stream: MuxStream) {
    this.#stream = stream;
    stream.on('data', this.#onData);
    stream.once('end', this.#onEnd);
    stream.once('close', this.#onClose);
  }

  [Symbol.asyncIterator](): AsyncIterator<Buffer> {
    return this;
  }

  async next(): Promise<IteratorResult<Buffer>> {
    for (;;) {
      if (this.#chunk !== undefined) {
        const value = this.#chunk;
        this.#chunk = undefined;
        return { value, done: false };
      }
      if (this.#failed !== undefined) {
        this.#stop();
        throw this.#failed;
      }
      if (this.#ended) {
        this.#stop();
        return { value: undefined, done: true };
      }
      await new Promise<void>((resolve) => {
        this.#waiter = resolve;
        this.#stream.resume();
      });
    }
  }

  async return(): Promise<IteratorResult<Buffer>> {
    this.#stop();
    return { value: undefined, done: true };
  }

  /**
   * The exchange is over before the body was all sent (the origin answered early, or the connection
   * broke): the rest is read and dropped, so the stream ends, closes and frees its slot.
   */
  discard(): void {
    this.#stop();
    this.#chunk = undefined;
    this.#failed ??= new Error('the request body is no longer wanted');
    this.#wake();
    if (!this.#stream.readableEnded) {
      this.#stream.on('data', noop);
      this.#stream.resume();
    }
  }

  readonly #onData = (chunk: Buffer): void => {
    this.#chunk = chunk;
    this.#stream.pause();
    this.#wake();
  };

  readonly #onEnd = (): void => {
    this.#ended = true;
    this.#wake();
  };

  readonly #onClose = (): void => {
    if (!this.#ended) this.#failed ??= new Error('the request body was cut off');
    this.#wake();
  };

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.();
  }

  #stop(): void {
    this.#stream.off('data', this.#onData);
    this.#stream.off('end', this.#onEnd);
    this.#stream.off('close', this.#onClose);
  }
}

/** Any constant: see `servername` in `#forward`. */
const ORIGIN_SERVERNAME = 'origin';

/** Sends the origin's head; one that cannot be sent (over 64 KiB encoded) resets the stream instead. */
function respondOrAbort(stream: MuxStream, response: ResponseHead, endStream = false): boolean {
  try {
    stream.respond(response, { endStream });
    return true;
  } catch {
    stream.destroy();
    return false;
  }
}

/** Answers a stream whose origin request failed before any response head: 502/504 with the code. */
function respondWithFailure(log: Logger, origin: string, stream: MuxStream, err: OriginConnectError): void {
  if (stream.destroyed) return;
  const code = classify(err);
  log.info({ code, origin }, `origin request failed: ${err.message}`);
  stream.resume();
  try {
    stream.respond(
      {
        status: code === 'origin_timeout' ? 504 : 502,
        headers: [],
        error: { code, message: err.message || code },
      },
      { endStream: true },
    );
  } catch {
    stream.destroy();
  }
}

/** The request headers for the origin: the Host override applied, and what undici frames itself removed. */
function originRequestHeaders(headers: readonly string[], hostOverride: string | undefined): string[] {
  const out: string[] = [];
  let hostSeen = hostOverride !== undefined;
  for (let i = 0; i + 1 < headers.length; i += 2) {
    const name = headers[i]!;
    // `Expect` was answered by the edge's server (100 Continue went to the visitor); undici refuses it.
    // Hop-by-hop headers are the edge's to drop, but undici throws on some of them, so drop them again.
    if (name.length === 6 && name.toLowerCase() === 'expect') continue;
    if (isHopByHop(name)) continue;
    if (name.length === 4 && name.toLowerCase() === 'host') {
      // The first Host is the one the edge routed by (Node keeps the first); undici refuses a second.
      if (hostSeen) continue;
      hostSeen = true;
    }
    out.push(name, headers[i + 1]!);
  }
  if (hostOverride !== undefined) out.push('Host', hostOverride);
  return out;
}

/**
 * One request to the origin, as an undici dispatch handler (undici 7's native callback form, which
 * hands over the raw response header list). It owns the pooled client until the exchange ends.
 */
class OriginExchange {
  readonly #proxy: OriginProxy;
  readonly #stream: MuxStream;
  readonly #client: Client;
  #abort: ((err?: Error) => void) | undefined;
  #resume: (() => void) | undefined;
  #answered = false;
  #over = false;
  #cancelled = false;
  /**
   * The origin's head, held back until the end of the read it came in: a small body that arrives
   * whole with it goes inside the head, as one HEADERS frame with END (no DATA, no stream writes).
   */
  #heldHead: ResponseHead | undefined;
  #heldBody: Buffer[] = [];
  #heldBytes = 0;
  /** The request body, when there is one: what undici did not take of it is dropped at the end. */
  body: RequestBody | undefined;

  constructor(proxy: OriginProxy, stream: MuxStream, client: Client) {
    this.#proxy = proxy;
    this.#stream = stream;
    this.#client = client;
  }

  /** The visitor went away or the tunnel broke: stop talking to the origin. */
  cancel(): void {
    if (this.#over) return;
    this.#cancelled = true;
    this.#abort?.(new Error('the visitor went away'));
  }

  onConnect(abort: (err?: Error) => void): void {
    this.#abort = abort;
    if (this.#cancelled) abort(new Error('the visitor went away'));
  }

  onHeaders(status: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    // 1xx informational answers stay between the agent and the origin (the edge sent its own 100 Continue).
    if (status < 200) return true;
    this.#answered = true;
    this.#resume = resume;
    const headers = new Array<string>(rawHeaders.length);
    for (let i = 0; i < rawHeaders.length; i++) headers[i] = rawHeaders[i]!.toString('latin1');
    const response: ResponseHead = { status, headers: stripHopByHop(headers) };
    if (statusText) response.statusText = statusText;
    this.#heldHead = response;
    // undici hands over the head, the body and the end of one read in one go; the tick comes after.
    process.nextTick(this.#sendHeldHead);
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.#heldHead !== undefined) {
      if (this.#heldBytes + chunk.length <= INLINE_BODY_BYTES) {
        this.#heldBody.push(chunk);
        this.#heldBytes += chunk.length;
        return true;
      }
      if (!this.#sendHead(false)) return false;
    }
    if (this.#stream.write(chunk)) return true;
    this.#stream.once('drain', this.#onDrain);
    return false;
  }

  onComplete(): void {
    this.#finish();
    if (this.#heldHead !== undefined) this.#sendHead(true);
    else this.#stream.end();
  }

  onError(err: Error): void {
    this.#finish();
    // With the head still held nothing went to the edge: the visitor gets a 502 with the code rather
    // than a cut answer.
    const headSent = this.#answered && this.#heldHead === undefined;
    this.#heldHead = undefined;
    if (this.#cancelled) return;
    if (headSent) this.#stream.destroy();
    else respondWithFailure(this.#proxy.log, this.#proxy.originUrl.origin, this.#stream, err);
  }

  onUpgrade(): void {
    // Never asked for: upgrades take `http.request`.
    this.onError(new Error('unexpected upgrade from the origin'));
  }

  readonly #onDrain = (): void => this.#resume?.();

  readonly #sendHeldHead = (): void => {
    if (this.#heldHead !== undefined) this.#sendHead(false);
  };

  /** Sends the held head, with what body came with it; false when the stream had to be reset. */
  #sendHead(end: boolean): boolean {
    const head = this.#heldHead!;
    this.#heldHead = undefined;
    if (this.#heldBytes > 0) {
      head.body =
        this.#heldBody.length === 1 ? this.#heldBody[0]! : Buffer.concat(this.#heldBody, this.#heldBytes);
    }
    this.#heldBody = [];
    this.#heldBytes = 0;
    if (respondOrAbort(this.#stream, head, end)) return true;
    this.cancel();
    return false;
  }

  #finish(): void {
    if (this.#over) return;
    this.#over = true;
    this.#proxy.release(this.#client);
    // Whatever of the request body undici did not take is dropped, so the stream can end and close.
    this.body?.discard();
  }
}

export class OriginProxy {
  readonly #c: OriginProxyComponents;
  readonly #url: URL;
  readonly #pool: OriginPool;
  readonly #upgradeRequest: typeof http.request;
  readonly #noTlsVerify: boolean;
  readonly #connectTimeoutMs: number;
  readonly #hostHeader: string | undefined;
  readonly #sockets = new Set<Duplex>();

  constructor(components: OriginProxyComponents, init: OriginProxyInit) {
    this.#c = components;
    this.#url = init.originUrl;
    const secure = init.originUrl.protocol === 'https:' || init.originUrl.protocol === 'wss:';
    this.#noTlsVerify = init.noTlsVerify === true;
    this.#connectTimeoutMs = init.connectTimeoutMs ?? 30_000;
    this.#pool = new OriginPool(components.clock, {
      originUrl: init.originUrl,
      connectTimeoutMs: this.#connectTimeoutMs,
      maxIdle: init.keepAliveConnections ?? 1024,
      noTlsVerify: this.#noTlsVerify,
    });
    this.#upgradeRequest = secure ? https.request : http.request;
    this.#hostHeader = init.httpHostHeader;
  }

  get originUrl(): URL {
    return this.#url;
  }

  /** @internal */
  get log(): Logger {
    return this.#c.log;
  }

  /** @internal An exchange is over with its pooled client. */
  release(client: Client): void {
    this.#pool.release(client);
  }

  /** Serves one stream; resolves when it is over, whatever the outcome. Never rejects. */
  handle(stream: MuxStream): Promise<void> {
    // Reset while it waited for a slot: 'close' has been and gone, and the origin need not hear of it.
    if (stream.destroyed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      try {
        if (stream.requestHead!.kind === 'http') this.#forward(stream, resolve);
        else {
          stream.once('close', resolve);
          this.#forwardUpgrade(stream);
        }
      } catch (err) {
        this.#c.log.error({ err: (err as Error).message }, 'origin proxy failed on a stream');
        stream.once('close', resolve);
        stream.destroy();
      }
    });
  }

  #forward(stream: MuxStream, resolve: () => void): void {
    const head = stream.requestHead!;
    const client = this.#pool.acquire();
    const exchange = new OriginExchange(this, stream, client);
    stream.once('close', () => {
      exchange.cancel();
      resolve();
    });
    let body: RequestBody | null = null;
    // Ended with nothing buffered: no body. (A stream that waited for a slot may hold its whole body.)
    if (stream.remoteEnded && stream.readableLength === 0) {
      // Nothing to read, but the stream only ends (and closes, and frees its slot) once its readable
      // side has been consumed.
      stream.resume();
    } else {
      body = new RequestBody(stream);
      exchange.body = body;
    }
    // undici 7 takes `servername` per request and an async iterable body (both documented; its typings
    // list neither).
    const options: Dispatcher.DispatchOptions & { servername: string } = {
      method: head.method,
      path: head.target,
      headers: originRequestHeaders(head.headers, this.#hostHeader),
      // undici takes the TLS server name from each request's Host and drops the connection when it
      // changes; the pool's connect sets SNI from the origin URL, so one constant name keeps them.
      servername: ORIGIN_SERVERNAME,
      body: body as Readable | null,
    };
    client.dispatch(options, exchange);
  }

  #forwardUpgrade(stream: MuxStream): void {
    const head = stream.requestHead!;
    let headers = head.headers;
    if (this.#hostHeader !== undefined) {
      headers = [];
      for (let i = 0; i < head.headers.length; i += 2) {
        if (head.headers[i]!.toLowerCase() !== 'host') headers.push(head.headers[i]!, head.headers[i + 1]!);
      }
      headers.push('Host', this.#hostHeader);
    }
    const protocol = this.#url.protocol;
    const options: https.RequestOptions = {
      protocol: protocol === 'wss:' ? 'https:' : protocol === 'ws:' ? 'http:' : protocol,
      host: this.#url.hostname.replace(/^\[|\]$/g, ''),
      port: this.#url.port || undefined,
      method: head.method,
      path: head.target,
      headers,
      agent: false,
      rejectUnauthorized: !this.#noTlsVerify,
    };
    const req = this.#upgradeRequest(options);

    let answered = false;
    let responseComplete = false;
    const fail = (err: NodeJS.ErrnoException) => {
      if (answered) {
        stream.destroy();
        return;
      }
      answered = true;
      respondWithFailure(this.#c.log, this.#url.origin, stream, err);
    };
    req.once('socket', (socket) => {
      if (!(socket as { connecting?: boolean }).connecting) return;
      const timer = this.#c.clock.setTimeout(() => {
        const err: OriginConnectError = new Error(
          `no connection to the origin within ${this.#connectTimeoutMs} ms`,
        );
        err.originFailure = 'origin_timeout';
        req.destroy(err);
      }, this.#connectTimeoutMs);
      socket.once('connect', () => this.#c.clock.clearTimeout(timer));
      socket.once('close', () => this.#c.clock.clearTimeout(timer));
    });
    req.on('error', fail);
    // The origin declined the upgrade and answered as plain HTTP.
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
    stream.once('close', () => {
      if (!req.destroyed && !responseComplete) req.destroy();
    });
  }

  /** Closes pooled origin connections and any upgraded ones still open. */
  close(): void {
    this.#pool.close();
    for (const s of this.#sockets) s.destroy();
  }
}
