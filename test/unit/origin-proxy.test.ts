/**
 * The agent's origin proxy on its own: real warren/1 streams over a loopback socket (createMuxPair),
 * real origins on 127.0.0.1. The edge side of the pair opens streams as the edge would.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { after, describe, it } from 'node:test';
import { OriginProxy, type OriginProxyInit } from '../../src/agent/origin-proxy.ts';
import { createEdgeTls } from '../../src/edge/ca.ts';
import { type Clock, ManualClock, systemClock } from '../../src/shared/clock.ts';
import { silentLogger } from '../../src/shared/log.ts';
import { INLINE_BODY_BYTES, type RequestHead, type ResponseHead } from '../../src/transport/messages.ts';
import type { MuxStream } from '../../src/transport/session.ts';
import { createMuxPair, type MuxPair } from '../support/mux-pair.ts';
import { waitFor, withDeadline } from '../support/wait.ts';

interface Exchange {
  head: ResponseHead;
  body: Buffer;
}

/**
 * A mux pair whose agent side hands every stream to a fresh OriginProxy, at once or once `handleWhen`
 * resolves (as when a stream waits for a slot). `handled` holds each `handle()` promise.
 */
async function proxied(
  init: OriginProxyInit,
  clock: Clock = systemClock,
  handleWhen?: (stream: MuxStream) => Promise<unknown>,
): Promise<{ pair: MuxPair; proxy: OriginProxy; handled: Promise<void>[] }> {
  const pair = await createMuxPair({ clock });
  const proxy = new OriginProxy({ clock, log: silentLogger }, init);
  const handled: Promise<void>[] = [];
  const sub = pair.agent.streams$.subscribe((stream) => {
    handled.push(handleWhen ? handleWhen(stream).then(() => proxy.handle(stream)) : proxy.handle(stream));
  });
  after(async () => {
    sub.unsubscribe();
    proxy.close();
    await pair.close();
  });
  return { pair, proxy, handled };
}

function exchange(pair: MuxPair, head: RequestHead, body?: Buffer[]): Promise<Exchange> {
  const stream: MuxStream = pair.edge.openStream(head, { endStream: body === undefined });
  if (body !== undefined) {
    for (const b of body) stream.write(b);
    stream.end();
  }
  return withDeadline(
    new Promise<Exchange>((resolve, reject) => {
      stream.once('response', (h: ResponseHead) => {
        // A small body may come inside the head; the stream carries the rest.
        const parts: Buffer[] = h.body ? [h.body] : [];
        stream.on('data', (c: Buffer) => parts.push(c));
        stream.once('end', () => resolve({ head: h, body: Buffer.concat(parts) }));
      });
      stream.once('error', reject);
    }),
    5000,
    `no answer to ${head.method} ${head.target}`,
  );
}

const get = (target: string, headers: string[] = ['Host', 'app.test']): RequestHead => ({
  kind: 'http',
  method: 'GET',
  target,
  headers,
});

/** An HTTP origin (HTTPS with `tls`) that counts the connections it accepted and still holds. */
async function countingOrigin(
  handler: http.RequestListener,
  tls?: { key: string; cert: string },
): Promise<{ url: URL; accepted: () => number; open: () => number }> {
  const server = tls ? https.createServer(tls, handler) : http.createServer(handler);
  let accepted = 0;
  const sockets = new Set<net.Socket>();
  server.on('connection', (s: net.Socket) => {
    accepted++;
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  after(() => {
    server.closeAllConnections();
    server.close();
  });
  const { port } = server.address() as net.AddressInfo;
  const scheme = tls ? 'https' : 'http';
  return {
    url: new URL(`${scheme}://127.0.0.1:${port}`),
    accepted: () => accepted,
    open: () => sockets.size,
  };
}

/** A TCP server that runs `onSocket` for each connection (for origins that do not speak proper HTTP). */
async function rawOrigin(
  onSocket: (s: net.Socket) => void,
): Promise<{ port: number; accepted: Promise<unknown> }> {
  const server = net.createServer(onSocket);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const sockets = new Set<net.Socket>();
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('error', () => {});
  });
  after(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { port: (server.address() as net.AddressInfo).port, accepted: once(server, 'connection') };
}

describe('origin proxy', () => {
  it('reuses one keep-alive connection for sequential requests and keeps the raw response headers', async () => {
    const origin = await countingOrigin((_req, res) => {
      res.setHeader('Set-Cookie', ['a=1', 'b=2']);
      res.setHeader('X-Case-Kept', 'yes');
      res.end('hello');
    });
    const { pair } = await proxied({ originUrl: origin.url });
    for (let i = 0; i < 20; i++) {
      const { head, body } = await exchange(pair, get(`/n/${i}`));
      assert.equal(head.status, 200);
      assert.equal(body.toString(), 'hello');
      const names = head.headers.filter((_, j) => j % 2 === 0);
      assert.deepEqual(
        names.filter((n) => n === 'Set-Cookie' || n === 'X-Case-Kept'),
        ['Set-Cookie', 'Set-Cookie', 'X-Case-Kept'],
      );
      assert.ok(!names.some((n) => n.toLowerCase() === 'connection' || n.toLowerCase() === 'keep-alive'));
    }
    assert.equal(origin.accepted(), 1);
  });

  it('keeps at most keepAliveConnections idle connections and closes the rest', async () => {
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    let waiting = 0;
    const origin = await countingOrigin((_req, res) => {
      waiting++;
      void gate.then(() => res.end('ok'));
    });
    const { pair } = await proxied({ originUrl: origin.url, keepAliveConnections: 2 });
    const all = Array.from({ length: 6 }, (_, i) => exchange(pair, get(`/p/${i}`)));
    // Six requests in flight at once need six connections.
    await waitFor(() => waiting === 6, { timeoutMs: 5000, message: 'six requests at the origin' });
    assert.equal(origin.accepted(), 6);
    release();
    for (const r of await Promise.all(all)) assert.equal(r.body.toString(), 'ok');
    await waitFor(() => origin.open() === 2, {
      timeoutMs: 5000,
      message: 'the origin left with two connections',
    });
  });

  it('takes a body to the origin without Expect and hop-by-hop headers', async () => {
    let seen: { headers: string[]; body: string } | undefined;
    const origin = await countingOrigin((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (c: Buffer) => parts.push(c));
      req.once('end', () => {
        seen = { headers: req.rawHeaders, body: Buffer.concat(parts).toString() };
        res.end('got it');
      });
    });
    const { pair } = await proxied({ originUrl: origin.url });
    const { head, body } = await exchange(
      pair,
      {
        kind: 'http',
        method: 'POST',
        target: '/up',
        headers: ['Host', 'app.test', 'Expect', '100-continue', 'Keep-Alive', 'timeout=1', 'X-Mine', 'v'],
      },
      [Buffer.from('part one, '), Buffer.from('part two')],
    );
    assert.equal(head.status, 200);
    assert.equal(body.toString(), 'got it');
    assert.equal(seen?.body, 'part one, part two');
    const names = seen!.headers.filter((_, j) => j % 2 === 0).map((n) => n.toLowerCase());
    assert.ok(names.includes('x-mine'));
    assert.ok(!names.includes('expect'));
    assert.ok(!names.includes('keep-alive'));
    // No Content-Length from the visitor: the body went chunked.
    assert.ok(names.includes('transfer-encoding'));
  });

  it('answers 502 origin_unreachable when nothing listens', async () => {
    const free = net.createServer();
    free.listen(0, '127.0.0.1');
    await once(free, 'listening');
    const { port } = free.address() as net.AddressInfo;
    free.close();
    await once(free, 'close');
    const { pair } = await proxied({ originUrl: new URL(`http://127.0.0.1:${port}`) });
    const { head } = await exchange(pair, get('/'));
    assert.equal(head.status, 502);
    assert.equal(head.error?.code, 'origin_unreachable');
  });

  it('answers 502 origin_bad_response when the origin does not speak HTTP/1.1', async () => {
    const origin = await rawOrigin((s) => {
      s.once('data', () => s.end('HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\nhello'));
    });
    const { pair } = await proxied({ originUrl: new URL(`http://127.0.0.1:${origin.port}`) });
    const { head } = await exchange(pair, get('/'));
    assert.equal(head.status, 502);
    assert.equal(head.error?.code, 'origin_bad_response', head.error?.message);
  });

  it('answers 502 origin_tls when an https origin does not speak TLS', async () => {
    const origin = await rawOrigin((s) => {
      s.once('data', () => s.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
    });
    const { pair } = await proxied({ originUrl: new URL(`https://127.0.0.1:${origin.port}`) });
    const { head } = await exchange(pair, get('/'));
    assert.equal(head.status, 502);
    assert.equal(head.error?.code, 'origin_tls');
  });

  it('answers 504 origin_timeout when the connection is not made within the connect timeout (on the injected clock)', async () => {
    // TCP connects, but the TLS handshake never gets an answer: the connect timeout covers both.
    const origin = await rawOrigin(() => {});
    const clock = new ManualClock();
    const { pair } = await proxied(
      { originUrl: new URL(`https://127.0.0.1:${origin.port}`), connectTimeoutMs: 30_000 },
      clock,
    );
    const answer = exchange(pair, get('/'));
    await withDeadline(origin.accepted, 5000, 'the agent never dialled the origin');
    clock.advance(29_999);
    clock.advance(1);
    const { head } = await answer;
    assert.equal(head.status, 504);
    assert.equal(head.error?.code, 'origin_timeout');
  });

  it('stops the origin request when the visitor goes away mid-response', async () => {
    let originGone: Promise<unknown> = Promise.resolve();
    const origin = await countingOrigin((req, res) => {
      originGone = once(req.socket, 'close');
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.write('first part');
    });
    const { pair } = await proxied({ originUrl: origin.url });
    const stream = pair.edge.openStream(get('/slow'), { endStream: true });
    const [first] = (await withDeadline(once(stream, 'response'), 5000, 'no first part')) as [ResponseHead];
    assert.equal(first.body?.toString(), 'first part');
    stream.reset();
    await withDeadline(
      waitFor(() => origin.accepted() === 1, { timeoutMs: 5000, message: 'origin connection' }).then(
        () => originGone,
      ),
      5000,
      'the origin connection stayed open after the visitor left',
    );
  });

  it('finishes the stream when the origin answers before the request body is all sent', async () => {
    const origin = await countingOrigin((_req, res) => {
      res.writeHead(413, { 'Content-Length': 0 });
      res.end();
    });
    const { pair, handled } = await proxied({ originUrl: origin.url });
    const stream = pair.edge.openStream({
      kind: 'http',
      method: 'POST',
      target: '/big',
      headers: ['Host', 'a.test'],
    });
    stream.write(Buffer.alloc(16 * 1024, 1));
    const [head] = (await withDeadline(once(stream, 'response'), 5000, 'no early answer')) as [ResponseHead];
    assert.equal(head.status, 413);
    stream.resume();
    // The rest of the body comes after the answer, as from a visitor who does not read it.
    for (let i = 0; i < 4; i++) stream.write(Buffer.alloc(16 * 1024, 2));
    stream.end();
    await withDeadline(handled[0]!, 5000, 'the agent never let go of the stream (its slot stays taken)');
  });

  it('sends the whole body of a stream that arrived complete before it was handled', async () => {
    const origin = await countingOrigin((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (c: Buffer) => parts.push(c));
      req.once('end', () => res.end(`got ${Buffer.concat(parts).toString()}`));
    });
    const { pair } = await proxied({ originUrl: origin.url }, systemClock, (stream) =>
      waitFor(() => stream.remoteEnded, { timeoutMs: 5000, message: 'the whole request to arrive' }),
    );
    const { head, body } = await exchange(
      pair,
      { kind: 'http', method: 'POST', target: '/form', headers: ['Host', 'a.test', 'Content-Length', '9'] },
      [Buffer.from('all of it')],
    );
    assert.equal(head.status, 200);
    assert.equal(body.toString(), 'got all of it');
  });

  it('keeps one TLS connection to an https origin whatever Host the visitors use', async () => {
    const material = await createEdgeTls('origin.test');
    const origin = await countingOrigin((_req, res) => res.end('secure'), {
      key: material.serverKeyPem,
      cert: material.serverCertPem,
    });
    const { pair } = await proxied({ originUrl: origin.url, noTlsVerify: true });
    for (let i = 0; i < 6; i++) {
      const { body } = await exchange(pair, get('/', ['Host', i % 2 === 0 ? 'a.test' : 'b.test']));
      assert.equal(body.toString(), 'secure');
    }
    assert.equal(origin.accepted(), 1);
  });

  it('sends the first of two Host headers, and answers 502 origin_request_invalid for a target undici cannot send', async () => {
    const hosts: string[] = [];
    const origin = await countingOrigin((req, res) => {
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        if (req.rawHeaders[i]!.toLowerCase() === 'host') hosts.push(req.rawHeaders[i + 1]!);
      }
      res.end('ok');
    });
    const { pair } = await proxied({ originUrl: origin.url });
    const twoHosts = await exchange(pair, get('/', ['Host', 'a.test', 'Host', 'b.test']));
    assert.equal(twoHosts.head.status, 200);
    assert.deepEqual(hosts, ['a.test']);
    const star = await exchange(pair, {
      kind: 'http',
      method: 'OPTIONS',
      target: '*',
      headers: ['Host', 'a.test'],
    });
    assert.equal(star.head.status, 502);
    assert.equal(star.head.error?.code, 'origin_request_invalid');
  });

  it('sends a small whole answer inside the head with END, and a large one as head, first bytes and DATA', async () => {
    const big = Buffer.alloc(100 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = i % 251;
    const origin = await countingOrigin((req, res) => {
      if (req.url === '/small') res.end('tiny');
      else res.end(big);
    });
    const { pair } = await proxied({ originUrl: origin.url });

    const small = pair.edge.openStream(get('/small'), { endStream: true });
    const [smallHead] = (await withDeadline(once(small, 'response'), 5000, 'no small answer')) as [
      ResponseHead,
    ];
    assert.equal(smallHead.body?.toString(), 'tiny');
    assert.equal(small.remoteEnded, true, 'the head carried END');

    const { head, body } = await exchange(pair, get('/big'));
    assert.ok((head.body?.length ?? 0) <= INLINE_BODY_BYTES);
    assert.ok(body.equals(big), 'the inline bytes and the DATA frames make the whole body, in order');
  });
});
