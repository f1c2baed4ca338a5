import assert from 'node:assert/strict';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { afterEach, beforeEach, describe, it } from 'node:test';
import tls from 'node:tls';
import { createEdgeTls } from '../../src/edge/ca.ts';
import { type FaultProxy, type ProxiedConnection, startFaultProxy } from '../support/fault-proxy.ts';
import { deterministicBytes } from '../support/origin.ts';
import { waitFor, withDeadline } from '../support/wait.ts';

const DEADLINE_MS = 5000;

/** Everything one socket has received, with event-driven waits on it. */
class Tap {
  readonly socket: net.Socket;
  readonly closed: Promise<void>;
  #chunks: Buffer[] = [];
  length = 0;
  ended = false;
  error: NodeJS.ErrnoException | undefined;
  #listeners = new Set<() => void>();

  constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#chunks.push(chunk);
      this.length += chunk.length;
      this.#notify();
    });
    socket.on('end', () => {
      this.ended = true;
      this.#notify();
    });
    socket.on('error', (err) => {
      this.error = err;
      this.#notify();
    });
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  get data(): Buffer {
    return Buffer.concat(this.#chunks);
  }

  get text(): string {
    return this.data.toString('utf8');
  }

  /** Resolves once `ready(this)` holds, checked after every event on the socket. */
  async until(ready: (tap: Tap) => boolean, what: string, ms = DEADLINE_MS): Promise<void> {
    let listener: (() => void) | undefined;
    const reached = new Promise<void>((resolve) => {
      listener = () => {
        if (ready(this)) resolve();
      };
      this.#listeners.add(listener);
      listener();
    });
    try {
      await withDeadline(reached, ms, `${what} (have ${this.length} bytes, ended=${this.ended})`);
    } finally {
      if (listener) this.#listeners.delete(listener);
    }
  }

  #notify(): void {
    for (const listener of [...this.#listeners]) listener();
  }
}

interface PeerServer {
  readonly port: number;
  /** The `i`-th accepted socket (0-based), once it has been accepted. */
  accepted(i: number): Promise<Tap>;
  close(): Promise<void>;
}

/** A loopback server that records what each connection sends and, with `echo`, writes it back. */
async function startPeerServer(opts: { echo?: boolean; tls?: tls.TlsOptions } = {}): Promise<PeerServer> {
  const taps: Tap[] = [];
  const waiters = new Set<() => void>();
  const onSocket = (socket: net.Socket) => {
    const tap = new Tap(socket);
    if (opts.echo) socket.on('data', (chunk: Buffer) => socket.write(chunk));
    taps.push(tap);
    for (const w of [...waiters]) w();
  };
  const server = opts.tls
    ? tls.createServer({ ...opts.tls, allowHalfOpen: true }, onSocket)
    : net.createServer({ allowHalfOpen: true }, onSocket);
  // Handshakes the proxy breaks off (reset, close) surface here; they are not this server's concern.
  server.on('tlsClientError', () => {});
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    accepted(i) {
      let waiter: (() => void) | undefined;
      const found = new Promise<Tap>((resolve) => {
        waiter = () => {
          const tap = taps[i];
          if (tap) resolve(tap);
        };
        waiters.add(waiter);
        waiter();
      });
      return withDeadline(found, DEADLINE_MS, `server accepts connection #${i + 1}`).finally(() =>
        waiters.delete(waiter!),
      );
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const tap of taps) tap.socket.destroy();
      await Promise.all([closed, ...taps.map((t) => t.closed)]);
    },
  };
}

async function dial(port: number): Promise<Tap> {
  const socket = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
  const tap = new Tap(socket);
  await withDeadline(
    new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    }),
    DEADLINE_MS,
    'client connects to the proxy',
  );
  return tap;
}

function nextConnection(proxy: FaultProxy): Promise<ProxiedConnection> {
  return new Promise((resolve) => {
    const off = proxy.onConnection((conn) => {
      off();
      resolve(conn);
    });
  });
}

function deterministic(n: number, seed: number): Buffer {
  return Buffer.concat([...deterministicBytes(n, seed)]);
}

function resourceCounts(): Record<'TCPWrap' | 'TCPServerWrap' | 'Timeout', number> {
  const counts = { TCPWrap: 0, TCPServerWrap: 0, Timeout: 0 };
  for (const name of process.getActiveResourcesInfo()) {
    if (name in counts) counts[name as keyof typeof counts] += 1;
  }
  return counts;
}

describe('fault proxy', () => {
  let server: PeerServer;
  let proxy: FaultProxy;
  let clients: Tap[];
  /** Connections are linked one at a time, so the n-th client, proxied connection and server socket match. */
  let linked: number;

  async function link(): Promise<{ client: Tap; conn: ProxiedConnection; server: Tap }> {
    const conn = nextConnection(proxy);
    const client = await dial(proxy.port);
    clients.push(client);
    const serverSide = await server.accepted(linked);
    linked += 1;
    return { client, conn: await conn, server: serverSide };
  }

  /** One marker through a fresh pass-through connection and back: time has passed on every path. */
  async function roundTripElsewhere(marker: string): Promise<void> {
    const other = await link();
    other.client.socket.write(marker);
    await other.client.until((t) => t.text === marker, `marker ${marker} echoed`);
  }

  beforeEach(async () => {
    server = await startPeerServer({ echo: true });
    proxy = await startFaultProxy({ target: { host: '127.0.0.1', port: server.port } });
    clients = [];
    linked = 0;
  });

  afterEach(async () => {
    for (const c of clients) c.socket.destroy();
    await proxy.close();
    await server.close();
    await Promise.all(clients.map((c) => c.closed));
  });

  it('passes bytes both ways and counts them', async () => {
    const { client, conn } = await link();
    const payload = deterministic(300_000, 1);
    client.socket.write(payload);
    await client.until((t) => t.length >= payload.length, 'echo of 300 kB');
    assert.ok(client.data.equals(payload));
    assert.deepEqual(conn.bytes, { up: payload.length, down: payload.length });
    assert.deepEqual(conn.dropped, { up: 0, down: 0 });
    assert.equal(proxy.accepted, 1);
    assert.deepEqual(
      proxy.connections.map((c) => c.id),
      [1],
    );
  });

  it('delay holds each chunk at least the delay, in order, also across a switch back to pass', async () => {
    const { client, conn, server: serverSide } = await link();
    conn.set({ kind: 'delay', ms: 150 }, 'up');
    const started = performance.now();
    const chunks = Array.from({ length: 20 }, (_, i) => `<${i}>`);
    for (const chunk of chunks) client.socket.write(chunk);
    const total = chunks.join('').length;
    await waitFor(() => conn.queued.up === total, {
      timeoutMs: DEADLINE_MS,
      message: 'proxy holds the chunks',
    });
    conn.set({ kind: 'pass' });
    // Sent after the switch, yet it must not overtake the delayed chunks.
    client.socket.write('<end>');
    const expected = chunks.join('') + '<end>';
    await serverSide.until((t) => t.text === expected, 'delayed chunks in order');
    assert.ok(performance.now() - started >= 145, `took ${performance.now() - started} ms`);

    conn.set({ kind: 'delay', ms: 100 });
    const t0 = performance.now();
    client.socket.write('rtt');
    await client.until((t) => t.text.endsWith('rtt'), 'echo through delay both ways');
    const rtt = performance.now() - t0;
    assert.ok(rtt >= 195, `round trip ${rtt} ms is less than twice the delay`);
  });

  it('throttle limits the rate to bytesPerSecond', async () => {
    const { client, conn, server: serverSide } = await link();
    conn.set({ kind: 'throttle', bytesPerSecond: 32 * 1024 }, 'up');
    const payload = deterministic(32 * 1024, 2);
    const started = performance.now();
    client.socket.write(payload);
    await serverSide.until((t) => t.length >= payload.length, '32 KiB through the throttle');
    const elapsed = performance.now() - started;
    assert.ok(serverSide.data.equals(payload));
    // One 50 ms slice may go at once; the rest cannot beat the rate.
    assert.ok(elapsed >= 900, `32 KiB at 32 KiB/s took only ${elapsed} ms`);
  });

  it('bounds what it holds: a throttled source is paused, not buffered', async () => {
    await proxy.close();
    const maxQueuedBytes = 16 * 1024;
    proxy = await startFaultProxy({ target: { host: '127.0.0.1', port: server.port }, maxQueuedBytes });
    const { client, conn } = await link();
    conn.set({ kind: 'throttle', bytesPerSecond: 64 * 1024 }, 'up');
    // Fill the kernel buffers until the client's own write buffer starts to hold data.
    const chunk = Buffer.alloc(64 * 1024, 7);
    let written = 0;
    do written += chunk.length;
    while (client.socket.write(chunk));
    // A quarter of a second of throttled forwarding: time enough for a proxy that read without
    // bound to empty the kernel buffers, after which the client's buffer would drain.
    await waitFor(() => conn.bytes.up >= 16 * 1024, { timeoutMs: DEADLINE_MS, message: '16 KiB forwarded' });
    const read = conn.bytes.up + conn.queued.up;
    assert.ok(conn.queued.up <= maxQueuedBytes + chunk.length, `proxy holds ${conn.queued.up} bytes`);
    assert.ok(client.socket.writableLength > 0, 'the client is still backed up');
    assert.ok(read < written, `proxy read ${read} of ${written} bytes`);
  });

  it('blackhole drops bytes silently and keeps both sockets open', async () => {
    const { client, conn, server: serverSide } = await link();
    conn.set({ kind: 'blackhole' });
    client.socket.write('lost');
    await roundTripElsewhere('marker');
    await waitFor(() => conn.dropped.up === 4, {
      timeoutMs: DEADLINE_MS,
      message: 'proxy drops the 4 bytes',
    });
    assert.equal(serverSide.length, 0);
    assert.deepEqual(conn.bytes, { up: 0, down: 0 });
    for (const tap of [client, serverSide]) {
      assert.equal(tap.ended, false);
      assert.equal(tap.error, undefined);
      assert.equal(tap.socket.destroyed, false);
    }
    // No FIN or RST went out: lifting the blackhole, the same connection carries bytes again.
    conn.set({ kind: 'pass' });
    client.socket.write('back');
    await client.until((t) => t.text === 'back', 'echo after the blackhole is lifted');
    assert.equal(serverSide.text, 'back');
  });

  it('blackholes one direction only', async () => {
    const { client, conn, server: serverSide } = await link();
    conn.set({ kind: 'blackhole' }, 'down');
    client.socket.write('ping');
    await serverSide.until((t) => t.text === 'ping', 'server gets ping');
    await roundTripElsewhere('marker');
    assert.equal(client.length, 0);
    assert.equal(conn.bytes.up, 4);
    assert.equal(conn.dropped.down, 4);
    assert.equal(client.socket.destroyed, false);
  });

  it('stall holds bytes without reading them and lets them through when lifted', async () => {
    const { client, conn, server: serverSide } = await link();
    conn.set({ kind: 'stall' }, 'up');
    client.socket.write('held');
    await roundTripElsewhere('marker');
    assert.equal(serverSide.length, 0);
    assert.deepEqual(conn.dropped, { up: 0, down: 0 });
    conn.set({ kind: 'pass' }, 'up');
    await serverSide.until((t) => t.text === 'held', 'held bytes arrive');
  });

  it('reset sends RST to both sides', async () => {
    const { client, conn, server: serverSide } = await link();
    client.socket.write('x');
    await client.until((t) => t.text === 'x', 'echo before the reset');
    conn.reset();
    await client.until((t) => t.error !== undefined, 'client sees the reset');
    await serverSide.until((t) => t.error !== undefined, 'server sees the reset');
    assert.equal(client.error?.code, 'ECONNRESET');
    assert.equal(serverSide.error?.code, 'ECONNRESET');
    await withDeadline(conn.closed, DEADLINE_MS, 'connection closed');
    assert.equal(proxy.connections.length, 0);
  });

  it("cut('up') delivers FIN to the server while server → client keeps flowing", async () => {
    const { client, conn, server: serverSide } = await link();
    conn.cut('up');
    await serverSide.until((t) => t.ended, 'server sees FIN');
    serverSide.socket.write('still here');
    await client.until((t) => t.text === 'still here', 'client gets data after the cut');
    assert.equal(client.ended, false);
    client.socket.write('dropped');
    await roundTripElsewhere('marker');
    assert.equal(serverSide.length, 0);
  });

  it('setDefault applies to connections accepted afterwards, not to live ones', async () => {
    const before = await link();
    proxy.setDefault({ kind: 'blackhole' }, 'up');
    const after = await link();
    after.client.socket.write('lost');
    before.client.socket.write('kept');
    await before.client.until((t) => t.text === 'kept', 'older connection still passes');
    proxy.setDefault({ kind: 'pass' });
    await waitFor(() => after.conn.dropped.up === 4, {
      timeoutMs: DEADLINE_MS,
      message: 'the newer connection drops its bytes',
    });
    await roundTripElsewhere('marker');
    assert.equal(after.server.length, 0);
  });

  it('waitForConnections resolves when enough are live and times out with a count', async () => {
    const waiting = proxy.waitForConnections(2, { timeoutMs: DEADLINE_MS });
    await link();
    await link();
    const conns = await waiting;
    assert.deepEqual(
      conns.map((c) => c.id),
      [1, 2],
    );
    await assert.rejects(proxy.waitForConnections(3, { timeoutMs: 20 }), /2 live, 2 accepted/);
  });
});

describe('fault proxy with a target that refuses', () => {
  it('resets the client and stays up', async () => {
    const gone = await startPeerServer();
    const port = gone.port;
    await gone.close();
    const proxy = await startFaultProxy({ target: { host: '127.0.0.1', port } });
    try {
      const client = await dial(proxy.port);
      await client.until((t) => t.error !== undefined, 'client is reset');
      assert.equal(client.error?.code, 'ECONNRESET');
      await client.closed;
      assert.equal(proxy.accepted, 1);
      assert.equal(proxy.connections.length, 0);
    } finally {
      await proxy.close();
    }
  });
});

describe('fault proxy close', () => {
  it('leaves no socket, listener or timer behind', async () => {
    const start = resourceCounts();
    const server = await startPeerServer({ echo: true });
    const proxy = await startFaultProxy({ target: { host: '127.0.0.1', port: server.port } });
    const clients = [await dial(proxy.port), await dial(proxy.port)];
    const conns = await proxy.waitForConnections(2, { timeoutMs: DEADLINE_MS });
    conns[0]!.set({ kind: 'delay', ms: 60_000 });
    conns[1]!.set({ kind: 'throttle', bytesPerSecond: 10 });
    clients[0]!.socket.write('waits a minute');
    clients[1]!.socket.write('waits for tokens');
    await waitFor(() => conns[0]!.queued.up > 0 && conns[1]!.queued.up > 0, {
      timeoutMs: DEADLINE_MS,
      message: 'both connections hold bytes on a timer',
    });
    const pending = assert.rejects(proxy.waitForConnections(5, { timeoutMs: 60_000 }), /closed/);
    await proxy.close();
    await pending;
    await proxy.close();
    // The clients are half-open sockets: the proxy's FIN does not close them.
    for (const c of clients) c.socket.destroy();
    await Promise.all(clients.map((c) => c.closed));
    await server.close();
    const end = resourceCounts();
    assert.deepEqual(end, start);
  });
});

describe('fault proxy with TLS behind it', () => {
  it('passes a TLS session opaquely, and a blackhole reads as silence to the client', async () => {
    const material = await createEdgeTls('edge.test');
    const server = await startPeerServer({
      echo: true,
      tls: { key: material.serverKeyPem, cert: material.serverCertPem },
    });
    const proxy = await startFaultProxy({ target: { host: '127.0.0.1', port: server.port } });
    const sessions: tls.TLSSocket[] = [];
    const open = async (): Promise<Tap> => {
      const socket = tls.connect({ host: '127.0.0.1', port: proxy.port, ca: material.caCertPem });
      sessions.push(socket);
      const tap = new Tap(socket);
      await withDeadline(
        new Promise<void>((resolve, reject) => {
          socket.once('secureConnect', resolve);
          socket.once('error', reject);
        }),
        DEADLINE_MS,
        'TLS handshake through the proxy',
      );
      return tap;
    };
    try {
      const conn = nextConnection(proxy);
      const a = await open();
      a.socket.write('hello');
      await a.until((t) => t.text === 'hello', 'TLS echo');
      const proxied = await conn;
      assert.ok(proxied.bytes.up > 'hello'.length, 'the proxy carried the handshake too');

      proxied.set({ kind: 'blackhole' });
      a.socket.write('anyone?');
      await waitFor(() => proxied.dropped.up > 0, {
        timeoutMs: DEADLINE_MS,
        message: 'the proxy drops the record',
      });
      const b = await open();
      b.socket.write('marker');
      await b.until((t) => t.text === 'marker', 'TLS echo on a second connection');
      assert.equal(a.text, 'hello');
      assert.equal(a.ended, false);
      assert.equal(a.error, undefined);
      assert.equal(a.socket.destroyed, false);
    } finally {
      for (const s of sessions) s.destroy();
      await proxy.close();
      await server.close();
    }
  });
});
