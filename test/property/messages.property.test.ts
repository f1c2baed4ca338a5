/**
 * What travels inside HEADERS and CONTROL frames: request/response heads and every control message
 * round-trip for arbitrary values; malformed payloads only ever raise WarrenError('protocol_error');
 * well-formed messages of unknown types decode to undefined.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { isWarrenError } from '../../src/shared/errors.ts';
import {
  type ControlMessage,
  decodeControl,
  decodeRequestHead,
  decodeResponseHead,
  encodeMessage,
  type RequestHead,
  type ResponseHead,
} from '../../src/transport/messages.ts';

// A second packer with the same wire options, to build payloads encodeMessage's types would not allow.
const packr = new Packr({
  useRecords: false,
  moreTypes: false,
  structuredClone: false,
  mapsAsObjects: true,
  variableMapSize: true,
  bundleStrings: false,
  int64AsType: 'number',
});
const pack = (v: unknown): Buffer => packr.pack(v);

/** Plain-prototype records, so deepEqual compares them with what the decoders return. */
const record: typeof fc.record = ((model: never, constraints?: object) =>
  fc.record(model, { ...constraints, noNullPrototype: true } as never)) as never;

const isProtocolError = (e: unknown) => isWarrenError(e, 'protocol_error');

// ------------------------------------------------------------------ arbitraries

/** Node's rawHeaders are latin1 strings: every char 0x00–0xFF. */
const latin1 = (maxLength = 24) => fc.string({ unit: 'binary-ascii', maxLength });
/** Any Unicode code point (no lone surrogates: they are not representable in UTF-8). */
const unicode = (maxLength = 24) => fc.string({ unit: 'binary', maxLength });
const anyText = (maxLength = 24) => fc.oneof(latin1(maxLength), unicode(maxLength), fc.string({ maxLength }));

const commonNames = [
  'Host',
  'Set-Cookie',
  'Cookie',
  'Content-Type',
  'Content-Length',
  'X-Forwarded-For',
  'X-Forwarded-Proto',
  'Warren-Connecting-IP',
  'Accept',
  'Upgrade',
  'Connection',
];
const headerName = fc.oneof(
  fc.constantFrom(...commonNames).chain((n) => fc.mixedCase(fc.constant(n))),
  latin1(16),
);
const headerValue = fc.oneof(fc.constant(''), latin1(), unicode());

/**
 * A flat [name, value, …] list: names in any case, duplicates (set-cookie several times, the same
 * name in different cases) kept where they fall, empty values allowed.
 */
const headerList: fc.Arbitrary<string[]> = fc
  .array(
    fc.oneof(
      fc.tuple(headerName, headerValue).map(([n, v]) => [[n, v]]),
      fc
        .tuple(fc.mixedCase(fc.constant('set-cookie')), fc.array(headerValue, { minLength: 2, maxLength: 4 }))
        .map(([n, vs]) => vs.map((v) => [n, v])),
      fc.tuple(fc.constantFrom(...commonNames), headerValue, headerValue).map(([n, v1, v2]) => [
        [n, v1],
        [n.toLowerCase(), v2],
      ]),
    ),
    { maxLength: 8 },
  )
  .map((groups) => groups.flat(2) as string[]);

const requestHead: fc.Arbitrary<RequestHead> = record({
  kind: fc.constantFrom('http', 'websocket', 'upgrade'),
  method: fc.oneof(
    fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'CONNECT', 'PATCH'),
    latin1(12),
  ),
  target: fc.oneof(fc.webPath(), latin1(64), unicode(32), fc.constant('*'), fc.constant('')),
  headers: headerList,
});

const responseHead: fc.Arbitrary<ResponseHead> = record(
  {
    status: fc.integer({ min: 100, max: 999 }),
    statusText: anyText(),
    headers: headerList,
    error: record({
      code: fc.oneof(
        fc.constantFrom('origin_unreachable', 'origin_timeout', 'origin_tls', 'origin_reset'),
        anyText(),
      ),
      message: anyText(64),
    }),
    body: fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
  },
  { requiredKeys: ['status', 'headers'] },
);

const nat = fc.oneof(
  fc.nat(),
  fc.constantFrom(0, 1, 2 ** 31 - 1, 2 ** 32 - 1, 2 ** 32, Number.MAX_SAFE_INTEGER),
);
const bytes = (maxLength: number) => fc.uint8Array({ maxLength }).map((b) => Buffer.from(b));
const strings = fc.array(anyText(16), { maxLength: 5 });

const controlMessage: fc.Arbitrary<ControlMessage> = fc.oneof(
  record({
    type: fc.constant('hello' as const),
    protocolVersion: nat,
    nonce: fc.oneof(
      bytes(64),
      fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b)),
    ),
    pop: anyText(8),
    edgeVersion: anyText(),
    features: strings,
  }),
  record({
    type: fc.constant('register' as const),
    id: nat,
    tunnelId: fc.oneof(fc.uuid(), anyText(40)),
    connIndex: nat,
    proof: fc.oneof(
      bytes(64),
      fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b)),
    ),
    client: record({
      id: fc.oneof(fc.uuid(), anyText()),
      version: anyText(),
      os: anyText(),
      arch: anyText(),
      features: strings,
    }),
    originLocalIp: fc.oneof(fc.ipV4(), fc.ipV6(), anyText()),
    replaceExisting: fc.boolean(),
    previousAttempts: nat,
  }),
  record({
    type: fc.constant('registered' as const),
    id: nat,
    connectionId: fc.oneof(fc.uuid(), anyText()),
    pop: anyText(8),
    hostname: fc.oneof(fc.domain(), anyText()),
  }),
  record(
    {
      type: fc.constant('error' as const),
      id: nat,
      code: fc.oneof(
        fc.constantFrom(
          'auth_failed',
          'tunnel_deleted',
          'duplicate_connection',
          'account_tunnel_limit',
          'bad_request',
          'edge_draining',
        ),
        anyText(),
      ),
      message: anyText(64),
      retryable: fc.boolean(),
      retryAfterMs: nat,
    },
    { requiredKeys: ['type', 'id', 'code', 'message', 'retryable'] },
  ),
  record({ type: fc.constant('unregister' as const), gracePeriodMs: nat }),
  record({ type: fc.constant('drain' as const), reason: anyText(), deadlineMs: nat }),
);

/** Anything msgpack can carry, as a value inside a map (keys that msgpackr mangles left out). */
const anyValue = fc.anything({
  maxDepth: 2,
  maxKeys: 4,
  key: fc.string({ maxLength: 8 }).filter((k) => k !== '__proto__'),
  withBoxedValues: false,
  withMap: false,
  withSet: false,
  withObjectString: false,
  withNullPrototype: false,
  withBigInt: false,
  withDate: false,
  withTypedArray: false,
  withSparseArray: false,
});

// Wrong values per field kind: each is rejected by the decoder's check for that kind.
const notString = fc.oneof(
  fc.integer(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.string(), { maxLength: 2 }),
);
const notNat = fc.oneof(
  fc.string({ maxLength: 4 }),
  fc.boolean(),
  fc.constant(null),
  fc.integer({ min: -(2 ** 40), max: -1 }),
  fc.double({ noNaN: true, noDefaultInfinity: true }).filter((d) => !Number.isInteger(d)),
  fc.constant(Number.POSITIVE_INFINITY),
);
const notBytes = fc.oneof(
  fc.string({ maxLength: 4 }),
  fc.integer(),
  fc.constant(null),
  fc.array(fc.nat(255)),
);
const notBoolean = fc.oneof(fc.integer({ min: 0, max: 1 }), fc.string({ maxLength: 4 }), fc.constant(null));
const notArray = fc.oneof(fc.string({ maxLength: 4 }), fc.integer(), fc.constant(null), fc.boolean());
const notObject = fc.oneof(fc.string({ maxLength: 4 }), fc.integer(), fc.constant(null), fc.boolean());
const missing = fc.constant(undefined);

type Wrong = Record<string, fc.Arbitrary<unknown>>;
/** For each known control type, the required fields and values that must be rejected for them. */
const wrongFields: Record<ControlMessage['type'], Wrong> = {
  hello: {
    protocolVersion: notNat,
    nonce: notBytes,
    pop: notString,
    edgeVersion: notString,
    features: notArray,
  },
  register: {
    id: notNat,
    tunnelId: notString,
    connIndex: notNat,
    proof: notBytes,
    client: notObject,
    originLocalIp: notString,
    replaceExisting: notBoolean,
    previousAttempts: notNat,
  },
  registered: { id: notNat, connectionId: notString, pop: notString, hostname: notString },
  error: { id: notNat, code: notString, message: notString, retryable: notBoolean },
  unregister: { gracePeriodMs: notNat },
  drain: { reason: notString, deadlineMs: notNat },
};

/** A valid message with one required field replaced by a wrong value (or removed). */
const malformedControl = controlMessage.chain((msg) => {
  const fields = Object.entries(wrongFields[msg.type]);
  return fc.constantFrom(...fields).chain(([field, wrong]) =>
    fc.oneof(wrong, missing).map((value) => {
      const copy: Record<string, unknown> = { ...msg };
      if (value === undefined) delete copy[field];
      else copy[field] = value;
      return { copy, field };
    }),
  );
});

function expectProtocolError(fn: () => unknown): void {
  try {
    fn();
  } catch (e) {
    assert.ok(isProtocolError(e), `expected WarrenError(protocol_error), got ${String(e)}`);
    return;
  }
  assert.fail('expected a protocol_error');
}

/** Calls `fn`; anything it throws must be WarrenError('protocol_error'). */
function onlyProtocolErrors(fn: () => unknown): void {
  try {
    fn();
  } catch (e) {
    assert.ok(isProtocolError(e), `expected WarrenError(protocol_error), got ${String(e)}`);
  }
}

// ------------------------------------------------------------------ properties

describe('request and response heads (property)', () => {
  it('a request head round-trips: case, order, duplicates, empty and latin1/unicode values kept', () => {
    fc.assert(
      fc.property(requestHead, (head) => {
        assert.deepEqual(decodeRequestHead(encodeMessage(head)), head);
      }),
      { numRuns: 200 },
    );
  });

  it('a response head round-trips, with and without statusText and error', () => {
    fc.assert(
      fc.property(responseHead, (head) => {
        assert.deepEqual(decodeResponseHead(encodeMessage(head)), head);
      }),
      { numRuns: 200 },
    );
  });

  it('latin1 header bytes survive exactly as Node would hand them over (rawHeaders)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (raw) => {
        const value = Buffer.from(raw).toString('latin1');
        const head: RequestHead = { kind: 'http', method: 'GET', target: '/', headers: ['X-Raw', value] };
        const back = decodeRequestHead(encodeMessage(head)).headers[1]!;
        assert.deepEqual(Buffer.from(back, 'latin1'), Buffer.from(raw));
      }),
      { numRuns: 100 },
    );
  });

  it('unknown extra fields are dropped, not rejected', () => {
    fc.assert(
      fc.property(
        requestHead,
        responseHead,
        fc.dictionary(
          fc
            .string({ maxLength: 8 })
            .filter(
              (k) =>
                ![
                  'kind',
                  'method',
                  'target',
                  'headers',
                  'status',
                  'statusText',
                  'error',
                  '__proto__',
                ].includes(k),
            ),
          anyValue,
          { maxKeys: 3 },
        ),
        (req, res, extra) => {
          assert.deepEqual(decodeRequestHead(pack({ ...extra, ...req })), req);
          assert.deepEqual(decodeResponseHead(pack({ ...extra, ...res })), res);
        },
      ),
      { numRuns: 100 },
    );
  });

  it('heads with a wrong shape are rejected with protocol_error', () => {
    const badRequest = requestHead.chain((h) =>
      fc.oneof(
        fc.constant({ ...h, kind: 'tcp' }),
        notString.map((kind) => ({ ...h, kind })),
        notString.map((method) => ({ ...h, method })),
        notString.map((target) => ({ ...h, target })),
        notArray.map((headers) => ({ ...h, headers })),
        fc.constant({ ...h, headers: [...h.headers, 'dangling-name'] }),
        fc.tuple(notString, fc.nat()).map(([bad, at]) => {
          const headers: unknown[] = [...h.headers, 'x', 'y'];
          headers[at % headers.length] = bad;
          return { ...h, headers };
        }),
        fc.constantFrom('kind', 'method', 'target', 'headers').map((k) => {
          const copy: Record<string, unknown> = { ...h };
          delete copy[k];
          return copy;
        }),
      ),
    );
    const badResponse = responseHead.chain((h) =>
      fc.oneof(
        fc
          .oneof(
            fc.integer({ max: 99 }),
            fc.integer({ min: 1000 }),
            fc.double({ min: 100.01, max: 998.99 }),
            notNat,
          )
          .map((status) => ({ ...h, status })),
        notArray.map((headers) => ({ ...h, headers })),
        fc.constant({ ...h, headers: [...h.headers, 'dangling-name'] }),
        notObject.map((error) => ({ ...h, error })),
        fc.oneof(notBytes, fc.constant(Buffer.alloc(16 * 1024 + 1))).map((body) => ({ ...h, body })),
        fc.tuple(notString, fc.constantFrom('code', 'message')).map(([bad, k]) => ({
          ...h,
          error: { code: 'origin_timeout', message: 'm', [k]: bad },
        })),
      ),
    );
    fc.assert(
      fc.property(badRequest, badResponse, (req, res) => {
        expectProtocolError(() => decodeRequestHead(pack(req)));
        expectProtocolError(() => decodeResponseHead(pack(res)));
      }),
      { numRuns: 200 },
    );
  });
});

describe('control messages (property)', () => {
  it('every control message round-trips', () => {
    fc.assert(
      fc.property(controlMessage, (msg) => {
        assert.deepEqual(decodeControl(encodeMessage(msg)), msg);
      }),
      { numRuns: 300 },
    );
  });

  it('optional and lenient fields: retryAfterMs, client.id, client.features and feature lists', () => {
    fc.assert(
      fc.property(controlMessage, anyValue, (msg, junk) => {
        const copy: Record<string, unknown> = structuredClone({ ...msg });
        if (msg.type === 'error') {
          copy.retryAfterMs = junk;
          const d = decodeControl(pack(copy));
          assert.ok(d?.type === 'error');
          const ok = typeof junk === 'number' && Number.isInteger(junk) && junk >= 0;
          assert.equal(d.retryAfterMs, ok ? junk : undefined);
        } else if (msg.type === 'register') {
          // client.features and client.id are lenient: junk becomes [] (or the strings in it) and ''.
          const client = copy.client as Record<string, unknown>;
          client.features = junk;
          client.id = junk;
          const d = decodeControl(pack(copy));
          assert.ok(d?.type === 'register');
          const expected = Array.isArray(junk) ? junk.filter((s) => typeof s === 'string') : [];
          assert.deepEqual(d.client.features, expected);
          assert.equal(d.client.id, typeof junk === 'string' ? junk : '');
        } else if (msg.type === 'hello') {
          copy.features = [...msg.features, junk];
          const d = decodeControl(pack(copy));
          assert.ok(d?.type === 'hello');
          assert.deepEqual(d.features, typeof junk === 'string' ? [...msg.features, junk] : msg.features);
        } else {
          assert.deepEqual(decodeControl(pack(copy)), msg);
        }
      }),
      { numRuns: 200 },
    );
  });

  it('a known type with a missing or wrongly typed field is rejected with protocol_error', () => {
    fc.assert(
      fc.property(malformedControl, ({ copy }) => {
        expectProtocolError(() => decodeControl(pack(copy)));
      }),
      { numRuns: 300 },
    );
  });

  it('a well-formed message of an unknown type decodes to undefined', () => {
    const known = new Set(['hello', 'register', 'registered', 'error', 'unregister', 'drain']);
    fc.assert(
      fc.property(
        anyText(16).filter((t) => !known.has(t)),
        fc.dictionary(
          fc.string({ maxLength: 8 }).filter((k) => k !== 'type' && k !== '__proto__'),
          anyValue,
          { maxKeys: 4 },
        ),
        (type, rest) => {
          assert.equal(decodeControl(pack({ ...rest, type })), undefined);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('a map without a string type is rejected with protocol_error, whatever the type holds', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          anyValue.filter((v) => typeof v !== 'string'),
          // Values whose String() would throw: a map with a non-callable toString / valueOf.
          record({ toString: anyValue, valueOf: anyValue }, { requiredKeys: [] }),
        ),
        (type) => {
          const payload = type === undefined ? pack({ id: 1 }) : pack({ type });
          expectProtocolError(() => decodeControl(payload));
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('malformed payloads (property)', () => {
  const decoders: Array<[string, (p: Buffer) => unknown]> = [
    ['request head', decodeRequestHead],
    ['response head', decodeResponseHead],
    ['control', decodeControl],
  ];

  it('arbitrary bytes only ever raise protocol_error', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (raw) => {
        const p = Buffer.from(raw);
        for (const [, decode] of decoders) onlyProtocolErrors(() => decode(p));
      }),
      { numRuns: 400 },
    );
  });

  it('valid messages with trailing, truncated or flipped bytes only ever raise protocol_error', () => {
    const valid = fc.oneof(
      requestHead.map((h) => encodeMessage(h)),
      responseHead.map((h) => encodeMessage(h)),
      controlMessage.map((m) => encodeMessage(m)),
    );
    fc.assert(
      fc.property(
        valid,
        fc.nat(),
        fc.integer({ min: 1, max: 255 }),
        fc.uint8Array({ maxLength: 8 }),
        (p, at, xor, tail) => {
          const i = at % p.length;
          const flipped = Buffer.from(p);
          flipped[i] = flipped[i]! ^ xor;
          const variants = [flipped, p.subarray(0, i), Buffer.concat([p, Buffer.from(tail)])];
          for (const v of variants) for (const [, decode] of decoders) onlyProtocolErrors(() => decode(v));
        },
      ),
      { numRuns: 200 },
    );
  });

  it('any msgpack value of the wrong shape only ever raises protocol_error', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          anyValue,
          fc.dictionary(
            fc.constantFrom(
              'type',
              'kind',
              'method',
              'target',
              'headers',
              'status',
              'error',
              'id',
              'client',
              'nonce',
            ),
            anyValue,
          ),
          fc.constantFrom('hello', 'register', 'registered', 'error', 'unregister', 'drain').chain((type) =>
            fc
              .dictionary(
                fc.string({ maxLength: 8 }).filter((k) => k !== '__proto__'),
                anyValue,
              )
              .map((d) => ({ ...d, type })),
          ),
        ),
        (value) => {
          const p = pack(value);
          for (const [, decode] of decoders) onlyProtocolErrors(() => decode(p));
        },
      ),
      { numRuns: 300 },
    );
  });
});
