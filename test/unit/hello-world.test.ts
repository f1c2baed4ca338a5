import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { type HelloWorldServer, startHelloWorld } from '../../src/agent/hello-world.ts';
import { request, requestStream } from '../support/http.ts';
import { onceWithDeadline, withDeadline } from '../support/wait.ts';

const DEADLINE_MS = 5000;

describe('hello-world origin', () => {
  let hello: HelloWorldServer;
  before(async () => {
    hello = await startHelloWorld();
  });
  after(async () => {
    await hello.close();
  });

  it('listens on loopback with an ephemeral port', () => {
    assert.ok(hello.port > 0);
    assert.equal(hello.url, `http://127.0.0.1:${hello.port}/`);
  });

  it('GET / shows the request line and every header in order, escaped and highlighted', async () => {
    const res = await request({
      port: hello.port,
      path: '/?a=1&b=<2>',
      headers: [
        'Host',
        'hello.example.localhost',
        'X-Custom',
        '<script>alert("x")</script> & \'more\'',
        'X-Forwarded-For',
        '203.0.113.7',
        'warren-connecting-ip',
        '203.0.113.7',
        'X-Forwarded-Proto',
        'https',
        'X-Later',
        'last',
      ],
    });
    assert.equal(res.status, 200);
    assert.match(String(res.headers['content-type']), /^text\/html/);
    const html = res.body.toString('utf8');
    assert.match(html, /<title>Warren — hello world<\/title>/);
    assert.match(html, /through a Warren tunnel/);
    assert.ok(html.includes('GET /?a=1&amp;b=&lt;2&gt; HTTP/1.1'));
    assert.ok(html.includes('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;more&#39;'));
    assert.ok(!html.includes('<script>alert'));
    // Order as received.
    const positions = ['hello.example.localhost', 'X-Custom', 'X-Forwarded-For', 'X-Later'].map((s) =>
      html.indexOf(s),
    );
    assert.ok(positions.every((p) => p > 0));
    assert.deepEqual(
      [...positions].sort((a, b) => a - b),
      positions,
    );
    // The edge's headers are highlighted, in whatever case they arrive.
    for (const name of ['X-Forwarded-For', 'warren-connecting-ip', 'X-Forwarded-Proto']) {
      assert.ok(html.includes(`<tr class="hl"><td class="n">${name}<`), `${name} highlighted`);
    }
    assert.ok(html.includes('<tr><td class="n">X-Later<'));
    // A same-host WebSocket that follows the page's scheme.
    assert.ok(html.includes("location.protocol === 'https:' ? 'wss:' : 'ws:'"));
    assert.ok(html.includes("'/ws'"));
    // Self-contained: no external assets.
    assert.ok(!/\b(src|href)="https?:/.test(html));
  });

  it('HEAD / answers the head only', async () => {
    const get = await request({ port: hello.port, path: '/' });
    const head = await request({ port: hello.port, method: 'HEAD', path: '/' });
    assert.equal(head.status, 200);
    assert.equal(head.body.length, 0);
    assert.equal(head.headers['content-type'], get.headers['content-type']);
    assert.ok(Number(head.headers['content-length']) > 0);
  });

  it('GET /health answers ok', async () => {
    const res = await request({ port: hello.port, path: '/health' });
    assert.equal(res.status, 200);
    assert.equal(res.body.toString(), 'ok');
  });

  it('anything else is a 404 page', async () => {
    const res = await request({ port: hello.port, path: '/nope/<x>' });
    assert.equal(res.status, 404);
    const html = res.body.toString();
    assert.match(html, /404/);
    assert.ok(html.includes('/nope/&lt;x&gt;'));
  });

  it('GET /sse starts a tick stream at once', async () => {
    const res = await requestStream({ port: hello.port, path: '/sse' });
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers['content-type']), /^text\/event-stream/);
    const it = res[Symbol.asyncIterator]();
    const first = await withDeadline(it.next(), DEADLINE_MS, 'first SSE tick');
    assert.equal(String(first.value), 'data: tick 1\n\n');
    res.destroy();
  });

  it('/ws echoes text as text and binary as binary', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${hello.port}/ws`);
    await onceWithDeadline(ws, 'open', DEADLINE_MS);

    ws.send('hello, warren');
    const [text, textIsBinary] = await onceWithDeadline(ws, 'message', DEADLINE_MS);
    assert.equal(textIsBinary, false);
    assert.equal(String(text), 'hello, warren');

    const bytes = Buffer.from([0, 1, 2, 255, 254, 0x80]);
    ws.send(bytes);
    const [binary, binaryIsBinary] = await onceWithDeadline(ws, 'message', DEADLINE_MS);
    assert.equal(binaryIsBinary, true);
    assert.deepEqual(binary, bytes);

    ws.close();
    await onceWithDeadline(ws, 'close', DEADLINE_MS);
  });

  it('a WebSocket upgrade elsewhere is refused', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${hello.port}/other`);
    const [err] = await onceWithDeadline(ws, 'error', DEADLINE_MS);
    assert.match(String(err), /404/);
  });
});

describe('hello-world close()', () => {
  it('returns promptly with an idle keep-alive socket, an open WebSocket and an SSE stream', async () => {
    const hello = await startHelloWorld();
    const agent = new http.Agent({ keepAlive: true });
    try {
      const res = await request({ port: hello.port, path: '/health', agent });
      assert.equal(res.status, 200);
      assert.equal(Object.values(agent.freeSockets).flat().length, 1, 'an idle keep-alive socket');

      const sse = await requestStream({ port: hello.port, path: '/sse' });
      sse.on('error', () => {});
      sse.resume();

      const ws = new WebSocket(`ws://127.0.0.1:${hello.port}/ws`);
      await onceWithDeadline(ws, 'open', DEADLINE_MS);
      const wsClosed = onceWithDeadline(ws, 'close', DEADLINE_MS);

      await withDeadline(hello.close(), DEADLINE_MS, 'hello.close()');
      await wsClosed;
      await withDeadline(hello.close(), DEADLINE_MS, 'second close() is a no-op');
    } finally {
      agent.destroy();
    }
  });
});
