/**
 * Writes a realistic control-plane history into a LevelDB event log, for the start-up (replay)
 * benchmark. Every event comes from the real deciders, so the log is one an edge could have written:
 *
 *   - accounts, each with its zone, two API tokens and an origin certificate;
 *   - named tunnels (about 200 per account), each with a CNAME route, a fifth of them with a second
 *     one, half of the routes `auto` (made by `tunnel run --hostname`);
 *   - rounds three days apart in which every tunnel's agent connects (2 HA connections, some 4, on
 *     one of three PoPs) and later goes away: register, unregister, inactive, DNS cleanup scheduled,
 *     then cancelled by the next registration. Some tunnels stay away past their deadline: the
 *     cleanup fires and their `auto` routes are deleted, to be made again when they come back;
 *   - at the end, most tunnels connected again (their connections live on other PoPs, so the edge
 *     under test has nothing to unregister at start), the rest inactive with cleanups pending in the
 *     future, and a few tunnels deleted.
 *
 * The bulk is connection churn, as on a real edge. Events of one stream decided in a row go in one
 * append; appends are pipelined, since the log serialises them anyway. Seeded, so a size always
 * gives the same shape.
 */
import { createHash } from 'node:crypto';
import { type AccountCommand, accountDecider, accountStream } from '../src/events/account.ts';
import type { Decider } from '../src/events/decider.ts';
import { type TunnelCommand, tunnelDecider, tunnelStream } from '../src/events/tunnel.ts';
import { type ZoneCommand, zoneDecider, zoneStream } from '../src/events/zone.ts';
import type { Clock } from '../src/shared/clock.ts';
import type { EventLog, NewEvent } from '../src/store/event-log.ts';
import { openLevelEventLog } from '../src/store/level-event-log.ts';
import { mulberry32 } from '../test/support/mulberry32.ts';

export interface HistoryInit {
  /** Roughly how many events to write (the count comes out within a few percent). */
  events: number;
  /** The last round happens just before this time (epoch ms); pending cleanups fall due after it. */
  endsAt: number;
  seed?: number;
  /**
   * Names the accounts and zones (`<prefix>-<n>.example`); default `customer`. Another prefix (and
   * seed) writes a second history into a log that already holds one, with streams of its own.
   */
  prefix?: string;
}

export interface HistoryCounts {
  events: number;
  appends: number;
  accounts: number;
  tunnels: number;
  deletedTunnels: number;
  records: number;
  liveConnections: number;
  pendingCleanups: number;
  writeMs: number;
}

const ROUNDS = 8;
const ROUND_MS = 3 * 24 * 3_600_000;
const TUNNELS_PER_ACCOUNT = 200;
/** Setup (claim, create, routes) + ROUNDS churn rounds of ~7 events + the final registration. */
const EVENTS_PER_TUNNEL = 2.4 + 7 * ROUNDS + 2.2;
const POPS = ['ams', 'fra', 'sin'];
/** Appends in flight before the writer waits for them. */
const PIPELINE = 512;
const CLEANUP_WINDOW = { minMs: 24 * 3_600_000, maxMs: 48 * 3_600_000 };

interface TunnelPlan {
  tunnelId: string;
  name: string;
  accountId: string;
  zone: string;
  hostnames: { name: string; origin: 'auto' | 'manual' }[];
  /** Live connection ids. */
  live: string[];
  ha: number;
  deleted: boolean;
}

export async function writeHistory(dataDir: string, init: HistoryInit): Promise<HistoryCounts> {
  const random = mulberry32(init.seed ?? 1);
  const hex = (bytes: number) => {
    let s = '';
    for (let i = 0; i < bytes; i++)
      s += Math.floor(random() * 256)
        .toString(16)
        .padStart(2, '0');
    return s;
  };
  const uuid = () => {
    const h = hex(16);
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-8${h.slice(17, 20)}-${h.slice(20, 32)}`;
  };

  let now = init.endsAt - (ROUNDS + 1) * ROUND_MS;
  const clock: Clock = {
    now: () => now,
    setTimeout: () => undefined,
    clearTimeout: () => {},
  };
  const log: EventLog = await openLevelEventLog({ clock }, { dataDir });
  const startHead = log.headPosition;

  const states = new Map<string, unknown>();
  const versions = new Map<string, number>();
  let queued: { stream: string; events: NewEvent[] } | undefined;
  let inFlight: Promise<unknown>[] = [];
  let appends = 0;
  let events = 0;
  const started = performance.now();

  const flushQueued = async () => {
    if (!queued) return;
    const { stream, events: batch } = queued;
    queued = undefined;
    const expectedVersion = versions.get(stream) ?? 0;
    versions.set(stream, expectedVersion + batch.length);
    inFlight.push(log.append(stream, batch, { expectedVersion }));
    appends++;
    events += batch.length;
    if (inFlight.length >= PIPELINE) await drain();
  };
  const drain = async () => {
    const pending = inFlight;
    inFlight = [];
    await Promise.all(pending);
  };
  const run = async <C, E extends { type: string; data: unknown }, S>(
    stream: string,
    decider: Decider<C, E, S>,
    command: C,
    actor: string,
  ) => {
    let state = (states.get(stream) as S | undefined) ?? decider.initialState();
    const decided = decider.decide(command, state);
    for (const e of decided) state = decider.evolve(state, e);
    states.set(stream, state);
    if (decided.length === 0) return;
    if (queued && queued.stream !== stream) await flushQueued();
    queued ??= { stream, events: [] };
    for (const e of decided) queued.events.push({ type: e.type, data: e.data, meta: { actor } });
  };
  const account = (c: AccountCommand, actor: string) =>
    run(accountStream(c.accountId), accountDecider, c, actor);
  const zone = (c: ZoneCommand, actor: string) => run(zoneStream(c.zone), zoneDecider, c, actor);
  const tunnel = (c: TunnelCommand, actor: string) => run(tunnelStream(c.tunnelId), tunnelDecider, c, actor);

  const tunnelCount = Math.max(1, Math.round(init.events / EVENTS_PER_TUNNEL));
  const accountCount = Math.max(1, Math.ceil(tunnelCount / TUNNELS_PER_ACCOUNT));
  const accounts: { accountId: string; zone: string; tokenId: string; tunnels: TunnelPlan[] }[] = [];

  // ---- setup: accounts, zones, tokens, tunnels, routes ----
  for (let a = 0; a < accountCount; a++) {
    const accountId = uuid();
    const prefix = init.prefix ?? 'customer';
    const zoneName = `${prefix}-${a}.example`;
    const tokenId = hex(8);
    const actor = a === 0 ? 'init' : 'token:operator';
    await zone({ type: 'AddZone', zone: zoneName, zoneId: uuid(), accountId, now }, actor);
    await account(
      { type: 'CreateAccount', accountId, name: `${prefix} ${a}`, operator: a === 0, now },
      actor,
    );
    for (const [id, member, role] of [
      [tokenId, `admin@${zoneName}`, 'admin'],
      [hex(8), `ci@${zoneName}`, 'member'],
    ] as const) {
      const tokenHash = createHash('sha256').update(id).digest('hex');
      await account({ type: 'IssueApiToken', accountId, tokenId: id, member, role, tokenHash, now }, actor);
    }
    await account(
      {
        type: 'RecordOriginCertificate',
        accountId,
        serial: hex(16),
        zone: zoneName,
        tokenId,
        notAfter: now + 15 * 365 * 24 * 3_600_000,
        now,
      },
      `token:${tokenId}`,
    );
    accounts.push({ accountId, zone: zoneName, tokenId, tunnels: [] });
  }
  for (let i = 0; i < tunnelCount; i++) {
    const a = accounts[i % accountCount]!;
    const name = `tunnel-${i}`;
    const hostnames: TunnelPlan['hostnames'] = [
      { name: `app-${i}.${a.zone}`, origin: random() < 0.5 ? 'auto' : 'manual' },
    ];
    if (random() < 0.2) hostnames.push({ name: `www-${i}.${a.zone}`, origin: 'manual' });
    a.tunnels.push({
      tunnelId: uuid(),
      name,
      accountId: a.accountId,
      zone: a.zone,
      hostnames,
      live: [],
      ha: random() < 0.1 ? 4 : 2,
      deleted: false,
    });
  }
  const tunnels = accounts.flatMap((a) => a.tunnels);
  for (const a of accounts) {
    const actor = `token:${a.tokenId}`;
    for (const t of a.tunnels) {
      await account(
        { type: 'ClaimTunnelName', accountId: a.accountId, name: t.name, tunnelId: t.tunnelId, now },
        actor,
      );
    }
    for (const t of a.tunnels) {
      await tunnel(
        {
          type: 'CreateTunnel',
          tunnelId: t.tunnelId,
          name: t.name,
          accountId: a.accountId,
          quick: false,
          now,
        },
        actor,
      );
    }
  }
  const route = async (t: TunnelPlan, h: TunnelPlan['hostnames'][number], actor: string) =>
    zone(
      {
        type: 'AddDnsRecord',
        zone: t.zone,
        accountId: t.accountId,
        recordId: uuid(),
        name: h.name,
        recordType: 'CNAME',
        content: `${t.tunnelId}.tunnels.warren-edge.localhost`,
        tunnelId: t.tunnelId,
        origin: h.origin,
        overwrite: false,
        now,
      },
      actor,
    );
  for (const a of accounts) {
    for (const t of a.tunnels) for (const h of t.hostnames) await route(t, h, `token:${a.tokenId}`);
  }

  // ---- churn: agents come and go ----
  const register = async (t: TunnelPlan) => {
    const connectorId = uuid();
    const pop = POPS[Math.floor(random() * POPS.length)]!;
    for (let connIndex = 0; connIndex < t.ha; connIndex++) {
      const connectionId = uuid();
      t.live.push(connectionId);
      await tunnel(
        {
          type: 'RegisterConnection',
          tunnelId: t.tunnelId,
          connectionId,
          connIndex,
          pop,
          clientVersion: '2026.1.0',
          clientOs: 'linux',
          clientArch: random() < 0.8 ? 'amd64' : 'arm64',
          originIp: `10.${Math.floor(random() * 256)}.${Math.floor(random() * 256)}.${Math.floor(random() * 256)}`,
          connectorId,
          now,
        },
        'agent',
      );
      now += 1;
    }
  };
  const unregisterAll = async (t: TunnelPlan) => {
    const reason = random() < 0.7 ? 'graceful' : 'lost';
    for (const connectionId of t.live.splice(0)) {
      const { minMs, maxMs } = CLEANUP_WINDOW;
      await tunnel(
        {
          type: 'UnregisterConnection',
          tunnelId: t.tunnelId,
          connectionId,
          reason,
          cleanupDelayMs: minMs + Math.floor(random() * (maxMs - minMs + 1)),
          now,
        },
        'edge',
      );
      now += 1;
    }
  };
  /** Tunnels whose agent stayed away past the deadline in the last round. */
  let away = new Set<TunnelPlan>();
  for (let round = 1; round <= ROUNDS; round++) {
    // The last round ends two hours before `endsAt`, so the cleanups it schedules (24–48 h later) are
    // still pending when an edge starts on the log, as the header says, rather than overdue.
    now = init.endsAt - (ROUNDS - round) * ROUND_MS - 2 * 3_600_000;
    for (const t of away) {
      const state = states.get(tunnelStream(t.tunnelId)) as { pendingCleanup: { dueAt: number } | null };
      const dueAt = state.pendingCleanup?.dueAt;
      if (dueAt === undefined) continue;
      await tunnel({ type: 'FireDnsCleanup', tunnelId: t.tunnelId, dueAt, now }, 'janitor');
      await zone(
        {
          type: 'DeleteDnsRecords',
          zone: t.zone,
          accountId: null,
          onlyTunnelId: t.tunnelId,
          onlyOrigin: 'auto',
          addedBefore: dueAt,
          reason: 'tunnel_inactive',
          now,
        },
        'janitor',
      );
    }
    const back = away;
    away = new Set();
    for (const t of tunnels) {
      await register(t);
      // `tunnel run --hostname` makes its auto route again after a cleanup took it.
      if (back.has(t)) for (const h of t.hostnames) if (h.origin === 'auto') await route(t, h, 'agent');
      now += 60_000;
      await unregisterAll(t);
      if (random() < 0.05) away.add(t);
    }
  }

  // ---- the present: most tunnels connected, a few deleted ----
  now = init.endsAt - 3_600_000;
  for (const t of tunnels) {
    if (random() < 0.05) {
      const actor = 'token:operator';
      await tunnel({ type: 'DeleteTunnel', tunnelId: t.tunnelId, force: false, now }, actor);
      await zone(
        {
          type: 'DeleteDnsRecords',
          zone: t.zone,
          accountId: null,
          onlyTunnelId: t.tunnelId,
          reason: 'tunnel_deleted',
          now,
        },
        actor,
      );
      await account(
        { type: 'ReleaseTunnelName', accountId: t.accountId, name: t.name, tunnelId: t.tunnelId, now },
        actor,
      );
      t.deleted = true;
    } else if (random() < 0.65) {
      await register(t);
    }
  }
  await flushQueued();
  await drain();
  const writeMs = performance.now() - started;
  if (log.headPosition - startHead !== events)
    throw new Error(`wrote ${events} events but the log went from ${startHead} to ${log.headPosition}`);
  await log.close();

  let records = 0;
  for (const a of accounts) {
    const z = states.get(zoneStream(a.zone)) as { records: Record<string, unknown> };
    records += Object.keys(z.records).length;
  }
  let pendingCleanups = 0;
  for (const t of tunnels) {
    const s = states.get(tunnelStream(t.tunnelId)) as { pendingCleanup: unknown };
    if (s.pendingCleanup) pendingCleanups++;
  }
  return {
    events,
    appends,
    accounts: accountCount,
    tunnels: tunnelCount,
    deletedTunnels: tunnels.filter((t) => t.deleted).length,
    records,
    liveConnections: tunnels.reduce((n, t) => n + t.live.length, 0),
    pendingCleanups,
    writeMs,
  };
}
