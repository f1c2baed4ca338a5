/**
 * The in-memory event log: a real implementation for tests and dev mode, held to the same contract as
 * the LevelDB one. Every event goes through the stored-format codec on append, so data that the LevelDB
 * log would refuse or normalise is refused or normalised here too, and what readers get is identical.
 */
import type { Observable } from 'rxjs';
import type { Clock } from '../shared/clock.ts';
import { WarrenError } from '../shared/errors.ts';
import { decodeEnvelope, ENVELOPE_SCHEMA, encodeEnvelope } from './codec.ts';
import {
  type AppendOptions,
  type AppendResult,
  assertExpectedVersion,
  assertFrom,
  assertLimit,
  assertNewEvents,
  assertStreamName,
  checkExpectedVersion,
  type EventLog,
  MAX_STREAM_VERSION,
  type NewEvent,
  type ReadAllOptions,
  type StoredEvent,
  SubscriptionHub,
  storeClosedError,
} from './event-log.ts';
import { openMemorySnapshotStore, type SnapshotStore } from './snapshot-store.ts';

export interface MemoryEventLogComponents {
  /** Stamps `recordedAt`. */
  clock: Clock;
}

export function openMemoryEventLog(components: MemoryEventLogComponents): EventLog {
  return new MemoryEventLog(components.clock);
}

class MemoryEventLog implements EventLog {
  readonly snapshots: SnapshotStore = openMemorySnapshotStore();
  readonly #clock: Clock;
  /** The global log; index = position - 1. */
  readonly #all: StoredEvent[] = [];
  readonly #streams = new Map<string, StoredEvent[]>();
  readonly #hub: SubscriptionHub;
  #closed = false;

  constructor(clock: Clock) {
    this.#clock = clock;
    const all = this.#all;
    const isClosed = () => this.#closed;
    this.#hub = new SubscriptionHub({
      get headPosition() {
        return all.length;
      },
      readPage: async (from, limit) => {
        if (isClosed()) throw storeClosedError();
        return all.slice(from - 1, from - 1 + limit);
      },
    });
  }

  get headPosition(): number {
    return this.#all.length;
  }

  // No `await` in here on purpose: an async function runs synchronously until its first await, so the
  // whole append happens within the call and concurrent appends apply in call order, never interleaved.
  async append(stream: string, events: readonly NewEvent[], opts: AppendOptions = {}): Promise<AppendResult> {
    if (this.#closed) throw storeClosedError();
    assertStreamName(stream);
    assertNewEvents(events);
    assertExpectedVersion(opts.expectedVersion);
    const streamEvents = this.#streams.get(stream) ?? [];
    const current = streamEvents.length;
    checkExpectedVersion(stream, opts.expectedVersion, current);
    if (events.length === 0) {
      return { nextExpectedVersion: current, lastPosition: streamEvents.at(-1)?.position ?? 0 };
    }
    if (current + events.length > MAX_STREAM_VERSION) {
      throw new WarrenError('bad_request', `stream ${stream} would exceed ${MAX_STREAM_VERSION} events`);
    }
    const recordedAt = this.#clock.now();
    const head = this.#all.length;
    // Encode everything before committing anything, so unstorable data leaves the log untouched.
    const stored = events.map((e, i) =>
      decodeEnvelope(
        encodeEnvelope({
          stream,
          version: current + i + 1,
          position: head + i + 1,
          recordedAt,
          schema: ENVELOPE_SCHEMA,
          type: e.type,
          data: e.data,
          meta: e.meta ?? {},
        }),
      ),
    );
    this.#all.push(...stored);
    streamEvents.push(...stored);
    this.#streams.set(stream, streamEvents);
    this.#hub.publish(stored);
    return { nextExpectedVersion: current + stored.length, lastPosition: head + stored.length };
  }

  async readStream(stream: string, opts: { fromVersion?: number } = {}): Promise<StoredEvent[]> {
    if (this.#closed) throw storeClosedError();
    assertStreamName(stream);
    const fromVersion = opts.fromVersion ?? 1;
    assertFrom(fromVersion, 'fromVersion');
    return (this.#streams.get(stream) ?? []).slice(fromVersion - 1);
  }

  // `frozen: false` changes nothing here: the stored events are shared, so they stay frozen.
  readAll(opts: ReadAllOptions = {}): AsyncIterable<StoredEvent> {
    if (this.#closed) throw storeClosedError();
    const fromPosition = opts.fromPosition ?? 1;
    assertFrom(fromPosition, 'fromPosition');
    const limit = opts.limit ?? Number.POSITIVE_INFINITY;
    assertLimit(limit);
    return this.#iterate(fromPosition, limit);
  }

  async *#iterate(fromPosition: number, limit: number): AsyncGenerator<StoredEvent> {
    // Like a LevelDB iterator's snapshot: the log as of the first next().
    const end = Math.min(this.#all.length, fromPosition - 1 + limit);
    for (let i = fromPosition - 1; i < end; i++) {
      if (this.#closed) throw storeClosedError();
      yield this.#all[i]!;
    }
  }

  subscribe(fromPosition = 1): Observable<StoredEvent> {
    if (this.#closed) throw storeClosedError();
    return this.#hub.subscribe(fromPosition);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#hub.completeAll();
    await this.snapshots.close();
  }
}
