/**
 * The control-plane benchmarks of issue 3, run by `npm run bench` (bench/run.ts) after the data-plane
 * ones, or alone with `--only replay,api,dns,tunnels1000`. The edge always runs in a process of its
 * own (bench/control-plane-child.ts) on a LevelDB log in a temporary directory; every request goes to
 * 127.0.0.1 and every loop is bounded.
 *
 *   replay       edge start-up on a log of 100k and of 1M realistic events (bench/event-history.ts):
 *                opening the log, loading the directory snapshot if there is one, folding the log
 *                after it, arming the janitor, listening. Three starts per size: with no snapshot
 *                (the first start, or after the snapshot was deleted: the whole log is folded), after
 *                a clean stop (snapshot at the end of the log), and after a crash (a snapshot 10% of
 *                the log behind its end: at 1M, one background-snapshot interval). Target: 1M in
 *                under 10 s. Histories are cached in $TMPDIR/warren-bench-histories for 12 hours
 *                (writing 1M events takes minutes), keyed by size and by the code that writes them;
 *                WARREN_BENCH_FRESH_HISTORY=1 writes new ones.
 *   api          tunnels created/s and routes added/s through the HTTP API with a bearer token, at
 *                concurrency 1, 16 and 64, with p50/p99 latency.
 *   dns          UDP queries/s answered by the edge's DNS server (route CNAMEs, tunnel names, NXDOMAIN),
 *                at concurrency 1, 16 and 64, with p50/p99.
 *   tunnels1000  1000 tunnels of one account, each with one registered connection from a light agent
 *                on the real protocol (test/support/light-agent.ts); the edge's RSS before and after.
 *                Target: RSS under 300 MB.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import dgram from 'node:dgram';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import dnsPacket from 'dns-packet';
import { parseCredentialsFile } from '../src/agent/credentials.ts';
import type { TunnelCredentials } from '../src/agent/tunnel-connection.ts';
import { systemClock } from '../src/shared/clock.ts';
import { silentLogger } from '../src/shared/log.ts';
import { LightAgent } from '../test/support/light-agent.ts';
import { type HistoryCounts, writeHistory } from './event-history.ts';
import {
  BenchError,
  cpuMicros,
  fmt,
  machine,
  machineBusyMicros,
  percentile,
  ROOT,
  resultsSection,
  type Service,
  startService,
  statusKiB,
  stopService,
  tempPaths,
} from './lib.ts';

export const CONTROL_PLANE_SECTIONS = ['replay', 'api', 'dns', 'tunnels1000'] as const;
export type ControlPlaneSection = (typeof CONTROL_PLANE_SECTIONS)[number];

const REPLAY_SIZES = [100_000, 1_000_000];
const REPLAY_TARGET_MS = 10_000;
/** The crash case's tail: events after the last snapshot, as a share of the log. */
const REPLAY_TAIL = 0.1;
const HISTORY_CACHE = path.join(os.tmpdir(), 'warren-bench-histories');
/** Older histories are written again: their pending DNS cleanups (due 22 h+ after they end) come due. */
const HISTORY_CACHE_MAX_AGE_MS = 12 * 3_600_000;
/** What a cached history depends on: the generator, the deciders, the stored format. */
const HISTORY_SOURCES = [
  'bench/event-history.ts',
  'src/events/account.ts',
  'src/events/tunnel.ts',
  'src/events/zone.ts',
  'src/events/decider.ts',
  'src/store/codec.ts',
  'src/store/level-event-log.ts',
];
const CONCURRENCIES = [1, 16, 64];
/** Requests of each kind per concurrency: the same work at every level, so the levels compare. */
const API_REQUESTS = 1000;
const DNS_SECONDS = 3;
const DNS_MAX_QUERIES = 200_000;
const DNS_TIMEOUT_MS = 1000;
const TUNNELS = 1000;
const RSS_TARGET_BYTES = 300 * 2 ** 20;
/** How long RSS is watched once every tunnel is registered: two heartbeat rounds. */
const RSS_WATCH_MS = 10_000;
const CHILD = path.join(ROOT, 'bench/control-plane-child.ts');

// ---------------------------------------------------------------------------------------------
// Results

/** One start of an edge on a log. */
export interface ReplayStart {
  /** `none`: no snapshot (the whole log is folded); `clean`: the snapshot of a clean stop; `crash`: an older one. */
  snapshot: 'none' | 'clean' | 'crash';
  events: number;
  /** Whether the start loaded a snapshot, and how many events it folded after it. */
  fromSnapshot: boolean;
  folded: number;
  openLogMs: number;
  startEdgeMs: number;
  cpuMs: number;
  rssBytes: number;
  heapUsedBytes: number;
  /** VmHWM once started: the start-up's peak. */
  peakRssBytes: number;
  /** The clean stop after it, snapshot save included, and the snapshot's size. */
  closeMs: number;
  snapshotBytes: number;
  otherCores: number;
}

export interface ReplayFigures {
  target: number;
  events: number;
  tunnels: number;
  liveConnections: number;
  pendingCleanups: number;
  writeMs: number;
  /** The history came from the cache (its `writeMs` is from when it was written). */
  cached: boolean;
  dbBytes: number;
  starts: ReplayStart[];
}

export interface RateFigures {
  c: number;
  requests: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  failures: number;
}

export interface ControlPlaneResults {
  replay?: ReplayFigures[];
  api?: { creates: RateFigures[]; routes: RateFigures[]; tunnelsAtEnd: number; otherCores: number };
  dns?: { runs: (RateFigures & { lost: number })[]; names: number; otherCores: number };
  tunnels1000?: {
    rssIdleBytes: number;
    rssTunnelsBytes: number;
    rssRegisteredBytes: number;
    rssMaxBytes: number;
    hwmBytes: number;
    registerMs: number;
    otherCores: number;
  };
}

// ---------------------------------------------------------------------------------------------
// Helpers

const say = (line: string) => process.stdout.write(`bench: ${line}\n`);

/** Runs `fn(i)` for i in [0, count) with at most `concurrency` in flight; returns each call's ms. */
async function pool(concurrency: number, count: number, fn: (i: number) => Promise<void>): Promise<number[]> {
  const ms: number[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, count) }, async () => {
      while (next < count) {
        const i = next++;
        const t = performance.now();
        await fn(i);
        ms.push(performance.now() - t);
      }
    }),
  );
  return ms;
}

function rate(c: number, ms: number[], wallMs: number, failures: number): RateFigures {
  const sorted = [...ms].sort((a, b) => a - b);
  return {
    c,
    requests: ms.length,
    perSecond: (ms.length / wallMs) * 1000,
    p50Ms: percentile(sorted, 0.5),
    p99Ms: percentile(sorted, 0.99),
    failures,
  };
}

/**
 * Cores that processes other than this one and `pids` kept busy over a measurement. `extraUs`: CPU of
 * processes that have exited meanwhile (their /proc entry is gone), as they reported it.
 */
function loadMeter(pids: number[]): (extraUs?: number) => number {
  const mine = () => cpuMicros(process.pid) + pids.reduce((n, p) => n + (cpuMicros(p) || 0), 0);
  const t0 = performance.now();
  const busy0 = machineBusyMicros();
  const ours0 = mine();
  return (extraUs = 0) => {
    const wallUs = (performance.now() - t0) * 1000;
    return Math.max(0, machineBusyMicros() - busy0 - (mine() - ours0) - extraUs) / wallUs;
  };
}

interface ApiClient {
  request(method: string, urlPath: string, body?: unknown): Promise<{ status: number; json: unknown }>;
  close(): void;
}

function apiClient(apiUrl: string, token: string, maxSockets: number): ApiClient {
  const agent = new http.Agent({ keepAlive: true, maxSockets });
  const base = new URL(apiUrl);
  return {
    request: (method, urlPath, body) =>
      new Promise((resolve, reject) => {
        const payload = body === undefined ? undefined : JSON.stringify(body);
        const req = http.request(
          {
            host: base.hostname,
            port: base.port,
            method,
            path: urlPath,
            agent,
            headers: {
              authorization: `Bearer ${token}`,
              ...(payload
                ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }
                : {}),
            },
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (d: Buffer) => chunks.push(d));
            res.once('end', () => {
              const text = Buffer.concat(chunks).toString();
              let json: unknown;
              try {
                json = JSON.parse(text);
              } catch {
                json = text;
              }
              resolve({ status: res.statusCode ?? 0, json });
            });
            res.once('error', reject);
          },
        );
        req.setTimeout(30_000, () => req.destroy(new Error(`${method} ${urlPath}: no answer within 30 s`)));
        req.once('error', reject);
        req.end(payload);
      }),
    close: () => agent.destroy(),
  };
}

interface ChildEdge {
  service: Service;
  apiUrl: string;
  tunnelPort: number;
  dnsPort: number;
  edgeDomain: string;
  accountId: string;
  zone: string;
  token: string;
  dataDir: string;
}

function tempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempPaths.push(dir);
  return dir;
}

function removeDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
  const i = tempPaths.indexOf(dir);
  if (i >= 0) tempPaths.splice(i, 1);
}

function dirBytes(dir: string): number {
  let n = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) n += fs.statSync(path.join(entry.parentPath, entry.name)).size;
  }
  return n;
}

async function startChildEdge(name: string, prof: string[]): Promise<ChildEdge> {
  const dataDir = tempDir('warren-bench-edge-');
  const { service, match } = await startService(
    name,
    [...prof, '--import', 'tsx', CHILD, 'edge', dataDir],
    /^ready (\{.*\})$/m,
  );
  return { service, dataDir, ...(JSON.parse(match[1]!) as Omit<ChildEdge, 'service' | 'dataDir'>) };
}

async function stopChildEdge(edge: ChildEdge): Promise<void> {
  await stopService(edge.service, 'SIGTERM', 15_000);
  removeDir(edge.dataDir);
}

interface CreatedTunnel {
  id: string;
  credentials: TunnelCredentials;
}

async function createTunnels(
  api: ApiClient,
  edge: ChildEdge,
  prefix: string,
  count: number,
  concurrency: number,
  into: CreatedTunnel[],
): Promise<{ ms: number[]; failures: number; wallMs: number }> {
  let failures = 0;
  const t = performance.now();
  const ms = await pool(concurrency, count, async (i) => {
    const r = await api.request('POST', `/v1/accounts/${edge.accountId}/tunnels`, { name: `${prefix}-${i}` });
    if (r.status !== 201) {
      failures++;
      return;
    }
    const result = (r.json as { result: { id: string; credentials: unknown } }).result;
    into.push({
      id: result.id,
      credentials: parseCredentialsFile(JSON.stringify(result.credentials), 'api'),
    });
  });
  return { ms, failures, wallMs: performance.now() - t };
}

// ---------------------------------------------------------------------------------------------
// Sections

/** The cache entry for a history: its directory, and the counts it was written with. */
function historyCacheEntry(name: string): { dir: string; countsFile: string } {
  const hash = createHash('sha256');
  for (const file of HISTORY_SOURCES) hash.update(fs.readFileSync(path.join(ROOT, file)));
  const dir = path.join(HISTORY_CACHE, `${name}-${hash.digest('hex').slice(0, 12)}`);
  return { dir, countsFile: `${dir}.json` };
}

/**
 * A copy (in a temporary directory) of the history `name`, written by `write` into an empty directory
 * when the cache has no fresh one. The copy is the bench's to change; the cache entry is not.
 */
async function cachedHistory(
  name: string,
  write: (dir: string) => Promise<HistoryCounts>,
): Promise<{ dir: string; source: string; counts: HistoryCounts; cached: boolean }> {
  const entry = historyCacheEntry(name);
  const fresh =
    process.env.WARREN_BENCH_FRESH_HISTORY !== '1' &&
    fs.existsSync(entry.countsFile) &&
    Date.now() - fs.statSync(entry.countsFile).mtimeMs < HISTORY_CACHE_MAX_AGE_MS;
  if (!fresh) {
    fs.rmSync(entry.dir, { recursive: true, force: true });
    fs.rmSync(entry.countsFile, { force: true });
    fs.mkdirSync(HISTORY_CACHE, { recursive: true });
    const writing = `${entry.dir}.writing`;
    fs.rmSync(writing, { recursive: true, force: true });
    tempPaths.push(writing);
    const counts = await write(writing);
    fs.renameSync(writing, entry.dir);
    tempPaths.splice(tempPaths.indexOf(writing), 1);
    // Written last: an entry without it is one whose writing was cut short.
    fs.writeFileSync(entry.countsFile, JSON.stringify(counts));
  }
  const dir = tempDir('warren-bench-log-');
  fs.cpSync(entry.dir, dir, { recursive: true });
  const counts = JSON.parse(fs.readFileSync(entry.countsFile, 'utf8')) as HistoryCounts;
  return { dir, source: entry.dir, counts, cached: fresh };
}

function snapshotFilesOf(dir: string): string[] {
  const snapshots = path.join(dir, 'snapshots');
  return fs.existsSync(snapshots) ? fs.readdirSync(snapshots).filter((f) => f.endsWith('.snapshot')) : [];
}

/** Starts an edge on `dir` in a child process, lets it stop cleanly, and returns what it measured. */
async function startOnce(
  name: string,
  dir: string,
  snapshot: ReplayStart['snapshot'],
  prof: string[],
): Promise<ReplayStart> {
  const meter = loadMeter([]);
  const { service, match } = await startService(
    name,
    [...prof, '--import', 'tsx', CHILD, 'replay', dir],
    /^replayed (\{.*\})$/m,
    300_000,
  );
  const child = JSON.parse(match[1]!) as Omit<ReplayStart, 'snapshot' | 'otherCores'>;
  // It stops by itself once it has reported (and writes its CPU profile then); a signal would lose it.
  if (service.child.exitCode === null && service.child.signalCode === null) {
    const exited = once(service.child, 'exit');
    const timer = setTimeout(() => void stopService(service, 'SIGTERM', 5_000), 60_000);
    await exited;
    clearTimeout(timer);
  }
  const start: ReplayStart = { snapshot, ...child, otherCores: meter(child.cpuMs * 1000) };
  const totalMs = start.openLogMs + start.startEdgeMs;
  say(
    `        ${snapshot === 'none' ? 'no snapshot' : snapshot === 'clean' ? 'after a clean stop' : 'after a crash'}: ` +
      `start-up ${(totalMs / 1000).toFixed(2)} s (${start.fromSnapshot ? 'snapshot + ' : ''}${fmt.n(start.folded)} events folded), ` +
      `peak RSS ${(start.peakRssBytes / 2 ** 20).toFixed(0)} MiB; stop ${(start.closeMs / 1000).toFixed(1)} s, ` +
      `snapshot ${(start.snapshotBytes / 2 ** 20).toFixed(0)} MiB; other processes: ${start.otherCores.toFixed(2)} cores`,
  );
  return start;
}

async function replay(sizes: number[], profileDir: string | undefined): Promise<ReplayFigures[]> {
  const out: ReplayFigures[] = [];
  const prof = (name: string) =>
    profileDir ? ['--cpu-prof', '--cpu-prof-dir', path.join(profileDir, name)] : [];
  for (const target of sizes) {
    say(`replay: a history of ~${fmt.n(target)} events in a LevelDB log`);
    const endsAt = Date.now();
    const base = await cachedHistory(`replay-${target}`, (dir) =>
      writeHistory(dir, { events: target, endsAt }),
    );
    const history = base.counts;
    say(
      `        ${fmt.n(history.events)} events (${base.cached ? 'cached, ' : ''}written in ${(history.writeMs / 1000).toFixed(1)} s): ` +
        `${fmt.n(history.accounts)} accounts, ${fmt.n(history.tunnels)} tunnels, ${fmt.n(history.records)} DNS records, ` +
        `${fmt.n(history.liveConnections)} live connections, ${fmt.n(history.pendingCleanups)} pending cleanups`,
    );
    const dbBytes = dirBytes(base.dir);
    say(`replay: starting edges on it (${(dbBytes / 2 ** 20).toFixed(0)} MiB on disk)`);
    const starts: ReplayStart[] = [];
    // No snapshot: the first start on this log folds all of it; its clean stop saves a snapshot.
    starts.push(await startOnce(`replay-${target}-none`, base.dir, 'none', prof(`replay-${target}-none`)));
    const snapshots = snapshotFilesOf(base.dir);
    if (snapshots.length !== 1)
      throw new BenchError(`the first stop left ${snapshots.length} snapshots, not 1`);
    // After a clean stop: the snapshot is at the end of the log.
    starts.push(await startOnce(`replay-${target}-clean`, base.dir, 'clean', prof(`replay-${target}-clean`)));
    // After a crash: the same log with more events after the snapshot (a second history appended).
    const crashed = tempDir('warren-bench-log-');
    fs.cpSync(base.source, crashed, { recursive: true });
    const tail = await writeHistory(crashed, {
      events: Math.round(target * REPLAY_TAIL),
      endsAt: Date.now(),
      seed: 2,
      prefix: 'tail',
    });
    fs.mkdirSync(path.join(crashed, 'snapshots'));
    fs.copyFileSync(
      path.join(base.dir, 'snapshots', snapshots[0]!),
      path.join(crashed, 'snapshots', snapshots[0]!),
    );
    starts.push(await startOnce(`replay-${target}-crash`, crashed, 'crash', prof(`replay-${target}-crash`)));
    removeDir(base.dir);
    removeDir(crashed);

    const [none, clean, crash] = starts as [ReplayStart, ReplayStart, ReplayStart];
    if (none.events !== history.events || none.fromSnapshot)
      throw new BenchError(`the first start folded ${none.events} events of ${history.events}`);
    if (!clean.fromSnapshot || clean.folded !== 0 || clean.events !== history.events)
      throw new BenchError(`the start after a clean stop did not use its snapshot: ${JSON.stringify(clean)}`);
    if (!crash.fromSnapshot || crash.folded !== tail.events)
      throw new BenchError(
        `the start after a crash did not fold its tail on its snapshot: ${JSON.stringify(crash)}`,
      );
    out.push({
      target,
      events: history.events,
      tunnels: history.tunnels,
      liveConnections: history.liveConnections,
      pendingCleanups: history.pendingCleanups,
      writeMs: history.writeMs,
      cached: base.cached,
      dbBytes,
      starts,
    });
  }
  return out;
}

async function apiThroughput(edge: ChildEdge, tunnels: CreatedTunnel[]): Promise<ControlPlaneResults['api']> {
  const creates: RateFigures[] = [];
  const routes: RateFigures[] = [];
  const meter = loadMeter([edge.service.pid]);
  for (const c of CONCURRENCIES) {
    const api = apiClient(edge.apiUrl, edge.token, c);
    const r = await createTunnels(api, edge, `api-c${c}`, API_REQUESTS, c, tunnels);
    api.close();
    creates.push(rate(c, r.ms, r.wallMs, r.failures));
    const f = creates.at(-1)!;
    say(
      `api: create tunnel c=${c}: ${fmt.n(f.perSecond)}/s, p50 ${f.p50Ms.toFixed(1)} ms, p99 ${f.p99Ms.toFixed(1)} ms` +
        (f.failures ? `, ${f.failures} failed` : ''),
    );
  }
  for (const c of CONCURRENCIES) {
    const api = apiClient(edge.apiUrl, edge.token, c);
    let failures = 0;
    const t = performance.now();
    const ms = await pool(c, API_REQUESTS, async (i) => {
      const tunnel = tunnels[i % tunnels.length]!;
      const r = await api.request('POST', `/v1/accounts/${edge.accountId}/tunnels/${tunnel.id}/routes`, {
        hostname: `app-c${c}-${i}.${edge.zone}`,
      });
      if (r.status !== 201) failures++;
    });
    api.close();
    routes.push(rate(c, ms, performance.now() - t, failures));
    const f = routes.at(-1)!;
    say(
      `api: route dns c=${c}: ${fmt.n(f.perSecond)}/s, p50 ${f.p50Ms.toFixed(1)} ms, p99 ${f.p99Ms.toFixed(1)} ms` +
        (f.failures ? `, ${f.failures} failed` : ''),
    );
  }
  return { creates, routes, tunnelsAtEnd: tunnels.length, otherCores: meter() };
}

async function dnsQueries(edge: ChildEdge, tunnels: CreatedTunnel[]): Promise<ControlPlaneResults['dns']> {
  // Names the edge answers: routes (CNAME to the tunnel, then its A), tunnel names, and misses.
  const api = apiClient(edge.apiUrl, edge.token, 16);
  const routeNames: string[] = [];
  await pool(16, Math.min(1000, tunnels.length * 10), async (i) => {
    const name = `dns-${i}.${edge.zone}`;
    const tunnel = tunnels[i % tunnels.length]!;
    const r = await api.request('POST', `/v1/accounts/${edge.accountId}/tunnels/${tunnel.id}/routes`, {
      hostname: name,
    });
    if (r.status !== 201)
      throw new BenchError(`could not route ${name}: ${r.status} ${JSON.stringify(r.json)}`);
    routeNames.push(name);
  });
  api.close();
  const questions: { name: string; expect: 'NOERROR' | 'NXDOMAIN' }[] = [];
  for (let i = 0; i < 1000; i++) {
    const kind = i % 10;
    if (kind < 7) questions.push({ name: routeNames[i % routeNames.length]!, expect: 'NOERROR' });
    else if (kind < 9)
      questions.push({
        name: `${tunnels[i % tunnels.length]!.id}.tunnels.${edge.edgeDomain}`,
        expect: 'NOERROR',
      });
    else questions.push({ name: `missing-${i}.${edge.zone}`, expect: 'NXDOMAIN' });
  }

  const runs: (RateFigures & { lost: number })[] = [];
  const meter = loadMeter([edge.service.pid]);
  for (const c of CONCURRENCIES) {
    const socket = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
    const waiting = new Map<number, { sent: number; expect: string; done: (ok: boolean) => void }>();
    socket.on('message', (msg) => {
      let decoded: dnsPacket.DecodedPacket;
      try {
        decoded = dnsPacket.decode(msg);
      } catch {
        return;
      }
      const w = waiting.get(decoded.id ?? -1);
      if (!w) return;
      waiting.delete(decoded.id!);
      const rcode = (decoded as { rcode?: string }).rcode ?? 'NOERROR';
      w.done(rcode === w.expect && (rcode !== 'NOERROR' || (decoded.answers?.length ?? 0) > 0));
    });
    let nextId = 1;
    let wrong = 0;
    let lost = 0;
    const ms: number[] = [];
    const deadline = performance.now() + DNS_SECONDS * 1000;
    let issued = 0;
    const t = performance.now();
    await Promise.all(
      Array.from({ length: c }, async () => {
        while (performance.now() < deadline && issued < DNS_MAX_QUERIES) {
          const q = questions[issued++ % questions.length]!;
          const id = nextId;
          nextId = (nextId % 65_535) + 1;
          const sent = performance.now();
          const ok = await new Promise<boolean | 'lost'>((resolve) => {
            const timer = setTimeout(() => {
              waiting.delete(id);
              resolve('lost');
            }, DNS_TIMEOUT_MS);
            waiting.set(id, {
              sent,
              expect: q.expect,
              done: (result) => {
                clearTimeout(timer);
                resolve(result);
              },
            });
            socket.send(
              dnsPacket.encode({
                type: 'query',
                id,
                flags: dnsPacket.RECURSION_DESIRED,
                questions: [{ type: 'A', name: q.name }],
              }),
              edge.dnsPort,
              '127.0.0.1',
            );
          });
          if (ok === 'lost') lost++;
          else {
            ms.push(performance.now() - sent);
            if (!ok) wrong++;
          }
        }
      }),
    );
    const wallMs = performance.now() - t;
    socket.close();
    const f = { ...rate(c, ms, wallMs, wrong), lost };
    runs.push(f);
    say(
      `dns: c=${c}: ${fmt.n(f.perSecond)} q/s, p50 ${(f.p50Ms * 1000).toFixed(0)} µs, p99 ${(f.p99Ms * 1000).toFixed(0)} µs` +
        (wrong || lost ? `, ${wrong} wrong answers, ${lost} lost` : ''),
    );
  }
  return { runs, names: questions.length, otherCores: meter() };
}

async function thousandTunnels(prof: string[]): Promise<ControlPlaneResults['tunnels1000']> {
  const edge = await startChildEdge('edge-1000', prof);
  const agent = new LightAgent({ clock: systemClock, log: silentLogger });
  const api = apiClient(edge.apiUrl, edge.token, 16);
  try {
    const rss = () => statusKiB(edge.service.pid, 'VmRSS') * 1024;
    const rssIdleBytes = rss();
    const tunnels: CreatedTunnel[] = [];
    const created = await createTunnels(api, edge, 'held', TUNNELS, 16, tunnels);
    if (created.failures)
      throw new BenchError(`${created.failures} of ${TUNNELS} tunnels could not be created`);
    const rssTunnelsBytes = rss();
    say(
      `tunnels1000: edge RSS ${fmt.n(rssIdleBytes / 2 ** 20)} MiB at start, ${fmt.n(rssTunnelsBytes / 2 ** 20)} MiB with ${TUNNELS} tunnels; registering one connection each`,
    );
    const meter = loadMeter([edge.service.pid]);
    const t = performance.now();
    await agent.connectMany(
      tunnels.map((x) => x.credentials),
      { concurrency: 32 },
    );
    const registerMs = performance.now() - t;
    const account = await api.request('GET', `/v1/accounts/${edge.accountId}`);
    const active = (account.json as { result: { active_tunnels: number } }).result.active_tunnels;
    if (active !== TUNNELS) throw new BenchError(`the edge counts ${active} active tunnels, not ${TUNNELS}`);
    // Watch through two heartbeat rounds: every session has sent and answered PINGs by then.
    let rssMaxBytes = 0;
    const until = performance.now() + RSS_WATCH_MS;
    while (performance.now() < until) {
      rssMaxBytes = Math.max(rssMaxBytes, rss());
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    if (agent.openConnections !== TUNNELS)
      throw new BenchError(`${TUNNELS - agent.openConnections} connections dropped while being watched`);
    const rssRegisteredBytes = rss();
    const hwmBytes = statusKiB(edge.service.pid, 'VmHWM') * 1024;
    const otherCores = meter();
    say(
      `tunnels1000: ${TUNNELS} registered in ${(registerMs / 1000).toFixed(1)} s; edge RSS ${fmt.n(rssRegisteredBytes / 2 ** 20)} MiB ` +
        `(max ${fmt.n(rssMaxBytes / 2 ** 20)}, peak ${fmt.n(hwmBytes / 2 ** 20)}), ` +
        `${fmt.n((rssRegisteredBytes - rssTunnelsBytes) / TUNNELS)} bytes per connection`,
    );
    return {
      rssIdleBytes,
      rssTunnelsBytes,
      rssRegisteredBytes,
      rssMaxBytes,
      hwmBytes,
      registerMs,
      otherCores,
    };
  } finally {
    await agent.closeAll();
    api.close();
    await stopChildEdge(edge);
  }
}

// ---------------------------------------------------------------------------------------------
// Entry point and report

export interface ControlPlaneOptions {
  sections: Set<ControlPlaneSection>;
  /** Run the edge processes with --cpu-prof into this directory. */
  profileDir?: string | undefined;
}

export async function runControlPlane(opts: ControlPlaneOptions): Promise<ControlPlaneResults> {
  const results: ControlPlaneResults = {};
  const prof = (name: string) =>
    opts.profileDir ? ['--cpu-prof', '--cpu-prof-dir', path.join(opts.profileDir, name)] : [];
  if (opts.sections.has('replay')) results.replay = await replay(REPLAY_SIZES, opts.profileDir);
  if (opts.sections.has('api') || opts.sections.has('dns')) {
    const edge = await startChildEdge('edge-api', prof('edge-api'));
    try {
      const tunnels: CreatedTunnel[] = [];
      if (opts.sections.has('api')) results.api = await apiThroughput(edge, tunnels);
      if (opts.sections.has('dns')) {
        if (tunnels.length === 0) {
          const api = apiClient(edge.apiUrl, edge.token, 16);
          await createTunnels(api, edge, 'dns', 100, 16, tunnels);
          api.close();
        }
        results.dns = await dnsQueries(edge, tunnels);
      }
    } finally {
      await stopChildEdge(edge);
    }
  }
  if (opts.sections.has('tunnels1000')) results.tunnels1000 = await thousandTunnels(prof('edge-1000'));
  return results;
}

export interface ControlPlaneTarget {
  name: string;
  value: string;
  pass: boolean;
}

export function controlPlaneTargets(r: ControlPlaneResults): ControlPlaneTarget[] {
  const out: ControlPlaneTarget[] = [];
  const million = r.replay?.find((x) => x.target === 1_000_000);
  if (million) {
    const ms = startUpMs(million, 'clean');
    out.push({
      name: `edge start-up on 1M events < ${REPLAY_TARGET_MS / 1000} s (after a clean stop)`,
      value: `${(ms / 1000).toFixed(1)} s (${fmt.n(million.events)} events; after a crash ${(startUpMs(million, 'crash') / 1000).toFixed(1)} s, with no snapshot ${(startUpMs(million, 'none') / 1000).toFixed(1)} s)`,
      pass: ms < REPLAY_TARGET_MS,
    });
  }
  if (r.tunnels1000) {
    out.push({
      name: `edge RSS with ${TUNNELS} registered tunnels < 300 MB`,
      value: `${fmt.n(r.tunnels1000.rssRegisteredBytes / 2 ** 20)} MiB (peak ${fmt.n(r.tunnels1000.hwmBytes / 2 ** 20)} MiB)`,
      pass: r.tunnels1000.rssRegisteredBytes < RSS_TARGET_BYTES && r.tunnels1000.hwmBytes < RSS_TARGET_BYTES,
    });
  }
  return out;
}

export function printControlPlane(r: ControlPlaneResults): void {
  const ts = controlPlaneTargets(r);
  if (ts.length === 0) return;
  process.stdout.write('\nTargets (issue 3):\n');
  for (const t of ts) process.stdout.write(`  ${t.pass ? 'PASS' : 'FAIL'}  ${t.name}: ${t.value}\n`);
}

// As bench/RESULTS.md names it.
const HEADING = '## Control plane';
const STARTUP_ANALYSIS = 'Where start-up time goes';
const API_ANALYSIS = 'Where API time goes';

function nproc(): string {
  try {
    return execFileSync('nproc', { encoding: 'utf8' }).trim();
  } catch {
    return String(os.availableParallelism());
  }
}

function measuredOn(started: Date, otherCores: number): string {
  const m = machine();
  const busy =
    otherCores > 0.1
      ? ` Other processes kept ${otherCores.toFixed(2)} cores busy meanwhile: the machine was not idle, figures are worse and noisier than on an idle one.`
      : ` Other processes kept ${otherCores.toFixed(2)} cores busy meanwhile.`;
  return `_Measured in the run started ${started.toISOString()} on ${m.cpu}, ${m.cores} cores (nproc ${nproc()}), ${m.ramGiB} GiB RAM, Node ${m.node}._${busy}`;
}

const mib = (b: number) => `${fmt.n(b / 2 ** 20)} MiB`;

function startUpMs(x: ReplayFigures, snapshot: ReplayStart['snapshot']): number {
  const s = x.starts.find((y) => y.snapshot === snapshot);
  return s ? s.openLogMs + s.startEdgeMs : Number.NaN;
}

/** One `### ` subsection per section that ran; bench/RESULTS.md keeps the others from earlier runs. */
export function controlPlaneSubsections(r: ControlPlaneResults, started: Date): Map<string, string> {
  const out = new Map<string, string>();
  if (r.replay) {
    const what = { none: 'no snapshot', clean: 'after a clean stop', crash: 'after a crash' } as const;
    const rows = r.replay.flatMap((x) =>
      x.starts.map((s) => {
        const total = s.openLogMs + s.startEdgeMs;
        const loaded = s.fromSnapshot ? `snapshot + ${fmt.n(s.folded)}` : `${fmt.n(s.folded)} (all)`;
        return `| ${fmt.n(s.events)} | ${what[s.snapshot]} | ${loaded} | ${fmt.ms(s.openLogMs)} | ${(s.startEdgeMs / 1000).toFixed(2)} s | **${(total / 1000).toFixed(2)} s** | ${(s.cpuMs / 1000).toFixed(1)} s | ${mib(s.peakRssBytes)} | ${mib(s.rssBytes)} / ${mib(s.heapUsedBytes)} | ${(s.closeMs / 1000).toFixed(1)} s, ${mib(s.snapshotBytes)} |`;
      }),
    );
    const logs = r.replay.map(
      (x) =>
        `${fmt.n(x.events)} events, ${fmt.n(x.tunnels)} tunnels, ${mib(x.dbBytes)} on disk (written in ${(x.writeMs / 1000).toFixed(0)} s${x.cached ? '; cached' : ''})`,
    );
    const million = r.replay.find((x) => x.target === 1_000_000);
    const target = million
      ? `**Target**: 1M events replayed in under 10 s — ${(startUpMs(million, 'clean') / 1000).toFixed(1)} s after a clean stop, ${(startUpMs(million, 'crash') / 1000).toFixed(1)} s after a crash, ${(startUpMs(million, 'none') / 1000).toFixed(1)} s with no snapshot: **${startUpMs(million, 'clean') < REPLAY_TARGET_MS ? 'PASS' : 'FAIL'}**.`
      : '';
    out.set(
      'Edge start-up (log replay)',
      `| events | start | folded | open log | startEdge | start-up | CPU | peak RSS | RSS / heap after | stop, snapshot |
| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
${rows.join('\n')}

- Logs: ${logs.join(';\n  ')}.
- History written by bench/event-history.ts through \`openLevelEventLog\` from the real deciders:
  accounts with a zone and tokens, ~200 named tunnels each with CNAME routes, eight
  rounds of agents connecting (2 or 4 HA connections) and leaving (unregister, inactive, cleanup
  scheduled, then cancelled), some cleanups firing and deleting \`auto\` routes, a few tunnels deleted;
  at the end ~60% of tunnels connected (on other PoPs) and the rest with a cleanup pending.
- Three starts per log, each in a fresh process (bench/control-plane-child.ts) that then stops cleanly:
  **no snapshot** (the first start, or the worst case: snapshot deleted, unreadable or from another
  version; the whole log is folded), **after a clean stop** (the snapshot the first start's stop saved,
  at the end of the log: what an operator sees after a restart), **after a crash** (that snapshot, with
  ${Math.round(REPLAY_TAIL * 100)}% more events appended after it — a second history — as when the edge was killed one
  background-snapshot interval after its last snapshot).
- Start-up = \`openLevelEventLog\` + \`startEdge\` (load the directory snapshot, fold the log after it,
  arm the janitor, start-up recovery, TLS material, listeners). CPU is the child's user+system time for
  the whole process, module loading included. Peak RSS is VmHWM once started; RSS and heap are taken
  then too. A start that folded 100,000 events or more begins a background snapshot as it finishes.
- Stop = \`edge.close()\`, which saves the directory snapshot (or waits for the background one), and the
  snapshot file's size.

${target}

${measuredOn(started, Math.max(...r.replay.flatMap((x) => x.starts.map((s) => s.otherCores))))}`,
    );
  }
  if (r.api) {
    const row = (kind: string, f: RateFigures) =>
      `| ${kind} | ${f.c} | ${fmt.n(f.perSecond)} | ${f.p50Ms.toFixed(1)} ms | ${f.p99Ms.toFixed(1)} ms | ${f.failures} |`;
    out.set(
      'API throughput',
      `| request | concurrency | per second | p50 | p99 | failed |
| --- | ---: | ---: | ---: | ---: | ---: |
${[...r.api.creates.map((f) => row('POST /v1/accounts/:a/tunnels', f)), ...r.api.routes.map((f) => row('POST …/tunnels/:t/routes', f))].join('\n')}

- ${API_REQUESTS} requests per line, keep-alive connections (as many as the concurrency), bearer token, JSON
  bodies; the edge in its own process on a LevelDB log. Levels run in order on one growing account, so
  the last create runs with ${fmt.n(r.api.tunnelsAtEnd)} tunnels in it and the last route with
  ${fmt.n(r.api.routes.reduce((n, f) => n + f.requests, 0))} records in its zone.
- A create is two commands (claim the name on the account stream, create the tunnel), a route one (the
  zone stream); each waits until the directory has folded its events.

${measuredOn(started, r.api.otherCores)}`,
    );
  }
  if (r.dns) {
    out.set(
      'DNS queries',
      `| concurrency | queries/s | p50 | p99 | wrong | lost |
| ---: | ---: | ---: | ---: | ---: | ---: |
${r.dns.runs.map((f) => `| ${f.c} | ${fmt.n(f.perSecond)} | ${(f.p50Ms * 1000).toFixed(0)} µs | ${(f.p99Ms * 1000).toFixed(0)} µs | ${f.failures} | ${f.lost} |`).join('\n')}

- UDP, ${DNS_SECONDS} s per line, a dns-packet client in the bench process with that many queries in flight.
  A queries over ${r.dns.names} names: 70% routes (answered with the CNAME to the tunnel and its A), 20%
  \`<tunnel-id>.tunnels.<edge domain>\`, 10% names that do not exist (NXDOMAIN). No baseline: there is
  no other DNS server in the bench.

${measuredOn(started, r.dns.otherCores)}`,
    );
  }
  if (r.tunnels1000) {
    const t = r.tunnels1000;
    const pass = t.rssRegisteredBytes < RSS_TARGET_BYTES && t.hwmBytes < RSS_TARGET_BYTES;
    out.set(
      `${TUNNELS} concurrently registered tunnels`,
      `| edge RSS | |
| --- | ---: |
| after start (one account) | ${mib(t.rssIdleBytes)} |
| with ${TUNNELS} tunnels created | ${mib(t.rssTunnelsBytes)} |
| with ${TUNNELS} connections registered | ${mib(t.rssRegisteredBytes)} |
| highest seen over ${RSS_WATCH_MS / 1000} s after that / peak (VmHWM) | ${mib(t.rssMaxBytes)} / ${mib(t.hwmBytes)} |
| per registered connection | ${fmt.n((t.rssRegisteredBytes - t.rssTunnelsBytes) / TUNNELS)} bytes |

- One account, ${TUNNELS} tunnels created through the API, one connection each from a light agent in the
  bench process (test/support/light-agent.ts): real TLS 1.3 and warren/1 \`hello\` / \`register\` with the
  HMAC proof, heartbeats every 5 s. ${TUNNELS} registrations took ${(t.registerMs / 1000).toFixed(1)} s (32 handshakes in flight).
- RSS is VmRSS of the edge process from /proc; the edge runs on a LevelDB log.

**Target**: edge RSS under 300 MB with ${TUNNELS} registered tunnels — ${mib(t.rssRegisteredBytes)}: **${pass ? 'PASS' : 'FAIL'}**.

${measuredOn(started, t.otherCores)}`,
    );
  }
  return out;
}

/** The control-plane section of RESULTS.md (the file's last), merged with what `existing` held. */
export function mergeControlPlaneSection(existing: string, fresh: Map<string, string>): string {
  const start = existing.indexOf(`\n${HEADING}`);
  const old = start >= 0 ? existing.slice(start + 1) : '';
  const head = start >= 0 ? existing.slice(0, start + 1) : `${existing.trimEnd()}\n\n`;
  return `${head}${resultsSection({
    heading: HEADING,
    intro: `Written by \`npm run bench -- --only ${CONTROL_PLANE_SECTIONS.join(',')} --write\` (bench/control-plane.ts); a run of
some of them replaces only their subsections. Each edge is its own Node process on a LevelDB log in a
temporary directory; all traffic is on 127.0.0.1.`,
    previous: old,
    fresh,
    // The analyses are written by hand and kept across runs, next to the figures they explain.
    order: [
      'Edge start-up (log replay)',
      STARTUP_ANALYSIS,
      'API throughput',
      API_ANALYSIS,
      'DNS queries',
      `${TUNNELS} concurrently registered tunnels`,
    ],
  })}`;
}

/** The control-plane section of a RESULTS.md, to carry over when the data-plane part is rewritten. */
export function controlPlaneSectionOf(text: string): string {
  const start = text.indexOf(`\n${HEADING}`);
  return start >= 0 ? text.slice(start + 1) : '';
}

export function writeControlPlaneResults(r: ControlPlaneResults, started: Date): void {
  const file = path.join(ROOT, 'bench/RESULTS.md');
  const existing = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '# Benchmark results\n';
  fs.writeFileSync(file, mergeControlPlaneSection(existing, controlPlaneSubsections(r, started)));
}
