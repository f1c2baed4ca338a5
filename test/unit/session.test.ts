import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { after, describe, it } from 'node:test';
import { firstValueFrom } from 'rxjs';
import { systemClock } from '../../src/shared/clock.ts';
import { isWarrenError } from '../../src/shared/errors.ts';
import { silentLogger } from '../../src/shared/log.ts';
import { encodeFrame, FrameType } from '../../src/transport/frame.ts';
import type { ResponseHead } from '../../src/transport/messages.ts';
import { INITIAL_WINDOW_BYTES, MuxSession, type MuxStream } from '../../src/transport/session.ts';
import { createMuxPair } from '../support/mux-pair.ts';
import { withDeadline } from '../support/wait.ts';

const head = { kind: 'http' as const, method: 'GET', target: '/', headers: ['Host', 'a.test'] };

function collect(stream: MuxStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    stream.on('data', (c: Buffer) => parts.push(c));
    stream.once('end', () => resolve(Buffer.concat(parts)));
    stream.once('error', reject);
  });
}

describe('MuxSession over a real socket', () => {
  it('carries a request and a response with bodies both ways', async () => {
    const pair = await createMuxPair();
    after(() => pair.close());
    const incoming = firstValueFrom(pair.agent.streams$);
    const s = pair.edge.openStream({ ...head, method: 'POST' });
    s.end('ping body');
    const a = await incoming;
    assert.equal(a.requestHead?.method, 'POST');
    assert.equal((await collect(a)).toString(), 'ping body');
    a.respond({ status: 201, headers: ['X-A', '1', 'x-a', '2'] });
    a.end('pong');
    const res = await new Promise<ResponseHead>((r) => s.once('response', r));
    assert.deepEqual(res, { status: 201, headers: ['X-A', '1', 'x-a', '2'] });
    assert.equal((await collect(s)).toString(), 'pong');
    assert.equal(pair.edge.activeStreams, 0);
  });

  it('moves 32 MiB through flow control with a slow reader and keeps buffers within the window', async () => {
    const pair = await createMuxPair();
    after(() => pair.close());
    const incoming = firstValueFrom(pair.agent.streams$);
    const s = pair.edge.openStream(head, { endStream: true });
    const a = await incoming;
    a.respond({ status: 200, headers: [] });
    const total = 32 * 1024 * 1024;
    const chunk = Buffer.alloc(100_000, 7);
    const sent = createHash('sha256');
    let written = 0;
    const writeMore = () => {
      while (written < total) {
        const n = Math.min(chunk.length, total - written);
        const c = chunk.subarray(0, n);
        sent.update(c);
        written += n;
        if (!a.write(c)) return void a.once('drain', writeMore);
      }
      a.end();
    };
    writeMore();
    const got = createHash('sha256');
    let bytes = 0;
    let maxBuffered = 0;
    await new Promise<void>((resolve, reject) => {
      s.on('readable', () => {
        maxBuffered = Math.max(maxBuffered, s.readableLength);
        // Read slowly: one chunk per readable event.
        const c = s.read() as Buffer | null;
        if (c) {
          got.update(c);
          bytes += c.length;
        }
      });
      s.once('end', resolve);
      s.once('error', reject);
    });
    assert.equal(bytes, total);
    assert.equal(got.digest('hex'), sent.digest('hex'));
    assert.ok(maxBuffered <= s.receiveWindow, `buffered ${maxBuffered} > window ${s.receiveWindow}`);
    assert.ok(s.receiveWindow >= INITIAL_WINDOW_BYTES);
  });

  it('window growth is bounded by the session budget and returned when the stream ends', async () => {
    for (const budget of [0, 256 * 1024]) {
      const pair = await createMuxPair({ edge: { maxTunedWindowBytes: budget } });
      const incoming = firstValueFrom(pair.agent.streams$);
      const s = pair.edge.openStream(head, { endStream: true });
      const a = await incoming;
      a.respond({ status: 200, headers: [] });
      const chunk = Buffer.alloc(64 * 1024, 1);
      let maxTuned = 0;
      s.on('data', () => {
        maxTuned = Math.max(maxTuned, pair.edge.tunedWindowBytes);
      });
      const done = new Promise<void>((resolve, reject) => {
        s.once('end', resolve);
        s.once('error', reject);
      });
      for (let i = 0; i < 256; i++) if (!a.write(chunk)) await new Promise((r) => a.once('drain', r));
      a.end();
      await done;
      assert.ok(
        s.receiveWindow <= INITIAL_WINDOW_BYTES + budget,
        `window ${s.receiveWindow} over budget ${budget}`,
      );
      assert.ok(maxTuned <= budget, `session tuned ${maxTuned} over budget ${budget}`);
      assert.equal(pair.edge.tunedWindowBytes, 0, 'the budget comes back when the stream is over');
      await pair.close();
    }
  });

  it('a reset reaches the other side as a stream_reset error', async () => {
    const pair = await createMuxPair();
    after(() => pair.close());
    const incoming = firstValueFrom(pair.agent.streams$);
    const s = pair.edge.openStream(head);
    const a = await incoming;
    const err = new Promise<Error>((r) => a.once('error', r));
    s.reset();
    const e = await err;
    assert.ok(isWarrenError(e, 'stream_reset'), String(e));
    assert.equal(pair.edge.activeStreams, 0);
  });

  it('a session that accepts no peer streams refuses them, and its own streams still open', async () => {
    const pair = await createMuxPair({ edge: { acceptPeerStreams: false, maxConcurrentStreams: 4 } });
    after(() => pair.close());
    const refused: Promise<Error>[] = [];
    for (let i = 0; i < 8; i++) {
      const s = pair.agent.openStream({ ...head, method: 'POST' });
      refused.push(new Promise<Error>((r) => s.once('error', r)));
      s.write(Buffer.alloc(64 * 1024));
    }
    for (const e of await Promise.all(refused)) {
      assert.ok(isWarrenError(e, 'stream_reset') && e.retryable, String(e));
    }
    assert.equal(pair.edge.activeStreams, 0);
    const incoming = firstValueFrom(pair.agent.streams$);
    pair.edge.openStream(head, { endStream: true });
    assert.equal((await incoming).requestHead?.target, '/');
  });

  it('a peer that floods PINGs but never reads is cut off once the control queue is full', async () => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const accepted = once(server, 'connection') as Promise<[net.Socket]>;
    const peer = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    await once(peer, 'connect');
    const [socket] = await accepted;
    server.close();
    peer.pause(); // never reads what the session writes
    peer.on('error', () => {});
    const session = new MuxSession(
      socket,
      { clock: systemClock, log: silentLogger },
      {
        role: 'edge',
        heartbeatIntervalMs: 0,
        maxControlQueueBytes: 64 * 1024,
      },
    );
    const ping = encodeFrame({ type: FrameType.PING, flags: 0, streamId: 0, payload: Buffer.alloc(8) });
    const burst = Buffer.concat(Array.from({ length: 4096 }, () => ping));
    // Far more ACKs than the kernel's socket buffers and the queue can hold together.
    let sent = 0;
    const pump = () => {
      while (sent < 1000 && !peer.destroyed) {
        sent++;
        if (!peer.write(burst)) return void peer.once('drain', pump);
      }
    };
    pump();
    const info = await withDeadline(session.closed, 20_000, 'the session kept queueing PING ACKs');
    assert.ok(isWarrenError(info.error, 'protocol_error'), String(info.error));
    peer.destroy();
  });

  it('graceful close lets an open stream finish, then closes both sessions', async () => {
    const pair = await createMuxPair();
    after(() => pair.close());
    const incoming = firstValueFrom(pair.agent.streams$);
    const s = pair.edge.openStream(head, { endStream: true });
    const a = await incoming;
    const closing = pair.agent.close();
    assert.throws(
      () => pair.agent.openStream(head),
      (e) => isWarrenError(e, 'session_closed'),
    );
    a.respond({ status: 200, headers: [] });
    a.end('late but whole');
    assert.equal((await collect(s)).toString(), 'late but whole');
    await closing;
    assert.deepEqual(await pair.edge.closed, {});
  });
});
