/**
 * HTTP/1.1 client helpers for tests, over node:http (not fetch, so raw header order, case and
 * duplicates, keep-alive agents and streaming bodies are all under the test's control).
 * Connections always go to 127.0.0.1; `host` only sets the Host header, which is what the edge routes on.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import { Readable } from 'node:stream';

export type RequestHeaders = Record<string, string | string[]> | string[];
export type RequestBody = Buffer | string | Iterable<Buffer> | AsyncIterable<Buffer> | Readable;

export interface RequestOptions {
  port: number;
  /** The Host header; `127.0.0.1:<port>` when omitted. */
  host?: string;
  method?: string;
  path: string;
  /** A header object, or a flat raw array `[name, value, …]` sent exactly in that order and case. */
  headers?: RequestHeaders;
  body?: RequestBody;
  /** node's global agent (keep-alive) when omitted. */
  agent?: http.Agent;
  /** Deadline for the whole exchange (`request`) or for the response head (`requestStream`); 10 s by default. */
  timeoutMs?: number;
}

export interface Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: Buffer;
}

const DEFAULT_TIMEOUT_MS = 10_000;
/** Methods node does not send with chunked encoding by default (see `useChunkedEncodingByDefault`). */
const NO_DEFAULT_BODY = new Set(['GET', 'HEAD', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT']);

/** Sends a request and reads the whole response body. */
export async function request(opts: RequestOptions): Promise<Response> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const { req, response } = start(opts);
  const timer = setTimeout(
    () => req.destroy(new Error(`${describe(opts)} timed out after ${timeoutMs} ms`)),
    timeoutMs,
  );
  try {
    const res = await response;
    const chunks: Buffer[] = [];
    for await (const chunk of res) chunks.push(chunk as Buffer);
    return {
      status: res.statusCode ?? 0,
      headers: res.headers,
      rawHeaders: res.rawHeaders,
      body: Buffer.concat(chunks),
    };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Sends a request and resolves as soon as the response head arrives, with the body still
 * streaming (and the request body, too, if it is a stream that has not ended).
 */
export async function requestStream(opts: RequestOptions): Promise<http.IncomingMessage> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const { req, response } = start(opts);
  const timer = setTimeout(
    () => req.destroy(new Error(`${describe(opts)}: no response head within ${timeoutMs} ms`)),
    timeoutMs,
  );
  try {
    return await response;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Reads a streamed response as text while it arrives: `text()` is what came so far, `ended` resolves
 * at its end and rejects if it errs or is aborted.
 */
export function collectText(res: http.IncomingMessage): { text(): string; ended: Promise<void> } {
  let body = '';
  res.setEncoding('utf8');
  const ended = new Promise<void>((resolve, reject) => {
    res.on('data', (s: string) => {
      body += s;
    });
    res.once('end', resolve);
    res.once('error', reject);
    res.once('aborted', () => reject(new Error('the response was aborted')));
  });
  return { text: () => body, ended };
}

/** Consumes a stream and returns its length and hex SHA-256. */
export async function sha256Stream(
  readable: Readable | AsyncIterable<Buffer>,
): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of readable) {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
    bytes += buf.length;
    hash.update(buf);
  }
  return { bytes, sha256: hash.digest('hex') };
}

function start(opts: RequestOptions): { req: http.ClientRequest; response: Promise<http.IncomingMessage> } {
  const method = (opts.method ?? 'GET').toUpperCase();
  const headers = buildHeaders(opts, method);
  const req = http.request({
    host: '127.0.0.1',
    port: opts.port,
    method,
    path: opts.path,
    headers,
    ...(opts.agent === undefined ? {} : { agent: opts.agent }),
  });
  const response = new Promise<http.IncomingMessage>((resolve, reject) => {
    req.once('response', resolve);
    req.on('error', reject);
  });
  // Errors after the head arrive surface through the response stream; keep this one handled.
  response.catch(() => {});

  const body = opts.body;
  if (body === undefined) {
    req.end();
  } else if (typeof body === 'string' || Buffer.isBuffer(body)) {
    req.end(body);
  } else {
    const source = body instanceof Readable ? body : Readable.from(body);
    source.once('error', (err) => req.destroy(err));
    source.pipe(req);
  }
  return { req, response };
}

function buildHeaders(opts: RequestOptions, method: string): http.OutgoingHttpHeaders | string[] {
  const body = opts.body;
  const fixedLength =
    body === undefined
      ? undefined
      : typeof body === 'string'
        ? Buffer.byteLength(body)
        : Buffer.isBuffer(body)
          ? body.length
          : undefined;
  const streamed = body !== undefined && fixedLength === undefined;

  if (Array.isArray(opts.headers)) {
    const raw = [...opts.headers];
    const has = (name: string) => raw.some((h, i) => i % 2 === 0 && h.toLowerCase() === name);
    // node sends a raw header array as is, without adding Host.
    if (!has('host')) raw.unshift('Host', opts.host ?? `127.0.0.1:${opts.port}`);
    const framed = has('content-length') || has('transfer-encoding');
    if (!framed && fixedLength !== undefined) raw.push('Content-Length', String(fixedLength));
    if (!framed && streamed && NO_DEFAULT_BODY.has(method)) raw.push('Transfer-Encoding', 'chunked');
    return raw;
  }

  const out: http.OutgoingHttpHeaders = { ...opts.headers };
  const has = (name: string) => Object.keys(out).some((k) => k.toLowerCase() === name);
  if (opts.host !== undefined && !has('host')) out.host = opts.host;
  const framed = has('content-length') || has('transfer-encoding');
  if (!framed && fixedLength !== undefined) out['content-length'] = fixedLength;
  if (!framed && streamed && NO_DEFAULT_BODY.has(method)) out['transfer-encoding'] = 'chunked';
  return out;
}

function describe(opts: RequestOptions): string {
  return `${opts.method ?? 'GET'} ${opts.path} (port ${opts.port})`;
}
