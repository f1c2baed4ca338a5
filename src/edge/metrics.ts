import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

/** The edge's Prometheus metrics, on a registry the caller owns (never the global one). */
export class EdgeMetrics {
  readonly requests: Counter<'code'>;
  readonly requestDuration: Histogram;
  readonly tunnelConnections: Gauge;
  readonly registrations: Counter<'result'>;
  readonly sessionsLost: Counter;
  readonly concurrentStreams: Gauge;
  readonly heldRequests: Gauge;
  readonly holds: Counter<'outcome'>;
  readonly holdSeconds: Histogram;
  /** One labelled child per status: `inc({ code })` would hash the labels on every request. */
  readonly #requestsByStatus = new Map<number, Counter.Internal>();

  constructor(registry: Registry) {
    const registers = [registry];
    this.requests = new Counter({
      name: 'warren_edge_requests_total',
      help: 'Visitor requests by response status class',
      labelNames: ['code'],
      registers,
    });
    this.requestDuration = new Histogram({
      name: 'warren_edge_request_duration_seconds',
      help: 'Time from a visitor request to its response head',
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
      registers,
    });
    this.tunnelConnections = new Gauge({
      name: 'warren_edge_tunnel_connections',
      help: 'Registered tunnel connections',
      registers,
    });
    this.registrations = new Counter({
      name: 'warren_edge_registrations_total',
      help: 'Tunnel connection registrations by result (ok or an error code)',
      labelNames: ['result'],
      registers,
    });
    this.sessionsLost = new Counter({
      name: 'warren_edge_sessions_lost_total',
      help: 'Registered connections that went away without unregistering',
      registers,
    });
    this.concurrentStreams = new Gauge({
      name: 'warren_edge_concurrent_streams',
      help: 'Visitor requests in flight through tunnels',
      registers,
    });
    this.heldRequests = new Gauge({
      name: 'warren_edge_held_requests',
      help: 'Visitor requests waiting for their tunnel to reconnect (the visitor hold)',
      registers,
    });
    this.holds = new Counter({
      name: 'warren_edge_visitor_holds_total',
      help: 'Visitor requests that found no live connection, by how the hold ended',
      labelNames: ['outcome'],
      registers,
    });
    this.holdSeconds = new Histogram({
      name: 'warren_edge_visitor_hold_seconds',
      help: 'How long held visitor requests waited',
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5],
      registers,
    });
  }

  /** Counts one visitor request answered with `status`. */
  countRequest(status: number): void {
    let child = this.#requestsByStatus.get(status);
    if (child === undefined) {
      child = this.requests.labels(String(status));
      this.#requestsByStatus.set(status, child);
    }
    child.inc();
  }
}
