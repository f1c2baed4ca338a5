/**
 * The edge's control API (JSON over HTTP, fastify). Bearer tokens (`Authorization: Bearer wrn_…`)
 * for everything under /v1 except quick tunnels and the login handshake. Every error has the shape
 * `{ error: { code, message } }`; lists are paginated with `page` / `per_page` and answer
 * `{ result: [...], result_info: { page, per_page, count, total_count } }`.
 */
import { isIP } from 'node:net';
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';
import type { Registry } from 'prom-client';
import type { TokenRole } from '../events/account.ts';
import { AUDIT_ACTIONS, type AuditAction, type AuditEntry, type TunnelView } from '../events/directory.ts';
import type { ErrorCode } from '../shared/errors.ts';
import { WarrenError } from '../shared/errors.ts';
import type { Logger } from '../shared/log.ts';
import type { ControlPlane, Principal } from './control-plane.ts';
import type { QuickTunnelCredentials } from './edge.ts';
import type { LoginSessions } from './login.ts';

export interface ApiComponents {
  log: Logger;
  registry: Registry;
}

/** What the certificate endpoints hand back; `warren login` turns it into cert.pem. */
export interface OriginCertBundle {
  accountId: string;
  zoneId: string;
  zone: string;
  certPem: string;
  keyPem: string;
  edgeCaPem: string;
  apiUrl: string;
}

export interface ApiHandlers {
  controlPlane: ControlPlane;
  loginSessions: LoginSessions;
  createQuickTunnel(): Promise<QuickTunnelCredentials>;
  /** The credentials file of a tunnel (cloudflared's field names). */
  tunnelCredentials(t: TunnelView): Record<string, string>;
  /** The same, as the base64 token `tunnel run --token` takes. */
  tunnelToken(t: TunnelView): string;
  issueOriginCertificate(principal: Principal, zone?: string): Promise<OriginCertBundle>;
  isConnectionLive(connectionId: string): boolean;
}

const STATUS: Partial<Record<ErrorCode, number>> = {
  bad_request: 400,
  bad_config: 400,
  unauthorized: 401,
  token_revoked: 401,
  auth_failed: 401,
  forbidden: 403,
  not_found: 404,
  already_exists: 409,
  tunnel_active: 409,
  tunnel_deleted: 409,
  dns_record_exists: 409,
  version_conflict: 409,
  account_tunnel_limit: 429,
  store_closed: 503,
  not_initialized: 503,
};

const MAX_PER_PAGE = 1000;

function paginate<T>(req: FastifyRequest, all: readonly T[]) {
  const q = req.query as Record<string, string | undefined>;
  const page = intParam(q.page, 'page', 1, 1);
  const perPage = intParam(q.per_page, 'per_page', 50, 1, MAX_PER_PAGE);
  const result = all.slice((page - 1) * perPage, page * perPage);
  return { result, result_info: { page, per_page: perPage, count: result.length, total_count: all.length } };
}

function intParam(
  v: string | undefined,
  name: string,
  dflt: number,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
) {
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw new WarrenError('bad_request', `${name} must be a whole number from ${min} to ${max}`);
  }
  return n;
}

/** Epoch ms or an ISO 8601 date. */
function timeParam(v: string | undefined, name: string): number | undefined {
  if (v === undefined || v === '') return undefined;
  const n = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
  if (!Number.isFinite(n))
    throw new WarrenError('bad_request', `${name} must be epoch milliseconds or an ISO date`);
  return n;
}

function str(body: unknown, key: string, opts: { optional?: boolean } = {}): string | undefined {
  const v = (body as Record<string, unknown> | null)?.[key];
  if (v === undefined && opts.optional) return undefined;
  if (typeof v !== 'string' || v.length === 0)
    throw new WarrenError('bad_request', `${key} is required (a string)`);
  return v;
}

function bool(body: unknown, key: string): boolean {
  const v = (body as Record<string, unknown> | null)?.[key];
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw new WarrenError('bad_request', `${key} must be true or false`);
  return v;
}

export function tunnelJson(t: TunnelView) {
  return {
    id: t.tunnelId,
    name: t.name,
    created_at: new Date(t.createdAt).toISOString(),
    deleted_at: t.deletedAt === null ? null : new Date(t.deletedAt).toISOString(),
    inactive_at: t.inactiveAt === null ? null : new Date(t.inactiveAt).toISOString(),
    dns_cleanup_due_at: t.pendingCleanup ? new Date(t.pendingCleanup.dueAt).toISOString() : null,
    connections: [...t.connections.values()].map((c) => ({
      id: c.connectionId,
      conn_index: c.connIndex,
      pop: c.pop,
      client_version: c.clientVersion,
      os: c.clientOs,
      arch: c.clientArch,
      connector_id: c.connectorId,
      origin_ip: c.originIp,
      opened_at: new Date(c.registeredAt).toISOString(),
    })),
  };
}

function auditJson(e: AuditEntry) {
  return {
    id: e.id,
    time: new Date(e.time).toISOString(),
    action: e.action,
    actor: e.actor,
    tunnel_id: e.tunnelId,
    tunnel_name: e.tunnelName,
    connection_id: e.connectionId,
    pop: e.pop,
    client_version: e.clientVersion,
    details: e.details,
  };
}

export async function createApiServer(c: ApiComponents, h: ApiHandlers): Promise<FastifyInstance> {
  const app = Fastify({ logger: false, bodyLimit: 64 * 1024 });
  const cp = h.controlPlane;

  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) =>
    done(null, Object.fromEntries(new URLSearchParams(body as string))),
  );

  app.setErrorHandler((err, _req, reply) => {
    if (err instanceof WarrenError) {
      const status = STATUS[err.code] ?? (err.retryable ? 503 : 409);
      return reply.status(status).send({ error: { code: err.code, message: err.message } });
    }
    const status = (err as { statusCode?: number }).statusCode ?? 500;
    if (status >= 500)
      c.log.error({ err: err instanceof Error ? err.message : String(err) }, 'control API request failed');
    return reply.status(status).send({
      error: {
        code: status >= 500 ? 'internal' : 'bad_request',
        message: status >= 500 ? 'internal error' : (err as Error).message,
      },
    });
  });
  app.setNotFoundHandler((req, reply) =>
    reply
      .status(404)
      .send({ error: { code: 'not_found', message: `no route for ${req.method} ${req.url.split('?')[0]}` } }),
  );

  // The secrets in answers are shown once; nothing here may be cached by a proxy.
  app.addHook('onSend', async (_req, reply) => {
    reply.header('cache-control', 'no-store');
  });

  const principalOf = (req: FastifyRequest): Principal => {
    const auth = req.headers.authorization;
    const bearer = auth?.startsWith('Bearer ') ? auth.slice(7).trim() : undefined;
    if (!bearer) {
      throw new WarrenError(
        'unauthorized',
        'this needs an API token: `Authorization: Bearer <token>`; run `warren login`',
      );
    }
    return cp.authenticate(bearer);
  };
  const params = (req: FastifyRequest) => req.params as Record<string, string>;

  // ---- no authentication ----

  app.post('/v1/quick_tunnels', async (_req, reply) => reply.status(201).send(await h.createQuickTunnel()));
  app.get('/healthcheck', async () => ({ status: 'ok' }));
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', c.registry.contentType);
    return c.registry.metrics();
  });

  // ---- who am I, accounts, members ----

  app.get('/v1/user/tokens/verify', async (req) => {
    const p = principalOf(req);
    return { result: { account_id: p.accountId, token_id: p.tokenId, member: p.member, role: p.role } };
  });

  app.post('/v1/accounts', async (req, reply) => {
    const p = principalOf(req);
    const created = await cp.createAccount(p, {
      accountName: str(req.body, 'name')!,
      zone: str(req.body, 'zone')!,
      member: str(req.body, 'member', { optional: true }) ?? 'admin',
    });
    return reply.status(201).send({ result: created });
  });

  app.get('/v1/accounts/:account', async (req) => {
    const p = principalOf(req);
    cp.authorize(p, params(req).account!);
    const a = cp.directory.accounts.get(p.accountId)!;
    return {
      result: {
        id: a.accountId,
        name: a.name,
        operator: a.operator,
        created_at: new Date(a.createdAt).toISOString(),
        active_tunnels: cp.directory.activeTunnels(a.accountId),
      },
    };
  });

  app.get('/v1/accounts/:account/zones', async (req) => {
    const p = principalOf(req);
    cp.authorize(p, params(req).account!);
    const zones = [...cp.directory.zones.values()].filter((z) => z.accountId === p.accountId);
    return paginate(
      req,
      zones.map((z) => ({ id: z.zoneId, name: z.zone, created_at: new Date(z.addedAt).toISOString() })),
    );
  });

  app.get('/v1/accounts/:account/members', async (req) => {
    const p = principalOf(req);
    return paginate(req, cp.members(p, params(req).account!));
  });

  app.post('/v1/accounts/:account/members', async (req, reply) => {
    const p = principalOf(req);
    const role = (str(req.body, 'role', { optional: true }) ?? 'member') as TokenRole;
    if (role !== 'admin' && role !== 'member')
      throw new WarrenError('bad_request', 'role must be admin or member');
    const added = await cp.addMember(p, params(req).account!, str(req.body, 'member')!, role);
    return reply.status(201).send({ result: added });
  });

  app.delete('/v1/accounts/:account/members/:token', async (req) => {
    const p = principalOf(req);
    await cp.removeMember(p, params(req).account!, params(req).token!);
    return { result: { id: params(req).token } };
  });

  app.post('/v1/accounts/:account/members/:token/roll', async (req) => {
    const p = principalOf(req);
    return { result: await cp.rollToken(p, params(req).account!, params(req).token!) };
  });

  // ---- origin certificates (warren login --token) ----

  app.post('/v1/accounts/:account/origin_certificates', async (req, reply) => {
    const p = principalOf(req);
    cp.authorize(p, params(req).account!);
    const zone = str(req.body ?? {}, 'zone', { optional: true });
    return reply.status(201).send({ result: await h.issueOriginCertificate(p, zone) });
  });

  // ---- tunnels ----

  app.post('/v1/accounts/:account/tunnels', async (req, reply) => {
    const p = principalOf(req);
    const t = await cp.createTunnel(p, params(req).account!, str(req.body, 'name')!);
    return reply.status(201).send({ result: { ...tunnelJson(t), credentials: h.tunnelCredentials(t) } });
  });

  app.get('/v1/accounts/:account/tunnels', async (req) => {
    const p = principalOf(req);
    const q = req.query as Record<string, string | undefined>;
    const list = cp.listTunnels(p, params(req).account!, {
      ...(q.name ? { name: q.name } : {}),
      includeDeleted: q.include_deleted === 'true',
    });
    return paginate(req, list.map(tunnelJson));
  });

  app.get('/v1/accounts/:account/tunnels/:tunnel', async (req) => {
    const p = principalOf(req);
    return { result: tunnelJson(cp.findTunnel(p, params(req).account!, params(req).tunnel!)) };
  });

  app.delete('/v1/accounts/:account/tunnels/:tunnel', async (req) => {
    const p = principalOf(req);
    const force = (req.query as Record<string, string>).force === 'true';
    const t = await cp.deleteTunnel(p, params(req).account!, params(req).tunnel!, force);
    return { result: tunnelJson(t) };
  });

  app.get('/v1/accounts/:account/tunnels/:tunnel/connections', async (req) => {
    const p = principalOf(req);
    return paginate(req, tunnelJson(cp.findTunnel(p, params(req).account!, params(req).tunnel!)).connections);
  });

  app.delete('/v1/accounts/:account/tunnels/:tunnel/connections', async (req) => {
    const p = principalOf(req);
    const dropped = await cp.cleanupConnections(
      p,
      params(req).account!,
      params(req).tunnel!,
      h.isConnectionLive,
    );
    return { result: { dropped } };
  });

  app.get('/v1/accounts/:account/tunnels/:tunnel/token', async (req) => {
    const p = principalOf(req);
    const t = cp.findTunnel(p, params(req).account!, params(req).tunnel!);
    if (t.deletedAt !== null) throw new WarrenError('tunnel_deleted', `tunnel ${t.name} has been deleted`);
    return { result: h.tunnelToken(t) };
  });

  app.get('/v1/accounts/:account/tunnels/:tunnel/credentials', async (req) => {
    const p = principalOf(req);
    const t = cp.findTunnel(p, params(req).account!, params(req).tunnel!);
    if (t.deletedAt !== null) throw new WarrenError('tunnel_deleted', `tunnel ${t.name} has been deleted`);
    return { result: h.tunnelCredentials(t) };
  });

  app.post('/v1/accounts/:account/tunnels/:tunnel/routes', async (req, reply) => {
    const p = principalOf(req);
    const origin = str(req.body, 'origin', { optional: true }) ?? 'manual';
    if (origin !== 'manual' && origin !== 'auto')
      throw new WarrenError('bad_request', 'origin must be manual or auto');
    const records = await cp.routeDns(p, params(req).account!, params(req).tunnel!, {
      hostname: str(req.body, 'hostname')!,
      overwrite: bool(req.body, 'overwrite'),
      origin,
    });
    return reply.status(201).send({ result: records });
  });

  // ---- DNS records ----

  app.get('/v1/zones/:zone/dns_records', async (req) => {
    const p = principalOf(req);
    const q = req.query as Record<string, string | undefined>;
    const records = cp
      .dnsRecords(p, params(req).zone!)
      .filter((r) => !q.name || r.name === q.name.toLowerCase());
    return paginate(req, records);
  });

  app.post('/v1/zones/:zone/dns_records', async (req, reply) => {
    const p = principalOf(req);
    const type = str(req.body, 'type')!;
    const name = str(req.body, 'name')!;
    const overwrite = bool(req.body, 'overwrite');
    if (type === 'CNAME') {
      // A CNAME to a tunnel is a route; the tunnel is named by id or name in `tunnel`.
      const zone = cp.directory.zones.get(params(req).zone!.toLowerCase());
      if (!zone) throw new WarrenError('not_found', `zone ${params(req).zone} is not served by this edge`);
      const records = await cp.routeDns(p, zone.accountId, str(req.body, 'tunnel')!, {
        hostname: name,
        overwrite,
        origin: 'manual',
      });
      return reply.status(201).send({ result: records });
    }
    if (type !== 'A' && type !== 'AAAA')
      throw new WarrenError('bad_request', 'type must be CNAME, A or AAAA');
    const content = str(req.body, 'content')!;
    if (isIP(content) !== (type === 'A' ? 4 : 6)) {
      throw new WarrenError('bad_request', `content must be an IPv${type === 'A' ? 4 : 6} address`);
    }
    const records = await cp.addAddressRecord(p, params(req).zone!, { name, type, content, overwrite });
    return reply.status(201).send({ result: records });
  });

  app.delete('/v1/zones/:zone/dns_records/:name', async (req) => {
    const p = principalOf(req);
    await cp.deleteDnsRecord(p, params(req).zone!, params(req).name!);
    return { result: { name: params(req).name } };
  });

  // ---- audit log ----

  app.get('/v1/accounts/:account/audit_logs', async (req) => {
    const p = principalOf(req);
    cp.authorize(p, params(req).account!);
    const q = req.query as Record<string, string | undefined>;
    const since = timeParam(q.since, 'since');
    const before = timeParam(q.before, 'before');
    const actions = q.action ? q.action.split(',') : undefined;
    for (const a of actions ?? []) {
      if (!AUDIT_ACTIONS.includes(a as AuditAction)) {
        throw new WarrenError('bad_request', `unknown action ${a}; one of ${AUDIT_ACTIONS.join(', ')}`);
      }
    }
    const entries = cp.directory
      .audit(p.accountId)
      .filter(
        (e) =>
          (since === undefined || e.time >= since) &&
          (before === undefined || e.time < before) &&
          (!actions || actions.includes(e.action)) &&
          (!q.tunnel_id || e.tunnelId === q.tunnel_id),
      );
    // Newest first, as audit logs are read.
    return paginate(req, entries.slice().reverse().map(auditJson));
  });

  // ---- login (browser flow) ----
  h.loginSessions.routes(app);

  await app.ready();
  return app;
}
