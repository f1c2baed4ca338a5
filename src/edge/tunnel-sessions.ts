/**
 * One warren/1 session per agent connection: hello, register (checking the HMAC proof), routing,
 * unregister, and the record of each in the event log. The event is appended before the agent is
 * told it is registered, so the log never misses a connection that served traffic.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import type { ConnectionRecord, UnregisterReason } from '../events/tunnel.ts';
import { type Clock, clockTimeout } from '../shared/clock.ts';
import { describeError, isWarrenError, WarrenError } from '../shared/errors.ts';
import type { Logger } from '../shared/log.ts';
import type { ControlMessage } from '../transport/messages.ts';
import { PROTOCOL_VERSION } from '../transport/messages.ts';
import { proofMatches, registrationProof } from '../transport/proof.ts';
import { MuxSession } from '../transport/session.ts';
import type { EdgeMetrics } from './metrics.ts';
import type { RoutedConnection, RoutingTable } from './routing.ts';

export type { UnregisterReason };

/** What the sessions need to know about tunnels, and where they report what happened. */
export interface TunnelAuthority {
  /** undefined: no such tunnel. */
  lookup(tunnelId: string): { hostname: string; deleted: boolean } | undefined;
  secretFor(tunnelId: string): Buffer;
  recordRegistered(record: ConnectionRecord): Promise<void>;
  recordUnregistered(record: ConnectionRecord, reason: UnregisterReason): Promise<void>;
}

export interface TunnelSessionsInit {
  pop: string;
  edgeVersion: string;
  heartbeatIntervalMs: number;
  heartbeatMissedLimit: number;
  /** An agent that has not registered this long after TLS is dropped (default 10 s). */
  registerTimeoutMs: number;
  maxConcurrentStreams: number;
}

export interface TunnelSessionsComponents {
  clock: Clock;
  log: Logger;
  routing: RoutingTable;
  authority: TunnelAuthority;
  metrics: EdgeMetrics;
}

interface LiveSession {
  session: MuxSession;
  record?: ConnectionRecord;
  routed?: RoutedConnection;
  /** Set once the reason it goes away is known; the first one wins. */
  reason?: UnregisterReason;
}

export class TunnelSessions {
  readonly #c: TunnelSessionsComponents;
  readonly #init: TunnelSessionsInit;
  readonly #live = new Set<LiveSession>();
  /** Appends in flight, so that stop() can wait for the log to have them. */
  readonly #pending = new Set<Promise<void>>();
  #stopping = false;

  constructor(components: TunnelSessionsComponents, init: TunnelSessionsInit) {
    this.#c = components;
    this.#init = init;
  }

  get sessionCount(): number {
    return this.#live.size;
  }

  accept(socket: Duplex, remoteAddress: string): void {
    const { clock, log } = this.#c;
    if (this.#stopping) {
      socket.destroy();
      return;
    }
    const session = new MuxSession(
      socket,
      { clock, log },
      {
        role: 'edge',
        heartbeatIntervalMs: this.#init.heartbeatIntervalMs,
        heartbeatMissedLimit: this.#init.heartbeatMissedLimit,
        maxConcurrentStreams: this.#init.maxConcurrentStreams,
        acceptPeerStreams: false,
      },
    );
    const live: LiveSession = { session };
    this.#live.add(live);
    const nonce = randomBytes(32);
    session.sendControl({
      type: 'hello',
      protocolVersion: PROTOCOL_VERSION,
      nonce,
      pop: this.#init.pop,
      edgeVersion: this.#init.edgeVersion,
      features: [],
    });
    const timer = clock.setTimeout(() => {
      if (!live.record) {
        log.info({ remoteAddress }, 'agent did not register in time; closing its connection');
        session.destroy(new WarrenError('handshake_timeout', 'no register message in time'));
      }
    }, this.#init.registerTimeoutMs);
    const sub = session.control$.subscribe((msg) => this.#onControl(live, msg, nonce, remoteAddress));
    void session.closed.then((info) => {
      clock.clearTimeout(timer);
      sub.unsubscribe();
      this.#live.delete(live);
      this.#retire(live, info.error ? 'lost' : 'graceful');
    });
  }

  #onControl(live: LiveSession, msg: ControlMessage, nonce: Buffer, remoteAddress: string): void {
    switch (msg.type) {
      case 'register':
        this.#track(this.#register(live, msg, nonce, remoteAddress));
        return;
      case 'unregister':
        // The agent is leaving: route nothing new to it; in-flight streams finish on their own.
        if (live.routed) {
          live.reason ??= 'graceful';
          this.#retire(live, 'graceful');
        }
        return;
      default:
        return;
    }
  }

  async #register(
    live: LiveSession,
    msg: Extract<ControlMessage, { type: 'register' }>,
    nonce: Buffer,
    remoteAddress: string,
  ): Promise<void> {
    const { log, authority, routing, metrics } = this.#c;
    const refuse = (code: string, message: string, retryable: boolean, retryAfterMs?: number) => {
      metrics.registrations.inc({ result: code });
      log.info(
        { tunnelId: msg.tunnelId, connIndex: msg.connIndex, code },
        `registration refused: ${message}`,
      );
      const reply: ControlMessage = { type: 'error', id: msg.id, code, message, retryable };
      if (retryAfterMs !== undefined) reply.retryAfterMs = retryAfterMs;
      live.session.sendControl(reply);
    };
    if (live.record) return refuse('bad_request', 'this connection is already registered', false);
    if (this.#stopping) return refuse('edge_draining', 'this edge is shutting down; try another', true, 1000);
    const tunnel = authority.lookup(msg.tunnelId);
    // Unknown tunnels and bad proofs get the same answer, so the edge does not reveal which ids exist.
    const expected = registrationProof(authority.secretFor(msg.tunnelId), nonce, msg.tunnelId, msg.connIndex);
    if (!tunnel || !proofMatches(expected, msg.proof)) {
      return refuse(
        'auth_failed',
        'the tunnel credentials were not accepted; check the tunnel ID and secret',
        false,
      );
    }
    if (tunnel.deleted) {
      return refuse('tunnel_deleted', 'this tunnel has been deleted; create a new one', false);
    }
    const existing = routing.findByIndex(msg.tunnelId, msg.client.id, msg.connIndex);
    if (existing) {
      if (!msg.replaceExisting) {
        return refuse(
          'duplicate_connection',
          `connection index ${msg.connIndex} of this tunnel is already connected`,
          true,
          2000,
        );
      }
      const old = [...this.#live].find((l) => l.routed === existing);
      if (old) {
        old.reason = 'replaced';
        old.session.destroy(new WarrenError('session_closed', 'replaced by a new connection'));
      }
    }
    const record: ConnectionRecord = {
      tunnelId: msg.tunnelId,
      connectionId: randomUUID(),
      connIndex: msg.connIndex,
      pop: this.#init.pop,
      clientVersion: msg.client.version,
      clientOs: msg.client.os,
      clientArch: msg.client.arch,
      connectorId: msg.client.id,
      originIp: msg.originLocalIp || remoteAddress,
    };
    live.record = record;
    try {
      await authority.recordRegistered(record);
    } catch (err) {
      live.record = undefined;
      // Refusals decided by the tunnel stream (the account's limit, a deletion that raced this
      // registration) go to the agent as they are; anything else is the edge's own trouble.
      if (isWarrenError(err, 'account_tunnel_limit') || isWarrenError(err, 'tunnel_deleted')) {
        return refuse(err.code, err.message, false);
      }
      log.error({ err: describeError(err), tunnelId: record.tunnelId }, 'could not record a registration');
      return refuse('bad_request', 'the edge could not record this registration; try again', true, 1000);
    }
    if (live.session.state === 'closed') {
      // The agent left while the event was being written (its close handler found nothing routed to
      // retire): record that it is gone, so the log never shows a connection nobody holds.
      this.#track(
        authority.recordUnregistered(record, live.reason ?? 'lost').catch((err: unknown) => {
          log.error(
            { err: describeError(err), tunnelId: record.tunnelId },
            'could not record an unregistration',
          );
        }),
      );
      return;
    }
    live.routed = {
      connectionId: record.connectionId,
      tunnelId: record.tunnelId,
      connIndex: record.connIndex,
      clientId: msg.client.id,
      session: live.session,
    };
    routing.add(live.routed);
    metrics.registrations.inc({ result: 'ok' });
    metrics.tunnelConnections.set(routing.connectionCount);
    log.info(
      {
        tunnelId: record.tunnelId,
        connIndex: record.connIndex,
        connectionId: record.connectionId,
        pop: record.pop,
      },
      'tunnel connection registered',
    );
    live.session.sendControl({
      type: 'registered',
      id: msg.id,
      connectionId: record.connectionId,
      pop: this.#init.pop,
      hostname: tunnel.hostname,
    });
  }

  /** Takes a registered connection out of routing and records why, once. */
  #retire(live: LiveSession, fallback: UnregisterReason): void {
    const { routing, metrics, log, authority } = this.#c;
    const record = live.record;
    if (!record || !live.routed) return;
    const reason = live.reason ?? (this.#stopping ? 'edge_shutdown' : fallback);
    if (!routing.remove(record.tunnelId, record.connectionId)) return;
    live.routed = undefined;
    metrics.tunnelConnections.set(routing.connectionCount);
    if (reason === 'lost') metrics.sessionsLost.inc();
    log.info(
      {
        tunnelId: record.tunnelId,
        connIndex: record.connIndex,
        connectionId: record.connectionId,
        pop: record.pop,
        reason,
      },
      'tunnel connection unregistered',
    );
    this.#track(
      authority.recordUnregistered(record, reason).catch((err: unknown) => {
        log.error(
          { err: describeError(err), tunnelId: record.tunnelId },
          'could not record an unregistration',
        );
      }),
    );
  }

  #track(p: Promise<void>): void {
    this.#pending.add(p);
    void p.finally(() => this.#pending.delete(p));
  }

  /** Revokes every connection of a tunnel now (the tunnel was deleted). */
  revoke(tunnelId: string): void {
    for (const live of this.#live) {
      if (live.record?.tunnelId === tunnelId) {
        live.reason = 'revoked';
        live.session.destroy(new WarrenError('tunnel_deleted', 'tunnel deleted'));
      }
    }
  }

  /**
   * Edge shutdown: tell every agent to move (`drain`), give them until the deadline to go, then close
   * what is left. Resolves once every session is closed and every event is written.
   */
  async stop(opts: { deadlineMs: number; signal?: AbortSignal }): Promise<void> {
    this.#stopping = true;
    const sessions = [...this.#live];
    for (const l of sessions) {
      if (l.session.state === 'open') {
        try {
          l.session.sendControl({ type: 'drain', reason: 'edge shutting down', deadlineMs: opts.deadlineMs });
        } catch {
          // a session closing under us has nothing to drain
        }
      }
    }
    const timeout = clockTimeout(this.#c.clock, opts.deadlineMs);
    const deadline = opts.signal ? AbortSignal.any([timeout.signal, opts.signal]) : timeout.signal;
    await Promise.all(
      sessions.map((l) => l.session.close({ signal: deadline, reason: 'edge shutting down' })),
    );
    timeout.clear();
    for (const l of this.#live) l.session.destroy();
    await Promise.all([...this.#live].map((l) => l.session.closed));
    await Promise.all([...this.#pending]);
  }
}
