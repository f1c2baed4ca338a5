/**
 * Composition root of the edge: the event log and the control plane folded from it, the tunnel
 * listener (TLS, warren/1 sessions), the visitor listener, the control API and the DNS server.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type tls from 'node:tls';
import type { Registry } from 'prom-client';
import {
  credentialsFileFields,
  encodeTunnelToken,
  type NamedTunnelCredentials,
} from '../agent/credentials.ts';
import type { TunnelView } from '../events/directory.ts';
import type { Clock } from '../shared/clock.ts';
import { WarrenError } from '../shared/errors.ts';
import type { Logger } from '../shared/log.ts';
import type { EventLog } from '../store/event-log.ts';
import { createTunnelServer } from '../transport/tls.ts';
import { createApiServer, type OriginCertBundle } from './api.ts';
import { createEdgeTls, type EdgeTls, loadOrCreateEdgeTls } from './ca.ts';
import type { EdgeConfig, ListenAddress } from './config.ts';
import { ControlPlane, type Principal } from './control-plane.ts';
import { startDnsServer } from './dns-server.ts';
import { LoginSessions } from './login.ts';
import { EdgeMetrics } from './metrics.ts';
import { quickTunnelName } from './names.ts';
import { loadOrCreateOriginCa } from './origin-ca.ts';
import { RoutingTable } from './routing.ts';
import { type TunnelAuthority, TunnelSessions } from './tunnel-sessions.ts';
import { VisitorHold } from './visitor-hold.ts';
import { createVisitorServer } from './visitor-proxy.ts';

export { defaultEdgeConfig, type EdgeConfig, type ListenAddress } from './config.ts';

export const EDGE_VERSION = '0.1.0';

export interface EdgeComponents {
  clock: Clock;
  log: Logger;
  registry: Registry;
  eventLog: EventLog;
  /** Uniform in [0, 1): DNS cleanup deadlines are drawn with it. Default Math.random. */
  random?: () => number;
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
  /** 0 when the DNS server is off. */
  readonly dnsPort: number;
  readonly caCertPem: string;
  readonly config: EdgeConfig;
  readonly routing: RoutingTable;
  readonly controlPlane: ControlPlane;
  createQuickTunnel(): Promise<QuickTunnelCredentials>;
  /** The URL a visitor uses for a hostname on this edge. */
  visitorUrl(hostname: string): string;
  /** Graceful: drain agents, finish in-flight requests, close listeners and the log. Idempotent. */
  close(): Promise<void>;
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
  const secretKey = await loadSecretKey(config.dataDir);
  const edgeTls: EdgeTls = config.dataDir
    ? await loadOrCreateEdgeTls(config.dataDir, config.tunnelServerName)
    : await createEdgeTls(config.tunnelServerName);
  const originCa = await loadOrCreateOriginCa(config.dataDir);

  // Tunnel secrets are derived from the edge's key, so no secret is ever stored in the event log.
  const secretFor = (tunnelId: string) =>
    createHmac('sha256', secretKey).update('warren tunnel secret v1\0').update(tunnelId).digest();

  const controlPlane = await ControlPlane.open(
    { clock, log, eventLog, ...(components.random ? { random: components.random } : {}) },
    {
      edgeDomain: config.edgeDomain,
      accountTunnelLimit: config.accountTunnelLimit,
      dnsCleanupWindowMs: config.dnsCleanupWindowMs,
      snapshots: config.snapshots,
      snapshotEveryEvents: config.snapshotEveryEvents,
    },
  );
  const { directory } = controlPlane;
  let hold: VisitorHold | undefined;
  const routing = new RoutingTable((hostname) => directory.tunnelForHost(hostname), {
    now: () => clock.now(),
    onAdded: (conn) => hold?.connected(conn.tunnelId),
    forgetAfterMs: Math.max(60_000, config.visitorHold.recentMs),
  });
  // When the tunnel was last served: by this edge since it started, or, before that, as the log
  // remembers it (an edge restarting under its agents holds their visitors too).
  const lastConnectedAt = (tunnelId: string): number | undefined => {
    const t = directory.tunnels.get(tunnelId);
    if (!t || t.deletedAt !== null) return undefined;
    const here = routing.lastLiveAt(tunnelId);
    const logged = t.connections.size > 0 ? clock.now() : (t.inactiveAt ?? undefined);
    if (here === undefined) return logged;
    return logged === undefined ? here : Math.max(here, logged);
  };
  hold = new VisitorHold(
    {
      clock,
      lastConnectedAt,
      onOutcome: (outcome, heldMs) => {
        metrics.holds.inc({ outcome });
        if (heldMs > 0) metrics.holdSeconds.observe(heldMs / 1000);
      },
      onHeldChange: (held) => metrics.heldRequests.set(held),
    },
    config.visitorHold,
  );

  // A crash leaves connections the log thinks are live on this PoP; they are not, since this edge
  // just started.
  for (const t of [...directory.tunnels.values()]) {
    for (const c of [...t.connections.values()]) {
      if (c.pop === config.pop)
        await controlPlane.unregisterConnection(
          { tunnelId: t.tunnelId, connectionId: c.connectionId },
          'lost',
        );
    }
  }

  const authority: TunnelAuthority = {
    lookup: (tunnelId) => {
      const t = directory.tunnels.get(tunnelId);
      return t && { hostname: t.hostname ?? '', deleted: t.deletedAt !== null };
    },
    secretFor,
    recordRegistered: (r) => controlPlane.registerConnection(r),
    recordUnregistered: (r, reason) => controlPlane.unregisterConnection(r, reason),
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
  const visitorServer = createVisitorServer({ routing, hold, log, metrics });

  let visitorPort = 0;
  const visitorUrl = (hostname: string) => `http://${hostname}${visitorPort === 80 ? '' : `:${visitorPort}`}`;

  const endpoint = () => ({
    host: config.tunnel.host,
    port: tunnelPort,
    serverName: config.tunnelServerName,
  });

  const createQuickTunnel = async (): Promise<QuickTunnelCredentials> => {
    const hostname = `${quickTunnelName()}.${config.zone}`;
    const tunnelId = await controlPlane.createQuickTunnel(hostname);
    log.info({ tunnelId, hostname }, 'quick tunnel created');
    return {
      tunnelId,
      tunnelSecret: secretFor(tunnelId).toString('base64'),
      hostname,
      url: visitorUrl(hostname),
      edge: endpoint(),
      edgeCaPem: edgeTls.caCertPem,
    };
  };

  const namedCredentials = (t: TunnelView): NamedTunnelCredentials => ({
    accountId: t.accountId ?? '',
    tunnelId: t.tunnelId,
    tunnelName: t.name,
    secret: secretFor(t.tunnelId),
    edge: endpoint(),
    edgeCaPem: edgeTls.caCertPem,
  });

  const issueOriginCertificate = async (
    principal: Principal,
    zoneName?: string,
  ): Promise<OriginCertBundle> => {
    const zone = controlPlane.zoneFor(principal, zoneName || undefined);
    const cert = await originCa.issue({ zone: zone.zone, now: clock.now() });
    await controlPlane.recordOriginCertificate(principal, {
      serial: cert.serial,
      zone: zone.zone,
      notAfter: cert.notAfter,
    });
    return {
      accountId: principal.accountId,
      zoneId: zone.zoneId,
      zone: zone.zone,
      certPem: cert.certPem,
      keyPem: cert.keyPem,
      edgeCaPem: edgeTls.caCertPem,
      apiUrl,
    };
  };

  const loginSessions = new LoginSessions(
    {
      clock,
      authenticate: (token) => controlPlane.authenticate(token),
      zonesOf: (p) =>
        [...directory.zones.values()].filter((z) => z.accountId === p.accountId).map((z) => z.zone),
      issue: issueOriginCertificate,
    },
    { ttlMs: config.loginSessionTtlMs },
  );

  const api = await createApiServer(
    { log, registry: components.registry },
    {
      controlPlane,
      loginSessions,
      createQuickTunnel,
      tunnelCredentials: (t) => credentialsFileFields(namedCredentials(t)),
      tunnelToken: (t) => encodeTunnelToken(namedCredentials(t)),
      issueOriginCertificate,
      isConnectionLive: (connectionId) => routing.hasConnection(connectionId),
    },
  );
  controlPlane.onTunnelDeleted = (tunnelId) => sessions.revoke(tunnelId);

  visitorPort = await listen(visitorServer, config.visitor);
  const tunnelPort = await listen(tunnelServer, config.tunnel);
  await api.listen({ host: config.api.host, port: config.api.port });
  const apiPort = (api.server.address() as AddressInfo).port;
  const apiUrl = `http://${config.api.host.includes(':') ? `[${config.api.host}]` : config.api.host}:${apiPort}`;
  const dns = config.dns
    ? await startDnsServer(
        { clock, log, view: directory },
        {
          host: config.dns.host,
          port: config.dns.port,
          edgeDomain: config.edgeDomain,
          addresses: config.publicAddresses,
          // A wildcard listen address is no use to an agent: advertise the public address instead.
          tunnelEndpoints: [
            {
              host: ['0.0.0.0', '::'].includes(config.tunnel.host)
                ? (config.publicAddresses.ipv4[0] ?? config.publicAddresses.ipv6[0] ?? '127.0.0.1')
                : config.tunnel.host,
              port: tunnelPort,
            },
          ],
        },
      )
    : undefined;
  log.info({ pop: config.pop, visitorPort, tunnelPort, apiPort, dnsPort: dns?.port }, 'edge listening');

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      log.info({ pop: config.pop }, 'edge stopping: draining tunnel connections');
      // Take no new visitors or agents (a load balancer in front sends them to another edge), answer
      // anything held, then let the requests in flight finish while agents move away.
      tunnelServer.close();
      visitorServer.close();
      hold.close();
      await sessions.stop({ deadlineMs: config.drainTimeoutMs });
      visitorServer.closeAllConnections();
      await api.close();
      await dns?.close();
      controlPlane.close();
      await eventLog.close();
      log.info({ pop: config.pop }, 'edge stopped');
    })();
    return closing;
  };

  return {
    visitorPort,
    tunnelPort,
    apiPort,
    apiUrl,
    dnsPort: dns?.port ?? 0,
    caCertPem: edgeTls.caCertPem,
    config,
    routing,
    controlPlane,
    createQuickTunnel,
    visitorUrl,
    close,
  };
}
