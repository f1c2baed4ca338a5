/**
 * Two in-memory Duplex ends joined back to back, like a socket pair without the kernel: what one end
 * writes, the other reads. Tests that must control *when* bytes cross (fast-check's scheduler, a
 * writer held in backpressure) pass `transfer`; by default each chunk crosses on the next
 * `setImmediate`, which is asynchronous like a real socket and keeps the sessions from re-entering
 * each other synchronously.
 *
 * A write's callback fires only once its chunk has been delivered, so a writer sees backpressure
 * (`write()` returning false, then 'drain') exactly while its chunks are in flight. Chunks from one end
 * arrive in order: Node's Writable hands `_write` one chunk at a time.
 */
import { Duplex } from 'node:stream';

export type PairSide = 'a' | 'b';

export interface DuplexPairOptions {
  /**
   * Decides when a chunk written on `from` reaches the other end: call `deliver` (once) to push it.
   * Default: `setImmediate(deliver)`.
   */
  transfer?: (from: PairSide, chunk: Buffer, deliver: () => void) => void;
  /** Writable high-water mark of each end (default 16 KiB, as for a net.Socket). */
  highWaterMark?: number;
}

export interface DuplexPair {
  a: Duplex;
  b: Duplex;
}

class PairEnd extends Duplex {
  peer!: PairEnd;
  #peerEnded = false;
  readonly #side: PairSide;
  readonly #transfer: NonNullable<DuplexPairOptions['transfer']>;

  constructor(side: PairSide, opts: DuplexPairOptions) {
    super({ allowHalfOpen: true, writableHighWaterMark: opts.highWaterMark ?? 16 * 1024 });
    this.#side = side;
    this.#transfer = opts.transfer ?? ((_from, _chunk, deliver) => setImmediate(deliver));
  }

  override _read(): void {}

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    let delivered = false;
    this.#transfer(this.#side, chunk, () => {
      if (delivered) return;
      delivered = true;
      // A peer that is gone swallows the bytes, like a socket whose far end closed.
      if (!this.peer.destroyed && !this.#peerEnded) this.peer.push(chunk);
      callback();
    });
  }

  override _final(callback: (err?: Error | null) => void): void {
    // Every earlier write has been delivered by now (its callback came first), so EOF cannot overtake data.
    this.#endPeer();
    callback();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    // The far end sees EOF, as after a TCP close.
    setImmediate(() => this.#endPeer());
    callback(err);
  }

  #endPeer(): void {
    if (this.#peerEnded) return;
    this.#peerEnded = true;
    if (!this.peer.destroyed) this.peer.push(null);
  }
}

export function createDuplexPair(opts: DuplexPairOptions = {}): DuplexPair {
  const a = new PairEnd('a', opts);
  const b = new PairEnd('b', opts);
  a.peer = b;
  b.peer = a;
  return { a, b };
}
