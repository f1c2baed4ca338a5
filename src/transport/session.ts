/**
 * A warren/1 session: many streams over one byte stream (a TLS socket in production, any Duplex in
 * tests). See docs/protocol.md for the rules this file enforces.
 *
 * Three properties matter more than anything else here:
 * - The reader never stops reading the socket. What a peer may send is bounded by stream credit,
 *   the stream limit and the frame size, so memory stays bounded without pausing the socket — the
 *   pause is what wedged HTTP/2 sessions under full-duplex load.
 * - One writer per session. Frames queued during an event-loop turn go out in one socket write;
 *   control frames first, then DATA round-robin in chunks of at most one frame per stream per turn,
 *   so a small response is never stuck behind a bulk transfer. It waits for 'drain' when the socket
 *   asks it to.
 * - Per-frame work is plain code: no Subjects, no pipeline(), no allocation that can be avoided.
 */

import { performance } from 'node:perf_hooks';
import { Duplex } from 'node:stream';
import { BehaviorSubject, type Observable, Subject } from 'rxjs';
import type { Clock, TimerHandle } from '../shared/clock.ts';
import { type ErrorCode, WarrenError } from '../shared/errors.ts';
import type { Logger } from '../shared/log.ts';
import {
  decodeGoAway,
  decodeU32,
  EMPTY,
  encodeFrame,
  encodeFrameHeader,
  encodeGoAway,
  encodeU32,
  type Frame,
  FrameDecoder,
  FrameFlag,
  FrameType,
  MAX_FRAME_PAYLOAD,
  WireError,
} from './frame.ts';
import {
  type ControlMessage,
  decodeControl,
  decodeRequestHead,
  decodeResponseHead,
  encodeMessage,
  type RequestHead,
  type ResponseHead,
} from './messages.ts';

/** Fixed by protocol version 1: every stream starts with this much credit in each direction. */
export const INITIAL_WINDOW_BYTES = 256 * 1024;
const MAX_CREDIT = 2 ** 31 - 1;
/** Batches up to this size are merged into one buffer; larger ones are written as a vector. */
const SMALL_WRITE_BYTES = 16 * 1024;
/** Largest stream id (31 bits, as HTTP/2), so ids stay positive in every peer's integer type. */
const MAX_STREAM_ID = 2 ** 31 - 1;

export interface SessionInit {
  /** The edge opens odd stream ids, the agent even ones. */
  role: 'edge' | 'agent';
  /** Upper bound for auto-tuned receive windows (default 16 MiB). */
  maxWindowBytes?: number;
  /**
   * How far all streams together may grow their receive windows past the initial one (default
   * 64 MiB): with 1024 streams allowed, per-stream auto-tuning alone could promise gigabytes.
   */
  maxTunedWindowBytes?: number;
  /** Streams open at once in each direction (default 1024); more are refused. */
  maxConcurrentStreams?: number;
  /** PING interval (default 5000 ms); 0 turns heartbeats off. */
  heartbeatIntervalMs?: number;
  /** Silent intervals before the session is declared dead (default 3). */
  heartbeatMissedLimit?: number;
  /** DATA bytes a stream may have queued for sending before its writer is told to wait (default 64 KiB). */
  streamWriteBufferBytes?: number;
  /**
   * Whether the peer may open streams (default true). The edge sets false: agents open none in
   * warren/1, and a stream nobody serves would hold a slot and its window's worth of memory.
   */
  acceptPeerStreams?: boolean;
  /**
   * Control frames (PING ACKs, WINDOW_UPDATEs, RSTs …) that may wait for a socket that is not draining
   * (default 1 MiB). A peer that keeps sending PINGs but never reads would otherwise grow this forever.
   */
  maxControlQueueBytes?: number;
  /** Bytes written per socket write at most, so one flush does not monopolise the event loop (default 256 KiB). */
  flushBatchBytes?: number;
}

export interface SessionComponents {
  clock: Clock;
  log: Logger;
}

export type SessionState = 'open' | 'going_away' | 'closed';

export interface SessionCloseInfo {
  error?: WarrenError;
}

const noop = () => {};

function wireErrorName(code: number): string {
  for (const [name, value] of Object.entries(WireError)) if (value === code) return name;
  return `UNKNOWN(${code})`;
}

export class MuxSession {
  readonly role: 'edge' | 'agent';
  readonly #socket: Duplex;
  readonly #clock: Clock;
  readonly #log: Logger;
  // DATA is streamed as it arrives rather than reassembled into whole frames (see FrameDecoder).
  readonly #decoder = new FrameDecoder(MAX_FRAME_PAYLOAD, { streamData: true });
  readonly #streams = new Map<number, MuxStream>();
  readonly #maxWindow: number;
  readonly #maxTunedWindow: number;
  #tunedWindow = 0;
  readonly #maxStreams: number;
  readonly #heartbeatIntervalMs: number;
  readonly #heartbeatMissedLimit: number;
  readonly streamWriteBufferBytes: number;
  readonly #flushBatchBytes: number;
  readonly #acceptPeerStreams: boolean;

  #nextLocalId: number;
  #lastPeerId = 0;
  #control: Buffer[] = [];
  #controlBytes = 0;
  readonly #maxControlQueueBytes: number;
  #ready = new Set<MuxStream>();
  #flushScheduled = false;
  #waitingDrain = false;
  #state: SessionState = 'open';
  #peerGoAway = false;
  #closeError: WarrenError | undefined;
  /** Set once this side has sent GOAWAY for a connection error: nothing the peer sends counts any more. */
  #failed = false;
  #lastReceivedAt: number;
  #heartbeat: TimerHandle | undefined;
  #pingSeq = 0;
  #pingSentAt = new Map<number, number>();
  /** `roundTrip` callers by PING sequence number; each leaves on its ACK, its abort or the close. */
  #pingWaiters = new Map<
    number,
    { sentAt: number; resolve(rttMs: number): void; reject(err: Error): void }
  >();
  #rttMs = 1;
  #idleWaiters: Array<() => void> = [];

  readonly #incoming = new Subject<MuxStream>();
  readonly #controlMessages = new Subject<ControlMessage>();
  readonly #stateSubject = new BehaviorSubject<SessionState>('open');
  readonly #closed: Promise<SessionCloseInfo>;
  #resolveClosed!: (info: SessionCloseInfo) => void;

  /** Streams the peer opened. */
  readonly streams$: Observable<MuxStream> = this.#incoming.asObservable();
  /** Control messages from the peer, in order. */
  readonly control$: Observable<ControlMessage> = this.#controlMessages.asObservable();
  readonly state$: Observable<SessionState> = this.#stateSubject.asObservable();

  constructor(socket: Duplex, components: SessionComponents, init: SessionInit) {
    this.role = init.role;
    this.#socket = socket;
    this.#clock = components.clock;
    this.#log = components.log;
    this.#nextLocalId = init.role === 'edge' ? 1 : 2;
    this.#maxWindow = init.maxWindowBytes ?? 16 * 1024 * 1024;
    this.#maxTunedWindow = init.maxTunedWindowBytes ?? 64 * 1024 * 1024;
    this.#maxStreams = init.maxConcurrentStreams ?? 1024;
    this.#heartbeatIntervalMs = init.heartbeatIntervalMs ?? 5000;
    this.#heartbeatMissedLimit = init.heartbeatMissedLimit ?? 3;
    this.streamWriteBufferBytes = init.streamWriteBufferBytes ?? 64 * 1024;
    this.#flushBatchBytes = init.flushBatchBytes ?? 256 * 1024;
    this.#acceptPeerStreams = init.acceptPeerStreams ?? true;
    this.#maxControlQueueBytes = init.maxControlQueueBytes ?? 1024 * 1024;
    this.#lastReceivedAt = this.#clock.now();
    this.#closed = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });

    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (err: Error) => {
      this.#closeError ??= new WarrenError('session_closed', `connection error: ${err.message}`, {
        retryable: true,
        cause: err,
      });
    });
    socket.on('end', () => {
      // The peer finished writing; we are done too. Anything still open cannot complete.
      socket.end();
    });
    socket.on('close', () => this.#onSocketClose());
    if (this.#heartbeatIntervalMs > 0) this.#armHeartbeat();
  }

  get state(): SessionState {
    return this.#state;
  }

  /** Streams open in either direction. */
  get activeStreams(): number {
    return this.#streams.size;
  }

  /** Smoothed PING round-trip time in milliseconds. */
  get rttMs(): number {
    return this.#rttMs;
  }

  /** Resolves once the socket has closed, with the reason when it was not a clean close. */
  get closed(): Promise<SessionCloseInfo> {
    return this.#closed;
  }

  /** True once this side or the peer said GOAWAY: no new streams. */
  get goingAway(): boolean {
    return this.#state !== 'open' || this.#peerGoAway;
  }

  // ---------------------------------------------------------------- opening streams

  /** Opens a stream by sending its head. Throws `stream_limit` or `session_closed` (both retryable). */
  openStream(head: RequestHead, opts: { endStream?: boolean } = {}): MuxStream {
    if (this.goingAway) throw new WarrenError('session_closed', 'session is closing', { retryable: true });
    if (this.#streams.size >= this.#maxStreams) {
      throw new WarrenError('stream_limit', `session has ${this.#streams.size} open streams`, {
        retryable: true,
      });
    }
    const payload = encodeMessage(head);
    if (payload.length > MAX_FRAME_PAYLOAD) {
      throw new WarrenError(
        'headers_too_large',
        `request head of ${payload.length} bytes exceeds ${MAX_FRAME_PAYLOAD}`,
      );
    }
    if (this.#nextLocalId > MAX_STREAM_ID) {
      // Ids never wrap: a session that used them all winds down and its peer dials a fresh one.
      void this.close({ reason: 'stream ids exhausted' });
      throw new WarrenError('session_closed', 'session has used all its stream ids', { retryable: true });
    }
    const id = this.#nextLocalId;
    this.#nextLocalId += 2;
    const stream = new MuxStream(this, id);
    this.#streams.set(id, stream);
    stream._markHeadSent(opts.endStream === true);
    this.#queueControl(FrameType.HEADERS, opts.endStream ? FrameFlag.END : 0, id, payload);
    if (opts.endStream) stream.end();
    return stream;
  }

  sendControl(message: ControlMessage): void {
    const payload = encodeMessage(message);
    if (payload.length > MAX_FRAME_PAYLOAD) {
      throw new WarrenError(
        'bad_request',
        `control message of ${payload.length} bytes exceeds ${MAX_FRAME_PAYLOAD}`,
      );
    }
    this.#queueControl(FrameType.CONTROL, 0, 0, payload);
  }

  /** Sends a PING now (heartbeats do this on their own); the answer updates `rttMs`. */
  ping(): void {
    this.#sendPing();
  }

  /**
   * Sends a PING and resolves with its round-trip time in ms once the peer's ACK for it arrives.
   * A barrier as well as a probe: the peer handles frames in the order it reads them and queues its
   * HEADERS, CONTROL and PING ACK frames in one FIFO, so when the ACK arrives every such frame the peer
   * queued before it read this PING has arrived and been handled here. Rejects with the error the
   * session closed with (`session_closed` for a clean close) when it closes first, or with the signal's
   * reason when `signal` aborts.
   */
  roundTrip(signal?: AbortSignal): Promise<number> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#state === 'closed' || this.#socket.destroyed) {
      return Promise.reject(new WarrenError('session_closed', 'session is closed', { retryable: true }));
    }
    return new Promise<number>((resolve, reject) => {
      const sentAt = performance.now();
      const seq = this.#sendPing();
      const onAbort = () => {
        this.#pingWaiters.delete(seq);
        reject(signal?.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#pingWaiters.set(seq, {
        sentAt,
        resolve: (rttMs) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(rttMs);
        },
        reject: (err) => {
          signal?.removeEventListener('abort', onAbort);
          reject(err);
        },
      });
    });
  }

  #sendPing(): number {
    const seq = ++this.#pingSeq >>> 0;
    const payload = Buffer.alloc(8);
    payload.writeUInt32BE(seq, 4);
    this.#pingSentAt.set(seq, performance.now());
    // Bound the table: a peer that never answers must not grow it. (`roundTrip` keeps its own waiters,
    // so an eviction here never loses one; they leave on their ACK, their abort or the close.)
    if (this.#pingSentAt.size > 16) {
      const oldest = this.#pingSentAt.keys().next().value;
      if (oldest !== undefined) this.#pingSentAt.delete(oldest);
    }
    this.#queueControl(FrameType.PING, 0, 0, payload);
    return seq;
  }

  // ---------------------------------------------------------------- closing

  /** Graceful: GOAWAY, refuse new streams, let open ones finish (until `signal` aborts), then close. */
  async close(opts: { signal?: AbortSignal; reason?: string } = {}): Promise<void> {
    if (this.#state === 'closed') return;
    if (this.#state === 'open') {
      this.#setState('going_away');
      this.#queueControl(
        FrameType.GOAWAY,
        0,
        0,
        encodeGoAway(this.#lastPeerId, WireError.NO_ERROR, opts.reason ?? 'close'),
      );
    }
    await this.waitIdle(opts.signal);
    // The last streams' final frames (a bodiless response's HEADERS, say) may still be queued for the
    // next flush, and the writer writes nothing once the socket has ended: send them before the FIN.
    if (!this.#socket.destroyed && !this.#socket.writableEnded) {
      this.#waitingDrain = false;
      this.#flush();
    }
    this.#endSocket();
    await this.#closed;
  }

  /** Resolves when no stream is open, or when `signal` aborts. */
  waitIdle(signal?: AbortSignal): Promise<void> {
    if (this.#streams.size === 0 || signal?.aborted || this.#state === 'closed') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        signal?.removeEventListener('abort', done);
        resolve();
      };
      this.#idleWaiters.push(done);
      signal?.addEventListener('abort', done, { once: true });
    });
  }

  /** Abort: ends every stream and the socket now. Idempotent. */
  destroy(error?: WarrenError): void {
    if (this.#state === 'closed') return;
    if (error) this.#closeError ??= error;
    this.#socket.destroy();
  }

  /** A fault of the whole connection: tell the peer why, then close. */
  #connectionError(code: ErrorCode, wire: WireError, message: string): void {
    if (this.#state === 'closed' || this.#failed) return;
    this.#failed = true;
    this.#log.warn({ code, wire: wireErrorName(wire) }, `warren/1 session error: ${message}`);
    this.#closeError ??= new WarrenError(code, message, { retryable: true });
    this.#setState('going_away');
    this.#control.push(
      encodeFrame({
        type: FrameType.GOAWAY,
        flags: 0,
        streamId: 0,
        payload: encodeGoAway(this.#lastPeerId, wire, message),
      }),
    );
    // Write now even if the writer is waiting for 'drain': end() comes next, after which no 'drain'
    // arrives and #flush writes nothing, so a GOAWAY left queued would be lost. The socket buffers it.
    this.#waitingDrain = false;
    this.#flush();
    this.#endSocket();
  }

  #endSocket(): void {
    if (this.#socket.writableEnded) return;
    this.#socket.end();
    // A peer that never closes its side must not keep us waiting forever.
    const t = this.#clock.setTimeout(() => this.#socket.destroy(), 5000);
    this.#socket.once('close', () => this.#clock.clearTimeout(t));
  }

  #onSocketClose(): void {
    if (this.#state === 'closed') return;
    this.#setState('closed');
    if (this.#heartbeat !== undefined) this.#clock.clearTimeout(this.#heartbeat);
    this.#heartbeat = undefined;
    const err =
      this.#closeError ?? new WarrenError('session_closed', 'connection closed', { retryable: true });
    for (const stream of [...this.#streams.values()]) stream._abort(err);
    this.#streams.clear();
    this.#ready.clear();
    this.#control = [];
    for (const w of this.#idleWaiters.splice(0)) w();
    const waiters = [...this.#pingWaiters.values()];
    this.#pingWaiters.clear();
    for (const w of waiters) w.reject(err);
    this.#incoming.complete();
    this.#controlMessages.complete();
    this.#stateSubject.complete();
    this.#resolveClosed(this.#closeError ? { error: this.#closeError } : {});
  }

  #setState(state: SessionState): void {
    if (this.#state === state) return;
    this.#state = state;
    this.#stateSubject.next(state);
  }

  // ---------------------------------------------------------------- heartbeats

  #armHeartbeat(): void {
    this.#heartbeat = this.#clock.setTimeout(() => {
      this.#heartbeat = undefined;
      if (this.#state === 'closed') return;
      const silentMs = this.#clock.now() - this.#lastReceivedAt;
      if (silentMs >= this.#heartbeatIntervalMs * this.#heartbeatMissedLimit) {
        this.#log.warn({ silentMs }, 'warren/1 heartbeat lost: no frame from the peer');
        this.#closeError ??= new WarrenError(
          'heartbeat_timeout',
          `no frame from the peer for ${silentMs} ms`,
          {
            retryable: true,
          },
        );
        this.#socket.destroy();
        return;
      }
      this.ping();
      this.#armHeartbeat();
    }, this.#heartbeatIntervalMs);
  }

  // ---------------------------------------------------------------- reading

  #onData(chunk: Buffer): void {
    // After a connection error the byte stream may be misframed (an oversize frame is never consumed).
    if (this.#failed) return;
    this.#lastReceivedAt = this.#clock.now();
    try {
      this.#decoder.push(chunk, this.#onFrame);
    } catch (err) {
      if (err instanceof WarrenError && err.code === 'frame_too_large') {
        this.#connectionError(err.code, WireError.FRAME_SIZE_ERROR, err.message);
      } else {
        this.#log.error({ err }, 'warren/1 internal error while handling a frame');
        this.#connectionError('protocol_error', WireError.INTERNAL_ERROR, 'internal error');
      }
    }
  }

  readonly #onFrame = (frame: Frame): void => {
    // Later frames of the chunk that held the fault must not reach streams or control$.
    if (this.#state === 'closed' || this.#failed) return;
    switch (frame.type) {
      case FrameType.DATA:
        return this.#onDataFrame(frame);
      case FrameType.HEADERS:
        return this.#onHeaders(frame);
      case FrameType.WINDOW_UPDATE:
        return this.#onWindowUpdate(frame);
      case FrameType.RST:
        return this.#onRst(frame);
      case FrameType.PING:
        return this.#onPing(frame);
      case FrameType.GOAWAY:
        return this.#onGoAway(frame);
      case FrameType.CONTROL:
        return this.#onControl(frame);
      default:
        // Unknown frame types are ignored so that later versions can add them.
        return;
    }
  };

  #isPeerId(id: number): boolean {
    return (id & 1) === (this.role === 'edge' ? 0 : 1);
  }

  /** A frame for a stream we do not hold: fine if it was closed recently, a protocol error if it never existed. */
  #unknownStream(frame: Frame): void {
    const neverOpened = this.#isPeerId(frame.streamId)
      ? frame.streamId > this.#lastPeerId
      : frame.streamId >= this.#nextLocalId;
    if (neverOpened) {
      this.#connectionError(
        'protocol_error',
        WireError.PROTOCOL_ERROR,
        `frame type ${frame.type} for stream ${frame.streamId} that was never opened`,
      );
    }
    // Otherwise: frames in flight after a reset or close; ignore them.
  }

  #onDataFrame(frame: Frame): void {
    if (frame.streamId === 0) {
      return this.#connectionError('protocol_error', WireError.PROTOCOL_ERROR, 'DATA on stream 0');
    }
    const stream = this.#streams.get(frame.streamId);
    if (!stream) return this.#unknownStream(frame);
    stream._onData(frame.payload, (frame.flags & FrameFlag.END) !== 0);
  }

  #onHeaders(frame: Frame): void {
    if (frame.streamId === 0) {
      return this.#connectionError('protocol_error', WireError.PROTOCOL_ERROR, 'HEADERS on stream 0');
    }
    const end = (frame.flags & FrameFlag.END) !== 0;
    const existing = this.#streams.get(frame.streamId);
    if (existing) {
      existing._onHeaders(frame.payload, end);
      return;
    }
    if (!this.#isPeerId(frame.streamId)) return this.#unknownStream(frame);
    if (frame.streamId <= this.#lastPeerId) {
      // A HEADERS frame reusing a closed stream's id: that stream is over.
      this.sendRst(frame.streamId, WireError.STREAM_CLOSED);
      return;
    }
    this.#lastPeerId = frame.streamId;
    if (!this.#acceptPeerStreams || this.#state !== 'open' || this.#streams.size >= this.#maxStreams) {
      this.sendRst(frame.streamId, WireError.REFUSED_STREAM);
      return;
    }
    let head: RequestHead;
    try {
      head = decodeRequestHead(frame.payload);
    } catch {
      this.sendRst(frame.streamId, WireError.PROTOCOL_ERROR);
      return;
    }
    const stream = new MuxStream(this, frame.streamId);
    stream.requestHead = head;
    this.#streams.set(frame.streamId, stream);
    stream._markHeadReceived(end);
    this.#incoming.next(stream);
  }

  #onWindowUpdate(frame: Frame): void {
    let increment: number;
    try {
      increment = decodeU32(frame.payload, 'WINDOW_UPDATE');
    } catch (err) {
      return this.#connectionError('protocol_error', WireError.PROTOCOL_ERROR, (err as Error).message);
    }
    if (frame.streamId === 0) {
      return this.#connectionError('protocol_error', WireError.PROTOCOL_ERROR, 'WINDOW_UPDATE on stream 0');
    }
    const stream = this.#streams.get(frame.streamId);
    if (!stream) return this.#unknownStream(frame);
    stream._onWindowUpdate(increment);
  }

  #onRst(frame: Frame): void {
    let code: number;
    try {
      code = decodeU32(frame.payload, 'RST');
    } catch (err) {
      return this.#connectionError('protocol_error', WireError.PROTOCOL_ERROR, (err as Error).message);
    }
    if (frame.streamId === 0) {
      return this.#connectionError('protocol_error', WireError.PROTOCOL_ERROR, 'RST on stream 0');
    }
    const stream = this.#streams.get(frame.streamId);
    if (!stream) return this.#unknownStream(frame);
    stream._onRst(code);
  }

  #onPing(frame: Frame): void {
    if (frame.streamId !== 0 || frame.payload.length !== 8) {
      return this.#connectionError(
        'protocol_error',
        WireError.PROTOCOL_ERROR,
        'PING must be 8 bytes on stream 0',
      );
    }
    if ((frame.flags & FrameFlag.ACK) === 0) {
      this.#queueControl(FrameType.PING, FrameFlag.ACK, 0, Buffer.from(frame.payload));
      return;
    }
    const seq = frame.payload.readUInt32BE(4);
    const waiter = this.#pingWaiters.get(seq);
    if (waiter) {
      this.#pingWaiters.delete(seq);
      waiter.resolve(performance.now() - waiter.sentAt);
    }
    const sentAt = this.#pingSentAt.get(seq);
    if (sentAt === undefined) return;
    this.#pingSentAt.delete(seq);
    const sample = performance.now() - sentAt;
    this.#rttMs = this.#rttMs * 0.75 + sample * 0.25;
  }

  #onGoAway(frame: Frame): void {
    if (frame.streamId !== 0) {
      return this.#connectionError('protocol_error', WireError.PROTOCOL_ERROR, 'GOAWAY on a stream');
    }
    let info: { lastStreamId: number; code: number; reason: string };
    try {
      info = decodeGoAway(frame.payload);
    } catch (err) {
      return this.#connectionError('protocol_error', WireError.PROTOCOL_ERROR, (err as Error).message);
    }
    this.#peerGoAway = true;
    if (info.code !== WireError.NO_ERROR) {
      this.#log.warn(
        { wire: wireErrorName(info.code), reason: info.reason },
        'warren/1 peer closed the session with an error',
      );
      this.#closeError ??= new WarrenError(
        'session_closed',
        `peer sent GOAWAY ${wireErrorName(info.code)}: ${info.reason}`,
        {
          retryable: true,
        },
      );
    }
    // Streams we opened that the peer never saw will not be served: refuse them so callers may retry.
    for (const [id, stream] of this.#streams) {
      if (!this.#isPeerId(id) && id > info.lastStreamId) stream._onRst(WireError.REFUSED_STREAM);
    }
    if (this.#state === 'open') this.#setState('going_away');
  }

  #onControl(frame: Frame): void {
    if (frame.streamId !== 0) {
      return this.#connectionError('protocol_error', WireError.PROTOCOL_ERROR, 'CONTROL on a stream');
    }
    let message: ControlMessage | undefined;
    try {
      message = decodeControl(frame.payload);
    } catch (err) {
      return this.#connectionError('protocol_error', WireError.PROTOCOL_ERROR, (err as Error).message);
    }
    if (message) this.#controlMessages.next(message);
  }

  // ---------------------------------------------------------------- writing

  /** @internal Frames that jump the DATA queue. Payload is copied into the frame. */
  #queueControl(type: number, flags: number, streamId: number, payload: Buffer): void {
    if (this.#state === 'closed' || this.#socket.destroyed) return;
    const frame = encodeFrame({ type, flags, streamId, payload });
    this.#controlBytes += frame.length;
    if (this.#controlBytes > this.#maxControlQueueBytes) {
      this.#log.warn(
        { queuedBytes: this.#controlBytes },
        'warren/1 peer does not read its control frames; closing',
      );
      this.#closeError ??= new WarrenError(
        'protocol_error',
        'the peer stopped reading while it kept sending',
        {
          retryable: true,
        },
      );
      this.#socket.destroy();
      return;
    }
    this.#control.push(frame);
    this.#scheduleFlush();
  }

  /** @internal */
  sendRst(streamId: number, code: number): void {
    this.#queueControl(FrameType.RST, 0, streamId, encodeU32(code));
  }

  /** @internal */
  sendWindowUpdate(streamId: number, increment: number): void {
    this.#queueControl(FrameType.WINDOW_UPDATE, 0, streamId, encodeU32(increment));
  }

  /** @internal */
  sendHeaders(streamId: number, head: ResponseHead, end: boolean): void {
    const payload = encodeMessage(head);
    if (payload.length > MAX_FRAME_PAYLOAD) {
      throw new WarrenError(
        'headers_too_large',
        `response head of ${payload.length} bytes exceeds ${MAX_FRAME_PAYLOAD}`,
      );
    }
    this.#queueControl(FrameType.HEADERS, end ? FrameFlag.END : 0, streamId, payload);
  }

  /** @internal A stream has DATA (or its END) to send and credit to send it with. */
  markReady(stream: MuxStream): void {
    if (this.#state === 'closed') return;
    this.#ready.add(stream);
    this.#scheduleFlush();
  }

  /** @internal */
  forget(stream: MuxStream): void {
    if (!this.#streams.delete(stream.id)) return;
    this.#tunedWindow -= stream._tunedBytes;
    this.#ready.delete(stream);
    if (this.#streams.size === 0) for (const w of this.#idleWaiters.splice(0)) w();
  }

  /** @internal Grants up to `want` bytes of window growth from the session's budget. */
  reserveWindowGrowth(want: number): number {
    const granted = Math.max(0, Math.min(want, this.#maxTunedWindow - this.#tunedWindow));
    this.#tunedWindow += granted;
    return granted;
  }

  /** Window growth held by open streams, within `maxTunedWindowBytes`. */
  get tunedWindowBytes(): number {
    return this.#tunedWindow;
  }

  /** @internal */
  get maxWindowBytes(): number {
    return this.#maxWindow;
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled || this.#waitingDrain) return;
    this.#flushScheduled = true;
    // setImmediate runs after the I/O callbacks of this loop turn: everything written during the turn
    // leaves in one socket write.
    setImmediate(this.#flush);
  }

  readonly #flush = (): void => {
    this.#flushScheduled = false;
    if (this.#waitingDrain || this.#socket.destroyed || this.#socket.writableEnded) return;
    const out: Buffer[] = this.#control;
    this.#control = [];
    this.#controlBytes = 0;
    let bytes = 0;
    for (const b of out) bytes += b.length;
    // Round-robin: each ready stream sends at most one frame per pass; a stream that still has data and
    // credit goes to the back of the queue.
    while (this.#ready.size > 0 && bytes < this.#flushBatchBytes) {
      const stream: MuxStream = this.#ready.values().next().value!;
      this.#ready.delete(stream);
      const frame = stream._takeFrame();
      if (frame) {
        out.push(
          encodeFrameHeader(FrameType.DATA, frame.end ? FrameFlag.END : 0, stream.id, frame.payload.length),
        );
        if (frame.payload.length > 0) out.push(frame.payload);
        bytes += 10 + frame.payload.length;
      }
      if (stream._hasSendable()) this.#ready.add(stream);
    }
    if (out.length === 0) return;
    let ok: boolean;
    if (out.length === 1 || bytes <= SMALL_WRITE_BYTES) {
      ok = this.#socket.write(out.length === 1 ? out[0]! : Buffer.concat(out, bytes));
    } else {
      // Large batches go down as one writev: no JavaScript copy of the payloads, no garbage.
      this.#socket.cork();
      for (const b of out) this.#socket.write(b);
      this.#socket.uncork();
      ok = !this.#socket.writableNeedDrain;
    }
    if (!ok) {
      this.#waitingDrain = true;
      this.#socket.once('drain', () => {
        this.#waitingDrain = false;
        this.#flush();
      });
    } else if (this.#ready.size > 0 || this.#control.length > 0) {
      this.#scheduleFlush();
    }
  };
}

/**
 * One multiplexed stream, as a Node Duplex: what the peer sends is readable, what is written here is
 * sent. The peer's head is `requestHead` (a stream the peer opened) or arrives as the 'response' event
 * (a stream this side opened). `destroy()` resets the stream; `end()` half-closes it.
 */
export class MuxStream extends Duplex {
  readonly id: number;
  readonly #session: MuxSession;
  requestHead: RequestHead | undefined;
  responseHead: ResponseHead | undefined;

  // Protocol state of each direction.
  #headSent = false;
  #headReceived = false;
  #localEnded = false; // END sent (or queued to send)
  #remoteEnded = false; // END received
  #reset = false;

  // Sending.
  #sendCredit = INITIAL_WINDOW_BYTES;
  #outQueue: Buffer[] = [];
  #outBytes = 0;
  #endQueued = false;
  #writeCallback: ((err?: Error | null) => void) | undefined;
  #finalCallback: ((err?: Error | null) => void) | undefined;

  // Receiving.
  #recvWindow = INITIAL_WINDOW_BYTES; // current window size (auto-tuned)
  #recvCredit = INITIAL_WINDOW_BYTES; // what the peer may still send
  #received = 0;
  #acked = 0;
  #lastUpdateAt = 0;

  constructor(session: MuxSession, id: number) {
    super({ allowHalfOpen: true, readableHighWaterMark: 64 * 1024, writableHighWaterMark: 64 * 1024 });
    this.#session = session;
    this.id = id;
    // Stream errors are reported to whoever listens; an unobserved reset must never crash the process.
    this.on('error', noop);
  }

  /** Send the response head for a stream the peer opened. `endStream` when there is no body. */
  respond(head: ResponseHead, opts: { endStream?: boolean } = {}): void {
    if (this.#headSent) throw new WarrenError('protocol_error', `stream ${this.id} already sent its head`);
    if (this.#reset || this.destroyed) return;
    this.#session.sendHeaders(this.id, head, opts.endStream === true);
    this.#headSent = true;
    if (opts.endStream) {
      this.#localEnded = true;
      this.#endQueued = true;
      this.end();
      this.#maybeForget();
    } else if (this.#hasQueuedData()) {
      // Body bytes, or the END of an empty body, written before the head: they may go now.
      this.#session.markReady(this);
    }
  }

  /** The peer has ended its side (END received): for a request, there is no more body. */
  get remoteEnded(): boolean {
    return this.#remoteEnded;
  }

  get headSent(): boolean {
    return this.#headSent;
  }

  /** Bytes this stream may still send before the peer grants more credit. */
  get sendCredit(): number {
    return this.#sendCredit;
  }

  /** @internal Window growth past the initial window, drawn from the session's budget. */
  get _tunedBytes(): number {
    return this.#recvWindow - INITIAL_WINDOW_BYTES;
  }

  /** The peer's current receive window for this stream, as this side has granted it. */
  get receiveWindow(): number {
    return this.#recvWindow;
  }

  /** Resets the stream with a code (default CANCEL): the peer stops too. */
  reset(code: number = WireError.CANCEL): void {
    if (this.#reset) return;
    this.#resetWith(code);
    this.destroy();
  }

  // ------------------------------------------------------------ session → stream

  /** @internal */
  _markHeadSent(end: boolean): void {
    this.#headSent = true;
    if (end) {
      this.#localEnded = true;
      this.#endQueued = true;
    }
  }

  /** @internal */
  _markHeadReceived(end: boolean): void {
    this.#headReceived = true;
    if (end) {
      this.#remoteEnded = true;
      this.push(null);
    }
  }

  /** @internal The peer's HEADERS on a stream that exists. */
  _onHeaders(payload: Buffer, end: boolean): void {
    if (this.#headReceived) return this.#protocolReset('second HEADERS frame on a stream');
    let head: ResponseHead;
    try {
      head = decodeResponseHead(payload);
    } catch {
      return this.#protocolReset('malformed response head');
    }
    this.responseHead = head;
    this._markHeadReceived(end);
    this.emit('response', head);
    this.#maybeForget();
  }

  /** @internal */
  _onData(payload: Buffer, end: boolean): void {
    if (!this.#headReceived) return this.#protocolReset('DATA before HEADERS');
    if (this.#remoteEnded) {
      this.#resetWith(WireError.STREAM_CLOSED);
      this.destroy(new WarrenError('stream_closed', `peer sent DATA after ending stream ${this.id}`));
      return;
    }
    if (payload.length > this.#recvCredit) {
      this.#resetWith(WireError.FLOW_CONTROL_ERROR);
      this.destroy(
        new WarrenError(
          'flow_control_error',
          `peer sent ${payload.length} bytes with ${this.#recvCredit} of credit`,
        ),
      );
      return;
    }
    this.#recvCredit -= payload.length;
    this.#received += payload.length;
    if (payload.length > 0 && !this.destroyed) {
      if (this.push(payload)) this.#maybeGrantCredit();
    }
    if (end) {
      this.#remoteEnded = true;
      this.push(null);
      this.#maybeForget();
    }
  }

  /** @internal */
  _onWindowUpdate(increment: number): void {
    if (increment === 0 || this.#sendCredit + increment > MAX_CREDIT) {
      this.#resetWith(WireError.FLOW_CONTROL_ERROR);
      this.destroy(new WarrenError('flow_control_error', `bad WINDOW_UPDATE of ${increment}`));
      return;
    }
    const wasBlocked = this.#sendCredit === 0;
    this.#sendCredit += increment;
    if (wasBlocked && this.#hasQueuedData()) this.#session.markReady(this);
  }

  /** @internal */
  _onRst(code: number): void {
    if (this.#reset) return;
    this.#reset = true;
    this.#session.forget(this);
    this.destroy(
      new WarrenError('stream_reset', `peer reset stream ${this.id}: ${wireErrorName(code)}`, {
        retryable: code === WireError.REFUSED_STREAM,
      }),
    );
  }

  /** @internal The session is gone. */
  _abort(err: WarrenError): void {
    this.#reset = true;
    this.destroy(err);
  }

  /** @internal The next DATA frame to send, within credit, or undefined. */
  _takeFrame(): { payload: Buffer; end: boolean } | undefined {
    if (this.#reset || !this.#headSent) return undefined;
    const max = Math.min(MAX_FRAME_PAYLOAD, this.#sendCredit);
    let payload: Buffer = EMPTY;
    if (this.#outBytes > 0 && max > 0) {
      const first = this.#outQueue[0]!;
      if (first.length <= max) {
        this.#outQueue.shift();
        payload = first;
        // Merge further small chunks into the same frame.
        if (this.#outQueue.length > 0 && first.length < max) {
          const parts = [first];
          let size = first.length;
          while (this.#outQueue.length > 0 && size + this.#outQueue[0]!.length <= max) {
            const next = this.#outQueue.shift()!;
            parts.push(next);
            size += next.length;
          }
          if (parts.length > 1) payload = Buffer.concat(parts, size);
        }
      } else {
        payload = first.subarray(0, max);
        this.#outQueue[0] = first.subarray(max);
      }
      this.#outBytes -= payload.length;
      this.#sendCredit -= payload.length;
      this.#releaseWriter();
    }
    const end = this.#endQueued && this.#outBytes === 0 && !this.#localEnded;
    if (payload.length === 0 && !end) return undefined;
    if (end) {
      this.#localEnded = true;
      const cb = this.#finalCallback;
      this.#finalCallback = undefined;
      cb?.();
      this.#maybeForget();
    }
    return { payload, end };
  }

  /** @internal */
  _hasSendable(): boolean {
    if (this.#reset || !this.#headSent) return false;
    return (
      (this.#outBytes > 0 && this.#sendCredit > 0) ||
      (this.#endQueued && this.#outBytes === 0 && !this.#localEnded)
    );
  }

  #hasQueuedData(): boolean {
    return this.#outBytes > 0 || (this.#endQueued && !this.#localEnded);
  }

  #releaseWriter(): void {
    if (this.#writeCallback && this.#outBytes < this.#session.streamWriteBufferBytes) {
      const cb = this.#writeCallback;
      this.#writeCallback = undefined;
      cb();
    }
  }

  #protocolReset(why: string): void {
    this.#resetWith(WireError.PROTOCOL_ERROR);
    this.destroy(new WarrenError('protocol_error', `stream ${this.id}: ${why}`));
  }

  #resetWith(code: number): void {
    if (this.#reset) return;
    this.#reset = true;
    this.#session.sendRst(this.id, code);
    this.#session.forget(this);
  }

  #maybeForget(): void {
    if (this.#localEnded && this.#remoteEnded) this.#session.forget(this);
  }

  /**
   * Gives the peer credit for what the reader has consumed, once at least half a window is owed.
   * Auto-tuning: when a whole window is consumed in under a few round trips, the window is what
   * limits throughput, so it doubles (up to the session's maximum), as yamux and QUIC do.
   */
  #maybeGrantCredit(): void {
    if (this.#remoteEnded || this.#reset) return;
    const consumed = this.#received - this.readableLength;
    const owed = consumed - this.#acked;
    if (owed < this.#recvWindow / 2) return;
    const now = performance.now();
    let grow = 0;
    if (
      this.#lastUpdateAt > 0 &&
      now - this.#lastUpdateAt < 4 * this.#session.rttMs &&
      this.#recvWindow < this.#session.maxWindowBytes
    ) {
      grow = this.#session.reserveWindowGrowth(
        Math.min(this.#recvWindow, this.#session.maxWindowBytes - this.#recvWindow),
      );
      this.#recvWindow += grow;
    }
    this.#lastUpdateAt = now;
    this.#acked = consumed;
    this.#recvCredit += owed + grow;
    this.#session.sendWindowUpdate(this.id, owed + grow);
  }

  // ------------------------------------------------------------ Duplex implementation

  override _read(): void {
    this.#maybeGrantCredit();
  }

  /**
   * Node calls `_read` before it takes the bytes out of the buffer, and not again until the next push.
   * A reader that lets the window fill and then empties it (`for await`, `read()` in paused mode) would
   * leave the peer without credit and the stream wedged, so credit is also checked after each read.
   */
  override read(size?: number): Buffer | null {
    const chunk = super.read(size) as Buffer | null;
    this.#maybeGrantCredit();
    return chunk;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (this.#reset || this.#localEnded) {
      callback(new WarrenError('stream_closed', `stream ${this.id} is closed for writing`));
      return;
    }
    if (chunk.length === 0) return callback();
    this.#outQueue.push(chunk);
    this.#outBytes += chunk.length;
    if (this.#headSent && this.#sendCredit > 0) this.#session.markReady(this);
    if (this.#outBytes < this.#session.streamWriteBufferBytes) callback();
    else this.#writeCallback = callback;
  }

  override _final(callback: (err?: Error | null) => void): void {
    if (this.#reset) return callback(new WarrenError('stream_closed', `stream ${this.id} was reset`));
    if (this.#localEnded) return callback();
    this.#endQueued = true;
    this.#finalCallback = callback;
    if (this.#headSent) this.#session.markReady(this);
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    if (!this.#reset && !(this.#localEnded && this.#remoteEnded)) {
      this.#resetWith(err ? WireError.INTERNAL_ERROR : WireError.CANCEL);
    }
    this.#outQueue = [];
    this.#outBytes = 0;
    const pending = this.#writeCallback ?? this.#finalCallback;
    this.#writeCallback = undefined;
    this.#finalCallback = undefined;
    // Node forbids calling a write callback after destroy's callback with the same error twice; just release it.
    pending?.(err ?? new WarrenError('stream_closed', `stream ${this.id} destroyed`));
    callback(err);
  }
}
