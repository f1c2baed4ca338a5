import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { after, describe, it } from 'node:test';
import { firstValueFrom } from 'rxjs';
import { createActor, type EventObject, fromCallback, fromPromise } from 'xstate';
import {
  type ConnectInput,
  connectionMachine,
  connectionStatus,
  type LiveConnection,
  type WatchInput,
} from '../../src/actors/connection.machine.ts';
import { type AgentConnection, drainConnection, watchConnection } from '../../src/agent/tunnel-connection.ts';
import { ManualClock, systemClock } from '../../src/shared/clock.ts';
import { isWarrenError } from '../../src/shared/errors.ts';
import { silentLogger } from '../../src/shared/log.ts';
import { encodeFrame, FrameType } from '../../src/transport/frame.ts';
import type { ResponseHead } from '../../src/transport/messages.ts';
import { INITIAL_WINDOW_BYTES, MuxSession, type MuxStream } from '../../src/transport/session.ts';
import { createDuplexPair } from '../support/duplex-pair.ts';
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

/** The parts of an agent connection that `drainConnection` and `watchConnection` use. */
function agentConnection(session: MuxSession): AgentConnection {
  return {
    connectionId: 'c1',
    pop: 'lhr',
    hostname: 'a.test',
    connIndex: 0,
    session,
    abort: (reason) => session.destroy(isWarrenError(reason) ? reason : undefined),
    markDraining: () => {},
  };
}

/** Lets queued socket writes, deliveries and promise callbacks run. */
const turns = async (n = 4) => {
  for (let i = 0; i < n; i++) await new Promise<void>((resolve) => setImmediate(resolve));
};

describe('MuxSession.roundTrip (PING barrier)', () => {
  it('resolves with the round-trip time once the peer answers', async () => {
    const pair = await createMuxPair();
    after(() => pair.close());
    const rtt = await pair.agent.roundTrip();
    assert.ok(rtt >= 0 && Number.isFinite(rtt), String(rtt));
    // Several at once each get their own answer, and heartbeats may run beside them.
    pair.agent.ping();
    const all = await Promise.all([pair.agent.roundTrip(), pair.agent.roundTrip(), pair.edge.roundTrip()]);
    assert.equal(all.length, 3);
  });

  it('rejects with the abort reason, and with the close error when the session closes first', async () => {
    const pair = await createMuxPair();
    after(() => pair.close());
    const aborted = new AbortController();
    const reason = new Error('no time left');
    aborted.abort(reason);
    await assert.rejects(pair.agent.roundTrip(aborted.signal), (e) => e === reason);

    const later = new AbortController();
    const waiting = pair.agent.roundTrip(later.signal);
    later.abort(reason);
    await assert.rejects(waiting, (e) => e === reason);

    // The edge stops reading: the PING is never answered, and the close ends the wait.
    pair.edge.destroy();
    const pending = pair.agent.roundTrip();
    await assert.rejects(pending, (e) => isWarrenError(e, 'session_closed'));
    await assert.rejects(pair.agent.roundTrip(), (e) => isWarrenError(e, 'session_closed'));
  });

  it('when it resolves, every stream the peer opened before reading the PING has arrived', async () => {
    const pair = await createMuxPair();
    after(() => pair.close());
    const arrived: MuxStream[] = [];
    pair.agent.streams$.subscribe((s) => arrived.push(s));
    // The edge opens streams at the last moment before it reads the PING: as it reads what precedes it.
    let opened = 0;
    pair.edge.control$.subscribe((m) => {
      if (m.type !== 'unregister') return;
      for (let i = 0; i < 5; i++) pair.edge.openStream(head, { endStream: true });
      opened += 5;
    });
    pair.agent.sendControl({ type: 'unregister', gracePeriodMs: 1000 });
    await pair.agent.roundTrip();
    assert.equal(opened, 5);
    assert.equal(arrived.length, 5, 'the HEADERS came before the PING ACK');
  });
});

describe('drainConnection: unregister, PING barrier, then GOAWAY', () => {
  /**
   * The edge opens streams on the connection until it reads `unregister` (and at that very moment),
   * as a router with requests in flight does. Returns the visitors' streams and their outcomes.
   */
  function edgeWithTraffic(edge: MuxSession) {
    const outcomes: Promise<string>[] = [];
    const open = () => {
      const s = edge.openStream(head, { endStream: true });
      outcomes.push(
        new Promise<string>((resolve) => {
          s.once('response', (h: ResponseHead) => resolve(String(h.status)));
          s.once('error', (e) => resolve(isWarrenError(e) ? e.code : String(e)));
        }),
      );
    };
    let retired = false;
    const sub = edge.control$.subscribe((m) => {
      if (m.type !== 'unregister') return;
      for (let i = 0; i < 3; i++) open();
      retired = true;
    });
    const tick = () => {
      if (retired || edge.state !== 'open') return;
      open();
      setImmediate(tick);
    };
    tick();
    return { outcomes, stop: () => sub.unsubscribe() };
  }

  function serve(agent: MuxSession) {
    agent.streams$.subscribe((s) => {
      // Answer a little later, so that some are still in flight when GOAWAY goes out.
      setImmediate(() => s.respond({ status: 200, headers: [] }, { endStream: true }));
    });
  }

  it('no stream the edge opened before it read unregister is refused', async () => {
    const pair = await createMuxPair();
    after(() => pair.close());
    serve(pair.agent);
    const traffic = edgeWithTraffic(pair.edge);
    await turns(3);
    await drainConnection(systemClock, agentConnection(pair.agent), 5000);
    const outcomes = await Promise.all(traffic.outcomes);
    assert.ok(outcomes.length >= 3);
    assert.deepEqual(
      outcomes.filter((o) => o !== '200'),
      [],
      `outcomes: ${outcomes.join(' ')}`,
    );
    assert.equal(pair.agent.state, 'closed');
  });

  it('without the barrier, those streams would be refused (why the barrier is there)', async () => {
    const pair = await createMuxPair();
    after(() => pair.close());
    serve(pair.agent);
    const traffic = edgeWithTraffic(pair.edge);
    await turns(3);
    pair.agent.sendControl({ type: 'unregister', gracePeriodMs: 1000 });
    await pair.agent.close({ signal: AbortSignal.timeout(5000) });
    const outcomes = await Promise.all(traffic.outcomes);
    assert.ok(outcomes.includes('stream_reset'), `outcomes: ${outcomes.join(' ')}`);
  });

  it('stays within the grace period when the edge never answers, and honours its signal', async () => {
    const clock = new ManualClock();
    const { a, b } = createDuplexPair({ transfer: () => {} }); // nothing ever arrives
    const agent = new MuxSession(a, { clock, log: silentLogger }, { role: 'agent', heartbeatIntervalMs: 0 });
    b.on('error', () => {});
    let settled = false;
    const draining = drainConnection(clock, agentConnection(agent), 1000).then(() => {
      settled = true;
    });
    await turns();
    clock.advance(999);
    await turns();
    assert.equal(settled, false, 'waits for the PING ACK within the grace period');
    clock.advance(1);
    // Out of time: GOAWAY, end the socket; the session's own 5 s close timer ends a peer that never closes.
    await turns();
    clock.advance(5000);
    await withDeadline(draining, 5000, 'the drain to end');
    assert.equal(agent.state, 'closed');
    assert.equal(clock.pendingTimers, 0, 'no timer left behind');

    const second = new MuxSession(
      createDuplexPair({ transfer: () => {} }).a,
      { clock, log: silentLogger },
      {
        role: 'agent',
        heartbeatIntervalMs: 0,
      },
    );
    const stop = new AbortController();
    const drained = drainConnection(clock, agentConnection(second), 60_000, stop.signal);
    await turns();
    stop.abort();
    await turns();
    clock.advance(5000);
    await withDeadline(drained, 5000, 'the aborted drain to end');
    assert.equal(clock.pendingTimers, 0);
  });
});

describe('heartbeat: a black-holed connection (no FIN, no RST, packets just stop)', () => {
  it('is declared dead within interval × count and the connection machine replaces it', async () => {
    const clock = new ManualClock();
    const intervalMs = 1000;
    const count = 3;
    let blackHole = false;
    const sessions: MuxSession[] = [];
    const dial = () => {
      const { a, b } = createDuplexPair({
        transfer: (_from, _chunk, deliver) => {
          // Once the path is cut, bytes vanish both ways and nobody is told.
          if (!blackHole) setImmediate(deliver);
        },
      });
      const agent = new MuxSession(
        a,
        { clock, log: silentLogger },
        { role: 'agent', heartbeatIntervalMs: intervalMs, heartbeatMissedLimit: count },
      );
      // The edge end answers PINGs (its own heartbeats are off, so the agent's decide).
      new MuxSession(b, { clock, log: silentLogger }, { role: 'edge', heartbeatIntervalMs: 0 });
      sessions.push(agent);
      return agentConnection(agent);
    };
    const machine = connectionMachine.provide({
      actors: {
        connect: fromPromise<LiveConnection, ConnectInput>(async () => dial()),
        watch: fromCallback<EventObject, WatchInput>(({ input, sendBack }) =>
          watchConnection(input.connection as AgentConnection, sendBack),
        ),
      },
    });
    const actor = createActor(machine, {
      clock,
      input: {
        connIndex: 0,
        backoff: { baseMs: 1000, capMs: 8000, healthyAfterMs: 60_000 },
        gracePeriodMs: 1000,
        random: () => 0.5,
      },
    });
    actor.start();
    await turns();
    assert.equal(connectionStatus(actor.getSnapshot()), 'connected');
    const first = sessions[0]!;

    // Healthy: PINGs go out each interval and their ACKs come back.
    for (let i = 0; i < 5; i++) {
      clock.advance(intervalMs);
      await turns();
    }
    assert.equal(first.state, 'open');

    blackHole = true;
    const cutAt = clock.now();
    for (let i = 1; i < count; i++) {
      clock.advance(intervalMs);
      await turns();
      assert.equal(first.state, 'open', `still open ${i * intervalMs} ms after the cut`);
    }
    clock.advance(intervalMs);
    await turns();
    assert.equal(first.state, 'closed', `dead ${clock.now() - cutAt} ms after the cut`);
    assert.ok(clock.now() - cutAt <= intervalMs * count);
    assert.ok(isWarrenError((await first.closed).error, 'heartbeat_timeout'));

    // The machine saw HEARTBEAT_LOST and redials once its backoff has passed.
    const snapshot = actor.getSnapshot();
    assert.equal(connectionStatus(snapshot), 'reconnecting');
    assert.ok(isWarrenError(snapshot.context.lastError, 'heartbeat_timeout'));
    blackHole = false;
    clock.advance(snapshot.context.retryDelayMs);
    await turns();
    assert.equal(connectionStatus(actor.getSnapshot()), 'connected');
    assert.equal(sessions.length, 2);
    assert.notEqual(actor.getSnapshot().context.connection, first);

    actor.send({ type: 'SHUTDOWN', mode: 'now' });
    await turns();
    assert.equal(sessions[1]!.state, 'closed');
  });
});
