/**
 * A loopback TCP proxy that injects network faults between a client (the agent) and a target (the
 * edge's tunnel listener). It forwards bytes opaquely, so TLS passes through untouched, and each
 * direction of each connection has its own fault mode that a test can change at any time:
 *
 *   pass       forward as fast as the destination accepts
 *   delay      hold every chunk `ms` after it arrived, in order
 *   throttle   forward at most `bytesPerSecond`
 *   stall      stop reading: bytes wait in the kernel buffers and flow again when the mode changes
 *   blackhole  read and drop everything (counted in `dropped`); no FIN, no RST, both sockets stay open
 *
 * 'up' is client → target, 'down' is target → client. Every buffer is bounded: the proxy stops reading
 * a source while its destination's write() returns false or while `maxQueuedBytes` wait for a delay
 * or throttle timer. Socket errors never escape: an error or reset on one side resets the other.
 * The proxy uses real timers (it sits between real processes) and clears every one of them on close.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { performance } from 'node:perf_hooks';

export type FaultMode =
  | { kind: 'pass' }
  | { kind: 'delay'; ms: number }
  | { kind: 'throttle'; bytesPerSecond: number }
  | { kind: 'stall' }
  | { kind: 'blackhole' };

/** 'up' = client → target, 'down' = target → client. */
export type Direction = 'up' | 'down';

export interface FaultProxyOptions {
  target: { host: string; port: number };
  /** Listen address (default 127.0.0.1); the port is always ephemeral. */
  host?: string;
  /** Mode for both directions of connections accepted before any `setDefault` (default pass). */
  defaultMode?: FaultMode;
  /** Bytes a direction holds for delay or throttle before it stops reading its source (default 1 MiB). */
  maxQueuedBytes?: number;
}

export interface ProxiedConnection {
  /** 1, 2, 3… in accept order. */
  readonly id: number;
  /** The client's port, to match this connection with a socket the test holds. */
  readonly clientPort: number;
  /** Bytes handed to the destination socket in each direction. */
  readonly bytes: { readonly up: number; readonly down: number };
  /** Bytes read and thrown away in each direction (blackhole, cut, or queued when either began). */
  readonly dropped: { readonly up: number; readonly down: number };
  /** Bytes read and waiting for a delay or throttle timer (at most about `maxQueuedBytes`). */
  readonly queued: { readonly up: number; readonly down: number };
  /**
   * Sets the mode of one direction, or of both, at once for bytes not yet forwarded. Chunks a delay
   * already holds keep their due time (nothing overtakes them); a blackhole drops what is held.
   */
  set(mode: FaultMode, direction?: Direction): void;
  /** Sends RST to both sides now. */
  reset(): void;
  /** Sends FIN in one direction (to the target for 'up'); later bytes that way are dropped. */
  cut(direction: Direction): void;
  /** Resolves once both sockets have closed, however that happened. Never rejects. */
  readonly closed: Promise<void>;
}

export interface FaultProxy {
  /** The listen port on `host`. */
  readonly port: number;
  /** Connections not yet closed, in accept order. */
  readonly connections: readonly ProxiedConnection[];
  /** Connections ever accepted. */
  readonly accepted: number;
  /**
   * Resolves with the live connections once at least `n` are live; rejects after `timeoutMs`, on
   * `signal`, or when the proxy closes.
   */
  waitForConnections(
    n: number,
    opts: { timeoutMs: number; signal?: AbortSignal },
  ): Promise<readonly ProxiedConnection[]>;
  /**
   * Calls `listener` for each new connection, synchronously on accept: before the target is dialled
   * and before any byte is read, so a mode it sets applies from the first byte. Returns an unsubscribe.
   */
  onConnection(listener: (conn: ProxiedConnection) => void): () => void;
  /** Mode for connections accepted from now on (both directions, or one). */
  setDefault(mode: FaultMode, direction?: Direction): void;
  /** `reset()` on every live connection. */
  resetAll(): void;
  /** Stops listening and destroys every connection now; resolves once all are closed. Idempotent. */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

const PASS: FaultMode = { kind: 'pass' };
const DEFAULT_MAX_QUEUED_BYTES = 1024 * 1024;
/** Throttle releases bytes in slices worth this long at the configured rate (also its burst). */
const THROTTLE_SLICE_MS = 50;

function checkMode(mode: FaultMode): FaultMode {
  switch (mode.kind) {
    case 'pass':
    case 'stall':
    case 'blackhole':
      return mode;
    case 'delay':
      if (!(Number.isFinite(mode.ms) && mode.ms >= 0))
        throw new RangeError(`delay ms must be ≥ 0: ${mode.ms}`);
      return mode;
    case 'throttle':
      if (!(Number.isFinite(mode.bytesPerSecond) && mode.bytesPerSecond > 0)) {
        throw new RangeError(`throttle bytesPerSecond must be > 0: ${mode.bytesPerSecond}`);
      }
      return mode;
    default: {
      const never: never = mode;
      throw new RangeError(`unknown fault mode ${JSON.stringify(never)}`);
    }
  }
}

function directions(direction: Direction | undefined): Direction[] {
  return direction === undefined ? ['up', 'down'] : [direction];
}

/** Sends RST when it can; a socket still connecting (no peer to reset yet) is just destroyed. */
function resetSocket(socket: net.Socket): void {
  if (socket.destroyed) return;
  if (socket.connecting) socket.destroy();
  else socket.resetAndDestroy();
}

interface QueuedChunk {
  data: Buffer;
  /** performance.now() before which the chunk may not leave (delay mode); 0 = at once. */
  dueAt: number;
}

/** One direction: reads `source`, applies the mode, writes `dest`. */
class Flow {
  forwarded = 0;
  dropped = 0;
  #mode: FaultMode;
  readonly #source: net.Socket;
  readonly #dest: net.Socket;
  readonly #maxQueuedBytes: number;
  readonly #queue: QueuedChunk[] = [];
  queuedBytes = 0;
  #started = false;
  #stopped = false;
  #reading = false;
  #sourceEnded = false;
  /** dest.end() has been called (source EOF forwarded, or cut). */
  #destEnded = false;
  /** dest.write() returned false and 'drain' has not come yet. */
  #destBlocked = false;
  #timer: NodeJS.Timeout | undefined;
  #tokens = 0;
  #tokensAt = 0;

  constructor(source: net.Socket, dest: net.Socket, mode: FaultMode, maxQueuedBytes: number) {
    this.#source = source;
    this.#dest = dest;
    this.#mode = mode;
    this.#maxQueuedBytes = maxQueuedBytes;
    this.#refillThrottle(true);
  }

  /** Starts reading once both sockets are connected. */
  start(): void {
    if (this.#started || this.#stopped) return;
    this.#started = true;
    // Explicitly paused, so adding the 'data' listener does not switch the source to flowing.
    this.#source.pause();
    this.#source.on('data', (chunk: Buffer) => this.#onData(chunk));
    this.#source.on('end', () => {
      this.#sourceEnded = true;
      this.#pump();
    });
    this.#dest.on('drain', () => {
      this.#destBlocked = false;
      this.#pump();
    });
    this.#pump();
  }

  set(mode: FaultMode): void {
    const previous = this.#mode;
    this.#mode = mode;
    if (mode.kind === 'blackhole') this.#dropQueue();
    if (
      mode.kind === 'throttle' &&
      (previous.kind !== 'throttle' || previous.bytesPerSecond !== mode.bytesPerSecond)
    ) {
      this.#refillThrottle(true);
    }
    this.#pump();
  }

  cut(): void {
    if (this.#stopped) return;
    this.#dropQueue();
    this.#endDest();
    this.#updateReading();
  }

  /** The destination is gone: nothing more can be delivered, and no timer may stay behind. */
  stop(): void {
    this.#stopped = true;
    this.#dropQueue();
    this.#clearTimer();
  }

  #onData(chunk: Buffer): void {
    if (this.#stopped || this.#destEnded || this.#dest.destroyed || this.#mode.kind === 'blackhole') {
      this.dropped += chunk.length;
      return;
    }
    const dueAt = this.#mode.kind === 'delay' ? performance.now() + this.#mode.ms : 0;
    this.#queue.push({ data: chunk, dueAt });
    this.queuedBytes += chunk.length;
    this.#pump();
  }

  #pump(): void {
    if (this.#stopped || !this.#started) return;
    this.#clearTimer();
    const mode = this.#mode;
    if (mode.kind !== 'stall') {
      while (this.#queue.length > 0 && !this.#destBlocked && !this.#destEnded && !this.#dest.destroyed) {
        const head = this.#queue[0]!;
        const now = performance.now();
        if (head.dueAt > now) {
          this.#schedule(head.dueAt - now);
          break;
        }
        let out = head.data;
        if (mode.kind === 'throttle') {
          this.#refillThrottle(false);
          const need = Math.min(out.length, this.#sliceBytes(mode.bytesPerSecond));
          if (this.#tokens < need) {
            this.#schedule(((need - this.#tokens) / mode.bytesPerSecond) * 1000);
            break;
          }
          out = out.subarray(0, Math.min(out.length, Math.floor(this.#tokens)));
          this.#tokens -= out.length;
        }
        if (out.length === head.data.length) this.#queue.shift();
        else head.data = head.data.subarray(out.length);
        this.queuedBytes -= out.length;
        this.forwarded += out.length;
        if (!this.#dest.write(out)) this.#destBlocked = true;
      }
      // The FIN travels behind the data, and not through a blackhole (a lifted one lets it through).
      if (this.#queue.length === 0 && this.#sourceEnded && mode.kind !== 'blackhole') this.#endDest();
    }
    this.#updateReading();
  }

  #updateReading(): void {
    const kind = this.#mode.kind;
    const draining = kind === 'blackhole' || this.#destEnded || this.#dest.destroyed;
    const shouldRead =
      this.#started &&
      !this.#stopped &&
      !this.#sourceEnded &&
      (draining || (kind !== 'stall' && !this.#destBlocked && this.queuedBytes < this.#maxQueuedBytes));
    if (shouldRead === this.#reading || this.#source.destroyed) return;
    this.#reading = shouldRead;
    if (shouldRead) this.#source.resume();
    else this.#source.pause();
  }

  #endDest(): void {
    if (this.#destEnded) return;
    this.#destEnded = true;
    if (!this.#dest.destroyed) this.#dest.end();
  }

  #dropQueue(): void {
    this.dropped += this.queuedBytes;
    this.#queue.length = 0;
    this.queuedBytes = 0;
  }

  #sliceBytes(bytesPerSecond: number): number {
    return Math.max(1, Math.floor((bytesPerSecond * THROTTLE_SLICE_MS) / 1000));
  }

  /** Token bucket holding at most one slice, so the long-run rate never exceeds the limit. */
  #refillThrottle(full: boolean): void {
    const now = performance.now();
    if (this.#mode.kind === 'throttle') {
      const cap = this.#sliceBytes(this.#mode.bytesPerSecond);
      this.#tokens = full
        ? cap
        : Math.min(cap, this.#tokens + ((now - this.#tokensAt) * this.#mode.bytesPerSecond) / 1000);
    }
    this.#tokensAt = now;
  }

  #schedule(ms: number): void {
    this.#timer = setTimeout(
      () => {
        this.#timer = undefined;
        this.#pump();
      },
      Math.max(1, Math.ceil(ms)),
    );
  }

  #clearTimer(): void {
    if (this.#timer === undefined) return;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}

class Connection implements ProxiedConnection {
  readonly id: number;
  readonly clientPort: number;
  readonly closed: Promise<void>;
  readonly #client: net.Socket;
  readonly #target: net.Socket;
  readonly #flows: Record<Direction, Flow>;

  constructor(
    id: number,
    client: net.Socket,
    target: { host: string; port: number },
    modes: Record<Direction, FaultMode>,
    maxQueuedBytes: number,
  ) {
    this.id = id;
    this.#client = client;
    this.clientPort = client.remotePort ?? 0;
    client.setNoDelay(true);
    this.#target = net.connect({ host: target.host, port: target.port, allowHalfOpen: true, noDelay: true });
    this.#flows = {
      up: new Flow(client, this.#target, modes.up, maxQueuedBytes),
      down: new Flow(this.#target, client, modes.down, maxQueuedBytes),
    };
    this.#target.once('connect', () => {
      this.#flows.up.start();
      this.#flows.down.start();
    });
    const closedOnce = (socket: net.Socket, other: net.Socket, into: Flow) =>
      new Promise<void>((resolve) => {
        // An error on one side (ECONNRESET, ECONNREFUSED on dial, EPIPE…) resets the other, as the
        // broken path would; the error itself goes no further.
        socket.on('error', () => resetSocket(other));
        socket.once('close', (hadError) => {
          into.stop();
          if (hadError) resetSocket(other);
          resolve();
        });
      });
    this.closed = Promise.all([
      closedOnce(client, this.#target, this.#flows.down),
      closedOnce(this.#target, client, this.#flows.up),
    ]).then(() => {
      this.#flows.up.stop();
      this.#flows.down.stop();
    });
  }

  get bytes(): { up: number; down: number } {
    return { up: this.#flows.up.forwarded, down: this.#flows.down.forwarded };
  }

  get dropped(): { up: number; down: number } {
    return { up: this.#flows.up.dropped, down: this.#flows.down.dropped };
  }

  get queued(): { up: number; down: number } {
    return { up: this.#flows.up.queuedBytes, down: this.#flows.down.queuedBytes };
  }

  set(mode: FaultMode, direction?: Direction): void {
    checkMode(mode);
    for (const d of directions(direction)) this.#flows[d].set(mode);
  }

  reset(): void {
    resetSocket(this.#client);
    resetSocket(this.#target);
  }

  cut(direction: Direction): void {
    this.#flows[direction].cut();
  }

  destroy(): void {
    this.#client.destroy();
    this.#target.destroy();
  }
}

interface Waiter {
  n: number;
  resolve: (conns: readonly ProxiedConnection[]) => void;
  reject: (err: Error) => void;
}

/** Starts a proxy on `host` (127.0.0.1) at an ephemeral port, forwarding to `target`. */
export async function startFaultProxy(opts: FaultProxyOptions): Promise<FaultProxy> {
  const host = opts.host ?? '127.0.0.1';
  const maxQueuedBytes = opts.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES;
  const initial = checkMode(opts.defaultMode ?? PASS);
  const defaults: Record<Direction, FaultMode> = { up: initial, down: initial };
  const live: Connection[] = [];
  const waiters = new Set<Waiter>();
  const events = new EventEmitter<{ connection: [ProxiedConnection] }>();
  let accepted = 0;
  let closing: Promise<void> | undefined;

  const settleWaiters = () => {
    for (const w of waiters) {
      if (live.length >= w.n) w.resolve([...live]);
    }
  };

  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (client) => {
    if (closing) {
      client.on('error', () => {});
      client.destroy();
      return;
    }
    accepted += 1;
    const conn = new Connection(accepted, client, opts.target, { ...defaults }, maxQueuedBytes);
    live.push(conn);
    void conn.closed.then(() => {
      const i = live.indexOf(conn);
      if (i >= 0) live.splice(i, 1);
    });
    events.emit('connection', conn);
    settleWaiters();
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port: 0 }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  // A listener error after start (none is expected on loopback) must not crash the test process.
  server.on('error', () => {});
  const port = (server.address() as net.AddressInfo).port;

  const close = (): Promise<void> => {
    closing ??= (async () => {
      const serverClosed = new Promise<void>((resolve) => server.close(() => resolve()));
      const conns = [...live];
      for (const conn of conns) conn.destroy();
      for (const w of waiters) w.reject(new Error('fault proxy closed'));
      await Promise.all([serverClosed, ...conns.map((c) => c.closed)]);
    })();
    return closing;
  };

  return {
    port,
    get connections() {
      return [...live];
    },
    get accepted() {
      return accepted;
    },
    waitForConnections(n, { timeoutMs, signal }) {
      if (live.length >= n) return Promise.resolve([...live]);
      if (closing) return Promise.reject(new Error('fault proxy closed'));
      return new Promise((resolve, reject) => {
        const done = () => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          waiters.delete(waiter);
        };
        const waiter: Waiter = {
          n,
          resolve: (conns) => {
            done();
            resolve(conns);
          },
          reject: (err) => {
            done();
            reject(err);
          },
        };
        const onAbort = () =>
          waiter.reject(new Error('waitForConnections aborted', { cause: signal?.reason }));
        const timer = setTimeout(
          () =>
            waiter.reject(
              new Error(
                `timed out after ${timeoutMs} ms waiting for ${n} live connection(s): ` +
                  `${live.length} live, ${accepted} accepted`,
              ),
            ),
          timeoutMs,
        );
        waiters.add(waiter);
        if (signal?.aborted) onAbort();
        else signal?.addEventListener('abort', onAbort, { once: true });
      });
    },
    onConnection(listener) {
      events.on('connection', listener);
      return () => events.off('connection', listener);
    },
    setDefault(mode, direction) {
      checkMode(mode);
      for (const d of directions(direction)) defaults[d] = mode;
    },
    resetAll() {
      for (const conn of [...live]) conn.reset();
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}
