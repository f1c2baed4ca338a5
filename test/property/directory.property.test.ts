/**
 * The read model against the streams it folds. Arbitrary command sequences over a few accounts, zones,
 * tunnels and connections go through `handleCommand` into an in-memory event log, driven the way the
 * control plane drives them (a tunnel name is claimed before the tunnel is created, records go when
 * their tunnel is deleted or its cleanup falls due, the account limit is read from the directory);
 * refused commands are skipped. Then:
 *  (a) the directory folded from the log is the same as the one folded from the events the deciders
 *      returned before storage, and from the log after one more encode/decode round trip;
 *  (b) every prefix of the log folds to a directory that keeps the domain's invariants;
 *  (c) the directory agrees with each stream folded by its own decider's `evolve`.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { type AccountCommand, accountDecider, accountStream } from '../../src/events/account.ts';
import type { Decider } from '../../src/events/decider.ts';
import { Directory, type DirectoryEvent } from '../../src/events/directory.ts';
import {
  type TunnelCommand,
  type TunnelState,
  tunnelDecider,
  tunnelStream,
  type UnregisterReason,
} from '../../src/events/tunnel.ts';
import {
  type DnsRecordOrigin,
  inZone,
  type ZoneCommand,
  zoneDecider,
  zoneStream,
} from '../../src/events/zone.ts';
import { ManualClock } from '../../src/shared/clock.ts';
import { isWarrenError } from '../../src/shared/errors.ts';
import { decodeEnvelope, encodeEnvelope } from '../../src/store/codec.ts';
import { handleCommand } from '../../src/store/command-handler.ts';
import type { EventLog, StoredEvent } from '../../src/store/event-log.ts';
import { openMemoryEventLog } from '../../src/store/memory-event-log.ts';

const HOUR = 3_600_000;
/** Small on purpose, so that sequences reach the limits and registrations get refused. */
const MAX_ACTIVE_TUNNELS: Record<string, number> = { 'acc-0': 2, 'acc-1': 1, 'acc-2': 2 };
const ACCOUNTS = ['acc-0', 'acc-1', 'acc-2'];
// Not nested in one another: a name belongs to one zone stream only.
const ZONES = ['example.com', 'example.net', 'example.org'];
const LABELS = ['', 'www.', 'api.', '*.'];
const TUNNEL_NAMES = ['web', 'api', 'ssh'];
const HOSTS = ZONES.flatMap((z) => LABELS.map((l) => `${l}${z}`));
/** The zone whose stream holds records at HOSTS[i]. */
const zoneOfHost = (i: number) => ZONES[Math.floor(i / LABELS.length)]!;

// ------------------------------------------------------------------ actions

type Action =
  | { kind: 'createAccount'; account: number; operator: boolean }
  | { kind: 'issueToken'; account: number; member: number; admin: boolean }
  | { kind: 'rollToken'; token: number }
  | { kind: 'revokeToken'; token: number }
  | { kind: 'recordCertificate'; token: number; zone: number }
  | { kind: 'addZone'; zone: number; account: number }
  | { kind: 'createTunnel'; account: number | null; name: number }
  | { kind: 'register'; tunnel: number; conn: number; pop: string }
  /** `live`: one of the live connections (by `tunnel` as an index among them); otherwise any id. */
  | {
      kind: 'unregister';
      live: boolean;
      tunnel: number;
      conn: number;
      reason: UnregisterReason;
      cleanupDelayMs?: number;
    }
  | { kind: 'deleteTunnel'; tunnel: number; force: boolean }
  | { kind: 'route'; tunnel: number; host: number; origin: DnsRecordOrigin; overwrite: boolean }
  | { kind: 'address'; host: number; recordType: 'A' | 'AAAA'; content: string; overwrite: boolean }
  | { kind: 'deleteRecord'; host: number }
  /**
   * `due`: the janitor's timer for a pending cleanup (by `tunnel` as an index among them) goes off at
   * its deadline; `early`: it goes off now; `stale`: a timer armed for a deadline no longer pending.
   */
  | { kind: 'fireCleanup'; tunnel: number; timing: 'due' | 'early' | 'stale' }
  /** The previous command again, as a client or the handler retries it. */
  | { kind: 'retry' }
  | { kind: 'advance'; ms: number };

const index = fc.nat({ max: 7 });
const pick = <T>(...values: T[]) => fc.constantFrom(...values);
const rec = <T>(model: { [K in keyof T]: fc.Arbitrary<T[K]> }) =>
  fc.record(model, { noNullPrototype: true }) as fc.Arbitrary<T>;
const one = <T>(weight: number, arbitrary: fc.Arbitrary<T>) => ({ weight, arbitrary });

const action: fc.Arbitrary<Action> = fc.oneof(
  one(1, rec({ kind: pick('createAccount' as const), account: fc.nat({ max: 2 }), operator: fc.boolean() })),
  one(
    1,
    rec({
      kind: pick('issueToken' as const),
      account: fc.nat({ max: 2 }),
      member: fc.nat({ max: 2 }),
      admin: fc.boolean(),
    }),
  ),
  one(1, rec({ kind: pick('rollToken' as const), token: index })),
  one(1, rec({ kind: pick('revokeToken' as const), token: index })),
  one(1, rec({ kind: pick('recordCertificate' as const), token: index, zone: fc.nat({ max: 2 }) })),
  one(1, rec({ kind: pick('addZone' as const), zone: fc.nat({ max: 2 }), account: fc.nat({ max: 2 }) })),
  one(
    2,
    rec({
      kind: pick('createTunnel' as const),
      account: fc.option(fc.nat({ max: 2 }), { nil: null, freq: 4 }),
      name: fc.nat({ max: 2 }),
    }),
  ),
  one(
    6,
    rec({
      kind: pick('register' as const),
      tunnel: index,
      conn: fc.nat({ max: 2 }),
      pop: pick('ams', 'fra'),
    }),
  ),
  one(
    5,
    rec({
      kind: pick('unregister' as const),
      live: pick(true, true, true, true, false),
      tunnel: index,
      conn: fc.nat({ max: 2 }),
      reason: pick<UnregisterReason>('graceful', 'lost', 'replaced', 'edge_shutdown'),
      // The edge always passes a draw in 24–48 h; omitted, nothing is scheduled.
      cleanupDelayMs: fc.option(fc.integer({ min: 24 * HOUR, max: 48 * HOUR }), { nil: undefined, freq: 5 }),
    }),
  ),
  one(1, rec({ kind: pick('deleteTunnel' as const), tunnel: index, force: fc.boolean() })),
  one(
    4,
    rec({
      kind: pick('route' as const),
      tunnel: index,
      host: fc.nat({ max: HOSTS.length - 1 }),
      origin: pick<DnsRecordOrigin>('auto', 'auto', 'manual'),
      overwrite: pick(false, false, true),
    }),
  ),
  one(
    2,
    rec({
      kind: pick('address' as const),
      host: fc.nat({ max: HOSTS.length - 1 }),
      recordType: pick<'A' | 'AAAA'>('A', 'AAAA'),
      content: pick('192.0.2.1', '2001:db8::1'),
      overwrite: pick(false, false, true),
    }),
  ),
  one(1, rec({ kind: pick('deleteRecord' as const), host: fc.nat({ max: HOSTS.length - 1 }) })),
  one(
    3,
    rec({
      kind: pick('fireCleanup' as const),
      tunnel: index,
      timing: pick<'due' | 'early' | 'stale'>('due', 'due', 'early', 'stale'),
    }),
  ),
  one(1, rec({ kind: pick('retry' as const) })),
  one(
    2,
    rec({
      kind: pick('advance' as const),
      ms: fc.oneof(fc.integer({ min: 0, max: 5_000 }), fc.integer({ min: 24 * HOUR, max: 49 * HOUR })),
    }),
  ),
);

/**
 * Every run starts from two accounts with a zone, an admin and named tunnels each (acc-1 one more than
 * its limit allows to run); acc-2 and example.org are left for the sequence to create, or to be
 * refused for want of them.
 */
const SETUP: Action[] = [
  { kind: 'createAccount', account: 0, operator: true },
  { kind: 'createAccount', account: 1, operator: false },
  { kind: 'addZone', zone: 0, account: 0 },
  { kind: 'addZone', zone: 1, account: 1 },
  { kind: 'issueToken', account: 0, member: 0, admin: true },
  { kind: 'issueToken', account: 1, member: 0, admin: true },
  { kind: 'createTunnel', account: 0, name: 0 },
  { kind: 'createTunnel', account: 1, name: 0 },
  { kind: 'createTunnel', account: 1, name: 1 },
];

/**
 * A sequence that reaches every state the coverage check below asks for, run before the random ones so
 * that check cannot depend on the draw. Tunnel 0 is acc-0's; 1 and 2 are acc-1's.
 */
const SCRIPT: Action[] = [
  { kind: 'register', tunnel: 1, conn: 0, pop: 'ams' },
  // acc-1 runs one tunnel already, its limit.
  { kind: 'register', tunnel: 2, conn: 0, pop: 'ams' },
  { kind: 'route', tunnel: 0, host: 1, origin: 'auto', overwrite: false },
  { kind: 'address', host: 1, recordType: 'A', content: '192.0.2.1', overwrite: false },
  // acc-0's tunnel into acc-1's zone.
  { kind: 'route', tunnel: 0, host: 5, origin: 'manual', overwrite: false },
  { kind: 'register', tunnel: 0, conn: 0, pop: 'fra' },
  { kind: 'deleteTunnel', tunnel: 0, force: false },
  { kind: 'unregister', live: true, tunnel: 0, conn: 0, reason: 'graceful', cleanupDelayMs: 30 * HOUR },
  { kind: 'register', tunnel: 0, conn: 1, pop: 'ams' },
  { kind: 'unregister', live: true, tunnel: 0, conn: 0, reason: 'lost', cleanupDelayMs: 24 * HOUR },
  { kind: 'fireCleanup', tunnel: 0, timing: 'due' },
  { kind: 'rollToken', token: 0 },
  { kind: 'deleteTunnel', tunnel: 1, force: true },
];

// ------------------------------------------------------------------ running a sequence

// biome-ignore lint/suspicious/noExplicitAny: one decider of each stream kind, held side by side.
type AnyDecider = Decider<any, any, any>;

interface Sent {
  stream: string;
  decider: AnyDecider;
  command: unknown;
  actor: string;
}

/** The log, the live directory the control plane would read, and the events as the deciders returned them. */
class World {
  readonly clock = new ManualClock();
  readonly log: EventLog = openMemoryEventLog({ clock: this.clock });
  readonly live = new Directory();
  /** Every appended event before it went through the stored format, with the envelope fields the log gave it. */
  readonly raw: DirectoryEvent[] = [];
  readonly tunnels: string[] = [];
  readonly tokens: { tokenId: string; accountId: string }[] = [];
  /** Codes of the refusals met. */
  readonly refusals = new Set<string>();
  #next = 0;
  #last: Sent | undefined;

  fresh(prefix: string): string {
    return `${prefix}-${this.#next++}`;
  }

  get now(): number {
    return this.clock.now();
  }

  /** Runs one command; a refusal (a WarrenError) is skipped and returns undefined. */
  async send(
    stream: string,
    decider: AnyDecider,
    command: unknown,
    actor: string,
  ): Promise<unknown[] | undefined> {
    this.#last = { stream, decider, command, actor };
    let events: { type: string; data: unknown }[];
    try {
      events = await handleCommand(this.log, stream, decider, command, { actor });
    } catch (err) {
      if (isWarrenError(err) && err.code !== 'version_conflict') {
        this.refusals.add(err.code);
        return undefined;
      }
      throw err;
    }
    const first = this.log.headPosition - events.length + 1;
    events.forEach((e, i) => {
      this.raw.push({
        position: first + i,
        recordedAt: this.now,
        type: e.type,
        data: e.data,
        meta: { actor },
      });
    });
    for await (const e of this.log.readAll({ fromPosition: this.live.position + 1 })) this.live.apply(e);
    return events;
  }

  account(command: AccountCommand, actor = 'token:admin') {
    return this.send(accountStream(command.accountId), accountDecider, command, actor);
  }

  zone(command: ZoneCommand, actor = 'token:admin') {
    return this.send(zoneStream(command.zone), zoneDecider, command, actor);
  }

  tunnel(command: TunnelCommand, actor = 'agent') {
    return this.send(tunnelStream(command.tunnelId), tunnelDecider, command, actor);
  }

  async retry(): Promise<void> {
    const last = this.#last;
    if (last) await this.send(last.stream, last.decider, last.command, last.actor);
  }

  /**
   * Deletes records of the tunnel in every zone that has some, as the control plane does, and checks
   * that exactly the records the filter names went: a cleanup must never take a manual route, a
   * record re-pointed to another tunnel, or one added after the deadline.
   */
  async deleteRecordsOf(
    tunnelId: string,
    filter: { onlyOrigin?: DnsRecordOrigin; addedBefore?: number },
    reason: 'tunnel_deleted' | 'tunnel_inactive',
  ): Promise<void> {
    const doomed = [...this.live.records.values()].filter(
      (r) =>
        r.tunnelId === tunnelId &&
        (filter.onlyOrigin === undefined || r.origin === filter.onlyOrigin) &&
        (filter.addedBefore === undefined || r.addedAt <= filter.addedBefore),
    );
    const before = [...this.live.records.keys()];
    for (const zone of new Set(doomed.map((r) => r.zone))) {
      await this.zone(
        {
          type: 'DeleteDnsRecords',
          zone,
          accountId: null,
          onlyTunnelId: tunnelId,
          ...filter,
          reason,
          now: this.now,
        },
        'janitor',
      );
    }
    const gone = before.filter((id) => !this.live.records.has(id));
    assert.deepEqual(gone.sort(), doomed.map((r) => r.recordId).sort(), `${reason} of ${tunnelId}`);
  }
}

async function run(world: World, a: Action): Promise<void> {
  const now = world.now;
  const tunnelAt = (i: number) =>
    world.tunnels.length === 0 ? undefined : world.tunnels[i % world.tunnels.length]!;
  const tokenAt = (i: number) =>
    world.tokens.length === 0 ? undefined : world.tokens[i % world.tokens.length]!;
  switch (a.kind) {
    case 'createAccount': {
      const accountId = ACCOUNTS[a.account]!;
      await world.account(
        { type: 'CreateAccount', accountId, name: `Account ${a.account}`, operator: a.operator, now },
        'init',
      );
      return;
    }
    case 'issueToken': {
      const accountId = ACCOUNTS[a.account]!;
      const tokenId = world.fresh('tok');
      const role = a.admin ? 'admin' : 'member';
      const events = await world.account({
        type: 'IssueApiToken',
        accountId,
        tokenId,
        member: `member-${a.member}`,
        role,
        tokenHash: `hash-${tokenId}`,
        now,
      });
      if (events?.length) world.tokens.push({ tokenId, accountId });
      return;
    }
    case 'rollToken': {
      const token = tokenAt(a.token);
      if (!token) return;
      const newTokenId = world.fresh('tok');
      const events = await world.account({
        type: 'RollApiToken',
        accountId: token.accountId,
        tokenId: token.tokenId,
        newTokenId,
        tokenHash: `hash-${newTokenId}`,
        now,
      });
      if (events?.length) world.tokens.push({ tokenId: newTokenId, accountId: token.accountId });
      return;
    }
    case 'revokeToken': {
      const token = tokenAt(a.token);
      if (token) await world.account({ type: 'RevokeApiToken', ...token, now });
      return;
    }
    case 'recordCertificate': {
      const token = tokenAt(a.token);
      if (!token) return;
      await world.account({
        type: 'RecordOriginCertificate',
        ...token,
        serial: world.fresh('serial'),
        zone: ZONES[a.zone]!,
        notAfter: now + 10 * 365 * 24 * HOUR,
        now,
      });
      return;
    }
    case 'addZone': {
      const zone = ZONES[a.zone]!;
      await world.zone(
        { type: 'AddZone', zone, zoneId: `zone-id-${a.zone}`, accountId: ACCOUNTS[a.account]!, now },
        'init',
      );
      return;
    }
    case 'createTunnel': {
      const tunnelId = world.fresh('t');
      if (a.account === null) {
        const hostname = `${tunnelId}.quick.test`;
        await world.tunnel(
          { type: 'CreateTunnel', tunnelId, name: hostname, accountId: null, quick: true, hostname, now },
          'quick-tunnel',
        );
      } else {
        const accountId = ACCOUNTS[a.account]!;
        const name = TUNNEL_NAMES[a.name]!;
        // The name is claimed first, so two creates with one name cannot both win.
        if (!(await world.account({ type: 'ClaimTunnelName', accountId, name, tunnelId, now }))) return;
        if (
          !(await world.tunnel(
            { type: 'CreateTunnel', tunnelId, name, accountId, quick: false, now },
            'token:admin',
          ))
        ) {
          throw new Error(`creating the fresh tunnel ${tunnelId} was refused`);
        }
      }
      world.tunnels.push(tunnelId);
      return;
    }
    case 'register': {
      const tunnelId = tunnelAt(a.tunnel);
      if (!tunnelId) return;
      const accountId = world.live.tunnels.get(tunnelId)?.accountId;
      await world.tunnel({
        type: 'RegisterConnection',
        tunnelId,
        connectionId: `c-${a.conn}`,
        connIndex: a.conn,
        pop: a.pop,
        clientVersion: '2026.1.0',
        clientOs: 'linux',
        clientArch: 'x64',
        originIp: '192.0.2.10',
        ...(accountId
          ? {
              accountLimit: {
                activeTunnels: world.live.activeTunnels(accountId),
                maxActiveTunnels: MAX_ACTIVE_TUNNELS[accountId]!,
              },
            }
          : {}),
        now,
      });
      return;
    }
    case 'unregister': {
      let tunnelId: string | undefined;
      let connectionId = `c-${a.conn}`;
      if (a.live) {
        const live = [...world.live.tunnels.values()].flatMap((t) =>
          [...t.connections.keys()].map((c) => [t.tunnelId, c] as const),
        );
        if (live.length === 0) return;
        [tunnelId, connectionId] = live[a.tunnel % live.length]!;
      } else {
        tunnelId = tunnelAt(a.tunnel);
      }
      if (!tunnelId) return;
      await world.tunnel(
        {
          type: 'UnregisterConnection',
          tunnelId,
          connectionId,
          reason: a.reason,
          ...(a.cleanupDelayMs === undefined ? {} : { cleanupDelayMs: a.cleanupDelayMs }),
          now,
        },
        'edge',
      );
      return;
    }
    case 'deleteTunnel': {
      const tunnelId = tunnelAt(a.tunnel);
      if (!tunnelId) return;
      const events = await world.tunnel(
        { type: 'DeleteTunnel', tunnelId, force: a.force, now },
        'token:admin',
      );
      if (!events) return;
      await world.deleteRecordsOf(tunnelId, {}, 'tunnel_deleted');
      const t = world.live.tunnels.get(tunnelId)!;
      if (t.accountId) {
        await world.account({
          type: 'ReleaseTunnelName',
          accountId: t.accountId,
          name: t.name,
          tunnelId,
          now,
        });
      }
      return;
    }
    case 'route': {
      const tunnelId = tunnelAt(a.tunnel);
      const t = tunnelId === undefined ? undefined : world.live.tunnels.get(tunnelId);
      // The control plane routes only named tunnels of the asking account that are not deleted.
      if (!t?.accountId || t.deletedAt !== null) return;
      const name = HOSTS[a.host]!;
      await world.zone({
        type: 'AddDnsRecord',
        zone: zoneOfHost(a.host),
        accountId: t.accountId,
        recordId: world.fresh('r'),
        name,
        recordType: 'CNAME',
        content: `${t.tunnelId}.tunnels.edge.test`,
        tunnelId: t.tunnelId,
        origin: a.origin,
        overwrite: a.overwrite,
        now,
      });
      return;
    }
    case 'address': {
      const name = HOSTS[a.host]!;
      const zone = zoneOfHost(a.host);
      await world.zone({
        type: 'AddDnsRecord',
        zone,
        accountId: world.live.zones.get(zone)?.accountId ?? ACCOUNTS[0]!,
        recordId: world.fresh('r'),
        name,
        recordType: a.recordType,
        content: a.content,
        tunnelId: null,
        origin: 'manual',
        overwrite: a.overwrite,
        now,
      });
      return;
    }
    case 'deleteRecord': {
      const name = HOSTS[a.host]!;
      const zone = world.live.zones.get(zoneOfHost(a.host));
      if (!zone) return;
      await world.zone({
        type: 'DeleteDnsRecords',
        zone: zone.zone,
        accountId: zone.accountId,
        name,
        reason: 'manual',
        now,
      });
      return;
    }
    case 'fireCleanup': {
      const pending = [...world.live.tunnels.values()].filter((t) => t.pendingCleanup !== null);
      const t =
        a.timing === 'stale'
          ? world.live.tunnels.get(tunnelAt(a.tunnel) ?? '')
          : pending[a.tunnel % Math.max(1, pending.length)];
      if (!t) return;
      // A stale timer was armed for a deadline that was cancelled, fired or replaced since.
      const dueAt =
        a.timing === 'stale' || !t.pendingCleanup ? (t.cleanupDueAt ?? now - 1) : t.pendingCleanup.dueAt;
      if (a.timing === 'due' && dueAt > now) world.clock.advance(dueAt - now);
      const events = await world.tunnel(
        { type: 'FireDnsCleanup', tunnelId: t.tunnelId, dueAt, now: world.now },
        'janitor',
      );
      if (events?.length) {
        await world.deleteRecordsOf(
          t.tunnelId,
          { onlyOrigin: 'auto', addedBefore: dueAt },
          'tunnel_inactive',
        );
      }
      return;
    }
    case 'retry':
      await world.retry();
      return;
    case 'advance':
      world.clock.advance(a.ms);
      return;
    default: {
      const _exhaustive: never = a;
      return;
    }
  }
}

// ------------------------------------------------------------------ checks

function fold(events: readonly DirectoryEvent[]): Directory {
  const d = new Directory();
  for (const e of events) d.apply(e);
  return d;
}

const byKey = <T>(items: Iterable<T>, key: (t: T) => string): T[] =>
  [...items].sort((x, y) => (key(x) < key(y) ? -1 : key(x) > key(y) ? 1 : 0));

/** Everything a reader can see of a directory, as plain sorted data. */
function snapshot(d: Directory) {
  return {
    position: d.position,
    accounts: byKey(d.accounts.values(), (a) => a.accountId),
    tokens: byKey(d.tokens.values(), (t) => t.tokenId),
    retiredTokens: byKey(d.retiredTokens.values(), (t) => t.tokenId),
    zones: byKey(d.zones.values(), (z) => z.zone),
    records: byKey(d.records.values(), (r) => r.recordId),
    tunnels: byKey(d.tunnels.values(), (t) => t.tunnelId).map((t) => ({
      ...t,
      connections: byKey(t.connections.values(), (c) => c.connectionId),
    })),
    perAccount: ACCOUNTS.map((a) => ({
      active: d.activeTunnels(a),
      audit: d.audit(a),
      names: TUNNEL_NAMES.map((n) => d.tunnelByName(a, n)?.tunnelId ?? null),
    })),
    hosts: HOSTS.map((h) => [
      d.tunnelForHost(h) ?? null,
      d
        .recordsAt(h)
        .map((r) => r.recordId)
        .sort(),
    ]),
  };
}

/** What every prefix of the log must fold to. */
function checkInvariants(d: Directory): void {
  const tunnels = [...d.tunnels.values()];
  for (const t of tunnels) {
    const live = t.connections.size > 0;
    if (t.deletedAt !== null)
      assert.ok(!live && t.pendingCleanup === null, `deleted ${t.tunnelId} keeps state`);
    assert.ok(!(live && t.pendingCleanup), `${t.tunnelId} is connected with a cleanup pending`);
    assert.ok(!(live && t.inactiveAt !== null), `${t.tunnelId} is connected yet inactive`);
    if (t.quick) {
      assert.equal(t.pendingCleanup, null, 'a quick tunnel has a cleanup pending');
      // A quick tunnel serves its hostname until it is deleted.
      assert.equal(d.tunnelForHost(t.hostname!), t.deletedAt === null ? t.tunnelId : undefined);
    }
  }
  for (const a of ACCOUNTS) {
    const active = tunnels.filter((t) => t.accountId === a && t.connections.size > 0).length;
    assert.equal(d.activeTunnels(a), active, `active tunnels of ${a}`);
    assert.ok(active <= MAX_ACTIVE_TUNNELS[a]!, `${a} runs ${active} tunnels`);
    const audit = d.audit(a);
    for (const [i, entry] of audit.entries()) {
      assert.equal(entry.accountId, a);
      assert.ok(entry.id <= d.position);
      if (i > 0) assert.ok(entry.id > audit[i - 1]!.id, 'audit log out of position order');
    }
    const members = [...d.tokens.values()].filter((t) => t.accountId === a).map((t) => t.member);
    assert.equal(new Set(members).size, members.length, `a member of ${a} holds two live tokens`);
  }
  for (const id of d.retiredTokens.keys()) assert.ok(!d.tokens.has(id), `retired token ${id} is live`);
  const names = new Map<string, string[]>();
  for (const r of d.records.values()) {
    assert.ok(d.zones.has(r.zone) && inZone(r.name, r.zone), `${r.name} outside a served zone ${r.zone}`);
    assert.ok(
      d.recordsAt(r.name).some((o) => o.recordId === r.recordId),
      `${r.recordId} missing from its name`,
    );
    names.set(r.name, [...(names.get(r.name) ?? []), r.type]);
  }
  for (const [name, types] of names) {
    const count = (type: string) => types.filter((t) => t === type).length;
    assert.ok(count('CNAME') === 0 || types.length === 1, `${name} has a CNAME and other records: ${types}`);
    assert.ok(count('A') <= 1 && count('AAAA') <= 1, `${name} has ${types}`);
    assert.equal(d.recordsAt(name).length, types.length, `name index of ${name}`);
  }
  for (const host of HOSTS) {
    const id = d.tunnelForHost(host);
    if (id !== undefined)
      assert.equal(d.tunnels.get(id)?.deletedAt, null, `${host} resolves to a deleted tunnel`);
  }
}

/** What an event may say given the directory just before it: deciders only emit what the state allows. */
function checkTransition(d: Directory, e: StoredEvent): void {
  const data = e.data as { tunnelId?: string; recordId?: string; dueAt?: number; firedAt?: number };
  const t = data.tunnelId === undefined ? undefined : d.tunnels.get(data.tunnelId);
  const where = `${e.type} at ${e.position}`;
  switch (e.type) {
    case 'ConnectionRegistered':
      assert.ok(t && t.deletedAt === null && t.pendingCleanup === null, where);
      return;
    case 'TunnelBecameInactive':
      assert.ok(t && t.connections.size === 0, where);
      return;
    case 'DnsCleanupScheduled':
      assert.ok(
        t && !t.quick && t.deletedAt === null && t.connections.size === 0 && !t.pendingCleanup,
        where,
      );
      return;
    case 'DnsCleanupCancelled':
      assert.equal(t?.pendingCleanup?.dueAt, data.dueAt, where);
      return;
    case 'DnsCleanupDue':
      // Only the deadline still pending, and never before it.
      assert.equal(t?.pendingCleanup?.dueAt, data.dueAt, where);
      assert.ok(data.firedAt! >= data.dueAt!, where);
      return;
    case 'TunnelDeleted':
      assert.ok(t && t.deletedAt === null && t.connections.size === 0 && !t.pendingCleanup, where);
      return;
    case 'DnsRecordAdded':
      assert.ok(!d.records.has(data.recordId!), where);
      return;
    case 'DnsRecordDeleted':
      assert.ok(d.records.has(data.recordId!), where);
      return;
    default:
      return;
  }
}

/** Each stream folded with its own decider agrees with the directory's view of it. */
async function checkStreams(world: World, stored: readonly StoredEvent[]): Promise<void> {
  const d = world.live;
  const streams = new Set(stored.map((e) => e.stream));
  const foldStream = async <S>(stream: string, decider: AnyDecider): Promise<S> =>
    (await world.log.readStream(stream)).reduce(
      (s, e) => decider.evolve(s, { type: e.type, data: e.data }),
      decider.initialState(),
    );
  for (const id of world.tunnels) {
    const stream = tunnelStream(id);
    assert.ok(streams.has(stream), `no stream for ${id}`);
    const s: TunnelState = await foldStream(stream, tunnelDecider);
    const t = d.tunnels.get(id);
    assert.ok(t, `directory misses tunnel ${id}`);
    assert.equal(s.status === 'deleted', t.deletedAt !== null);
    assert.deepEqual(
      { name: t.name, accountId: t.accountId, quick: t.quick, hostname: t.hostname, createdAt: t.createdAt },
      { name: s.name, accountId: s.accountId, quick: s.quick, hostname: s.hostname, createdAt: s.createdAt },
    );
    assert.deepEqual(Object.fromEntries(t.connections), s.connections);
    assert.deepEqual(t.pendingCleanup, s.pendingCleanup);
    assert.equal(t.cleanupDueAt, s.cleanupDueAt);
  }
  for (const zone of ZONES) {
    const s = await foldStream<ReturnType<typeof zoneDecider.initialState>>(zoneStream(zone), zoneDecider);
    const z = d.zones.get(zone);
    assert.equal(s.status === 'active', z !== undefined);
    if (z)
      assert.deepEqual(
        { zoneId: s.zoneId, accountId: s.accountId },
        { zoneId: z.zoneId, accountId: z.accountId },
      );
    const records = [...d.records.values()].filter((r) => r.zone === zone).map(({ zone: _z, ...r }) => r);
    assert.deepEqual(Object.fromEntries(records.map((r) => [r.recordId, r])), s.records);
  }
  for (const accountId of ACCOUNTS) {
    const s = await foldStream<ReturnType<typeof accountDecider.initialState>>(
      accountStream(accountId),
      accountDecider,
    );
    const a = d.accounts.get(accountId);
    assert.equal(s.status === 'active', a !== undefined);
    if (a)
      assert.deepEqual(
        { name: a.name, operator: a.operator, createdAt: a.createdAt },
        { name: s.name, operator: s.operator, createdAt: s.createdAt },
      );
    const tokens = [...d.tokens.values()]
      .filter((t) => t.accountId === accountId)
      .map(({ accountId: _a, ...t }) => t);
    assert.deepEqual(Object.fromEntries(tokens.map((t) => [t.tokenId, t])), s.tokens);
    const retired = [...d.retiredTokens.values()]
      .filter((t) => t.accountId === accountId)
      .map((t) => t.tokenId);
    assert.deepEqual(retired.sort(), [...s.retiredTokens].sort());
    for (const name of TUNNEL_NAMES) {
      assert.equal(
        d.tunnelByName(accountId, name)?.tunnelId,
        s.tunnelNames[name],
        `${accountId} name ${name}`,
      );
    }
  }
}

describe('directory', () => {
  it('folds the same from stored, unstored and re-encoded events, keeps its invariants at every prefix, and agrees with each stream', async () => {
    // What the runs got to: event types appended and refusal codes met.
    const seen = new Set<string>();
    await fc.assert(
      fc.asyncProperty(fc.array(action, { minLength: 5, maxLength: 40, size: 'max' }), async (actions) => {
        const world = new World();
        for (const a of [...SETUP, ...actions]) await run(world, a);
        const stored: StoredEvent[] = [];
        for await (const e of world.log.readAll()) stored.push(e);
        assert.equal(stored.length, world.raw.length);

        // (a) the stored format changes nothing the directory shows.
        const fromLog = snapshot(world.live);
        assert.deepEqual(snapshot(fold(stored)), fromLog);
        assert.deepEqual(snapshot(fold(world.raw)), fromLog);
        const reencoded = stored.map((e) => decodeEnvelope(encodeEnvelope(e)));
        assert.deepEqual(snapshot(fold(reencoded)), fromLog);

        // Trimming keeps the newest audit entries, at least as many as the limit.
        const trimmed = new Directory({ maxAuditEntriesPerAccount: 3 });
        for (const e of stored) trimmed.apply(e);
        for (const a of ACCOUNTS) {
          const full = world.live.audit(a);
          const kept = trimmed.audit(a);
          // Trimmed in batches: never past the limit plus a tenth of it.
          assert.ok(kept.length >= Math.min(3, full.length) && kept.length <= 3 + Math.ceil(3 / 10));
          assert.deepEqual(kept, full.slice(full.length - kept.length));
        }

        // (b) every prefix is a valid directory.
        const d = new Directory();
        for (const e of stored) {
          checkTransition(d, e);
          d.apply(e);
          checkInvariants(d);
        }
        // After the control plane's follow-ups, no record points at a deleted tunnel.
        for (const r of d.records.values()) {
          if (r.tunnelId !== null)
            assert.equal(d.tunnels.get(r.tunnelId)?.deletedAt, null, `${r.name} outlived its tunnel`);
        }

        // (c) the directory agrees with each stream's own fold.
        await checkStreams(world, stored);

        for (const e of stored) seen.add(e.type);
        for (const code of world.refusals) seen.add(code);
        await world.log.close();
      }),
      { numRuns: 150, examples: [[SCRIPT]] },
    );
    // The generator is only worth something if it reaches the interesting states.
    for (const what of [
      'DnsCleanupScheduled',
      'DnsCleanupCancelled',
      'DnsCleanupDue',
      'TunnelDeleted',
      'ApiTokenRolled',
      'account_tunnel_limit',
      'tunnel_active',
      'dns_record_exists',
      'forbidden',
    ]) {
      assert.ok(seen.has(what), `no run got to ${what}`);
    }
  });
});
