/**
 * The edge side of the control-plane benchmarks, in a process of its own so that its start-up time
 * and memory are its own (bench/control-plane.ts starts it):
 *
 *   control-plane-child.ts edge <dataDir>     an edge on a LevelDB log in <dataDir>, every listener on
 *                                             127.0.0.1 port 0 (DNS too), one account; prints
 *                                             `ready {json}` and runs until SIGINT or SIGTERM
 *   control-plane-child.ts replay <dataDir>   starts an edge on the log already in <dataDir> (the
 *                                             start-up folds all of it), prints `replayed {json}`, stops
 */
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
const log = createLogger({ level: 'warn' });

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
  return { rssBytes: m.rss, heapUsedBytes: m.heapUsed };
}

if (mode === 'replay') {
  const { edge, openLogMs, startEdgeMs } = await start();
  const cpu = process.cpuUsage();
  const out = {
    events: edge.controlPlane.directory.position,
    openLogMs,
    startEdgeMs,
    tunnels: edge.controlPlane.directory.tunnels.size,
    // The whole process so far: module loading is part of an edge's start-up too.
    cpuMs: (cpu.user + cpu.system) / 1000,
    ...memory(),
  };
  await edge.close();
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
