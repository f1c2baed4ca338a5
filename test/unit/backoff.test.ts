import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BackoffPolicy } from '../../src/actors/backoff.ts';
import { backoffDelayMs, defaultBackoff } from '../../src/actors/backoff.ts';

const policy: BackoffPolicy = { baseMs: 1000, capMs: 32_000, healthyAfterMs: 10_000 };
const always = (value: number) => () => value;

describe('backoffDelayMs', () => {
  it('defaults to base 1 s, cap 32 s, healthy after 10 s', () => {
    assert.deepEqual({ ...defaultBackoff }, { baseMs: 1000, capMs: 32_000, healthyAfterMs: 10_000 });
    assert.ok(Object.isFrozen(defaultBackoff));
  });

  it('doubles the ceiling per consecutive failure up to the cap', () => {
    const ceilings = [0, 1, 2, 3, 4, 5, 6, 7].map((attempt) => backoffDelayMs(attempt, policy, always(1)));
    assert.deepEqual(ceilings, [1000, 2000, 4000, 8000, 16_000, 32_000, 32_000, 32_000]);
  });

  it('is full jitter: the draw scales the whole ceiling', () => {
    assert.equal(backoffDelayMs(3, policy, always(0)), 0);
    assert.equal(backoffDelayMs(3, policy, always(0.5)), 4000);
    assert.equal(backoffDelayMs(3, policy, always(0.25)), 2000);
    assert.equal(backoffDelayMs(3, policy, always(0.9999)), 7999);
  });

  it('returns whole milliseconds', () => {
    assert.equal(backoffDelayMs(0, { ...policy, baseMs: 3 }, always(0.5)), 1);
  });

  it('survives huge attempt numbers without overflowing', () => {
    for (const attempt of [64, 1023, 1024, 5000, Number.MAX_SAFE_INTEGER, Number.POSITIVE_INFINITY]) {
      assert.equal(backoffDelayMs(attempt, policy, always(0.5)), 16_000, `attempt ${attempt}`);
    }
    assert.equal(backoffDelayMs(1e9, { ...policy, baseMs: 0 }, always(0.5)), 0);
    assert.equal(backoffDelayMs(1e9, { ...policy, baseMs: Number.MAX_VALUE }, always(0.5)), 16_000);
  });

  it('treats negative and NaN attempts as the first retry', () => {
    assert.equal(backoffDelayMs(-3, policy, always(1)), 1000);
    assert.equal(backoffDelayMs(Number.NaN, policy, always(1)), 1000);
  });

  it('clamps draws outside [0, 1]', () => {
    assert.equal(backoffDelayMs(2, policy, always(-1)), 0);
    assert.equal(backoffDelayMs(2, policy, always(7)), 4000);
    assert.equal(backoffDelayMs(2, policy, always(Number.NaN)), 0);
  });

  it('never exceeds the ceiling and is never negative, whatever the draw', () => {
    let seed = 42;
    const random = () => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    for (let attempt = 0; attempt < 40; attempt++) {
      const ceiling = Math.min(policy.capMs, policy.baseMs * 2 ** attempt);
      for (let i = 0; i < 50; i++) {
        const delay = backoffDelayMs(attempt, policy, random);
        assert.ok(delay >= 0 && delay <= ceiling, `attempt ${attempt}: ${delay} outside [0, ${ceiling}]`);
      }
    }
  });

  it('a cap below the base caps the first retry too', () => {
    assert.equal(backoffDelayMs(0, { ...policy, baseMs: 5000, capMs: 2000 }, always(1)), 2000);
  });
});
