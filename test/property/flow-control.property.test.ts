/**
 * Flow control under arbitrary interleavings. Two real MuxSessions (edge and agent) talk through an
 * in-memory duplex pair whose every chunk crossing is a task of fast-check's scheduler; so is every
 * write of a producer, every read of a consumer and the agent's response head. Several full-duplex
 * streams of random sizes (a few MiB in all) run at once, with random session tuning.
 *
 * What is scheduled (released one at a time, in an order fast-check picks and can shrink):
 *   - the delivery of each chunk a session writes to its socket (the writer sees backpressure while
 *     its chunks are undelivered: a write's callback fires on delivery);
 *   - each `write()` of each producer (and its `end()`), each `read(n)` of each consumer;
 *   - the agent's `respond()` for each stream (so bodies are written before and after the head).
 * Some streams have lazy readers, which read only while their sender is out of credit: windows run
 * full and are then emptied in large reads (the pattern of `for await` over a slow consumer).
 * What is not: the sessions' own setImmediate flushes and Node's stream ticks, which run between
 * scheduler steps; the driver lets them run and counts a stall when nothing is left to schedule.
 *
 * Checked: every byte arrives exactly once and in order per stream and direction (compared as it
 * arrives, and by hash at the end); no sender ever sends DATA beyond the credit it was granted (an
 * independent monitor decodes both directions of the wire, and the receiving session would RST with
 * FLOW_CONTROL_ERROR: no RST, GOAWAY or stream error may appear); no receiver ever buffers more than
 * its receive window; and everything finishes — no stall — within a bounded number of steps.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ManualClock } from '../../src/shared/clock.ts';
import { silentLogger } from '../../src/shared/log.ts';
import { FrameDecoder, FrameType } from '../../src/transport/frame.ts';
import { INITIAL_WINDOW_BYTES, MuxSession, type MuxStream } from '../../src/transport/session.ts';
import { createDuplexPair, type PairSide } from '../support/duplex-pair.ts';
import { withDeadline } from '../support/wait.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const MAX_TOTAL_BYTES = 3 * MiB;
/** Writes and reads per stream direction stay under this, whatever the chunk sizes drawn. */
const MAX_OPS_PER_DIRECTION = 150;
const MAX_STEPS = 40_000;
/** Event-loop turns with nothing scheduled and nothing finished before the run counts as stalled. */
const MAX_IDLE_TURNS = 100;

interface StreamPlan {
  up: number; // request body, edge → agent
  down: number; // response body, agent → edge
  writeSizes: number[];
  readSizes: number[];
  /** The readers of this stream only read while the sender is out of credit (or done): full windows. */
  lazy: boolean;
}

interface Plan {
  streams: StreamPlan[];
  flushBatchBytes: number;
  streamWriteBufferBytes: number;
  maxWindowBytes: number;
}

const bodySize = fc.oneof(
  { weight: 1, arbitrary: fc.constant(0) },
  { weight: 2, arbitrary: fc.integer({ min: 1, max: 4 * KiB }) },
  { weight: 3, arbitrary: fc.integer({ min: 4 * KiB, max: 300 * KiB }) },
  { weight: 2, arbitrary: fc.integer({ min: 300 * KiB, max: Math.floor(1.5 * MiB) }) },
);
const opSizes = fc.array(
  fc.oneof(
    { weight: 1, arbitrary: fc.integer({ min: 1, max: KiB }) },
    { weight: 3, arbitrary: fc.integer({ min: KiB, max: 128 * KiB }) },
    { weight: 1, arbitrary: fc.integer({ min: 128 * KiB, max: 1 * MiB }) },
  ),
  { minLength: 1, maxLength: 5 },
);

const planArb: fc.Arbitrary<Plan> = fc
  .record({
    streams: fc.array(
      fc.record({
        up: bodySize,
        down: bodySize,
        writeSizes: opSizes,
        readSizes: opSizes,
        lazy: fc.boolean(),
      }),
      {
        minLength: 1,
        maxLength: 4,
      },
    ),
    flushBatchBytes: fc.constantFrom(16 * KiB, 64 * KiB, 256 * KiB),
    streamWriteBufferBytes: fc.constantFrom(8 * KiB, 64 * KiB, 256 * KiB),
    maxWindowBytes: fc.constantFrom(INITIAL_WINDOW_BYTES, MiB, 16 * MiB),
  })
  .map((plan) => {
    // Keep the whole run within a few MiB.
    const total = plan.streams.reduce((n, s) => n + s.up + s.down, 0);
    if (total <= MAX_TOTAL_BYTES) return plan;
    const scale = MAX_TOTAL_BYTES / total;
    return {
      ...plan,
      streams: plan.streams.map((s) => ({
        ...s,
        up: Math.floor(s.up * scale),
        down: Math.floor(s.down * scale),
      })),
    };
  });

/** Deterministic, position-dependent bytes: a misplaced or repeated chunk never compares equal. */
function body(size: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(size);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/**
 * Watches both directions of the wire on its own: DATA is charged to the sender's credit when the
 * sender hands it to its socket, WINDOW_UPDATE is credited when it reaches the sender. (A WINDOW_UPDATE
 * that arrives while an earlier write still waits in the socket's queue is credited a little early:
 * the monitor may be lenient, never strict.)
 */
class WireMonitor {
  readonly #written = { a: new FrameDecoder(), b: new FrameDecoder() };
  readonly #delivered = { a: new FrameDecoder(), b: new FrameDecoder() };
  /** Credit of each sender side, per stream id. */
  readonly #credit = { a: new Map<number, number>(), b: new Map<number, number>() };
  readonly problems: string[] = [];
  dataBytes = 0;

  written(from: PairSide, chunk: Buffer): void {
    this.#written[from].push(chunk, (f) => {
      if (f.type === FrameType.DATA) {
        const credit = (this.#credit[from].get(f.streamId) ?? INITIAL_WINDOW_BYTES) - f.payload.length;
        this.#credit[from].set(f.streamId, credit);
        this.dataBytes += f.payload.length;
        if (credit < 0)
          this.problems.push(`${from} sent ${-credit} bytes past its credit on stream ${f.streamId}`);
      } else if (f.type === FrameType.RST || f.type === FrameType.GOAWAY) {
        this.problems.push(
          `${from} sent ${f.type === FrameType.RST ? 'RST' : 'GOAWAY'} on stream ${f.streamId}`,
        );
      }
    });
  }

  delivered(from: PairSide, chunk: Buffer): void {
    this.#delivered[from].push(chunk, (f) => {
      if (f.type !== FrameType.WINDOW_UPDATE) return;
      // `from` is the receiver granting credit; the sender is the other side.
      const sender: PairSide = from === 'a' ? 'b' : 'a';
      const credit = this.#credit[sender].get(f.streamId) ?? INITIAL_WINDOW_BYTES;
      this.#credit[sender].set(f.streamId, credit + f.payload.readUInt32BE(0));
    });
  }
}

interface Direction {
  label: string;
  /** The sending end, once known. */
  sender: MuxStream | undefined;
  expected: Buffer;
  received: number;
  hash: ReturnType<typeof createHash>;
  ended: boolean;
  finished: boolean; // the writer's 'finish'
}

async function runPlan(s: fc.Scheduler, plan: Plan): Promise<void> {
  const monitor = new WireMonitor();
  const { a, b } = createDuplexPair({
    transfer: (from, chunk, deliver) => {
      monitor.written(from, chunk);
      s.schedule(Promise.resolve(), `deliver ${from}→ ${chunk.length} B`).then(() => {
        monitor.delivered(from, chunk);
        deliver();
      });
    },
  });
  const components = { clock: new ManualClock(), log: silentLogger };
  const tuning = {
    heartbeatIntervalMs: 0,
    flushBatchBytes: plan.flushBatchBytes,
    streamWriteBufferBytes: plan.streamWriteBufferBytes,
    maxWindowBytes: plan.maxWindowBytes,
  };
  const edge = new MuxSession(a, components, { role: 'edge', ...tuning });
  const agent = new MuxSession(b, components, { role: 'agent', ...tuning });

  const errors: string[] = [];
  const readers: MuxStream[] = [];
  const directions: Direction[] = [];
  const watch = (stream: MuxStream, side: string) => {
    stream.on('error', (e: Error) => errors.push(`${side} stream ${stream.id}: ${e.message}`));
    readers.push(stream);
  };

  /** Writes `data` in the plan's chunk sizes, one scheduled task per write, then ends. */
  const produce = (stream: MuxStream, dir: Direction, sizes: number[]) => {
    const minChunk = Math.ceil(dir.expected.length / MAX_OPS_PER_DIRECTION);
    let offset = 0;
    let i = 0;
    stream.once('finish', () => {
      dir.finished = true;
    });
    const next = () => {
      s.schedule(Promise.resolve(), `${dir.label} write`).then(() => {
        if (offset >= dir.expected.length) {
          stream.end();
          return;
        }
        const n = Math.max(sizes[i++ % sizes.length]!, minChunk);
        const chunk = dir.expected.subarray(offset, offset + n);
        offset += chunk.length;
        if (stream.write(chunk)) next();
        else stream.once('drain', next);
      });
    };
    next();
  };

  /** Reads in the plan's sizes, one scheduled task per read, checking every byte as it comes. */
  const consume = (stream: MuxStream, dir: Direction, sizes: number[], lazy: boolean) => {
    const minRead = Math.ceil(dir.expected.length / MAX_OPS_PER_DIRECTION);
    let i = 0;
    stream.once('end', () => {
      dir.ended = true;
    });
    const next = () => {
      if (dir.ended) return;
      if (lazy && !senderStalled(dir)) {
        parked.add(next);
        return;
      }
      s.schedule(Promise.resolve(), `${dir.label} read`).then(() => {
        if (dir.ended) return;
        const available = stream.readableLength;
        const want = Math.max(sizes[i++ % sizes.length]!, minRead);
        const chunk = (
          available > 0 ? stream.read(Math.min(want, available)) : stream.read()
        ) as Buffer | null;
        if (chunk === null) {
          stream.once('readable', next);
          return;
        }
        const at = dir.received;
        const expected = dir.expected.subarray(at, at + chunk.length);
        if (chunk.length > expected.length || !chunk.equals(expected)) {
          errors.push(`${dir.label}: bytes at offset ${at} (${chunk.length}) differ from what was sent`);
        }
        dir.received += chunk.length;
        dir.hash.update(chunk);
        next();
      });
    };
    next();
  };

  // Lazy readers wait here until their sender has no credit left (or is done); the driver wakes them.
  const parked = new Set<() => void>();
  const senderStalled = (dir: Direction) =>
    dir.finished || (dir.sender !== undefined && (dir.sender.sendCredit === 0 || dir.sender.destroyed));
  const wakeParked = () => {
    for (const resume of [...parked]) {
      parked.delete(resume);
      resume();
    }
  };

  const newDirection = (label: string, size: number, seed: number): Direction => {
    const d: Direction = {
      label,
      sender: undefined,
      expected: body(size, seed),
      received: 0,
      hash: createHash('sha256'),
      ended: false,
      finished: false,
    };
    directions.push(d);
    return d;
  };

  const planFor = new Map<number, { plan: StreamPlan; up: Direction; down: Direction }>();
  agent.streams$.subscribe((stream) => {
    const entry = planFor.get(stream.id);
    if (!entry) {
      errors.push(`agent got unexpected stream ${stream.id}`);
      return;
    }
    watch(stream, 'agent');
    entry.down.sender = stream;
    consume(stream, entry.up, entry.plan.readSizes, entry.plan.lazy);
    produce(stream, entry.down, entry.plan.writeSizes);
    s.schedule(Promise.resolve(), `respond ${stream.id}`).then(() =>
      stream.respond({ status: 200, headers: [] }),
    );
  });

  plan.streams.forEach((sp, k) => {
    const up = newDirection(`stream#${k} up`, sp.up, 2 * k + 1);
    const down = newDirection(`stream#${k} down`, sp.down, 2 * k + 2);
    const stream = edge.openStream({ kind: 'http', method: 'POST', target: `/${k}`, headers: [] });
    planFor.set(stream.id, { plan: sp, up, down });
    watch(stream, 'edge');
    up.sender = stream;
    produce(stream, up, sp.writeSizes);
    consume(stream, down, sp.readSizes, sp.lazy);
  });

  const check = () => {
    for (const r of readers) {
      if (r.readableLength > r.receiveWindow) {
        errors.push(`stream ${r.id} buffers ${r.readableLength} bytes, window ${r.receiveWindow}`);
      }
      if (r.sendCredit < 0) errors.push(`stream ${r.id} has negative send credit ${r.sendCredit}`);
    }
    if (edge.state === 'closed' || agent.state === 'closed') errors.push('a session closed');
    assert.deepEqual([...errors, ...monitor.problems], []);
  };
  const allDone = () => directions.every((d) => d.ended && d.finished);

  try {
    let idle = 0;
    for (let step = 0; !allDone(); step++) {
      assert.ok(step < MAX_STEPS, `not done after ${MAX_STEPS} steps`);
      wakeParked();
      if (s.count() > 0) {
        await s.waitNext(1);
        idle = 0;
      } else {
        // Only unscheduled work (a session's setImmediate flush, a stream tick) can make progress now.
        await new Promise<void>((resolve) => setImmediate(resolve));
        if (++idle > MAX_IDLE_TURNS) {
          const stuck = directions
            .filter((d) => !(d.ended && d.finished))
            .map(
              (d) =>
                `${d.label}: ${d.received}/${d.expected.length} read, ended ${d.ended}, writer finished ${d.finished}`,
            );
          assert.fail(`stalled with nothing scheduled: ${stuck.join('; ')}`);
        }
      }
      check();
    }
    for (const d of directions) {
      assert.equal(d.received, d.expected.length, `${d.label}: byte count`);
      assert.equal(d.hash.digest('hex'), sha256(d.expected), `${d.label}: hash`);
    }
    // Both ends forget every stream once both directions are over.
    for (let turn = 0; edge.activeStreams + agent.activeStreams > 0; turn++) {
      assert.ok(
        turn < MAX_IDLE_TURNS,
        `streams still open: edge ${edge.activeStreams}, agent ${agent.activeStreams}`,
      );
      if (s.count() > 0) await s.waitNext(1);
      else await new Promise<void>((resolve) => setImmediate(resolve));
    }
    check();
  } finally {
    edge.destroy();
    agent.destroy();
    await withDeadline(Promise.all([edge.closed, agent.closed]), 5000, 'sessions to close');
  }
}

describe('flow control under arbitrary interleavings (property)', () => {
  it('delivers every byte once and in order, within credit and window, and never stalls', async () => {
    await fc.assert(
      fc.asyncProperty(fc.scheduler(), planArb, async (s, plan) => {
        await runPlan(s, plan);
      }),
      { numRuns: 40 },
    );
  });

  it('small bodies, tiny chunks and tight tuning', async () => {
    const small = fc.record({
      streams: fc.array(
        fc.record({
          up: fc.integer({ min: 0, max: 3000 }),
          down: fc.integer({ min: 0, max: 3000 }),
          writeSizes: fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 4 }),
          readSizes: fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 4 }),
          lazy: fc.boolean(),
        }),
        { minLength: 1, maxLength: 6 },
      ),
      flushBatchBytes: fc.constantFrom(1, 100, 16 * KiB),
      streamWriteBufferBytes: fc.constantFrom(1, 500, 64 * KiB),
      maxWindowBytes: fc.constantFrom(INITIAL_WINDOW_BYTES, 16 * MiB),
    });
    await fc.assert(
      fc.asyncProperty(fc.scheduler(), small, async (s, plan) => {
        await runPlan(s, plan);
      }),
      { numRuns: 80 },
    );
  });
});
