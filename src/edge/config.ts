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
}

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
};
