/**
 * Comparing two directories' whole state, in order: a directory restored from a snapshot must equal
 * the fold of the log, down to the order of every map and set (later folds and exports depend on it).
 */
import assert from 'node:assert/strict';
import type { Directory } from '../../src/events/directory.ts';

/** Plain data with every container's order kept, so that `deepStrictEqual` compares order too. */
export function ordered(value: unknown): unknown {
  if (value instanceof Map) return { map: [...value].map(([k, v]) => [ordered(k), ordered(v)]) };
  if (value instanceof Set) return { set: [...value].map(ordered) };
  if (Array.isArray(value)) return value.map(ordered);
  if (value !== null && typeof value === 'object') {
    return { keys: Object.keys(value), values: Object.values(value).map(ordered) };
  }
  return value;
}

/** Same log position and the same state, order included. */
export function assertSameDirectory(actual: Directory, expected: Directory): void {
  assert.equal(actual.position, expected.position);
  assert.deepStrictEqual(ordered(actual.exportState()), ordered(expected.exportState()));
}
