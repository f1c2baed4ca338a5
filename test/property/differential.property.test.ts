/**
 * Differential: an arbitrary request sent through a real tunnel (edge + agent in this process) gets
 * the same answer as the same request sent straight to the origin. The origin's /reflect route echoes
 * the request's `x-*` headers (in order, with case and duplicates) and its body, with a status from
 * `?status=`; other paths get the origin's 404 or 400.
 *
 * What is allowed to differ, and why (everything else must be identical, byte for byte and in order):
 *  - `Connection` and `Keep-Alive`: hop-by-hop (RFC 9110 §7.6.1). Each hop's server writes its own;
 *    the edge strips the origin's and node adds the edge's for the visitor connection.
 *  - `Date`: end to end, and passed through unchanged (the edge does not add its own), but the two
 *    requests are answered at different moments, so the values may differ by a second. Each answer
 *    must carry exactly one.
 *  - `X-Forwarded-For: 127.0.0.1` and `X-Forwarded-Proto: http`: the edge adds them to the request and
 *    /reflect, which echoes every `x-*` request header, sends them back. Through the tunnel they must
 *    appear exactly there: after the visitor's own `x-*` headers, before `Content-Type`. The generated
 *    headers never use these two names. (`Warren-Connecting-IP` is added too but not reflected.)
 *  - `Transfer-Encoding` / `Content-Length`: no difference allowed. Every answer here has a
 *    Content-Length from the origin (or, for 204 and 304, no body and neither header), and both hops
 *    keep it, so neither side may be chunked and the lengths must agree.
 * Request framing varies on purpose (Content-Length, chunked, none), on every method: the origin must
 * see the same body however it was framed by the visitor.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { type Response, request } from '../support/http.ts';
import { deterministicBytes } from '../support/origin.ts';
import { type Stack, startStack } from '../support/stack.ts';

const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;
const UNRESERVED = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~'.split('');
const SUB_DELIMS = "!$'()*+,;:@".split('');
const TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~".split('');
const STATUSES = ['200', '201', '202', '204', '205', '206', '301', '302', '304', '400', '401', '404', '409'];
const MORE_STATUSES = ['418', '422', '429', '500', '502', '503', '599', 'abc', '99', '600', ''];

// ------------------------------------------------------------------ arbitraries

const hex = (b: number, upper: boolean) => {
  const h = b.toString(16).padStart(2, '0');
  return upper ? h.toUpperCase() : h;
};
const pctEncoded = fc.tuple(fc.integer({ min: 0, max: 255 }), fc.boolean()).map(([b, u]) => `%${hex(b, u)}`);
const pathChar = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...UNRESERVED) },
  { weight: 2, arbitrary: pctEncoded },
  { weight: 1, arbitrary: fc.constantFrom(...SUB_DELIMS, '=', '&') },
);
const segment = fc.array(pathChar, { minLength: 1, maxLength: 10 }).map((cs) => cs.join(''));
/** Query keys and values: like path characters, plus `/` and `?`, without the separators `&` and `=`. */
const queryText = fc
  .array(
    fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom(...UNRESERVED) },
      { weight: 2, arbitrary: pctEncoded },
      { weight: 1, arbitrary: fc.constantFrom(...SUB_DELIMS, '/', '?') },
    ),
    { maxLength: 10 },
  )
  .map((cs) => cs.join(''));
const queryPair = fc.oneof(
  { weight: 4, arbitrary: fc.tuple(queryText, queryText).map(([k, v]) => `${k}=${v}`) },
  { weight: 1, arbitrary: queryText },
  {
    weight: 3,
    arbitrary: fc
      .oneof({ weight: 4, arbitrary: fc.constantFrom(...STATUSES) }, fc.constantFrom(...MORE_STATUSES))
      .map((s) => `status=${s}`),
  },
);
const query = fc.option(
  fc.array(queryPair, { maxLength: 4 }).map((pairs) => `?${pairs.join('&')}`),
  { nil: '', freq: 3 },
);
const path = fc
  .tuple(
    fc.oneof(
      { weight: 5, arbitrary: fc.constant('/reflect') },
      {
        weight: 1,
        arbitrary: fc.array(segment, { minLength: 1, maxLength: 3 }).map((s) => `/reflect/${s.join('/')}`),
      },
      {
        weight: 1,
        arbitrary: fc.array(segment, { minLength: 1, maxLength: 3 }).map((s) => `/${s.join('/')}`),
      },
    ),
    query,
  )
  .map(([p, q]) => p + q);

/** `x-` names from a small pool (so duplicates are common) or random tokens, in random case. */
const headerName = fc
  .oneof(
    {
      weight: 3,
      arbitrary: fc.constantFrom('x-dup', 'x-trace-id', 'x-Mixed-Case', 'x-a', 'x-long-header-name'),
    },
    {
      weight: 2,
      arbitrary: fc
        .array(fc.constantFrom(...TOKEN_CHARS), { minLength: 1, maxLength: 12 })
        .map((cs) => `x-${cs.join('')}`),
    },
  )
  .chain((n) => fc.mixedCase(fc.constant(n)))
  .filter((n) => !['x-forwarded-for', 'x-forwarded-proto'].includes(n.toLowerCase()));
/** Visible ASCII, space, tab and latin1 0x80–0xFF; no other control characters. */
const headerValueChar = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 0x20, max: 0x7e }) },
  { weight: 2, arbitrary: fc.integer({ min: 0x80, max: 0xff }) },
  { weight: 1, arbitrary: fc.constant(0x09) },
);
const headerValue = fc
  .array(headerValueChar, { maxLength: 40 })
  .map((codes) => String.fromCharCode(...codes));
const headers = fc.array(fc.tuple(headerName, headerValue), { maxLength: 12 });

const body = fc.oneof(
  { weight: 1, arbitrary: fc.constant(Buffer.alloc(0)) },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)) },
  {
    weight: 2,
    arbitrary: fc
      .record({ length: fc.integer({ min: 0, max: 64 * 1024 }), seed: fc.integer({ min: 1, max: 1 << 30 }) })
      .map(({ length, seed }) => Buffer.concat([...deterministicBytes(length, seed)], length)),
  },
);
/** How the visitor frames the body: Content-Length, chunked in the given pieces, or (empty bodies only) neither. */
const framing = fc.oneof(
  fc.constant({ kind: 'length' as const }),
  fc
    .array(fc.integer({ min: 1, max: 20_000 }), { maxLength: 6 })
    .map((cuts) => ({ kind: 'chunked' as const, cuts })),
  fc.constant({ kind: 'none' as const }),
);

const requestArb = fc.record({
  method: fc.constantFrom(...METHODS),
  path,
  headers,
  contentType: fc.option(
    fc.constantFrom('text/plain', 'application/json; charset=utf-8', 'Application/X-Custom'),
    {
      nil: undefined,
    },
  ),
  body,
  framing,
});
type GeneratedRequest = typeof requestArb extends fc.Arbitrary<infer T> ? T : never;

// ------------------------------------------------------------------ helpers

function chunksOf(buf: Buffer, cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (const cut of cuts) {
    if (at >= buf.length) break;
    out.push(buf.subarray(at, at + cut));
    at += cut;
  }
  if (at < buf.length || out.length === 0) out.push(buf.subarray(at));
  return out;
}

function rawHeadersOf(r: GeneratedRequest): string[] {
  const raw: string[] = [];
  for (const [name, value] of r.headers) raw.push(name, value);
  if (r.contentType !== undefined) raw.push('Content-Type', r.contentType);
  return raw;
}

function send(
  port: number,
  host: string | undefined,
  agent: http.Agent,
  r: GeneratedRequest,
): Promise<Response> {
  const framed =
    r.framing.kind === 'chunked'
      ? { body: chunksOf(r.body, r.framing.cuts) }
      : r.framing.kind === 'length' || r.body.length > 0
        ? { body: r.body }
        : {};
  return request({
    port,
    ...(host === undefined ? {} : { host }),
    method: r.method,
    path: r.path,
    headers: rawHeadersOf(r),
    ...framed,
    agent,
    timeoutMs: 15_000,
  });
}

/** What the origin's /reflect answers for this target: the x-* echo, or something else (404, 400). */
function isReflected(target: string): boolean {
  const url = new URL(target, 'http://origin.invalid');
  if (url.pathname !== '/reflect') return false;
  if (!url.searchParams.has('status')) return true;
  const n = Number(url.searchParams.get('status'));
  return Number.isInteger(n) && n >= 200 && n <= 599;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive']);

/** rawHeaders without the ones allowed to differ (see the file comment); `date` counted separately. */
function comparable(rawHeaders: readonly string[]): { headers: string[]; dates: number } {
  const headers: string[] = [];
  let dates = 0;
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const lower = rawHeaders[i]!.toLowerCase();
    if (lower === 'date') dates++;
    else if (!HOP_BY_HOP.has(lower)) headers.push(rawHeaders[i]!, rawHeaders[i + 1]!);
  }
  return { headers, dates };
}

/** The direct answer's headers as they must look through the tunnel. */
function expectedThroughTunnel(direct: string[], reflected: boolean): string[] {
  if (!reflected) return direct;
  const at = direct.findIndex((h, i) => i % 2 === 0 && h === 'Content-Type');
  assert.ok(at >= 0, `a /reflect answer without Content-Type: ${JSON.stringify(direct)}`);
  return [
    ...direct.slice(0, at),
    'X-Forwarded-For',
    '127.0.0.1',
    'X-Forwarded-Proto',
    'http',
    ...direct.slice(at),
  ];
}

// ------------------------------------------------------------------ the property

describe('differential: through the tunnel = straight to the origin', () => {
  let stack: Stack;
  const directAgent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  const tunnelAgent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  before(async () => {
    stack = await startStack();
  });
  after(async () => {
    directAgent.destroy();
    tunnelAgent.destroy();
    await stack?.close();
  });

  it('same status, headers and body for arbitrary requests', { timeout: 120_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(requestArb, async (r) => {
        const direct = await send(stack.origin.port, undefined, directAgent, r);
        const tunnel = await send(stack.visitorPort, stack.hostname, tunnelAgent, r);

        assert.equal(tunnel.status, direct.status);
        assert.equal(tunnel.headers['warren-error'], undefined);
        const d = comparable(direct.rawHeaders);
        const t = comparable(tunnel.rawHeaders);
        assert.equal(d.dates, 1, 'the origin sends one Date');
        assert.equal(t.dates, 1, 'the tunnel passes on exactly one Date');
        assert.deepEqual(t.headers, expectedThroughTunnel(d.headers, isReflected(r.path)));
        assert.equal(direct.headers['transfer-encoding'], undefined);
        assert.equal(tunnel.headers['transfer-encoding'], undefined);
        assert.ok(tunnel.body.equals(direct.body), 'same body');
        if (isReflected(r.path) && direct.status !== 204 && direct.status !== 304) {
          // The oracle itself: the origin saw the request body whole.
          assert.ok(direct.body.equals(r.body), 'the origin reflected the request body');
        }
      }),
      { numRuns: 60 },
    );
  });
});
