/**
 * The warren/1 frame codec against a deliberately naive reference: whatever the chunking of the byte
 * stream, the incremental FrameDecoder yields exactly the frames a plain parse of the concatenated
 * bytes yields; every frame round-trips; garbage only ever raises a typed error and never makes the
 * decoder hold more than one maximal frame.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { isWarrenError } from '../../src/shared/errors.ts';
import {
  decodeGoAway,
  decodeU32,
  encodeFrame,
  encodeFrameHeader,
  encodeGoAway,
  encodeU32,
  FRAME_HEADER_BYTES,
  type Frame,
  FrameDecoder,
  FrameFlag,
  FrameType,
  MAX_FRAME_PAYLOAD,
} from '../../src/transport/frame.ts';

// ------------------------------------------------------------------ reference codec

interface RefFrame {
  type: number;
  flags: number;
  streamId: number;
  payload: number[];
}

/**
 * The naive reference: everything in one array, then frames read one by one with plain loops and
 * arithmetic (no Buffer helpers), stopping at the first incomplete frame or the first oversize length.
 */
function referenceDecode(
  bytes: Uint8Array,
  maxPayload = MAX_FRAME_PAYLOAD,
): { frames: RefFrame[]; tooLarge: boolean } {
  const frames: RefFrame[] = [];
  let i = 0;
  for (;;) {
    if (bytes.length - i < 10) return { frames, tooLarge: false };
    const type = bytes[i]!;
    const flags = bytes[i + 1]!;
    let streamId = 0;
    for (let k = 0; k < 4; k++) streamId = streamId * 256 + bytes[i + 2 + k]!;
    let length = 0;
    for (let k = 0; k < 4; k++) length = length * 256 + bytes[i + 6 + k]!;
    if (length > maxPayload) return { frames, tooLarge: true };
    if (bytes.length - i - 10 < length) return { frames, tooLarge: false };
    const payload: number[] = [];
    for (let k = 0; k < length; k++) payload.push(bytes[i + 10 + k]!);
    frames.push({ type, flags, streamId, payload });
    i += 10 + length;
  }
}

function referenceEncode(frames: RefFrame[]): Uint8Array {
  const out: number[] = [];
  for (const f of frames) {
    out.push(f.type, f.flags);
    for (let k = 3; k >= 0; k--) out.push(Math.floor(f.streamId / 256 ** k) % 256);
    for (let k = 3; k >= 0; k--) out.push(Math.floor(f.payload.length / 256 ** k) % 256);
    out.push(...f.payload);
  }
  return Uint8Array.from(out);
}

const toRef = (f: Frame): RefFrame => ({
  type: f.type,
  flags: f.flags,
  streamId: f.streamId,
  payload: [...f.payload],
});

/** Splits `bytes` at the given cut points (any order, duplicates give empty chunks). */
function chunksAt(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = [...cuts.map((c) => c % (bytes.length + 1))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let start = 0;
  for (const p of points) {
    chunks.push(bytes.subarray(start, p));
    start = p;
  }
  chunks.push(bytes.subarray(start));
  return chunks;
}

/** Feeds chunks through a fresh decoder; frames are copied out as the decoder hands them over. */
function decodeChunks(chunks: Buffer[], maxPayload?: number): RefFrame[] {
  const decoder = new FrameDecoder(maxPayload);
  const out: RefFrame[] = [];
  for (const c of chunks) decoder.push(c, (f) => out.push(toRef(f)));
  return out;
}

// ------------------------------------------------------------------ arbitraries

const u32 = fc.oneof(
  fc.integer({ min: 0, max: 2 ** 32 - 1 }),
  fc.constantFrom(0, 1, 2, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 2, 2 ** 32 - 1),
);

/** Mostly small payloads for speed, now and then a large or maximal one. */
const payload = fc.oneof(
  { weight: 8, arbitrary: fc.uint8Array({ maxLength: 64 }) },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 4096 }) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(
        fc.integer({ min: MAX_FRAME_PAYLOAD - 16, max: MAX_FRAME_PAYLOAD }),
        fc.integer({ min: 0, max: 255 }),
      )
      .map(([n, fill]) => new Uint8Array(n).fill(fill)),
  },
);

const frameType = fc.oneof(
  fc.constantFrom(...Object.values(FrameType)),
  fc.integer({ min: 0, max: 255 }), // unknown types travel like any other
);

const frameArb: fc.Arbitrary<Frame> = fc.record({
  type: frameType,
  flags: fc.integer({ min: 0, max: 255 }),
  streamId: u32,
  payload: payload.map((p) => Buffer.from(p)),
});

/** Frames, their encoding, and cut points that split it anywhere (including empty chunks). */
const framesAndCuts = fc.array(frameArb, { maxLength: 12 }).chain((frames) => {
  const bytes = Buffer.concat(frames.map((f) => encodeFrame(f)));
  return fc.record({
    frames: fc.constant(frames),
    bytes: fc.constant(bytes),
    cuts: fc.array(fc.integer({ min: 0, max: bytes.length }), { maxLength: 40 }),
  });
});

// ------------------------------------------------------------------ properties

describe('frame codec (property)', () => {
  it('the reference codec agrees with encodeFrame on every frame', () => {
    fc.assert(
      fc.property(fc.array(frameArb, { maxLength: 6 }), (frames) => {
        const real = Buffer.concat(frames.map((f) => encodeFrame(f)));
        const ref = referenceEncode(frames.map(toRef));
        assert.deepEqual(new Uint8Array(real), ref);
        assert.deepEqual(referenceDecode(ref), { frames: frames.map(toRef), tooLarge: false });
      }),
      { numRuns: 100 },
    );
  });

  it('decodes the same frames as the reference under any chunking, empty chunks included', () => {
    fc.assert(
      fc.property(framesAndCuts, ({ frames, bytes, cuts }) => {
        const expected = referenceDecode(bytes);
        assert.equal(expected.tooLarge, false);
        assert.deepEqual(expected.frames, frames.map(toRef));
        assert.deepEqual(decodeChunks(chunksAt(bytes, cuts)), expected.frames);
      }),
      { numRuns: 150 },
    );
  });

  it('with streamData, DATA frames arrive as in-order pieces that add up to the frame, END on the last only', () => {
    fc.assert(
      fc.property(framesAndCuts, ({ frames, bytes, cuts }) => {
        const decoder = new FrameDecoder(MAX_FRAME_PAYLOAD, { streamData: true });
        const pieces: RefFrame[] = [];
        for (const c of chunksAt(bytes, cuts)) decoder.push(c, (f) => pieces.push(toRef(f)));
        let i = 0;
        for (const expected of frames.map(toRef)) {
          if (expected.type !== FrameType.DATA) {
            assert.deepEqual(pieces[i++], expected);
            continue;
          }
          const got: number[] = [];
          for (;;) {
            const piece = pieces[i++];
            assert.ok(piece, 'a DATA frame was cut short');
            assert.equal(piece.type, FrameType.DATA);
            assert.equal(piece.streamId, expected.streamId);
            got.push(...piece.payload);
            const last = got.length === expected.payload.length;
            assert.ok(last || piece.payload.length > 0, 'only an empty frame has an empty piece');
            assert.equal(piece.flags, last ? expected.flags : expected.flags & ~FrameFlag.END);
            if (last) break;
          }
          assert.deepEqual(got, expected.payload);
        }
        assert.equal(i, pieces.length, 'no extra pieces');
        assert.ok(decoder.bufferedBytes <= FRAME_HEADER_BYTES + MAX_FRAME_PAYLOAD);
      }),
      { numRuns: 200 },
    );
  });

  it('decodes the same frames fed one byte at a time, with empty chunks between', () => {
    const small = fc.array(
      fc.record({
        type: frameType,
        flags: fc.integer({ min: 0, max: 255 }),
        streamId: u32,
        payload: fc.uint8Array({ maxLength: 40 }).map((p) => Buffer.from(p)),
      }),
      { maxLength: 8 },
    );
    fc.assert(
      fc.property(small, fc.boolean(), (frames, withEmpty) => {
        const bytes = Buffer.concat(frames.map((f) => encodeFrame(f)));
        const chunks: Buffer[] = [];
        for (let i = 0; i < bytes.length; i++) {
          if (withEmpty) chunks.push(Buffer.alloc(0));
          chunks.push(bytes.subarray(i, i + 1));
        }
        assert.deepEqual(decodeChunks(chunks), referenceDecode(bytes).frames);
      }),
      { numRuns: 60 },
    );
  });

  it('a truncated stream yields the complete frames and holds the rest', () => {
    fc.assert(
      fc.property(framesAndCuts, fc.nat(), ({ bytes, cuts }, cutAt) => {
        const truncated = bytes.subarray(0, cutAt % (bytes.length + 1));
        const decoder = new FrameDecoder();
        const got: RefFrame[] = [];
        for (const c of chunksAt(truncated, cuts)) decoder.push(c, (f) => got.push(toRef(f)));
        const expected = referenceDecode(truncated).frames;
        assert.deepEqual(got, expected);
        const consumed = expected.reduce((n, f) => n + FRAME_HEADER_BYTES + f.payload.length, 0);
        assert.equal(decoder.bufferedBytes, truncated.length - consumed);
      }),
      { numRuns: 100 },
    );
  });

  it('round-trips every frame type with any flags, stream id and payload', () => {
    fc.assert(
      fc.property(frameArb, fc.integer({ min: 0, max: 3 }), (frame, split) => {
        const bytes = encodeFrame(frame);
        assert.equal(bytes.length, FRAME_HEADER_BYTES + frame.payload.length);
        // The two-part encoding the writer uses for DATA is the same bytes.
        assert.deepEqual(
          Buffer.concat([
            encodeFrameHeader(frame.type, frame.flags, frame.streamId, frame.payload.length),
            frame.payload,
          ]),
          bytes,
        );
        const cut = Math.floor((bytes.length * split) / 3);
        const got = decodeChunks([bytes.subarray(0, cut), bytes.subarray(cut)]);
        assert.deepEqual(got, [toRef(frame)]);
      }),
      { numRuns: 200 },
    );
  });

  it('refuses to encode a payload over the limit with frame_too_large', () => {
    fc.assert(
      fc.property(fc.integer({ min: MAX_FRAME_PAYLOAD + 1, max: MAX_FRAME_PAYLOAD + 4096 }), (n) => {
        assert.throws(
          () => encodeFrame({ type: FrameType.DATA, flags: 0, streamId: 1, payload: Buffer.alloc(n) }),
          (e) => isWarrenError(e, 'frame_too_large'),
        );
      }),
      { numRuns: 10 },
    );
  });

  it('rejects a declared length over the limit as soon as the header is complete, however it is split', () => {
    fc.assert(
      fc.property(
        fc.array(frameArb, { maxLength: 3 }),
        fc.integer({ min: MAX_FRAME_PAYLOAD + 1, max: 2 ** 32 - 1 }),
        fc.array(fc.nat(), { maxLength: 6 }),
        (before, badLength, cuts) => {
          const good = Buffer.concat(before.map((f) => encodeFrame(f)));
          const bytes = Buffer.concat([good, encodeFrameHeader(FrameType.DATA, 0, 1, badLength)]);
          const decoder = new FrameDecoder();
          const got: RefFrame[] = [];
          let error: unknown;
          for (const c of chunksAt(bytes, cuts)) {
            try {
              decoder.push(c, (f) => got.push(toRef(f)));
            } catch (e) {
              error = e;
              break;
            }
          }
          assert.ok(
            isWarrenError(error, 'frame_too_large'),
            `expected frame_too_large, got ${String(error)}`,
          );
          assert.deepEqual(got, referenceDecode(bytes).frames);
          assert.equal(referenceDecode(bytes).tooLarge, true);
        },
      ),
      { numRuns: 100 },
    );
  });

  it('honours a smaller configured maximum exactly at the boundary', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 512 }),
        fc.integer({ min: -2, max: 2 }),
        fc.array(fc.nat(), { maxLength: 4 }),
        (max, delta, cuts) => {
          const length = Math.max(0, max + delta);
          const bytes = Buffer.concat([
            encodeFrameHeader(FrameType.DATA, 0, 3, length),
            Buffer.alloc(length, 1),
          ]);
          const ref = referenceDecode(bytes, max);
          let error: unknown;
          let got: RefFrame[] = [];
          try {
            got = decodeChunks(chunksAt(bytes, cuts), max);
          } catch (e) {
            error = e;
          }
          if (ref.tooLarge) assert.ok(isWarrenError(error, 'frame_too_large'));
          else {
            assert.equal(error, undefined);
            assert.deepEqual(got, ref.frames);
          }
        },
      ),
      { numRuns: 100 },
    );
  });

  it('garbage in any chunking only ever raises frame_too_large and never buffers more than one frame', () => {
    // Pieces that look like frames often enough to reach every branch: random bytes, real frames,
    // headers whose length sits around the limit, and lone partial headers.
    const piece = fc.oneof(
      fc.uint8Array({ maxLength: 64 }),
      frameArb.map((f) => new Uint8Array(encodeFrame(f))),
      fc
        .tuple(
          fc.integer({ min: 0, max: 255 }),
          fc.integer({ min: MAX_FRAME_PAYLOAD - 2, max: MAX_FRAME_PAYLOAD + 2 }),
          fc.uint8Array({ maxLength: 128 }),
        )
        .map(([t, len, tail]) => new Uint8Array(Buffer.concat([encodeFrameHeader(t, 0, 1, len), tail]))),
      fc.uint8Array({ minLength: 1, maxLength: 9 }),
    );
    const maxHeld = FRAME_HEADER_BYTES + MAX_FRAME_PAYLOAD;
    fc.assert(
      fc.property(
        fc.array(piece, { maxLength: 10 }),
        fc.array(fc.nat(), { maxLength: 30 }),
        (pieces, cuts) => {
          const bytes = Buffer.concat(pieces);
          const decoder = new FrameDecoder();
          for (const c of chunksAt(bytes, cuts)) {
            try {
              decoder.push(c, (f) => {
                assert.ok(f.payload.length <= MAX_FRAME_PAYLOAD);
              });
            } catch (e) {
              if (!isWarrenError(e, 'frame_too_large')) throw e;
              // Keep feeding: a caller that ignores the error must still not see unbounded buffering.
            }
            assert.ok(decoder.bufferedBytes < maxHeld, `decoder holds ${decoder.bufferedBytes} bytes`);
          }
        },
      ),
      { numRuns: 150 },
    );
  });

  it('garbage decodes, up to the first oversize length, like the reference', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.array(fc.nat(), { maxLength: 20 }), (raw, cuts) => {
        const bytes = Buffer.from(raw);
        const ref = referenceDecode(bytes);
        const decoder = new FrameDecoder();
        const got: RefFrame[] = [];
        let error: unknown;
        for (const c of chunksAt(bytes, cuts)) {
          try {
            decoder.push(c, (f) => got.push(toRef(f)));
          } catch (e) {
            error = e;
            break;
          }
        }
        assert.deepEqual(got, ref.frames);
        if (ref.tooLarge) assert.ok(isWarrenError(error, 'frame_too_large'));
        else assert.equal(error, undefined);
      }),
      { numRuns: 150 },
    );
  });
});

describe('GOAWAY and u32 payloads (property)', () => {
  it('encodeGoAway/decodeGoAway round-trip any stream id, code and reason', () => {
    fc.assert(
      fc.property(u32, u32, fc.string({ unit: 'binary', maxLength: 1024 }), (lastStreamId, code, reason) => {
        const decoded = decodeGoAway(encodeGoAway(lastStreamId, code, reason));
        assert.deepEqual(decoded, { lastStreamId, code, reason: reason.slice(0, 1024) });
      }),
      { numRuns: 150 },
    );
  });

  it('encodeGoAway caps the reason at 1024 UTF-16 units and always decodes', () => {
    fc.assert(
      fc.property(
        u32,
        u32,
        fc.string({ unit: 'binary', minLength: 1000, maxLength: 1500 }),
        (last, code, reason) => {
          const payload = encodeGoAway(last, code, reason);
          assert.ok(payload.length <= 8 + 1024 * 3);
          const decoded = decodeGoAway(payload);
          assert.equal(decoded.lastStreamId, last);
          assert.equal(decoded.code, code);
          // A surrogate pair cut at unit 1024 becomes U+FFFD; everything before it survives.
          assert.ok(reason.startsWith(decoded.reason.replace(/\uFFFD$/, '')));
        },
      ),
      { numRuns: 30 },
    );
  });

  it('decodeGoAway accepts any payload of 8 bytes or more and rejects shorter ones with protocol_error', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 40 }), (raw) => {
        const p = Buffer.from(raw);
        if (p.length < 8) {
          assert.throws(
            () => decodeGoAway(p),
            (e) => isWarrenError(e, 'protocol_error'),
          );
        } else {
          const d = decodeGoAway(p);
          assert.equal(d.lastStreamId, p.readUInt32BE(0));
          assert.equal(d.code, p.readUInt32BE(4));
          assert.equal(typeof d.reason, 'string');
        }
      }),
      { numRuns: 100 },
    );
  });

  it('decodeU32 round-trips encodeU32 and rejects any other length with protocol_error', () => {
    fc.assert(
      fc.property(u32, fc.uint8Array({ maxLength: 12 }), (n, raw) => {
        assert.equal(decodeU32(encodeU32(n), 'WINDOW_UPDATE'), n);
        const p = Buffer.from(raw);
        if (p.length === 4) assert.equal(decodeU32(p, 'RST'), p.readUInt32BE(0));
        else {
          assert.throws(
            () => decodeU32(p, 'RST'),
            (e) => isWarrenError(e, 'protocol_error'),
          );
        }
      }),
      { numRuns: 100 },
    );
  });
});
