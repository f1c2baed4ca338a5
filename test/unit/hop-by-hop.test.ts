import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { headerValue, isHopByHop, stripHopByHop } from '../../src/transport/hop-by-hop.ts';

const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
];

describe('stripHopByHop', () => {
  it('drops the fixed hop-by-hop set in any case and keeps the rest in order', () => {
    const raw = [
      'Host',
      'example.com',
      'Connection',
      'keep-alive',
      'X-A',
      '1',
      'KEEP-ALIVE',
      'timeout=5',
      'Proxy-Connection',
      'close',
      'TE',
      'trailers',
      'Trailer',
      'Expires',
      'Transfer-Encoding',
      'chunked',
      'upgrade',
      'websocket',
      'x-a',
      '2',
      'Content-Type',
      'text/plain',
    ];
    assert.deepEqual(stripHopByHop(raw), [
      'Host',
      'example.com',
      'X-A',
      '1',
      'x-a',
      '2',
      'Content-Type',
      'text/plain',
    ]);
  });

  it('drops every header named in any Connection header, with OWS and empty list items', () => {
    const raw = [
      'Connection',
      ' X-Foo ,\tx-bar,, ',
      'x-foo',
      'a',
      'X-Baz',
      'kept',
      'connection',
      'X-Baz2',
      'X-BAR',
      'b',
      'x-baz2',
      'c',
      'X-Foo-Not',
      'kept too',
    ];
    assert.deepEqual(stripHopByHop(raw), ['X-Baz', 'kept', 'X-Foo-Not', 'kept too']);
  });

  it('keeps names that merely resemble hop-by-hop ones', () => {
    const raw = ['Tea', '1', 'T', '2', 'Upgrade-Insecure-Requests', '1', 'Connectionx', '3', 'Trailers', '4'];
    assert.deepEqual(stripHopByHop(raw), raw);
  });

  it('returns a new array and leaves the input alone', () => {
    const raw = Object.freeze(['A', '1', 'Connection', 'a']);
    const out = stripHopByHop(raw);
    assert.deepEqual(out, []);
    assert.deepEqual(raw, ['A', '1', 'Connection', 'a']);
    assert.deepEqual(stripHopByHop([]), []);
  });

  it('property: no hop-by-hop or connection-listed name survives; everything else is kept as is', () => {
    const tokenChar = fc.constantFrom(
      ...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&*+.^`|~',
    );
    const token = fc.string({ unit: tokenChar, minLength: 1, maxLength: 12 });
    const randomCase = (s: string) =>
      fc
        .array(fc.boolean(), { minLength: s.length, maxLength: s.length })
        .map((flags) => [...s].map((ch, i) => (flags[i] ? ch.toUpperCase() : ch.toLowerCase())).join(''));
    const pool = fc.array(token, { minLength: 1, maxLength: 6 });

    const scenario = pool.chain((names) => {
      const anyName = fc.oneof(
        fc.constantFrom(...HOP_BY_HOP).chain(randomCase),
        fc.constantFrom(...names).chain(randomCase),
        token,
      );
      const ows = fc.constantFrom('', ' ', '\t', '  ');
      const connectionValue = fc
        .array(fc.tuple(ows, fc.oneof(fc.constantFrom(...names).chain(randomCase), token), ows), {
          maxLength: 4,
        })
        .map((items) => items.map(([a, t, b]) => a + t + b).join(','));
      const header = fc.oneof(
        fc.tuple(anyName, fc.string({ maxLength: 20 })),
        fc.tuple(fc.constantFrom('connection').chain(randomCase), connectionValue),
      );
      return fc.array(header, { maxLength: 30 });
    });

    fc.assert(
      fc.property(scenario, (pairs) => {
        const raw = pairs.flat();
        const out = stripHopByHop(raw);

        // Naive reference: lower-case everything, split with a regex.
        const listed = new Set<string>();
        for (const [name, value] of pairs) {
          if (name.toLowerCase() !== 'connection') continue;
          for (const item of value.split(',')) {
            const t = item.replace(/^[ \t]+|[ \t]+$/g, '').toLowerCase();
            if (t !== '') listed.add(t);
          }
        }
        const dropped = (name: string) =>
          HOP_BY_HOP.includes(name.toLowerCase()) || listed.has(name.toLowerCase());

        for (let i = 0; i < out.length; i += 2) {
          assert.ok(!dropped(out[i]!), `kept ${out[i]}`);
        }
        assert.deepEqual(out, pairs.filter(([name]) => !dropped(name)).flat());
      }),
      { numRuns: 500 },
    );
  });
});

describe('isHopByHop', () => {
  it('knows the fixed set in any case', () => {
    for (const name of HOP_BY_HOP) {
      assert.equal(isHopByHop(name), true);
      assert.equal(isHopByHop(name.toUpperCase()), true);
    }
    assert.equal(isHopByHop('content-length'), false);
    assert.equal(isHopByHop(''), false);
  });
});

describe('headerValue', () => {
  it('returns the first match, case-insensitively', () => {
    const raw = ['Host', 'a', 'X-Forwarded-For', '1.2.3.4', 'x-forwarded-for', '5.6.7.8'];
    assert.equal(headerValue(raw, 'x-forwarded-for'), '1.2.3.4');
    assert.equal(headerValue(raw, 'HOST'), 'a');
    assert.equal(headerValue(raw, 'missing'), undefined);
    assert.equal(headerValue([], 'host'), undefined);
  });
});
