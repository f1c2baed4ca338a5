import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ApiClient, apiError, errorCodeOf, normalizeApiUrl } from '../../src/cli/api-client.ts';
import { WarrenError } from '../../src/shared/errors.ts';

/** A fetch that answers every request with `status` and `body`, and records what it was asked. */
function fakeFetch(status: number, body: unknown, seen: Request[] = []): typeof fetch {
  return (async (input: URL | Request | string, init?: RequestInit) => {
    seen.push(new Request(input, init));
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    return new Response(status === 204 ? null : text, {
      status,
      headers: { 'content-type': 'application/json' },
    });
  }) as typeof fetch;
}

function isWarren(code: string, message: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof WarrenError, String(err));
    assert.equal(err.code, code);
    assert.match(err.message, message);
    return true;
  };
}

describe('API errors', () => {
  it('an error body becomes a WarrenError with its code and message', () => {
    const err = apiError(401, 'Unauthorized', {
      error: { code: 'token_revoked', message: 'this API token was rolled; run `warren login` again' },
    });
    assert.equal(err.code, 'token_revoked');
    assert.equal(err.message, 'this API token was rolled; run `warren login` again');
  });

  it('a code this version does not know becomes bad_request, the message kept', () => {
    assert.equal(errorCodeOf('internal'), 'bad_request');
    assert.equal(errorCodeOf('toString'), 'bad_request');
    assert.equal(errorCodeOf(42), 'bad_request');
    assert.equal(errorCodeOf('forbidden'), 'forbidden');
    const err = apiError(500, 'Internal Server Error', {
      error: { code: 'internal', message: 'internal error' },
    });
    assert.equal(err.code, 'bad_request');
    assert.equal(err.message, 'internal error');
  });

  it('an answer without an error body says which HTTP status came back', () => {
    const err = apiError(502, 'Bad Gateway', undefined);
    assert.equal(err.code, 'bad_request');
    assert.equal(err.message, 'the edge API answered HTTP 502 Bad Gateway');
    assert.equal(err.retryable, true);
  });

  it('the client throws them for non-2xx answers', async () => {
    const api = new ApiClient(
      { apiUrl: 'http://edge.test:7845', token: 'wrn_x' },
      { fetch: fakeFetch(403, { error: { code: 'forbidden', message: 'another account' } }) },
    );
    await assert.rejects(api.listTunnels('acc'), isWarren('forbidden', /^another account$/));
  });

  it('a refused connection says the edge is not running, naming the URL', async () => {
    const refused = (async () => {
      throw Object.assign(new TypeError('fetch failed'), { cause: { code: 'ECONNREFUSED' } });
    }) as typeof fetch;
    const api = new ApiClient({ apiUrl: 'http://127.0.0.1:9' }, { fetch: refused });
    await assert.rejects(
      api.verifyToken(),
      isWarren(
        'dial_failed',
        /^cannot reach the edge API at http:\/\/127\.0\.0\.1:9 \(ECONNREFUSED\); is `warren edge` running\?$/,
      ),
    );
  });

  it('a real refused connection reads the same', async () => {
    // Port 9 (discard) is closed on loopback in any test environment we run in.
    const api = new ApiClient({ apiUrl: 'http://127.0.0.1:9' });
    await assert.rejects(
      api.verifyToken(),
      isWarren('dial_failed', /cannot reach the edge API at http:\/\/127\.0\.0\.1:9/),
    );
  });
});

describe('requests', () => {
  it('send the bearer token, JSON bodies and encoded path segments', async () => {
    const seen: Request[] = [];
    const api = new ApiClient(
      { apiUrl: 'http://edge.test:7845/', token: 'wrn_secret' },
      { fetch: fakeFetch(201, { result: [] }, seen) },
    );
    await api.routeDns('acc/1', 'my tunnel', {
      hostname: 'app.example.com',
      overwrite: true,
      origin: 'auto',
    });
    const req = seen[0]!;
    assert.equal(req.method, 'POST');
    assert.equal(req.url, 'http://edge.test:7845/v1/accounts/acc%2F1/tunnels/my%20tunnel/routes');
    assert.equal(req.headers.get('authorization'), 'Bearer wrn_secret');
    assert.equal(req.headers.get('content-type'), 'application/json');
    assert.deepEqual(await req.json(), { hostname: 'app.example.com', overwrite: true, origin: 'auto' });
  });

  it('lists read every page', async () => {
    const seen: string[] = [];
    const total = 2500;
    const paged = (async (input: URL | Request | string) => {
      const url = new URL(String(input instanceof Request ? input.url : input));
      seen.push(url.search);
      const page = Number(url.searchParams.get('page'));
      const per = Number(url.searchParams.get('per_page'));
      const result = Array.from({ length: Math.max(0, Math.min(per, total - (page - 1) * per)) }, (_, i) => ({
        id: (page - 1) * per + i,
      }));
      return new Response(
        JSON.stringify({ result, result_info: { page, per_page: per, total_count: total } }),
      );
    }) as typeof fetch;
    const api = new ApiClient({ apiUrl: 'http://edge.test', token: 't' }, { fetch: paged });
    const all = await api.auditLogs('acc', { actions: ['dns.cname_add', 'dns.delete'], since: 5 });
    assert.equal(all.length, total);
    assert.equal(seen.length, 3);
    assert.match(seen[0]!, /since=5/);
    assert.match(seen[0]!, /action=dns\.cname_add%2Cdns\.delete/);
  });

  it('without a token send no Authorization header', async () => {
    const seen: Request[] = [];
    const api = new ApiClient(
      { apiUrl: 'http://edge.test' },
      { fetch: fakeFetch(201, { result: {} }, seen) },
    );
    await api.createLoginSession();
    assert.equal(seen[0]!.headers.get('authorization'), null);
  });
});

describe('normalizeApiUrl', () => {
  it('accepts http(s) URLs, adds a missing scheme, drops a trailing slash', () => {
    assert.equal(normalizeApiUrl('http://127.0.0.1:7845/'), 'http://127.0.0.1:7845');
    assert.equal(normalizeApiUrl('edge.example.com:7845'), 'http://edge.example.com:7845');
    assert.equal(normalizeApiUrl('https://edge.example.com'), 'https://edge.example.com');
  });

  it('refuses other schemes and garbage with bad_config', () => {
    assert.throws(() => normalizeApiUrl('ftp://x'), isWarren('bad_config', /--edge-api/));
    assert.throws(() => normalizeApiUrl('http://'), isWarren('bad_config', /not a URL/));
  });
});
