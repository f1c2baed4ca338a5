/**
 * The resilience benchmarks of issue "Connections that survive anything", run by `npm run bench`
 * (bench/run.ts) after the other sections, or alone with `--only restart,rolling,idlemem`. Every edge
 * and agent is a `warren` CLI process (src/cli/main.ts under tsx), the origin is bench/origin.ts; all
 * traffic is on 127.0.0.1 and every loop is bounded.
 *
 *   restart  an edge on a LevelDB data dir and one quick-tunnel agent with its default backoff. 20
 *            times: SIGTERM the edge, wait for its exit, start it again on the same ports; t0 = the
 *            new edge prints "is up", then a GET with the tunnel's Host header every 10 ms (each with a
 *            6.5 s timeout, longer than the edge's 5 s visitor hold) until one completes with 200: t1.
 *            Reports t1 − t0 p50/p99/max and the edge's own start-up. Target: p99 < 1500 ms.
 *   rolling  a named tunnel (edge init, login, tunnel create, route dns through the CLI) served by two
 *            `warren tunnel run` replicas; 500 req/s (fresh connection each) for 3 s, then SIGTERM A,
 *            start A' and wait until the edge counts its connections, the same for B, 3 s more.
 *            Three times. Target: no failed request.
 *   idlemem  an edge process, 2000 quick tunnels created, then 1000 and 2000 idle registered
 *            connections from light agents (test/support/light-agent.ts) in a child process; the edge's
 *            RSS (median of 5 samples) before and after. Target: < 64 KiB per connection. When it is
 *            missed, heap snapshots of a second edge before and after 1000 connections say which
 *            constructors grew.
 *
 * This file is also that child: `node --import tsx bench/resilience.ts light-agents <edge API URL>`
 * reads `create N` and `connect N` lines on stdin and answers `created N` / `connected N`.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { requestQuickTunnel } from '../src/agent/quick-tunnel.ts';
import type { TunnelCredentials } from '../src/agent/tunnel-connection.ts';
import { systemClock } from '../src/shared/clock.ts';
import { silentLogger } from '../src/shared/log.ts';
import { LightAgent } from '../test/support/light-agent.ts';
import {
  BenchError,
  fmt,
  freePort,
  machine,
  machineBusyMicros,
  percentile,
  ROOT,
  resultsSection,
  run,
  type Service,
  startService,
  statusKiB,
  stopService,
  tempPaths,
} from './lib.ts';

export const RESILIENCE_SECTIONS = ['restart', 'rolling', 'idlemem'] as const;
export type ResilienceSection = (typeof RESILIENCE_SECTIONS)[number];

const CLI = path.join(ROOT, 'src/cli/main.ts');
const SELF = fileURLToPath(import.meta.url);

const RESTART_ROUNDS = 20;
const RESTART_TARGET_MS = 1500;
/** A round whose tunnel does not serve within this after the edge is up counts as missed. */
const ROUND_DEADLINE_MS = 30_000;
const POLL_INTERVAL_MS = 10;
/** Longer than the edge's default visitor hold (5 s): a held request is not cut short. */
const POLL_TIMEOUT_MS = 6500;
const POLL_MAX_IN_FLIGHT = 1000;
/**
 * Between restarts the agent stays connected this long: past its backoff's healthy window (10 s), so
 * each restart finds it as an agent that has been up a while, not one still counting failures.
 */
const RESTART_SETTLE_MS = 10_500;

const ROLLING_RUNS = 3;
const ROLLING_RATE = 500;
const ROLLING_LOAD_MS = 3000;
const ROLLING_MAX_IN_FLIGHT = 256;
/** Hard bound on the requests of one run (two minutes at the rate). */
const ROLLING_MAX_REQUESTS = 120 * ROLLING_RATE;
const ROLLING_REQUEST_TIMEOUT_MS = 10_000;
/** `warren tunnel run` keeps this many connections by default. */
const RUN_HA_CONNECTIONS = 4;
/** A replica's graceful exit (default grace period 30 s) or a replica's start, at most. */
const STEP_TIMEOUT_MS = 45_000;
const ROLLING_HOST = 'rolling.warren.localhost';

const IDLE_COUNTS = [1000, 2000];
const IDLE_TARGET_KIB = 64;
const IDLE_SETTLE_MS = 3000;
const RSS_SAMPLES = 5;
const RSS_SAMPLE_GAP_MS = 200;
const PROFILE_CONNECTIONS = 1000;
const PROFILE_TOP = 12;

// ---------------------------------------------------------------------------------------------
// Results

export interface RestartRound {
  round: number;
  /** Edge up → first 200, NaN when the round missed its deadline. */
  serveMs: number;
  /** Spawn → "is up" of the new edge process. */
  edgeStartMs: number;
  /** SIGTERM → exit of the old one. */
  edgeStopMs: number;
  edgeExit: string;
  /** What the polls got, by answer (`200`, `530 no_tunnel`, `ECONNREFUSED` …). */
  answers: Record<string, number>;
  problem?: string;
}

export interface RestartFigures {
  rounds: RestartRound[];
  firstEdgeStartMs: number;
  busyCores: number;
}

export interface RollingRun {
  run: number;
  sent: number;
  ok: number;
  failed: number;
  /** Failures by answer, and by what was happening when the request was sent. */
  failures: Record<string, number>;
  failuresByPhase: Record<string, Record<string, number>>;
  wallMs: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Sends the in-flight bound held back past their slot. */
  deferred: number;
  steps: { what: string; ms: number }[];
  problem?: string;
}

export interface RollingFigures {
  runs: RollingRun[];
  busyCores: number;
}

export interface HeapGrowth {
  name: string;
  count: number;
  bytes: number;
}

export interface HeapProfile {
  connections: number;
  heapDeltaBytes: number;
  top: HeapGrowth[];
}

export interface IdleMemFigures {
  rssStartKiB: number;
  tunnels: number;
  rssTunnelsKiB: number;
  points: { n: number; rssKiB: number; perConnKiB: number; registerMs: number }[];
  /** KiB per connection between the first and the last count. */
  slopeKiB: number;
  busyCores: number;
  profile?: HeapProfile;
  profileProblem?: string;
}

export interface ResilienceResults {
  restart?: RestartFigures;
  rolling?: RollingFigures;
  idlemem?: IdleMemFigures;
  elapsedS: number;
}

// ---------------------------------------------------------------------------------------------
// Helpers

const say = (line: string) => process.stdout.write(`bench: ${line}\n`);
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, ms)));
const sorted = (xs: number[]) => xs.filter(Number.isFinite).sort((a, b) => a - b);
const median = (xs: number[]) => percentile(sorted(xs), 0.5);
const kib = (v: number) => (Number.isFinite(v) ? `${v.toFixed(1)} KiB` : 'n/a');
const mib = (k: number) => (Number.isFinite(k) ? `${(k / 1024).toFixed(0)} MiB` : 'n/a');

/** Our environment without WARREN_* variables (the flags given are the whole configuration), plus `extra`. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('WARREN_')) env[k] = v;
  return { ...env, ...extra };
}

function tempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempPaths.push(dir);
  return dir;
}

/** Cores the whole machine kept busy since the call (all processes, ours included). */
function busyMeter(): () => number {
  const t0 = performance.now();
  const busy0 = machineBusyMicros();
  return () => (machineBusyMicros() - busy0) / ((performance.now() - t0) * 1000);
}

async function waitUntil(check: () => Promise<boolean> | boolean, timeoutMs: number, intervalMs = 50) {
  const until = performance.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (performance.now() >= until) return false;
    await sleep(intervalMs);
  }
}

const exitOf = (s: Service) => String(s.child.signalCode ?? s.child.exitCode ?? 'running');
const running = (s: Service) => s.child.exitCode === null && s.child.signalCode === null;

interface Answer {
  status: number;
  /** The edge's Warren-Error header, or the socket error's code. */
  code: string;
  endedAt: number;
  ms: number;
}

const answerKey = (a: Answer) => (a.status ? `${a.status}${a.code ? ` ${a.code}` : ''}` : a.code);

/** One GET on a fresh connection (`Connection: close`); never rejects. */
function probe(port: number, host: string, urlPath: string, timeoutMs: number): Promise<Answer> {
  const started = performance.now();
  return new Promise((resolve) => {
    let done = false;
    const finish = (status: number, code: string) => {
      if (done) return;
      done = true;
      const endedAt = performance.now();
      resolve({ status, code, endedAt, ms: endedAt - started });
    };
    const req = http.request({
      host: '127.0.0.1',
      port,
      path: urlPath,
      headers: { host, connection: 'close' },
      agent: false,
    });
    req.setTimeout(timeoutMs, () => req.destroy(Object.assign(new Error('timeout'), { code: 'timeout' })));
    req.once('response', (res) => {
      const code = String(res.headers['warren-error'] ?? '');
      res.resume();
      res.once('end', () => finish(res.statusCode ?? 0, code));
      res.once('error', (err: NodeJS.ErrnoException) => finish(0, err.code ?? 'response_error'));
      res.once('aborted', () => finish(0, 'response_aborted'));
    });
    req.once('error', (err: NodeJS.ErrnoException) => finish(0, err.code ?? 'request_error'));
    req.end();
  });
}

async function getJson(url: string, timeoutMs = 2000): Promise<{ status: number; json: unknown }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  try {
    return { status: res.status, json: JSON.parse(text) };
  } catch {
    return { status: res.status, json: text };
  }
}

/** The edge's `warren_edge_tunnel_connections` gauge, NaN when it cannot be read. */
async function edgeConnections(apiUrl: string): Promise<number> {
  try {
    const r = await getJson(new URL('/metrics', apiUrl).href);
    const m = String(r.json).match(/^warren_edge_tunnel_connections (\d+)/m);
    return m ? Number(m[1]) : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** The agent's registered connections from its /ready, 0 when it cannot be read. */
async function agentReady(metricsPort: number): Promise<number> {
  try {
    const r = await getJson(`http://127.0.0.1:${metricsPort}/ready`);
    return Number((r.json as { readyConnections?: number }).readyConnections ?? 0);
  } catch {
    return 0;
  }
}

async function rssMedianKiB(pid: number): Promise<number> {
  const samples: number[] = [];
  for (let i = 0; i < RSS_SAMPLES; i++) {
    if (i > 0) await sleep(RSS_SAMPLE_GAP_MS);
    samples.push(statusKiB(pid, 'VmRSS'));
  }
  return median(samples);
}

const edgeUp = /Warren edge "[^"]*" is up\./;
const edgeAddresses = /visitors: http:\/\/[^\s:]+:(\d+)[\s\S]*?API:\s+(http:\/\/\S+)/;

/** Node arguments for `warren edge` on `dataDir` at warn level, no DNS listener, on `ports` (0: any free). */
function edgeArgs(dataDir: string, ports = { visitor: 0, tunnel: 0, api: 0 }): string[] {
  return [
    ...['--import', 'tsx', CLI, 'edge', '--data-dir', dataDir, '--loglevel', 'warn', '--no-dns-listen'],
    ...['--listen', `127.0.0.1:${ports.visitor}`, '--tunnel-listen', `127.0.0.1:${ports.tunnel}`],
    ...['--api-listen', `127.0.0.1:${ports.api}`],
  ];
}

/** An edge on any free ports (node run with `nodeFlags` first), once it has printed its addresses. */
async function startEdgeOnAnyPorts(
  label: string,
  dataDir: string,
  env: NodeJS.ProcessEnv,
  nodeFlags: string[] = [],
): Promise<{ service: Service; visitorPort: number; apiUrl: string }> {
  const { service, match } = await startService(
    label,
    [...nodeFlags, ...edgeArgs(dataDir)],
    edgeAddresses,
    30_000,
    env,
  );
  return { service, visitorPort: Number(match[1]), apiUrl: match[2]! };
}

async function startOrigin(): Promise<{ service: Service; url: string }> {
  const { service, match } = await startService(
    'origin',
    ['--import', 'tsx', path.join(ROOT, 'bench/origin.ts')],
    /origin: (http:\/\/127\.0\.0\.1:\d+)/,
  );
  return { service, url: match[1]! };
}

// ---------------------------------------------------------------------------------------------
// restart

/**
 * Sends a GET every 10 ms from `t0` until one completes with 200 or `deadlineAt` passes; the requests
 * in flight run to their end (each within its timeout) so that every answer is counted.
 */
async function pollUntilServing(
  port: number,
  host: string,
  deadlineAt: number,
): Promise<{ t1: number | undefined; answers: Record<string, number> }> {
  const answers: Record<string, number> = {};
  let t1: number | undefined;
  const inFlight = new Set<Promise<void>>();
  while (t1 === undefined && performance.now() < deadlineAt) {
    if (inFlight.size < POLL_MAX_IN_FLIGHT) {
      const p = probe(port, host, '/tiny', POLL_TIMEOUT_MS).then((a) => {
        const key = answerKey(a);
        answers[key] = (answers[key] ?? 0) + 1;
        if (a.status === 200 && t1 === undefined) t1 = a.endedAt;
      });
      inFlight.add(p);
      void p.then(() => inFlight.delete(p));
    }
    await sleep(POLL_INTERVAL_MS);
  }
  await Promise.all(inFlight);
  return { t1, answers };
}

async function restartBench(originUrl: string): Promise<RestartFigures> {
  const env = cleanEnv();
  const dataDir = tempDir('warren-bench-restart-');
  const [visitorPort, tunnelPort, apiPort] = [await freePort(), await freePort(), await freePort()];
  const apiUrl = `http://127.0.0.1:${apiPort}`;
  // Defaults everywhere else: heartbeats, drain timeout, visitor hold (5 s); no DNS listener needed.
  const args = edgeArgs(dataDir, { visitor: visitorPort, tunnel: tunnelPort, api: apiPort });
  const startEdge = async (label: string) => {
    const spawnedAt = performance.now();
    const { service } = await startService(label, args, edgeUp, 30_000, env);
    const upAt = performance.now();
    return { service, upAt, startMs: upAt - spawnedAt };
  };
  say(
    `restart: edge on a LevelDB data dir (visitors :${visitorPort}, tunnels :${tunnelPort}, API :${apiPort})`,
  );
  let edge = await startEdge('edge (restart 0)');
  const firstEdgeStartMs = edge.startMs;
  const { service: agent, match } = await startService(
    'agent (restart)',
    ['--import', 'tsx', CLI, 'tunnel', '--url', originUrl, '--edge-api', apiUrl, '--loglevel', 'warn'],
    /\|\s+http:\/\/([^\s:/|]+)(?::\d+)?\/?\s+\|/,
    30_000,
    env,
  );
  const host = match[1]!;
  const rounds: RestartRound[] = [];
  const meter = busyMeter();
  try {
    const first = await pollUntilServing(visitorPort, host, performance.now() + ROUND_DEADLINE_MS);
    if (first.t1 === undefined)
      throw new BenchError(`the quick tunnel ${host} never served: ${JSON.stringify(first.answers)}`);
    let servedAt = first.t1;
    for (let round = 1; round <= RESTART_ROUNDS; round++) {
      await sleep(servedAt + RESTART_SETTLE_MS - performance.now());
      if (!running(agent)) {
        rounds.push(missed(round, `the agent exited (${exitOf(agent)}): ${agent.output().slice(-2000)}`));
        break;
      }
      const before = await probe(visitorPort, host, '/tiny', POLL_TIMEOUT_MS);
      if (before.status !== 200) {
        rounds.push(missed(round, `not serving before the restart (${answerKey(before)})`));
        const back = await pollUntilServing(visitorPort, host, performance.now() + ROUND_DEADLINE_MS);
        if (back.t1 === undefined) break;
        servedAt = back.t1;
        continue;
      }
      const stopAt = performance.now();
      await stopService(edge.service, 'SIGTERM', 30_000);
      const edgeStopMs = performance.now() - stopAt;
      const edgeExit = exitOf(edge.service);
      try {
        edge = await startEdge(`edge (restart ${round})`);
      } catch (err) {
        // No edge, no further rounds; the ones so far stand.
        rounds.push(missed(round, `the edge did not start again: ${(err as Error).message.slice(0, 2000)}`));
        break;
      }
      const { t1, answers } = await pollUntilServing(visitorPort, host, edge.upAt + ROUND_DEADLINE_MS);
      const serveMs = t1 !== undefined && t1 - edge.upAt <= ROUND_DEADLINE_MS ? t1 - edge.upAt : Number.NaN;
      servedAt = t1 ?? performance.now();
      const r: RestartRound = { round, serveMs, edgeStartMs: edge.startMs, edgeStopMs, edgeExit, answers };
      if (!Number.isFinite(serveMs)) r.problem = `not serving within ${ROUND_DEADLINE_MS / 1000} s`;
      if (edgeExit !== '0') r.problem = `${r.problem ? `${r.problem}; ` : ''}the old edge exited ${edgeExit}`;
      rounds.push(r);
      const others = Object.entries(answers)
        .filter(([k]) => k !== '200')
        .map(([k, n]) => `${n}× ${k}`);
      say(
        `restart ${String(round).padStart(2)}/${RESTART_ROUNDS}: serving ${fmt.ms(serveMs)} after the edge was up ` +
          `(edge stop ${fmt.ms(edgeStopMs)}, start ${fmt.ms(edge.startMs)}; polls: ${answers['200'] ?? 0}× 200` +
          `${others.length ? `, ${others.join(', ')}` : ''})${r.problem ? ` PROBLEM: ${r.problem}` : ''}`,
      );
    }
  } finally {
    await stopService(agent, 'SIGINT', 10_000);
    await stopService(edge.service, 'SIGTERM', 30_000);
  }
  return { rounds, firstEdgeStartMs, busyCores: meter() };
}

function missed(round: number, problem: string): RestartRound {
  say(`restart ${round}: PROBLEM ${problem}`);
  return {
    round,
    serveMs: Number.NaN,
    edgeStartMs: Number.NaN,
    edgeStopMs: Number.NaN,
    edgeExit: 'n/a',
    answers: {},
    problem,
  };
}

// ---------------------------------------------------------------------------------------------
// rolling

interface RateLoad {
  stop(): Promise<Omit<RollingRun, 'run' | 'steps' | 'problem'>>;
}

/**
 * Open-loop load: a request every 1/rate s on a fresh connection (`Connection: close`), at most
 * `ROLLING_MAX_IN_FLIGHT` in flight (sends past it wait and are counted as deferred) and at most
 * `ROLLING_MAX_REQUESTS` in all. A failure is anything but a 200, keyed by status and Warren-Error, or
 * by the socket error; `phase()` says what was happening when it was sent.
 */
function startRateLoad(port: number, host: string, phase: () => string): RateLoad {
  const intervalMs = 1000 / ROLLING_RATE;
  const startedAt = performance.now();
  const failures: Record<string, number> = {};
  const failuresByPhase: Record<string, Record<string, number>> = {};
  const latencies: number[] = [];
  const inFlight = new Set<Promise<void>>();
  let sent = 0;
  let ok = 0;
  let deferred = 0;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const send = () => {
    sent++;
    const sentIn = phase();
    const p = probe(port, host, '/tiny', ROLLING_REQUEST_TIMEOUT_MS).then((a) => {
      if (a.status === 200) {
        ok++;
        latencies.push(a.ms);
        return;
      }
      const key = answerKey(a);
      failures[key] = (failures[key] ?? 0) + 1;
      const byPhase = failuresByPhase[sentIn] ?? {};
      byPhase[key] = (byPhase[key] ?? 0) + 1;
      failuresByPhase[sentIn] = byPhase;
    });
    inFlight.add(p);
    void p.then(() => inFlight.delete(p));
  };
  const tick = () => {
    const due = Math.floor((performance.now() - startedAt) / intervalMs) + 1;
    while (!stopped && sent < Math.min(due, ROLLING_MAX_REQUESTS)) {
      if (inFlight.size >= ROLLING_MAX_IN_FLIGHT) {
        deferred++;
        break;
      }
      send();
    }
    if (!stopped && sent < ROLLING_MAX_REQUESTS) timer = setTimeout(tick, 1);
  };
  tick();
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      const wallMs = performance.now() - startedAt;
      await Promise.all(inFlight);
      const s = sorted(latencies);
      return {
        sent,
        ok,
        failed: sent - ok,
        failures,
        failuresByPhase,
        wallMs,
        p50Ms: percentile(s, 0.5),
        p99Ms: percentile(s, 0.99),
        maxMs: s.at(-1) ?? Number.NaN,
        deferred,
      };
    },
  };
}

interface NamedTunnel {
  edge: Service;
  visitorPort: number;
  apiUrl: string;
  env: NodeJS.ProcessEnv;
  credentialsFile: string;
}

/** A CLI command run to its end as the bench's user; its stdout, or a BenchError quoting its output. */
async function cli(args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  const r = await run(process.execPath, ['--import', 'tsx', CLI, ...args], 60_000, false, env);
  if (r.timedOut || r.code !== 0)
    throw new BenchError(
      `warren ${args.join(' ')} ${r.timedOut ? 'did not finish' : `exited ${r.code}`}:\n${r.stdout}${r.stderr}`,
    );
  return r.stdout;
}

/** The flow of test/integration/control-plane.test.ts: edge init, edge, login, tunnel create, route dns. */
async function namedTunnel(): Promise<NamedTunnel> {
  const home = tempDir('warren-bench-home-');
  const env = cleanEnv({ WARREN_HOME: home, HOME: home });
  const dataDir = tempDir('warren-bench-rolling-');
  const init = await cli(['edge', 'init', '--data-dir', dataDir], env);
  const token = init.match(/API token: (wrn_\S+)/)?.[1];
  if (!token) throw new BenchError(`edge init printed no token:\n${init}`);
  const { service: edge, visitorPort, apiUrl } = await startEdgeOnAnyPorts('edge (rolling)', dataDir, env);
  await cli(['login', '--edge-api', apiUrl, '--token', token], env);
  const created = await cli(['tunnel', 'create', 'bench-rolling'], env);
  const id = created.match(/with id ([0-9a-f-]{36})/)?.[1];
  if (!id) throw new BenchError(`tunnel create printed no id:\n${created}`);
  await cli(['tunnel', 'route', 'dns', 'bench-rolling', ROLLING_HOST], env);
  return { edge, visitorPort, apiUrl, env, credentialsFile: path.join(home, `${id}.json`) };
}

interface Replica {
  label: string;
  service: Service;
  metricsPort: number;
}

/** `warren tunnel run` with --metrics, resolved once all its connections are registered. */
async function startReplica(t: NamedTunnel, originUrl: string, label: string): Promise<Replica> {
  const metricsPort = await freePort();
  const { service } = await startService(
    `replica ${label}`,
    [
      ...['--import', 'tsx', CLI, 'tunnel', 'run', '--credentials-file', t.credentialsFile],
      ...['--url', originUrl, '--metrics', `127.0.0.1:${metricsPort}`, '--loglevel', 'warn'],
    ],
    /is connected to the edge/,
    STEP_TIMEOUT_MS,
    t.env,
  );
  if (
    !(await waitUntil(async () => (await agentReady(metricsPort)) === RUN_HA_CONNECTIONS, STEP_TIMEOUT_MS))
  ) {
    await stopService(service, 'SIGKILL', 5000);
    throw new BenchError(`replica ${label} did not register ${RUN_HA_CONNECTIONS} connections`);
  }
  return { label, service, metricsPort };
}

async function waitEdgeConnections(t: NamedTunnel, n: number, what: string): Promise<void> {
  if (!(await waitUntil(async () => (await edgeConnections(t.apiUrl)) === n, STEP_TIMEOUT_MS)))
    throw new BenchError(`${what}: the edge counts ${await edgeConnections(t.apiUrl)} connections, not ${n}`);
}

/** SIGTERM (graceful: unregister, finish in flight, exit 0); the exit code, or a problem. */
async function stopReplica(r: Replica): Promise<string | undefined> {
  if (!running(r.service)) return `replica ${r.label} had already exited (${exitOf(r.service)})`;
  await stopService(r.service, 'SIGTERM', STEP_TIMEOUT_MS);
  const exit = exitOf(r.service);
  return exit === '0' ? undefined : `replica ${r.label} exited ${exit}: ${r.service.output().slice(-1000)}`;
}

async function rollingRun(t: NamedTunnel, originUrl: string, n: number): Promise<RollingRun> {
  const all = RUN_HA_CONNECTIONS * 2;
  let a = await startReplica(t, originUrl, 'A');
  let b = await startReplica(t, originUrl, 'B');
  await waitEdgeConnections(t, all, 'both replicas up');
  const steps: { what: string; ms: number }[] = [];
  const problems: string[] = [];
  let phase = 'A and B serving';
  const load = startRateLoad(t.visitorPort, ROLLING_HOST, () => phase);
  const step = async (what: string, fn: () => Promise<void>) => {
    phase = what;
    const at = performance.now();
    await fn();
    steps.push({ what, ms: performance.now() - at });
  };
  let report: Awaited<ReturnType<RateLoad['stop']>>;
  try {
    await sleep(ROLLING_LOAD_MS);
    for (const which of ['A', 'B'] as const) {
      const old = which === 'A' ? a : b;
      await step(`${which} stopping (SIGTERM → exit)`, async () => {
        const p = await stopReplica(old);
        if (p) problems.push(p);
      });
      await step(
        `${which}' starting (spawn → edge counts its ${RUN_HA_CONNECTIONS} connections)`,
        async () => {
          const next = await startReplica(t, originUrl, `${which}'`);
          await waitEdgeConnections(t, all, `${which}' up`);
          if (which === 'A') a = next;
          else b = next;
        },
      );
    }
    phase = "A' and B' serving";
    await sleep(ROLLING_LOAD_MS);
  } catch (err) {
    // A replica that does not come back is the run's failure, not the bench's: report it, clean up.
    problems.push((err as Error).message.slice(0, 2000));
  }
  report = await load.stop();
  for (const r of [a, b]) {
    const p = await stopReplica(r);
    if (p && r.label.endsWith("'")) problems.push(p);
  }
  await waitEdgeConnections(t, 0, 'after the run').catch((err: Error) => problems.push(err.message));
  const result: RollingRun = { run: n, ...report, steps };
  if (problems.length) result.problem = problems.join('; ');
  const failures = Object.entries(report.failures).map(([k, v]) => `${v}× ${k}`);
  say(
    `rolling ${n}/${ROLLING_RUNS}: ${fmt.n(report.sent)} requests at ${fmt.n((report.sent / report.wallMs) * 1000)}/s, ` +
      `${report.failed} failed${failures.length ? ` (${failures.join(', ')})` : ''}, p50 ${fmt.ms(report.p50Ms)}, p99 ${fmt.ms(report.p99Ms)}; ` +
      steps.map((s) => `${s.what.split(' (')[0]} ${fmt.ms(s.ms)}`).join(', ') +
      (result.problem ? ` PROBLEM: ${result.problem}` : ''),
  );
  for (const [phase, f] of Object.entries(report.failuresByPhase))
    say(
      `         failures of requests sent while ${phase}: ${Object.entries(f)
        .map(([k, v]) => `${v}× ${k}`)
        .join(', ')}`,
    );
  return result;
}

async function rollingBench(originUrl: string): Promise<RollingFigures> {
  say('rolling: edge init, edge, login, tunnel create, route dns (CLI)');
  const t = await namedTunnel();
  const meter = busyMeter();
  const runs: RollingRun[] = [];
  try {
    for (let n = 1; n <= ROLLING_RUNS; n++) runs.push(await rollingRun(t, originUrl, n));
  } finally {
    await stopService(t.edge, 'SIGTERM', 30_000);
  }
  return { runs, busyCores: meter() };
}

// ---------------------------------------------------------------------------------------------
// idlemem

interface IdleEdge {
  service: Service;
  apiUrl: string;
  agents: Service;
}

async function startIdleEdge(label: string, nodeFlags: string[]): Promise<IdleEdge> {
  const env = cleanEnv();
  const dataDir = tempDir('warren-bench-idle-');
  const { service, apiUrl } = await startEdgeOnAnyPorts(label, dataDir, env, nodeFlags);
  const { service: agents } = await startService(
    `${label} light agents`,
    ['--import', 'tsx', SELF, 'light-agents', apiUrl],
    /^ready$/m,
    30_000,
    env,
  );
  return { service, apiUrl, agents };
}

/** Sends a command to the light-agents child and waits for its answer. */
async function tell(e: IdleEdge, command: string, answer: RegExp, timeoutMs: number): Promise<void> {
  const mark = e.agents.output().length;
  e.agents.child.stdin!.write(`${command}\n`);
  const ok = await waitUntil(
    () => answer.test(e.agents.output().slice(mark)) || /^error /m.test(e.agents.output().slice(mark)),
    timeoutMs,
    20,
  );
  const out = e.agents.output().slice(mark);
  if (!ok || !answer.test(out))
    throw new BenchError(
      `light agents: \`${command}\` got no ${answer} within ${timeoutMs} ms:\n${out.slice(-2000)}`,
    );
}

async function stopIdleEdge(e: IdleEdge): Promise<void> {
  // The light agents first: they do not answer the edge's drain, which would wait its whole timeout.
  e.agents.child.stdin!.end();
  await stopService(e.agents, 'SIGTERM', 10_000);
  await stopService(e.service, 'SIGTERM', 30_000);
}

async function connectIdle(e: IdleEdge, add: number, total: number): Promise<number> {
  const t = performance.now();
  await tell(e, `connect ${add}`, new RegExp(`^connected ${total}$`, 'm'), 120_000);
  const registerMs = performance.now() - t;
  if (!(await waitUntil(async () => (await edgeConnections(e.apiUrl)) === total, 30_000)))
    throw new BenchError(`the edge counts ${await edgeConnections(e.apiUrl)} connections, not ${total}`);
  return registerMs;
}

async function idleMemBench(): Promise<IdleMemFigures> {
  const edge = await startIdleEdge('edge (idlemem)', []);
  const meter = busyMeter();
  try {
    const pid = edge.service.pid;
    await sleep(IDLE_SETTLE_MS);
    const rssStartKiB = await rssMedianKiB(pid);
    const tunnels = Math.max(...IDLE_COUNTS);
    await tell(edge, `create ${tunnels}`, new RegExp(`^created ${tunnels}$`, 'm'), 120_000);
    await sleep(IDLE_SETTLE_MS);
    const rssTunnelsKiB = await rssMedianKiB(pid);
    say(
      `idlemem: edge RSS ${mib(rssStartKiB)} after start, ${mib(rssTunnelsKiB)} with ${fmt.n(tunnels)} quick tunnels created`,
    );
    const points: IdleMemFigures['points'] = [];
    let connected = 0;
    for (const n of IDLE_COUNTS) {
      const registerMs = await connectIdle(edge, n - connected, n);
      connected = n;
      await sleep(IDLE_SETTLE_MS);
      const rssKiB = await rssMedianKiB(pid);
      if ((await edgeConnections(edge.apiUrl)) !== n)
        throw new BenchError(`connections dropped while the edge's RSS was sampled (${n} expected)`);
      const perConnKiB = (rssKiB - rssTunnelsKiB) / n;
      points.push({ n, rssKiB, perConnKiB, registerMs });
      say(
        `idlemem: ${fmt.n(n)} idle connections (registered in ${(registerMs / 1000).toFixed(1)} s): edge RSS ${mib(rssKiB)}, ` +
          `${kib(perConnKiB)} per connection`,
      );
    }
    const first = points[0]!;
    const last = points.at(-1)!;
    const slopeKiB = (last.rssKiB - first.rssKiB) / (last.n - first.n);
    const figures: IdleMemFigures = {
      rssStartKiB,
      tunnels,
      rssTunnelsKiB,
      points,
      slopeKiB,
      busyCores: meter(),
    };
    say(`idlemem: slope ${kib(slopeKiB)} per connection between ${fmt.n(first.n)} and ${fmt.n(last.n)}`);
    if (worstPerConnKiB(figures) >= IDLE_TARGET_KIB) {
      await stopIdleEdge(edge);
      say(
        `idlemem: over ${IDLE_TARGET_KIB} KiB; heap snapshots of a fresh edge before and after ${PROFILE_CONNECTIONS} connections`,
      );
      try {
        figures.profile = await heapProfile();
      } catch (err) {
        figures.profileProblem = (err as Error).message;
        say(`idlemem: PROBLEM the heap profile failed: ${figures.profileProblem}`);
      }
    }
    return figures;
  } finally {
    await stopIdleEdge(edge);
  }
}

/** Writes a heap snapshot of `pid` (started with --heapsnapshot-signal=SIGUSR2) into `dir`; its path. */
async function heapSnapshot(pid: number, dir: string): Promise<string> {
  const before = new Set(fs.readdirSync(dir));
  process.kill(pid, 'SIGUSR2');
  let file: string | undefined;
  let size = -1;
  // The snapshot is written by the edge's main thread; done once the file stops growing and parses.
  const done = await waitUntil(
    () => {
      file ??= fs.readdirSync(dir).find((f) => f.endsWith('.heapsnapshot') && !before.has(f));
      if (!file) return false;
      const now = fs.statSync(path.join(dir, file)).size;
      const stable = now > 0 && now === size;
      size = now;
      return stable && fs.readFileSync(path.join(dir, file), 'utf8').trimEnd().endsWith('}');
    },
    120_000,
    1000,
  );
  if (!done || !file) throw new BenchError(`no heap snapshot of ${pid} in ${dir} within 120 s`);
  return path.join(dir, file);
}

/** Self size and count by constructor (objects, native objects) or by kind (`(string)`, `(closure)` …). */
function heapByConstructor(file: string): Map<string, { count: number; bytes: number }> {
  const snap = JSON.parse(fs.readFileSync(file, 'utf8')) as {
    snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
    nodes: number[];
    strings: string[];
  };
  const fields = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0];
  const [typeAt, nameAt, sizeAt] = ['type', 'name', 'self_size'].map((f) => fields.indexOf(f)) as [
    number,
    number,
    number,
  ];
  const out = new Map<string, { count: number; bytes: number }>();
  for (let i = 0; i < snap.nodes.length; i += fields.length) {
    const type = types[snap.nodes[i + typeAt]!]!;
    const key = type === 'object' || type === 'native' ? snap.strings[snap.nodes[i + nameAt]!]! : `(${type})`;
    const e = out.get(key) ?? { count: 0, bytes: 0 };
    e.count++;
    e.bytes += snap.nodes[i + sizeAt]!;
    out.set(key, e);
  }
  return out;
}

async function heapProfile(): Promise<HeapProfile> {
  const dir = tempDir('warren-bench-heap-');
  const edge = await startIdleEdge('edge (idlemem profile)', [
    '--heapsnapshot-signal=SIGUSR2',
    `--diagnostic-dir=${dir}`,
  ]);
  try {
    const n = PROFILE_CONNECTIONS;
    await tell(edge, `create ${n}`, new RegExp(`^created ${n}$`, 'm'), 120_000);
    await sleep(IDLE_SETTLE_MS);
    const s0 = heapByConstructor(await heapSnapshot(edge.service.pid, dir));
    await connectIdle(edge, n, n);
    await sleep(IDLE_SETTLE_MS);
    const s1 = heapByConstructor(await heapSnapshot(edge.service.pid, dir));
    const growth: HeapGrowth[] = [];
    let heapDeltaBytes = 0;
    for (const [name, after] of s1) {
      const before = s0.get(name) ?? { count: 0, bytes: 0 };
      heapDeltaBytes += after.bytes - before.bytes;
      growth.push({ name, count: after.count - before.count, bytes: after.bytes - before.bytes });
    }
    for (const [name, before] of s0) if (!s1.has(name)) heapDeltaBytes -= before.bytes;
    growth.sort((x, y) => y.bytes - x.bytes);
    return { connections: n, heapDeltaBytes, top: growth.slice(0, PROFILE_TOP) };
  } finally {
    await stopIdleEdge(edge);
  }
}

/** The child: quick tunnels and light-agent connections on command, held until stdin closes. */
async function lightAgentsChild(apiUrl: string): Promise<void> {
  const agent = new LightAgent({ clock: systemClock, log: silentLogger });
  const tunnels: TunnelCredentials[] = [];
  let connected = 0;
  const lines = readline.createInterface({ input: process.stdin });
  process.stdout.write('ready\n');
  try {
    for await (const line of lines) {
      const [command, arg] = line.trim().split(/\s+/);
      const n = Number(arg);
      if (!Number.isInteger(n) || n < 1) throw new Error(`bad command: ${line}`);
      if (command === 'create') {
        let next = 0;
        await Promise.all(
          Array.from({ length: 16 }, async () => {
            while (next < n) {
              next++;
              tunnels.push((await requestQuickTunnel(apiUrl)).credentials);
            }
          }),
        );
        process.stdout.write(`created ${tunnels.length}\n`);
      } else if (command === 'connect') {
        if (connected + n > tunnels.length) throw new Error(`only ${tunnels.length} tunnels to connect`);
        await agent.connectMany(tunnels.slice(connected, connected + n), { concurrency: 32 });
        connected += n;
        process.stdout.write(`connected ${agent.openConnections}\n`);
      } else throw new Error(`unknown command: ${line}`);
    }
  } catch (err) {
    process.stdout.write(`error ${(err as Error).message}\n`);
  }
  await agent.closeAll();
  process.exit(0);
}

// ---------------------------------------------------------------------------------------------
// Entry point and report

export async function runResilience(opts: { sections: Set<ResilienceSection> }): Promise<ResilienceResults> {
  const started = performance.now();
  const results: ResilienceResults = { elapsedS: 0 };
  if (opts.sections.has('restart') || opts.sections.has('rolling')) {
    const origin = await startOrigin();
    try {
      if (opts.sections.has('restart')) results.restart = await restartBench(origin.url);
      if (opts.sections.has('rolling')) results.rolling = await rollingBench(origin.url);
    } finally {
      await stopService(origin.service, 'SIGTERM', 5000);
    }
  }
  if (opts.sections.has('idlemem')) results.idlemem = await idleMemBench();
  results.elapsedS = (performance.now() - started) / 1000;
  return results;
}

export interface ResilienceTarget {
  name: string;
  value: string;
  pass: boolean;
}

/** What the polls got over all rounds, 200 first. */
function pollAnswers(r: RestartFigures): string {
  const answers: Record<string, number> = {};
  for (const round of r.rounds)
    for (const [k, v] of Object.entries(round.answers)) answers[k] = (answers[k] ?? 0) + v;
  return Object.entries(answers)
    .sort(([a], [b]) => (a === '200' ? -1 : b === '200' ? 1 : a.localeCompare(b)))
    .map(([k, v]) => `${fmt.n(v)}× ${k}`)
    .join(', ');
}

function restartStats(r: RestartFigures) {
  const served = sorted(r.rounds.map((x) => x.serveMs));
  const missedRounds = r.rounds.length - served.length;
  return {
    served,
    missedRounds,
    p50: percentile(served, 0.5),
    // A missed round counts as the slowest: it makes p99 infinite, not absent.
    p99: missedRounds > 0 ? Number.POSITIVE_INFINITY : percentile(served, 0.99),
    max: missedRounds > 0 ? Number.POSITIVE_INFINITY : (served.at(-1) ?? Number.NaN),
    start: sorted(r.rounds.map((x) => x.edgeStartMs)),
    answers: pollAnswers(r),
    stop: sorted(r.rounds.map((x) => x.edgeStopMs)),
  };
}

/** The target holds for every count and for the slope between them. */
const worstPerConnKiB = (m: IdleMemFigures) => Math.max(...m.points.map((p) => p.perConnKiB), m.slopeKiB);

const msOrMissed = (v: number) => (v === Number.POSITIVE_INFINITY ? 'missed' : fmt.ms(v));

export function resilienceTargets(r: ResilienceResults): ResilienceTarget[] {
  const out: ResilienceTarget[] = [];
  if (r.restart) {
    const s = restartStats(r.restart);
    out.push({
      name: `edge restart → agent serving again p99 < ${RESTART_TARGET_MS} ms`,
      value: `${msOrMissed(s.p99)} (p50 ${fmt.ms(s.p50)}, ${s.served.length}/${RESTART_ROUNDS} rounds served)`,
      pass: s.p99 < RESTART_TARGET_MS && r.restart.rounds.length === RESTART_ROUNDS,
    });
  }
  if (r.rolling) {
    const failed = r.rolling.runs.reduce((n, x) => n + x.failed, 0);
    const complete = r.rolling.runs.length === ROLLING_RUNS && r.rolling.runs.every((x) => !x.problem);
    out.push({
      name: `rolling restart of two replicas at ${ROLLING_RATE} req/s: 0 failed requests`,
      value: `${r.rolling.runs.map((x) => `${x.failed} of ${fmt.n(x.sent)}`).join(', ')}${complete ? '' : ' (incomplete)'}`,
      pass: failed === 0 && complete,
    });
  }
  if (r.idlemem) {
    const worst = worstPerConnKiB(r.idlemem);
    out.push({
      name: `edge memory per idle tunnel connection < ${IDLE_TARGET_KIB} KiB`,
      value: `${r.idlemem.points.map((p) => `${kib(p.perConnKiB)} at ${fmt.n(p.n)}`).join(', ')}, slope ${kib(r.idlemem.slopeKiB)}`,
      pass: worst < IDLE_TARGET_KIB,
    });
  }
  return out;
}

function figureRows(r: ResilienceResults): string[][] {
  const rows: string[][] = [['figure', 'value']];
  if (r.restart) {
    const s = restartStats(r.restart);
    rows.push([
      'edge restart → serving again p50 / p99 / max',
      `${fmt.ms(s.p50)} / ${msOrMissed(s.p99)} / ${msOrMissed(s.max)}`,
    ]);
    rows.push(['  rounds served / run', `${s.served.length} / ${r.restart.rounds.length}`]);
    rows.push(['  poll answers, all rounds', s.answers]);
    rows.push([
      '  edge start-up (spawn → up) p50 / p99',
      `${fmt.ms(percentile(s.start, 0.5))} / ${fmt.ms(percentile(s.start, 0.99))}`,
    ]);
    rows.push([
      '  edge stop (SIGTERM → exit) p50 / p99',
      `${fmt.ms(percentile(s.stop, 0.5))} / ${fmt.ms(percentile(s.stop, 0.99))}`,
    ]);
  }
  if (r.rolling) {
    for (const x of r.rolling.runs) {
      rows.push([
        `rolling run ${x.run}: requests / failed`,
        `${fmt.n(x.sent)} / ${x.failed}${
          x.failed
            ? ` (${Object.entries(x.failures)
                .map(([k, v]) => `${v}× ${k}`)
                .join(', ')})`
            : ''
        }`,
      ]);
      rows.push([
        '  rate, p50 / p99 / max',
        `${fmt.n((x.sent / x.wallMs) * 1000)}/s, ${fmt.ms(x.p50Ms)} / ${fmt.ms(x.p99Ms)} / ${fmt.ms(x.maxMs)}`,
      ]);
    }
  }
  if (r.idlemem) {
    const m = r.idlemem;
    rows.push(['edge RSS: start / with tunnels', `${mib(m.rssStartKiB)} / ${mib(m.rssTunnelsKiB)}`]);
    for (const p of m.points)
      rows.push([
        `  ${fmt.n(p.n)} idle connections: RSS, per connection`,
        `${mib(p.rssKiB)}, ${kib(p.perConnKiB)}`,
      ]);
    rows.push([`  slope ${fmt.n(m.points[0]!.n)} → ${fmt.n(m.points.at(-1)!.n)}`, kib(m.slopeKiB)]);
  }
  return rows;
}

function textTable(table: string[][]): string {
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  return table
    .map((row, j) => {
      const text = row
        .map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)))
        .join('   ')
        .trimEnd();
      return j === 0 ? `${text}\n${'-'.repeat(text.length)}` : text;
    })
    .join('\n');
}

export function printResilience(r: ResilienceResults): void {
  process.stdout.write(`\n${textTable(figureRows(r))}\n`);
  const problems = [
    ...(r.restart?.rounds ?? []).filter((x) => x.problem).map((x) => `restart ${x.round}: ${x.problem}`),
    ...(r.rolling?.runs ?? []).filter((x) => x.problem).map((x) => `rolling ${x.run}: ${x.problem}`),
  ];
  if (r.idlemem?.profile)
    process.stdout.write(`\n${profileText(r.idlemem.profile, worstPerConnKiB(r.idlemem))}\n`);
  if (problems.length) process.stdout.write(`\nProblems:\n${problems.map((p) => `  - ${p}`).join('\n')}\n`);
  process.stdout.write('\nTargets (resilience):\n');
  for (const t of resilienceTargets(r))
    process.stdout.write(`  ${t.pass ? 'PASS' : 'FAIL'}  ${t.name}: ${t.value}\n`);
  process.stdout.write(`Resilience benchmarks took ${r.elapsedS.toFixed(0)} s.\n`);
}

/** `rssPerConnKiB`: the measurement's, for proportion (the snapshots themselves disturb the RSS). */
function profileText(p: HeapProfile, rssPerConnKiB: number): string {
  const heapKiB = p.heapDeltaBytes / 1024 / p.connections;
  return [
    `JS heap growth over ${fmt.n(p.connections)} connections: ${kib(heapKiB)} per connection, of ${kib(rssPerConnKiB)} RSS ` +
      'per connection measured; the rest is outside the JS heap (OpenSSL, socket buffers) or heap headroom. By constructor:',
    ...p.top.map(
      (g) =>
        `  ${g.name.padEnd(40)} ${`${fmt.n(g.count)} objects`.padStart(16)} ${kib(g.bytes / 1024 / p.connections).padStart(10)} per connection`,
    ),
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------
// bench/RESULTS.md

const HEADING = '## Resilience';
const SUBSECTIONS = ['Edge restart', 'Rolling restart of two replicas', 'Memory per idle tunnel connection'];

function commitText(): string {
  try {
    let commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], {
      cwd: ROOT,
      encoding: 'utf8',
    }).trim();
    const dirty = execFileSync('git', ['--no-optional-locks', 'status', '--porcelain', '--', 'src'], {
      cwd: ROOT,
      encoding: 'utf8',
    });
    if (dirty.trim()) commit += ' with uncommitted changes in src/';
    return commit;
  } catch {
    return 'unknown';
  }
}

function measuredOn(started: Date, busyCores: number): string {
  const m = machine();
  return (
    `_Measured in the run started ${started.toISOString()} (commit ${commitText()}) on ${m.cpu}, ${m.cores} cores, ` +
    `${m.ramGiB} GiB, Linux ${m.kernel}, Node ${m.node}._ The whole machine (these processes included) kept ` +
    `${busyCores.toFixed(2)} cores busy on average meanwhile.`
  );
}

const pf = (pass: boolean) => (pass ? 'PASS' : 'FAIL');

function subsections(r: ResilienceResults, started: Date): Map<string, string> {
  const out = new Map<string, string>();
  const targets = resilienceTargets(r);
  if (r.restart) {
    const s = restartStats(r.restart);
    const t = targets.find((x) => x.name.startsWith('edge restart'))!;
    const problems = r.restart.rounds.filter((x) => x.problem).map((x) => `- round ${x.round}: ${x.problem}`);
    out.set(
      SUBSECTIONS[0]!,
      `| | p50 | p99 | max |
| --- | ---: | ---: | ---: |
| edge up → tunnel serving again (${s.served.length} of ${r.restart.rounds.length} rounds) | **${fmt.ms(s.p50)}** | **${msOrMissed(s.p99)}** | ${msOrMissed(s.max)} |
| edge start-up, spawn → "is up" | ${fmt.ms(percentile(s.start, 0.5))} | ${fmt.ms(percentile(s.start, 0.99))} | ${fmt.ms(s.start.at(-1) ?? Number.NaN)} |
| edge stop, SIGTERM → exit | ${fmt.ms(percentile(s.stop, 0.5))} | ${fmt.ms(percentile(s.stop, 0.99))} | ${fmt.ms(s.stop.at(-1) ?? Number.NaN)} |

Every round: ${r.restart.rounds.map((x) => msOrMissed(Number.isFinite(x.serveMs) ? x.serveMs : Number.POSITIVE_INFINITY)).join(', ')}.
Answers to the polls over all rounds: ${s.answers}.
${problems.length ? `\n${problems.join('\n')}\n` : ''}
- \`warren edge --data-dir <LevelDB dir>\` on fixed ports (found free once), \`warren tunnel --url <origin>\`
  (quick tunnel, one connection, default backoff) and bench/origin.ts, each a process. ${RESTART_ROUNDS} rounds: SIGTERM the
  edge, wait for its exit, start it again; t0 = its "is up" line on stdout, then \`GET /tiny\` with the
  tunnel's Host every ${POLL_INTERVAL_MS} ms on a fresh connection, each with a ${POLL_TIMEOUT_MS / 1000} s timeout (the edge holds a
  request for a tunnel that just lost its connection up to 5 s); t1 = the first to complete with 200.
  A round that does not serve within ${ROUND_DEADLINE_MS / 1000} s counts as missed (p99 then is too). Answers are by status and
  Warren-Error, or the socket error; \`timeout\`: no answer at all within the request's timeout.
- Before each restart the agent has been connected ${RESTART_SETTLE_MS / 1000} s, past its backoff's healthy window (10 s).
- The edge's start-up under tsx (module loading included) is not part of t1 − t0; the agent's
  redials while no edge listened are.

**Target**: edge restart → agent serving again, p99 < ${RESTART_TARGET_MS} ms — ${t.value}: **${pf(t.pass)}**.

${measuredOn(started, r.restart.busyCores)}`,
    );
  }
  if (r.rolling) {
    const t = targets.find((x) => x.name.startsWith('rolling'))!;
    const rows = r.rolling.runs.map(
      (x) =>
        `| ${x.run} | ${fmt.n(x.sent)} | **${x.failed}** | ${
          x.failed
            ? Object.entries(x.failures)
                .map(([k, v]) => `${v}× ${k}`)
                .join(', ')
            : '—'
        } | ${fmt.n((x.sent / x.wallMs) * 1000)}/s | ${fmt.ms(x.p50Ms)} | ${fmt.ms(x.p99Ms)} | ${fmt.ms(x.maxMs)} | ${x.steps.map((s) => fmt.ms(s.ms)).join(' / ')} |`,
    );
    const byPhase = r.rolling.runs.flatMap((x) =>
      Object.entries(x.failuresByPhase).map(
        ([phase, f]) =>
          `- run ${x.run}, sent while ${phase}: ${Object.entries(f)
            .map(([k, v]) => `${v}× ${k}`)
            .join(', ')}`,
      ),
    );
    const problems = r.rolling.runs.filter((x) => x.problem).map((x) => `- run ${x.run}: ${x.problem}`);
    out.set(
      SUBSECTIONS[1]!,
      `| run | requests | failed | failures | rate | p50 | p99 | max | A stop / A' up / B stop / B' up |
| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |
${rows.join('\n')}
${byPhase.length || problems.length ? `\n${[...byPhase, ...problems].join('\n')}\n` : ''}
- The CLI flow of the tests: \`warren edge init\`, \`warren edge --data-dir\`, \`warren login --token\`,
  \`warren tunnel create\`, \`warren tunnel route dns\` (WARREN_HOME and HOME in a temporary directory); two
  replicas \`warren tunnel run --credentials-file … --url <origin> --metrics …\` (${RUN_HA_CONNECTIONS} connections each).
- Load: \`GET /tiny\` with the route's Host at ${ROLLING_RATE}/s on a fresh connection each (\`Connection: close\`),
  at most ${ROLLING_MAX_IN_FLIGHT} in flight, ${ROLLING_REQUEST_TIMEOUT_MS / 1000} s timeout; any answer but 200 is a failure (\`timeout\`: no answer at all). ${ROLLING_LOAD_MS / 1000} s with both
  replicas, then SIGTERM A (it unregisters, finishes what is in flight, exits 0), start A' and wait
  until its /ready and the edge's \`warren_edge_tunnel_connections\` count all its connections, the same
  for B, then ${ROLLING_LOAD_MS / 1000} s more. Step times in the last column, in ms.

**Target**: a rolling restart of two replicas under ${ROLLING_RATE} req/s fails no request — ${r.rolling.runs.map((x) => x.failed).join(', ')} failed: **${pf(t.pass)}**.

${measuredOn(started, r.rolling.busyCores)}`,
    );
  }
  if (r.idlemem) {
    const m = r.idlemem;
    const t = targets.find((x) => x.name.startsWith('edge memory'))!;
    const profile = m.profile
      ? `\n${'```'}\n${profileText(m.profile, worstPerConnKiB(m))}\n${'```'}\n`
      : m.profileProblem
        ? `\nThe heap profile failed: ${m.profileProblem}\n`
        : '';
    out.set(
      SUBSECTIONS[2]!,
      `| edge RSS | | per connection |
| --- | ---: | ---: |
| after start | ${mib(m.rssStartKiB)} | |
| with ${fmt.n(m.tunnels)} quick tunnels created | ${mib(m.rssTunnelsKiB)} | |
${m.points.map((p) => `| with ${fmt.n(p.n)} idle registered connections | ${mib(p.rssKiB)} | **${kib(p.perConnKiB)}** |`).join('\n')}
| slope ${fmt.n(m.points[0]!.n)} → ${fmt.n(m.points.at(-1)!.n)} | | ${kib(m.slopeKiB)} |
${profile}
- \`warren edge --data-dir <LevelDB dir>\` as a process; ${fmt.n(m.tunnels)} quick tunnels created through its API, then
  one connection each from light agents (test/support/light-agent.ts: real TLS 1.3, warren/1 hello and
  register, heartbeats every 5 s) in a child process, ${m.points.map((p) => fmt.n(p.n)).join(' then ')} in all
  (${m.points.map((p) => `${(p.registerMs / 1000).toFixed(1)} s`).join(', ')} to register). Per connection =
  (RSS − RSS with the tunnels created) / connections; the tunnels' own records are not counted.
- RSS: VmRSS from /proc, the median of ${RSS_SAMPLES} samples ${RSS_SAMPLE_GAP_MS} ms apart after ${IDLE_SETTLE_MS / 1000} s of settling, once the edge's
  \`warren_edge_tunnel_connections\` shows them all; no forced GC.

**Target**: edge memory per idle tunnel connection < ${IDLE_TARGET_KIB} KiB — ${t.value}: **${pf(t.pass)}**.

${measuredOn(started, m.busyCores)}`,
    );
  }
  return out;
}

/** The resilience section of a RESULTS.md (up to the next `## ` heading), to carry over on rewrites. */
export function resilienceSectionOf(text: string): string {
  const start = text.indexOf(`\n${HEADING}\n`);
  if (start < 0) return '';
  const end = text.indexOf('\n## ', start + 1);
  return text.slice(start + 1, end < 0 ? undefined : end + 1);
}

/**
 * `existing` with its resilience section replaced (the subsections of this run; the others kept from
 * before). A new section goes before the control-plane section, whose writer keeps only what is
 * before its heading; with none, at the end.
 */
export function mergeResilienceSection(existing: string, fresh: Map<string, string>): string {
  const old = resilienceSectionOf(existing);
  const section = resultsSection({
    heading: HEADING,
    intro: `Written by \`npm run bench -- --only ${RESILIENCE_SECTIONS.join(',')} --write\` (bench/resilience.ts), issue "Connections
that survive anything"; a run of some of them replaces only their subsections. Edges and agents are
\`warren\` CLI processes, all traffic is on 127.0.0.1.`,
    previous: old,
    fresh,
    order: SUBSECTIONS,
  });
  if (old) return existing.replace(old, () => `${section}\n`);
  const controlPlane = existing.search(/^## Control plane/m);
  if (controlPlane >= 0)
    return `${existing.slice(0, controlPlane)}${section}\n${existing.slice(controlPlane)}`;
  return `${existing.trimEnd()}\n\n${section}`;
}

export function writeResilienceResults(r: ResilienceResults, started: Date): void {
  const file = path.join(ROOT, 'bench/RESULTS.md');
  // Read right before writing: other sections of the file are written by other runs.
  const existing = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '# Benchmark results\n';
  fs.writeFileSync(file, mergeResilienceSection(existing, subsections(r, started)));
}

if (process.argv[1] === SELF && process.argv[2] === 'light-agents') {
  const apiUrl = process.argv[3];
  if (!apiUrl) {
    process.stderr.write('usage: resilience.ts light-agents <edge API URL>\n');
    process.exit(2);
  }
  await lightAgentsChild(apiUrl);
}
