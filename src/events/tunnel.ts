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
    registeredAt: number;
  };
}

export interface ConnectionUnregistered {
  type: 'ConnectionUnregistered';
  data: { tunnelId: string; connectionId: string; reason: UnregisterReason; unregisteredAt: number };
}

export type TunnelEvent = TunnelCreated | TunnelDeleted | ConnectionRegistered | ConnectionUnregistered;

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
  now: number;
}

export interface UnregisterConnection {
  type: 'UnregisterConnection';
  tunnelId: string;
  connectionId: string;
  reason: UnregisterReason;
  now: number;
}

/** Unregisters every live connection (reason `revoked`), then deletes the tunnel. */
export interface DeleteTunnel {
  type: 'DeleteTunnel';
  tunnelId: string;
  now: number;
}

export type TunnelCommand = CreateTunnel | RegisterConnection | UnregisterConnection | DeleteTunnel;

// ---- State ----

export interface TunnelConnection {
  connectionId: string;
  connIndex: number;
  pop: string;
  clientVersion: string;
  clientOs: string;
  clientArch: string;
  originIp: string;
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
  };
}

export function evolve(state: TunnelState, event: TunnelEvent): TunnelState {
  switch (event.type) {
    case 'TunnelCreated': {
      const { tunnelId, name, accountId, quick, hostname, createdAt } = event.data;
      return { ...state, status: 'active', tunnelId, name, accountId, quick, hostname, createdAt };
    }
    case 'TunnelDeleted':
      return { ...state, status: 'deleted', connections: {} };
    case 'ConnectionRegistered': {
      const d = event.data;
      const connection: TunnelConnection = {
        connectionId: d.connectionId,
        connIndex: d.connIndex,
        pop: d.pop,
        clientVersion: d.clientVersion,
        clientOs: d.clientOs,
        clientArch: d.clientArch,
        originIp: d.originIp,
        registeredAt: d.registeredAt,
      };
      return { ...state, connections: { ...state.connections, [connection.connectionId]: connection } };
    }
    case 'ConnectionUnregistered': {
      const id = event.data.connectionId;
      // Object.fromEntries defines own properties, so even an id like "__proto__" is handled as data.
      const connections = Object.fromEntries(Object.entries(state.connections).filter(([key]) => key !== id));
      return { ...state, connections };
    }
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
        registeredAt: c.now,
      };
      return [{ type: 'ConnectionRegistered', data }];
    }
    case 'UnregisterConnection': {
      if (!Object.hasOwn(state.connections, command.connectionId)) return [];
      const { tunnelId, connectionId, reason, now } = command;
      return [
        { type: 'ConnectionUnregistered', data: { tunnelId, connectionId, reason, unregisteredAt: now } },
      ];
    }
    case 'DeleteTunnel': {
      if (state.status === 'absent') throw absent(command.tunnelId);
      if (state.status === 'deleted') return [];
      const { tunnelId, now } = command;
      const unregistered: TunnelEvent[] = Object.keys(state.connections).map((connectionId) => ({
        type: 'ConnectionUnregistered',
        data: { tunnelId, connectionId, reason: 'revoked', unregisteredAt: now },
      }));
      return [...unregistered, { type: 'TunnelDeleted', data: { tunnelId, deletedAt: now } }];
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
