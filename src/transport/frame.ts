/**
 * warren/1 frame codec. Every frame is a 10-byte header and a payload of at most 64 KiB:
 *
 *   0      1      2             6             10
 *   +------+------+-------------+-------------+----------------+
 *   | type | flags| stream id   | length      | payload …      |
 *   | u8   | u8   | u32 BE      | u32 BE      | length bytes   |
 *   +------+------+-------------+-------------+----------------+
 *
 * The decoder is incremental: feed it any chunking of the byte stream and it yields the same frames.
 * It never throws anything but a `FrameError` (a `WarrenError` with a code), and it checks the length
 * before buffering, so a peer cannot make it hold more than one maximal frame.
 */
import { WarrenError } from '../shared/errors.ts';

export const FRAME_HEADER_BYTES = 10;
export const MAX_FRAME_PAYLOAD = 64 * 1024;

export const FrameType = {
  DATA: 0x0,
  HEADERS: 0x1,
  WINDOW_UPDATE: 0x2,
  RST: 0x3,
  PING: 0x4,
  GOAWAY: 0x5,
  CONTROL: 0x6,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

/** END on DATA/HEADERS half-closes the sender's side of the stream; ACK answers a PING. */
export const FrameFlag = { END: 0x1, ACK: 0x2 } as const;

export interface Frame {
  type: number;
  flags: number;
  streamId: number;
  payload: Buffer;
}

/** Error codes carried by RST and GOAWAY frames. */
export const WireError = {
  NO_ERROR: 0,
  PROTOCOL_ERROR: 1,
  INTERNAL_ERROR: 2,
  FLOW_CONTROL_ERROR: 3,
  STREAM_CLOSED: 4,
  FRAME_SIZE_ERROR: 5,
  REFUSED_STREAM: 6,
  CANCEL: 7,
  HEADERS_TOO_LARGE: 8,
  HEARTBEAT_TIMEOUT: 9,
  SHUTDOWN: 10,
} as const;
export type WireError = (typeof WireError)[keyof typeof WireError];

export const EMPTY = Buffer.alloc(0);

export function encodeFrameHeader(type: number, flags: number, streamId: number, length: number): Buffer {
  const h = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  h[0] = type;
  h[1] = flags;
  h.writeUInt32BE(streamId >>> 0, 2);
  h.writeUInt32BE(length >>> 0, 6);
  return h;
}

/** One contiguous buffer for a whole frame; used for small frames and in tests. */
export function encodeFrame(frame: Frame): Buffer {
  if (frame.payload.length > MAX_FRAME_PAYLOAD) {
    throw new WarrenError(
      'frame_too_large',
      `frame payload of ${frame.payload.length} bytes exceeds ${MAX_FRAME_PAYLOAD}`,
    );
  }
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + frame.payload.length);
  out[0] = frame.type;
  out[1] = frame.flags;
  out.writeUInt32BE(frame.streamId >>> 0, 2);
  out.writeUInt32BE(frame.payload.length, 6);
  frame.payload.copy(out, FRAME_HEADER_BYTES);
  return out;
}

export function encodeU32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

export function encodeGoAway(lastStreamId: number, code: number, reason: string): Buffer {
  const text = Buffer.from(reason.slice(0, 1024), 'utf8');
  const b = Buffer.allocUnsafe(8 + text.length);
  b.writeUInt32BE(lastStreamId >>> 0, 0);
  b.writeUInt32BE(code >>> 0, 4);
  text.copy(b, 8);
  return b;
}

export function decodeGoAway(payload: Buffer): { lastStreamId: number; code: number; reason: string } {
  if (payload.length < 8) throw new WarrenError('protocol_error', 'GOAWAY payload shorter than 8 bytes');
  return {
    lastStreamId: payload.readUInt32BE(0),
    code: payload.readUInt32BE(4),
    reason: payload.subarray(8).toString('utf8'),
  };
}

export function decodeU32(payload: Buffer, what: string): number {
  if (payload.length !== 4)
    throw new WarrenError('protocol_error', `${what} payload must be 4 bytes, got ${payload.length}`);
  return payload.readUInt32BE(0);
}

/**
 * Incremental decoder. `push(chunk, onFrame)` calls `onFrame` for each complete frame, in order.
 * Payloads are views into the input where a frame lies within one chunk (no copy on the hot path);
 * a frame split across chunks is assembled into a fresh buffer.
 *
 * With `streamData`, a DATA frame split across chunks is not assembled: it is delivered as several
 * DATA frames for the same stream, in order, as its bytes arrive — views into the chunks, no copy —
 * and only the last piece carries the frame's END flag. TLS hands over at most one 16 KiB record per
 * read, so without this every 64 KiB DATA frame would be copied once more and become garbage.
 */
export class FrameDecoder {
  readonly maxPayload: number;
  readonly streamData: boolean;
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  #needed = FRAME_HEADER_BYTES;
  // The DATA frame being streamed: bytes still to come, its flags and stream.
  #dataLeft = 0;
  #dataFlags = 0;
  #dataStreamId = 0;

  constructor(maxPayload = MAX_FRAME_PAYLOAD, opts: { streamData?: boolean } = {}) {
    this.maxPayload = maxPayload;
    this.streamData = opts.streamData === true;
  }

  /** Bytes held waiting for the rest of a frame; never more than one maximal frame. */
  get bufferedBytes(): number {
    return this.#pendingBytes;
  }

  push(chunk: Buffer, onFrame: (frame: Frame) => void): void {
    if (chunk.length === 0) return;
    let buf = chunk;
    if (this.#dataLeft > 0) {
      const n = Math.min(this.#dataLeft, buf.length);
      this.#dataLeft -= n;
      const flags = this.#dataLeft === 0 ? this.#dataFlags : this.#dataFlags & ~FrameFlag.END;
      onFrame({ type: FrameType.DATA, flags, streamId: this.#dataStreamId, payload: buf.subarray(0, n) });
      if (n === buf.length) return;
      buf = buf.subarray(n);
    }
    if (this.#pendingBytes > 0) {
      if (
        this.streamData &&
        this.#pendingBytes < FRAME_HEADER_BYTES &&
        this.#pendingBytes + buf.length >= FRAME_HEADER_BYTES
      ) {
        // A header split across chunks: complete it from the new chunk without copying the chunk.
        const need = FRAME_HEADER_BYTES - this.#pendingBytes;
        const header = Buffer.concat([...this.#pending, buf.subarray(0, need)], FRAME_HEADER_BYTES);
        if (header[0] === FrameType.DATA) {
          this.#pending = [];
          this.#pendingBytes = 0;
          this.#needed = FRAME_HEADER_BYTES;
          this.#startData(header, 0, this.#checkedLength(header, 0), onFrame);
          if (buf.length > need) this.push(buf.subarray(need), onFrame);
          return;
        }
      }
      this.#pending.push(buf);
      this.#pendingBytes += buf.length;
      // Wait until the whole frame is here before copying, so a frame dribbled in tiny chunks
      // costs one copy, not one per chunk.
      if (this.#pendingBytes < this.#needed) return;
      buf = Buffer.concat(this.#pending, this.#pendingBytes);
      this.#pending = [];
      this.#pendingBytes = 0;
    }
    let offset = 0;
    while (buf.length - offset >= FRAME_HEADER_BYTES) {
      const length = this.#checkedLength(buf, offset);
      const end = offset + FRAME_HEADER_BYTES + length;
      if (end > buf.length) {
        if (this.streamData && buf[offset] === FrameType.DATA) {
          this.#startData(buf, offset, length, onFrame);
          const available = buf.subarray(offset + FRAME_HEADER_BYTES);
          if (available.length > 0) {
            this.#dataLeft -= available.length;
            onFrame({
              type: FrameType.DATA,
              flags: this.#dataFlags & ~FrameFlag.END,
              streamId: this.#dataStreamId,
              payload: available,
            });
          }
          return;
        }
        break;
      }
      const type = buf[offset]!;
      const flags = buf[offset + 1]!;
      const streamId = buf.readUInt32BE(offset + 2);
      onFrame({ type, flags, streamId, payload: buf.subarray(offset + FRAME_HEADER_BYTES, end) });
      offset = end;
    }
    if (offset < buf.length) {
      // Keep only the incomplete tail; copy it so the caller's chunk can be released.
      const rest = Buffer.from(buf.subarray(offset));
      this.#pending.push(rest);
      this.#pendingBytes = rest.length;
      this.#needed =
        rest.length >= FRAME_HEADER_BYTES
          ? FRAME_HEADER_BYTES + this.#checkedLength(rest, 0)
          : FRAME_HEADER_BYTES;
    } else {
      this.#needed = FRAME_HEADER_BYTES;
    }
  }

  /** Begins streaming a DATA frame whose header is at `offset`; an empty one is delivered at once. */
  #startData(buf: Buffer, offset: number, length: number, onFrame: (frame: Frame) => void): void {
    this.#dataFlags = buf[offset + 1]!;
    this.#dataStreamId = buf.readUInt32BE(offset + 2);
    this.#dataLeft = length;
    if (length === 0) {
      onFrame({ type: FrameType.DATA, flags: this.#dataFlags, streamId: this.#dataStreamId, payload: EMPTY });
    }
  }

  #checkedLength(buf: Buffer, offset: number): number {
    const length = buf.readUInt32BE(offset + 6);
    if (length > this.maxPayload) {
      throw new WarrenError(
        'frame_too_large',
        `peer sent a frame of ${length} bytes; the limit is ${this.maxPayload}`,
      );
    }
    return length;
  }
}
