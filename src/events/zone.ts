/**
 * The zone stream (`zone-<name>`): which account owns a DNS zone, and the zone's records. Pure.
 *
 * A name holds either one CNAME or address records (one A and/or one AAAA), as in DNS. Records point
 * at a tunnel (`tunnelId`) when a route made them; `origin` says who asked: `manual` for
 * `tunnel route dns` and the API, `auto` for `tunnel run --hostname`. Deletions are conditional
 * (`onlyTunnelId`, `onlyOrigin`, `addedBefore`, `onlyRecordIds`) so that a cleanup never removes a
 * record that was re-pointed to another tunnel, and asking twice deletes nothing the second time.
 */
import { WarrenError } from '../shared/errors.ts';
import type { Decider } from './decider.ts';

export function zoneStream(zone: string): string {
  return `zone-${zone}`;
}

export type DnsRecordType = 'CNAME' | 'A' | 'AAAA';
export type DnsRecordOrigin = 'auto' | 'manual';
export type DnsDeleteReason = 'manual' | 'overwritten' | 'tunnel_deleted' | 'tunnel_inactive';

export interface DnsRecord {
  recordId: string;
  /** Fully qualified, lower case, no trailing dot. */
  name: string;
  type: DnsRecordType;
  /** CNAME target, or the address. */
  content: string;
  tunnelId: string | null;
  origin: DnsRecordOrigin;
  addedAt: number;
}

// ---- Events (stored forever) ----

export interface ZoneAdded {
  type: 'ZoneAdded';
  data: { zone: string; zoneId: string; accountId: string; addedAt: number };
}

export interface DnsRecordAdded {
  type: 'DnsRecordAdded';
  data: DnsRecord & { zone: string };
}

export interface DnsRecordDeleted {
  type: 'DnsRecordDeleted';
  data: {
    zone: string;
    recordId: string;
    name: string;
    type: DnsRecordType;
    tunnelId: string | null;
    reason: DnsDeleteReason;
    deletedAt: number;
  };
}

export type ZoneEvent = ZoneAdded | DnsRecordAdded | DnsRecordDeleted;

// ---- Commands ----

export interface AddZone {
  type: 'AddZone';
  zone: string;
  zoneId: string;
  accountId: string;
  now: number;
}

export interface AddDnsRecord {
  type: 'AddDnsRecord';
  zone: string;
  /** The account asking; must own the zone. */
  accountId: string;
  recordId: string;
  name: string;
  recordType: DnsRecordType;
  content: string;
  tunnelId: string | null;
  origin: DnsRecordOrigin;
  /** Replace whatever is at the name instead of refusing with `dns_record_exists`. */
  overwrite: boolean;
  now: number;
}

export interface DeleteDnsRecords {
  type: 'DeleteDnsRecords';
  zone: string;
  /** The account asking (must own the zone), or null when the edge itself cleans up. */
  accountId: string | null;
  /** Only records at this name; omit for all names. */
  name?: string;
  onlyTunnelId?: string;
  onlyOrigin?: DnsRecordOrigin;
  /** Only records added at or before this time (a cleanup spares routes made after it was due). */
  addedBefore?: number;
  /**
   * Only these records. A cleanup passes the ones it found due, since a route made in the very
   * millisecond after it fell due passes `addedBefore` too.
   */
  onlyRecordIds?: readonly string[];
  reason: DnsDeleteReason;
  now: number;
}

export type ZoneCommand = AddZone | AddDnsRecord | DeleteDnsRecords;

// ---- State ----

export interface ZoneState {
  status: 'absent' | 'active';
  zone: string | null;
  zoneId: string | null;
  accountId: string | null;
  /** Records by `recordId`. */
  records: Readonly<Record<string, DnsRecord>>;
}

export function initialState(): ZoneState {
  return { status: 'absent', zone: null, zoneId: null, accountId: null, records: {} };
}

export function evolve(state: ZoneState, event: ZoneEvent): ZoneState {
  switch (event.type) {
    case 'ZoneAdded': {
      const { zone, zoneId, accountId } = event.data;
      return { ...state, status: 'active', zone, zoneId, accountId };
    }
    case 'DnsRecordAdded': {
      const { zone: _zone, ...record } = event.data;
      const records = Object.fromEntries([
        ...Object.entries(state.records).filter(([id]) => id !== record.recordId),
        [record.recordId, record],
      ]);
      return { ...state, records };
    }
    case 'DnsRecordDeleted': {
      const id = event.data.recordId;
      return {
        ...state,
        records: Object.fromEntries(Object.entries(state.records).filter(([k]) => k !== id)),
      };
    }
    default: {
      const _exhaustive: never = event;
      return state;
    }
  }
}

/** Whether `name` is the zone apex or a name under it. */
export function inZone(name: string, zone: string): boolean {
  return name === zone || name.endsWith(`.${zone}`);
}

const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

/** Lower case, no trailing dot, valid DNS labels (or `*` as the first label); throws `bad_request`. */
export function normalizeHostname(input: string): string {
  const name = String(input).trim().toLowerCase().replace(/\.$/, '');
  const labels = name.split('.');
  const ok =
    name.length > 0 &&
    name.length <= 253 &&
    labels.length >= 2 &&
    labels.every((l, i) => LABEL.test(l) || (i === 0 && l === '*'));
  if (!ok) throw new WarrenError('bad_request', `"${input}" is not a valid hostname`);
  return name;
}

/** Records at `name` that a new record of `type` may not coexist with. */
function conflicting(records: Iterable<DnsRecord>, name: string, type: DnsRecordType): DnsRecord[] {
  return [...records].filter(
    (r) => r.name === name && (type === 'CNAME' || r.type === 'CNAME' || r.type === type),
  );
}

export function decide(command: ZoneCommand, state: ZoneState): ZoneEvent[] {
  if (state.status !== 'absent' && state.zone !== command.zone) {
    throw new WarrenError('bad_request', `command for zone ${command.zone} sent to zone ${state.zone}`);
  }
  if (command.type === 'AddZone') {
    const { zone, zoneId, accountId, now } = command;
    if (state.status === 'active') {
      if (state.accountId === accountId) return [];
      throw new WarrenError('already_exists', `zone ${zone} belongs to another account`);
    }
    return [{ type: 'ZoneAdded', data: { zone, zoneId, accountId, addedAt: now } }];
  }
  if (state.status === 'absent')
    throw new WarrenError('not_found', `zone ${command.zone} is not served by this edge`);
  if (command.accountId !== null && command.accountId !== state.accountId) {
    throw new WarrenError('forbidden', `zone ${command.zone} belongs to another account`);
  }
  switch (command.type) {
    case 'AddDnsRecord': {
      const c = command;
      if (!inZone(c.name, c.zone)) {
        throw new WarrenError('bad_request', `${c.name} is not in zone ${c.zone}`);
      }
      const existing = conflicting(Object.values(state.records), c.name, c.recordType);
      const only = existing.length === 1 ? existing[0]! : undefined;
      const sameTarget =
        only?.type === c.recordType && only.content === c.content && only.tunnelId === c.tunnelId;
      // The same route again: nothing to do, and a manual route is never downgraded to auto (so the
      // delayed cleanup cannot take it). An auto route asked for manually becomes manual below.
      if (sameTarget && (only.origin === c.origin || only.origin === 'manual')) return [];
      if (existing.length > 0 && !sameTarget && !c.overwrite) {
        const r = existing[0]!;
        const what = r.tunnelId ? `tunnel ${r.tunnelId}` : r.content;
        throw new WarrenError(
          'dns_record_exists',
          `${c.name} already has a ${r.type} record pointing at ${what}; pass --overwrite-dns to replace it`,
        );
      }
      const deleted = existing.map((r) => recordDeleted(c.zone, r, 'overwritten', c.now));
      const added: DnsRecordAdded = {
        type: 'DnsRecordAdded',
        data: {
          zone: c.zone,
          recordId: c.recordId,
          name: c.name,
          type: c.recordType,
          content: c.content,
          tunnelId: c.tunnelId,
          origin: c.origin,
          addedAt: c.now,
        },
      };
      return [...deleted, added];
    }
    case 'DeleteDnsRecords': {
      const c = command;
      const onlyIds = c.onlyRecordIds === undefined ? undefined : new Set(c.onlyRecordIds);
      const doomed = Object.values(state.records).filter(
        (r) =>
          (onlyIds === undefined || onlyIds.has(r.recordId)) &&
          (c.name === undefined || r.name === c.name) &&
          (c.onlyTunnelId === undefined || r.tunnelId === c.onlyTunnelId) &&
          (c.onlyOrigin === undefined || r.origin === c.onlyOrigin) &&
          (c.addedBefore === undefined || r.addedAt <= c.addedBefore),
      );
      if (doomed.length === 0 && c.reason === 'manual' && c.name !== undefined) {
        throw new WarrenError('not_found', `no DNS record at ${c.name}`);
      }
      return doomed.map((r) => recordDeleted(c.zone, r, c.reason, c.now));
    }
    default: {
      const _exhaustive: never = command;
      throw new WarrenError('bad_request', `unknown zone command ${(command as { type: string }).type}`);
    }
  }
}

function recordDeleted(zone: string, r: DnsRecord, reason: DnsDeleteReason, now: number): DnsRecordDeleted {
  return {
    type: 'DnsRecordDeleted',
    data: {
      zone,
      recordId: r.recordId,
      name: r.name,
      type: r.type,
      tunnelId: r.tunnelId,
      reason,
      deletedAt: now,
    },
  };
}

export const zoneDecider: Decider<ZoneCommand, ZoneEvent, ZoneState> = { decide, evolve, initialState };
