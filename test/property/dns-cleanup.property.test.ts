/**
 * Delayed DNS cleanup (DESIGN §4) end to end through a real `ControlPlane`: an in-memory event log that
 * outlives edge restarts (the same object is opened again), a `ManualClock`, the default 24–48 h window
 * and the cleanup draws taken from the generated timeline, so every deadline is reproducible.
 *
 * Timelines mix registrations, unregistrations (any reason), re-registrations, `auto` and `manual`
 * routes (with and without overwrite, so records move between tunnels), forced deletions, edge restarts
 * (time may pass while the edge is down) and clock steps from a millisecond to more than 48 h. A small
 * model says what should happen; after every step, once the edge has settled:
 *  1. nothing early: a `tunnel_inactive` deletion is recorded at or after the deadline that fell due,
 *     never while the tunnel holds a connection registered before it fell due;
 *  2. nothing missed: past a deadline, the tunnel's `auto` records added by then are gone, also when
 *     the deadline passed while the edge was down;
 *  3. nothing twice: no record is deleted twice, and each `DnsCleanupScheduled` falls due at most once;
 *  4. a registration before the deadline cancels it and the records stay;
 *  5. a record re-pointed to another tunnel, and any `manual` record, outlives the cleanup;
 *  6. no janitor timer outlives `close()`, and a running edge keeps one timer while a cleanup is pending.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { pino } from 'pino';
import { ControlPlane, type Principal } from '../../src/edge/control-plane.ts';
import type { ConnectionRecord, UnregisterReason } from '../../src/events/tunnel.ts';
import type { DnsRecordOrigin } from '../../src/events/zone.ts';
import { ManualClock } from '../../src/shared/clock.ts';
import { type ErrorCode, isWarrenError } from '../../src/shared/errors.ts';
import type { EventLog, StoredEvent } from '../../src/store/event-log.ts';
import { openMemoryEventLog } from '../../src/store/memory-event-log.ts';

const MINUTE_MS = 60_000;
const HOUR_MS = 60 * MINUTE_MS;
/** The edge's default (`defaultEdgeConfig.dnsCleanupWindowMs`). */
const WINDOW = { minMs: 24 * HOUR_MS, maxMs: 48 * HOUR_MS };
const ZONE = 'warren.localhost';
const HOSTS = ['app', 'api', 'www', 'ssh'].map((label) => `${label}.${ZONE}`);
const POPS = ['ams', 'sjc'];
/** The PoP of the edge that restarts; connections elsewhere are held by other edges. */
const THIS_POP = 'ams';
const INITIAL_TUNNELS = 2;
const MAX_TUNNELS = 4;
const CONNECTIONS_PER_TUNNEL = 2;
const REASONS: UnregisterReason[] = ['graceful', 'lost', 'replaced', 'revoked', 'edge_shutdown'];

/** The deadline the control plane draws: the window's low end plus `draw` of its width. */
function dueAtFor(now: number, draw: number): number {
  return now + WINDOW.minMs + Math.floor(draw * (WINDOW.maxMs - WINDOW.minMs + 1));
}

// ------------------------------------------------------------------ the edge under test

/**
 * One edge's world: the log and clock survive restarts; the control plane does not. `draw` is what the
 * injected `random` returns, set by each step before it can unregister anything.
 */
class World {
  readonly clock = new ManualClock();
  readonly eventLog: EventLog = openMemoryEventLog({ clock: this.clock });
  /** Warnings and errors the control plane logged; a failed janitor fire shows up here. */
  readonly problems: string[] = [];
  draw = 0;
  cp!: ControlPlane;
  principal!: Principal;

  readonly #components = {
    clock: this.clock,
    eventLog: this.eventLog,
    log: pino({ level: 'warn' }, { write: (line: string) => void this.problems.push(line) }),
    random: () => this.draw,
  };

  async open(): Promise<void> {
    this.cp = await ControlPlane.open(this.#components, {
      edgeDomain: 'edge.localhost',
      accountTunnelLimit: 1000,
      dnsCleanupWindowMs: WINDOW,
    });
    // The recovery of interrupted work that `open` starts is not awaited by it.
    await settle(this.eventLog);
  }

  async start(): Promise<void> {
    await this.open();
    const account = await this.cp.initialize({ accountName: 'ops', zone: ZONE, member: 'ops@example.com' });
    this.principal = this.cp.authenticate(account.token);
  }

  async createTunnel(name: string): Promise<string> {
    const t = await this.cp.createTunnel(this.principal, this.principal.accountId, name);
    return t.tunnelId;
  }

  connection(tunnelId: string, connectionId: string, pop: string): ConnectionRecord {
    return {
      tunnelId,
      connectionId,
      connIndex: Number(connectionId.at(-1)),
      pop,
      clientVersion: '2026.1.0',
      clientOs: 'linux',
      clientArch: 'amd64',
      originIp: '192.0.2.10',
      connectorId: `connector-${tunnelId.slice(0, 8)}`,
    };
  }

  route(tunnelId: string, hostname: string, origin: DnsRecordOrigin, overwrite = false) {
    return this.cp.routeDns(this.principal, this.principal.accountId, tunnelId, {
      hostname,
      origin,
      overwrite,
    });
  }

  /** Stops the edge, lets `downMs` pass with no janitor running, and starts it again on the same log. */
  async restart(downMs: number): Promise<void> {
    this.cp.close();
    assert.equal(this.clock.pendingTimers, 0, 'a janitor timer outlived close()');
    this.clock.advance(downMs);
    assert.equal(this.clock.pendingTimers, 0, 'a timer was armed while the edge was down');
    await this.open();
  }

  async advance(ms: number): Promise<void> {
    this.clock.advance(ms);
    await settle(this.eventLog);
  }

  /** Every event of the given type, in log order. */
  async eventsOf(type: string): Promise<StoredEvent[]> {
    const out: StoredEvent[] = [];
    for await (const e of this.eventLog.readAll()) if (e.type === type) out.push(e);
    return out;
  }

  /** Hostname → tunnel and origin, as the directory has them. */
  records(): Map<string, { tunnelId: string | null; origin: DnsRecordOrigin }> {
    return new Map(
      [...this.cp.directory.records.values()].map((r) => [
        r.name,
        { tunnelId: r.tunnelId, origin: r.origin },
      ]),
    );
  }
}

/** Turns of the event loop with no new event before the edge counts as settled. */
const QUIET_TURNS = 3;
const MAX_TURNS = 1_000;

/**
 * Waits for the janitor's fires and the recovery to finish. Both are promise chains on an in-memory log
 * (no I/O, no real timers), so every `setImmediate` turn drains all they have queued; a few quiet turns
 * in a row mean nothing is left in flight. A chain that keeps appending fails the test.
 */
async function settle(eventLog: EventLog): Promise<void> {
  let head = eventLog.headPosition;
  let quiet = 0;
  for (let turn = 0; turn < MAX_TURNS; turn++) {
    await new Promise<void>((resolve) => setImmediate(resolve));
    if (eventLog.headPosition !== head) {
      head = eventLog.headPosition;
      quiet = 0;
    } else if (++quiet >= QUIET_TURNS) {
      return;
    }
  }
  assert.fail(`the edge did not settle within ${MAX_TURNS} turns (log head at ${head})`);
}

/**
 * What the random timelines reached, summed over all runs: a guard against a generator that stops
 * producing the interesting cases and leaves the invariants checked on nothing.
 */
interface Coverage {
  /** `tunnel_inactive` deletions. */
  cleanedUp: number;
  /** Deadlines that passed while the edge was down. */
  overdueAtRestart: number;
  cancelled: number;
  /** Records overwritten to point elsewhere. */
  repointed: number;
}

// ------------------------------------------------------------------ the model

interface ModelTunnel {
  tunnelId: string;
  deleted: boolean;
  /** Live connection id → PoP. */
  connections: Map<string, string>;
  pendingDueAt: number | null;
}

interface ModelRecord {
  tunnelId: string;
  origin: DnsRecordOrigin;
  addedAt: number;
}

/** What should happen, written from the spec rather than from the deciders. */
class Model {
  readonly tunnels: ModelTunnel[] = [];
  /** By hostname: one CNAME per name. */
  readonly records = new Map<string, ModelRecord>();
  /** Tunnel events the current step should append. */
  expected = { scheduled: 0, cancelled: 0, due: 0 };

  addTunnel(tunnelId: string): void {
    this.tunnels.push({ tunnelId, deleted: false, connections: new Map(), pendingDueAt: null });
  }

  /** Refusal code, or null. */
  register(t: ModelTunnel, connectionId: string, pop: string): ErrorCode | null {
    if (t.deleted) return 'tunnel_deleted';
    if (t.connections.has(connectionId)) return null;
    t.connections.set(connectionId, pop);
    if (t.pendingDueAt !== null) {
      t.pendingDueAt = null;
      this.expected.cancelled++;
    }
    return null;
  }

  unregister(t: ModelTunnel, connectionId: string, now: number, draw: number): void {
    if (!t.connections.delete(connectionId)) return;
    if (t.connections.size === 0 && !t.deleted) {
      t.pendingDueAt = dueAtFor(now, draw);
      this.expected.scheduled++;
    }
  }

  route(
    t: ModelTunnel,
    host: string,
    origin: DnsRecordOrigin,
    overwrite: boolean,
    now: number,
  ): ErrorCode | null {
    if (t.deleted) return 'tunnel_deleted';
    const existing = this.records.get(host);
    if (existing?.tunnelId === t.tunnelId) {
      // The same route again changes nothing, and a manual route is never turned into an auto one.
      if (existing.origin === origin || existing.origin === 'manual') return null;
    } else if (existing && !overwrite) {
      return 'dns_record_exists';
    }
    this.records.set(host, { tunnelId: t.tunnelId, origin, addedAt: now });
    return null;
  }

  deleteTunnel(t: ModelTunnel): void {
    if (t.deleted) return;
    if (t.pendingDueAt !== null) this.expected.cancelled++;
    t.deleted = true;
    t.pendingDueAt = null;
    t.connections.clear();
    for (const [host, r] of this.records) if (r.tunnelId === t.tunnelId) this.records.delete(host);
  }

  /** The running edge reaches `now`: every deadline up to it falls due. Returns how many did. */
  reach(now: number): number {
    let fell = 0;
    for (const t of this.tunnels) {
      const dueAt = t.pendingDueAt;
      if (dueAt === null || dueAt > now) continue;
      t.pendingDueAt = null;
      this.expected.due++;
      fell++;
      for (const [host, r] of this.records) {
        if (r.tunnelId === t.tunnelId && r.origin === 'auto' && r.addedAt <= dueAt) this.records.delete(host);
      }
    }
    return fell;
  }

  get pendingCount(): number {
    return this.tunnels.filter((t) => t.pendingDueAt !== null).length;
  }
}

// ------------------------------------------------------------------ the log, checked as it grows

interface SeenRecord {
  name: string;
  tunnelId: string | null;
  origin: DnsRecordOrigin;
  addedAt: number;
  position: number;
}

/**
 * Reads the events each step appended and checks the safety invariants on them, whatever order the
 * edge wrote them in. It keeps its own fold of what it needs: records, live connections (with the
 * position they registered at), pending schedules and the last cleanup that fell due per tunnel.
 */
class LogAuditor {
  readonly #coverage: Coverage;
  #next = 1;
  readonly #records = new Map<string, SeenRecord>();
  readonly #deletedRecords = new Set<string>();
  readonly #connections = new Map<string, Map<string, number>>();
  readonly #scheduled = new Map<string, { dueAt: number }>();
  readonly #lastDue = new Map<string, { dueAt: number; position: number }>();

  constructor(coverage: Coverage) {
    this.#coverage = coverage;
  }

  /** Checks the new events; returns how many of each cleanup event there were. */
  async consume(eventLog: EventLog): Promise<{ scheduled: number; cancelled: number; due: number }> {
    const counts = { scheduled: 0, cancelled: 0, due: 0 };
    for await (const e of eventLog.readAll({ fromPosition: this.#next })) {
      this.#next = e.position + 1;
      this.#check(e, counts);
    }
    return counts;
  }

  #check(e: StoredEvent, counts: { scheduled: number; cancelled: number; due: number }): void {
    const at = `${e.type} at position ${e.position}`;
    switch (e.type) {
      case 'DnsRecordAdded': {
        const d = e.data as Omit<SeenRecord, 'position'> & { recordId: string };
        assert.ok(
          !this.#records.has(d.recordId) && !this.#deletedRecords.has(d.recordId),
          `${at}: id reused`,
        );
        this.#records.set(d.recordId, { ...d, position: e.position });
        return;
      }
      case 'DnsRecordDeleted': {
        const d = e.data as { recordId: string; tunnelId: string | null; reason: string };
        assert.ok(!this.#deletedRecords.has(d.recordId), `${at}: record ${d.recordId} deleted twice`);
        const r = this.#records.get(d.recordId);
        assert.ok(r, `${at}: record ${d.recordId} was never added`);
        this.#records.delete(d.recordId);
        this.#deletedRecords.add(d.recordId);
        assert.equal(d.tunnelId, r.tunnelId, `${at}: deleted for another tunnel than it points at`);
        if (d.reason === 'tunnel_inactive') {
          this.#checkCleanupDeletion(e, r);
          this.#coverage.cleanedUp++;
        } else {
          assert.ok(d.reason === 'overwritten' || d.reason === 'tunnel_deleted', `${at}: reason ${d.reason}`);
          if (d.reason === 'overwritten') this.#coverage.repointed++;
        }
        return;
      }
      case 'ConnectionRegistered': {
        const d = e.data as { tunnelId: string; connectionId: string };
        const live = this.#connections.get(d.tunnelId) ?? new Map<string, number>();
        live.set(d.connectionId, e.position);
        this.#connections.set(d.tunnelId, live);
        return;
      }
      case 'ConnectionUnregistered': {
        const d = e.data as { tunnelId: string; connectionId: string };
        this.#connections.get(d.tunnelId)?.delete(d.connectionId);
        return;
      }
      case 'DnsCleanupScheduled': {
        const d = e.data as { tunnelId: string; dueAt: number; scheduledAt: number };
        counts.scheduled++;
        assert.ok(!this.#scheduled.has(d.tunnelId), `${at}: a cleanup was already pending`);
        assert.equal(this.#connections.get(d.tunnelId)?.size ?? 0, 0, `${at}: the tunnel is connected`);
        const delay = d.dueAt - d.scheduledAt;
        assert.ok(delay >= WINDOW.minMs && delay <= WINDOW.maxMs, `${at}: ${delay} ms is outside the window`);
        this.#scheduled.set(d.tunnelId, { dueAt: d.dueAt });
        return;
      }
      case 'DnsCleanupCancelled': {
        const d = e.data as { tunnelId: string; dueAt: number };
        counts.cancelled++;
        this.#coverage.cancelled++;
        assert.equal(this.#scheduled.get(d.tunnelId)?.dueAt, d.dueAt, `${at}: no such cleanup pending`);
        this.#scheduled.delete(d.tunnelId);
        return;
      }
      case 'DnsCleanupDue': {
        const d = e.data as { tunnelId: string; dueAt: number; firedAt: number };
        counts.due++;
        // At most once per schedule: falling due ends it, like a cancellation.
        assert.equal(this.#scheduled.get(d.tunnelId)?.dueAt, d.dueAt, `${at}: no such cleanup pending`);
        this.#scheduled.delete(d.tunnelId);
        assert.ok(d.firedAt >= d.dueAt && e.recordedAt >= d.dueAt, `${at}: fell due early`);
        assert.equal(this.#connections.get(d.tunnelId)?.size ?? 0, 0, `${at}: the tunnel is connected`);
        this.#lastDue.set(d.tunnelId, { dueAt: d.dueAt, position: e.position });
        return;
      }
      case 'TunnelDeleted': {
        const d = e.data as { tunnelId: string };
        this.#scheduled.delete(d.tunnelId);
        return;
      }
      default:
        return;
    }
  }

  #checkCleanupDeletion(e: StoredEvent, r: SeenRecord): void {
    const at = `cleanup of ${r.name} at position ${e.position}`;
    assert.equal(r.origin, 'auto', `${at}: a manual record was cleaned up`);
    const due = r.tunnelId === null ? undefined : this.#lastDue.get(r.tunnelId);
    assert.ok(due, `${at}: no cleanup of tunnel ${r.tunnelId} ever fell due`);
    assert.ok(
      e.recordedAt >= due.dueAt,
      `${at}: recorded ${due.dueAt - e.recordedAt} ms before the deadline`,
    );
    assert.ok(r.addedAt <= due.dueAt, `${at}: the record was added after the deadline`);
    assert.ok(r.position < due.position, `${at}: the record was added after the cleanup fell due`);
    for (const [connectionId, registeredAt] of this.#connections.get(r.tunnelId!) ?? []) {
      assert.ok(
        registeredAt > due.position,
        `${at}: connection ${connectionId} registered before the deadline fired and is still live`,
      );
    }
  }
}

// ------------------------------------------------------------------ timelines

/** A clock step: a fixed length, or to a pending deadline (by index among them) give or take 1 ms. */
type Advance = { kind: 'by'; ms: number } | { kind: 'toDeadline'; pending: number; offsetMs: -1 | 0 | 1 };

type Step =
  | { kind: 'register'; tunnel: number; conn: number; pop: string }
  /**
   * `live`: one of the live connections (`tunnel` is then an index among all of them), so that
   * tunnels do go inactive; otherwise any id, live or not.
   */
  | {
      kind: 'unregister';
      live: boolean;
      tunnel: number;
      conn: number;
      reason: UnregisterReason;
      draw: number;
    }
  | { kind: 'route'; tunnel: number; host: number; origin: DnsRecordOrigin; overwrite: boolean }
  | { kind: 'deleteTunnel'; tunnel: number }
  | { kind: 'createTunnel' }
  | { kind: 'advance'; by: Advance }
  /** `dropLocal`: as `startEdge` does, the restarted edge unregisters the connections it held (`lost`). */
  | { kind: 'restart'; down: Advance; dropLocal: boolean; draw: number };

const pick = <T>(...values: T[]) => fc.constantFrom(...values);
const rec = <T>(model: { [K in keyof T]: fc.Arbitrary<T[K]> }) =>
  fc.record(model, { noNullPrototype: true }) as fc.Arbitrary<T>;
const one = <T>(weight: number, arbitrary: fc.Arbitrary<T>) => ({ weight, arbitrary });

const tunnelIndex = fc.nat({ max: MAX_TUNNELS - 1 });
/** The window's ends are drawn often: a deadline exactly 24 h or 48 h away. */
const draw = fc.oneof(
  pick(0, 1 - Number.EPSILON),
  fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
);
const advance: fc.Arbitrary<Advance> = fc.oneof(
  rec({
    kind: pick('by' as const),
    ms: fc.oneof(
      fc.integer({ min: 0, max: 10 * MINUTE_MS }),
      fc.integer({ min: HOUR_MS, max: 50 * HOUR_MS }),
      pick(WINDOW.minMs, WINDOW.maxMs, WINDOW.maxMs + 1, 72 * HOUR_MS),
    ),
  }),
  rec({
    kind: pick('toDeadline' as const),
    pending: fc.nat({ max: 3 }),
    offsetMs: pick<-1 | 0 | 1>(-1, 0, 1),
  }),
);

const step: fc.Arbitrary<Step> = fc.oneof(
  one(
    5,
    rec({
      kind: pick('register' as const),
      tunnel: tunnelIndex,
      conn: fc.nat({ max: CONNECTIONS_PER_TUNNEL - 1 }),
      pop: pick(...POPS),
    }),
  ),
  one(
    5,
    rec({
      kind: pick('unregister' as const),
      live: pick(true, true, true, false),
      tunnel: fc.nat({ max: 15 }),
      conn: fc.nat({ max: CONNECTIONS_PER_TUNNEL - 1 }),
      reason: pick(...REASONS),
      draw,
    }),
  ),
  one(
    5,
    rec({
      kind: pick('route' as const),
      tunnel: tunnelIndex,
      host: fc.nat({ max: HOSTS.length - 1 }),
      origin: pick<DnsRecordOrigin>('auto', 'auto', 'manual'),
      overwrite: fc.boolean(),
    }),
  ),
  one(1, rec({ kind: pick('deleteTunnel' as const), tunnel: tunnelIndex })),
  one(1, rec({ kind: pick('createTunnel' as const) })),
  one(4, rec({ kind: pick('advance' as const), by: advance })),
  one(3, rec({ kind: pick('restart' as const), down: advance, dropLocal: fc.boolean(), draw })),
);

/** The clock step in ms from `now`; a deadline already behind (or none pending) gives 0. */
function resolveAdvance(a: Advance, model: Model, now: number): number {
  if (a.kind === 'by') return a.ms;
  const pending = model.tunnels.flatMap((t) => (t.pendingDueAt === null ? [] : [t.pendingDueAt]));
  if (pending.length === 0) return 0;
  return Math.max(0, pending[a.pending % pending.length]! + a.offsetMs - now);
}

/** Runs `call`; it must be refused with `code`, or succeed when `code` is null. */
async function expectOutcome(code: ErrorCode | null, call: () => Promise<unknown>): Promise<void> {
  try {
    await call();
  } catch (err) {
    if (code !== null && isWarrenError(err, code)) return;
    throw err;
  }
  assert.equal(code, null, `expected the refusal ${code}`);
}

async function runStep(world: World, model: Model, s: Step, coverage: Coverage): Promise<void> {
  const tunnelAt = (i: number) => model.tunnels[i % model.tunnels.length]!;
  const connId = (t: ModelTunnel, k: number) => `${t.tunnelId.slice(0, 8)}-conn-${k}`;
  switch (s.kind) {
    case 'register': {
      const t = tunnelAt(s.tunnel);
      const id = connId(t, s.conn);
      const refusal = model.register(t, id, s.pop);
      await expectOutcome(refusal, () =>
        world.cp.registerConnection(world.connection(t.tunnelId, id, s.pop)),
      );
      return;
    }
    case 'unregister': {
      const live = model.tunnels.flatMap((t) => [...t.connections.keys()].map((id) => ({ t, id })));
      const { t, id } =
        s.live && live.length > 0
          ? live[s.tunnel % live.length]!
          : { t: tunnelAt(s.tunnel), id: connId(tunnelAt(s.tunnel), s.conn) };
      world.draw = s.draw;
      model.unregister(t, id, world.clock.now(), s.draw);
      await world.cp.unregisterConnection({ tunnelId: t.tunnelId, connectionId: id }, s.reason);
      return;
    }
    case 'route': {
      const t = tunnelAt(s.tunnel);
      const host = HOSTS[s.host]!;
      const refusal = model.route(t, host, s.origin, s.overwrite, world.clock.now());
      await expectOutcome(refusal, () => world.route(t.tunnelId, host, s.origin, s.overwrite));
      return;
    }
    case 'deleteTunnel': {
      const t = tunnelAt(s.tunnel);
      model.deleteTunnel(t);
      await world.cp.deleteTunnel(world.principal, world.principal.accountId, t.tunnelId, true);
      return;
    }
    case 'createTunnel': {
      if (model.tunnels.length >= MAX_TUNNELS) return;
      model.addTunnel(await world.createTunnel(`tunnel-${model.tunnels.length}`));
      return;
    }
    case 'advance': {
      const ms = resolveAdvance(s.by, model, world.clock.now());
      await world.advance(ms);
      model.reach(world.clock.now());
      return;
    }
    case 'restart': {
      const ms = resolveAdvance(s.down, model, world.clock.now());
      await world.restart(ms);
      // Overdue deadlines fall due at once, with no clock step after the start.
      coverage.overdueAtRestart += model.reach(world.clock.now());
      if (!s.dropLocal) return;
      world.draw = s.draw;
      for (const t of model.tunnels) {
        for (const [id, pop] of [...t.connections]) {
          if (pop !== THIS_POP) continue;
          model.unregister(t, id, world.clock.now(), s.draw);
          await world.cp.unregisterConnection({ tunnelId: t.tunnelId, connectionId: id }, 'lost');
        }
      }
      return;
    }
    default: {
      const _exhaustive: never = s;
      throw new Error(`unknown step ${JSON.stringify(_exhaustive)}`);
    }
  }
}

/** The edge against the model, once it has settled after a step. */
async function checkAfterStep(world: World, model: Model, auditor: LogAuditor, s: Step): Promise<void> {
  const what = `after ${JSON.stringify(s)}`;
  const counts = await auditor.consume(world.eventLog);
  assert.deepEqual(counts, model.expected, `${what}: cleanup events appended`);
  model.expected = { scheduled: 0, cancelled: 0, due: 0 };

  const expectedRecords = new Map(
    [...model.records].map(([host, r]) => [host, { tunnelId: r.tunnelId, origin: r.origin }]),
  );
  assert.deepEqual(world.records(), expectedRecords, `${what}: DNS records`);

  for (const t of model.tunnels) {
    const view = world.cp.directory.tunnels.get(t.tunnelId)!;
    assert.equal(view.pendingCleanup?.dueAt ?? null, t.pendingDueAt, `${what}: deadline of ${t.tunnelId}`);
    assert.deepEqual(new Set(view.connections.keys()), new Set(t.connections.keys()), `${what}: connections`);
    assert.equal(view.deletedAt !== null, t.deleted, `${what}: deletion of ${t.tunnelId}`);
  }
  // One timer at a time, for the earliest deadline; none while nothing is pending.
  assert.equal(world.clock.pendingTimers, model.pendingCount > 0 ? 1 : 0, `${what}: janitor timers`);
  assert.deepEqual(world.problems, [], `${what}: the control plane logged problems`);
}

async function runTimeline(steps: Step[], coverage: Coverage): Promise<void> {
  const world = new World();
  const model = new Model();
  const auditor = new LogAuditor(coverage);
  try {
    await world.start();
    for (let i = 0; i < INITIAL_TUNNELS; i++) model.addTunnel(await world.createTunnel(`tunnel-${i}`));
    await auditor.consume(world.eventLog);
    for (const s of steps) {
      await runStep(world, model, s, coverage);
      await settle(world.eventLog);
      await checkAfterStep(world, model, auditor, s);
    }
    world.cp.close();
    assert.equal(world.clock.pendingTimers, 0, 'a janitor timer outlived close()');
  } finally {
    world.cp?.close();
  }
}

// ------------------------------------------------------------------ tests

describe('delayed DNS cleanup through the control plane', () => {
  it('keeps its invariants over arbitrary timelines of connections, routes, deletions, restarts and time', async () => {
    const coverage: Coverage = { cleanedUp: 0, overdueAtRestart: 0, cancelled: 0, repointed: 0 };
    await fc.assert(
      fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 30, size: 'max' }), (steps) =>
        runTimeline(steps, coverage),
      ),
      { numRuns: 100, includeErrorInReport: true },
    );
    for (const [what, n] of Object.entries(coverage)) assert.ok(n > 0, `no timeline reached ${what}`);
  });

  it('deletes the automatic record once the deadline passes, not a minute before, and keeps the manual one', async () => {
    const world = new World();
    await world.start();
    try {
      const tunnelId = await world.createTunnel('web');
      await world.cp.registerConnection(world.connection(tunnelId, 'conn-0', THIS_POP));
      await world.route(tunnelId, 'app.warren.localhost', 'auto');
      await world.route(tunnelId, 'www.warren.localhost', 'manual');

      // The lowest draw: the deadline is exactly 24 h after the last connection went.
      world.draw = 0;
      const stoppedAt = world.clock.now();
      await world.cp.unregisterConnection({ tunnelId, connectionId: 'conn-0' }, 'graceful');
      const [scheduled] = await world.eventsOf('DnsCleanupScheduled');
      assert.equal((scheduled!.data as { dueAt: number }).dueAt, stoppedAt + 24 * HOUR_MS);

      await world.advance(23 * HOUR_MS + 59 * MINUTE_MS);
      assert.deepEqual([...world.records().keys()].sort(), ['app.warren.localhost', 'www.warren.localhost']);

      await world.advance(2 * MINUTE_MS);
      assert.deepEqual([...world.records().keys()], ['www.warren.localhost']);
      const [deleted] = await world.eventsOf('DnsRecordDeleted');
      assert.equal((deleted!.data as { name: string }).name, 'app.warren.localhost');
      assert.equal((deleted!.data as { reason: string }).reason, 'tunnel_inactive');
      assert.equal(world.clock.pendingTimers, 0);
    } finally {
      world.cp.close();
    }
  });

  it('deletes overdue records as soon as an edge that was down across the deadline starts again', async () => {
    const world = new World();
    await world.start();
    try {
      const tunnelId = await world.createTunnel('web');
      await world.cp.registerConnection(world.connection(tunnelId, 'conn-0', THIS_POP));
      await world.route(tunnelId, 'app.warren.localhost', 'auto');
      // The highest draw: the deadline is 48 h away.
      world.draw = 1 - Number.EPSILON;
      await world.cp.unregisterConnection({ tunnelId, connectionId: 'conn-0' }, 'edge_shutdown');

      await world.restart(72 * HOUR_MS);
      const restartedAt = world.clock.now();
      assert.deepEqual([...world.records().keys()], []);
      const [deleted] = await world.eventsOf('DnsRecordDeleted');
      assert.equal(deleted!.recordedAt, restartedAt, 'deleted at the restart, with no clock step after it');
      assert.equal((await world.eventsOf('DnsCleanupDue')).length, 1);
    } finally {
      world.cp.close();
    }
  });

  it("keeps a route made in the deadline's own millisecond after the cleanup, across a restart", async () => {
    const world = new World();
    await world.start();
    try {
      const tunnelId = await world.createTunnel('web');
      await world.cp.registerConnection(world.connection(tunnelId, 'conn-0', THIS_POP));
      await world.route(tunnelId, 'app.warren.localhost', 'auto');
      world.draw = 0;
      await world.cp.unregisterConnection({ tunnelId, connectionId: 'conn-0' }, 'graceful');
      await world.advance(24 * HOUR_MS);
      assert.deepEqual([...world.records().keys()], []);

      // `tunnel run --hostname` again, with the clock still on the deadline: a new record, added at
      // `dueAt` like the one just cleaned up, but after the cleanup fell due.
      await world.cp.registerConnection(world.connection(tunnelId, 'conn-1', THIS_POP));
      await world.route(tunnelId, 'app.warren.localhost', 'auto');
      await world.restart(0);
      assert.deepEqual(world.records().get('app.warren.localhost'), { tunnelId, origin: 'auto' });
      assert.equal((await world.eventsOf('DnsRecordDeleted')).length, 1);
    } finally {
      world.cp.close();
    }
  });

  it('keeps the records of a tunnel that reconnects before the deadline, and a record re-pointed elsewhere', async () => {
    const world = new World();
    await world.start();
    try {
      const web = await world.createTunnel('web');
      const api = await world.createTunnel('api');
      await world.cp.registerConnection(world.connection(web, 'conn-0', THIS_POP));
      await world.route(web, 'app.warren.localhost', 'auto');
      await world.route(web, 'api.warren.localhost', 'auto');
      world.draw = 0.5;
      await world.cp.unregisterConnection({ tunnelId: web, connectionId: 'conn-0' }, 'lost');
      // `api.` moves to the other tunnel while `web` is down.
      await world.route(api, 'api.warren.localhost', 'auto', true);

      await world.advance(30 * HOUR_MS);
      await world.cp.registerConnection(world.connection(web, 'conn-1', 'sjc'));
      assert.equal((await world.eventsOf('DnsCleanupCancelled')).length, 1);
      await world.advance(72 * HOUR_MS);
      assert.deepEqual(world.records().get('app.warren.localhost'), { tunnelId: web, origin: 'auto' });
      assert.deepEqual(world.records().get('api.warren.localhost'), { tunnelId: api, origin: 'auto' });

      // Gone again for good: only `web`'s own record goes.
      await world.cp.unregisterConnection({ tunnelId: web, connectionId: 'conn-1' }, 'graceful');
      await world.advance(48 * HOUR_MS);
      assert.deepEqual([...world.records().keys()], ['api.warren.localhost']);
    } finally {
      world.cp.close();
    }
  });
});
