import { defaultVisitorHold, type VisitorHoldSettings } from './visitor-hold.ts';

/** The edge's settings and their defaults; kept apart so the CLI can read them without loading the edge. */

export interface ListenAddress {
  host: string;
  port: number;
}

export interface EdgeConfig {
  /** Where the edge keeps its TLS material and secret key; without one they live in memory. */
  dataDir?: string;
  /** This edge's point-of-presence name, recorded with every connection. */
  pop: string;
  /** Quick tunnels get hostnames under this zone. */
  zone: string;
  /** The name agents expect on the tunnel listener's certificate (SNI). */
  tunnelServerName: string;
  visitor: ListenAddress;
  tunnel: ListenAddress;
  api: ListenAddress;
  heartbeatIntervalMs: number;
  heartbeatMissedLimit: number;
  registerTimeoutMs: number;
  /** How long a stopping edge gives agents to move their connections elsewhere. */
  drainTimeoutMs: number;
  maxConcurrentStreams: number;
  /** Names the edge itself answers for: `<tunnel-id>.tunnels.<edgeDomain>`, `<host>.cdn.<edgeDomain>`. */
  edgeDomain: string;
  /** The DNS listener (UDP and TCP on one port); null: no DNS server. */
  dns: ListenAddress | null;
  /** Addresses the DNS server gives for the edge (visitors reach them); default loopback. */
  publicAddresses: { ipv4: string[]; ipv6: string[] };
  /** Tunnels one account may have connected at once. */
  accountTunnelLimit: number;
  /** A tunnel's automatic DNS records are deleted at a time drawn uniformly from this window after its last connection left. */
  dnsCleanupWindowMs: { minMs: number; maxMs: number };
  /** How long a `warren login` browser session waits for approval. */
  loginSessionTtlMs: number;
  /** Requests for a tunnel that just lost its last connection wait this long for the next one. */
  visitorHold: VisitorHoldSettings;
  /** Directory snapshots: start from the latest one and fold only the log after it (LevelDB log only). */
  snapshots: boolean;
  /** Events folded between two background snapshots; 0: only at a clean stop. */
  snapshotEveryEvents: number;
}

const HOUR_MS = 3_600_000;

export const defaultEdgeConfig: EdgeConfig = {
  pop: 'dev',
  zone: 'warren.localhost',
  tunnelServerName: 'tunnel.warren.localhost',
  visitor: { host: '127.0.0.1', port: 8080 },
  tunnel: { host: '127.0.0.1', port: 7844 },
  api: { host: '127.0.0.1', port: 7845 },
  heartbeatIntervalMs: 5000,
  heartbeatMissedLimit: 3,
  registerTimeoutMs: 10_000,
  drainTimeoutMs: 15_000,
  maxConcurrentStreams: 1024,
  edgeDomain: 'warren-edge.localhost',
  // 53 needs root, and 5353 is mDNS; operators who want 53 pass --dns-listen 0.0.0.0:53.
  dns: { host: '127.0.0.1', port: 5300 },
  publicAddresses: { ipv4: ['127.0.0.1'], ipv6: ['::1'] },
  accountTunnelLimit: 1000,
  dnsCleanupWindowMs: { minMs: 24 * HOUR_MS, maxMs: 48 * HOUR_MS },
  loginSessionTtlMs: 10 * 60_000,
  visitorHold: { ...defaultVisitorHold },
  snapshots: true,
  snapshotEveryEvents: 100_000,
};
