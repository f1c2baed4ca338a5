/**
 * Composition root of the edge: the event log, the tunnel directory folded from it, the tunnel
 * listener (TLS, warren/1 sessions), the visitor listener and the control API.
 */
import { createHmac, randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type tls from 'node:tls';
import type { Registry } from 'prom-client';
import { type TunnelCommand, tunnelDecider } from '../events/tunnel.ts';
import type { Clock } from '../shared/clock.ts';
import { WarrenError } from '../shared/errors.ts';
import type { Logger } from '../shared/log.ts';
import { handleCommand } from '../store/command-handler.ts';
import type { EventLog } from '../store/event-log.ts';
import { createTunnelServer } from '../transport/tls.ts';
import { createApiServer } from './api.ts';
import { createEdgeTls, type EdgeTls, loadOrCreateEdgeTls } from './ca.ts';
import type { EdgeConfig, ListenAddress } from './config.ts';
import { EdgeMetrics } from './metrics.ts';
import { quickTunnelName } from './names.ts';
import { RoutingTable } from './routing.ts';
import {
  type ConnectionRecord,
  type TunnelAuthority,
  TunnelSessions,
  type UnregisterReason,
} from './tunnel-sessions.ts';
import { createVisitorServer } from './visitor-proxy.ts';

export { defaultEdgeConfig, type EdgeConfig, type ListenAddress } from './config.ts';

export const EDGE_VERSION = '0.1.0';

export interface EdgeComponents {
  clock: Clock;
  log: Logger;
  registry: Registry;
  eventLog: EventLog;
}

export interface QuickTunnelCredentials {
  tunnelId: string;
  /** Base64 of the 32-byte tunnel secret. */
  tunnelSecret: string;
  hostname: string;
  url: string;
  edge: { host: string; port: number; serverName: string };
  edgeCaPem: string;
}

export interface Edge {
  readonly visitorPort: number;
  readonly tunnelPort: number;
  readonly apiPort: number;
  readonly apiUrl: string;
  readonly caCertPem: string;
  readonly config: EdgeConfig;
  readonly routing: RoutingTable;
  createQuickTunnel(): Promise<QuickTunnelCredentials>;
  /** The URL a visitor uses for a hostname on this edge. */
  visitorUrl(hostname: string): string;
  /** Graceful: drain agents, finish in-flight requests, close listeners and the log. Idempotent. */
  close(): Promise<void>;
}

interface TunnelEntry {
  hostname: string;
  deleted: boolean;
  /** Connections the log says are live on this PoP: stale after a crash, retired at start. */
  live: Map<string, ConnectionRecord>;
}

async function loadSecretKey(dataDir: string | undefined): Promise<Buffer> {
  if (!dataDir) return randomBytes(32);
  const file = path.join(dataDir, 'edge-secret.key');
  try {
    const key = await readFile(file);
    if (key.length !== 32)
      throw new WarrenError('bad_config', `${file} is not a 32-byte key; restore it from backup`);
    return key;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const key = randomBytes(32);
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  await writeFile(file, key, { mode: 0o600, flag: 'wx' });
  return key;
}

async function listen(server: http.Server | tls.Server, addr: ListenAddress): Promise<number> {
  server.listen(addr.port, addr.host);
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

export async function startEdge(components: EdgeComponents, config: EdgeConfig): Promise<Edge> {
  const { clock, log, eventLog } = components;
  const metrics = new EdgeMetrics(components.registry);
  const routing = new RoutingTable();
  const secretKey = await loadSecretKey(config.dataDir);
  const edgeTls: EdgeTls = config.dataDir
    ? await loadOrCreateEdgeTls(config.dataDir, config.tunnelServerName)
    : await createEdgeTls(config.tunnelServerName);

  // Tunnel secrets are derived from the edge's key, so no secret is ever stored in the event log.
  const secretFor = (tunnelId: string) =>
    createHmac('sha256', secretKey).update('warren tunnel secret v1\0').update(tunnelId).digest();

  // Fold the log into the tunnel directory.
  const tunnels = new Map<string, TunnelEntry>();
  for await (const e of eventLog.readAll()) {
    const data = e.data as Record<string, unknown>;
    const tunnelId = data.tunnelId as string;
    switch (e.type) {
      case 'TunnelCreated':
        tunnels.set(tunnelId, { hostname: String(data.hostname ?? ''), deleted: false, live: new Map() });
        break;
      case 'TunnelDeleted': {
        const t = tunnels.get(tunnelId);
        if (t) t.deleted = true;
        break;
      }
      case 'ConnectionRegistered': {
        const t = tunnels.get(tunnelId);
        if (t && data.pop === config.pop)
          t.live.set(data.connectionId as string, data as unknown as ConnectionRecord);
        break;
      }
      case 'ConnectionUnregistered':
        tunnels.get(tunnelId)?.live.delete(data.connectionId as string);
        break;
    }
  }

  const record = async (tunnelId: string, command: TunnelCommand, actor: string) => {
    await handleCommand(eventLog, `tunnel-${tunnelId}`, tunnelDecider, command, { actor });
  };
  const recordUnregistered = (r: ConnectionRecord, reason: UnregisterReason) =>
    record(
      r.tunnelId,
      {
        type: 'UnregisterConnection',
        tunnelId: r.tunnelId,
        connectionId: r.connectionId,
        reason,
        now: clock.now(),
      },
      'edge',
    );

  // A crash leaves connections the log thinks are live; they are not, since this edge just started.
  for (const [tunnelId, t] of tunnels) {
    for (const r of t.live.values()) {
      await recordUnregistered({ ...r, tunnelId }, 'lost');
    }
    t.live.clear();
    if (!t.deleted && t.hostname) routing.setHostname(t.hostname, tunnelId);
  }

  const authority: TunnelAuthority = {
    lookup: (tunnelId) => tunnels.get(tunnelId),
    secretFor,
    recordRegistered: (r) =>
      record(
        r.tunnelId,
        {
          type: 'RegisterConnection',
          tunnelId: r.tunnelId,
          connectionId: r.connectionId,
          connIndex: r.connIndex,
          pop: r.pop,
          clientVersion: r.clientVersion,
          clientOs: r.clientOs,
          clientArch: r.clientArch,
          originIp: r.originIp,
          now: clock.now(),
        },
        'agent',
      ),
    recordUnregistered,
  };

  const sessions = new TunnelSessions(
    { clock, log, routing, authority, metrics },
    {
      pop: config.pop,
      edgeVersion: EDGE_VERSION,
      heartbeatIntervalMs: config.heartbeatIntervalMs,
      heartbeatMissedLimit: config.heartbeatMissedLimit,
      registerTimeoutMs: config.registerTimeoutMs,
      maxConcurrentStreams: config.maxConcurrentStreams,
    },
  );

  const tunnelServer = createTunnelServer(
    { keyPem: edgeTls.serverKeyPem, certPem: edgeTls.serverCertPem, handshakeTimeoutMs: 10_000 },
    (socket) => sessions.accept(socket, socket.remoteAddress ?? ''),
  );
  const visitorServer = createVisitorServer({ routing, log, metrics });

  let visitorPort = 0;
  const visitorUrl = (hostname: string) => `http://${hostname}${visitorPort === 80 ? '' : `:${visitorPort}`}`;

  const createQuickTunnel = async (): Promise<QuickTunnelCredentials> => {
    const tunnelId = randomUUID();
    const hostname = `${quickTunnelName()}.${config.zone}`;
    await record(
      tunnelId,
      {
        type: 'CreateTunnel',
        tunnelId,
        name: hostname,
        accountId: null,
        quick: true,
        hostname,
        now: clock.now(),
      },
      'quick-tunnel',
    );
    tunnels.set(tunnelId, { hostname, deleted: false, live: new Map() });
    routing.setHostname(hostname, tunnelId);
    log.info({ tunnelId, hostname }, 'quick tunnel created');
    return {
      tunnelId,
      tunnelSecret: secretFor(tunnelId).toString('base64'),
      hostname,
      url: visitorUrl(hostname),
      edge: { host: config.tunnel.host, port: tunnelPort, serverName: config.tunnelServerName },
      edgeCaPem: edgeTls.caCertPem,
    };
  };

  const api = await createApiServer({ log, registry: components.registry }, { createQuickTunnel });

  visitorPort = await listen(visitorServer, config.visitor);
  const tunnelPort = await listen(tunnelServer, config.tunnel);
  await api.listen({ host: config.api.host, port: config.api.port });
  const apiPort = (api.server.address() as AddressInfo).port;
  log.info({ pop: config.pop, visitorPort, tunnelPort, apiPort }, 'edge listening');

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      log.info({ pop: config.pop }, 'edge stopping: draining tunnel connections');
      tunnelServer.close();
      await sessions.stop({ deadlineMs: config.drainTimeoutMs });
      visitorServer.close();
      visitorServer.closeAllConnections();
      await api.close();
      await eventLog.close();
      log.info({ pop: config.pop }, 'edge stopped');
    })();
    return closing;
  };

  return {
    visitorPort,
    tunnelPort,
    apiPort,
    apiUrl: `http://${config.api.host.includes(':') ? `[${config.api.host}]` : config.api.host}:${apiPort}`,
    caCertPem: edgeTls.caCertPem,
    config,
    routing,
    createQuickTunnel,
    visitorUrl,
    close,
  };
}
