/**
 * The tunnel stream (`tunnel-<id>`): a tunnel's life and its live connections, over all PoPs.
 * Pure: no I/O, no clock reads; time arrives as `now` on every command.
 *
 * Retries are safe: creating the same tunnel again, registering an already registered connection,
 * unregistering an unknown one and deleting a deleted tunnel all decide nothing ([]).
 */
// The one import from outside src/events: the shared error type, a leaf module with no I/O, so a
// refusal carries the same stable code (`bad_request`, `tunnel_deleted`) the edge puts on the wire.
import { WarrenError } from '../shared/errors.ts';
import type { Decider } from './decider.ts';

export function tunnelStream(tunnelId: string): string {
  return `tunnel-${tunnelId}`;
}

// ---- Events (stored forever: never rename a type or a field; add an upcaster instead) ----

export type UnregisterReason = 'graceful' | 'lost' | 'replaced' | 'revoked' | 'edge_shutdown';

export interface TunnelCreated {
  type: 'TunnelCreated';
  data: {
    tunnelId: string;
    name: string;
    accountId: string | null;
    quick: boolean;
    /** The hostname a quick tunnel is given at creation; null for named tunnels (they get DNS routes). */
    hostname: string | null;
    createdAt: number;
  };
}

export interface TunnelDeleted {
  type: 'TunnelDeleted';
  data: { tunnelId: string; deletedAt: number };
}

export interface ConnectionRegistered {
  type: 'ConnectionRegistered';
  data: {
    tunnelId: string;
    connectionId: string;
    connIndex: number;
    pop: string;
    clientVersion: string;
    clientOs: string;
    clientArch: string;
    originIp: string;
    /** The agent process (connector) holding the connection; absent in events written before 0.2. */
    connectorId?: string;
    registeredAt: number;
  };
}

/** What is known of a connection when it registers: `ConnectionRegistered` without its time. */
export type ConnectionRecord = Omit<ConnectionRegistered['data'], 'registeredAt'>;

export interface ConnectionUnregistered {
  type: 'ConnectionUnregistered';
  data: { tunnelId: string; connectionId: string; reason: UnregisterReason; unregisteredAt: number };
}

/** The tunnel's last live connection went away. */
export interface TunnelBecameInactive {
  type: 'TunnelBecameInactive';
  data: { tunnelId: string; inactiveAt: number };
}

/** The tunnel's `auto` DNS records are to be deleted at `dueAt` unless a connection comes back. */
export interface DnsCleanupScheduled {
  type: 'DnsCleanupScheduled';
  data: { tunnelId: string; dueAt: number; scheduledAt: number };
}

export interface DnsCleanupCancelled {
  type: 'DnsCleanupCancelled';
  data: { tunnelId: string; dueAt: number; cancelledAt: number };
}

/**
 * The deadline passed with the tunnel still inactive: its `auto` records added at or before `dueAt`
 * are to be deleted. Appended before the deletions, which are idempotent and re-run at start until
 * none is left, so a crash between the two loses nothing and deletes nothing twice.
 */
export interface DnsCleanupDue {
  type: 'DnsCleanupDue';
  data: { tunnelId: string; dueAt: number; firedAt: number };
}

export type TunnelEvent =
  | TunnelCreated
  | TunnelDeleted
  | ConnectionRegistered
  | ConnectionUnregistered
  | TunnelBecameInactive
  | DnsCleanupScheduled
  | DnsCleanupCancelled
  | DnsCleanupDue;

// ---- Commands ----

export interface CreateTunnel {
  type: 'CreateTunnel';
  tunnelId: string;
  name: string;
  /** null for a quick tunnel, which belongs to no account. */
  accountId: string | null;
  quick: boolean;
  /** A quick tunnel's assigned hostname; omit (null) for named tunnels. */
  hostname?: string | null;
  now: number;
}

export interface RegisterConnection {
  type: 'RegisterConnection';
  tunnelId: string;
  connectionId: string;
  connIndex: number;
  pop: string;
  clientVersion: string;
  clientOs: string;
  clientArch: string;
  originIp: string;
  /** The agent process holding the connection (its `client.id`); several share one tunnel as replicas. */
  connectorId?: string;
  /**
   * The account's concurrency limit, checked when this registration would make the tunnel active:
   * `activeTunnels` is how many of the account's tunnels have a live connection now (read from the
   * projection by the caller, which serialises registrations per account).
   */
  accountLimit?: { activeTunnels: number; maxActiveTunnels: number };
  now: number;
}

export interface UnregisterConnection {
  type: 'UnregisterConnection';
  tunnelId: string;
  connectionId: string;
  reason: UnregisterReason;
  /**
   * When this is the last connection of a named tunnel: how long after `now` its `auto` DNS records
   * are deleted (a random draw in the cleanup window, made by the caller). Omitted: no cleanup.
   */
  cleanupDelayMs?: number;
  now: number;
}

/**
 * Unregisters every live connection (reason `revoked`), then deletes the tunnel. Refused with
 * `tunnel_active` while connections are live, unless `force`.
 */
export interface DeleteTunnel {
  type: 'DeleteTunnel';
  tunnelId: string;
  force?: boolean;
  now: number;
}

/** The janitor's timer fired for `dueAt`. Nothing happens unless that cleanup is still pending and due. */
export interface FireDnsCleanup {
  type: 'FireDnsCleanup';
  tunnelId: string;
  dueAt: number;
  now: number;
}

export type TunnelCommand =
  | CreateTunnel
  | RegisterConnection
  | UnregisterConnection
  | DeleteTunnel
  | FireDnsCleanup;

// ---- State ----

export interface TunnelConnection {
  connectionId: string;
  connIndex: number;
  pop: string;
  clientVersion: string;
  clientOs: string;
  clientArch: string;
  originIp: string;
  /** '' for connections recorded before connectors were. */
  connectorId: string;
  registeredAt: number;
}

export interface TunnelState {
  status: 'absent' | 'active' | 'deleted';
  /** null while absent. */
  tunnelId: string | null;
  name: string | null;
  accountId: string | null;
  quick: boolean;
  hostname: string | null;
  createdAt: number | null;
  /** Live connections by connectionId. Look up with `Object.hasOwn`, ids are not trusted keys. */
  connections: Readonly<Record<string, TunnelConnection>>;
  /** A scheduled DNS cleanup not yet cancelled or fired. */
  pendingCleanup: { dueAt: number } | null;
  /** Time of the last `DnsCleanupDue`: auto records added at or before it are to go. */
  cleanupDueAt: number | null;
}

export function initialState(): TunnelState {
  return {
    status: 'absent',
    tunnelId: null,
    name: null,
    accountId: null,
    quick: false,
    hostname: null,
    createdAt: null,
    connections: {},
    pendingCleanup: null,
    cleanupDueAt: null,
  };
}

/**
 * The live connection a `ConnectionRegistered` describes, field by field: cheaper than a rest copy
 * when millions of events are folded, and nothing else the event may carry is kept.
 */
export function connectionOf(d: ConnectionRegistered['data']): TunnelConnection {
  return {
    connectionId: d.connectionId,
    connIndex: d.connIndex,
    pop: d.pop,
    clientVersion: d.clientVersion,
    clientOs: d.clientOs,
    clientArch: d.clientArch,
    originIp: d.originIp,
    // Absent in events written before connectors were recorded.
    connectorId: d.connectorId ?? '',
    registeredAt: d.registeredAt,
  };
}

export function evolve(state: TunnelState, event: TunnelEvent): TunnelState {
  switch (event.type) {
    case 'TunnelCreated': {
      const { tunnelId, name, accountId, quick, hostname, createdAt } = event.data;
      return { ...state, status: 'active', tunnelId, name, accountId, quick, hostname, createdAt };
    }
    case 'TunnelDeleted':
      return { ...state, status: 'deleted', connections: {}, pendingCleanup: null };
    case 'ConnectionRegistered': {
      const connection = connectionOf(event.data);
      return { ...state, connections: { ...state.connections, [connection.connectionId]: connection } };
    }
    case 'ConnectionUnregistered': {
      const id = event.data.connectionId;
      // Object.fromEntries defines own properties, so even an id like "__proto__" is handled as data.
      const connections = Object.fromEntries(Object.entries(state.connections).filter(([key]) => key !== id));
      return { ...state, connections };
    }
    case 'TunnelBecameInactive':
      return state;
    case 'DnsCleanupScheduled':
      return { ...state, pendingCleanup: { dueAt: event.data.dueAt } };
    case 'DnsCleanupCancelled':
      return { ...state, pendingCleanup: null };
    case 'DnsCleanupDue':
      return { ...state, pendingCleanup: null, cleanupDueAt: event.data.dueAt };
    default: {
      // Compile time: every event type is handled. Run time: a type written by a newer version is ignored.
      const _exhaustive: never = event;
      return state;
    }
  }
}

export function decide(command: TunnelCommand, state: TunnelState): TunnelEvent[] {
  if (state.status !== 'absent' && state.tunnelId !== command.tunnelId) {
    throw new WarrenError(
      'bad_request',
      `command for tunnel ${command.tunnelId} sent to tunnel ${state.tunnelId}`,
    );
  }
  switch (command.type) {
    case 'CreateTunnel': {
      if (state.status === 'deleted') throw deleted(command.tunnelId);
      const { tunnelId, name, accountId, quick, now } = command;
      const hostname = command.hostname ?? null;
      if (state.status === 'active') {
        const same =
          state.name === name &&
          state.accountId === accountId &&
          state.quick === quick &&
          state.hostname === hostname;
        if (same) return [];
        throw new WarrenError('bad_request', `tunnel ${tunnelId} already exists`);
      }
      return [
        { type: 'TunnelCreated', data: { tunnelId, name, accountId, quick, hostname, createdAt: now } },
      ];
    }
    case 'RegisterConnection': {
      if (state.status === 'absent') throw absent(command.tunnelId);
      if (state.status === 'deleted') throw deleted(command.tunnelId);
      if (Object.hasOwn(state.connections, command.connectionId)) return [];
      const limit = command.accountLimit;
      const becomesActive = Object.keys(state.connections).length === 0;
      if (limit && becomesActive && limit.activeTunnels >= limit.maxActiveTunnels) {
        throw new WarrenError(
          'account_tunnel_limit',
          `this account already runs ${limit.activeTunnels} tunnels, its limit is ${limit.maxActiveTunnels}; stop or delete one, or ask the edge operator to raise --account-tunnel-limit`,
        );
      }
      const cancelled: TunnelEvent[] = state.pendingCleanup
        ? [
            {
              type: 'DnsCleanupCancelled',
              data: {
                tunnelId: command.tunnelId,
                dueAt: state.pendingCleanup.dueAt,
                cancelledAt: command.now,
              },
            },
          ]
        : [];
      // Fields listed one by one: what is stored must not grow with whatever else a caller passes.
      const c = command;
      const data = {
        tunnelId: c.tunnelId,
        connectionId: c.connectionId,
        connIndex: c.connIndex,
        pop: c.pop,
        clientVersion: c.clientVersion,
        clientOs: c.clientOs,
        clientArch: c.clientArch,
        originIp: c.originIp,
        connectorId: c.connectorId ?? '',
        registeredAt: c.now,
      };
      return [...cancelled, { type: 'ConnectionRegistered', data }];
    }
    case 'UnregisterConnection': {
      if (!Object.hasOwn(state.connections, command.connectionId)) return [];
      const { tunnelId, connectionId, reason, now } = command;
      const events: TunnelEvent[] = [
        { type: 'ConnectionUnregistered', data: { tunnelId, connectionId, reason, unregisteredAt: now } },
      ];
      if (Object.keys(state.connections).length === 1) {
        events.push({ type: 'TunnelBecameInactive', data: { tunnelId, inactiveAt: now } });
        const delay = command.cleanupDelayMs;
        if (delay !== undefined && !state.quick && state.status === 'active') {
          if (!Number.isSafeInteger(delay) || delay < 0) {
            throw new WarrenError('bad_request', `cleanupDelayMs must be an integer >= 0, not ${delay}`);
          }
          events.push({
            type: 'DnsCleanupScheduled',
            data: { tunnelId, dueAt: now + delay, scheduledAt: now },
          });
        }
      }
      return events;
    }
    case 'FireDnsCleanup': {
      const { tunnelId, dueAt, now } = command;
      // Cancelled, already fired, or a timer from before a re-schedule: nothing to do. Never early.
      if (state.pendingCleanup?.dueAt !== dueAt || now < dueAt) return [];
      return [{ type: 'DnsCleanupDue', data: { tunnelId, dueAt, firedAt: now } }];
    }
    case 'DeleteTunnel': {
      if (state.status === 'absent') throw absent(command.tunnelId);
      if (state.status === 'deleted') return [];
      const { tunnelId, now } = command;
      const live = Object.keys(state.connections).length;
      if (live > 0 && !command.force) {
        throw new WarrenError(
          'tunnel_active',
          `tunnel ${state.name ?? tunnelId} has ${live} live connection${live === 1 ? '' : 's'}; stop its agents first or delete with --force`,
        );
      }
      const unregistered: TunnelEvent[] = Object.keys(state.connections).map((connectionId) => ({
        type: 'ConnectionUnregistered',
        data: { tunnelId, connectionId, reason: 'revoked', unregisteredAt: now },
      }));
      const cancelled: TunnelEvent[] = state.pendingCleanup
        ? [
            {
              type: 'DnsCleanupCancelled',
              data: { tunnelId, dueAt: state.pendingCleanup.dueAt, cancelledAt: now },
            },
          ]
        : [];
      return [...unregistered, ...cancelled, { type: 'TunnelDeleted', data: { tunnelId, deletedAt: now } }];
    }
    default: {
      const _exhaustive: never = command;
      throw new WarrenError('bad_request', `unknown tunnel command ${(command as { type: string }).type}`);
    }
  }
}

export const tunnelDecider: Decider<TunnelCommand, TunnelEvent, TunnelState> = {
  decide,
  evolve,
  initialState,
};

function absent(tunnelId: string): WarrenError {
  return new WarrenError('bad_request', `tunnel ${tunnelId} does not exist`);
}

function deleted(tunnelId: string): WarrenError {
  return new WarrenError('tunnel_deleted', `tunnel ${tunnelId} has been deleted`);
}
