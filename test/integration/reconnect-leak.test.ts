/**
 * 1000 reconnect cycles leave the agent flat: after a warm-up, its handles, timers, process listeners
 * and (collected) heap are where they were. Each cycle resets the agent's connection in the fault
 * proxy and waits for the agent to register again. The edge runs in its own process, so its growing
 * event log does not count against the agent.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import v8 from 'node:v8';
import vm from 'node:vm';
import type { Agent } from '../../src/agent/agent.ts';
import { requestQuickTunnel } from '../../src/agent/quick-tunnel.ts';
import { type FaultProxy, startFaultProxy } from '../support/fault-proxy.ts';
import { startTestOrigin, type TestOrigin } from '../support/origin.ts';
import { type EdgeProcess, killAll, startEdgeProcess } from '../support/processes.ts';
import { startTestAgent } from '../support/stack.ts';
import { waitFor } from '../support/wait.ts';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const CYCLES = 1000;
const WARM_UP = 200;
/**
 * What 800 cycles may add to the collected heap (objects, not code): 5 KiB a cycle. One retained TLS
 * socket with its warren/1 session is several times that per cycle (16 MiB and more over the run);
 * a healthy run grows under 1 MiB, most of it V8's own bookkeeping.
 */
const HEAP_SLACK_BYTES = 4 * 1024 * 1024;

interface Footprint {
  heapUsed: number;
  resources: Record<string, number>;
  processListeners: number;
}

async function footprint(): Promise<Footprint> {
  // Let closed sockets finish closing, then collect twice (weak callbacks run between the two).
  await new Promise<void>((resolve) => setImmediate(resolve));
  gc();
  await new Promise<void>((resolve) => setImmediate(resolve));
  gc();
  const resources: Record<string, number> = {};
  for (const r of process.getActiveResourcesInfo()) resources[r] = (resources[r] ?? 0) + 1;
  const processListeners = process.eventNames().reduce((n, e) => n + process.listenerCount(e), 0);
  // Objects only: V8 keeps optimising and deoptimising code for a while, which is not a leak.
  const heapUsed = v8
    .getHeapSpaceStatistics()
    .filter((s) => !s.space_name.startsWith('code'))
    .reduce((n, s) => n + s.space_used_size, 0);
  return { heapUsed, resources, processListeners };
}

describe('reconnect leak check', () => {
  let origin: TestOrigin;
  let edge: EdgeProcess;
  let proxy: FaultProxy;
  let agent: Agent | undefined;
  before(async () => {
    origin = await startTestOrigin();
    edge = await startEdgeProcess(['--memory']);
    proxy = await startFaultProxy({ target: { host: '127.0.0.1', port: edge.tunnelPort } });
  });
  after(async () => {
    await agent?.shutdown('now');
    await proxy?.close();
    await killAll();
    await origin?.close();
  });

  it(`${CYCLES} reconnect cycles leave the agent's handles, timers, listeners and heap flat`, async (t) => {
    const quick = await requestQuickTunnel(edge.apiUrl);
    agent = await startTestAgent(
      { ...quick.credentials, edge: { ...quick.credentials.edge, port: proxy.port } },
      origin.url,
      { haConnections: 1, gracePeriodMs: 1000, backoff: { baseMs: 1, capMs: 5, healthyAfterMs: 60_000 } },
    );
    await agent.firstRegistration;
    const running = agent;
    const cycle = async (i: number) => {
      const accepted = proxy.accepted;
      proxy.resetAll();
      await waitFor(
        () => proxy.accepted > accepted && running.readyConnections === 1 && proxy.connections.length === 1,
        {
          timeoutMs: 10_000,
          intervalMs: 1,
          message: `the agent to register again (cycle ${i})`,
        },
      );
    };
    for (let i = 0; i < WARM_UP; i++) await cycle(i);
    const start = await footprint();
    const startedAt = performance.now();
    for (let i = WARM_UP; i < CYCLES; i++) await cycle(i);
    const end = await footprint();
    t.diagnostic(
      `${CYCLES - WARM_UP} cycles in ${(performance.now() - startedAt).toFixed(0)} ms; heap ${(start.heapUsed / 1048576).toFixed(1)} → ${(end.heapUsed / 1048576).toFixed(1)} MiB; resources ${JSON.stringify(end.resources)}`,
    );
    assert.deepEqual(end.resources, start.resources, 'the same handles and timers');
    assert.equal(end.processListeners, start.processListeners, 'no listener added to process');
    assert.ok(
      end.heapUsed - start.heapUsed < HEAP_SLACK_BYTES,
      `heap grew by ${((end.heapUsed - start.heapUsed) / 1024).toFixed(0)} KiB over ${CYCLES - WARM_UP} cycles`,
    );
  });
});
