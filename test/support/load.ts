/**
 * Steady visitor load for fault tests and benchmarks: requests at a fixed rate (or closed-loop at a
 * fixed concurrency) through the edge's visitor listener, each on a fresh connection, counting every
 * answer. Bounded: at most `maxRequests` are sent and at most `concurrency` are in flight; `stop()`
 * waits for the ones in flight.
 *
 * A request whose TCP connect was refused never reached an edge (the edge process was between two
 * lives); with `retryRefusedConnect` it is sent again until it connects or its deadline passes, as a
 * load balancer in front of several edges would, and counts once, by its final answer. Everything
 * else — a 5xx, a reset, a timeout — is a failure.
 */
import http from 'node:http';

export interface LoadOptions {
  port: number;
  /** The Host header (the tunnel's hostname). */
  host: string;
  /** Default `/status/200`. */
  path?: string;
  /** Requests started per second; omit for closed-loop (each worker sends its next when one ends). */
  ratePerSecond?: number;
  /** Requests in flight at most (default 8). */
  concurrency?: number;
  /** Deadline of each request, connect retries included (default 10 s). */
  timeoutMs?: number;
  retryRefusedConnect?: boolean;
  /** Hard bound on requests sent (default 100 000). */
  maxRequests?: number;
}

export interface LoadFailure {
  at: number;
  status?: number;
  /** The edge's `Warren-Error` header, or the socket error's code. */
  code: string;
}

export interface LoadReport {
  sent: number;
  ok: number;
  failed: number;
  failures: LoadFailure[];
  /** Requests that needed at least one connect retry. */
  retriedConnects: number;
  latenciesMs: number[];
}

export interface Load {
  readonly sent: number;
  readonly ok: number;
  readonly failed: number;
  /** Resolves once `n` more requests have succeeded (for "the load is flowing" checks). */
  succeeded(n: number, timeoutMs: number): Promise<void>;
  stop(): Promise<LoadReport>;
}

const NO_AGENT = new http.Agent({ keepAlive: false });

function once(
  opts: LoadOptions,
  deadline: number,
): Promise<{ status?: number; code: string; retried: boolean }> {
  let retried = false;
  return new Promise((resolve) => {
    const attempt = () => {
      const req = http.request({
        host: '127.0.0.1',
        port: opts.port,
        path: opts.path ?? '/status/200',
        headers: { host: opts.host, connection: 'close' },
        agent: NO_AGENT,
        timeout: Math.max(1, deadline - Date.now()),
      });
      req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
      req.on('response', (res) => {
        res.resume();
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, code: String(res.headers['warren-error'] ?? ''), retried }),
        );
        res.on('error', (err: NodeJS.ErrnoException) =>
          resolve({ status: res.statusCode ?? 0, code: err.code ?? 'response_error', retried }),
        );
      });
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ECONNREFUSED' && opts.retryRefusedConnect && Date.now() < deadline - 20) {
          retried = true;
          setTimeout(attempt, 10);
          return;
        }
        resolve({ code: err.code ?? 'request_error', retried });
      });
      req.end();
    };
    attempt();
  });
}

export function startLoad(opts: LoadOptions): Load {
  const concurrency = opts.concurrency ?? 8;
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const maxRequests = opts.maxRequests ?? 100_000;
  const report: LoadReport = { sent: 0, ok: 0, failed: 0, failures: [], retriedConnects: 0, latenciesMs: [] };
  const inFlight = new Set<Promise<void>>();
  const waiters: { target: number; resolve: () => void }[] = [];
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;

  const send = (): Promise<void> => {
    report.sent++;
    const started = Date.now();
    const p = once(opts, started + timeoutMs).then((r) => {
      if (r.retried) report.retriedConnects++;
      if (r.status !== undefined && r.status < 500) {
        report.ok++;
        report.latenciesMs.push(Date.now() - started);
        for (const w of [...waiters]) {
          if (report.ok >= w.target) {
            waiters.splice(waiters.indexOf(w), 1);
            w.resolve();
          }
        }
      } else {
        report.failed++;
        report.failures.push({
          at: started,
          ...(r.status !== undefined ? { status: r.status } : {}),
          code: r.code,
        });
      }
    });
    inFlight.add(p);
    void p.finally(() => inFlight.delete(p));
    return p;
  };
  const canSend = () => !stopped && report.sent < maxRequests;

  if (opts.ratePerSecond) {
    const intervalMs = 1000 / opts.ratePerSecond;
    const startedAt = Date.now();
    const tick = () => {
      // Catch up on the schedule, but never past the concurrency bound.
      const due = Math.floor((Date.now() - startedAt) / intervalMs) + 1;
      while (canSend() && report.sent < due && inFlight.size < concurrency) void send();
      if (canSend()) timer = setTimeout(tick, Math.max(1, intervalMs / 2));
    };
    tick();
  } else {
    const worker = async () => {
      while (canSend()) await send();
    };
    for (let i = 0; i < concurrency; i++) void worker();
  }

  return {
    get sent() {
      return report.sent;
    },
    get ok() {
      return report.ok;
    },
    get failed() {
      return report.failed;
    },
    succeeded(n, waitMs) {
      const target = report.ok + n;
      return new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          reject(
            new Error(
              `load: ${n} more successful requests did not come within ${waitMs} ms (ok ${report.ok}, failed ${report.failed})`,
            ),
          );
        }, waitMs);
        const w = {
          target,
          resolve: () => {
            clearTimeout(t);
            resolve();
          },
        };
        waiters.push(w);
      });
    },
    async stop() {
      stopped = true;
      clearTimeout(timer);
      while (inFlight.size > 0) await Promise.all([...inFlight]);
      return report;
    },
  };
}
