/**
 * What the benchmark scripts share: starting and stopping processes (and cleaning up after them on
 * any exit), CPU accounting from /proc, and the load generators (wrk, curl, a ws client).
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const BULK_BYTES = 100 * 1024 * 1024;
export const BULK_TRIES = 3;
export const WS_WARMUP = 200;
export const WS_ROUND_TRIPS = 2000;
export const WS_PAYLOAD = 64;

/** The bench itself broke (as opposed to the tunnel missing a target). */
export class BenchError extends Error {}

// ---------------------------------------------------------------------------------------------
// Processes and cleanup

export const children = new Set<ChildProcess>();
export const tempPaths: string[] = [];

export function cleanupSync(): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      try {
        killGroup(child);
      } catch {}
    }
  }
  children.clear();
  for (const p of tempPaths.splice(0)) fs.rmSync(p, { recursive: true, force: true });
}

process.on('exit', cleanupSync);
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(signal, () => {
    process.stderr.write(`\nbench: ${signal}, stopping every process it started\n`);
    cleanupSync();
    process.exit(130);
  });
}

/**
 * Every child runs in a process group of its own (`detached`), so that what it started (wrk under
 * bash, tsx's esbuild) goes with it.
 */
function killGroup(child: ChildProcess): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {}
  }
}

export function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

export interface Service {
  name: string;
  child: ChildProcess;
  pid: number;
  output: () => string;
}

let stopping = false;
/** Services that exited before `markStopping()`. */
export const unexpectedExits: string[] = [];

/** From now on, services exiting is expected. */
export function markStopping(): void {
  stopping = true;
}

/** Starts a Node process and waits for its stdout to match `ready`. `env`: the whole environment (default: ours). */
export async function startService(
  name: string,
  nodeArgs: string[],
  ready: RegExp,
  timeoutMs = 30_000,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ service: Service; match: RegExpMatchArray }> {
  const child = track(
    spawn(process.execPath, nodeArgs, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'], detached: true, env }),
  );
  if (child.pid === undefined) throw new BenchError(`cannot start ${name}`);
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    err += d;
    if (err.length > 64 * 1024) err = err.slice(-32 * 1024);
  });
  const service: Service = { name, child, pid: child.pid, output: () => `${out}${err}` };
  const match = await new Promise<RegExpMatchArray>((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new BenchError(`${name} did not become ready within ${timeoutMs} ms:\n${service.output()}`));
    }, timeoutMs);
    const onData = () => {
      const m = out.match(ready);
      if (m) {
        cleanup();
        resolve(m);
      }
    };
    const onExit = (code: number | null, signal: string | null) => {
      cleanup();
      reject(new BenchError(`${name} exited (${signal ?? code}) before it was ready:\n${service.output()}`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      child.stdout!.off('data', onData);
      child.off('exit', onExit);
    };
    child.stdout!.on('data', onData);
    child.once('exit', onExit);
  });
  child.once('exit', (code, signal) => {
    if (!stopping)
      unexpectedExits.push(`${name} exited during the bench (${signal ?? code}):\n${service.output()}`);
  });
  return { service, match };
}

/** Graceful stop (SIGINT, as a person would), SIGKILL after `graceMs`. */
export async function stopService(s: Service, signal: NodeJS.Signals, graceMs: number): Promise<void> {
  const { child } = s;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill(signal);
  const timer = setTimeout(() => killGroup(child), graceMs);
  await exited;
  clearTimeout(timer);
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Runs a command (wrk, curl, apt-get) as a child and collects its output. `env`: default ours. */
export function run(
  cmd: string,
  args: string[],
  timeoutMs: number,
  inherit = false,
  env: NodeJS.ProcessEnv = process.env,
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = track(
      spawn(cmd, args, {
        detached: true,
        stdio: ['ignore', inherit ? 'inherit' : 'pipe', 'pipe'],
        env: { ...env, LC_ALL: 'C' },
      }),
    );
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      if (inherit) process.stderr.write(d);
    });
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child);
    }, timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, timedOut });
    });
  });
}

/** A TCP port free on 127.0.0.1 right now (for listeners that must keep their port across restarts). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export function hasCommand(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export async function ensureWrk(): Promise<void> {
  if (hasCommand('wrk')) return;
  process.stdout.write('bench: wrk is not installed; installing it: apt-get install -y wrk\n');
  const r = await run('apt-get', ['install', '-y', 'wrk'], 300_000, true).catch(() => undefined);
  if (r?.code !== 0) {
    process.stdout.write('bench: that failed; running apt-get update, then apt-get install -y wrk again\n');
    await run('apt-get', ['update'], 300_000, true).catch(() => undefined);
    await run('apt-get', ['install', '-y', 'wrk'], 300_000, true).catch(() => undefined);
  }
  if (!hasCommand('wrk'))
    throw new BenchError(
      'wrk is missing and could not be installed with apt-get (root and access to Debian packages are needed). ' +
        'Install it by hand (apt-get install wrk) and run the bench again.',
    );
  process.stdout.write('bench: wrk installed\n');
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc

export const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** utime + stime of a process in µs (all its threads). */
export function cpuMicros(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // After the command come state (field 3) … utime (14) and stime (15): indexes 11 and 12 here.
    return ((Number(fields[11]) + Number(fields[12])) / CLK_TCK) * 1e6;
  } catch {
    return Number.NaN;
  }
}

/** CPU time the whole machine spent busy (user, nice, system, irq, softirq; all cores), in µs. */
export function machineBusyMicros(): number {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const [, user, nice, system, , , irq, softirq] = line.trim().split(/\s+/).map(Number);
  return ((user! + nice! + system! + irq! + softirq!) / CLK_TCK) * 1e6;
}

export function statusKiB(pid: number, key: string): number {
  try {
    const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm'));
    return m ? Number(m[1]) : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

export interface Usage {
  wallUs: number;
  /** CPU µs of each service over the run. */
  cpuUs: Record<string, number>;
  /** CPU µs of the measuring command itself (wrk, curl). */
  toolUs: number;
  /** Cores that other processes on the machine kept busy, on average over the run. */
  otherCores: number;
}

/**
 * Runs a load generator under bash, whose `times` tells its own CPU, and accounts the CPU of the
 * services and of the whole machine over the run.
 */
export async function measured(
  cmd: string,
  args: string[],
  timeoutMs: number,
  services: Service[],
): Promise<{ r: RunResult; usage: Usage }> {
  const before = services.map((s) => cpuMicros(s.pid));
  const machineBefore = machineBusyMicros();
  const t0 = performance.now();
  const r = await run('bash', ['-c', '"$@"; rc=$?; times >&2; exit $rc', 'bench', cmd, ...args], timeoutMs);
  const wallUs = (performance.now() - t0) * 1000;
  const machineUs = machineBusyMicros() - machineBefore;
  const cpuUs: Record<string, number> = {};
  let ours = 0;
  services.forEach((s, i) => {
    cpuUs[s.name] = cpuMicros(s.pid) - before[i]!;
    ours += cpuUs[s.name]!;
  });
  // `times` prints the shell's user and sys time, then on a second line its children's: the command's.
  const t = r.stderr.match(/\d+m[\d.]+s \d+m[\d.]+s\n(\d+)m([\d.]+)s (\d+)m([\d.]+)s\s*$/);
  const toolUs = t ? (Number(t[1]) * 60 + Number(t[2]) + Number(t[3]) * 60 + Number(t[4])) * 1e6 : 0;
  if (t) r.stderr = r.stderr.slice(0, t.index);
  const otherCores = Math.max(0, machineUs - ours - toolUs) / wallUs;
  return { r, usage: { wallUs, cpuUs, toolUs, otherCores } };
}

export function machine(): { cpu: string; cores: number; ramGiB: number; node: string; kernel: string } {
  let cpu = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = fs.readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.+)$/m);
    if (m) cpu = m[1]!.trim();
  } catch {}
  return {
    cpu,
    cores: os.availableParallelism(),
    ramGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    kernel: os.release(),
  };
}

// ---------------------------------------------------------------------------------------------
// Workloads

export interface WrkFigures {
  requests: number;
  rps: number;
  p50Us: number;
  p99Us: number;
  non2xx: number;
  socketErrors: { connect: number; read: number; write: number; timeout: number };
  /** CPU µs per request of each service during the run. */
  cpuPerReq: Record<string, number>;
  otherCores: number;
  problems: string[];
}

export function toMicros(value: string, unit: string): number {
  const v = Number(value);
  if (unit === 'us') return v;
  if (unit === 'ms') return v * 1e3;
  if (unit === 's') return v * 1e6;
  if (unit === 'm') return v * 60e6;
  throw new BenchError(`wrk: unknown latency unit ${unit}`);
}

export function parseWrk(out: string): Omit<WrkFigures, 'cpuPerReq' | 'problems' | 'otherCores'> {
  const done = out.match(/(\d+) requests in ([\d.]+)(us|ms|s|m)\b/);
  const rps = out.match(/Requests\/sec:\s+([\d.]+)/);
  const p50 = out.match(/^\s*50%\s+([\d.]+)(us|ms|s|m)\s*$/m);
  const p99 = out.match(/^\s*99%\s+([\d.]+)(us|ms|s|m)\s*$/m);
  if (!done || !rps) throw new BenchError(`cannot parse wrk output:\n${out}`);
  const sock = out.match(/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/);
  const non2xx = out.match(/Non-2xx or 3xx responses: (\d+)/);
  const requests = Number(done[1]);
  return {
    requests,
    rps: Number(rps[1]),
    // With no completed request wrk prints a distribution of zeros.
    p50Us: p50 && requests > 0 ? toMicros(p50[1]!, p50[2]!) : Number.NaN,
    p99Us: p99 && requests > 0 ? toMicros(p99[1]!, p99[2]!) : Number.NaN,
    non2xx: non2xx ? Number(non2xx[1]) : 0,
    socketErrors: sock
      ? { connect: Number(sock[1]), read: Number(sock[2]), write: Number(sock[3]), timeout: Number(sock[4]) }
      : { connect: 0, read: 0, write: 0, timeout: 0 },
  };
}

export async function wrk(
  url: string,
  connections: number,
  durationS: number,
  host: string | undefined,
  services: Service[],
): Promise<WrkFigures> {
  const args = ['-t', String(Math.min(2, connections)), '-c', String(connections), '-d', `${durationS}s`];
  args.push('--timeout', '2s', '--latency');
  if (host) args.push('-H', `Host: ${host}`);
  args.push(url);
  const { r, usage } = await measured('wrk', args, (durationS + 20) * 1000, services);
  if (r.timedOut) throw new BenchError(`wrk did not finish (${url}, c=${connections})`);
  if (r.code !== 0) throw new BenchError(`wrk failed (${r.code}): ${r.stderr}${r.stdout}`);
  const figures = parseWrk(r.stdout);
  const problems: string[] = [];
  const e = figures.socketErrors;
  if (figures.non2xx > 0) problems.push(`${figures.non2xx} non-2xx/3xx responses`);
  if (e.connect + e.read + e.write > 0)
    problems.push(`socket errors: connect ${e.connect}, read ${e.read}, write ${e.write}`);
  if (e.timeout > 0) problems.push(`${e.timeout} requests got no answer within 2 s (stall)`);
  if (figures.requests === 0) problems.push('no request completed (stall)');
  const cpuPerReq: Record<string, number> = {};
  for (const [name, us] of Object.entries(usage.cpuUs))
    cpuPerReq[name] = figures.requests > 0 ? us / figures.requests : Number.NaN;
  return { ...figures, cpuPerReq, otherCores: usage.otherCores, problems };
}

export interface BulkFigures {
  /** Best of the tries, MB/s (10^6 bytes). */
  mbps: number;
  all: number[];
  /** CPU ms of each service per 100 MiB, averaged over the successful tries. */
  cpuMs: Record<string, number>;
  otherCores: number;
  problems: string[];
}

export async function curlBulk(
  kind: 'download' | 'upload',
  base: string,
  host: string | undefined,
  file: string,
  services: Service[],
): Promise<BulkFigures> {
  const all: number[] = [];
  const problems: string[] = [];
  const cpuMs: Record<string, number> = {};
  let otherCores = 0;
  for (let i = 0; i < BULK_TRIES; i++) {
    // Give up on a transfer that moves less than 1 MB/s for 10 s: that is a stall.
    const args = ['-s', '--max-time', '60', '--speed-limit', '1000000', '--speed-time', '10'];
    args.push('-o', kind === 'download' ? '/dev/null' : '-');
    if (host) args.push('-H', `Host: ${host}`);
    if (kind === 'download') {
      args.push('-w', '\n%{http_code} %{size_download} %{speed_download}', `${base}/bytes?n=${BULK_BYTES}`);
    } else {
      // No `Expect: 100-continue` round trip: we measure the body's transfer.
      args.push('-H', 'Expect:', '-H', 'Content-Type: application/octet-stream', '--data-binary', `@${file}`);
      args.push('-w', '\n%{http_code} %{size_upload} %{speed_upload}', `${base}/upload`);
    }
    const { r, usage } = await measured('curl', args, 90_000, services);
    otherCores = Math.max(otherCores, usage.otherCores);
    const lines = r.stdout.trimEnd().split('\n');
    const [status, size, speed] = (lines.pop() ?? '').split(' ');
    const body = lines.join('\n').trim();
    if (r.timedOut || r.code !== 0) {
      const why = r.code === 28 ? 'too slow or stalled' : r.stderr.trim();
      problems.push(`${kind} try ${i + 1}: curl exit ${r.timedOut ? 'timeout' : r.code} (${why})`);
      break;
    }
    if (
      status !== '200' ||
      Number(size) !== BULK_BYTES ||
      (kind === 'upload' && body !== String(BULK_BYTES))
    ) {
      problems.push(
        `${kind} try ${i + 1}: status ${status}, ${size} bytes ${kind === 'upload' ? `sent, origin counted ${body.slice(0, 80)}` : 'received'}`,
      );
      break;
    }
    all.push(Number(speed) / 1e6);
    for (const [name, us] of Object.entries(usage.cpuUs))
      cpuMs[name] = (cpuMs[name] ?? 0) + us / 1000 / BULK_TRIES;
  }
  if (all.length < BULK_TRIES) for (const name of Object.keys(cpuMs)) cpuMs[name] = Number.NaN;
  return { mbps: all.length ? Math.max(...all) : Number.NaN, all, cpuMs, otherCores, problems };
}

export interface WsFigures {
  p50Us: number;
  p99Us: number;
  problems: string[];
}

export async function wsRoundTrips(url: string, host: string | undefined): Promise<WsFigures> {
  const ws = new WebSocket(url, host ? { headers: { Host: host } } : {});
  ws.on('error', () => {});
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('WebSocket open timed out')), 10_000);
      ws.once('open', () => {
        clearTimeout(timer);
        resolve();
      });
      ws.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      ws.once('unexpected-response', (_req, res) => {
        clearTimeout(timer);
        reject(new Error(`WebSocket upgrade answered ${res.statusCode}`));
      });
    });
    const payload = Buffer.alloc(WS_PAYLOAD, 0x62);
    const samples: number[] = [];
    for (let i = 0; i < WS_WARMUP + WS_ROUND_TRIPS; i++) {
      const started = process.hrtime.bigint();
      const echoed = await new Promise<Buffer>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no echo within 5 s (round trip ${i + 1})`)), 5000);
        ws.once('message', (data: Buffer) => {
          clearTimeout(timer);
          resolve(data);
        });
        ws.send(payload, { binary: true });
      });
      const us = Number(process.hrtime.bigint() - started) / 1e3;
      if (!payload.equals(echoed))
        throw new Error(`echo of ${echoed.length} bytes differs from what was sent`);
      if (i >= WS_WARMUP) samples.push(us);
    }
    samples.sort((a, b) => a - b);
    return { p50Us: percentile(samples, 0.5), p99Us: percentile(samples, 0.99), problems: [] };
  } catch (err) {
    return { p50Us: Number.NaN, p99Us: Number.NaN, problems: [`WebSocket: ${(err as Error).message}`] };
  } finally {
    ws.terminate();
  }
}

export function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** One GET with a Host header, on a fresh connection. */
export function get(url: string, host?: string, timeoutMs = 5000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers: host ? { Host: host } : {}, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => {
        body += d;
      });
      res.once('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.once('error', reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.once('error', reject);
  });
}

export const NaN_ = Number.NaN;
export const fmt = {
  n: (v: number) => (Number.isFinite(v) ? Math.round(v).toLocaleString('en-US') : 'n/a'),
  us: (v: number) =>
    !Number.isFinite(v) ? 'n/a' : v >= 10_000 ? `${(v / 1000).toFixed(1)} ms` : `${Math.round(v)} µs`,
  ms: (v: number) => (Number.isFinite(v) ? `${Math.round(v)} ms` : 'n/a'),
  mb: (v: number) => (Number.isFinite(v) ? `${v.toFixed(0)} MB/s` : 'n/a'),
  ratio: (t: number, d: number) =>
    Number.isFinite(t) && Number.isFinite(d) && d > 0 ? `${((t / d) * 100).toFixed(0)}%` : 'n/a',
  times: (t: number, d: number) =>
    Number.isFinite(t) && Number.isFinite(d) && d > 0 ? `${(t / d).toFixed(1)}×` : 'n/a',
};

/** A file of BULK_BYTES bytes to upload. */
export function writeUploadFile(file: string): void {
  const chunk = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 7919) & 0xff;
  const fd = fs.openSync(file, 'w');
  try {
    for (let i = 0; i < BULK_BYTES / chunk.length; i++) fs.writeSync(fd, chunk);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A section of RESULTS.md: `heading`, `intro`, the targets its subsections state, then the subsections.
 * Those are `previous`'s (the section as it stands, or '') with `fresh` replacing or adding some, so that
 * a run of some benchmarks keeps the figures of the others; they go in `order`, then any others.
 */
export function resultsSection(opts: {
  heading: string;
  intro: string;
  previous: string;
  fresh: Map<string, string>;
  order: readonly string[];
}): string {
  const subsections = new Map<string, string>();
  for (const part of opts.previous.split(/^### /m).slice(1)) {
    const nl = part.indexOf('\n');
    subsections.set(part.slice(0, nl).trim(), part.slice(nl + 1).trim());
  }
  for (const [name, body] of opts.fresh) subsections.set(name, body);
  const names = [
    ...opts.order.filter((n) => subsections.has(n)),
    ...[...subsections.keys()].filter((n) => !opts.order.includes(n)),
  ];
  const targets = names.flatMap((n) =>
    subsections
      .get(n)!
      .split('\n')
      .filter((l) => l.startsWith('**Target**'))
      .map((l) => `- ${l.replace(/^\*\*Target\*\*: /, '')}`),
  );
  return `${opts.heading}

${opts.intro}

Targets:

${targets.join('\n')}

${names.map((n) => `### ${n}\n\n${subsections.get(n)}\n`).join('\n')}`;
}
