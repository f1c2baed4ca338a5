/**
 * The `warren` CLI as real child processes, for tests that need separate address spaces (peak RSS),
 * signals or crashes. Every process spawned here is remembered until it exits; `killAll()` (call it in
 * `after` hooks) and a last-resort `exit` hook SIGKILL whatever is left, so a failing test never
 * leaves an edge or an agent behind.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { startTestOrigin, type TestOrigin } from './origin.ts';
import { withDeadline } from './wait.ts';

/** The repository root (where package.json and node_modules are), from this file's location. */
export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface CliProcess {
  readonly pid: number;
  readonly child: ChildProcess;
  /** Everything written to stdout / stderr so far. */
  readonly stdout: string;
  readonly stderr: string;
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<ExitInfo>;
  /** Whether the process has exited yet. */
  readonly running: boolean;
  /** Waits until stdout matches `re` (checked against all of stdout so far). */
  waitForStdout(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
  waitForStderr(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
  /** The exit, or a rejection that quotes stderr when it does not come in time. */
  waitExit(timeoutMs: number): Promise<ExitInfo>;
  signal(sig: NodeJS.Signals): void;
  /** Peak resident set size (VmHWM) in bytes. The process must still be running. */
  peakRssBytes(): Promise<number>;
  /** SIGKILL (if still running) and wait for the exit. Idempotent. */
  kill(): Promise<void>;
}

const live = new Set<CliProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Synchronous last resort when a test file ends without its after-hooks having run.
  process.once('exit', () => {
    for (const p of live) {
      try {
        p.child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

/** An environment without WARREN_* variables, so the flags a test passes are the whole configuration. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('WARREN_')) env[k] = v;
  return { ...env, ...extra };
}

/** Spawns `node --import tsx src/cli/main.ts ...args` in the repository root. */
export function spawnCli(args: string[], opts: { env?: Record<string, string> } = {}): CliProcess {
  installExitHook();
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    cwd: REPO_ROOT,
    env: cleanEnv(opts.env ?? {}),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (child.pid === undefined) throw new Error(`could not spawn warren ${args.join(' ')}`);
  const pid = child.pid;
  let stdout = '';
  let stderr = '';
  let running = true;
  const listeners = new Set<() => void>();
  const notify = () => {
    for (const l of [...listeners]) l();
  };
  child.stdout!.setEncoding('utf8');
  child.stderr!.setEncoding('utf8');
  child.stdout!.on('data', (s: string) => {
    stdout += s;
    notify();
  });
  child.stderr!.on('data', (s: string) => {
    stderr += s;
    notify();
  });
  const exited = new Promise<ExitInfo>((resolve) => {
    child.once('exit', (code, signal) => {
      running = false;
      live.delete(proc);
      resolve({ code, signal });
    });
    child.once('error', () => {
      running = false;
      live.delete(proc);
      resolve({ code: null, signal: null });
    });
  });
  // 'exit' can come before the pipes have delivered their last bytes; 'close' waits for them.
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));

  const waitForOutput = (which: () => string, name: string, re: RegExp, timeoutMs: number) =>
    new Promise<RegExpMatchArray>((resolve, reject) => {
      const check = () => {
        const m = which().match(re);
        if (m) {
          done();
          resolve(m);
        } else if (!running) {
          // Give the pipes a chance to flush what the process wrote just before it exited.
          void closed.then(() => {
            const late = which().match(re);
            done();
            if (late) resolve(late);
            else
              reject(
                new Error(
                  `warren ${args[0]} (pid ${pid}) exited before its ${name} matched ${re}\nstdout:\n${stdout}\nstderr:\n${stderr}`,
                ),
              );
          });
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(
            `warren ${args[0]} (pid ${pid}): ${name} did not match ${re} within ${timeoutMs} ms\nstdout:\n${stdout}\nstderr:\n${stderr}`,
          ),
        );
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        listeners.delete(check);
      };
      listeners.add(check);
      void exited.then(check);
      check();
    });

  const proc: CliProcess = {
    pid,
    child,
    get stdout() {
      return stdout;
    },
    get stderr() {
      return stderr;
    },
    exited,
    get running() {
      return running;
    },
    waitForStdout: (re, timeoutMs) => waitForOutput(() => stdout, 'stdout', re, timeoutMs),
    waitForStderr: (re, timeoutMs) => waitForOutput(() => stderr, 'stderr', re, timeoutMs),
    async waitExit(timeoutMs) {
      try {
        const info = await withDeadline(exited, timeoutMs, `warren ${args[0]} (pid ${pid}) to exit`);
        await closed;
        return info;
      } catch (err) {
        throw new Error(`${(err as Error).message}\nstderr:\n${stderr}`, { cause: err });
      }
    },
    signal(sig) {
      if (running) child.kill(sig);
    },
    peakRssBytes: () => peakRssBytes(pid),
    async kill() {
      if (running) child.kill('SIGKILL');
      await exited;
    },
  };
  live.add(proc);
  return proc;
}

/** Peak resident set size of a running process (VmHWM in /proc/<pid>/status), in bytes. */
export async function peakRssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const m = /^VmHWM:\s+(\d+)\s+kB$/m.exec(status);
  if (!m) throw new Error(`no VmHWM in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/** SIGKILLs every process spawned here that is still running, and waits for them. */
export async function killAll(): Promise<void> {
  await Promise.all([...live].map((p) => p.kill()));
}

export interface CliResult extends ExitInfo {
  stdout: string;
  stderr: string;
}

/**
 * Runs a short-lived `warren` command (login, tunnel create, audit …) to its end and returns what it
 * printed and its exit code. Rejects, quoting its output, when it has not exited within `timeoutMs`.
 */
export async function runCli(
  args: string[],
  opts: { env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<CliResult> {
  const proc = spawnCli(args, opts.env ? { env: opts.env } : {});
  try {
    const exit = await proc.waitExit(opts.timeoutMs ?? 30_000);
    return { ...exit, stdout: proc.stdout, stderr: proc.stderr };
  } catch (err) {
    await proc.kill();
    throw new Error(`${(err as Error).message}\nstdout:\n${proc.stdout}`, { cause: err });
  }
}

export interface EdgeProcess extends CliProcess {
  readonly visitorPort: number;
  readonly tunnelPort: number;
  readonly apiPort: number;
  readonly apiUrl: string;
  /** The DNS listener's port (UDP and TCP); 0 when started with --no-dns-listen. */
  readonly dnsPort: number;
}

/**
 * `warren edge` with every listener on 127.0.0.1 port 0 unless `args` say otherwise (later flags win),
 * resolved once it has printed its addresses.
 */
export async function startEdgeProcess(
  args: string[],
  opts: { timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<EdgeProcess> {
  const proc = spawnCli(
    [
      'edge',
      '--listen',
      '127.0.0.1:0',
      '--tunnel-listen',
      '127.0.0.1:0',
      '--api-listen',
      '127.0.0.1:0',
      '--dns-listen',
      '127.0.0.1:0',
      ...args,
    ],
    opts.env ? { env: opts.env } : {},
  );
  try {
    const m = await proc.waitForStdout(
      /visitors: http:\/\/[^\s]+:(\d+)\n\s*tunnels:\s+[^\s]+:(\d+) \(TLS\)\n\s*API:\s+(http:\/\/[^\s]+:(\d+))\n\s*DNS:\s+(?:[^\s]+:(\d+) \(UDP, TCP\)|off)\n/,
      opts.timeoutMs ?? 30_000,
    );
    return Object.assign(proc, {
      visitorPort: Number(m[1]),
      tunnelPort: Number(m[2]),
      apiUrl: m[3]!,
      apiPort: Number(m[4]),
      dnsPort: m[5] === undefined ? 0 : Number(m[5]),
    });
  } catch (err) {
    await proc.kill();
    throw err;
  }
}

/**
 * A new `warren edge` on `first`'s visitor, tunnel and API ports (with `args`, typically the same data
 * dir): a restart as agents and visitors see it, since they hold only those addresses. `first` must
 * have exited, or the listens fail.
 */
export function restartEdgeProcess(
  first: EdgeProcess,
  args: string[],
  opts: { timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<EdgeProcess> {
  return startEdgeProcess(
    [
      ...args,
      '--listen',
      `127.0.0.1:${first.visitorPort}`,
      '--tunnel-listen',
      `127.0.0.1:${first.tunnelPort}`,
      '--api-listen',
      `127.0.0.1:${first.apiPort}`,
    ],
    opts,
  );
}

export interface EdgeRestartSuite {
  /** The test origin, started before the suite's tests. */
  readonly origin: TestOrigin;
  /** Flags for an edge on a new LevelDB data dir with a 2 s drain; the same flags restart it on that log. */
  dataDirArgs(): Promise<string[]>;
}

/**
 * Hooks for a `describe` of edge processes that restart on their data dir (call it in the describe's
 * body): the test origin starts before its tests; after them every CLI process is killed, the origin
 * closed and the data dirs removed.
 */
export function edgeRestartSuite(): EdgeRestartSuite {
  let origin: TestOrigin | undefined;
  const dirs: string[] = [];
  before(async () => {
    origin = await startTestOrigin();
  });
  after(async () => {
    await killAll();
    await origin?.close();
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });
  return {
    get origin() {
      assert.ok(origin, 'the origin starts in the before hook');
      return origin;
    },
    async dataDirArgs() {
      const dir = await mkdtemp(path.join(os.tmpdir(), 'warren-edge-'));
      dirs.push(dir);
      return ['--data-dir', dir, '--drain-timeout', '2s'];
    },
  };
}

export interface TunnelProcess extends CliProcess {
  /** The URL from the agent's box, e.g. `http://brisk-otter-meadow-3f9a.warren.localhost:41234`. */
  readonly url: string;
  readonly hostname: string;
}

/** `warren tunnel --url ORIGIN --edge-api API ...args`, resolved once it has printed its URL box. */
export async function startTunnelProcess(
  originUrl: string,
  apiUrl: string,
  args: string[] = [],
  opts: { timeoutMs?: number } = {},
): Promise<TunnelProcess> {
  const proc = spawnTunnel(originUrl, apiUrl, args);
  try {
    const m = await proc.waitForStdout(/\|\s+(http:\/\/([a-z0-9.-]+):\d+)\s+\|/, opts.timeoutMs ?? 30_000);
    return Object.assign(proc, { url: m[1]!, hostname: m[2]! });
  } catch (err) {
    await proc.kill();
    throw err;
  }
}

/** `warren tunnel` without waiting for anything (for agents expected to fail). */
export function spawnTunnel(originUrl: string, apiUrl: string, args: string[] = []): CliProcess {
  return spawnCli(['tunnel', '--url', originUrl, '--edge-api', apiUrl, ...args]);
}

export interface WorkerOrigin {
  /** `http://127.0.0.1:<port>` of the test origin (see origin.ts). */
  readonly url: string;
  readonly port: number;
  /** Closes the origin and ends the thread. Idempotent. */
  close(): Promise<void>;
}

/**
 * The test origin (origin.ts) on its own thread of this process. Bulk routes keep the origin's event
 * loop busy (generating `/bytes` runs as long as the socket takes writes synchronously); on a thread of
 * its own that does not delay the test's visitor side, as it would not with an origin on another host.
 */
export async function startTestOriginInWorker(): Promise<WorkerOrigin> {
  const originModule = new URL('./origin.ts', import.meta.url).href;
  // Workers do not inherit tsx's module hooks: register them in the thread before loading TypeScript.
  const code = `
    const { parentPort } = require('node:worker_threads');
    import('tsx/esm/api')
      .then(({ register }) => { register(); return import(${JSON.stringify(originModule)}); })
      .then(({ startTestOrigin }) => startTestOrigin())
      .then((origin) => {
        parentPort.postMessage({ url: origin.url, port: origin.port });
        parentPort.once('message', () => origin.close().then(() => parentPort.close()));
      });`;
  const worker = new Worker(code, { eval: true });
  const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
  const ready = new Promise<{ url: string; port: number }>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
    void exited.then(() => reject(new Error('the origin thread exited before it was ready')));
  });
  let info: { url: string; port: number };
  try {
    info = await withDeadline(ready, 30_000, 'the test origin thread to start');
  } catch (err) {
    await worker.terminate();
    throw err;
  }
  let closing: Promise<void> | undefined;
  return {
    url: info.url,
    port: info.port,
    close() {
      closing ??= (async () => {
        worker.postMessage('close');
        // A thread that does not finish closing in time is ended.
        await withDeadline(exited, 5000, 'the origin thread to exit').catch(() => worker.terminate());
      })();
      return closing;
    },
  };
}
