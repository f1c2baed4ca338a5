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
  let state = decider.initialState();
  let version = 0;
  for (let attempt = 1; ; attempt++) {
    // After a conflict only the events we missed are read and folded in.
    for (const e of await log.readStream(stream, { fromVersion: version + 1 })) {
      state = decider.evolve(state, { type: e.type, data: e.data } as E);
      version = e.version;
    }
    const events = decider.decide(command, state);
    if (events.length === 0) return [];
    try {
      await log.append(
        stream,
        events.map((e) => ({ type: e.type, data: e.data, ...(meta ? { meta } : {}) })),
        { expectedVersion: version, sync: opts.sync ?? false },
      );
      return events;
    } catch (err) {
      if (!isWarrenError(err, 'version_conflict') || attempt >= maxAttempts) throw err;
    }
  }
}
