/**
 * Load, decide, append: the one place where a pure decider meets the event log. Optimistic
 * concurrency: the append carries the version the decision was based on, and on `version_conflict`
 * the handler reads what it missed, decides again and retries, a bounded number of times.
 */
import type { Decider } from '../events/decider.ts';
import { isWarrenError } from '../shared/errors.ts';
import type { EventLog, EventMeta } from './event-log.ts';

export interface HandleCommandOptions {
  /** Attempts in total before the last `version_conflict` is thrown; default 5. */
  maxAttempts?: number;
  /** Passed to `append`: fsync before resolving. Default false. */
  sync?: boolean;
  /**
   * Remembers each stream's folded state, so that a command reads only the events appended since the
   * last one instead of the whole stream. Use one cache per decider.
   */
  cache?: StreamStateCache<unknown>;
}

/** Folded stream states, least recently used evicted past `maxStreams` (default 10 000). */
export class StreamStateCache<S> {
  readonly #entries = new Map<string, { state: S; version: number }>();
  readonly #max: number;

  constructor(maxStreams = 10_000) {
    this.#max = maxStreams;
  }

  get(stream: string): { state: S; version: number } | undefined {
    const entry = this.#entries.get(stream);
    if (entry) {
      // Re-insert: Map order is the eviction order.
      this.#entries.delete(stream);
      this.#entries.set(stream, entry);
    }
    return entry;
  }

  set(stream: string, state: S, version: number): void {
    this.#entries.delete(stream);
    this.#entries.set(stream, { state, version });
    if (this.#entries.size > this.#max) this.#entries.delete(this.#entries.keys().next().value!);
  }

  get size(): number {
    return this.#entries.size;
  }
}

const DEFAULT_MAX_ATTEMPTS = 5;

/**
 * Runs `command` against `stream` and returns the events it appended ([] when the decider had nothing
 * to do; nothing is appended then). Refusals thrown by `decide` propagate unchanged. Events read from
 * the stream are given to `evolve` as `{ type, data }`, trusted to belong to `E`.
 */
export async function handleCommand<C, E extends { type: string; data: unknown }, S>(
  log: EventLog,
  stream: string,
  decider: Decider<C, E, S>,
  command: C,
  meta?: EventMeta,
  opts: HandleCommandOptions = {},
): Promise<E[]> {
  const maxAttempts = opts.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
  const cache = opts.cache as StreamStateCache<S> | undefined;
  const cached = cache?.get(stream);
  let state = cached?.state ?? decider.initialState();
  let version = cached?.version ?? 0;
  for (let attempt = 1; ; attempt++) {
    // After a conflict only the events we missed are read and folded in.
    for (const e of await log.readStream(stream, { fromVersion: version + 1 })) {
      state = decider.evolve(state, { type: e.type, data: e.data } as E);
      version = e.version;
    }
    cache?.set(stream, state, version);
    const events = decider.decide(command, state);
    if (events.length === 0) return [];
    try {
      const { nextExpectedVersion } = await log.append(
        stream,
        events.map((e) => ({ type: e.type, data: e.data, ...(meta ? { meta } : {}) })),
        { expectedVersion: version, sync: opts.sync ?? false },
      );
      if (cache && nextExpectedVersion === version + events.length) {
        // The stored events went through the codec; what `evolve` sees next time must be the same
        // data, and msgpackr's normalisations (-0 → 0) do not change anything a decider reads.
        cache.set(stream, events.reduce(decider.evolve, state), nextExpectedVersion);
      }
      return events;
    } catch (err) {
      if (!isWarrenError(err, 'version_conflict') || attempt >= maxAttempts) throw err;
    }
  }
}
