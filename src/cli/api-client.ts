/**
 * A small typed client for the edge's control API (src/edge/api.ts). Error bodies
 * `{ error: { code, message } }` become `WarrenError(code, message)` here, once; a code this
 * version does not know becomes `bad_request`, and a refused connection says that the edge is not
 * running rather than "fetch failed".
 */
import type { OriginCertBundle } from '../edge/api.ts';
import { type ErrorCode, WarrenError } from '../shared/errors.ts';

export interface ConnectionJson {
  id: string;
  conn_index: number;
  pop: string;
  client_version: string;
  os: string;
  arch: string;
  connector_id?: string | null;
  origin_ip: string;
  opened_at: string;
}

export interface TunnelJson {
  id: string;
  name: string;
  created_at: string;
  deleted_at: string | null;
  inactive_at: string | null;
  dns_cleanup_due_at: string | null;
  connections: ConnectionJson[];
}

export interface AuditEntryJson {
  id: number;
  time: string;
  action: string;
  actor: string;
  tunnel_id: string | null;
  tunnel_name: string | null;
  connection_id: string | null;
  pop: string | null;
  client_version: string | null;
  details: Record<string, string | number | boolean | null>;
}

export interface DnsRecordJson {
  recordId: string;
  zone: string;
  name: string;
  type: string;
  content: string;
  tunnelId: string | null;
  origin: 'manual' | 'auto';
  addedAt: number;
}

export interface VerifiedToken {
  account_id: string;
  token_id: string;
  member: string;
  role: 'admin' | 'member';
}

export interface NewAccountJson {
  accountId: string;
  zone: string;
  zoneId: string;
  member: string;
  tokenId: string;
  token: string;
}

/** A token as issued (member add, roll): shown once. */
export interface IssuedTokenJson {
  tokenId: string;
  member: string;
  role: 'admin' | 'member';
  token: string;
}

export interface MemberJson {
  tokenId: string;
  member: string;
  role: 'admin' | 'member';
  issuedAt: number;
}

export interface LoginSessionJson {
  id: string;
  login_url: string;
  poll_secret: string;
  expires_at: string;
}

export type LoginPoll = { status: 'pending' } | ({ status: 'approved'; apiToken: string } & OriginCertBundle);

export interface AuditQuery {
  since?: number;
  before?: number;
  actions?: string[];
  tunnelId?: string;
}

export interface ApiClientInit {
  /** `http(s)://host:port` of the control API. */
  apiUrl: string;
  /** Bearer token; the handshake and quick-tunnel routes need none. */
  token?: string;
  /** Per request, default 30 s: a stuck edge must not hang the command forever. */
  timeoutMs?: number;
}

export interface ApiClientComponents {
  /** Default: the global fetch. */
  fetch?: typeof fetch;
}

// Every code, so a new one cannot be added to ErrorCode without being recognised here.
const KNOWN_CODES: Record<ErrorCode, true> = {
  bad_config: true,
  bad_request: true,
  data_dir_locked: true,
  store_closed: true,
  store_corrupt: true,
  version_conflict: true,
  protocol_error: true,
  frame_too_large: true,
  flow_control_error: true,
  stream_closed: true,
  stream_reset: true,
  stream_limit: true,
  headers_too_large: true,
  heartbeat_timeout: true,
  session_closed: true,
  dial_failed: true,
  tls_verify_failed: true,
  handshake_timeout: true,
  auth_failed: true,
  tunnel_deleted: true,
  duplicate_connection: true,
  account_tunnel_limit: true,
  edge_draining: true,
  unauthorized: true,
  token_revoked: true,
  forbidden: true,
  not_found: true,
  already_exists: true,
  tunnel_active: true,
  dns_record_exists: true,
  not_initialized: true,
  origin_unreachable: true,
  origin_timeout: true,
  origin_tls: true,
  origin_reset: true,
  no_tunnel: true,
};

const PAGE_SIZE = 1000;

/** The code a remote error body names, if this version knows it. */
export function errorCodeOf(code: unknown): ErrorCode {
  return typeof code === 'string' && Object.hasOwn(KNOWN_CODES, code) ? (code as ErrorCode) : 'bad_request';
}

/** An API answer with a non-2xx status as a `WarrenError`. */
export function apiError(status: number, statusText: string, body: unknown): WarrenError {
  const err = (body as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  if (err && typeof err.message === 'string') {
    return new WarrenError(errorCodeOf(err.code), err.message, { retryable: status === 503 });
  }
  return new WarrenError(
    'bad_request',
    `the edge API answered HTTP ${status}${statusText ? ` ${statusText}` : ''}`,
    { retryable: status >= 500 },
  );
}

/** Checks a `--edge-api` value: an http(s) URL, returned without a trailing slash. */
export function normalizeApiUrl(text: string, flag = '--edge-api'): string {
  let url: URL;
  try {
    url = new URL(/^[a-z]+:\/\//i.test(text) ? text : `http://${text}`);
  } catch {
    throw new WarrenError(
      'bad_config',
      `${flag}: "${text}" is not a URL; use e.g. ${'http://127.0.0.1:7845'}`,
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new WarrenError('bad_config', `${flag}: "${text}" is not an http(s) URL`);
  }
  return url.href.replace(/\/+$/, '');
}

const seg = encodeURIComponent;

export class ApiClient {
  readonly apiUrl: string;
  readonly #token: string | undefined;
  readonly #timeoutMs: number;
  readonly #fetch: typeof fetch;

  constructor(init: ApiClientInit, components: ApiClientComponents = {}) {
    this.apiUrl = normalizeApiUrl(init.apiUrl);
    this.#token = init.token;
    this.#timeoutMs = init.timeoutMs ?? 30_000;
    this.#fetch = components.fetch ?? fetch;
  }

  /** One request; the parsed JSON body of a 2xx answer, or the error it stands for. */
  async request<T>(
    method: 'GET' | 'POST' | 'DELETE',
    pathname: string,
    opts: {
      query?: Record<string, string | number | boolean | undefined>;
      body?: unknown;
      headers?: Record<string, string>;
    } = {},
  ): Promise<{ status: number; body: T }> {
    const url = new URL(pathname, `${this.apiUrl}/`);
    for (const [k, v] of Object.entries(opts.query ?? {}))
      if (v !== undefined) url.searchParams.set(k, String(v));
    const headers: Record<string, string> = { accept: 'application/json', ...opts.headers };
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    if (opts.body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await this.#fetch(url, {
        method,
        headers,
        ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
    } catch (cause) {
      if ((cause as Error)?.name === 'TimeoutError') {
        throw new WarrenError(
          'dial_failed',
          `the edge API at ${this.apiUrl} did not answer within ${this.#timeoutMs / 1000} s`,
          { retryable: true, cause },
        );
      }
      const why = (cause as { cause?: { code?: string } })?.cause?.code;
      throw new WarrenError(
        'dial_failed',
        `cannot reach the edge API at ${this.apiUrl}${why ? ` (${why})` : ''}; is \`warren edge\` running?`,
        { retryable: true, cause },
      );
    }
    const text = await res.text();
    let body: unknown;
    try {
      body = text === '' ? undefined : JSON.parse(text);
    } catch {
      body = undefined;
    }
    if (!res.ok) throw apiError(res.status, res.statusText, body);
    if (body === undefined) {
      throw new WarrenError(
        'bad_request',
        `the edge API at ${this.apiUrl} answered ${method} ${pathname} without JSON`,
      );
    }
    return { status: res.status, body: body as T };
  }

  async #result<T>(
    method: 'GET' | 'POST' | 'DELETE',
    pathname: string,
    opts?: Parameters<ApiClient['request']>[2],
  ): Promise<T> {
    return (await this.request<{ result: T }>(method, pathname, opts)).body.result;
  }

  /** Every page of a list. */
  async #all<T>(pathname: string, query: Record<string, string | number | boolean | undefined> = {}) {
    const all: T[] = [];
    for (let page = 1; ; page++) {
      const { body } = await this.request<{ result: T[]; result_info: { total_count: number } }>(
        'GET',
        pathname,
        { query: { ...query, page, per_page: PAGE_SIZE } },
      );
      all.push(...body.result);
      if (body.result.length < PAGE_SIZE || all.length >= body.result_info.total_count) return all;
    }
  }

  // ---- who am I, accounts, members ----

  verifyToken(): Promise<VerifiedToken> {
    return this.#result('GET', '/v1/user/tokens/verify');
  }

  createAccount(opts: { name: string; zone: string; member: string }): Promise<NewAccountJson> {
    return this.#result('POST', '/v1/accounts', { body: opts });
  }

  listMembers(accountId: string): Promise<MemberJson[]> {
    return this.#all(`/v1/accounts/${seg(accountId)}/members`);
  }

  addMember(accountId: string, member: string, role: 'admin' | 'member'): Promise<IssuedTokenJson> {
    return this.#result('POST', `/v1/accounts/${seg(accountId)}/members`, { body: { member, role } });
  }

  removeMember(accountId: string, tokenId: string): Promise<{ id: string }> {
    return this.#result('DELETE', `/v1/accounts/${seg(accountId)}/members/${seg(tokenId)}`);
  }

  rollToken(accountId: string, tokenId: string): Promise<IssuedTokenJson> {
    return this.#result('POST', `/v1/accounts/${seg(accountId)}/members/${seg(tokenId)}/roll`);
  }

  issueOriginCertificate(accountId: string, zone?: string): Promise<OriginCertBundle> {
    return this.#result('POST', `/v1/accounts/${seg(accountId)}/origin_certificates`, {
      body: zone ? { zone } : {},
    });
  }

  // ---- tunnels ----

  createTunnel(
    accountId: string,
    name: string,
  ): Promise<TunnelJson & { credentials: Record<string, string> }> {
    return this.#result('POST', `/v1/accounts/${seg(accountId)}/tunnels`, { body: { name } });
  }

  listTunnels(accountId: string, opts: { includeDeleted?: boolean } = {}): Promise<TunnelJson[]> {
    return this.#all(`/v1/accounts/${seg(accountId)}/tunnels`, {
      include_deleted: opts.includeDeleted ? 'true' : undefined,
    });
  }

  /** By id or name (deleted tunnels only by id). */
  getTunnel(accountId: string, ref: string): Promise<TunnelJson> {
    return this.#result('GET', `/v1/accounts/${seg(accountId)}/tunnels/${seg(ref)}`);
  }

  deleteTunnel(accountId: string, ref: string, force: boolean): Promise<TunnelJson> {
    return this.#result('DELETE', `/v1/accounts/${seg(accountId)}/tunnels/${seg(ref)}`, {
      query: { force: force ? 'true' : undefined },
    });
  }

  cleanupConnections(accountId: string, ref: string): Promise<{ dropped: number }> {
    return this.#result('DELETE', `/v1/accounts/${seg(accountId)}/tunnels/${seg(ref)}/connections`);
  }

  tunnelToken(accountId: string, ref: string): Promise<string> {
    return this.#result('GET', `/v1/accounts/${seg(accountId)}/tunnels/${seg(ref)}/token`);
  }

  routeDns(
    accountId: string,
    ref: string,
    opts: { hostname: string; overwrite: boolean; origin: 'manual' | 'auto' },
  ): Promise<DnsRecordJson[]> {
    return this.#result('POST', `/v1/accounts/${seg(accountId)}/tunnels/${seg(ref)}/routes`, {
      body: opts,
    });
  }

  dnsRecords(zone: string, name?: string): Promise<DnsRecordJson[]> {
    return this.#all(`/v1/zones/${seg(zone)}/dns_records`, { name });
  }

  // ---- audit ----

  /** Newest first. */
  auditLogs(accountId: string, q: AuditQuery = {}): Promise<AuditEntryJson[]> {
    return this.#all(`/v1/accounts/${seg(accountId)}/audit_logs`, {
      since: q.since,
      before: q.before,
      action: q.actions?.length ? q.actions.join(',') : undefined,
      tunnel_id: q.tunnelId,
    });
  }

  // ---- login handshake (no token) ----

  createLoginSession(): Promise<LoginSessionJson> {
    return this.#result('POST', '/v1/login_sessions');
  }

  pollLoginSession(id: string, pollSecret: string): Promise<LoginPoll> {
    return this.#result('GET', `/v1/login_sessions/${seg(id)}`, {
      headers: { 'x-warren-poll-secret': pollSecret },
    });
  }
}
