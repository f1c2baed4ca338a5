/**
 * The edge's routing table: which tunnel serves a hostname (asked of the directory folded from the
 * event log: quick-tunnel names and DNS routes), and which of its live connections takes the next
 * visitor request (the one with the fewest streams in flight). Live connections are in memory only.
 */
import type { MuxSession } from '../transport/session.ts';

export interface RoutedConnection {
  connectionId: string;
  tunnelId: string;
  connIndex: number;
  /** The agent process (connector) this connection belongs to. */
  clientId: string;
  session: MuxSession;
}

export interface RoutingTableOptions {
  /** Epoch ms; marks when a tunnel's last connection went away. */
  now: () => number;
  /** Told after a connection is added, so requests held for its tunnel can go on. */
  onAdded?: (conn: RoutedConnection) => void;
  /** How long `lastLiveAt` remembers a tunnel that went away (default 60 s); keeps the map bounded. */
  forgetAfterMs?: number;
}

export class RoutingTable {
  readonly #resolveHost: (hostname: string) => string | undefined;
  readonly #options: RoutingTableOptions;
  readonly #connections = new Map<string, Map<string, RoutedConnection>>();
  /** Tunnel id → when its last live connection went away, for the visitor hold. */
  readonly #lastLiveAt = new Map<string, number>();
  /** `#lastLiveAt` is swept when it grows past this; the sweep resets it to twice what survived. */
  #sweepAt = 1024;

  /** `resolveHost` gets a lower-case hostname without port and returns the tunnel id serving it. */
  constructor(
    resolveHost: (hostname: string) => string | undefined,
    options: RoutingTableOptions = { now: Date.now },
  ) {
    this.#resolveHost = resolveHost;
    this.#options = options;
  }

  tunnelForHost(hostname: string): string | undefined {
    return this.#resolveHost(hostname);
  }

  add(conn: RoutedConnection): void {
    let conns = this.#connections.get(conn.tunnelId);
    if (!conns) {
      conns = new Map();
      this.#connections.set(conn.tunnelId, conns);
    }
    conns.set(conn.connectionId, conn);
    this.#lastLiveAt.delete(conn.tunnelId);
    this.#options.onAdded?.(conn);
  }

  /** Returns whether the connection was routable until now. */
  remove(tunnelId: string, connectionId: string): boolean {
    const conns = this.#connections.get(tunnelId);
    if (!conns?.delete(connectionId)) return false;
    if (conns.size === 0) {
      this.#connections.delete(tunnelId);
      this.#lastLiveAt.set(tunnelId, this.#options.now());
      if (this.#lastLiveAt.size > this.#sweepAt) this.#forgetOld();
    }
    return true;
  }

  #forgetOld(): void {
    const cutoff = this.#options.now() - (this.#options.forgetAfterMs ?? 60_000);
    for (const [tunnelId, at] of this.#lastLiveAt) if (at < cutoff) this.#lastLiveAt.delete(tunnelId);
    this.#sweepAt = Math.max(1024, this.#lastLiveAt.size * 2);
  }

  /**
   * When the tunnel last had a live connection on this edge: now while it has one, the time its last
   * one went away, or undefined when none has been seen since the edge started.
   */
  lastLiveAt(tunnelId: string): number | undefined {
    if (this.#connections.has(tunnelId)) return this.#options.now();
    return this.#lastLiveAt.get(tunnelId);
  }

  hasConnection(connectionId: string): boolean {
    for (const conns of this.#connections.values()) if (conns.has(connectionId)) return true;
    return false;
  }

  connectionsOf(tunnelId: string): RoutedConnection[] {
    return [...(this.#connections.get(tunnelId)?.values() ?? [])];
  }

  findByIndex(tunnelId: string, clientId: string, connIndex: number): RoutedConnection | undefined {
    for (const c of this.#connections.get(tunnelId)?.values() ?? []) {
      if (c.clientId === clientId && c.connIndex === connIndex) return c;
    }
    return undefined;
  }

  /** The live connection with the fewest in-flight streams, skipping ones that are going away. */
  pick(tunnelId: string): RoutedConnection | undefined {
    const conns = this.#connections.get(tunnelId);
    if (!conns) return undefined;
    let best: RoutedConnection | undefined;
    for (const c of conns.values()) {
      if (c.session.goingAway) continue;
      if (!best || c.session.activeStreams < best.session.activeStreams) best = c;
    }
    return best;
  }

  get connectionCount(): number {
    let n = 0;
    for (const conns of this.#connections.values()) n += conns.size;
    return n;
  }
}
