/** Asks an edge for a quick tunnel: a random hostname and credentials, no account needed. */
import { WarrenError } from '../shared/errors.ts';
import type { TunnelCredentials } from './tunnel-connection.ts';

export interface QuickTunnel {
  credentials: TunnelCredentials;
  hostname: string;
  url: string;
}

export async function requestQuickTunnel(
  apiUrl: string,
  opts: { edgeCaPem?: string; signal?: AbortSignal } = {},
): Promise<QuickTunnel> {
  let res: Response;
  try {
    res = await fetch(new URL('/v1/quick_tunnels', apiUrl), { method: 'POST', signal: opts.signal ?? null });
  } catch (cause) {
    throw new WarrenError(
      'dial_failed',
      `cannot reach the edge API at ${apiUrl}; is \`warren edge\` running?`,
      { retryable: true, cause },
    );
  }
  const body = (await res.json().catch(() => ({}))) as Record<string, unknown>;
  if (!res.ok) {
    const err = body.error as { code?: string; message?: string } | undefined;
    throw new WarrenError(
      'bad_request',
      `the edge refused a quick tunnel: ${err?.message ?? res.statusText}`,
    );
  }
  const edge = body.edge as { host: string; port: number; serverName: string };
  return {
    hostname: String(body.hostname),
    url: String(body.url),
    credentials: {
      tunnelId: String(body.tunnelId),
      secret: Buffer.from(String(body.tunnelSecret), 'base64'),
      edge,
      // A CA given by the operator wins; otherwise trust the one the edge's API returned (first use).
      edgeCaPem: opts.edgeCaPem ?? String(body.edgeCaPem),
    },
  };
}
