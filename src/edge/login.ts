/**
 * `warren login` in a browser: the command opens a login session and prints its URL; the person at
 * the browser proves who they are with an API token of their account, picks the zone and approves;
 * the command polls and downloads the certificate bundle once. Sessions live in memory only, expire
 * (default 10 min), are bounded in number, and are forgotten once fetched.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Clock } from '../shared/clock.ts';
import { describeError, WarrenError } from '../shared/errors.ts';
import type { OriginCertBundle } from './api.ts';
import type { Principal } from './control-plane.ts';

export interface LoginComponents {
  clock: Clock;
  authenticate(token: string): Principal;
  zonesOf(principal: Principal): string[];
  issue(principal: Principal, zone: string): Promise<OriginCertBundle>;
}

export interface LoginInit {
  ttlMs: number;
  /** Pending sessions at most; past it, new ones are refused until some expire (default 1000). */
  maxSessions?: number;
}

/** What the polling command receives: the certificate bundle and the token to put in cert.pem. */
export interface LoginResult extends OriginCertBundle {
  apiToken: string;
}

interface Session {
  id: string;
  pollSecret: Buffer;
  expiresAt: number;
  result?: LoginResult;
}

const escapeHtml = (s: string) =>
  s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

function page(title: string, body: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)} · Warren</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}
h1{font-size:1.5rem}input,select,button{font:inherit;padding:.4rem;margin:.3rem 0;width:100%;box-sizing:border-box}
button{background:#2b6cb0;color:#fff;border:0;border-radius:4px;cursor:pointer}.err{color:#b00}.muted{color:#777}</style></head>
<body><h1>${escapeHtml(title)}</h1>${body}</body></html>
`;
}

export class LoginSessions {
  readonly #c: LoginComponents;
  readonly #ttlMs: number;
  readonly #max: number;
  readonly #sessions = new Map<string, Session>();

  constructor(components: LoginComponents, init: LoginInit) {
    this.#c = components;
    this.#ttlMs = init.ttlMs;
    this.#max = init.maxSessions ?? 1000;
  }

  #sweep(): void {
    const now = this.#c.clock.now();
    for (const [id, s] of this.#sessions) if (s.expiresAt <= now) this.#sessions.delete(id);
  }

  #get(id: string): Session {
    this.#sweep();
    const s = this.#sessions.get(id);
    if (!s)
      throw new WarrenError(
        'not_found',
        'this login session does not exist or has expired; run `warren login` again',
      );
    return s;
  }

  routes(app: FastifyInstance): void {
    const idOf = (req: FastifyRequest) => (req.params as { id: string }).id;

    app.post('/v1/login_sessions', async (req, reply) => {
      this.#sweep();
      if (this.#sessions.size >= this.#max) {
        throw new WarrenError(
          'bad_request',
          'too many logins are pending on this edge; try again in a few minutes',
          {
            retryable: true,
          },
        );
      }
      const id = randomBytes(16).toString('base64url');
      const pollSecret = randomBytes(32);
      const expiresAt = this.#c.clock.now() + this.#ttlMs;
      this.#sessions.set(id, { id, pollSecret, expiresAt });
      const base = `${req.protocol}://${req.headers.host ?? req.hostname}`;
      return reply.status(201).send({
        result: {
          id,
          login_url: `${base}/login/${id}`,
          poll_secret: pollSecret.toString('base64url'),
          expires_at: new Date(expiresAt).toISOString(),
        },
      });
    });

    app.get('/v1/login_sessions/:id', async (req, reply) => {
      const s = this.#get(idOf(req));
      const given = Buffer.from(String(req.headers['x-warren-poll-secret'] ?? ''), 'base64url');
      if (given.length !== s.pollSecret.length || !timingSafeEqual(given, s.pollSecret)) {
        throw new WarrenError('unauthorized', 'wrong poll secret for this login session');
      }
      if (!s.result) return reply.status(202).send({ result: { status: 'pending' } });
      // Handed out once: the token in it must not be fetchable again.
      this.#sessions.delete(s.id);
      return { result: { status: 'approved', ...s.result } };
    });

    app.get('/login/:id', async (req, reply) => {
      reply.type('text/html; charset=utf-8');
      try {
        const s = this.#get(idOf(req));
        if (s.result) return page('Already approved', '<p>Return to your terminal.</p>');
        return page(
          'Log in to this Warren edge',
          `<p>A <code>warren login</code> is waiting for approval. Paste an API token of your account to continue.</p>
<form method="post" action="/login/${escapeHtml(s.id)}"><input type="password" name="token" placeholder="wrn_…" autocomplete="off" required>
<button type="submit">Continue</button></form>`,
        );
      } catch (err) {
        return reply
          .status(404)
          .send(page('Login expired', `<p class="err">${escapeHtml(describeError(err))}</p>`));
      }
    });

    // Step 1: the token identifies the account; step 2 (below) picks the zone and approves.
    app.post('/login/:id', async (req, reply) => {
      reply.type('text/html; charset=utf-8');
      const body = (req.body ?? {}) as Record<string, string>;
      try {
        const s = this.#get(idOf(req));
        const principal = this.#c.authenticate(String(body.token ?? ''));
        const zones = this.#c.zonesOf(principal);
        const options = zones
          .map((z) => `<option value="${escapeHtml(z)}">${escapeHtml(z)}</option>`)
          .join('');
        return page(
          'Approve this login',
          `<p>Signed in as <b>${escapeHtml(principal.member)}</b>. The certificate will be for the zone you pick and its subdomains.</p>
<form method="post" action="/login/${escapeHtml(s.id)}/approve"><input type="hidden" name="token" value="${escapeHtml(String(body.token))}">
<label>Zone <select name="zone">${options}</select></label><button type="submit">Approve</button></form>`,
        );
      } catch (err) {
        return reply
          .status(401)
          .send(page('Could not log in', `<p class="err">${escapeHtml(describeError(err))}</p>`));
      }
    });

    app.post('/login/:id/approve', async (req, reply) => {
      reply.type('text/html; charset=utf-8');
      const body = (req.body ?? {}) as Record<string, string>;
      try {
        const s = this.#get(idOf(req));
        const token = String(body.token ?? '');
        const principal = this.#c.authenticate(token);
        const bundle = await this.#c.issue(principal, String(body.zone ?? ''));
        s.result = { ...bundle, apiToken: token };
        return page(
          'Login approved',
          '<p>The certificate is on its way to your terminal. You can close this window.</p>',
        );
      } catch (err) {
        return reply
          .status(400)
          .send(page('Could not approve', `<p class="err">${escapeHtml(describeError(err))}</p>`));
      }
    });
  }
}
