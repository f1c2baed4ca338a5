/**
 * The warren/1 stream rules, driven from outside: a real MuxSession on one end of an in-memory duplex
 * pair, and on the other a hand-rolled peer that writes ARBITRARY raw frames (encodeFrame) in arbitrary
 * chunks, interleaved with what the application on the session's side does (open, respond, reset).
 *
 * A small model of the rules in session.ts predicts, frame by frame, exactly what the session must
 * write back: RST for stream-level faults, GOAWAY with a non-zero code for connection-level faults
 * (and nothing after it), PING ACK with the same payload for every PING, the application's own
 * HEADERS/RST — and nothing else. The session's output is decoded with FrameDecoder and compared with
 * the prediction frame for frame; so are the control messages and incoming streams it surfaces.
 *
 * Synchronisation without sleeping: before each application action and at the end, the peer sends a
 * PING with a unique payload and waits (with a deadline) for its ACK — frames are handled in order and
 * everything they queue leaves before that ACK — or, after a connection error, for the session's EOF.
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import fc from 'fast-check';
import { ManualClock } from '../../src/shared/clock.ts';
import { isWarrenError } from '../../src/shared/errors.ts';
import { silentLogger } from '../../src/shared/log.ts';
import {
  decodeGoAway,
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
} from '../../src/transport/frame.ts';
import {
  type ControlMessage,
  decodeControl,
  decodeRequestHead,
  decodeResponseHead,
  encodeMessage,
  type RequestHead,
  type ResponseHead,
} from '../../src/transport/messages.ts';
import { INITIAL_WINDOW_BYTES, MuxSession, type MuxStream } from '../../src/transport/session.ts';
import { createDuplexPair } from '../support/duplex-pair.ts';
import { waitFor, withDeadline } from '../support/wait.ts';

const MAX_CREDIT = 2 ** 31 - 1;
const MAX_STREAMS = 3;
const { END, ACK } = FrameFlag;

// ------------------------------------------------------------------ the model

type Role = 'edge' | 'agent';

interface ModelStream {
  local: boolean;
  headReceived: boolean;
  remoteEnded: boolean;
  localEnded: boolean;
  responded: boolean;
  recvCredit: number;
  sendCredit: number;
}

/** What the session must write: GOAWAY compared by code and last stream id, the rest byte for byte. */
interface Expected {
  type: number;
  flags: number;
  streamId: number;
  payload?: string;
  goaway?: { lastStreamId: number; code: number };
}

type Outcome =
  | { kind: 'ok' }
  | { kind: 'ignored' }
  | { kind: 'rst'; code: number }
  | { kind: 'goaway'; code: number };

const ILLEGAL_RST = new Set<number>([
  WireError.PROTOCOL_ERROR,
  WireError.STREAM_CLOSED,
  WireError.FLOW_CONTROL_ERROR,
]);
const isIllegal = (o: Outcome) => o.kind === 'goaway' || (o.kind === 'rst' && ILLEGAL_RST.has(o.code));

const parses = (decode: (p: Buffer) => unknown, p: Buffer): boolean => {
  try {
    decode(p);
    return true;
  } catch {
    return false;
  }
};

/** The rules of session.ts for a session with the given role, seen from its peer. */
class Model {
  readonly role: Role;
  streams = new Map<number, ModelStream>();
  lastPeerId = 0;
  nextLocalId: number;
  peerGoAway = false;
  dead = false;
  expected: Expected[] = [];
  controls: ControlMessage[] = [];
  incoming: number[] = [];
  /** Every id that had a stream, open or closed since. */
  used: number[] = [];

  constructor(role: Role) {
    this.role = role;
    this.nextLocalId = role === 'edge' ? 1 : 2;
  }

  clone(): Model {
    const m = new Model(this.role);
    m.streams = new Map([...this.streams].map(([id, s]) => [id, { ...s }]));
    m.lastPeerId = this.lastPeerId;
    m.nextLocalId = this.nextLocalId;
    m.peerGoAway = this.peerGoAway;
    m.dead = this.dead;
    m.expected = [...this.expected];
    m.controls = [...this.controls];
    m.incoming = [...this.incoming];
    m.used = [...this.used];
    return m;
  }

  isPeerId(id: number): boolean {
    return (id & 1) === (this.role === 'edge' ? 0 : 1);
  }

  #goaway(code: number): Outcome {
    this.expected.push({
      type: FrameType.GOAWAY,
      flags: 0,
      streamId: 0,
      goaway: { lastStreamId: this.lastPeerId, code },
    });
    this.dead = true;
    return { kind: 'goaway', code };
  }

  #rst(id: number, code: number): Outcome {
    this.expected.push({
      type: FrameType.RST,
      flags: 0,
      streamId: id,
      payload: encodeU32(code).toString('hex'),
    });
    this.streams.delete(id);
    return { kind: 'rst', code };
  }

  #unknown(id: number): Outcome {
    const neverOpened = this.isPeerId(id) ? id > this.lastPeerId : id >= this.nextLocalId;
    return neverOpened ? this.#goaway(WireError.PROTOCOL_ERROR) : { kind: 'ignored' };
  }

  #maybeForget(id: number, s: ModelStream): void {
    if (s.localEnded && s.remoteEnded) this.streams.delete(id);
  }

  /** A complete frame from the peer. */
  frame(f: Frame): Outcome {
    // After a connection error the session reads nothing more: no answer, no message, no stream.
    if (this.dead) return { kind: 'ignored' };
    const { type, flags, streamId: id, payload: p } = f;
    const end = (flags & END) !== 0;
    switch (type) {
      case FrameType.DATA: {
        if (id === 0) return this.#goaway(WireError.PROTOCOL_ERROR);
        const s = this.streams.get(id);
        if (!s) return this.#unknown(id);
        if (!s.headReceived) return this.#rst(id, WireError.PROTOCOL_ERROR);
        if (s.remoteEnded) return this.#rst(id, WireError.STREAM_CLOSED);
        if (p.length > s.recvCredit) return this.#rst(id, WireError.FLOW_CONTROL_ERROR);
        s.recvCredit -= p.length;
        if (end) {
          s.remoteEnded = true;
          this.#maybeForget(id, s);
        }
        return { kind: 'ok' };
      }
      case FrameType.HEADERS: {
        if (id === 0) return this.#goaway(WireError.PROTOCOL_ERROR);
        const s = this.streams.get(id);
        if (s) {
          if (s.headReceived) return this.#rst(id, WireError.PROTOCOL_ERROR);
          if (!parses(decodeResponseHead, p)) return this.#rst(id, WireError.PROTOCOL_ERROR);
          s.headReceived = true;
          if (end) s.remoteEnded = true;
          this.#maybeForget(id, s);
          return { kind: 'ok' };
        }
        if (!this.isPeerId(id)) return this.#unknown(id);
        if (id <= this.lastPeerId) return this.#rst(id, WireError.STREAM_CLOSED);
        this.lastPeerId = id;
        if (this.peerGoAway || this.streams.size >= MAX_STREAMS)
          return this.#rst(id, WireError.REFUSED_STREAM);
        if (!parses(decodeRequestHead, p)) return this.#rst(id, WireError.PROTOCOL_ERROR);
        this.streams.set(id, {
          local: false,
          headReceived: true,
          remoteEnded: end,
          localEnded: false,
          responded: false,
          recvCredit: INITIAL_WINDOW_BYTES,
          sendCredit: INITIAL_WINDOW_BYTES,
        });
        this.incoming.push(id);
        this.used.push(id);
        return { kind: 'ok' };
      }
      case FrameType.WINDOW_UPDATE: {
        if (p.length !== 4 || id === 0) return this.#goaway(WireError.PROTOCOL_ERROR);
        const s = this.streams.get(id);
        if (!s) return this.#unknown(id);
        const increment = p.readUInt32BE(0);
        if (increment === 0 || s.sendCredit + increment > MAX_CREDIT) {
          return this.#rst(id, WireError.FLOW_CONTROL_ERROR);
        }
        s.sendCredit += increment;
        return { kind: 'ok' };
      }
      case FrameType.RST: {
        if (p.length !== 4 || id === 0) return this.#goaway(WireError.PROTOCOL_ERROR);
        if (!this.streams.has(id)) return this.#unknown(id);
        this.streams.delete(id);
        return { kind: 'ok' };
      }
      case FrameType.PING: {
        if (id !== 0 || p.length !== 8) return this.#goaway(WireError.PROTOCOL_ERROR);
        if ((flags & ACK) === 0) {
          this.expected.push({ type: FrameType.PING, flags: ACK, streamId: 0, payload: p.toString('hex') });
        }
        return { kind: 'ok' };
      }
      case FrameType.GOAWAY: {
        if (id !== 0 || p.length < 8) return this.#goaway(WireError.PROTOCOL_ERROR);
        this.peerGoAway = true;
        const last = p.readUInt32BE(0);
        for (const [sid, s] of this.streams) if (s.local && sid > last) this.streams.delete(sid);
        return { kind: 'ok' };
      }
      case FrameType.CONTROL: {
        if (id !== 0) return this.#goaway(WireError.PROTOCOL_ERROR);
        let message: ControlMessage | undefined;
        try {
          message = decodeControl(p);
        } catch {
          return this.#goaway(WireError.PROTOCOL_ERROR);
        }
        if (message) this.controls.push(message);
        return { kind: 'ok' };
      }
      default:
        return { kind: 'ignored' };
    }
  }

  /** A frame header announcing more than MAX_FRAME_PAYLOAD. */
  oversize(): Outcome {
    if (this.dead) return { kind: 'ignored' };
    return this.#goaway(WireError.FRAME_SIZE_ERROR);
  }

  /** The application opens a stream; returns the error code openStream must throw, if any. */
  open(head: RequestHead, end: boolean): { id: number } | { error: string } {
    if (this.peerGoAway || this.dead) return { error: 'session_closed' };
    if (this.streams.size >= MAX_STREAMS) return { error: 'stream_limit' };
    const id = this.nextLocalId;
    this.nextLocalId += 2;
    this.used.push(id);
    this.streams.set(id, {
      local: true,
      headReceived: false,
      remoteEnded: false,
      localEnded: end,
      responded: true,
      recvCredit: INITIAL_WINDOW_BYTES,
      sendCredit: INITIAL_WINDOW_BYTES,
    });
    this.expected.push({
      type: FrameType.HEADERS,
      flags: end ? END : 0,
      streamId: id,
      payload: encodeMessage(head).toString('hex'),
    });
    return { id };
  }

  respond(id: number, head: ResponseHead, end: boolean): void {
    const s = this.streams.get(id)!;
    s.responded = true;
    this.expected.push({
      type: FrameType.HEADERS,
      flags: end ? END : 0,
      streamId: id,
      payload: encodeMessage(head).toString('hex'),
    });
    if (end) {
      s.localEnded = true;
      this.#maybeForget(id, s);
    }
  }

  reset(id: number): void {
    this.#rst(id, WireError.CANCEL);
  }
}

// ------------------------------------------------------------------ actions

/** Where a frame goes: a raw id, the next fresh id of the peer's parity, or an open (else a used) stream. */
type StreamRef =
  | { ref: 'raw'; id: number }
  | { ref: 'nextPeer'; skip: number }
  | { ref: 'open'; pick: number };

type Action =
  | { kind: 'frame'; type: number; flags: number; at: StreamRef; payload: Buffer }
  /** DATA up to the stream's remaining credit + delta, in as many frames as that takes. */
  | { kind: 'fill'; at: StreamRef; delta: number; end: boolean }
  | { kind: 'oversize'; length: number; tail: Buffer }
  | { kind: 'open'; end: boolean }
  | { kind: 'respond'; pick: number; end: boolean }
  | { kind: 'reset'; pick: number };

const u32 = fc.oneof(
  fc.integer({ min: 0, max: 2 ** 32 - 1 }),
  fc.constantFrom(
    0,
    1,
    100,
    INITIAL_WINDOW_BYTES,
    MAX_CREDIT - INITIAL_WINDOW_BYTES,
    MAX_CREDIT,
    2 ** 31,
    2 ** 32 - 1,
  ),
);
const bytes = (maxLength: number) => fc.uint8Array({ maxLength }).map((b) => Buffer.from(b));
const wrongLength = (n: number) =>
  fc
    .uint8Array({ maxLength: 12 })
    .filter((b) => b.length !== n)
    .map((b) => Buffer.from(b));

const requestHead: fc.Arbitrary<RequestHead> = fc.record(
  {
    kind: fc.constantFrom('http', 'websocket', 'upgrade'),
    method: fc.constantFrom('GET', 'POST', 'PUT'),
    target: fc.constantFrom('/', '/a?b=c', '*'),
    headers: fc
      .array(fc.constantFrom('Host', 'a.test', 'Set-Cookie', 'x=1', 'X-E', ''), { maxLength: 3 })
      .map((h) => (h.length % 2 === 0 ? h : [...h, ''])),
  },
  { noNullPrototype: true },
);
const responseHead: fc.Arbitrary<ResponseHead> = fc.record(
  {
    status: fc.constantFrom(101, 200, 204, 404, 502),
    headers: fc.constantFrom([], ['Content-Type', 'text/plain'], ['set-cookie', 'a', 'Set-Cookie', 'b']),
  },
  { noNullPrototype: true },
);

const controlPayload = fc.oneof(
  fc.constant(encodeMessage({ type: 'unregister', gracePeriodMs: 1000 })),
  fc.constant(encodeMessage({ type: 'drain', reason: 'maintenance', deadlineMs: 5000 })),
  fc.constant(
    encodeMessage({
      type: 'hello',
      protocolVersion: 1,
      nonce: Buffer.alloc(32, 7),
      pop: 'lhr',
      edgeVersion: '0.1.0',
      features: [],
    }),
  ),
  fc.string({ maxLength: 8 }).map((t) => encodeMessage({ type: `future-${t}` } as never)), // unknown: ignored
  fc.oneof(
    fc.constant(encodeMessage({ type: 'drain', reason: 7 } as never)), // known type, bad shape
    bytes(16), // usually not MessagePack, or not a map
  ),
);

const headersPayload = fc.oneof(
  { weight: 4, arbitrary: requestHead.map((h) => encodeMessage(h)) },
  { weight: 4, arbitrary: responseHead.map((h) => encodeMessage(h)) },
  { weight: 1, arbitrary: fc.constant(encodeMessage({ status: 42, headers: [] })) },
  { weight: 1, arbitrary: bytes(12) },
);

const openRef = fc.record({ ref: fc.constant('open' as const), pick: fc.nat() });
const nextPeerRef = fc.record({
  ref: fc.constant('nextPeer' as const),
  skip: fc.constantFrom(0, 0, 0, 1, 2),
});
/** Any id: 0, both parities, reused, never opened, and the top of the range. */
const rawRef = fc.record({
  ref: fc.constant('raw' as const),
  id: fc.oneof(
    { weight: 8, arbitrary: fc.integer({ min: 0, max: 9 }) },
    { weight: 1, arbitrary: fc.constantFrom(100, 101, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 2, 2 ** 32 - 1) },
  ),
});
/** Frames about an existing stream: mostly one that is open, sometimes a fresh or a raw id. */
const streamRef: fc.Arbitrary<StreamRef> = fc.oneof(
  { weight: 8, arbitrary: openRef },
  { weight: 1, arbitrary: nextPeerRef },
  { weight: 1, arbitrary: rawRef },
);
/** HEADERS mostly open a fresh stream of the peer's parity or answer one the session opened. */
const headersRef: fc.Arbitrary<StreamRef> = fc.oneof(
  { weight: 5, arbitrary: nextPeerRef },
  { weight: 3, arbitrary: openRef },
  { weight: 1, arbitrary: rawRef },
);
/** Stream-0 frame kinds mostly go to stream 0, sometimes elsewhere. */
const connRef: fc.Arbitrary<StreamRef> = fc.oneof(
  { weight: 12, arbitrary: fc.constant({ ref: 'raw' as const, id: 0 }) },
  { weight: 1, arbitrary: streamRef },
);
const flags = fc.oneof(fc.constantFrom(0, END, ACK, END | ACK), fc.integer({ min: 0, max: 255 }));

const frame = (
  type: number,
  at: fc.Arbitrary<StreamRef>,
  payload: fc.Arbitrary<Buffer>,
): fc.Arbitrary<Action> =>
  fc.record({ kind: fc.constant('frame' as const), type: fc.constant(type), flags, at, payload });

const action: fc.Arbitrary<Action> = fc.oneof(
  { weight: 5, arbitrary: frame(FrameType.DATA, streamRef, bytes(40)) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('fill' as const),
      at: streamRef,
      delta: fc.constantFrom(-1, 0, 1),
      end: fc.boolean(),
    }),
  },
  { weight: 5, arbitrary: frame(FrameType.HEADERS, headersRef, headersPayload) },
  {
    weight: 3,
    arbitrary: frame(
      FrameType.WINDOW_UPDATE,
      streamRef,
      fc.oneof({ weight: 12, arbitrary: u32.map(encodeU32) }, { weight: 1, arbitrary: wrongLength(4) }),
    ),
  },
  {
    weight: 2,
    arbitrary: frame(
      FrameType.RST,
      streamRef,
      fc.oneof({ weight: 12, arbitrary: u32.map(encodeU32) }, { weight: 1, arbitrary: wrongLength(4) }),
    ),
  },
  {
    weight: 2,
    arbitrary: frame(
      FrameType.PING,
      connRef,
      fc.oneof(
        { weight: 12, arbitrary: fc.uint8Array({ minLength: 8, maxLength: 8 }).map((b) => Buffer.from(b)) },
        { weight: 1, arbitrary: wrongLength(8) },
      ),
    ),
  },
  {
    weight: 1,
    arbitrary: frame(
      FrameType.GOAWAY,
      connRef,
      fc.oneof(
        {
          weight: 4,
          arbitrary: fc
            .tuple(u32, fc.constantFrom(0, 1, 10), fc.string({ maxLength: 8 }))
            .map(([l, c, r]) => encodeGoAway(l, c, r)),
        },
        { weight: 1, arbitrary: bytes(7) },
      ),
    ),
  },
  { weight: 2, arbitrary: frame(FrameType.CONTROL, connRef, controlPayload) },
  {
    weight: 1,
    arbitrary: frame(0, streamRef, bytes(8)).chain((a) =>
      fc.integer({ min: 7, max: 255 }).map((type) => ({ ...a, type })),
    ),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('oversize' as const),
      length: fc.integer({ min: MAX_FRAME_PAYLOAD + 1, max: 2 ** 32 - 1 }),
      tail: bytes(32),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('open' as const), end: fc.boolean() }) },
  {
    weight: 2,
    arbitrary: fc.record({ kind: fc.constant('respond' as const), pick: fc.nat(), end: fc.boolean() }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('reset' as const), pick: fc.nat() }) },
);

/** A start with a few open streams, so that later frames have something to act on. */
const prelude: fc.Arbitrary<Action[]> = fc.array(
  fc.oneof(
    fc.record({ kind: fc.constant('open' as const), end: fc.boolean() }),
    fc.record({
      kind: fc.constant('frame' as const),
      type: fc.constant<number>(FrameType.HEADERS),
      flags: fc.constantFrom(0, END),
      at: nextPeerRef,
      payload: requestHead.map((h) => encodeMessage(h)),
    }),
  ),
  { maxLength: 3 },
);

/** A whole scenario: a prelude, then anything. */
const scenario = (maxLength: number) =>
  fc
    .tuple(prelude, fc.array(action, { minLength: 1, maxLength, size: 'max' }))
    .map(([start, rest]) => [...start, ...rest]);

// ------------------------------------------------------------------ the harness

interface Outcomes {
  illegalSeen: number;
}

/** Copies out what matters of a frame the session wrote. */
function observed(f: Frame): Expected {
  if (f.type === FrameType.GOAWAY) {
    const g = decodeGoAway(f.payload);
    return {
      type: f.type,
      flags: f.flags,
      streamId: f.streamId,
      goaway: { lastStreamId: g.lastStreamId, code: g.code },
    };
  }
  return { type: f.type, flags: f.flags, streamId: f.streamId, payload: f.payload.toString('hex') };
}

function resolveRef(model: Model, at: StreamRef): number {
  switch (at.ref) {
    case 'raw':
      return at.id;
    case 'nextPeer': {
      const base = model.lastPeerId === 0 ? (model.role === 'edge' ? 2 : 1) : model.lastPeerId + 2;
      const id = base + 2 * at.skip;
      // Ids are u32 on the wire: a peer that has used them all can only reuse one.
      return id > 2 ** 32 - 1 ? model.lastPeerId : id;
    }
    case 'open': {
      // An open stream; with none open, one that was (frames in flight after a close); else stream 1.
      const open = [...model.streams.keys()].sort((a, b) => a - b);
      const ids = open.length > 0 ? open : model.used;
      return ids.length === 0 ? 1 : ids[at.pick % ids.length]!;
    }
  }
}

async function runScenario(
  role: Role,
  actions: Action[],
  cuts: number[],
  opts: { legalOnly: boolean },
): Promise<Outcomes> {
  const { a, b: peer } = createDuplexPair();
  const session = new MuxSession(
    a,
    { clock: new ManualClock(), log: silentLogger },
    { role, heartbeatIntervalMs: 0, maxConcurrentStreams: MAX_STREAMS },
  );
  const model = new Model(role);
  const outcomes: Outcomes = { illegalSeen: 0 };

  // What the session writes, decoded.
  const got: Expected[] = [];
  const decoder = new FrameDecoder();
  let peerSawEnd = false;
  let wake: (() => void) | undefined;
  peer.on('data', (chunk: Buffer) => {
    decoder.push(chunk, (f) => got.push(observed(f)));
    wake?.();
  });
  peer.on('end', () => {
    peerSawEnd = true;
    wake?.();
  });
  const until = async (ready: () => boolean, what: string) => {
    await withDeadline(
      (async () => {
        while (!ready()) await new Promise<void>((r) => (wake = r));
      })(),
      5000,
      what,
    );
  };

  const controls: ControlMessage[] = [];
  session.control$.subscribe((m) => controls.push(m));
  const streams = new Map<number, MuxStream>();
  const incoming: number[] = [];
  session.streams$.subscribe((s) => {
    incoming.push(s.id);
    streams.set(s.id, s);
  });

  // Peer bytes waiting to be written, in arbitrary chunks, before the next barrier.
  let pending: Buffer[] = [];
  let cutIndex = 0;
  let undelivered = 0; // peer writes not yet handed to the session's socket

  const sendFrame = (f: Frame) => {
    // Legal-only runs drop the frames the model says break a rule, judged on a copy of the model.
    if (opts.legalOnly && isIllegal(model.clone().frame(f))) return;
    const outcome = model.frame(f);
    if (isIllegal(outcome)) outcomes.illegalSeen++;
    pending.push(encodeFrame(f));
  };
  const flushPending = () => {
    const all = Buffer.concat(pending);
    pending = [];
    let start = 0;
    while (start < all.length) {
      const cut =
        cuts.length === 0 ? all.length : (cuts[cutIndex++ % cuts.length]! % (all.length - start)) + 1;
      undelivered++;
      peer.write(all.subarray(start, start + cut), () => {
        undelivered--;
        wake?.();
      });
      start += cut;
    }
  };
  let barrierSeq = 0;
  const barrier = async () => {
    if (model.dead) {
      flushPending();
      // Everything the peer wrote must have reached the session, so that acting on it would show.
      await until(() => peerSawEnd && undelivered === 0, 'the session to close after GOAWAY');
      return;
    }
    const payload = Buffer.from(`barr${String(barrierSeq++).padStart(4, '0')}`);
    sendFrame({ type: FrameType.PING, flags: 0, streamId: 0, payload });
    flushPending();
    const want = payload.toString('hex');
    await until(
      () => peerSawEnd || got.some((f) => f.type === FrameType.PING && f.payload === want),
      `PING ACK for barrier ${want}`,
    );
  };

  try {
    for (const act of actions) {
      // After a connection error the peer keeps talking; the application does nothing more.
      if (model.dead && (act.kind === 'open' || act.kind === 'respond' || act.kind === 'reset')) continue;
      switch (act.kind) {
        case 'frame':
          sendFrame({
            type: act.type,
            flags: act.flags,
            streamId: resolveRef(model, act.at),
            payload: act.payload,
          });
          break;
        case 'fill': {
          const id = resolveRef(model, act.at);
          const s = model.streams.get(id);
          let total = s && !model.dead ? Math.max(0, s.recvCredit + act.delta) : 1;
          do {
            const n = Math.min(total, MAX_FRAME_PAYLOAD);
            total -= n;
            const last = total === 0;
            sendFrame({
              type: FrameType.DATA,
              flags: last && act.end ? END : 0,
              streamId: id,
              payload: Buffer.alloc(n, 0xab),
            });
          } while (total > 0);
          break;
        }
        case 'oversize':
          if (opts.legalOnly) break;
          if (isIllegal(model.oversize())) outcomes.illegalSeen++;
          pending.push(encodeFrameHeader(FrameType.DATA, 0, 1, act.length), act.tail);
          break;
        case 'open': {
          await barrier();
          if (model.dead) break;
          const head: RequestHead = { kind: 'http', method: 'GET', target: '/', headers: ['Host', 'x.test'] };
          const want = model.open(head, act.end);
          try {
            const s = session.openStream(head, { endStream: act.end });
            assert.ok('id' in want, `openStream succeeded where the model expected ${JSON.stringify(want)}`);
            assert.equal(s.id, want.id);
            streams.set(s.id, s);
          } catch (e) {
            if ('id' in want) throw e;
            assert.ok(
              isWarrenError(e, want.error as 'session_closed'),
              `expected ${want.error}, got ${String(e)}`,
            );
          }
          break;
        }
        case 'respond': {
          await barrier();
          if (model.dead) break;
          const ids = [...model.streams].filter(([, s]) => !s.responded).map(([id]) => id);
          if (ids.length === 0) break;
          const id = ids[act.pick % ids.length]!;
          const head: ResponseHead = { status: 200, headers: ['Content-Length', '0'] };
          model.respond(id, head, act.end);
          streams.get(id)!.respond(head, { endStream: act.end });
          break;
        }
        case 'reset': {
          await barrier();
          if (model.dead) break;
          const ids = [...model.streams.keys()];
          if (ids.length === 0) break;
          const id = ids[act.pick % ids.length]!;
          model.reset(id);
          streams.get(id)!.reset();
          break;
        }
      }
    }
    await barrier();

    assert.deepEqual(got, model.expected, 'the session wrote exactly the frames the rules call for');
    assert.deepEqual(controls, model.controls, 'control$ carried exactly the valid control messages');
    assert.deepEqual(incoming, model.incoming, 'streams$ carried exactly the accepted peer streams');
    if (!model.dead) {
      assert.equal(session.activeStreams, model.streams.size);
      assert.equal(session.goingAway, model.peerGoAway);
    }
    // Every PING the peer sent (before a connection error) has its ACK with the same payload.
    for (const e of model.expected) {
      if (e.type === FrameType.PING)
        assert.ok(got.some((g) => g.type === FrameType.PING && g.flags === ACK && g.payload === e.payload));
    }
    if (opts.legalOnly) {
      assert.ok(
        !got.some(
          (f) =>
            f.type === FrameType.GOAWAY ||
            (f.type === FrameType.RST && ILLEGAL_RST.has(Buffer.from(f.payload!, 'hex').readUInt32BE(0))),
        ),
        'a legal sequence got an error RST or a GOAWAY',
      );
    } else {
      for (const f of got)
        if (f.type === FrameType.GOAWAY) assert.notEqual(f.goaway!.code, WireError.NO_ERROR);
    }
  } finally {
    session.destroy();
    await withDeadline(session.closed, 5000, 'session close');
  }
  return outcomes;
}

// ------------------------------------------------------------------ properties

describe('stream rules under arbitrary frame sequences (property)', () => {
  // Nothing may escape as an uncaught exception while a session digests garbage.
  const escaped: unknown[] = [];
  const onUncaught = (e: unknown) => escaped.push(e);
  beforeEach(() => {
    escaped.length = 0;
    process.on('uncaughtException', onUncaught);
  });
  afterEach(() => {
    process.off('uncaughtException', onUncaught);
    assert.deepEqual(escaped, [], 'uncaught exceptions');
  });

  it('answers every frame exactly as the rules say: RST, GOAWAY, PING ACK, or nothing', async () => {
    let illegal = 0;
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom<Role>('edge', 'agent'),
        scenario(24),
        fc.array(fc.nat(200), { maxLength: 8 }),
        async (role, actions, cuts) => {
          const o = await runScenario(role, actions, cuts, { legalOnly: false });
          runs++;
          illegal += o.illegalSeen > 0 ? 1 : 0;
        },
      ),
      { numRuns: 200 },
    );
    // The generator must actually reach the error paths (and not only them).
    assert.ok(illegal > 0 && illegal < runs, `${illegal} of ${runs} runs had an illegal frame`);
  });

  it('legal sequences get no error RST and no GOAWAY', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom<Role>('edge', 'agent'),
        scenario(40),
        fc.array(fc.nat(200), { maxLength: 8 }),
        async (role, actions, cuts) => {
          const o = await runScenario(role, actions, cuts, { legalOnly: true });
          assert.equal(o.illegalSeen, 0);
        },
      ),
      { numRuns: 100 },
    );
  });
});

describe('connection errors (examples)', () => {
  const ping = (n: number, streamId = 0) => {
    const payload = Buffer.alloc(8);
    payload.writeUInt32BE(n, 4);
    return encodeFrame({ type: FrameType.PING, flags: 0, streamId, payload });
  };

  it('a connection error while the writer waits for drain still reaches the peer as GOAWAY', async () => {
    // Hold everything the session writes until told otherwise: its socket stays in backpressure.
    const held: Array<() => void> = [];
    let holding = true;
    const { a, b: peer } = createDuplexPair({
      transfer: (from, _chunk, deliver) => {
        if (from === 'a' && holding) held.push(deliver);
        else setImmediate(deliver);
      },
    });
    const session = new MuxSession(
      a,
      { clock: new ManualClock(), log: silentLogger },
      { role: 'agent', heartbeatIntervalMs: 0 },
    );
    const got: Expected[] = [];
    const decoder = new FrameDecoder();
    peer.on('data', (c: Buffer) => decoder.push(c, (f) => got.push(observed(f))));
    const ended = new Promise<void>((resolve) => peer.once('end', resolve));
    try {
      // 1000 PING ACKs are 18 000 bytes, more than the socket's 16 KiB high-water mark.
      peer.write(Buffer.concat(Array.from({ length: 1000 }, (_, i) => ping(i))));
      await waitFor(() => held.length > 0, { timeoutMs: 5000, message: 'the session to answer the PINGs' });
      // A PING on a stream is a connection error.
      peer.write(ping(7, 1));
      await waitFor(() => session.state !== 'open', {
        timeoutMs: 5000,
        message: 'the session to see the fault',
      });
      holding = false;
      for (const deliver of held.splice(0)) deliver();
      await withDeadline(ended, 5000, 'the session to close its side');
      assert.equal(got.filter((f) => f.type === FrameType.PING && f.flags === ACK).length, 1000);
      assert.deepEqual(got.at(-1), {
        type: FrameType.GOAWAY,
        flags: 0,
        streamId: 0,
        goaway: { lastStreamId: 0, code: WireError.PROTOCOL_ERROR },
      });
    } finally {
      session.destroy();
      await withDeadline(session.closed, 5000, 'session close');
    }
  });

  for (const fault of ['PING on a stream', 'oversize frame'] as const) {
    it(`after a connection error (${fault}) no later frame is acted on, in the same chunk or the next`, async () => {
      const { a, b: peer } = createDuplexPair();
      const session = new MuxSession(
        a,
        { clock: new ManualClock(), log: silentLogger },
        { role: 'agent', heartbeatIntervalMs: 0 },
      );
      const controls: ControlMessage[] = [];
      session.control$.subscribe((m) => controls.push(m));
      const streams: number[] = [];
      session.streams$.subscribe((s) => streams.push(s.id));
      const got: Expected[] = [];
      const decoder = new FrameDecoder();
      peer.on('data', (c: Buffer) => decoder.push(c, (f) => got.push(observed(f))));
      const ended = new Promise<void>((resolve) => peer.once('end', resolve));
      const write = (b: Buffer) => new Promise<void>((resolve) => peer.write(b, () => resolve()));
      // Frames that would each show if they were acted on: a control message, a new stream, a PING.
      const telltales = () =>
        Buffer.concat([
          encodeFrame({
            type: FrameType.CONTROL,
            flags: 0,
            streamId: 0,
            payload: encodeMessage({ type: 'drain', reason: 'x', deadlineMs: 1 }),
          }),
          encodeFrame({
            type: FrameType.HEADERS,
            flags: 0,
            streamId: 1,
            payload: encodeMessage({ kind: 'http', method: 'GET', target: '/', headers: [] }),
          }),
          ping(1),
        ]);
      const bad =
        fault === 'oversize frame'
          ? encodeFrameHeader(FrameType.DATA, 0, 1, MAX_FRAME_PAYLOAD + 1)
          : ping(7, 1);
      try {
        // Both writes are delivered (their callbacks run) before anything is asserted.
        await write(Buffer.concat([bad, telltales()]));
        await write(telltales());
        await withDeadline(ended, 5000, 'the session to close its side');
        const code = fault === 'oversize frame' ? WireError.FRAME_SIZE_ERROR : WireError.PROTOCOL_ERROR;
        assert.deepEqual(got, [
          { type: FrameType.GOAWAY, flags: 0, streamId: 0, goaway: { lastStreamId: 0, code } },
        ]);
        assert.deepEqual(controls, []);
        assert.deepEqual(streams, []);
      } finally {
        session.destroy();
        await withDeadline(session.closed, 5000, 'session close');
      }
    });
  }
});
