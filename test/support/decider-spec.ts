/**
 * Given events / when command / then events: the shape every decider spec reads in. `given` folds
 * the events with the decider's own `evolve`, so a spec states history, not internal state.
 */
import assert from 'node:assert/strict';
import type { Decider } from '../../src/events/decider.ts';
import { isWarrenError } from '../../src/shared/errors.ts';
import { decodeEnvelope, ENVELOPE_SCHEMA, encodeEnvelope } from '../../src/store/codec.ts';

/** The events as a reader gets them back from the log: through the stored format, one stream. */
export function throughStoredFormat<E extends { type: string; data: unknown }>(
  stream: string,
  events: readonly E[],
): E[] {
  return events.map((e, i) => {
    const stored = decodeEnvelope(
      encodeEnvelope({
        stream,
        version: i + 1,
        position: i + 1,
        recordedAt: 0,
        schema: ENVELOPE_SCHEMA,
        type: e.type,
        data: e.data,
        meta: {},
      }),
    );
    return { type: stored.type, data: stored.data } as E;
  });
}

export function deciderSpec<C, E, S>(decider: Decider<C, E, S>) {
  const fold = (events: readonly E[]): S => events.reduce(decider.evolve, decider.initialState());
  const given = (events: readonly E[]) => ({
    when(command: C) {
      return {
        emits(expected: E[]) {
          assert.deepEqual(decider.decide(command, fold(events)), expected);
        },
        /** Refused with a `WarrenError` of this code. */
        refused(code: string) {
          assert.throws(
            () => decider.decide(command, fold(events)),
            (err: unknown) => isWarrenError(err) && err.code === code,
          );
        },
      };
    },
  });
  return { fold, given };
}
