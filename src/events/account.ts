/**
 * The account stream (`account-<id>`): an account, its API tokens (one per member), the origin
 * certificates issued to it and the names of its tunnels. Pure: no I/O, no clock reads; time arrives
 * as `now`, ids and token hashes are drawn by the caller. Only hashes of tokens are ever stored.
 *
 * Tunnel names are claimed here, not in the tunnel streams, so that two concurrent `tunnel create`
 * calls with the same name cannot both succeed: the account stream's expected version decides.
 */
import { WarrenError } from '../shared/errors.ts';
import type { Decider } from './decider.ts';

export function accountStream(accountId: string): string {
  return `account-${accountId}`;
}

// ---- Events (stored forever: never rename a type or a field; add an upcaster instead) ----

export type TokenRole = 'admin' | 'member';

export interface AccountCreated {
  type: 'AccountCreated';
  /** `operator`: the account made by `warren edge init`; its admins may create other accounts. */
  data: { accountId: string; name: string; operator: boolean; createdAt: number };
}

export interface ApiTokenIssued {
  type: 'ApiTokenIssued';
  /** `member`: who holds the token (a person or a machine); unique among the account's live tokens. */
  data: {
    accountId: string;
    tokenId: string;
    member: string;
    role: TokenRole;
    tokenHash: string;
    issuedAt: number;
  };
}

/** The member's old token stops working; `newTokenId` replaces it with the same member and role. */
export interface ApiTokenRolled {
  type: 'ApiTokenRolled';
  data: { accountId: string; tokenId: string; newTokenId: string; tokenHash: string; rolledAt: number };
}

/** The member was removed: the token stops working and is not replaced. */
export interface ApiTokenRevoked {
  type: 'ApiTokenRevoked';
  data: { accountId: string; tokenId: string; revokedAt: number };
}

export interface OriginCertificateIssued {
  type: 'OriginCertificateIssued';
  data: {
    accountId: string;
    serial: string;
    zone: string;
    tokenId: string;
    notAfter: number;
    issuedAt: number;
  };
}

export interface TunnelNameClaimed {
  type: 'TunnelNameClaimed';
  data: { accountId: string; name: string; tunnelId: string; claimedAt: number };
}

export interface TunnelNameReleased {
  type: 'TunnelNameReleased';
  data: { accountId: string; name: string; tunnelId: string; releasedAt: number };
}

export type AccountEvent =
  | AccountCreated
  | ApiTokenIssued
  | ApiTokenRolled
  | ApiTokenRevoked
  | OriginCertificateIssued
  | TunnelNameClaimed
  | TunnelNameReleased;

// ---- Commands ----

export interface CreateAccount {
  type: 'CreateAccount';
  accountId: string;
  name: string;
  operator: boolean;
  now: number;
}

export interface IssueApiToken {
  type: 'IssueApiToken';
  accountId: string;
  tokenId: string;
  member: string;
  role: TokenRole;
  tokenHash: string;
  now: number;
}

export interface RollApiToken {
  type: 'RollApiToken';
  accountId: string;
  tokenId: string;
  newTokenId: string;
  tokenHash: string;
  now: number;
}

export interface RevokeApiToken {
  type: 'RevokeApiToken';
  accountId: string;
  tokenId: string;
  now: number;
}

export interface RecordOriginCertificate {
  type: 'RecordOriginCertificate';
  accountId: string;
  serial: string;
  zone: string;
  tokenId: string;
  notAfter: number;
  now: number;
}

export interface ClaimTunnelName {
  type: 'ClaimTunnelName';
  accountId: string;
  name: string;
  tunnelId: string;
  now: number;
}

export interface ReleaseTunnelName {
  type: 'ReleaseTunnelName';
  accountId: string;
  name: string;
  tunnelId: string;
  now: number;
}

export type AccountCommand =
  | CreateAccount
  | IssueApiToken
  | RollApiToken
  | RevokeApiToken
  | RecordOriginCertificate
  | ClaimTunnelName
  | ReleaseTunnelName;

// ---- State ----

export interface AccountToken {
  tokenId: string;
  member: string;
  role: TokenRole;
  tokenHash: string;
  issuedAt: number;
}

export interface AccountState {
  status: 'absent' | 'active';
  accountId: string | null;
  name: string | null;
  operator: boolean;
  createdAt: number | null;
  /** Live tokens by id. */
  tokens: Readonly<Record<string, AccountToken>>;
  /** Ids of tokens that were rolled or revoked: requests with them are told to log in again. */
  retiredTokens: readonly string[];
  /** Tunnel name → tunnel id, for tunnels not deleted. */
  tunnelNames: Readonly<Record<string, string>>;
}

export function initialState(): AccountState {
  return {
    status: 'absent',
    accountId: null,
    name: null,
    operator: false,
    createdAt: null,
    tokens: {},
    retiredTokens: [],
    tunnelNames: {},
  };
}

/** A copy of `record` without `key`, built with own properties so a key like "__proto__" is data. */
function without<T>(record: Readonly<Record<string, T>>, key: string): Record<string, T> {
  return Object.fromEntries(Object.entries(record).filter(([k]) => k !== key));
}

function with_<T>(record: Readonly<Record<string, T>>, key: string, value: T): Record<string, T> {
  return Object.fromEntries([...Object.entries(record).filter(([k]) => k !== key), [key, value]]);
}

export function evolve(state: AccountState, event: AccountEvent): AccountState {
  switch (event.type) {
    case 'AccountCreated': {
      const { accountId, name, operator, createdAt } = event.data;
      return { ...state, status: 'active', accountId, name, operator, createdAt };
    }
    case 'ApiTokenIssued': {
      const { tokenId, member, role, tokenHash, issuedAt } = event.data;
      return {
        ...state,
        tokens: with_(state.tokens, tokenId, { tokenId, member, role, tokenHash, issuedAt }),
      };
    }
    case 'ApiTokenRolled': {
      const { tokenId, newTokenId, tokenHash, rolledAt } = event.data;
      const old = Object.hasOwn(state.tokens, tokenId) ? state.tokens[tokenId] : undefined;
      if (!old) return state;
      const next = { ...old, tokenId: newTokenId, tokenHash, issuedAt: rolledAt };
      return {
        ...state,
        tokens: with_(without(state.tokens, tokenId), newTokenId, next),
        retiredTokens: [...state.retiredTokens, tokenId],
      };
    }
    case 'ApiTokenRevoked': {
      const { tokenId } = event.data;
      return {
        ...state,
        tokens: without(state.tokens, tokenId),
        retiredTokens: [...state.retiredTokens, tokenId],
      };
    }
    case 'OriginCertificateIssued':
      return state;
    case 'TunnelNameClaimed':
      return { ...state, tunnelNames: with_(state.tunnelNames, event.data.name, event.data.tunnelId) };
    case 'TunnelNameReleased':
      return { ...state, tunnelNames: without(state.tunnelNames, event.data.name) };
    default: {
      const _exhaustive: never = event;
      return state;
    }
  }
}

export function decide(command: AccountCommand, state: AccountState): AccountEvent[] {
  if (state.status !== 'absent' && state.accountId !== command.accountId) {
    throw new WarrenError(
      'bad_request',
      `command for account ${command.accountId} sent to account ${state.accountId}`,
    );
  }
  if (command.type === 'CreateAccount') {
    const { accountId, name, operator, now } = command;
    if (state.status === 'active') {
      if (state.name === name && state.operator === operator) return [];
      throw new WarrenError('already_exists', `account ${accountId} already exists`);
    }
    return [{ type: 'AccountCreated', data: { accountId, name, operator, createdAt: now } }];
  }
  if (state.status === 'absent')
    throw new WarrenError('not_found', `account ${command.accountId} does not exist`);
  switch (command.type) {
    case 'IssueApiToken': {
      const { accountId, tokenId, member, role, tokenHash, now } = command;
      if (Object.hasOwn(state.tokens, tokenId)) {
        if (state.tokens[tokenId]?.tokenHash === tokenHash) return [];
        throw new WarrenError('already_exists', `token ${tokenId} already exists`);
      }
      // A retired id stays retired, so its old holder keeps being told to log in again.
      if (state.retiredTokens.includes(tokenId)) {
        throw new WarrenError('already_exists', `token ${tokenId} was used before`);
      }
      if (Object.values(state.tokens).some((t) => t.member === member)) {
        throw new WarrenError(
          'already_exists',
          `member "${member}" already has a token; roll it or remove the member first`,
        );
      }
      return [
        { type: 'ApiTokenIssued', data: { accountId, tokenId, member, role, tokenHash, issuedAt: now } },
      ];
    }
    case 'RollApiToken': {
      const { accountId, tokenId, newTokenId, tokenHash, now } = command;
      const current = Object.hasOwn(state.tokens, newTokenId) ? state.tokens[newTokenId] : undefined;
      // A retry of this very roll: the old token is retired and the new one is live with this hash.
      if (current?.tokenHash === tokenHash && state.retiredTokens.includes(tokenId)) return [];
      if (!Object.hasOwn(state.tokens, tokenId)) throw noToken(tokenId);
      // Rolling onto a live id would hand another member's token to this one; onto a retired id, revive it.
      if (current || state.retiredTokens.includes(newTokenId)) {
        throw new WarrenError('already_exists', `token ${newTokenId} was used before`);
      }
      return [{ type: 'ApiTokenRolled', data: { accountId, tokenId, newTokenId, tokenHash, rolledAt: now } }];
    }
    case 'RevokeApiToken': {
      const { accountId, tokenId, now } = command;
      if (state.retiredTokens.includes(tokenId)) return [];
      if (!Object.hasOwn(state.tokens, tokenId)) throw noToken(tokenId);
      return [{ type: 'ApiTokenRevoked', data: { accountId, tokenId, revokedAt: now } }];
    }
    case 'RecordOriginCertificate': {
      const { accountId, serial, zone, tokenId, notAfter, now } = command;
      if (!Object.hasOwn(state.tokens, tokenId)) throw noToken(tokenId);
      return [
        {
          type: 'OriginCertificateIssued',
          data: { accountId, serial, zone, tokenId, notAfter, issuedAt: now },
        },
      ];
    }
    case 'ClaimTunnelName': {
      const { accountId, name, tunnelId, now } = command;
      if (Object.hasOwn(state.tunnelNames, name)) {
        if (state.tunnelNames[name] === tunnelId) return [];
        throw new WarrenError(
          'already_exists',
          `a tunnel named "${name}" already exists in this account; pick another name or delete it first`,
        );
      }
      return [{ type: 'TunnelNameClaimed', data: { accountId, name, tunnelId, claimedAt: now } }];
    }
    case 'ReleaseTunnelName': {
      const { accountId, name, tunnelId, now } = command;
      if (!Object.hasOwn(state.tunnelNames, name) || state.tunnelNames[name] !== tunnelId) return [];
      return [{ type: 'TunnelNameReleased', data: { accountId, name, tunnelId, releasedAt: now } }];
    }
    default: {
      const _exhaustive: never = command;
      throw new WarrenError('bad_request', `unknown account command ${(command as { type: string }).type}`);
    }
  }
}

export const accountDecider: Decider<AccountCommand, AccountEvent, AccountState> = {
  decide,
  evolve,
  initialState,
};

function noToken(tokenId: string): WarrenError {
  return new WarrenError('not_found', `token ${tokenId} does not exist or was already retired`);
}
