/**
 * The edge's control API (JSON over HTTP). This first version serves quick tunnels, health and
 * metrics; errors have the shape `{ error: { code, message } }`.
 */
import Fastify, { type FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';
import { WarrenError } from '../shared/errors.ts';
import type { Logger } from '../shared/log.ts';
import type { QuickTunnelCredentials } from './edge.ts';

export interface ApiComponents {
  log: Logger;
  registry: Registry;
}

export interface ApiHandlers {
  createQuickTunnel(): Promise<QuickTunnelCredentials>;
}

export async function createApiServer(c: ApiComponents, handlers: ApiHandlers): Promise<FastifyInstance> {
  const app = Fastify({ logger: false, bodyLimit: 64 * 1024 });

  app.setErrorHandler((err, _req, reply) => {
    if (err instanceof WarrenError) {
      const status = err.code === 'bad_request' ? 400 : err.retryable ? 503 : 409;
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
      .send({ error: { code: 'not_found', message: `no route for ${req.method} ${req.url}` } }),
  );

  app.post('/v1/quick_tunnels', async (_req, reply) => {
    const credentials = await handlers.createQuickTunnel();
    // The secret is in this answer once; it is never logged.
    return reply.status(201).header('cache-control', 'no-store').send(credentials);
  });

  app.get('/healthcheck', async () => ({ status: 'ok' }));

  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', c.registry.contentType);
    return c.registry.metrics();
  });

  await app.ready();
  return app;
}
