/**
 * The visitor listener: HTTP/1.1 requests (and Upgrade/WebSocket) routed by Host to a live tunnel
 * connection, one warren/1 stream per request. Bodies stream both ways with backpressure: `.pipe()`
 * between the visitor's socket and the stream, whose credit bounds what is buffered. (`.pipe()` and
 * hand-wired errors rather than `stream.pipeline()`, which costs an AbortController per call.)
 */
import http from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from '../shared/log.ts';
import { stripHopByHop } from '../transport/hop-by-hop.ts';
import type { RequestHead, ResponseHead, StreamKind } from '../transport/messages.ts';
import type { MuxStream } from '../transport/session.ts';
import type { EdgeMetrics } from './metrics.ts';
import { type ErrorPage, edgeErrorPage, noTunnelPage, originErrorPage } from './pages.ts';
import type { RoutedConnection, RoutingTable } from './routing.ts';
import type { VisitorHold } from './visitor-hold.ts';

export interface VisitorProxyComponents {
  routing: RoutingTable;
  /** Where requests for a tunnel that just lost its last connection wait for the next one. */
  hold: VisitorHold;
  log: Logger;
  metrics: EdgeMetrics;
}

export interface VisitorProxyInit {
  /** Largest request head accepted from a visitor (default 64 KiB, the warren/1 head limit). */
  maxHeaderBytes?: number;
  /** Idle keep-alive visitor connections are closed after this long (default 5 s, as Node). */
  keepAliveTimeoutMs?: number;
}

/** Host header → lower-case hostname without port. */
export function hostnameOf(hostHeader: string | undefined): string {
  if (!hostHeader) return '';
  let h = hostHeader.trim().toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    return end === -1 ? h : h.slice(0, end + 1);
  }
  const colon = h.indexOf(':');
  if (colon !== -1) h = h.slice(0, colon);
  return h.endsWith('.') ? h.slice(0, -1) : h;
}

const FORWARDING = new Set(['x-forwarded-proto', 'warren-connecting-ip']);

/**
 * The head the agent receives: the visitor's headers minus hop-by-hop ones, plus X-Forwarded-For,
 * X-Forwarded-Proto and Warren-Connecting-IP (the latter two replace anything the visitor sent, so
 * they cannot be forged).
 */
export function buildRequestHead(
  req: http.IncomingMessage,
  kind: StreamKind,
  clientIp: string,
  proto: string,
): RequestHead {
  const headers: string[] = [];
  let xff: string | undefined;
  const raw = kind === 'http' ? stripHopByHop(req.rawHeaders) : req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    if (lower === 'x-forwarded-for') {
      xff = xff === undefined ? raw[i + 1]! : `${xff}, ${raw[i + 1]!}`;
      continue;
    }
    if (FORWARDING.has(lower)) continue;
    headers.push(name, raw[i + 1]!);
  }
  headers.push(
    'X-Forwarded-For',
    xff === undefined ? clientIp : `${xff}, ${clientIp}`,
    'X-Forwarded-Proto',
    proto,
    'Warren-Connecting-IP',
    clientIp,
  );
  return { kind, method: req.method ?? 'GET', target: req.url ?? '/', headers };
}

function hasRequestBody(req: http.IncomingMessage): boolean {
  const te = req.headers['transfer-encoding'];
  if (te !== undefined) return true;
  const cl = req.headers['content-length'];
  return cl !== undefined && cl !== '0';
}

function clientIpOf(req: http.IncomingMessage): string {
  const ip = req.socket.remoteAddress ?? '';
  return ip.startsWith('::ffff:') ? ip.slice(7) : ip;
}

/** A header line must not smuggle a second one in. */
function safeHeaders(headers: readonly string[]): boolean {
  for (const h of headers) if (h.includes('\n') || h.includes('\r')) return false;
  return true;
}

/** The agent's error code goes into a header: only a plain code passes, anything else is `origin_error`. */
function errorCodeOf(head: ResponseHead): string {
  const code = head.error?.code ?? '';
  return /^[a-z0-9_]{1,64}$/.test(code) ? code : 'origin_error';
}

/**
 * The response body, tunnel stream → visitor, with backpressure. By hand rather than `.pipe()`, which
 * adds and removes seven listeners per request; errors are the caller's (its 'error' and 'close'
 * handlers destroy the other side).
 */
function relayBody(stream: MuxStream, res: http.ServerResponse): void {
  const onDrain = () => stream.resume();
  stream.on('data', (chunk: Buffer) => {
    if (!res.write(chunk)) {
      stream.pause();
      res.once('drain', onDrain);
    }
  });
  stream.once('end', () => res.end());
}

/** Methods a proxy may repeat on its own (RFC 9110 §9.2.2): doing them twice is doing them once. */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/**
 * Whether a request whose stream failed before the response head may be sent again, on another
 * connection. Only without a body (there is nothing to replay), and only when the origin cannot have
 * acted on it twice: the agent refused the stream (REFUSED_STREAM — it never reached the origin, e.g.
 * it crossed the agent's GOAWAY), or the connection died under it and the method is idempotent.
 */
function canRetry(
  req: http.IncomingMessage,
  err: Error & { code?: string; retryable?: boolean },
  withBody: boolean,
): boolean {
  if (withBody || err.retryable !== true) return false;
  return err.code === 'stream_reset' || IDEMPOTENT.has(req.method ?? '');
}

/** A visitor request on its way to a tunnel, across its tries. */
interface Visit {
  req: http.IncomingMessage;
  res: http.ServerResponse;
  host: string;
  tunnelId: string;
  withBody: boolean;
  /** Aborted when the visitor hangs up; made only when the request has to wait. */
  gone?: AbortController;
}

/** A request waits for a connection at most this many times (a connection that comes and goes again). */
const MAX_HOLDS = 3;
/** A request refused by the agent before it reached the origin is tried on this many more connections. */
const MAX_RETRIES = 3;

export function createVisitorServer(c: VisitorProxyComponents, init: VisitorProxyInit = {}): http.Server {
  const server = http.createServer({
    maxHeaderSize: init.maxHeaderBytes ?? 64 * 1024,
    keepAliveTimeout: init.keepAliveTimeoutMs ?? 5000,
    // Requests stream for as long as they need; liveness is the tunnel's business.
    requestTimeout: 0,
  });

  const sendPage = (res: http.ServerResponse, page: ErrorPage) => {
    c.metrics.countRequest(page.status);
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const body = Buffer.from(page.html);
    res.writeHead(page.status, {
      'Content-Type': 'text/html; charset=utf-8',
      'Content-Length': body.length,
      'Cache-Control': 'no-store',
      'Warren-Error': page.code,
    });
    res.end(body);
  };

  /**
   * Calls `then` with a live connection of the tunnel: at once when there is one (the common path stays
   * synchronous), else after the visitor hold, or with undefined when none came.
   */
  const withConnection = (
    tunnelId: string,
    visitorGone: AbortSignal,
    then: (conn: RoutedConnection | undefined) => void,
    holdsLeft = MAX_HOLDS,
  ): void => {
    const conn = c.routing.pick(tunnelId);
    if (conn || holdsLeft === 0) return then(conn);
    void c.hold.wait(tunnelId, visitorGone).then((outcome) => {
      if (outcome === 'cancelled') return;
      if (outcome !== 'connected') return then(undefined);
      withConnection(tunnelId, visitorGone, then, holdsLeft - 1);
    });
  };

  /** The signal that the visitor hung up; made only when a request has to wait. */
  const goneSignal = (v: Visit): AbortSignal => {
    if (!v.gone) {
      const ac = new AbortController();
      v.gone = ac;
      v.res.once('close', () => ac.abort());
    }
    return v.gone.signal;
  };

  /** Sends the request on a live connection of its tunnel, after the visitor hold if need be; else 530. */
  const route = (v: Visit, retries: number): void => {
    const conn = c.routing.pick(v.tunnelId);
    if (conn) return forward(v, conn, retries);
    withConnection(v.tunnelId, goneSignal(v), (held) => {
      if (held) return forward(v, held, retries);
      v.req.resume();
      sendPage(v.res, noTunnelPage(v.host || '(none)'));
    });
  };

  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const host = hostnameOf(req.headers.host);
    const tunnelId = c.routing.tunnelForHost(host);
    if (tunnelId === undefined) {
      req.resume();
      return sendPage(res, noTunnelPage(host || '(none)'));
    }
    route({ req, res, host, tunnelId, withBody: hasRequestBody(req) }, 0);
  });

  /**
   * One try at a request on one connection. What fails before the response head is tried again on
   * another connection (see `canRetry`), at most MAX_RETRIES times; anything else is a 502.
   */
  const forward = (v: Visit, conn: RoutedConnection, retries: number): void => {
    const { req, res, host, tunnelId, withBody } = v;
    let stream: MuxStream;
    try {
      stream = conn.session.openStream(buildRequestHead(req, 'http', clientIpOf(req), 'http'), {
        endStream: !withBody,
      });
    } catch (err) {
      const code = (err as { code?: string }).code ?? 'tunnel_error';
      // The session started going away between pick and open: another connection, or the hold.
      if (code === 'session_closed' && retries < MAX_RETRIES) return route(v, retries + 1);
      req.resume();
      const status = code === 'headers_too_large' ? 431 : 503;
      return sendPage(
        res,
        edgeErrorPage(status, 'The tunnel could not take this request', 'Please try again.', code),
      );
    }
    const startedAt = performance.now();
    c.metrics.concurrentStreams.inc();
    let settled = false;
    const settle = () => {
      if (settled) return;
      settled = true;
      c.metrics.concurrentStreams.dec();
    };
    if (withBody) {
      req.pipe(stream);
      req.once('error', () => stream.reset());
    }
    const onClose = () => {
      settle();
      // The visitor went away (or the response is done): make sure the stream does not linger.
      if (!res.writableFinished || !stream.readableEnded) stream.destroy();
    };
    stream.once('response', (head: ResponseHead) => {
      c.metrics.requestDuration.observe((performance.now() - startedAt) / 1000);
      if (head.error) {
        stream.resume();
        return sendPage(res, originErrorPage(host, errorCodeOf(head), head.error.message));
      }
      const headers = stripHopByHop(head.headers);
      if (!safeHeaders(headers)) {
        stream.reset();
        return sendPage(
          res,
          originErrorPage(host, 'origin_bad_response', 'the origin sent a malformed header'),
        );
      }
      c.metrics.countRequest(head.status);
      res.sendDate = false;
      try {
        if (head.statusText) res.writeHead(head.status, head.statusText, headers);
        else res.writeHead(head.status, headers);
      } catch (err) {
        stream.reset();
        return sendPage(res, originErrorPage(host, 'origin_bad_response', (err as Error).message));
      }
      if (head.body !== undefined && stream.remoteEnded) {
        // The whole answer came inside the head (a small body the agent had at once): nothing to relay.
        res.end(head.body);
        // A request still sending its body keeps the stream until that is done; otherwise it is over.
        if (withBody) stream.resume();
        else stream.destroy();
        return;
      }
      if (head.body !== undefined) res.write(head.body);
      relayBody(stream, res);
    });
    stream.once('error', (err: Error & { code?: string; retryable?: boolean }) => {
      settle();
      if (res.headersSent) return res.destroy();
      if (canRetry(req, err, withBody) && retries < MAX_RETRIES && !res.destroyed) {
        res.off('close', onClose);
        c.log.debug({ tunnelId, code: err.code }, 'tunnel stream failed early; trying another connection');
        return route(v, retries + 1);
      }
      c.log.debug({ tunnelId, code: err.code }, `tunnel stream failed before a response: ${err.message}`);
      return sendPage(
        res,
        edgeErrorPage(
          502,
          'The tunnel dropped this request',
          "The connection to the origin's agent broke; please try again.",
          err.code ?? 'tunnel_error',
        ),
      );
    });
    stream.once('end', settle);
    res.once('close', onClose);
  };

  server.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => {});
    const host = hostnameOf(req.headers.host);
    const tunnelId = c.routing.tunnelForHost(host);
    const rawPage = (page: ErrorPage) => {
      c.metrics.countRequest(page.status);
      socket.end(
        `HTTP/1.1 ${page.status} ${http.STATUS_CODES[page.status] ?? 'Error'}\r\nContent-Type: text/html; charset=utf-8\r\n` +
          `Content-Length: ${Buffer.byteLength(page.html)}\r\nWarren-Error: ${page.code}\r\nConnection: close\r\n\r\n${page.html}`,
      );
    };
    if (tunnelId === undefined) return rawPage(noTunnelPage(host || '(none)'));
    const conn = c.routing.pick(tunnelId);
    if (conn) return upgradeOn(req, socket, head, host, conn, rawPage);
    const gone = new AbortController();
    socket.once('close', () => gone.abort());
    withConnection(tunnelId, gone.signal, (held) =>
      held ? upgradeOn(req, socket, head, host, held, rawPage) : rawPage(noTunnelPage(host || '(none)')),
    );
  });

  const upgradeOn = (
    req: http.IncomingMessage,
    socket: Duplex,
    head: Buffer,
    host: string,
    conn: RoutedConnection,
    rawPage: (page: ErrorPage) => void,
  ): void => {
    const kind: StreamKind =
      String(req.headers.upgrade).toLowerCase() === 'websocket' ? 'websocket' : 'upgrade';
    let stream: MuxStream;
    try {
      stream = conn.session.openStream(buildRequestHead(req, kind, clientIpOf(req), 'http'));
    } catch (err) {
      const code = (err as { code?: string }).code ?? 'tunnel_error';
      return rawPage(edgeErrorPage(503, 'The tunnel could not take this request', 'Please try again.', code));
    }
    if (head.length > 0) stream.write(head);
    stream.once('response', (rh: ResponseHead) => {
      if (rh.error) return rawPage(originErrorPage(host, errorCodeOf(rh), rh.error.message));
      if (!safeHeaders(rh.headers) || (rh.statusText !== undefined && !safeHeaders([rh.statusText]))) {
        stream.reset();
        return rawPage(originErrorPage(host, 'origin_bad_response', 'the origin sent a malformed header'));
      }
      c.metrics.countRequest(rh.status);
      let text = `HTTP/1.1 ${rh.status} ${rh.statusText ?? http.STATUS_CODES[rh.status] ?? ''}\r\n`;
      for (let i = 0; i < rh.headers.length; i += 2) text += `${rh.headers[i]}: ${rh.headers[i + 1]}\r\n`;
      socket.write(`${text}\r\n`);
      if (rh.body !== undefined) socket.write(rh.body);
      // After a 101 both directions are raw bytes; otherwise the origin's body follows and the
      // connection ends with it (we asked for an upgrade, so no keep-alive).
      stream.pipe(socket);
      if (rh.status === 101) socket.pipe(stream);
    });
    stream.once('error', () => socket.destroy());
    socket.once('close', () => stream.destroy());
  };

  server.on('clientError', (_err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    else socket.destroy();
  });
  return server;
}
