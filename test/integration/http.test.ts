/**
 * HTTP through a real edge and agent (in this process, real sockets on loopback): requests and
 * bodies both ways, the forwarding headers the origin sees, chunked framing, server-sent events
 * without buffering, and WebSockets.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type http from 'node:http';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { requestStream, sha256Stream } from '../support/http.ts';
import { deterministicBytes, sha256OfDeterministic } from '../support/origin.ts';
import { type Stack, startStack } from '../support/stack.ts';
import { onceWithDeadline, withDeadline } from '../support/wait.ts';

const DEADLINE_MS = 10_000;

interface Echo {
  method: string;
  url: string;
  httpVersion: string;
  rawHeaders: string[];
  bodyBase64: string;
}

function parseEcho(body: Buffer): Echo {
  return JSON.parse(body.toString('utf8')) as Echo;
}

/** Every value of `name` (case-insensitive) in a flat raw header list, in order. */
function valuesOf(rawHeaders: readonly string[], name: string): string[] {
  const lower = name.toLowerCase();
  const out: string[] = [];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.toLowerCase() === lower) out.push(rawHeaders[i + 1]!);
  }
  return out;
}

/** Reads from a response body until `text` has arrived (in total); returns everything read so far. */
async function readUntil(
  iterator: AsyncIterator<Buffer>,
  soFar: { text: string },
  text: string,
): Promise<string> {
  while (!soFar.text.includes(text)) {
    const next = await withDeadline(iterator.next(), DEADLINE_MS, `waiting for ${JSON.stringify(text)}`);
    if (next.done) throw new Error(`the body ended before ${JSON.stringify(text)}; got ${soFar.text}`);
    soFar.text += next.value.toString('utf8');
  }
  return soFar.text;
}

describe('HTTP through the tunnel', () => {
  let stack: Stack;
  before(async () => {
    stack = await startStack();
  });
  after(async () => {
    await stack?.close();
  });

  it('GET reaches the origin with the method, target and visitor headers intact', async () => {
    const res = await stack.request('/echo?q=1&r=%2Fx', {
      headers: ['X-Custom', 'one', 'x-custom', 'two', 'Accept', 'application/json'],
    });
    assert.equal(res.status, 200);
    const echo = parseEcho(res.body);
    assert.equal(echo.method, 'GET');
    assert.equal(echo.url, '/echo?q=1&r=%2Fx');
    // Order, case and duplicates kept.
    const custom = echo.rawHeaders.flatMap((h, i) => (i % 2 === 0 && /^x-custom$/i.test(h) ? [h] : []));
    assert.deepEqual(custom, ['X-Custom', 'x-custom']);
    assert.deepEqual(valuesOf(echo.rawHeaders, 'x-custom'), ['one', 'two']);
    assert.deepEqual(valuesOf(echo.rawHeaders, 'host'), [stack.hostname]);
  });

  it('the origin sees X-Forwarded-For, X-Forwarded-Proto and Warren-Connecting-IP', async () => {
    const res = await stack.request('/echo');
    const echo = parseEcho(res.body);
    assert.deepEqual(valuesOf(echo.rawHeaders, 'x-forwarded-for'), ['127.0.0.1']);
    assert.deepEqual(valuesOf(echo.rawHeaders, 'x-forwarded-proto'), ['http']);
    assert.deepEqual(valuesOf(echo.rawHeaders, 'warren-connecting-ip'), ['127.0.0.1']);
  });

  it("a visitor's Warren-Connecting-IP and X-Forwarded-Proto are replaced; X-Forwarded-For is appended to", async () => {
    const res = await stack.request('/echo', {
      headers: [
        'Warren-Connecting-IP',
        '6.6.6.6',
        'warren-connecting-ip',
        '7.7.7.7',
        'X-Forwarded-Proto',
        'https',
        'X-Forwarded-For',
        '203.0.113.7',
      ],
    });
    const echo = parseEcho(res.body);
    assert.deepEqual(valuesOf(echo.rawHeaders, 'warren-connecting-ip'), ['127.0.0.1']);
    assert.deepEqual(valuesOf(echo.rawHeaders, 'x-forwarded-proto'), ['http']);
    assert.deepEqual(valuesOf(echo.rawHeaders, 'x-forwarded-for'), ['203.0.113.7, 127.0.0.1']);
  });

  it('hop-by-hop headers from the visitor, and those named by Connection, do not reach the origin', async () => {
    const res = await stack.request('/echo', {
      headers: [
        'Connection',
        'keep-alive, X-Hop',
        'X-Hop',
        'secret',
        'Keep-Alive',
        'timeout=5',
        'X-End',
        'kept',
      ],
    });
    const echo = parseEcho(res.body);
    assert.deepEqual(valuesOf(echo.rawHeaders, 'x-hop'), []);
    assert.deepEqual(valuesOf(echo.rawHeaders, 'keep-alive'), []);
    assert.deepEqual(valuesOf(echo.rawHeaders, 'x-end'), ['kept']);
  });

  it('POST carries a binary body to the origin and back', async () => {
    const body = randomBytes(300 * 1024);
    const res = await stack.request('/echo', { method: 'POST', body });
    assert.equal(res.status, 200);
    const echo = parseEcho(res.body);
    assert.equal(echo.method, 'POST');
    assert.deepEqual(valuesOf(echo.rawHeaders, 'content-length'), [String(body.length)]);
    assert.ok(Buffer.from(echo.bodyBase64, 'base64').equals(body));
  });

  it('a 16 MiB upload with Content-Length arrives whole', async () => {
    const n = 16 * 1024 * 1024;
    const res = await stack.request('/upload', {
      method: 'PUT',
      headers: { 'content-length': String(n) },
      body: deterministicBytes(n, 11),
      timeoutMs: 60_000,
    });
    assert.equal(res.status, 200);
    assert.deepEqual(JSON.parse(res.body.toString()), { bytes: n, sha256: sha256OfDeterministic(n, 11) });
  });

  it('a chunked request body reaches the origin chunked and whole', async () => {
    const parts = [Buffer.from('first,'), randomBytes(70_000), Buffer.from(''), Buffer.from(',last')];
    const res = await stack.request('/echo', { method: 'POST', body: parts });
    const echo = parseEcho(res.body);
    assert.deepEqual(valuesOf(echo.rawHeaders, 'transfer-encoding'), ['chunked']);
    assert.deepEqual(valuesOf(echo.rawHeaders, 'content-length'), []);
    assert.ok(Buffer.from(echo.bodyBase64, 'base64').equals(Buffer.concat(parts)));
  });

  for (const method of ['DELETE', 'GET', 'OPTIONS']) {
    it(`a chunked body on ${method} (not chunked by default in node) reaches the origin intact`, async () => {
      const parts = [Buffer.from('alpha-'), Buffer.from('beta')];
      const res = await stack.request('/echo', { method, body: parts });
      assert.equal(res.status, 200);
      const echo = parseEcho(res.body);
      assert.equal(echo.method, method);
      assert.equal(Buffer.from(echo.bodyBase64, 'base64').toString(), 'alpha-beta');
      // The tunnel still works afterwards (a misframed body would poison the origin connection).
      const again = await stack.request('/echo');
      assert.equal(again.status, 200);
      assert.equal(parseEcho(again.body).bodyBase64, '');
    });
  }

  it('a chunked response arrives chunked and whole', async () => {
    const res = await stack.request('/chunked');
    assert.equal(res.status, 200);
    assert.equal(res.headers['transfer-encoding'], 'chunked');
    assert.equal(res.headers['content-length'], undefined);
    assert.equal(res.body.toString(), 'chunk 1\nchunk 2\nchunk 3\nchunk 4\nchunk 5\n');
  });

  it('an 8 MiB chunked download keeps every byte', async () => {
    const n = 8 * 1024 * 1024;
    const res = await requestStream({
      port: stack.visitorPort,
      host: stack.hostname,
      path: `/bytes?n=${n}&seed=5&chunked=1`,
    });
    assert.equal(res.headers['transfer-encoding'], 'chunked');
    assert.deepEqual(await sha256Stream(res), { bytes: n, sha256: sha256OfDeterministic(n, 5) });
  });

  it('status codes and reason phrases pass through', async () => {
    for (const code of [201, 204, 404, 418, 500, 503]) {
      const res = await stack.request(`/status/${code}`);
      assert.equal(res.status, code);
      assert.equal(res.headers['warren-error'], undefined);
    }
  });

  it('server-sent events arrive one by one, not buffered', async () => {
    const res: http.IncomingMessage = await requestStream({
      port: stack.visitorPort,
      host: stack.hostname,
      path: '/sse?n=4',
    });
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers['content-type'], 'text/event-stream');
    const iterator = res[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
    const soFar = { text: '' };
    // The origin sends event k+1 only when told to; telling it only after event k arrived proves that
    // nothing on the way held event k back.
    await readUntil(iterator, soFar, 'data: 1\n\n');
    for (let k = 2; k <= 4; k++) {
      assert.ok(!soFar.text.includes(`data: ${k}\n\n`));
      stack.origin.sse.next();
      await readUntil(iterator, soFar, `data: ${k}\n\n`);
    }
    const end = await withDeadline(iterator.next(), DEADLINE_MS, 'the end of the SSE stream');
    assert.equal(end.done, true);
    assert.equal(soFar.text, 'data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n');
  });

  it('WebSocket: text and binary frames echo through the tunnel', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${stack.visitorPort}/ws`, {
      headers: { host: stack.hostname },
    });
    try {
      // ws emits 'open' in the same tick as 'upgrade': listen for both before awaiting either.
      const upgraded = onceWithDeadline(ws, 'upgrade', DEADLINE_MS) as Promise<[http.IncomingMessage]>;
      const opened = onceWithDeadline(ws, 'open', DEADLINE_MS);
      const [upgrade] = await upgraded;
      assert.equal(upgrade.statusCode, 101);
      await opened;

      const roundTrip = async (data: string | Buffer) => {
        const reply = onceWithDeadline(ws, 'message', DEADLINE_MS) as Promise<[Buffer, boolean]>;
        ws.send(data);
        return reply;
      };
      const [text, textIsBinary] = await roundTrip('hello through the tunnel ✓');
      assert.equal(textIsBinary, false);
      assert.equal(text.toString('utf8'), 'hello through the tunnel ✓');

      const small = randomBytes(17);
      const [bin, binIsBinary] = await roundTrip(small);
      assert.equal(binIsBinary, true);
      assert.ok(Buffer.from(bin).equals(small));

      // Bigger than a stream window, so credit has to flow both ways mid-message.
      const big = randomBytes(1024 * 1024 + 3);
      const [bigEcho, bigIsBinary] = await roundTrip(big);
      assert.equal(bigIsBinary, true);
      assert.ok(Buffer.from(bigEcho).equals(big));

      // Many frames in flight at once come back in order.
      const received: string[] = [];
      const all = new Promise<void>((resolve) => {
        const onMessage = (data: Buffer) => {
          received.push(data.toString());
          if (received.length === 50) {
            ws.off('message', onMessage);
            resolve();
          }
        };
        ws.on('message', onMessage);
      });
      for (let i = 0; i < 50; i++) ws.send(`m${i}`);
      await withDeadline(all, DEADLINE_MS, '50 echoed messages');
      assert.deepEqual(
        received,
        Array.from({ length: 50 }, (_, i) => `m${i}`),
      );

      const closed = onceWithDeadline(ws, 'close', DEADLINE_MS) as Promise<[number, Buffer]>;
      ws.close(1000, 'done');
      const [code] = await closed;
      assert.equal(code, 1000);
    } finally {
      ws.terminate();
    }
  });

  it('a WebSocket request to a route that refuses it gets the origin answer', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${stack.visitorPort}/not-ws`, {
      headers: { host: stack.hostname },
    });
    ws.on('error', () => {});
    try {
      const [, res] = (await onceWithDeadline(ws, 'unexpected-response', DEADLINE_MS)) as [
        unknown,
        http.IncomingMessage,
      ];
      assert.equal(res.statusCode, 404);
      res.resume();
    } finally {
      ws.terminate();
    }
  });
});
