/**
 * The production event log, on LevelDB (classic-level) in `<dataDir>/events`.
 *
 * Key layout (utf8 keys; `!` separates parts and never occurs in a stream name):
 *   g!<position: 16 hex digits>               → envelope bytes (codec.ts); a scan of `g!` is the log in order
 *   s!<stream>!<version: 10 decimal digits>   → position (16 hex digits, ascii); one stream's index
 *   m!layout                                  → "1"; the version of this layout
 * Snapshots of read models live beside it in `<dataDir>/snapshots` (snapshot-store.ts), as files: they
 * are large, rewritten whole, and an operator may delete them (to force a full replay) with the edge
 * stopped.
 * Fixed-width numbers make lexicographic order numeric order. Because `!` is not allowed in stream names,
 * the range [`s!<stream>!`, `s!<stream>"`) holds exactly that stream's keys (`"` sorts right after `!`).
 *
 * Appends are serialised on a promise chain and each is one `db.batch`, so positions are gapless and a
 * crash leaves either all or none of an append. The head position is read from the last `g!` key on
 * open; each stream's version is read lazily from its last `s!` key and cached.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ClassicLevel } from 'classic-level';
import type { Observable } from 'rxjs';
import type { Clock } from '../shared/clock.ts';
import { WarrenError } from '../shared/errors.ts';
import { type Logger, silentLogger } from '../shared/log.ts';
import { type DecodeOptions, decodeEnvelope, ENVELOPE_SCHEMA, encodeEnvelope } from './codec.ts';
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
import { openFileSnapshotStore, type SnapshotStore } from './snapshot-store.ts';

export interface LevelEventLogComponents {
  /** Stamps `recordedAt`. */
  clock: Clock;
  /** Default: silent. */
  log?: Logger;
}

export interface LevelEventLogInit {
  /** The edge's data directory; the log lives in its `events` subdirectory (created if missing). */
  dataDir: string;
}

/** Snapshots of read models, beside the log's own `events` directory (see snapshot-store.ts). */
const SNAPSHOT_DIR = 'snapshots';
const LAYOUT_KEY = 'm!layout';
const LAYOUT_VERSION = '1';
const GLOBAL_FROM = 'g!';
const GLOBAL_TO = 'g"';
/** Stream heads kept in memory; older ones are re-read from their last index key when needed. */
const STREAM_CACHE_ENTRIES = 10_000;
/** Events read per LevelDB round trip by `readAll`. */
const READ_BATCH = 1024;
/**
 * Bytes `readAll` lets one round trip hold (plus the entry that crosses it, at most an envelope). At
 * classic-level's default of 16 KiB a batch stopped at ~60 events; reading the whole batch at once
 * makes the full read at start-up about a quarter faster.
 */
const READ_BATCH_BYTES = 1024 * 1024;

type Db = ClassicLevel<string, Uint8Array>;

interface StreamHead {
  version: number;
  lastPosition: number;
}

/**
 * Opens (creating if needed) the log in `<dataDir>/events`. Throws `data_dir_locked` when another
 * process (or another open log in this one) holds it, `store_corrupt` when LevelDB reports corruption
 * or the layout is not one we know.
 */
export async function openLevelEventLog(
  components: LevelEventLogComponents,
  init: LevelEventLogInit,
): Promise<EventLog> {
  const log = components.log ?? silentLogger;
  const location = join(init.dataDir, 'events');
  await mkdir(location, { recursive: true });
  const db: Db = new ClassicLevel<string, Uint8Array>(location, {
    keyEncoding: 'utf8',
    valueEncoding: 'view',
  });
  try {
    await db.open();
  } catch (err) {
    throw openError(err, init.dataDir);
  }
  try {
    const layout = await db.get(LAYOUT_KEY);
    const lastKeys = await db.keys({ gte: GLOBAL_FROM, lt: GLOBAL_TO, reverse: true, limit: 1 }).all();
    const headPosition = lastKeys[0] === undefined ? 0 : parsePositionKey(lastKeys[0]);
    if (layout === undefined) {
      await db.put(LAYOUT_KEY, new TextEncoder().encode(LAYOUT_VERSION), { sync: true });
    } else if (new TextDecoder().decode(layout) !== LAYOUT_VERSION) {
      const found = JSON.stringify(new TextDecoder().decode(layout));
      throw new WarrenError('store_corrupt', `event log in ${location} has unknown layout ${found}`);
    }
    log.info({ dataDir: init.dataDir, headPosition }, 'event log opened');
    const snapshots = openFileSnapshotStore(join(init.dataDir, SNAPSHOT_DIR));
    return new LevelEventLog(db, components.clock, log, headPosition, snapshots);
  } catch (err) {
    await db.close().catch(() => {});
    throw err;
  }
}

class LevelEventLog implements EventLog {
  readonly snapshots: SnapshotStore;
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #hub: SubscriptionHub;
  readonly #streamHeads = new Map<string, StreamHead>();
  #head: number;
  /** Tail of the append chain; never rejects. */
  #tail: Promise<unknown> = Promise.resolve();
  #closing: Promise<void> | undefined;

  constructor(db: Db, clock: Clock, log: Logger, headPosition: number, snapshots: SnapshotStore) {
    this.snapshots = snapshots;
    this.#db = db;
    this.#clock = clock;
    this.#log = log;
    this.#head = headPosition;
    const head = () => this.#head;
    this.#hub = new SubscriptionHub({
      get headPosition() {
        return head();
      },
      readPage: (from, limit) => this.#readPage(from, limit),
    });
  }

  get headPosition(): number {
    return this.#head;
  }

  append(stream: string, events: readonly NewEvent[], opts: AppendOptions = {}): Promise<AppendResult> {
    if (this.#closing) return Promise.reject(storeClosedError());
    const result = this.#tail.then(() => this.#appendNext(stream, events, opts));
    this.#tail = result.catch(() => {});
    return result;
  }

  /** Runs with no other append in flight. */
  async #appendNext(stream: string, events: readonly NewEvent[], opts: AppendOptions): Promise<AppendResult> {
    assertStreamName(stream);
    assertNewEvents(events);
    assertExpectedVersion(opts.expectedVersion);
    const current = await this.#streamHead(stream);
    checkExpectedVersion(stream, opts.expectedVersion, current.version);
    if (events.length === 0)
      return { nextExpectedVersion: current.version, lastPosition: current.lastPosition };
    if (current.version + events.length > MAX_STREAM_VERSION) {
      throw new WarrenError('bad_request', `stream ${stream} would exceed ${MAX_STREAM_VERSION} events`);
    }

    const recordedAt = this.#clock.now();
    const encoded: Uint8Array[] = [];
    const ops: { type: 'put'; key: string; value: Uint8Array }[] = [];
    events.forEach((e, i) => {
      const version = current.version + i + 1;
      const position = this.#head + i + 1;
      const bytes = encodeEnvelope({
        stream,
        version,
        position,
        recordedAt,
        schema: ENVELOPE_SCHEMA,
        type: e.type,
        data: e.data,
        meta: e.meta ?? {},
      });
      encoded.push(bytes);
      ops.push({ type: 'put', key: positionKey(position), value: bytes });
      ops.push({
        type: 'put',
        key: versionKey(stream, version),
        value: new TextEncoder().encode(hex16(position)),
      });
    });
    await this.#db.batch(ops, { sync: opts.sync ?? false });

    // Everything below is synchronous: the head moves and subscribers hear of it in the same tick.
    const stored = encoded.map((bytes) => decodeEnvelope(bytes));
    const last = stored.at(-1)!;
    this.#head = last.position;
    this.#cacheStreamHead(stream, { version: last.version, lastPosition: last.position });
    this.#hub.publish(stored);
    return { nextExpectedVersion: last.version, lastPosition: last.position };
  }

  async #streamHead(stream: string): Promise<StreamHead> {
    const cached = this.#streamHeads.get(stream);
    if (cached) {
      this.#cacheStreamHead(stream, cached); // refresh its place in the LRU order
      return cached;
    }
    const [last] = await this.#db
      .iterator({ gte: streamFrom(stream), lt: streamTo(stream), reverse: true, limit: 1 })
      .all();
    const head = last
      ? { version: parseVersionKey(last[0]), lastPosition: parseHex(new TextDecoder().decode(last[1])) }
      : { version: 0, lastPosition: 0 };
    this.#cacheStreamHead(stream, head);
    return head;
  }

  #cacheStreamHead(stream: string, head: StreamHead): void {
    this.#streamHeads.delete(stream);
    this.#streamHeads.set(stream, head);
    if (this.#streamHeads.size > STREAM_CACHE_ENTRIES) {
      const oldest = this.#streamHeads.keys().next().value;
      if (oldest !== undefined) this.#streamHeads.delete(oldest);
    }
  }

  async readStream(stream: string, opts: { fromVersion?: number } = {}): Promise<StoredEvent[]> {
    this.#assertOpen();
    assertStreamName(stream);
    const fromVersion = opts.fromVersion ?? 1;
    assertFrom(fromVersion, 'fromVersion');
    if (fromVersion > MAX_STREAM_VERSION) return [];
    return this.#guard(async () => {
      const positions = await this.#db
        .values({ gte: versionKey(stream, fromVersion), lt: streamTo(stream) })
        .all();
      if (positions.length === 0) return [];
      const keys = positions.map((p) => positionKey(parseHex(new TextDecoder().decode(p))));
      const values = await this.#db.getMany(keys);
      return values.map((bytes, i) => {
        if (bytes === undefined)
          throw new WarrenError('store_corrupt', `stream ${stream} points at missing ${keys[i]}`);
        return decodeAt(bytes, keys[i]!);
      });
    });
  }

  readAll(opts: ReadAllOptions = {}): AsyncIterable<StoredEvent> {
    this.#assertOpen();
    const fromPosition = opts.fromPosition ?? 1;
    assertFrom(fromPosition, 'fromPosition');
    const limit = opts.limit ?? Number.POSITIVE_INFINITY;
    assertLimit(limit);
    return this.#iterate(fromPosition, limit, opts.frozen ?? true);
  }

  async *#iterate(fromPosition: number, limit: number, frozen: boolean): AsyncGenerator<StoredEvent> {
    if (limit === 0) return;
    // The iterator reads from an implicit LevelDB snapshot taken when it is created (first next()).
    const it = this.#db.iterator({
      gte: positionKey(fromPosition),
      lt: GLOBAL_TO,
      limit: limit === Number.POSITIVE_INFINITY ? -1 : limit,
      highWaterMarkBytes: READ_BATCH_BYTES,
    });
    const read = () => {
      const batch = this.#guard(() => it.nextv(READ_BATCH));
      // Awaited later (only in `finally` when the consumer stops early): a rejection meanwhile is not unhandled.
      batch.catch(() => {});
      return batch;
    };
    const decode: DecodeOptions = { freeze: frozen };
    let next: Promise<[string, Uint8Array][]> | undefined = read();
    try {
      for (;;) {
        const entries = await next;
        next = undefined;
        if (entries.length === 0) return;
        // LevelDB reads the next batch on a libuv thread while this one is decoded: at start-up the
        // edge folds the whole log, and the read would otherwise wait for the decoding and vice versa.
        next = read();
        for (const [key, bytes] of entries) yield decodeAt(bytes, key, decode);
      }
    } finally {
      // One read at a time on an iterator: let a prefetch finish before closing.
      await next?.catch(() => {});
      await it.close().catch(() => {});
    }
  }

  // No closing check here: subscriptions keep catching up while close() drains the append chain, and
  // are completed (not errored) when it is done.
  async #readPage(fromPosition: number, limit: number): Promise<StoredEvent[]> {
    const entries = await this.#guard(() =>
      this.#db.iterator({ gte: positionKey(fromPosition), lt: GLOBAL_TO, limit }).all(),
    );
    return entries.map(([key, bytes]) => decodeAt(bytes, key));
  }

  subscribe(fromPosition = 1): Observable<StoredEvent> {
    this.#assertOpen();
    return this.#hub.subscribe(fromPosition);
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      // Close is not abort: appends already queued finish and are published first, and a snapshot
      // being saved (at the control plane's close, say) is finished.
      await this.#tail;
      await this.snapshots.close();
      this.#hub.completeAll();
      await this.#db.close();
      this.#log.info({ headPosition: this.#head }, 'event log closed');
    })();
    return this.#closing;
  }

  #assertOpen(): void {
    if (this.#closing) throw storeClosedError();
  }

  /** Maps "the database/iterator was closed under us" to `store_closed`. */
  async #guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      const code = (err as { code?: unknown } | null)?.code;
      if (code === 'LEVEL_DATABASE_NOT_OPEN' || code === 'LEVEL_ITERATOR_NOT_OPEN') {
        throw new WarrenError('store_closed', 'the event log is closed', { cause: err });
      }
      throw err;
    }
  }
}

function openError(err: unknown, dataDir: string): unknown {
  const e = err as { code?: unknown; cause?: { code?: unknown } } | null;
  const code = e?.code;
  const causeCode = e?.cause?.code;
  // classic-level reports a held lock as LEVEL_DATABASE_NOT_OPEN caused by LEVEL_LOCKED.
  if (causeCode === 'LEVEL_LOCKED' || code === 'LEVEL_LOCKED') {
    return new WarrenError(
      'data_dir_locked',
      `the data directory ${dataDir} is already in use by another edge; stop it or pass a different --data-dir`,
      { cause: err },
    );
  }
  if (causeCode === 'LEVEL_CORRUPTION' || code === 'LEVEL_CORRUPTION') {
    return new WarrenError('store_corrupt', `the event log in ${dataDir} is corrupt`, { cause: err });
  }
  return err;
}

function decodeAt(bytes: Uint8Array, key: string, opts?: DecodeOptions): StoredEvent {
  const event = decodeEnvelope(bytes, opts);
  if (!isPositionKeyOf(key, event.position)) {
    throw new WarrenError('store_corrupt', `event at ${key} says it is at position ${event.position}`);
  }
  return event;
}

/**
 * `key === positionKey(position)`, without building the key: this runs for every event read, and at
 * start-up formatting a million keys took a quarter of a second.
 */
function isPositionKeyOf(key: string, position: number): boolean {
  if (key.length !== GLOBAL_FROM.length + 16 || !key.startsWith(GLOBAL_FROM)) return false;
  let n = 0;
  for (let i = GLOBAL_FROM.length; i < key.length; i++) {
    const c = key.charCodeAt(i);
    // Lower-case hex digits only, as hex16 writes them.
    const digit = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : -1;
    if (digit < 0) return false;
    // Exact below 2^53; a key above that cannot equal a position, which is a safe integer.
    n = n * 16 + digit;
  }
  return n === position;
}

function hex16(n: number): string {
  return n.toString(16).padStart(16, '0');
}

function parseHex(s: string): number {
  const n = Number.parseInt(s, 16);
  if (!/^[0-9a-f]{16}$/.test(s) || !Number.isSafeInteger(n)) {
    throw new WarrenError('store_corrupt', `bad position ${JSON.stringify(s)} in event log index`);
  }
  return n;
}

function positionKey(position: number): string {
  return GLOBAL_FROM + hex16(position);
}

function parsePositionKey(key: string): number {
  return parseHex(key.slice(GLOBAL_FROM.length));
}

function streamFrom(stream: string): string {
  return `s!${stream}!`;
}

function streamTo(stream: string): string {
  return `s!${stream}"`;
}

function versionKey(stream: string, version: number): string {
  return streamFrom(stream) + String(version).padStart(10, '0');
}

function parseVersionKey(key: string): number {
  const digits = key.slice(key.lastIndexOf('!') + 1);
  if (!/^[0-9]{10}$/.test(digits)) throw new WarrenError('store_corrupt', `bad stream index key ${key}`);
  return Number(digits);
}
