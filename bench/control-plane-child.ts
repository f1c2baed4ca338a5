/**
 * The edge side of the control-plane benchmarks, in a process of its own so that its start-up time
 * and memory are its own (bench/control-plane.ts starts it):
 *
 *   control-plane-child.ts edge <dataDir>     an edge on a LevelDB log in <dataDir>, every listener on
 *                                             127.0.0.1 port 0 (DNS too), one account; prints
 *                                             `ready {json}` and runs until SIGINT or SIGTERM
 *   control-plane-child.ts replay <dataDir>   starts an edge on the log already in <dataDir> (loading
 *                                             the directory snapshot there, if any, and folding the log
 *                                             after it), stops it cleanly (which saves a snapshot), then
 *                                             prints `replayed {json}`: start-up time, memory, and what
 *                                             the start and the stop did with snapshots
 */
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { defaultEdgeConfig, type Edge, startEdge } from '../src/edge/edge.ts';
import { systemClock } from '../src/shared/clock.ts';
import { createLogger } from '../src/shared/log.ts';
import { openLevelEventLog } from '../src/store/level-event-log.ts';

const [mode, dataDir] = process.argv.slice(2);
if ((mode !== 'edge' && mode !== 'replay') || !dataDir) {
  process.stderr.write('usage: control-plane-child.ts edge|replay <dataDir>\n');
  process.exit(2);
}

const ANY_PORT = { host: '127.0.0.1', port: 0 };
const clock = systemClock;
/** What the control plane said about snapshots at start and stop, from its info lines. */
const said: Record<string, Record<string, unknown>> = {};
const warnings = createLogger({ level: 'warn' });
const log =
  mode === 'replay'
    ? pino(
        { level: 'info' },
        new Writable({
          write(chunk: Buffer, _encoding, done) {
            for (const line of chunk.toString().split('\n')) {
              if (!line) continue;
              const entry = JSON.parse(line) as { level: number; msg: string };
              if (entry.msg.startsWith('directory')) said[entry.msg] = entry;
              if (entry.level >= 40) process.stderr.write(`${line}\n`);
            }
            done();
          },
        }),
      )
    : warnings;

async function start(): Promise<{ edge: Edge; openLogMs: number; startEdgeMs: number }> {
  const t0 = performance.now();
  const eventLog = await openLevelEventLog({ clock, log }, { dataDir: dataDir! });
  const t1 = performance.now();
  const edge = await startEdge(
    { clock, log, registry: new Registry(), eventLog },
    {
      ...defaultEdgeConfig,
      dataDir: dataDir!,
      visitor: ANY_PORT,
      tunnel: ANY_PORT,
      api: ANY_PORT,
      dns: ANY_PORT,
      drainTimeoutMs: 2000,
    },
  );
  return { edge, openLogMs: t1 - t0, startEdgeMs: performance.now() - t1 };
}

function memory() {
  const m = process.memoryUsage();
  const hwm = fs.readFileSync('/proc/self/status', 'utf8').match(/^VmHWM:\s+(\d+) kB/m);
  return {
    rssBytes: m.rss,
    heapUsedBytes: m.heapUsed,
    peakRssBytes: hwm ? Number(hwm[1]) * 1024 : Number.NaN,
  };
}

if (mode === 'replay') {
  const { edge, openLogMs, startEdgeMs } = await start();
  const cpu = process.cpuUsage();
  const ready = said['directory ready'] ?? {};
  const out = {
    events: edge.controlPlane.directory.position,
    openLogMs,
    startEdgeMs,
    tunnels: edge.controlPlane.directory.tunnels.size,
    // The whole process so far: module loading is part of an edge's start-up too.
    cpuMs: (cpu.user + cpu.system) / 1000,
    ...memory(),
    fromSnapshot: ready.fromSnapshot === true,
    folded: typeof ready.folded === 'number' ? ready.folded : Number.NaN,
    closeMs: 0,
    snapshotBytes: 0,
  };
  // A clean stop saves a snapshot (or waits for the one begun after a long fold at start).
  const t = performance.now();
  await edge.close();
  out.closeMs = performance.now() - t;
  const dir = path.join(dataDir, 'snapshots');
  const files = fs.existsSync(dir)
    ? fs
        .readdirSync(dir)
        .filter((f) => f.endsWith('.snapshot'))
        .sort()
    : [];
  out.snapshotBytes = files.length ? fs.statSync(path.join(dir, files.at(-1)!)).size : 0;
  process.stdout.write(`replayed ${JSON.stringify(out)}\n`);
} else {
  const { edge } = await start();
  const account = edge.controlPlane.initialized
    ? undefined
    : await edge.controlPlane.initialize({ accountName: 'bench', zone: 'bench.example', member: 'bench' });
  if (!account) throw new Error(`${dataDir} already holds an initialised edge; give the bench a fresh one`);
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    void edge.close().then(() => process.exit(0));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const ready = {
    apiUrl: edge.apiUrl,
    tunnelPort: edge.tunnelPort,
    dnsPort: edge.dnsPort,
    edgeDomain: edge.config.edgeDomain,
    accountId: account.accountId,
    zone: account.zone,
    token: account.token,
    ...memory(),
  };
  process.stdout.write(`ready ${JSON.stringify(ready)}\n`);
}
