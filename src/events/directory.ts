/**
 * The edge's read model: every stream folded into one directory of accounts, tokens, zones, DNS
 * records, tunnels with their live connections, pending DNS cleanups and the audit log. No I/O and no
 * clock reads: `apply` takes stored events in log order, so replaying a log (or any prefix of it)
 * always gives the same directory.
 *
 * It is mutable on purpose: the edge folds up to millions of events at start, and copying maps per
 * event would dominate that. Readers get plain objects and must not change them. What the fold never
 * changes once made (audit entries, records, connections) is frozen, so that a snapshot taken while
 * the fold goes on can share it rather than copy it (src/store/snapshot-codec.ts).
 */

import { WarrenError } from '../shared/errors.ts';
import type { AccountEvent, TokenRole } from './account.ts';
import { connectionOf, type TunnelConnection, type TunnelEvent } from './tunnel.ts';
import { type DnsRecord, inZone, type ZoneEvent } from './zone.ts';

/** What the directory needs of a stored event. */
export interface DirectoryEvent {
  position: number;
  recordedAt: number;
  type: string;
  data: unknown;
  meta: { actor?: string };
}

export interface AccountView {
  accountId: string;
  name: string;
  operator: boolean;
  createdAt: number;
}

export interface TokenView {
  tokenId: string;
  accountId: string;
  member: string;
  role: TokenRole;
  tokenHash: string;
  issuedAt: number;
}

export interface RetiredToken {
  tokenId: string;
  accountId: string;
  how: 'rolled' | 'revoked';
  at: number;
}

export interface ZoneView {
  zone: string;
  zoneId: string;
  accountId: string;
  addedAt: number;
}

export interface ZoneRecord extends DnsRecord {
  zone: string;
}

export interface TunnelView {
  tunnelId: string;
  name: string;
  accountId: string | null;
  quick: boolean;
  /** A quick tunnel's hostname. */
  hostname: string | null;
  createdAt: number;
  deletedAt: number | null;
  connections: Map<string, TunnelConnection>;
  /** When the last connection went away; null while connected or never connected. */
  inactiveAt: number | null;
  pendingCleanup: { dueAt: number } | null;
  /** The last cleanup that fell due: `auto` records added at or before it are to be deleted. */
  cleanupDueAt: number | null;
}

export type AuditAction =
  | 'account.create'
  | 'zone.add'
  | 'token.issue'
  | 'token.roll'
  | 'token.revoke'
  | 'certificate.issue'
  | 'tunnel.create'
  | 'tunnel.delete'
  | 'connection.register'
  | 'connection.unregister'
  | 'dns.cname_add'
  | 'dns.a_add'
  | 'dns.aaaa_add'
  | 'dns.delete'
  | 'dns_cleanup.schedule'
  | 'dns_cleanup.cancel'
  | 'dns_cleanup.due';

export const AUDIT_ACTIONS: readonly AuditAction[] = [
  'account.create',
  'zone.add',
  'token.issue',
  'token.roll',
  'token.revoke',
  'certificate.issue',
  'tunnel.create',
  'tunnel.delete',
  'connection.register',
  'connection.unregister',
  'dns.cname_add',
  'dns.a_add',
  'dns.aaaa_add',
  'dns.delete',
  'dns_cleanup.schedule',
  'dns_cleanup.cancel',
  'dns_cleanup.due',
];

export interface AuditEntry {
  /** The event's position in the log: a stable id, and the order. */
  id: number;
  time: number;
  action: AuditAction;
  /** Who caused it: `token:<id>`, `agent`, `edge`, `janitor`, `init`. */
  actor: string;
  accountId: string;
  tunnelId: string | null;
  tunnelName: string | null;
  connectionId: string | null;
  pop: string | null;
  clientVersion: string | null;
  /** Action-specific fields: hostname, record type and content, reason, dueAt, member… */
  details: Record<string, string | number | boolean | null>;
}

export interface DirectoryInit {
  /** Newest audit entries kept in memory per account (older ones stay in the log); default 100 000. */
  maxAuditEntriesPerAccount?: number;
}

type KnownEvent = AccountEvent | ZoneEvent | TunnelEvent;

/**
 * The last value seen in one field of the events, to keep one copy of it. Every decoded event brings
 * its own copies of its strings, and what the fold keeps per event (audit entries, connections) would
 * otherwise hold, after a million events, a million copies of the same few actors, PoPs and client
 * versions: memory, and garbage-collection time at start-up. One slot, not a table: these fields mostly
 * repeat from one event to the next, and an equality test is far cheaper than hashing a fresh string.
 */
class RecentString {
  #last = '';

  share(s: string): string {
    if (s === this.#last) return this.#last;
    this.#last = s;
    return s;
  }
}

/**
 * Everything a directory holds, as plain data (Maps, Sets, arrays, plain objects, primitives): what a
 * snapshot saves and restores. Snapshots encode it generically, so a field added here or to one of the
 * views is saved without further work; a change to what the fold computes must change `emptyDirectoryState` or
 * bump `DIRECTORY_STATE_VERSION` (see src/store/snapshot-codec.ts).
 */
export interface DirectoryState {
  accounts: Map<string, AccountView>;
  tokens: Map<string, TokenView>;
  retiredTokens: Map<string, RetiredToken>;
  zones: Map<string, ZoneView>;
  records: Map<string, ZoneRecord>;
  tunnels: Map<string, TunnelView>;
  recordsByName: Map<string, Set<string>>;
  /** Record ids by the tunnel they point at: start-up recovery asks this of every tunnel. */
  recordsByTunnel: Map<string, Set<string>>;
  quickHosts: Map<string, string>;
  activeByAccount: Map<string, number>;
  tunnelNames: Map<string, Map<string, string>>;
  audit: Map<string, AuditEntry[]>;
  /**
   * Log positions of each live record's `DnsRecordAdded` and of each tunnel's last `DnsCleanupDue`:
   * a route made after a cleanup fell due is not that cleanup's to delete, even within its millisecond.
   */
  recordPositions: Map<string, number>;
  cleanupDuePosition: Map<string, number>;
}

/**
 * Version of what the fold computes, for snapshots: bump it when `apply` changes its meaning for some
 * event in a way the shape of the state does not show (the snapshot's fingerprint catches shape changes).
 */
export const DIRECTORY_STATE_VERSION = 1;

export function emptyDirectoryState(): DirectoryState {
  return {
    accounts: new Map(),
    tokens: new Map(),
    retiredTokens: new Map(),
    zones: new Map(),
    records: new Map(),
    tunnels: new Map(),
    recordsByName: new Map(),
    recordsByTunnel: new Map(),
    quickHosts: new Map(),
    activeByAccount: new Map(),
    tunnelNames: new Map(),
    audit: new Map(),
    recordPositions: new Map(),
    cleanupDuePosition: new Map(),
  };
}

export class Directory {
  /** Position of the last event applied. */
  position = 0;

  #s: DirectoryState = emptyDirectoryState();
  readonly #maxAudit: number;
  // Not state (and not in snapshots): see RecentString.
  readonly #actor = new RecentString();
  readonly #pop = new RecentString();
  readonly #clientVersion = new RecentString();
  readonly #clientOs = new RecentString();
  readonly #clientArch = new RecentString();
  readonly #connectorId = new RecentString();
  readonly #reason = new RecentString();

  constructor(init: DirectoryInit = {}) {
    this.#maxAudit = init.maxAuditEntriesPerAccount ?? 100_000;
  }

  get accounts(): Map<string, AccountView> {
    return this.#s.accounts;
  }
  get tokens(): Map<string, TokenView> {
    return this.#s.tokens;
  }
  get retiredTokens(): Map<string, RetiredToken> {
    return this.#s.retiredTokens;
  }
  get zones(): Map<string, ZoneView> {
    return this.#s.zones;
  }
  get records(): Map<string, ZoneRecord> {
    return this.#s.records;
  }
  get tunnels(): Map<string, TunnelView> {
    return this.#s.tunnels;
  }

  /** The audit limit this directory was made with: a snapshot is only valid for the same one. */
  get maxAuditEntriesPerAccount(): number {
    return this.#maxAudit;
  }

  // ---- snapshots ----

  /**
   * The live state, not a copy: it changes with every `apply`. For a snapshot, encode it before the next
   * event is applied (or from a copy made then), and never change it.
   */
  exportState(): DirectoryState {
    return this.#s;
  }

  /**
   * Replaces everything with `state`, as exported at `position` by a directory with the same
   * `maxAuditEntriesPerAccount`. The caller vouches that it is whole (see snapshot-codec.ts); this only
   * checks that it has the containers this version of the code keeps.
   */
  importState(state: DirectoryState, position: number): void {
    const expected = emptyDirectoryState();
    const got = state as unknown as Record<string, unknown>;
    const keys = Object.keys(expected);
    if (Object.keys(got).length !== keys.length) {
      throw new WarrenError('store_corrupt', 'directory state has other fields than this version keeps');
    }
    for (const key of keys) {
      const want = (expected as unknown as Record<string, unknown>)[key];
      if (Object.getPrototypeOf(got[key]) !== Object.getPrototypeOf(want)) {
        throw new WarrenError('store_corrupt', `directory state field ${key} is not what this version keeps`);
      }
    }
    if (!Number.isSafeInteger(position) || position < 0) {
      throw new WarrenError('store_corrupt', `directory state position ${position} is not a position`);
    }
    this.#s = state;
    this.position = position;
  }

  // ---- queries ----

  /** The tunnel that serves visitors of `hostname` (lower case): a quick tunnel's name or a route. */
  tunnelForHost(hostname: string): string | undefined {
    const quick = this.#s.quickHosts.get(hostname);
    if (quick) return quick;
    // An exact record wins over a wildcard one level up (`*.example.com`), as in DNS.
    const dot = hostname.indexOf('.');
    const names = dot > 0 ? [hostname, `*${hostname.slice(dot)}`] : [hostname];
    for (const name of names) {
      for (const id of this.#s.recordsByName.get(name) ?? []) {
        const r = this.records.get(id);
        if (r?.tunnelId && this.tunnels.get(r.tunnelId)?.deletedAt === null) return r.tunnelId;
      }
    }
    return undefined;
  }

  recordsAt(name: string): ZoneRecord[] {
    return [...(this.#s.recordsByName.get(name) ?? [])].map((id) => this.records.get(id)!);
  }

  /** Records pointing at the tunnel. */
  recordsOf(tunnelId: string): ZoneRecord[] {
    return [...(this.#s.recordsByTunnel.get(tunnelId) ?? [])].map((id) => this.records.get(id)!);
  }

  /** The zone served by this edge that contains `name` (the longest match), if any. */
  zoneOf(name: string): ZoneView | undefined {
    let best: ZoneView | undefined;
    for (const z of this.zones.values()) {
      if (inZone(name, z.zone) && (!best || z.zone.length > best.zone.length)) best = z;
    }
    return best;
  }

  tunnelByName(accountId: string, name: string): TunnelView | undefined {
    const id = this.#s.tunnelNames.get(accountId)?.get(name);
    return id === undefined ? undefined : this.tunnels.get(id);
  }

  /** Tunnel names claimed on account streams: `[accountId, name, tunnelId]`. */
  *tunnelNameClaims(): Generator<[string, string, string]> {
    for (const [accountId, names] of this.#s.tunnelNames) {
      for (const [name, tunnelId] of names) yield [accountId, name, tunnelId];
    }
  }

  /** Tunnels of the account with at least one live connection. */
  activeTunnels(accountId: string): number {
    return this.#s.activeByAccount.get(accountId) ?? 0;
  }

  /** Records a fired cleanup still has to delete: `auto`, pointing at the tunnel, added before it fell due. */
  recordsDueForCleanup(tunnel: TunnelView): ZoneRecord[] {
    const due = tunnel.cleanupDueAt;
    const duePosition = this.#s.cleanupDuePosition.get(tunnel.tunnelId);
    if (due === null || duePosition === undefined) return [];
    return this.recordsOf(tunnel.tunnelId).filter(
      (r) =>
        r.origin === 'auto' &&
        r.addedAt <= due &&
        (this.#s.recordPositions.get(r.recordId) ?? 0) < duePosition,
    );
  }

  /** Newest last. */
  audit(accountId: string): readonly AuditEntry[] {
    return this.#s.audit.get(accountId) ?? [];
  }

  // ---- fold ----

  apply(e: DirectoryEvent): void {
    this.position = e.position;
    // `e` is read through its `type` and `data` only; no copy, as this runs for every event at start.
    const event = e as unknown as KnownEvent;
    const actor = e.meta.actor ?? 'unknown';
    switch (event.type) {
      case 'AccountCreated': {
        const d = event.data;
        this.accounts.set(d.accountId, {
          accountId: d.accountId,
          name: d.name,
          operator: d.operator,
          createdAt: d.createdAt,
        });
        this.#addAudit(e, actor, 'account.create', d.accountId, null, { name: d.name });
        return;
      }
      case 'ApiTokenIssued': {
        const d = event.data;
        this.tokens.set(d.tokenId, {
          tokenId: d.tokenId,
          accountId: d.accountId,
          member: d.member,
          role: d.role,
          tokenHash: d.tokenHash,
          issuedAt: d.issuedAt,
        });
        this.#addAudit(e, actor, 'token.issue', d.accountId, null, {
          tokenId: d.tokenId,
          member: d.member,
          role: d.role,
        });
        return;
      }
      case 'ApiTokenRolled': {
        const d = event.data;
        const old = this.tokens.get(d.tokenId);
        if (!old) return;
        this.tokens.delete(d.tokenId);
        this.retiredTokens.set(d.tokenId, {
          tokenId: d.tokenId,
          accountId: d.accountId,
          how: 'rolled',
          at: d.rolledAt,
        });
        this.tokens.set(d.newTokenId, {
          ...old,
          tokenId: d.newTokenId,
          tokenHash: d.tokenHash,
          issuedAt: d.rolledAt,
        });
        this.#addAudit(e, actor, 'token.roll', d.accountId, null, {
          tokenId: d.tokenId,
          newTokenId: d.newTokenId,
          member: old.member,
        });
        return;
      }
      case 'ApiTokenRevoked': {
        const d = event.data;
        const old = this.tokens.get(d.tokenId);
        this.tokens.delete(d.tokenId);
        this.retiredTokens.set(d.tokenId, {
          tokenId: d.tokenId,
          accountId: d.accountId,
          how: 'revoked',
          at: d.revokedAt,
        });
        this.#addAudit(e, actor, 'token.revoke', d.accountId, null, {
          tokenId: d.tokenId,
          member: old?.member ?? null,
        });
        return;
      }
      case 'OriginCertificateIssued': {
        const d = event.data;
        this.#addAudit(e, actor, 'certificate.issue', d.accountId, null, {
          serial: d.serial,
          zone: d.zone,
          tokenId: d.tokenId,
          notAfter: d.notAfter,
        });
        return;
      }
      case 'TunnelNameClaimed': {
        const d = event.data;
        let names = this.#s.tunnelNames.get(d.accountId);
        if (!names) {
          names = new Map();
          this.#s.tunnelNames.set(d.accountId, names);
        }
        names.set(d.name, d.tunnelId);
        return;
      }
      case 'TunnelNameReleased': {
        const d = event.data;
        const names = this.#s.tunnelNames.get(d.accountId);
        if (names?.get(d.name) === d.tunnelId) names.delete(d.name);
        return;
      }
      case 'ZoneAdded': {
        const d = event.data;
        this.zones.set(d.zone, {
          zone: d.zone,
          zoneId: d.zoneId,
          accountId: d.accountId,
          addedAt: d.addedAt,
        });
        this.#addAudit(e, actor, 'zone.add', d.accountId, null, { zone: d.zone });
        return;
      }
      case 'DnsRecordAdded': {
        const d = event.data;
        const previous = this.records.get(d.recordId)?.tunnelId;
        if (previous) this.#s.recordsByTunnel.get(previous)?.delete(d.recordId);
        this.records.set(d.recordId, Object.freeze({ ...d }));
        this.#s.recordPositions.set(d.recordId, e.position);
        let ids = this.#s.recordsByName.get(d.name);
        if (!ids) {
          ids = new Set();
          this.#s.recordsByName.set(d.name, ids);
        }
        ids.add(d.recordId);
        if (d.tunnelId) {
          let ofTunnel = this.#s.recordsByTunnel.get(d.tunnelId);
          if (!ofTunnel) {
            ofTunnel = new Set();
            this.#s.recordsByTunnel.set(d.tunnelId, ofTunnel);
          }
          ofTunnel.add(d.recordId);
        }
        const action =
          d.type === 'CNAME' ? 'dns.cname_add' : d.type === 'AAAA' ? 'dns.aaaa_add' : 'dns.a_add';
        const accountId = this.zones.get(d.zone)?.accountId;
        if (accountId) {
          this.#addAudit(e, actor, action, accountId, d.tunnelId, {
            hostname: d.name,
            recordType: d.type,
            content: d.content,
            origin: d.origin,
          });
        }
        return;
      }
      case 'DnsRecordDeleted': {
        const d = event.data;
        const removed = this.records.get(d.recordId);
        if (removed?.tunnelId) {
          const ofTunnel = this.#s.recordsByTunnel.get(removed.tunnelId);
          ofTunnel?.delete(d.recordId);
          if (ofTunnel?.size === 0) this.#s.recordsByTunnel.delete(removed.tunnelId);
        }
        this.records.delete(d.recordId);
        this.#s.recordPositions.delete(d.recordId);
        const ids = this.#s.recordsByName.get(d.name);
        ids?.delete(d.recordId);
        if (ids?.size === 0) this.#s.recordsByName.delete(d.name);
        const accountId = this.zones.get(d.zone)?.accountId;
        if (accountId) {
          this.#addAudit(e, actor, 'dns.delete', accountId, d.tunnelId, {
            hostname: d.name,
            recordType: d.type,
            reason: d.reason,
          });
        }
        return;
      }
      case 'TunnelCreated': {
        const d = event.data;
        this.tunnels.set(d.tunnelId, {
          tunnelId: d.tunnelId,
          name: d.name,
          accountId: d.accountId,
          quick: d.quick,
          hostname: d.hostname,
          createdAt: d.createdAt,
          deletedAt: null,
          connections: new Map(),
          inactiveAt: null,
          pendingCleanup: null,
          cleanupDueAt: null,
        });
        if (d.hostname) this.#s.quickHosts.set(d.hostname, d.tunnelId);
        if (d.accountId) this.#addAudit(e, actor, 'tunnel.create', d.accountId, d.tunnelId, { name: d.name });
        return;
      }
      case 'TunnelDeleted': {
        const t = this.tunnels.get(event.data.tunnelId);
        if (!t) return;
        const before = t.connections.size > 0;
        t.connections.clear();
        this.#connectionsChanged(t, before);
        t.deletedAt = event.data.deletedAt;
        t.pendingCleanup = null;
        if (t.hostname) this.#s.quickHosts.delete(t.hostname);
        if (t.accountId) this.#addAudit(e, actor, 'tunnel.delete', t.accountId, t.tunnelId, { name: t.name });
        return;
      }
      case 'ConnectionRegistered': {
        const d = event.data;
        const t = this.tunnels.get(d.tunnelId);
        if (!t) return;
        const made = connectionOf(d);
        // Kept (in the tunnel, then in audit entries) for every registration: share the strings that
        // recur from one to the next instead of keeping each event's copy.
        made.pop = this.#pop.share(made.pop);
        made.clientVersion = this.#clientVersion.share(made.clientVersion);
        made.clientOs = this.#clientOs.share(made.clientOs);
        made.clientArch = this.#clientArch.share(made.clientArch);
        made.connectorId = this.#connectorId.share(made.connectorId);
        const connection = Object.freeze(made);
        const before = t.connections.size > 0;
        t.connections.set(d.connectionId, connection);
        this.#connectionsChanged(t, before);
        t.inactiveAt = null;
        if (t.accountId) {
          this.#addAudit(
            e,
            actor,
            'connection.register',
            t.accountId,
            t.tunnelId,
            {
              connIndex: connection.connIndex,
              originIp: connection.originIp,
              clientOs: connection.clientOs,
              clientArch: connection.clientArch,
              connectorId: connection.connectorId,
            },
            connection,
          );
        }
        return;
      }
      case 'ConnectionUnregistered': {
        const d = event.data;
        const t = this.tunnels.get(d.tunnelId);
        const connection = t?.connections.get(d.connectionId);
        if (!t || !connection) return;
        const before = t.connections.size > 0;
        t.connections.delete(d.connectionId);
        this.#connectionsChanged(t, before);
        if (t.accountId) {
          this.#addAudit(
            e,
            actor,
            'connection.unregister',
            t.accountId,
            t.tunnelId,
            { reason: this.#reason.share(d.reason) },
            connection,
          );
        }
        return;
      }
      case 'TunnelBecameInactive': {
        const t = this.tunnels.get(event.data.tunnelId);
        if (t) t.inactiveAt = event.data.inactiveAt;
        return;
      }
      case 'DnsCleanupScheduled': {
        const t = this.tunnels.get(event.data.tunnelId);
        if (!t) return;
        t.pendingCleanup = { dueAt: event.data.dueAt };
        if (t.accountId)
          this.#addAudit(e, actor, 'dns_cleanup.schedule', t.accountId, t.tunnelId, {
            dueAt: event.data.dueAt,
          });
        return;
      }
      case 'DnsCleanupCancelled': {
        const t = this.tunnels.get(event.data.tunnelId);
        if (!t) return;
        t.pendingCleanup = null;
        if (t.accountId)
          this.#addAudit(e, actor, 'dns_cleanup.cancel', t.accountId, t.tunnelId, {
            dueAt: event.data.dueAt,
          });
        return;
      }
      case 'DnsCleanupDue': {
        const t = this.tunnels.get(event.data.tunnelId);
        if (!t) return;
        t.pendingCleanup = null;
        t.cleanupDueAt = event.data.dueAt;
        this.#s.cleanupDuePosition.set(t.tunnelId, e.position);
        if (t.accountId)
          this.#addAudit(e, actor, 'dns_cleanup.due', t.accountId, t.tunnelId, { dueAt: event.data.dueAt });
        return;
      }
      default:
        // A type this version does not know (written by a newer one) changes nothing here.
        return;
    }
  }

  /**
   * Keeps the account's active-tunnel count right after a change to a tunnel's connections; `before`:
   * whether it had any before the change.
   */
  #connectionsChanged(t: TunnelView, before: boolean): void {
    const after = t.connections.size > 0;
    if (before === after || !t.accountId) return;
    this.#s.activeByAccount.set(t.accountId, this.activeTunnels(t.accountId) + (after ? 1 : -1));
  }

  #addAudit(
    e: DirectoryEvent,
    actor: string,
    action: AuditAction,
    accountId: string,
    tunnelId: string | null,
    details: AuditEntry['details'],
    connection?: TunnelConnection,
  ): void {
    let entries = this.#s.audit.get(accountId);
    if (!entries) {
      entries = [];
      this.#s.audit.set(accountId, entries);
    }
    // Frozen: an entry never changes, and a snapshot taken while the fold goes on shares frozen objects
    // instead of copying them (see captureDirectoryState in src/store/snapshot-codec.ts).
    entries.push(
      Object.freeze({
        id: e.position,
        time: e.recordedAt,
        action,
        actor: this.#actor.share(actor),
        accountId,
        tunnelId,
        tunnelName: tunnelId ? (this.tunnels.get(tunnelId)?.name ?? null) : null,
        connectionId: connection?.connectionId ?? null,
        pop: connection?.pop ?? null,
        clientVersion: connection?.clientVersion ?? null,
        details: Object.freeze(details),
      }),
    );
    // Trim in batches so that the cost stays amortised O(1) per entry.
    if (entries.length > this.#maxAudit + Math.ceil(this.#maxAudit / 10)) {
      entries.splice(0, entries.length - this.#maxAudit);
    }
  }
}
