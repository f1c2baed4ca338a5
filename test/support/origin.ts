/**
 * The origin that integration, differential and benchmark tests put behind a tunnel. Every route
 * is deterministic and the slow ones are driven by the test (`sse.next()`, `release()`), so no
 * test has to sleep for real time.
 *
 * Routes:
 *   /echo            any method → 200 JSON { method, url, httpVersion, rawHeaders, bodyBase64 } (bodies ≤ 1 MiB)
 *   /reflect         status from ?status= (default 200); x-* request headers back in order; body = request body
 *   /bytes?n=&seed=  exactly n deterministic bytes (`deterministicBytes`); Content-Length unless chunked=1
 *   /upload          POST/PUT → JSON { bytes, sha256 } of the streamed body
 *   /duplex          POST → the request body streamed back while it is still arriving (chunked)
 *   /sse?n=          text/event-stream: `data: 1` at once, each further event on `sse.next()`, ends after n (default 3)
 *   /slow?ms=        head and `slow start\n` at once; `slow end\n` and the end on `release()` (or after ms)
 *   /chunked         five separate writes without Content-Length
 *   /status/:code    that status with a short body
 *   /ws              WebSocket echo (text stays text, binary stays binary)
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer } from 'ws';

export interface TestOrigin {
  readonly port: number;
  /** `http://127.0.0.1:<port>` (no trailing slash). */
  readonly url: string;
  /** HTTP requests and upgrade requests received so far. */
  readonly requests: number;
  readonly sse: {
    /**
     * Sends the next event on every open /sse stream. With none open, the release is kept for the
     * next stream that opens, so a test need not race the request.
     */
    next(): void;
  };
  /** Finishes every pending /slow response. */
  release(): void;
  /** Stops listening and ends every connection (keep-alive, streaming and WebSocket) now. */
  close(): Promise<void>;
}

const CHUNK_BYTES = 64 * 1024;
const MAX_ECHO_BYTES = 1024 * 1024;
const MAX_REFLECT_BYTES = 16 * 1024 * 1024;

/**
 * `n` bytes of xorshift32 output for `seed`, in fresh 64 KiB Buffers (the last one shorter).
 * The same seed gives the same prefix for any `n`. Words are stored in platform byte order
 * (little-endian on every machine we run on); both ends of a test compute them the same way.
 */
export function* deterministicBytes(n: number, seed = 1): Generator<Buffer> {
  let x = (Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ 0x5bd1e995) | 0;
  if (x === 0) x = 1;
  let remaining = n;
  while (remaining > 0) {
    const size = Math.min(CHUNK_BYTES, remaining);
    const words = new Uint32Array((size + 3) >>> 2);
    for (let i = 0; i < words.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x;
    }
    remaining -= size;
    yield Buffer.from(words.buffer, 0, size);
  }
}

/** Hex SHA-256 of `deterministicBytes(n, seed)`, without an origin. */
export function sha256OfDeterministic(n: number, seed = 1): string {
  const hash = createHash('sha256');
  for (const chunk of deterministicBytes(n, seed)) hash.update(chunk);
  return hash.digest('hex');
}

interface SseStream {
  res: http.ServerResponse;
  sent: number;
  total: number;
}

export async function startTestOrigin(): Promise<TestOrigin> {
  let requests = 0;
  let pendingSseReleases = 0;
  const sseStreams = new Set<SseStream>();
  const slowResponses = new Set<http.ServerResponse>();
  const timers = new Set<NodeJS.Timeout>();
  const upgradeSockets = new Set<Duplex>();

  const wss = new WebSocketServer({ noServer: true });
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    ws.on('error', () => ws.terminate());
  });

  const sendSse = (stream: SseStream) => {
    stream.sent++;
    stream.res.write(`data: ${stream.sent}\n\n`);
    if (stream.sent >= stream.total) {
      sseStreams.delete(stream);
      stream.res.end();
    }
  };

  const finishSlow = (res: http.ServerResponse) => {
    if (!slowResponses.delete(res)) return;
    res.end('slow end\n');
  };

  const server = http.createServer({ keepAlive: true }, (req, res) => {
    requests++;
    const url = new URL(req.url ?? '/', 'http://origin.invalid');
    const path = url.pathname;
    const method = req.method ?? 'GET';
    const q = url.searchParams;

    if (path === '/echo') {
      readBody(req, MAX_ECHO_BYTES).then((body) => {
        if (body === undefined) return reply(res, 413, 'body too large for /echo\n');
        replyJson(res, 200, {
          method,
          url: req.url,
          httpVersion: req.httpVersion,
          rawHeaders: req.rawHeaders,
          bodyBase64: body.toString('base64'),
        });
      }, destroyOnError(res));
      return;
    }

    if (path === '/reflect') {
      const status = q.has('status') ? parseStatus(q.get('status')!) : 200;
      if (status === undefined) return void drainThen(req, () => reply(res, 400, 'bad status\n'));
      readBody(req, MAX_REFLECT_BYTES).then((body) => {
        if (body === undefined) return reply(res, 413, 'body too large for /reflect\n');
        const raw = req.rawHeaders;
        const headers: string[] = [];
        for (let i = 0; i + 1 < raw.length; i += 2) {
          const name = raw[i]!;
          if (name.length > 2 && (name[0] === 'x' || name[0] === 'X') && name[1] === '-') {
            headers.push(name, raw[i + 1]!);
          }
        }
        headers.push('Content-Type', req.headers['content-type'] ?? 'application/octet-stream');
        if (bodyAllowed(status)) {
          headers.push('Content-Length', String(body.length));
          res.writeHead(status, headers);
          res.end(body);
        } else {
          res.writeHead(status, headers);
          res.end();
        }
      }, destroyOnError(res));
      return;
    }

    if (path === '/bytes') {
      req.resume();
      const n = Number(q.get('n') ?? '0');
      const seed = Number(q.get('seed') ?? '1');
      if (!Number.isSafeInteger(n) || n < 0 || !Number.isSafeInteger(seed)) {
        return reply(res, 400, 'n and seed must be non-negative integers\n');
      }
      const headers: http.OutgoingHttpHeaders = { 'content-type': 'application/octet-stream' };
      if (q.get('chunked') !== '1') headers['content-length'] = n;
      res.writeHead(200, headers);
      if (method === 'HEAD') return void res.end();
      writeAll(res, deterministicBytes(n, seed)).catch(destroyOnError(res));
      return;
    }

    if (path === '/upload') {
      if (method !== 'POST' && method !== 'PUT') return methodNotAllowed(req, res, 'POST, PUT');
      const hash = createHash('sha256');
      let bytes = 0;
      req.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        hash.update(chunk);
      });
      req.on('end', () => replyJson(res, 200, { bytes, sha256: hash.digest('hex') }));
      req.on('error', destroyOnError(res));
      return;
    }

    if (path === '/duplex') {
      if (method !== 'POST') return methodNotAllowed(req, res, 'POST');
      res.writeHead(200, { 'content-type': req.headers['content-type'] ?? 'application/octet-stream' });
      // Send the head now: the client should see the response start before its body ends.
      res.flushHeaders();
      req.on('error', destroyOnError(res));
      req.pipe(res);
      return;
    }

    if (path === '/sse') {
      req.resume();
      const total = Number(q.get('n') ?? '3');
      if (!Number.isSafeInteger(total) || total < 1) return reply(res, 400, 'n must be a positive integer\n');
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      if (method === 'HEAD') return void res.end();
      const stream: SseStream = { res, sent: 0, total };
      sseStreams.add(stream);
      res.on('close', () => sseStreams.delete(stream));
      sendSse(stream);
      while (pendingSseReleases > 0 && sseStreams.has(stream)) {
        pendingSseReleases--;
        sendSse(stream);
      }
      return;
    }

    if (path === '/slow') {
      req.resume();
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
      if (method === 'HEAD') return void res.end();
      res.write('slow start\n');
      slowResponses.add(res);
      res.on('close', () => slowResponses.delete(res));
      const ms = Number(q.get('ms'));
      if (q.has('ms') && Number.isFinite(ms) && ms >= 0) {
        const timer = setTimeout(() => {
          timers.delete(timer);
          finishSlow(res);
        }, ms);
        timers.add(timer);
        res.on('close', () => {
          clearTimeout(timer);
          timers.delete(timer);
        });
      }
      return;
    }

    if (path === '/chunked') {
      req.resume();
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
      if (method === 'HEAD') return void res.end();
      let i = 1;
      // One write per turn of the event loop, so the parts really leave as separate chunks.
      const writeNext = () => {
        if (res.destroyed) return;
        if (i > 5) return void res.end();
        res.write(`chunk ${i++}\n`);
        setImmediate(writeNext);
      };
      writeNext();
      return;
    }

    if (path.startsWith('/status/')) {
      const status = parseStatus(path.slice('/status/'.length));
      if (status === undefined) return void drainThen(req, () => reply(res, 400, 'bad status\n'));
      return void drainThen(req, () => reply(res, status, `status ${status}\n`));
    }

    if (path === '/ws') return void drainThen(req, () => reply(res, 426, 'this route expects a WebSocket\n'));

    drainThen(req, () => reply(res, 404, 'not found\n'));
  });

  server.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    requests++;
    upgradeSockets.add(socket);
    socket.on('close', () => upgradeSockets.delete(socket));
    socket.on('error', () => socket.destroy());
    const path = (req.url ?? '/').split('?', 1)[0];
    if (path !== '/ws' || (req.headers.upgrade ?? '').toLowerCase() !== 'websocket') {
      socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });

  server.listen(0, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  const port = (server.address() as AddressInfo).port;

  let closing: Promise<void> | undefined;

  return {
    port,
    url: `http://127.0.0.1:${port}`,
    get requests() {
      return requests;
    },
    sse: {
      next() {
        if (sseStreams.size === 0) {
          pendingSseReleases++;
          return;
        }
        for (const stream of [...sseStreams]) sendSse(stream);
      },
    },
    release() {
      for (const res of [...slowResponses]) finishSlow(res);
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const timer of timers) clearTimeout(timer);
        timers.clear();
        for (const ws of wss.clients) ws.terminate();
        wss.close();
        for (const socket of upgradeSockets) socket.destroy();
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

function parseStatus(s: string): number | undefined {
  const n = Number(s);
  return Number.isInteger(n) && n >= 200 && n <= 599 ? n : undefined;
}

function bodyAllowed(status: number): boolean {
  return status !== 204 && status !== 304;
}

function reply(res: http.ServerResponse, status: number, text: string): void {
  if (res.headersSent) return void res.destroy();
  if (!bodyAllowed(status)) {
    res.writeHead(status);
    res.end();
    return;
  }
  const body = Buffer.from(text);
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': body.length });
  res.end(body);
}

function replyJson(res: http.ServerResponse, status: number, value: unknown): void {
  const body = Buffer.from(JSON.stringify(value));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': body.length });
  res.end(body);
}

function methodNotAllowed(req: http.IncomingMessage, res: http.ServerResponse, allow: string): void {
  res.setHeader('allow', allow);
  drainThen(req, () => reply(res, 405, 'method not allowed\n'));
}

/** Reads the request body; `undefined` (with the rest discarded) when it exceeds `maxBytes`. */
function readBody(req: http.IncomingMessage, maxBytes: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    req.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      if (bytes <= maxBytes) chunks.push(chunk);
    });
    req.on('end', () => resolve(bytes <= maxBytes ? Buffer.concat(chunks) : undefined));
    req.on('error', reject);
  });
}

/** Answers once the request body has been read, so keep-alive connections stay in sync. */
function drainThen(req: http.IncomingMessage, fn: () => void): void {
  if (req.readableEnded) return fn();
  req.on('end', fn);
  req.on('error', () => {});
  req.resume();
}

/** Writes every chunk, waiting for 'drain' whenever write() says the socket is full. */
async function writeAll(res: http.ServerResponse, chunks: Iterable<Buffer>): Promise<void> {
  for (const chunk of chunks) {
    if (res.destroyed) return;
    if (!res.write(chunk)) {
      const open = await drainOrClose(res);
      if (!open) return;
    }
  }
  res.end();
}

function drainOrClose(res: http.ServerResponse): Promise<boolean> {
  return new Promise((resolve) => {
    const onDrain = () => {
      res.off('close', onClose);
      resolve(true);
    };
    const onClose = () => {
      res.off('drain', onDrain);
      resolve(false);
    };
    res.once('drain', onDrain);
    res.once('close', onClose);
  });
}

function destroyOnError(res: http.ServerResponse): () => void {
  return () => res.destroy();
}
