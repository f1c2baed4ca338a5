import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { isWarrenError } from '../../src/shared/errors.ts';
import {
  decodeEnvelope,
  ENVELOPE_SCHEMA,
  encodeEnvelope,
  MAX_DATA_DEPTH,
  MAX_ENVELOPE_BYTES,
} from '../../src/store/codec.ts';
import type { StoredEvent } from '../../src/store/event-log.ts';

/**
 * The envelope whose bytes are frozen in test/fixtures/envelope-v1.hex. Never change either: a
 * failure here means stored logs would no longer read back. A new format gets a new schema, a new
 * fixture, and this one keeps being decoded.
 */
const GOLDEN: StoredEvent = {
  stream: 'tunnel-6f1c2b1e-8d4a-4c57-9a3e-2f0b7d9c1a55',
  version: 3,
  position: 42,
  recordedAt: 1_767_225_600_123,
  schema: 1,
  type: 'ConnectionRegistered',
  data: {
    tunnelId: '6f1c2b1e-8d4a-4c57-9a3e-2f0b7d9c1a55',
    connectionId: 'c0ffee00-0000-4000-8000-000000000001',
    connIndex: 0,
    pop: 'ams',
    clientVersion: '2026.1.0',
    clientOs: 'linux',
    clientArch: 'x64',
    originIp: '2001:db8::1',
    registeredAt: 1_767_225_600_000,
    quick: false,
    accountId: null,
    ratio: 0.25,
    negative: -129,
    big: 4_294_967_296,
    unicode: 'Zürich ☃ 🚇',
    tags: ['a', 1, true, null, { nested: [] }],
    empty: {},
  },
  meta: { correlationId: 'req-7', actor: 'token:admin' },
};

const FIXTURE = new URL('../fixtures/envelope-v1.hex', import.meta.url);

function fixtureBytes(): Uint8Array {
  return Uint8Array.from(Buffer.from(readFileSync(FIXTURE, 'utf8').replace(/\s+/g, ''), 'hex'));
}

function isCode(code: string) {
  return (err: unknown) => isWarrenError(err) && err.code === code;
}

function sample(data: unknown): StoredEvent {
  return { ...GOLDEN, data };
}

describe('envelope codec v1', () => {
  it('encodes the golden envelope to exactly the stored fixture bytes', () => {
    assert.equal(ENVELOPE_SCHEMA, 1);
    assert.equal(
      Buffer.from(encodeEnvelope(GOLDEN)).toString('hex'),
      Buffer.from(fixtureBytes()).toString('hex'),
    );
  });

  it('decodes the stored fixture bytes to the golden envelope', () => {
    assert.deepEqual(decodeEnvelope(fixtureBytes()), GOLDEN);
  });

  it('round-trips JSON-like data', () => {
    const key = fc.string({ unit: 'grapheme', maxLength: 10 }).filter((k) => k !== '__proto__');
    const leaf = fc.oneof(
      fc.constant(null),
      fc.boolean(),
      fc.integer(),
      fc.maxSafeInteger(),
      fc.double({ noNaN: true, noDefaultInfinity: true }).filter((d) => !Object.is(d, -0)),
      fc.string({ unit: 'grapheme' }),
    );
    const { value } = fc.letrec((tie) => ({
      value: fc.oneof(
        { depthSize: 'small' },
        leaf,
        fc.array(tie('value'), { maxLength: 5 }),
        fc.dictionary(key, tie('value'), { maxKeys: 5, noNullPrototype: true }),
      ),
    }));
    const meta = fc.record(
      { correlationId: fc.string({ unit: 'grapheme' }), actor: fc.string({ unit: 'grapheme' }) },
      { requiredKeys: [], noNullPrototype: true },
    );
    const event = fc.record(
      {
        stream: fc.stringMatching(/^[a-z0-9][a-z0-9-]{0,30}$/),
        version: fc.integer({ min: 1, max: 9_999_999_999 }),
        position: fc.maxSafeInteger().filter((n) => n >= 1),
        recordedAt: fc.integer({ min: 0, max: 2 ** 45 }),
        schema: fc.constant(ENVELOPE_SCHEMA),
        type: fc.string({ unit: 'grapheme', minLength: 1, maxLength: 30 }),
        data: value,
        meta,
      },
      { noNullPrototype: true },
    );
    fc.assert(
      fc.property(event, (e) => {
        assert.deepEqual(decodeEnvelope(encodeEnvelope(e)), e);
      }),
      { numRuns: 300 },
    );
  });

  describe('documented traps', () => {
    it('writes -0 as 0', () => {
      const decoded = decodeEnvelope(encodeEnvelope(sample({ z: -0, list: [-0] })));
      assert.ok(Object.is((decoded.data as { z: number }).z, 0));
      assert.ok(Object.is((decoded.data as { list: number[] }).list[0], 0));
    });

    it('refuses a "__proto__" key, at any depth', () => {
      assert.throws(
        () => encodeEnvelope(sample(JSON.parse('{"__proto__": {"x": 1}}'))),
        isCode('bad_request'),
      );
      assert.throws(
        () => encodeEnvelope(sample(JSON.parse('{"a": [{"__proto__": 1}]}'))),
        isCode('bad_request'),
      );
    });

    it('refuses strings with lone surrogates, in values, keys and meta', () => {
      assert.throws(() => encodeEnvelope(sample({ s: 'a\uD800b' })), isCode('bad_request'));
      assert.throws(() => encodeEnvelope(sample({ '\uDC00': 1 })), isCode('bad_request'));
      assert.throws(() => encodeEnvelope({ ...GOLDEN, meta: { actor: '\uD800' } }), isCode('bad_request'));
      // A proper surrogate pair is fine.
      assert.deepEqual(decodeEnvelope(encodeEnvelope(sample({ s: '🚇' }))).data, { s: '🚇' });
    });

    it('refuses values JSON cannot hold', () => {
      const refused: unknown[] = [
        Number.NaN,
        Number.POSITIVE_INFINITY,
        10n,
        new Date(0),
        new Map(),
        new Set(),
        new Uint8Array(1),
        () => 1,
        Symbol('s'),
        undefined,
        [undefined],
        new (class Thing {})(),
      ];
      for (const data of refused) {
        assert.throws(() => encodeEnvelope(sample({ wrapped: [data] })), isCode('bad_request'), String(data));
      }
      assert.throws(() => encodeEnvelope(sample(undefined)), isCode('bad_request'));
    });

    it('refuses sparse arrays, cycles, deep nesting and oversized events', () => {
      // biome-ignore lint/suspicious/noSparseArray: the hole is the point
      assert.throws(() => encodeEnvelope(sample([1, , 3])), isCode('bad_request'));
      const cyclic: Record<string, unknown> = {};
      cyclic.self = cyclic;
      assert.throws(() => encodeEnvelope(sample(cyclic)), isCode('bad_request'));
      let deep: unknown = 1;
      for (let i = 0; i <= MAX_DATA_DEPTH; i++) deep = [deep]; // one level too many
      assert.throws(() => encodeEnvelope(sample(deep)), isCode('bad_request'));
      assert.doesNotThrow(() => encodeEnvelope(sample((deep as unknown[])[0])));
      assert.throws(() => encodeEnvelope(sample('x'.repeat(MAX_ENVELOPE_BYTES))), isCode('bad_request'));
    });

    it('drops properties whose value is undefined, as JSON does', () => {
      assert.deepEqual(decodeEnvelope(encodeEnvelope(sample({ a: 1, b: undefined }))).data, { a: 1 });
      assert.deepEqual(decodeEnvelope(encodeEnvelope({ ...GOLDEN, meta: { actor: undefined } })).meta, {});
    });

    it('accepts objects with a null prototype and decodes them as plain objects', () => {
      const data = Object.assign(Object.create(null), { a: 1 });
      assert.deepEqual(decodeEnvelope(encodeEnvelope(sample(data))).data, { a: 1 });
    });
  });

  describe('decoding', () => {
    it('returns deep-frozen events', () => {
      const e = decodeEnvelope(fixtureBytes());
      assert.ok(Object.isFrozen(e));
      assert.ok(Object.isFrozen(e.meta));
      assert.ok(Object.isFrozen((e.data as { tags: unknown[] }).tags));
    });

    it('reports truncated, padded and foreign bytes as store_corrupt', () => {
      const bytes = fixtureBytes();
      const cases: Uint8Array[] = [
        new Uint8Array(),
        bytes.subarray(0, bytes.length - 1),
        Uint8Array.from([...bytes, 0x00]),
        Uint8Array.from([0xc1]),
        Uint8Array.from([0x01]),
        Uint8Array.of(0x91, 0x02), // [2]: an unknown schema
        Uint8Array.of(0x92, 0x01, 0xa1, 0x73), // [1, 's']: too few fields
        Uint8Array.from(Buffer.from('98010101010101c0c0', 'hex')), // stream is not a string
      ];
      for (const c of cases) {
        assert.throws(() => decodeEnvelope(c), isCode('store_corrupt'), Buffer.from(c).toString('hex'));
      }
    });

    it('never throws anything but store_corrupt on arbitrary bytes', () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
          try {
            decodeEnvelope(bytes);
          } catch (err) {
            assert.ok(isWarrenError(err, 'store_corrupt'), String(err));
          }
        }),
        { numRuns: 500 },
      );
    });

    it('reports garbage inside a well-formed envelope as store_corrupt', () => {
      const ok = encodeEnvelope(GOLDEN);
      // Bytes: array header, schema, str8 header (2 bytes) and the stream, then the version (3, a
      // positive fixint) which we turn into -1 (negative fixint 0xff).
      const versionAt = 1 + 1 + 2 + GOLDEN.stream.length;
      assert.equal(ok[versionAt], 0x03);
      const bad = Uint8Array.from(ok);
      bad[versionAt] = 0xff;
      assert.throws(() => decodeEnvelope(bad), isCode('store_corrupt'));
    });
  });

  it('refuses to write an envelope schema other than the current one', () => {
    assert.throws(() => encodeEnvelope({ ...GOLDEN, schema: 2 }), isCode('bad_request'));
  });
});
