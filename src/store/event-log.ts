/**
 * The event log port: append-only streams of events with one global, gapless order. Implemented by
 * `openLevelEventLog` (production) and `openMemoryEventLog` (tests, dev); both pass the same contract
 * suite (`test/unit/event-log.contract.ts`). The helpers below the port hold the rules both share, so
 * the two cannot drift apart.
 */
import { Observable, type Subscriber } from 'rxjs';
import { WarrenError } from '../shared/errors.ts';
import type { SnapshotStore } from './snapshot-store.ts';

export interface EventMeta {
  correlationId?: string;
  actor?: string;
}

export interface NewEvent<T extends string = string, D = unknown> {
  type: T;
  data: D;
  meta?: EventMeta;
}

/** An event as stored. Objects handed out by an event log are deep-frozen: never mutate them. */
export interface StoredEvent {
  stream: string;
  /** 1-based within the stream. */
  version: number;
  /** 1-based, global and gapless. */
  position: number;
  /** Epoch ms from the log's injected clock; every event of one append has the same value. */
  recordedAt: number;
  /** Envelope schema the event was written with (see `ENVELOPE_SCHEMA` in codec.ts). */
  schema: number;
  type: string;
  data: unknown;
  meta: EventMeta;
}

/** The stream's exact current version (0 = the stream must not exist yet), or 'any'. */
export type ExpectedVersion = number | 'any';

export interface AppendResult {
  /** The stream's version after the append: pass it as the next `expectedVersion`. */
  nextExpectedVersion: number;
  /** Position of the stream's last event (0 if it has none); wait for a projection to reach it. */
  lastPosition: number;
}

export interface AppendOptions {
  /** Default 'any'. Checked even when `events` is empty. */
  expectedVersion?: ExpectedVersion;
  /** Wait for the write to reach the disk (fsync) before resolving; default false. */
  sync?: boolean;
}

export interface ReadAllOptions {
  /** Default 1. */
  fromPosition?: number;
  /** Default: no limit. */
  limit?: number;
  /**
   * Default true. False lets the log hand out events that are not frozen (they are checked all the
   * same), for a caller that owns them: it never changes them and keeps no reference to them past its
   * own use, like the start-up fold of the whole log, where freezing every event costs about a second
   * per million. A log may hand out frozen events anyway.
   */
  frozen?: boolean;
}

export interface EventLog {
  /**
   * Appends all events or none. Throws `version_conflict` (retryable) when the stream is not at
   * `expectedVersion`, `bad_request` for an invalid stream name or data that cannot be stored (see
   * codec.ts), `store_closed` after close. An empty `events` array appends nothing and returns the
   * stream's current version.
   */
  append(stream: string, events: readonly NewEvent[], opts?: AppendOptions): Promise<AppendResult>;
  /** The stream's events from `fromVersion` (default 1); [] for a stream that does not exist. */
  readStream(stream: string, opts?: { fromVersion?: number }): Promise<StoredEvent[]>;
  /** The global log from `fromPosition` (default 1), at most `limit` events, as of the first `next()`. */
  readAll(opts?: ReadAllOptions): AsyncIterable<StoredEvent>;
  /**
   * Every event from `fromPosition` (default 1) in order, then live ones as they are appended; no gaps
   * or duplicates, even when appends race with catch-up. Completes when the log closes.
   */
  subscribe(fromPosition?: number): Observable<StoredEvent>;
  /** Position of the last appended event; 0 for an empty log. Still readable after close. */
  readonly headPosition: number;
  /**
   * Snapshots of read models folded from this log, kept with it (snapshot-store.ts): on disk beside a
   * LevelDB log, in memory beside an in-memory one. Optional: a log without them is folded in full.
   * `close` closes them too, after saves already started have finished.
   */
  readonly snapshots?: SnapshotStore;
  /**
   * Lets in-flight appends and snapshot saves finish, completes subscriptions, releases the store.
   * Idempotent.
   */
  close(): Promise<void>;
}

// ---- Shared by the implementations; not for use outside src/store. ----

/**
 * Stream names are restricted so they can be embedded in LevelDB keys: `!` separates key parts and
 * must not appear in a name (see level-event-log.ts). Covers `tunnel-<uuid>`, `zone-<domain>`, etc.
 */
const STREAM_NAME = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$/;
const MAX_TYPE_LENGTH = 200;
/** Versions are stored as 10 decimal digits in LevelDB keys. */
export const MAX_STREAM_VERSION = 9_999_999_999;

export function assertStreamName(stream: string): void {
  if (typeof stream !== 'string' || !STREAM_NAME.test(stream)) {
    throw new WarrenError(
      'bad_request',
      `invalid stream name ${JSON.stringify(stream)}: use 1-200 of A-Z a-z 0-9 . _ : @ -, starting with a letter or digit`,
    );
  }
}

export function assertNewEvents(events: readonly NewEvent[]): void {
  if (!Array.isArray(events)) throw new WarrenError('bad_request', 'events must be an array');
  for (const e of events) {
    if (typeof e?.type !== 'string' || e.type.length === 0 || e.type.length > MAX_TYPE_LENGTH) {
      throw new WarrenError('bad_request', `event type must be a string of 1-${MAX_TYPE_LENGTH} characters`);
    }
  }
}

export function assertExpectedVersion(expected: ExpectedVersion | undefined): void {
  if (expected === undefined || expected === 'any') return;
  if (!Number.isSafeInteger(expected) || expected < 0) {
    throw new WarrenError('bad_request', `expectedVersion must be 'any' or an integer >= 0, not ${expected}`);
  }
}

/** 1-based position or version argument; `name` is used in the message. */
export function assertFrom(value: number, name: string): void {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new WarrenError('bad_request', `${name} must be an integer >= 1, not ${value}`);
  }
}

export function assertLimit(limit: number): void {
  if (limit !== Number.POSITIVE_INFINITY && (!Number.isSafeInteger(limit) || limit < 0)) {
    throw new WarrenError('bad_request', `limit must be an integer >= 0, not ${limit}`);
  }
}

export function checkExpectedVersion(
  stream: string,
  expected: ExpectedVersion | undefined,
  current: number,
): void {
  if (expected === undefined || expected === 'any' || expected === current) return;
  throw new WarrenError(
    'version_conflict',
    `stream ${stream} is at version ${current}, expected ${expected}`,
    // Retryable: reload the stream, decide again, append again (see command-handler.ts).
    { retryable: true },
  );
}

export function storeClosedError(): WarrenError {
  return new WarrenError('store_closed', 'the event log is closed');
}

/** What `SubscriptionHub` needs from an event log. */
export interface SubscriptionSource {
  readonly headPosition: number;
  /** Events from `fromPosition` in order, at most `limit`; must include everything up to headPosition. */
  readPage(fromPosition: number, limit: number): Promise<StoredEvent[]>;
}

const CATCH_UP_PAGE = 256;

/**
 * Catch-up-then-live subscriptions. Each subscriber keeps the next position it wants. While it is
 * catching up it reads pages from the store and ignores live notifications: the loop re-checks
 * `headPosition` after every page, and `headPosition` advances in the same tick as `publish`, so an
 * event appended during catch-up is either in a later page or published after catch-up ended —
 * never lost, never delivered twice.
 */
export class SubscriptionHub {
  readonly #source: SubscriptionSource;
  readonly #subs = new Set<HubSubscription>();
  #closed = false;

  constructor(source: SubscriptionSource) {
    this.#source = source;
  }

  subscribe(fromPosition: number): Observable<StoredEvent> {
    assertFrom(fromPosition, 'fromPosition');
    return new Observable<StoredEvent>((subscriber) => {
      if (this.#closed) {
        subscriber.error(storeClosedError());
        return;
      }
      const sub = new HubSubscription(this.#source, subscriber, fromPosition);
      this.#subs.add(sub);
      void sub.pump();
      return () => {
        sub.done = true;
        this.#subs.delete(sub);
      };
    });
  }

  /** Call synchronously right after `headPosition` has advanced past `events`. */
  publish(events: readonly StoredEvent[]): void {
    for (const sub of this.#subs) sub.offer(events);
  }

  completeAll(): void {
    this.#closed = true;
    for (const sub of this.#subs) {
      sub.done = true;
      sub.subscriber.complete();
    }
    this.#subs.clear();
  }
}

class HubSubscription {
  done = false;
  readonly source: SubscriptionSource;
  readonly subscriber: Subscriber<StoredEvent>;
  #pumping = false;
  #next: number;

  constructor(source: SubscriptionSource, subscriber: Subscriber<StoredEvent>, fromPosition: number) {
    this.source = source;
    this.subscriber = subscriber;
    this.#next = fromPosition;
  }

  offer(events: readonly StoredEvent[]): void {
    for (const e of events) {
      // A running pump reads these from the store. Checked per event: a `next` handler may unsubscribe,
      // or append to a synchronous log, which re-enters here and may have started a pump.
      if (this.done || this.#pumping) return;
      if (e.position < this.#next) continue;
      if (e.position > this.#next) {
        void this.pump();
        return;
      }
      this.#next++;
      this.subscriber.next(e);
    }
  }

  async pump(): Promise<void> {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      // No await between this check failing and `#pumping = false`: see the class comment.
      while (!this.done && this.#next <= this.source.headPosition) {
        const page = await this.source.readPage(this.#next, CATCH_UP_PAGE);
        if (page.length === 0) {
          throw new WarrenError('store_corrupt', `event log has no event at position ${this.#next}`);
        }
        for (const e of page) {
          if (this.done) return;
          if (e.position < this.#next) continue; // delivered by a re-entrant `offer` before this pump began
          if (e.position !== this.#next) {
            throw new WarrenError('store_corrupt', `event log has a gap before position ${e.position}`);
          }
          this.#next++;
          this.subscriber.next(e);
        }
      }
    } catch (err) {
      if (!this.done) {
        this.done = true;
        this.subscriber.error(err);
      }
    } finally {
      this.#pumping = false;
    }
  }
}
