import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  type AccountCommand,
  type AccountCreated,
  type AccountEvent,
  type ApiTokenIssued,
  type ApiTokenRevoked,
  type ApiTokenRolled,
  accountDecider,
  accountStream,
  decide,
  evolve,
  initialState,
  type TunnelNameClaimed,
  type TunnelNameReleased,
} from '../../src/events/account.ts';
import { WarrenError } from '../../src/shared/errors.ts';
import { deciderSpec, throughStoredFormat } from '../support/decider-spec.ts';

const A = 'acc-1';
const NOW = Date.UTC(2026, 0, 1);

const createAccount: AccountCommand = {
  type: 'CreateAccount',
  accountId: A,
  name: 'Acme',
  operator: false,
  now: NOW,
};

const accountCreated: AccountCreated = {
  type: 'AccountCreated',
  data: { accountId: A, name: 'Acme', operator: false, createdAt: NOW },
};

function issue(tokenId: string, member: string, tokenHash = `hash-${tokenId}`): AccountCommand {
  return { type: 'IssueApiToken', accountId: A, tokenId, member, role: 'member', tokenHash, now: NOW + 1 };
}

function issued(tokenId: string, member: string, tokenHash = `hash-${tokenId}`): ApiTokenIssued {
  return {
    type: 'ApiTokenIssued',
    data: { accountId: A, tokenId, member, role: 'member', tokenHash, issuedAt: NOW + 1 },
  };
}

function roll(tokenId: string, newTokenId: string, tokenHash = `hash-${newTokenId}`): AccountCommand {
  return { type: 'RollApiToken', accountId: A, tokenId, newTokenId, tokenHash, now: NOW + 2 };
}

function rolled(tokenId: string, newTokenId: string, tokenHash = `hash-${newTokenId}`): ApiTokenRolled {
  return {
    type: 'ApiTokenRolled',
    data: { accountId: A, tokenId, newTokenId, tokenHash, rolledAt: NOW + 2 },
  };
}

const revoke = (tokenId: string): AccountCommand => ({
  type: 'RevokeApiToken',
  accountId: A,
  tokenId,
  now: NOW + 3,
});

const revoked = (tokenId: string): ApiTokenRevoked => ({
  type: 'ApiTokenRevoked',
  data: { accountId: A, tokenId, revokedAt: NOW + 3 },
});

const claim = (name: string, tunnelId: string): AccountCommand => ({
  type: 'ClaimTunnelName',
  accountId: A,
  name,
  tunnelId,
  now: NOW + 4,
});

const claimed = (name: string, tunnelId: string): TunnelNameClaimed => ({
  type: 'TunnelNameClaimed',
  data: { accountId: A, name, tunnelId, claimedAt: NOW + 4 },
});

const release = (name: string, tunnelId: string): AccountCommand => ({
  type: 'ReleaseTunnelName',
  accountId: A,
  name,
  tunnelId,
  now: NOW + 5,
});

const released = (name: string, tunnelId: string): TunnelNameReleased => ({
  type: 'TunnelNameReleased',
  data: { accountId: A, name, tunnelId, releasedAt: NOW + 5 },
});

const certificate = (tokenId: string): AccountCommand => ({
  type: 'RecordOriginCertificate',
  accountId: A,
  serial: '0a1b2c',
  zone: 'example.com',
  tokenId,
  notAfter: NOW + 10 * 365 * 86_400_000,
  now: NOW + 6,
});

/** An account with one member, alice, holding token tok-a. */
const withAlice: AccountEvent[] = [accountCreated, issued('tok-a', 'alice')];

const { fold, given } = deciderSpec(accountDecider);

describe('account decider', () => {
  it('names the stream account-<id>', () => {
    assert.equal(accountStream(A), `account-${A}`);
  });

  describe('CreateAccount', () => {
    it('creates an absent account, stamped with the command time', () => {
      given([]).when(createAccount).emits([accountCreated]);
    });

    it('is a no-op when the same account is created again (a retry)', () => {
      given([accountCreated]).when(createAccount).emits([]);
    });

    it('refuses a different account under the same id with already_exists', () => {
      given([accountCreated])
        .when({ ...createAccount, name: 'Other' })
        .refused('already_exists');
      given([accountCreated])
        .when({ ...createAccount, operator: true })
        .refused('already_exists');
    });
  });

  describe('any other command', () => {
    const others: AccountCommand[] = [
      issue('tok-a', 'alice'),
      roll('tok-a', 'tok-b'),
      revoke('tok-a'),
      certificate('tok-a'),
      claim('web', 't-1'),
      release('web', 't-1'),
    ];

    it('is refused with not_found while the account does not exist', () => {
      for (const command of others) given([]).when(command).refused('not_found');
    });

    it('is refused with bad_request when addressed to another account', () => {
      for (const command of [...others, createAccount]) {
        given(withAlice)
          .when({ ...command, accountId: 'acc-2' })
          .refused('bad_request');
      }
    });
  });

  describe('IssueApiToken', () => {
    it('issues a token to a new member', () => {
      given([accountCreated])
        .when(issue('tok-a', 'alice'))
        .emits([issued('tok-a', 'alice')]);
      given(withAlice)
        .when(issue('tok-b', 'bob'))
        .emits([issued('tok-b', 'bob')]);
    });

    it('is a no-op when the same token is issued again (a retry)', () => {
      given(withAlice).when(issue('tok-a', 'alice')).emits([]);
    });

    it('refuses another token under a live token id', () => {
      given(withAlice)
        .when(issue('tok-a', 'bob', 'another-hash'))
        .refused('already_exists');
    });

    it('refuses a second live token for the same member', () => {
      given(withAlice).when(issue('tok-b', 'alice')).refused('already_exists');
      // Rolling keeps the member: the new token still counts.
      given([...withAlice, rolled('tok-a', 'tok-b')])
        .when(issue('tok-c', 'alice'))
        .refused('already_exists');
    });

    it('issues a token again to a member whose token was revoked', () => {
      given([...withAlice, revoked('tok-a')])
        .when(issue('tok-c', 'alice'))
        .emits([issued('tok-c', 'alice')]);
    });

    it('refuses a token id that was retired: it must keep telling its holder to log in again', () => {
      given([...withAlice, revoked('tok-a')])
        .when(issue('tok-a', 'alice'))
        .refused('already_exists');
      given([...withAlice, rolled('tok-a', 'tok-b')])
        .when(issue('tok-a', 'bob'))
        .refused('already_exists');
    });
  });

  describe('RollApiToken', () => {
    it('replaces a live token with a new one for the same member and role', () => {
      given(withAlice)
        .when(roll('tok-a', 'tok-b'))
        .emits([rolled('tok-a', 'tok-b')]);
      const state = fold([...withAlice, rolled('tok-a', 'tok-b')]);
      assert.deepEqual(state.tokens, {
        'tok-b': {
          tokenId: 'tok-b',
          member: 'alice',
          role: 'member',
          tokenHash: 'hash-tok-b',
          issuedAt: NOW + 2,
        },
      });
      assert.deepEqual(state.retiredTokens, ['tok-a']);
    });

    it('is a no-op when the same roll is asked again (a retry)', () => {
      given([...withAlice, rolled('tok-a', 'tok-b')])
        .when(roll('tok-a', 'tok-b'))
        .emits([]);
    });

    it('refuses an unknown token with not_found', () => {
      given(withAlice).when(roll('tok-x', 'tok-b')).refused('not_found');
    });

    it('refuses a token that was revoked or already rolled to another one', () => {
      given([...withAlice, revoked('tok-a')])
        .when(roll('tok-a', 'tok-b'))
        .refused('not_found');
      given([...withAlice, rolled('tok-a', 'tok-b')])
        .when(roll('tok-a', 'tok-c'))
        .refused('not_found');
    });

    it("does not take a retired token's roll for a retry when the new id is someone else's", () => {
      given([...withAlice, issued('tok-b', 'bob'), revoked('tok-a')])
        .when(roll('tok-a', 'tok-b', 'hash-of-a-new-secret'))
        .refused('not_found');
    });

    it("refuses to roll onto a token id in use, which would take over another member's token", () => {
      given([...withAlice, issued('tok-b', 'bob')])
        .when(roll('tok-a', 'tok-b'))
        .refused('already_exists');
      given(withAlice).when(roll('tok-a', 'tok-a')).refused('already_exists');
      given([...withAlice, issued('tok-b', 'bob'), revoked('tok-b')])
        .when(roll('tok-a', 'tok-b'))
        .refused('already_exists');
    });

    it('rolls a rolled token on', () => {
      given([...withAlice, rolled('tok-a', 'tok-b')])
        .when(roll('tok-b', 'tok-c'))
        .emits([rolled('tok-b', 'tok-c')]);
    });
  });

  describe('RevokeApiToken', () => {
    it('revokes a live token, which is then retired', () => {
      given(withAlice)
        .when(revoke('tok-a'))
        .emits([revoked('tok-a')]);
      const state = fold([...withAlice, revoked('tok-a')]);
      assert.deepEqual(state.tokens, {});
      assert.deepEqual(state.retiredTokens, ['tok-a']);
    });

    it('refuses an unknown token with not_found', () => {
      given(withAlice).when(revoke('tok-x')).refused('not_found');
    });

    it('is a no-op for a token already retired, by revocation or by a roll', () => {
      given([...withAlice, revoked('tok-a')])
        .when(revoke('tok-a'))
        .emits([]);
      given([...withAlice, rolled('tok-a', 'tok-b')])
        .when(revoke('tok-a'))
        .emits([]);
    });
  });

  describe('RecordOriginCertificate', () => {
    it('records a certificate issued with a live token, and changes no state', () => {
      given(withAlice)
        .when(certificate('tok-a'))
        .emits([
          {
            type: 'OriginCertificateIssued',
            data: {
              accountId: A,
              serial: '0a1b2c',
              zone: 'example.com',
              tokenId: 'tok-a',
              notAfter: NOW + 10 * 365 * 86_400_000,
              issuedAt: NOW + 6,
            },
          },
        ]);
      const state = fold(withAlice);
      assert.equal(evolve(state, decide(certificate('tok-a'), state)[0]!), state);
    });

    it('refuses an unknown or retired token with not_found', () => {
      given(withAlice).when(certificate('tok-x')).refused('not_found');
      given([...withAlice, revoked('tok-a')])
        .when(certificate('tok-a'))
        .refused('not_found');
    });
  });

  describe('tunnel names', () => {
    it('claims a free name', () => {
      given([accountCreated])
        .when(claim('web', 't-1'))
        .emits([claimed('web', 't-1')]);
      assert.deepEqual(fold([accountCreated, claimed('web', 't-1')]).tunnelNames, { web: 't-1' });
    });

    it('is a no-op when the same tunnel claims its name again (a retry)', () => {
      given([accountCreated, claimed('web', 't-1')])
        .when(claim('web', 't-1'))
        .emits([]);
    });

    it('refuses a name another tunnel holds with already_exists', () => {
      given([accountCreated, claimed('web', 't-1')])
        .when(claim('web', 't-2'))
        .refused('already_exists');
    });

    it('releases a name held by the tunnel, which another tunnel may then claim', () => {
      const held = [accountCreated, claimed('web', 't-1')];
      given(held)
        .when(release('web', 't-1'))
        .emits([released('web', 't-1')]);
      given([...held, released('web', 't-1')])
        .when(claim('web', 't-2'))
        .emits([claimed('web', 't-2')]);
    });

    it('releases nothing when the name is free or held by another tunnel', () => {
      given([accountCreated]).when(release('web', 't-1')).emits([]);
      given([accountCreated, claimed('web', 't-2')])
        .when(release('web', 't-1'))
        .emits([]);
      given([accountCreated, claimed('web', 't-1'), released('web', 't-1')])
        .when(release('web', 't-1'))
        .emits([]);
    });

    it('treats names of Object.prototype members as data', () => {
      given([accountCreated])
        .when(claim('constructor', 't-1'))
        .emits([claimed('constructor', 't-1')]);
      given([accountCreated]).when(release('toString', 't-1')).emits([]);
      assert.deepEqual(fold([accountCreated, claimed('__proto__', 't-1')]).tunnelNames, {
        ['__proto__']: 't-1',
      });
    });
  });

  describe('evolve', () => {
    it('folds an account', () => {
      const state = fold([accountCreated, issued('tok-a', 'alice'), claimed('web', 't-1')]);
      assert.equal(state.status, 'active');
      assert.equal(state.accountId, A);
      assert.equal(state.name, 'Acme');
      assert.equal(state.createdAt, NOW);
      assert.deepEqual(Object.keys(state.tokens), ['tok-a']);
    });

    it('never changes the state it is given', () => {
      const before = fold([...withAlice, issued('tok-b', 'bob'), claimed('web', 't-1')]);
      const snapshot = structuredClone(before);
      for (const e of [
        rolled('tok-a', 'tok-c'),
        revoked('tok-b'),
        released('web', 't-1'),
        issued('tok-d', 'd'),
      ]) {
        evolve(before, e);
      }
      assert.deepEqual(before, snapshot);
    });

    it('ignores event types it does not know (written by a newer version)', () => {
      const state = fold(withAlice);
      assert.equal(evolve(state, { type: 'FromTheFuture', data: {} } as unknown as AccountEvent), state);
    });
  });

  it('folds to the same state after the log went through the stored format', () => {
    const tokenId = fc.constantFrom('tok-a', 'tok-b', 'tok-c', 'constructor');
    const text = fc.string({ unit: 'grapheme', maxLength: 12 });
    const now = fc.integer({ min: 0, max: 2 ** 45 });
    const accountId = fc.constantFrom(A, A, A, 'acc-2');
    const command: fc.Arbitrary<AccountCommand> = fc.oneof(
      fc.record(
        { type: fc.constant('CreateAccount' as const), accountId, name: text, operator: fc.boolean(), now },
        { noNullPrototype: true },
      ),
      fc.record(
        {
          type: fc.constant('IssueApiToken' as const),
          accountId,
          tokenId,
          member: fc.constantFrom('alice', 'bob', 'carol'),
          role: fc.constantFrom('admin' as const, 'member' as const),
          tokenHash: text,
          now,
        },
        { noNullPrototype: true },
      ),
      fc.record(
        {
          type: fc.constant('RollApiToken' as const),
          accountId,
          tokenId,
          newTokenId: tokenId,
          tokenHash: text,
          now,
        },
        { noNullPrototype: true },
      ),
      fc.record(
        { type: fc.constant('RevokeApiToken' as const), accountId, tokenId, now },
        { noNullPrototype: true },
      ),
      fc.record(
        {
          type: fc.constant('RecordOriginCertificate' as const),
          accountId,
          serial: text,
          zone: text,
          tokenId,
          notAfter: now,
          now,
        },
        { noNullPrototype: true },
      ),
      fc.record(
        {
          type: fc.constantFrom('ClaimTunnelName' as const, 'ReleaseTunnelName' as const),
          accountId,
          name: fc.constantFrom('web', 'api', 'toString'),
          tunnelId: fc.constantFrom('t-1', 't-2'),
          now,
        },
        { noNullPrototype: true },
      ),
    );
    fc.assert(
      fc.property(fc.array(command, { maxLength: 30 }), (commands) => {
        const log: AccountEvent[] = [];
        let state = initialState();
        for (const c of commands) {
          let events: AccountEvent[];
          try {
            events = decide(c, state);
          } catch (err) {
            assert.ok(err instanceof WarrenError);
            continue;
          }
          for (const e of events) {
            log.push(e);
            state = evolve(state, e);
          }
        }
        // A member never holds two live tokens, and a retired id never comes back to life.
        const members = Object.values(state.tokens).map((t) => t.member);
        assert.equal(new Set(members).size, members.length);
        for (const id of state.retiredTokens) assert.ok(!Object.hasOwn(state.tokens, id));
        const roundTripped = throughStoredFormat(accountStream(A), log);
        assert.deepEqual(fold(roundTripped), state);
      }),
      { numRuns: 200 },
    );
  });
});
