import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type http from 'node:http';
import { PassThrough } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { request, requestStream, sha256Stream } from '../support/http.ts';
import {
  deterministicBytes,
  sha256OfDeterministic,
  startTestOrigin,
  type TestOrigin,
} from '../support/origin.ts';
import { onceWithDeadline, withDeadline } from '../support/wait.ts';

const DEADLINE_MS = 5000;

/** Reads from a response until the text received so far satisfies `done`; returns that text. */
async function readUntil(
  it: AsyncIterator<Buffer>,
  done: (text: string) => boolean,
  what: string,
  soFar = '',
): Promise<string> {
  let text = soFar;
  while (!done(text)) {
    const next = await withDeadline(it.next(), DEADLINE_MS, what);
    assert.ok(!next.done, `stream ended before ${what}; got ${JSON.stringify(text)}`);
    text += next.value.toString('utf8');
  }
  return text;
}

async function readRest(it: AsyncIterator<Buffer>, what: string): Promise<string> {
  let text = '';
  for (;;) {
    const next = await withDeadline(it.next(), DEADLINE_MS, what);
    if (next.done) return text;
    text += next.value.toString('utf8');
  }
}

function chunksOf(res: http.IncomingMessage): AsyncIterator<Buffer> {
  return res[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
}

describe('deterministicBytes', () => {
  it('gives exactly n bytes in chunks of at most 64 KiB, the same for the same seed', () => {
    const a = Buffer.concat([...deterministicBytes(200_003, 7)]);
    const b = Buffer.concat([...deterministicBytes(200_003, 7)]);
    assert.equal(a.length, 200_003);
    assert.ok(a.equals(b));
    assert.ok([...deterministicBytes(200_003, 7)].every((c) => c.length <= 64 * 1024));
    assert.ok(!a.equals(Buffer.concat([...deterministicBytes(200_003, 8)])));
    assert.equal([...deterministicBytes(0, 1)].length, 0);
  });

  it('is prefix-stable across lengths, and sha256OfDeterministic matches it', () => {
    const long = Buffer.concat([...deterministicBytes(70_000, 3)]);
    const short = Buffer.concat([...deterministicBytes(101, 3)]);
    assert.ok(long.subarray(0, 101).equals(short));
    assert.equal(sha256OfDeterministic(70_000, 3), createHash('sha256').update(long).digest('hex'));
  });
});

describe('test origin', () => {
  let origin: TestOrigin;
  before(async () => {
    origin = await startTestOrigin();
  });
  after(async () => {
    await origin.close();
  });

  it('/echo reports method, url, version, raw headers and body', async () => {
    const before = origin.requests;
    const res = await request({
      port: origin.port,
      method: 'PUT',
      path: '/echo?x=1',
      headers: ['Host', 'a.example', 'X-Dup', '1', 'x-dup', '2'],
      body: 'hello body',
    });
    assert.equal(res.status, 200);
    const json = JSON.parse(res.body.toString());
    assert.equal(json.method, 'PUT');
    assert.equal(json.url, '/echo?x=1');
    assert.equal(json.httpVersion, '1.1');
    assert.deepEqual(json.rawHeaders.slice(0, 6), ['Host', 'a.example', 'X-Dup', '1', 'x-dup', '2']);
    assert.equal(Buffer.from(json.bodyBase64, 'base64').toString(), 'hello body');
    assert.equal(origin.requests, before + 1);
  });

  it('/reflect mirrors status, x-* headers in order with duplicates, body and content type', async () => {
    const res = await request({
      port: origin.port,
      method: 'POST',
      path: '/reflect?status=201',
      headers: ['X-A', '1', 'Accept', '*/*', 'x-b', 'two', 'X-A', '3', 'Content-Type', 'text/x-test'],
      body: Buffer.from([1, 2, 3]),
    });
    assert.equal(res.status, 201);
    const xs: string[] = [];
    for (let i = 0; i < res.rawHeaders.length; i += 2) {
      if (res.rawHeaders[i]!.toLowerCase().startsWith('x-'))
        xs.push(res.rawHeaders[i]!, res.rawHeaders[i + 1]!);
    }
    assert.deepEqual(xs, ['X-A', '1', 'x-b', 'two', 'X-A', '3']);
    assert.equal(res.headers['content-type'], 'text/x-test');
    assert.deepEqual([...res.body], [1, 2, 3]);

    const plain = await request({ port: origin.port, path: '/reflect' });
    assert.equal(plain.status, 200);
    assert.equal(plain.headers['content-type'], 'application/octet-stream');
    assert.equal(plain.body.length, 0);

    const empty = await request({
      port: origin.port,
      method: 'POST',
      path: '/reflect?status=204',
      body: 'x',
    });
    assert.equal(empty.status, 204);
    assert.equal(empty.body.length, 0);
  });

  it('/bytes streams exactly n deterministic bytes, with Content-Length or chunked', async () => {
    const n = 3 * 64 * 1024 + 5;
    const sized = await requestStream({ port: origin.port, path: `/bytes?n=${n}&seed=42` });
    assert.equal(sized.statusCode, 200);
    assert.equal(sized.headers['content-length'], String(n));
    assert.deepEqual(await sha256Stream(sized), { bytes: n, sha256: sha256OfDeterministic(n, 42) });

    const chunked = await requestStream({ port: origin.port, path: `/bytes?n=${n}&seed=42&chunked=1` });
    assert.equal(chunked.headers['transfer-encoding'], 'chunked');
    assert.equal(chunked.headers['content-length'], undefined);
    assert.deepEqual(await sha256Stream(chunked), { bytes: n, sha256: sha256OfDeterministic(n, 42) });

    const none = await request({ port: origin.port, path: '/bytes?n=0' });
    assert.equal(none.status, 200);
    assert.equal(none.body.length, 0);
  });

  it('/bytes serves a large download intact', async () => {
    const n = 8 * 1024 * 1024 + 1;
    const res = await requestStream({ port: origin.port, path: `/bytes?n=${n}&seed=9` });
    assert.deepEqual(await sha256Stream(res), { bytes: n, sha256: sha256OfDeterministic(n, 9) });
  });

  it('/upload hashes a streamed body', async () => {
    const n = 2 * 1024 * 1024 + 17;
    for (const method of ['POST', 'PUT']) {
      const res = await request({
        port: origin.port,
        method,
        path: '/upload',
        body: deterministicBytes(n, 5),
      });
      assert.equal(res.status, 200);
      assert.deepEqual(JSON.parse(res.body.toString()), { bytes: n, sha256: sha256OfDeterministic(n, 5) });
    }
    const wrong = await request({ port: origin.port, path: '/upload' });
    assert.equal(wrong.status, 405);
  });

  it('/duplex echoes the body back while the request is still open', async () => {
    const body = new PassThrough();
    body.write('ping-1;');
    const res = await requestStream({ port: origin.port, method: 'POST', path: '/duplex', body });
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers['transfer-encoding'], 'chunked');
    const it = chunksOf(res);
    const first = await readUntil(it, (t) => t === 'ping-1;', 'first echoed chunk');
    assert.equal(first, 'ping-1;');
    assert.equal(body.writableEnded, false, 'request body still open');

    body.write('ping-2;');
    await readUntil(it, (t) => t.endsWith('ping-2;'), 'second echoed chunk', first);
    body.end('bye');
    assert.equal(await readRest(it, 'end of duplex'), 'bye');
  });

  it('/sse sends the first event at once and each next one on sse.next()', async () => {
    const res = await requestStream({ port: origin.port, path: '/sse?n=3' });
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers['content-type'], 'text/event-stream');
    const it = chunksOf(res);
    let text = await readUntil(it, (t) => t === 'data: 1\n\n', 'event 1');
    origin.sse.next();
    text = await readUntil(it, (t) => t.endsWith('data: 2\n\n'), 'event 2', text);
    origin.sse.next();
    text = await readUntil(it, (t) => t.endsWith('data: 3\n\n'), 'event 3', text);
    assert.equal(text, 'data: 1\n\ndata: 2\n\ndata: 3\n\n');
    assert.equal(await readRest(it, 'end of sse'), '');
  });

  it('/sse keeps a next() made before the stream opens', async () => {
    origin.sse.next();
    const res = await request({ port: origin.port, path: '/sse?n=2' });
    assert.equal(res.body.toString(), 'data: 1\n\ndata: 2\n\n');
  });

  it('/slow holds the response open until release()', async () => {
    const res = await requestStream({ port: origin.port, path: '/slow' });
    assert.equal(res.statusCode, 200);
    const it = chunksOf(res);
    const start = await readUntil(it, (t) => t === 'slow start\n', 'slow start');
    assert.equal(start, 'slow start\n');
    origin.release();
    assert.equal(await readRest(it, 'slow end'), 'slow end\n');
  });

  it('/chunked arrives with chunked transfer encoding', async () => {
    const res = await request({ port: origin.port, path: '/chunked' });
    assert.equal(res.status, 200);
    assert.equal(res.headers['transfer-encoding'], 'chunked');
    assert.equal(res.headers['content-length'], undefined);
    assert.equal(res.body.toString(), 'chunk 1\nchunk 2\nchunk 3\nchunk 4\nchunk 5\n');
  });

  it('/status/:code answers that status', async () => {
    const teapot = await request({ port: origin.port, path: '/status/418' });
    assert.equal(teapot.status, 418);
    assert.equal(teapot.body.toString(), 'status 418\n');
    const gone = await request({ port: origin.port, method: 'DELETE', path: '/status/503' });
    assert.equal(gone.status, 503);
    const noContent = await request({ port: origin.port, path: '/status/204' });
    assert.equal(noContent.status, 204);
    assert.equal(noContent.body.length, 0);
    assert.equal((await request({ port: origin.port, path: '/status/99' })).status, 400);
  });

  it('unknown paths are 404', async () => {
    assert.equal((await request({ port: origin.port, path: '/missing' })).status, 404);
  });

  it('/ws echoes text as text and binary as binary', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${origin.port}/ws`);
    await onceWithDeadline(ws, 'open', DEADLINE_MS);
    ws.send('text frame');
    const [text, textIsBinary] = await onceWithDeadline(ws, 'message', DEADLINE_MS);
    assert.equal(textIsBinary, false);
    assert.equal(String(text), 'text frame');
    const bytes = Buffer.from([0xff, 0, 0x10]);
    ws.send(bytes);
    const [binary, binaryIsBinary] = await onceWithDeadline(ws, 'message', DEADLINE_MS);
    assert.equal(binaryIsBinary, true);
    assert.deepEqual(binary, bytes);
    ws.close();
    await onceWithDeadline(ws, 'close', DEADLINE_MS);
  });
});

describe('test origin close()', () => {
  it('returns promptly with pending /slow, /sse and WebSocket connections', async () => {
    const origin = await startTestOrigin();
    const slow = await requestStream({ port: origin.port, path: '/slow' });
    slow.on('error', () => {});
    slow.resume();
    const sse = await requestStream({ port: origin.port, path: '/sse?n=10' });
    sse.on('error', () => {});
    sse.resume();
    const ws = new WebSocket(`ws://127.0.0.1:${origin.port}/ws`);
    await onceWithDeadline(ws, 'open', DEADLINE_MS);
    const wsClosed = onceWithDeadline(ws, 'close', DEADLINE_MS);
    await withDeadline(origin.close(), DEADLINE_MS, 'origin.close()');
    await wsClosed;
  });
});
