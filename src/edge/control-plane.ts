/**
 * The edge's control plane: every change to accounts, tokens, tunnels, connections and DNS records
 * goes through here as a command on one of the pure deciders, and the `Directory` read model is
 * folded from the event log (catch-up at start, then live). Commands wait until the directory has
 * seen their own events, so a caller always reads its writes.
 *
 * The DNS janitor (an XState machine on the shared clock) is armed from the directory: at start for
 * every pending cleanup, then live as `DnsCleanupScheduled` / `DnsCleanupCancelled` arrive.
 */
import { createHash, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { setImmediate as setImmediatePromise } from 'node:timers/promises';
import type { Subscription } from 'rxjs';
import { type Actor, createActor, fromPromise } from 'xstate';
import { dnsJanitorMachine } from '../actors/dns-janitor.machine.ts';
import { type AccountCommand, accountDecider, accountStream, type TokenRole } from '../events/account.ts';
import type { Decider } from '../events/decider.ts';
import { Directory, type DirectoryState, type TokenView, type TunnelView } from '../events/directory.ts';
import {
  type ConnectionRecord,
  type TunnelCommand,
  tunnelDecider,
  tunnelStream,
  type UnregisterReason,
} from '../events/tunnel.ts';
import {
  type DnsDeleteReason,
  type DnsRecordOrigin,
  normalizeHostname,
  type ZoneCommand,
  zoneDecider,
  zoneStream,
} from '../events/zone.ts';
import type { Clock } from '../shared/clock.ts';
import { describeError, WarrenError } from '../shared/errors.ts';
import type { Logger } from '../shared/log.ts';
import { handleCommand, StreamStateCache } from '../store/command-handler.ts';
import type { EventLog, StoredEvent } from '../store/event-log.ts';
import {
  captureDirectoryState,
  DIRECTORY_SNAPSHOT,
  type DirectorySnapshotHeader,
  directorySnapshotPages,
  readDirectorySnapshot,
  type SnapshotAnchor,
  SnapshotRefused,
} from '../store/snapshot-codec.ts';
import type { SnapshotStore } from '../store/snapshot-store.ts';

export interface ControlPlaneComponents {
  clock: Clock;
  log: Logger;
  eventLog: EventLog;
  /** Uniform in [0, 1): the draw of each DNS cleanup deadline. Default Math.random. */
  random?: () => number;
}

export interface ControlPlaneInit {
  /** CNAME targets are `<tunnel-id>.tunnels.<edgeDomain>`. */
  edgeDomain: string;
  /** Tunnels one account may have connected at once (default 1000). */
  accountTunnelLimit: number;
  /** A tunnel's `auto` DNS records go this long after its last connection: uniform in [min, max]. */
  dnsCleanupWindowMs: { minMs: number; maxMs: number };
  maxAuditEntriesPerAccount?: number;
  /**
   * Directory snapshots, kept by the event log (LevelDB: `<data-dir>/snapshots`): start from the
   * newest one that checks out and fold only the events after it; save one at close and, in the
   * background, every `snapshotEveryEvents` events. Default true. False: fold the whole log at every
   * start and save nothing.
   */
  snapshots?: boolean;
  /**
   * Events folded (at start or live) between two background snapshots; default 100 000, bounding
   * what a start after a crash folds beyond the last snapshot. 0: snapshots only at close.
   */
  snapshotEveryEvents?: number;
}

const DEFAULT_SNAPSHOT_EVERY_EVENTS = 100_000;

/** Who is calling the API: a live token of an account. */
export interface Principal {
  accountId: string;
  tokenId: string;
  member: string;
  role: TokenRole;
  /** Admins of the operator account (made by `warren edge init`) may create accounts. */
  operator: boolean;
}

export interface NewAccount {
  accountId: string;
  zone: string;
  zoneId: string;
  member: string;
  tokenId: string;
  /** Shown once, never stored: only its hash is in the log. */
  token: string;
}

const TOKEN_PREFIX = 'wrn_';
const TUNNEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** `wrn_<16 hex id>_<43 base64url chars>`: the id finds the stored hash, the rest is the secret. */
function newToken(): { tokenId: string; token: string } {
  const tokenId = randomBytes(8).toString('hex');
  return { tokenId, token: `${TOKEN_PREFIX}${tokenId}_${randomBytes(32).toString('base64url')}` };
}

const LOGIN_AGAIN = 'run `warren login` again to get a new cert.pem';

export class ControlPlane {
  readonly directory: Directory;
  readonly #c: ControlPlaneComponents;
  readonly #init: ControlPlaneInit;
  readonly #caches = {
    account: new StreamStateCache<unknown>(),
    zone: new StreamStateCache<unknown>(),
    tunnel: new StreamStateCache<unknown>(),
  };
  /** Waiters for the directory to reach a position. */
  readonly #waiters = new Set<{ position: number; resolve: () => void; reject: (e: unknown) => void }>();
  /** The last command queued per stream (see #run). */
  readonly #streamQueues = new Map<string, Promise<unknown>>();
  /** Per-account chain that serialises registrations which could make a tunnel active (the limit). */
  readonly #limitLocks = new Map<string, Promise<unknown>>();
  #subscription: Subscription | undefined;
  #janitor: Actor<typeof dnsJanitorMachine> | undefined;
  #failed: unknown;
  #closed = false;
  /** The log's snapshot store, unless snapshots are off. */
  readonly #snapshots: SnapshotStore | undefined;
  readonly #snapshotEveryEvents: number;
  /** The last event the directory applied (null before any): what a snapshot is anchored to. */
  #anchor: SnapshotAnchor | null = null;
  /** Position of the newest snapshot loaded or started: saving again there would add nothing. */
  #snapshotPosition = 0;
  /** Events applied since that snapshot. */
  #sinceSnapshot = 0;
  /** A background snapshot is being taken: no second one starts meanwhile. */
  #snapshotting = false;
  /** Told when a tunnel is deleted, so its live sessions can be closed. */
  onTunnelDeleted: (tunnelId: string) => void = () => {};

  private constructor(components: ControlPlaneComponents, init: ControlPlaneInit) {
    this.#c = components;
    this.#init = init;
    this.#snapshots = init.snapshots === false ? undefined : components.eventLog.snapshots;
    this.#snapshotEveryEvents = init.snapshotEveryEvents ?? DEFAULT_SNAPSHOT_EVERY_EVENTS;
    if (!Number.isSafeInteger(this.#snapshotEveryEvents) || this.#snapshotEveryEvents < 0) {
      throw new WarrenError(
        'bad_config',
        `snapshotEveryEvents must be an integer >= 0, not ${this.#snapshotEveryEvents}`,
      );
    }
    this.directory = new Directory(
      init.maxAuditEntriesPerAccount === undefined
        ? {}
        : { maxAuditEntriesPerAccount: init.maxAuditEntriesPerAccount },
    );
  }

  /**
   * Loads the newest directory snapshot that checks out (if any), folds the log after it, then follows
   * the log live and arms the janitor.
   */
  static async open(components: ControlPlaneComponents, init: ControlPlaneInit): Promise<ControlPlane> {
    const cp = new ControlPlane(components, init);
    const { eventLog, log } = components;
    const started = performance.now();
    const restored = await cp.#restoreSnapshot();
    const from = cp.directory.position + 1;
    let last: StoredEvent | undefined;
    let folded = 0;
    // Unfrozen: the directory keeps no reference to the events it folds (only the last one, as the
    // anchor, which nothing changes), and freezing each one would cost about a second per million.
    for await (const e of eventLog.readAll({ fromPosition: from, frozen: false })) {
      cp.directory.apply(e);
      last = e;
      folded++;
    }
    if (last) cp.#anchor = last;
    cp.#sinceSnapshot = folded;
    log.info(
      {
        fromSnapshot: restored,
        snapshotPosition: from - 1,
        folded,
        position: cp.directory.position,
        ms: Math.round(performance.now() - started),
      },
      'directory ready',
    );
    cp.#follow();
    cp.#startJanitor();
    cp.#snapshotIfDue();
    return cp;
  }

  // ---- snapshots ----

  /** Loads the newest usable snapshot into the directory; false (and a warning per refusal) if none. */
  async #restoreSnapshot(): Promise<boolean> {
    const store = this.#snapshots;
    if (!store) return false;
    const { eventLog, log } = this.#c;
    let snapshots: Awaited<ReturnType<SnapshotStore['list']>>;
    try {
      snapshots = await store.list(DIRECTORY_SNAPSHOT);
    } catch (err) {
      log.warn({ err: describeError(err) }, 'cannot list directory snapshots; folding the whole log');
      return false;
    }
    for (const [i, snapshot] of snapshots.entries()) {
      const started = performance.now();
      try {
        if (snapshot.position > eventLog.headPosition) {
          throw new SnapshotRefused(
            'other_log',
            `it was taken at position ${snapshot.position}, past the end of the log (${eventLog.headPosition})`,
          );
        }
        const { header, state } = await readDirectorySnapshot(
          snapshot.pages(),
          { maxAuditEntriesPerAccount: this.directory.maxAuditEntriesPerAccount },
          (h) => this.#checkAnchor(h, snapshot.position),
        );
        this.directory.importState(state, header.position);
        this.#anchor = header.anchor;
        this.#snapshotPosition = header.position;
        log.info(
          { position: header.position, ms: Math.round(performance.now() - started) },
          'directory loaded from its snapshot',
        );
        return true;
      } catch (err) {
        // Never fatal and never half-applied: `importState` is the last step and replaces everything.
        log.warn(
          {
            position: snapshot.position,
            reason: err instanceof SnapshotRefused ? err.reason : 'error',
            err: describeError(err),
          },
          i + 1 < snapshots.length
            ? 'directory snapshot not used; trying an older one'
            : 'directory snapshot not used; folding the whole log',
        );
      }
    }
    return false;
  }

  /** The snapshot was taken of this log: the event it was taken after is there. */
  async #checkAnchor(h: DirectorySnapshotHeader, position: number): Promise<void> {
    if (h.position !== position) {
      throw new SnapshotRefused('corrupt', `its header says position ${h.position}, its name ${position}`);
    }
    if (h.anchor === null) return;
    let found: StoredEvent | undefined;
    for await (const e of this.#c.eventLog.readAll({ fromPosition: h.position, limit: 1 })) found = e;
    if (
      found?.stream !== h.anchor.stream ||
      found.version !== h.anchor.version ||
      found.recordedAt !== h.anchor.recordedAt
    ) {
      throw new SnapshotRefused(
        'other_log',
        `the event at position ${h.position} is not the one it was taken after: it belongs to another log`,
      );
    }
  }

  /** Starts a background snapshot when enough events went by since the last one. */
  #snapshotIfDue(): void {
    const every = this.#snapshotEveryEvents;
    if (every === 0 || this.#sinceSnapshot < every || this.#snapshotting || this.#closed) return;
    this.#snapshotting = true;
    // Out of the fold's call stack: `#onEvent` runs inside the log's publishing loop.
    setImmediate(() => {
      if (this.#closed) {
        this.#snapshotting = false;
        return;
      }
      // The copy shares everything the fold never changes (most of it), so taking it is short; the
      // pages are then written from the copy while the directory moves on.
      let saved: Promise<void>;
      try {
        saved = this.#saveSnapshot(captureDirectoryState(this.directory.exportState()));
      } catch (err) {
        this.#c.log.warn({ err: describeError(err) }, 'directory snapshot not taken');
        saved = Promise.resolve();
      }
      void saved.finally(() => {
        this.#snapshotting = false;
      });
    });
  }

  /**
   * Saves `state` (the directory's, or a copy that stays as it is) at the directory's position. The
   * pages are produced as the store writes them, yielding to the event loop between pages, so a
   * large directory does not hold up anything else. Failures are logged: a snapshot is an
   * optimisation, and the next start folds more of the log instead.
   */
  #saveSnapshot(state: DirectoryState): Promise<void> {
    const store = this.#snapshots;
    const position = this.directory.position;
    if (!store || position === 0 || position === this.#snapshotPosition) return Promise.resolve();
    this.#snapshotPosition = position;
    this.#sinceSnapshot = 0;
    const anchor = this.#anchor;
    const at = {
      position,
      anchor: anchor && { stream: anchor.stream, version: anchor.version, recordedAt: anchor.recordedAt },
      maxAuditEntriesPerAccount: this.directory.maxAuditEntriesPerAccount,
    };
    const { log } = this.#c;
    const started = performance.now();
    const pages = async function* () {
      for (const page of directorySnapshotPages(state, at)) {
        yield page;
        await setImmediatePromise();
      }
    };
    return store.save(DIRECTORY_SNAPSHOT, position, pages()).then(
      () => log.info({ position, ms: Math.round(performance.now() - started) }, 'directory snapshot saved'),
      (err: unknown) =>
        log.warn(
          { position, err: describeError(err) },
          'directory snapshot not saved; the next start folds more of the log',
        ),
    );
  }

  #follow(): void {
    const { eventLog, log } = this.#c;
    this.#subscription = eventLog.subscribe(this.directory.position + 1).subscribe({
      next: (e) => this.#onEvent(e),
      error: (err: unknown) => {
        // The log failed under us: every waiting and future command fails with the cause.
        this.#failed = err;
        log.error({ err: describeError(err) }, 'event log subscription failed');
        for (const w of this.#waiters) w.reject(err);
        this.#waiters.clear();
      },
    });
  }

  #onEvent(e: StoredEvent): void {
    this.directory.apply(e);
    this.#anchor = e;
    this.#sinceSnapshot++;
    this.#snapshotIfDue();
    const data = e.data as { tunnelId?: string; dueAt?: number };
    if (e.type === 'DnsCleanupScheduled' && data.tunnelId && data.dueAt !== undefined) {
      this.#janitor?.send({ type: 'SCHEDULE', tunnelId: data.tunnelId, dueAt: data.dueAt });
    } else if ((e.type === 'DnsCleanupCancelled' || e.type === 'TunnelDeleted') && data.tunnelId) {
      this.#janitor?.send({ type: 'CANCEL', tunnelId: data.tunnelId });
    }
    for (const w of this.#waiters) {
      if (this.directory.position >= w.position) {
        this.#waiters.delete(w);
        w.resolve();
      }
    }
  }

  /** Resolves once the directory has applied everything appended so far. */
  async #caughtUp(): Promise<void> {
    const position = this.#c.eventLog.headPosition;
    if (this.#failed) throw this.#failed;
    if (this.directory.position >= position) return;
    await new Promise<void>((resolve, reject) => this.#waiters.add({ position, resolve, reject }));
  }

  async #run<C, E extends { type: string; data: unknown }, S>(
    stream: string,
    decider: Decider<C, E, S>,
    cache: StreamStateCache<unknown>,
    command: C,
    actor: string,
  ): Promise<E[]> {
    if (this.#closed) throw new WarrenError('store_closed', 'the edge is shutting down');
    // One command at a time per stream: this process is the only writer of its log, so queueing here
    // turns what would be optimistic-concurrency retries (and, under a burst, exhausted ones) into a
    // short wait. The expected version still guards the append.
    const events = await inTurn(this.#streamQueues, stream, () =>
      handleCommand(this.#c.eventLog, stream, decider, command, { actor }, { cache }),
    );
    if (events.length > 0) await this.#caughtUp();
    return events;
  }

  #account(command: AccountCommand, actor: string) {
    return this.#run(accountStream(command.accountId), accountDecider, this.#caches.account, command, actor);
  }

  #zone(command: ZoneCommand, actor: string) {
    return this.#run(zoneStream(command.zone), zoneDecider, this.#caches.zone, command, actor);
  }

  #tunnel(command: TunnelCommand, actor: string) {
    return this.#run(tunnelStream(command.tunnelId), tunnelDecider, this.#caches.tunnel, command, actor);
  }

  get #now(): number {
    return this.#c.clock.now();
  }

  // ---- accounts and tokens ----

  get initialized(): boolean {
    return this.directory.accounts.size > 0;
  }

  /** `warren edge init`: the operator account, its zone and first admin token. Once per edge. */
  async initialize(opts: { accountName: string; zone: string; member: string }): Promise<NewAccount> {
    if (this.initialized) {
      throw new WarrenError(
        'already_exists',
        'this edge is already initialised; use the admin token printed then (or `warren account` commands)',
      );
    }
    return this.#createAccount({ ...opts, operator: true }, 'init');
  }

  /** A new account with its own zone; only operator admins may. */
  async createAccount(
    principal: Principal,
    opts: { accountName: string; zone: string; member: string },
  ): Promise<NewAccount> {
    if (!principal.operator || principal.role !== 'admin') {
      throw new WarrenError('forbidden', 'only admins of the operator account may create accounts');
    }
    return this.#createAccount({ ...opts, operator: false }, `token:${principal.tokenId}`);
  }

  async #createAccount(
    opts: { accountName: string; zone: string; member: string; operator: boolean },
    actor: string,
  ): Promise<NewAccount> {
    const zone = normalizeHostname(opts.zone);
    // Zones never nest: a name must belong to exactly one zone, so one account cannot shadow another's.
    for (const z of this.directory.zones.keys()) {
      if (z === zone || z.endsWith(`.${zone}`) || zone.endsWith(`.${z}`)) {
        throw new WarrenError(
          'already_exists',
          `zone ${zone} overlaps zone ${z}, which already belongs to an account`,
        );
      }
    }
    const member = requireMember(opts.member);
    const accountId = randomUUID();
    const zoneId = randomUUID();
    const now = this.#now;
    // Zone first: if another account claims it concurrently, nothing else has been written yet.
    await this.#zone({ type: 'AddZone', zone, zoneId, accountId, now }, actor);
    await this.#account(
      { type: 'CreateAccount', accountId, name: opts.accountName, operator: opts.operator, now },
      actor,
    );
    const { tokenId, token } = newToken();
    await this.#account(
      { type: 'IssueApiToken', accountId, tokenId, member, role: 'admin', tokenHash: hashToken(token), now },
      actor,
    );
    return { accountId, zone, zoneId, member, tokenId, token };
  }

  /**
   * Checks a bearer token. Unknown tokens and wrong secrets get the same answer; a token that was
   * rolled or whose member was removed says so, since the fix is a new login.
   */
  authenticate(bearer: string | undefined): Principal {
    const m = /^wrn_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/.exec(bearer ?? '');
    const tokenId = m?.[1] ?? '';
    const retired = this.directory.retiredTokens.get(tokenId);
    const live = this.directory.tokens.get(tokenId);
    // Compare hashes in constant time even when the id is unknown, so timing says nothing.
    const expected = Buffer.from(live?.tokenHash ?? hashToken('no token'), 'hex');
    const given = Buffer.from(hashToken(bearer ?? ''), 'hex');
    const matches = timingSafeEqual(expected, given);
    if (live && matches) {
      const account = this.directory.accounts.get(live.accountId);
      return {
        accountId: live.accountId,
        tokenId,
        member: live.member,
        role: live.role,
        operator: account?.operator ?? false,
      };
    }
    if (retired) {
      throw new WarrenError(
        'token_revoked',
        `this API token was ${retired.how === 'rolled' ? 'rolled' : 'revoked (its member was removed)'}; ${LOGIN_AGAIN}`,
      );
    }
    throw new WarrenError('unauthorized', `the API token was not accepted; ${LOGIN_AGAIN}`);
  }

  /** The principal may act on `accountId`; admin-only actions pass `admin`. */
  authorize(principal: Principal, accountId: string, need: 'member' | 'admin' = 'member'): void {
    if (principal.accountId !== accountId) {
      throw new WarrenError('forbidden', 'this token belongs to another account');
    }
    if (need === 'admin' && principal.role !== 'admin') {
      throw new WarrenError('forbidden', 'this needs an admin token of the account');
    }
  }

  async addMember(principal: Principal, accountId: string, member: string, role: TokenRole) {
    this.authorize(principal, accountId, 'admin');
    const { tokenId, token } = newToken();
    await this.#account(
      {
        type: 'IssueApiToken',
        accountId,
        tokenId,
        member: requireMember(member),
        role,
        tokenHash: hashToken(token),
        now: this.#now,
      },
      `token:${principal.tokenId}`,
    );
    return { tokenId, member, role, token };
  }

  /** A member may roll their own token; admins may roll anyone's. */
  async rollToken(principal: Principal, accountId: string, tokenId: string) {
    this.authorize(principal, accountId, tokenId === principal.tokenId ? 'member' : 'admin');
    const old = this.#tokenOf(accountId, tokenId);
    const next = newToken();
    await this.#account(
      {
        type: 'RollApiToken',
        accountId,
        tokenId,
        newTokenId: next.tokenId,
        tokenHash: hashToken(next.token),
        now: this.#now,
      },
      `token:${principal.tokenId}`,
    );
    return { tokenId: next.tokenId, member: old.member, role: old.role, token: next.token };
  }

  async removeMember(principal: Principal, accountId: string, tokenId: string): Promise<void> {
    this.authorize(principal, accountId, 'admin');
    this.#tokenOf(accountId, tokenId);
    await this.#account(
      { type: 'RevokeApiToken', accountId, tokenId, now: this.#now },
      `token:${principal.tokenId}`,
    );
  }

  #tokenOf(accountId: string, tokenId: string): TokenView {
    const t = this.directory.tokens.get(tokenId);
    if (!t || t.accountId !== accountId)
      throw new WarrenError('not_found', `no live token ${tokenId} in this account`);
    return t;
  }

  members(principal: Principal, accountId: string) {
    this.authorize(principal, accountId);
    return [...this.directory.tokens.values()]
      .filter((t) => t.accountId === accountId)
      .map(({ tokenId, member, role, issuedAt }) => ({ tokenId, member, role, issuedAt }));
  }

  async recordOriginCertificate(
    principal: Principal,
    cert: { serial: string; zone: string; notAfter: number },
  ): Promise<void> {
    await this.#account(
      {
        type: 'RecordOriginCertificate',
        accountId: principal.accountId,
        serial: cert.serial,
        zone: cert.zone,
        tokenId: principal.tokenId,
        notAfter: cert.notAfter,
        now: this.#now,
      },
      `token:${principal.tokenId}`,
    );
  }

  /** The zone a principal may log in for (their account's; `zone` picks one if it has several). */
  zoneFor(principal: Principal, zone?: string) {
    const zones = [...this.directory.zones.values()].filter((z) => z.accountId === principal.accountId);
    const picked = zone === undefined ? zones[0] : zones.find((z) => z.zone === normalizeHostname(zone));
    if (!picked) {
      throw new WarrenError(
        zone === undefined ? 'not_found' : 'forbidden',
        zone === undefined ? 'this account has no zone' : `zone ${zone} is not one of this account's zones`,
      );
    }
    return picked;
  }

  // ---- tunnels ----

  async createQuickTunnel(hostname: string): Promise<string> {
    const tunnelId = randomUUID();
    await this.#tunnel(
      {
        type: 'CreateTunnel',
        tunnelId,
        name: hostname,
        accountId: null,
        quick: true,
        hostname,
        now: this.#now,
      },
      'quick-tunnel',
    );
    return tunnelId;
  }

  async createTunnel(principal: Principal, accountId: string, name: string): Promise<TunnelView> {
    this.authorize(principal, accountId);
    if (typeof name !== 'string' || !TUNNEL_NAME.test(name)) {
      throw new WarrenError(
        'bad_request',
        `"${name}" is not a valid tunnel name: use 1-64 letters, digits, '.', '_' or '-'`,
      );
    }
    if (UUID.test(name)) {
      throw new WarrenError(
        'bad_request',
        `"${name}" looks like a tunnel ID; pick a name that is not a UUID`,
      );
    }
    const tunnelId = randomUUID();
    const actor = `token:${principal.tokenId}`;
    const now = this.#now;
    // The name is claimed on the account stream first, so two creates with one name cannot both win.
    await this.#account({ type: 'ClaimTunnelName', accountId, name, tunnelId, now }, actor);
    await this.#tunnel({ type: 'CreateTunnel', tunnelId, name, accountId, quick: false, now }, actor);
    return this.directory.tunnels.get(tunnelId)!;
  }

  /** A tunnel of the account by id or name (deleted ones only by id). */
  findTunnel(principal: Principal, accountId: string, ref: string): TunnelView {
    this.authorize(principal, accountId);
    const t = UUID.test(ref)
      ? this.directory.tunnels.get(ref.toLowerCase())
      : this.directory.tunnelByName(accountId, ref);
    if (!t || t.accountId !== accountId)
      throw new WarrenError('not_found', `no tunnel "${ref}" in this account`);
    return t;
  }

  listTunnels(
    principal: Principal,
    accountId: string,
    opts: { name?: string; includeDeleted?: boolean } = {},
  ) {
    this.authorize(principal, accountId);
    return [...this.directory.tunnels.values()].filter(
      (t) =>
        t.accountId === accountId &&
        (opts.includeDeleted || t.deletedAt === null) &&
        (opts.name === undefined || t.name === opts.name),
    );
  }

  /** Deletes the tunnel, closes its connections, removes every DNS record pointing at it. */
  async deleteTunnel(
    principal: Principal,
    accountId: string,
    ref: string,
    force: boolean,
  ): Promise<TunnelView> {
    const t = this.findTunnel(principal, accountId, ref);
    const actor = `token:${principal.tokenId}`;
    await this.#tunnel({ type: 'DeleteTunnel', tunnelId: t.tunnelId, force, now: this.#now }, actor);
    this.onTunnelDeleted(t.tunnelId);
    await this.#finishDeletion(t, actor);
    return t;
  }

  /** The parts of a deletion after `TunnelDeleted`; re-run at start in case a crash interrupted them. */
  async #finishDeletion(t: TunnelView, actor: string): Promise<void> {
    await this.#deleteRecordsOf(t.tunnelId, {}, 'tunnel_deleted', actor);
    if (t.accountId) {
      await this.#account(
        {
          type: 'ReleaseTunnelName',
          accountId: t.accountId,
          name: t.name,
          tunnelId: t.tunnelId,
          now: this.#now,
        },
        actor,
      );
    }
  }

  async #deleteRecordsOf(
    tunnelId: string,
    filter: { onlyOrigin?: DnsRecordOrigin; addedBefore?: number; onlyRecordIds?: readonly string[] },
    reason: DnsDeleteReason,
    actor: string,
  ): Promise<void> {
    const zones = new Set(this.directory.recordsOf(tunnelId).map((r) => r.zone));
    for (const zone of zones) {
      await this.#zone(
        {
          type: 'DeleteDnsRecords',
          zone,
          accountId: null,
          onlyTunnelId: tunnelId,
          ...filter,
          reason,
          now: this.#now,
        },
        actor,
      );
    }
  }

  /** Drops connection records that no session on this edge holds (left by a crash or a lost edge). */
  async cleanupConnections(
    principal: Principal,
    accountId: string,
    ref: string,
    isLive: (connectionId: string) => boolean,
  ): Promise<number> {
    const t = this.findTunnel(principal, accountId, ref);
    let dropped = 0;
    for (const c of [...t.connections.values()]) {
      if (isLive(c.connectionId)) continue;
      await this.unregisterConnection(
        { tunnelId: t.tunnelId, connectionId: c.connectionId },
        'lost',
        `token:${principal.tokenId}`,
      );
      dropped++;
    }
    return dropped;
  }

  // ---- DNS ----

  /** `tunnel route dns` (manual) and `tunnel run --hostname` (auto): a CNAME to the tunnel. */
  async routeDns(
    principal: Principal,
    accountId: string,
    ref: string,
    opts: { hostname: string; overwrite: boolean; origin: DnsRecordOrigin },
  ) {
    const t = this.findTunnel(principal, accountId, ref);
    if (t.deletedAt !== null) throw new WarrenError('tunnel_deleted', `tunnel ${t.name} has been deleted`);
    const name = normalizeHostname(opts.hostname);
    const zone = this.directory.zoneOf(name);
    if (!zone) throw new WarrenError('not_found', `${name} is not in any zone served by this edge`);
    if (zone.accountId !== accountId) {
      throw new WarrenError('forbidden', `${name} is in zone ${zone.zone}, which belongs to another account`);
    }
    const recordId = randomUUID();
    await this.#zone(
      {
        type: 'AddDnsRecord',
        zone: zone.zone,
        accountId,
        recordId,
        name,
        recordType: 'CNAME',
        content: this.cnameTarget(t.tunnelId),
        tunnelId: t.tunnelId,
        origin: opts.origin,
        overwrite: opts.overwrite,
        now: this.#now,
      },
      `token:${principal.tokenId}`,
    );
    return this.directory.recordsAt(name);
  }

  cnameTarget(tunnelId: string): string {
    return `${tunnelId}.tunnels.${this.#init.edgeDomain}`;
  }

  async addAddressRecord(
    principal: Principal,
    zoneName: string,
    opts: { name: string; type: 'A' | 'AAAA'; content: string; overwrite: boolean },
  ) {
    const zone = this.directory.zones.get(normalizeHostname(zoneName));
    if (!zone) throw new WarrenError('not_found', `zone ${zoneName} is not served by this edge`);
    this.authorize(principal, zone.accountId);
    const name = normalizeHostname(opts.name);
    await this.#zone(
      {
        type: 'AddDnsRecord',
        zone: zone.zone,
        accountId: principal.accountId,
        recordId: randomUUID(),
        name,
        recordType: opts.type,
        content: opts.content,
        tunnelId: null,
        origin: 'manual',
        overwrite: opts.overwrite,
        now: this.#now,
      },
      `token:${principal.tokenId}`,
    );
    return this.directory.recordsAt(name);
  }

  async deleteDnsRecord(principal: Principal, zoneName: string, name: string): Promise<void> {
    const zone = this.directory.zones.get(normalizeHostname(zoneName));
    if (!zone) throw new WarrenError('not_found', `zone ${zoneName} is not served by this edge`);
    this.authorize(principal, zone.accountId);
    await this.#zone(
      {
        type: 'DeleteDnsRecords',
        zone: zone.zone,
        accountId: principal.accountId,
        name: normalizeHostname(name),
        reason: 'manual',
        now: this.#now,
      },
      `token:${principal.tokenId}`,
    );
  }

  dnsRecords(principal: Principal, zoneName: string) {
    const zone = this.directory.zones.get(normalizeHostname(zoneName));
    if (!zone) throw new WarrenError('not_found', `zone ${zoneName} is not served by this edge`);
    this.authorize(principal, zone.accountId);
    return [...this.directory.records.values()].filter((r) => r.zone === zone.zone);
  }

  // ---- connections (called by the tunnel sessions) ----

  /**
   * Records a registration. When it would make the tunnel active, the account's limit is checked
   * with registrations of the same account serialised, so concurrent ones cannot both take the last slot.
   */
  async registerConnection(c: ConnectionRecord): Promise<void> {
    const t = this.directory.tunnels.get(c.tunnelId);
    const accountId = t?.accountId;
    const command = (): TunnelCommand => ({
      type: 'RegisterConnection',
      ...c,
      ...(accountId
        ? {
            accountLimit: {
              activeTunnels: this.directory.activeTunnels(accountId),
              maxActiveTunnels: this.#init.accountTunnelLimit,
            },
          }
        : {}),
      now: this.#now,
    });
    if (!accountId || (t && t.connections.size > 0)) {
      await this.#tunnel(command(), 'agent');
      return;
    }
    await inTurn(this.#limitLocks, accountId, () => this.#tunnel(command(), 'agent'));
  }

  async unregisterConnection(
    c: { tunnelId: string; connectionId: string },
    reason: UnregisterReason,
    actor = 'edge',
  ): Promise<void> {
    await this.#tunnel(
      {
        type: 'UnregisterConnection',
        tunnelId: c.tunnelId,
        connectionId: c.connectionId,
        reason,
        cleanupDelayMs: this.#cleanupDelay(),
        now: this.#now,
      },
      actor,
    );
  }

  #cleanupDelay(): number {
    const { minMs, maxMs } = this.#init.dnsCleanupWindowMs;
    const draw = (this.#c.random ?? Math.random)();
    return minMs + Math.floor(draw * (maxMs - minMs + 1));
  }

  // ---- delayed DNS cleanup ----

  #startJanitor(): void {
    const { clock, log } = this.#c;
    const machine = dnsJanitorMachine.provide({
      actors: {
        fireCleanup: fromPromise<void, { tunnelId: string; dueAt: number }>(({ input }) =>
          this.#fireCleanup(input.tunnelId, input.dueAt),
        ),
      },
    });
    const pending: { tunnelId: string; dueAt: number }[] = [];
    for (const t of this.directory.tunnels.values()) {
      if (t.pendingCleanup) pending.push({ tunnelId: t.tunnelId, dueAt: t.pendingCleanup.dueAt });
    }
    this.#janitor = createActor(machine, { clock, input: { now: () => clock.now(), pending } });
    this.#janitor.start();
    // Work a crash may have interrupted: deletions whose records are still there.
    void this.#recover().catch((err: unknown) =>
      log.error(
        { err: describeError(err) },
        'could not finish interrupted deletions; they run again at next start',
      ),
    );
  }

  async #recover(): Promise<void> {
    // A create that died between claiming the name and creating the tunnel: give the name back. The
    // list is taken before the first await, so no create running now can be mistaken for one.
    const orphans = [...this.directory.tunnelNameClaims()].filter(
      ([, , id]) => !this.directory.tunnels.has(id),
    );
    for (const [accountId, name, tunnelId] of orphans) {
      await this.#account({ type: 'ReleaseTunnelName', accountId, name, tunnelId, now: this.#now }, 'edge');
    }
    for (const t of [...this.directory.tunnels.values()]) {
      if (t.deletedAt !== null) {
        const named = t.accountId ? this.directory.tunnelByName(t.accountId, t.name) : undefined;
        const hasRecords = this.directory.recordsOf(t.tunnelId).length > 0;
        if (hasRecords || named?.tunnelId === t.tunnelId) await this.#finishDeletion(t, 'edge');
      } else if (this.directory.recordsDueForCleanup(t).length > 0) {
        await this.#deleteDue(t);
      }
    }
  }

  async #fireCleanup(tunnelId: string, dueAt: number): Promise<void> {
    const events = await this.#tunnel({ type: 'FireDnsCleanup', tunnelId, dueAt, now: this.#now }, 'janitor');
    const t = this.directory.tunnels.get(tunnelId);
    if (events.length > 0 && t) {
      this.#c.log.info(
        { tunnelId, dueAt },
        'tunnel inactive past its deadline: deleting its automatic DNS records',
      );
      await this.#deleteDue(t);
    }
  }

  async #deleteDue(t: TunnelView): Promise<void> {
    // Exactly the records the directory found due: a route made after the cleanup fell due but in the
    // same millisecond as its deadline matches the time filters too, and must stay.
    const due = this.directory.recordsDueForCleanup(t);
    if (t.cleanupDueAt === null || due.length === 0) return;
    await this.#deleteRecordsOf(
      t.tunnelId,
      { onlyOrigin: 'auto', addedBefore: t.cleanupDueAt, onlyRecordIds: due.map((r) => r.recordId) },
      'tunnel_inactive',
      'janitor',
    );
  }

  /**
   * Stops following the log and the janitor, and starts saving a directory snapshot at the position
   * it reached. The event log itself is closed by its owner; its `close` waits for that save.
   */
  close(): void {
    this.#closed = true;
    this.#janitor?.stop();
    this.#subscription?.unsubscribe();
    for (const w of this.#waiters) w.reject(new WarrenError('store_closed', 'the edge is shutting down'));
    this.#waiters.clear();
    // Nothing changes the directory from here on, so the pages can be read from it as they are written.
    void this.#saveSnapshot(this.directory.exportState());
  }
}

/**
 * Runs `work` after every earlier one queued under `key` has settled (whatever its outcome), and
 * forgets the key once the queue is empty, so the map holds only keys with work in flight.
 */
async function inTurn<T>(
  queues: Map<string, Promise<unknown>>,
  key: string,
  work: () => Promise<T>,
): Promise<T> {
  const mine = (queues.get(key) ?? Promise.resolve()).catch(() => {}).then(work);
  queues.set(key, mine);
  try {
    return await mine;
  } finally {
    if (queues.get(key) === mine) queues.delete(key);
  }
}

function requireMember(member: string): string {
  if (typeof member !== 'string' || member.trim().length === 0 || member.length > 200) {
    throw new WarrenError('bad_request', 'member must be a name or e-mail of 1-200 characters');
  }
  return member.trim();
}
