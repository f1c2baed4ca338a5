/**
 * Bulk transfers through an edge and an agent running as separate `warren` processes (the visitor is
 * this process, and so is the test origin, on a thread of its own): a 1 GiB download, a 1 GiB upload
 * and a 256 MiB full-duplex echo, each checked by SHA-256, in bounded memory (peak RSS of each
 * process), and with a tiny request on the same tunnel connection answered quickly while the
 * download runs.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import { after, afterEach, before, describe, it, type TestContext } from 'node:test';
import { request, requestStream } from '../support/http.ts';
import { deterministicBytes, sha256OfDeterministic } from '../support/origin.ts';
import {
  type EdgeProcess,
  killAll,
  startEdgeProcess,
  startTestOriginInWorker,
  startTunnelProcess,
  type TunnelProcess,
  type WorkerOrigin,
} from '../support/processes.ts';
import { withDeadline } from '../support/wait.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const SEED = 29;
/** Peak resident set size allowed to the edge and to the agent (decimal megabytes). */
const RSS_LIMIT_BYTES = 200 * 1000 * 1000;
const TINY_GET_LIMIT_MS = 100;
const TRANSFER_TIMEOUT_MS = 240_000;

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;

describe('large transfers (edge and agent as processes)', () => {
  let origin: WorkerOrigin;
  let edge: EdgeProcess;
  let agent: TunnelProcess;
  let expectedGiB: string | undefined;
  /** SHA-256 of the 1 GiB that /bytes serves and the upload sends (computed once, when first needed). */
  const expected = () => {
    expectedGiB ??= sha256OfDeterministic(GiB, SEED);
    return expectedGiB;
  };

  before(async () => {
    origin = await startTestOriginInWorker();
    edge = await startEdgeProcess(['--memory', '--loglevel', 'warn']);
    // One connection, so the tiny GET shares the warren/1 session with the bulk download.
    agent = await startTunnelProcess(origin.url, edge.apiUrl, [
      '--ha-connections',
      '1',
      '--loglevel',
      'warn',
    ]);
  });
  afterEach(async (ctx) => {
    const t = ctx as TestContext;
    // VmHWM only grows: this says which transfer set each peak.
    if (edge?.running && agent?.running) {
      const [e, a] = await Promise.all([edge.peakRssBytes(), agent.peakRssBytes()]);
      t.diagnostic(`peak RSS so far: edge ${mb(e)}, agent ${mb(a)}`);
    }
  });
  after(async () => {
    await killAll();
    await origin?.close();
  });

  it('a 1 GiB streamed download arrives intact; a tiny GET on the same connection meanwhile takes < 100 ms', {
    timeout: TRANSFER_TIMEOUT_MS,
  }, async (t) => {
    const sha = expected();
    const probeAgent = new http.Agent({ keepAlive: true, maxSockets: 2 });
    const tinyGet = () =>
      request({ port: edge.visitorPort, host: agent.hostname, path: '/status/200', agent: probeAgent });
    try {
      // Warm the path first (visitor connections, code paths, and two idle connections in the agent's
      // origin pool, so that one is still idle when the download takes the other): the measurement
      // below is about sharing the tunnel connection with a bulk transfer, not about a cold start.
      for (let i = 0; i < 3; i++) {
        const warm = await Promise.all([tinyGet(), tinyGet()]);
        assert.deepEqual(
          warm.map((r) => r.status),
          [200, 200],
        );
      }

      const startedAt = performance.now();
      const res = await requestStream({
        port: edge.visitorPort,
        host: agent.hostname,
        path: `/bytes?n=${GiB}&seed=${SEED}`,
      });
      assert.equal(res.statusCode, 200);
      assert.equal(res.headers['content-length'], String(GiB));

      const hash = createHash('sha256');
      let received = 0;
      let probe: Promise<{ ms: number; status: number; receivedWhenDone: number }> | undefined;
      const ended = new Promise<void>((resolve, reject) => {
        // A 'data' handler, not `for await`: the download keeps flowing while the probe is out.
        res.on('data', (chunk: Buffer) => {
          received += chunk.length;
          hash.update(chunk);
          if (probe === undefined && received >= 100 * MiB) {
            const sentAt = performance.now();
            probe = tinyGet().then((r) => ({
              ms: performance.now() - sentAt,
              status: r.status,
              receivedWhenDone: received,
            }));
          }
        });
        res.once('end', resolve);
        res.once('error', reject);
        res.once('aborted', () => reject(new Error(`download aborted after ${received} bytes`)));
      });
      await withDeadline(ended, TRANSFER_TIMEOUT_MS - 30_000, '1 GiB download');
      const seconds = (performance.now() - startedAt) / 1000;
      t.diagnostic(`download: ${(GiB / MiB / seconds).toFixed(0)} MiB/s`);
      assert.equal(received, GiB);
      assert.equal(hash.digest('hex'), sha);

      assert.ok(probe, 'the tiny GET was sent');
      const tiny = await probe;
      t.diagnostic(
        `tiny GET at 100 MiB: ${tiny.ms.toFixed(1)} ms (download at ${(tiny.receivedWhenDone / MiB).toFixed(0)} MiB when it finished)`,
      );
      assert.equal(tiny.status, 200);
      assert.ok(tiny.receivedWhenDone < GiB, 'the tiny GET finished while the download was still running');
      assert.ok(
        tiny.ms < TINY_GET_LIMIT_MS,
        `tiny GET took ${tiny.ms.toFixed(1)} ms during the download (limit ${TINY_GET_LIMIT_MS} ms)`,
      );
    } finally {
      probeAgent.destroy();
    }
  });

  it('a 1 GiB streamed upload arrives intact', { timeout: TRANSFER_TIMEOUT_MS }, async (t) => {
    const sha = expected();
    const startedAt = performance.now();
    const res = await request({
      port: edge.visitorPort,
      host: agent.hostname,
      method: 'POST',
      path: '/upload',
      body: deterministicBytes(GiB, SEED),
      timeoutMs: TRANSFER_TIMEOUT_MS - 30_000,
    });
    const seconds = (performance.now() - startedAt) / 1000;
    t.diagnostic(`upload: ${(GiB / MiB / seconds).toFixed(0)} MiB/s`);
    assert.equal(res.status, 200, res.body.toString());
    assert.deepEqual(JSON.parse(res.body.toString()), { bytes: GiB, sha256: sha });
  });

  it('a 256 MiB full-duplex echo streams back while the upload is still going', {
    timeout: TRANSFER_TIMEOUT_MS,
  }, async (t) => {
    const total = 256 * MiB;
    const sentHash = createHash('sha256');
    let generated = 0;
    function* body(): Generator<Buffer> {
      for (const chunk of deterministicBytes(total, SEED + 1)) {
        generated += chunk.length;
        sentHash.update(chunk);
        yield chunk;
      }
    }
    const startedAt = performance.now();
    const res = await requestStream({
      port: edge.visitorPort,
      host: agent.hostname,
      method: 'POST',
      path: '/duplex',
      body: body(),
      timeoutMs: 30_000,
    });
    assert.equal(res.statusCode, 200);
    const generatedAtHead = generated;
    const echoHash = createHash('sha256');
    let echoed = 0;
    let generatedAtFirstByte = -1;
    const ended = new Promise<void>((resolve, reject) => {
      res.on('data', (chunk: Buffer) => {
        if (generatedAtFirstByte < 0) generatedAtFirstByte = generated;
        echoed += chunk.length;
        echoHash.update(chunk);
      });
      res.once('end', resolve);
      res.once('error', reject);
      res.once('aborted', () => reject(new Error(`duplex aborted after ${echoed} bytes`)));
    });
    await withDeadline(ended, TRANSFER_TIMEOUT_MS - 30_000, '256 MiB duplex echo');
    const seconds = (performance.now() - startedAt) / 1000;
    t.diagnostic(
      `duplex: ${(total / MiB / seconds).toFixed(0)} MiB/s each way; head after ${(generatedAtHead / MiB).toFixed(1)} MiB sent, ` +
        `first echoed byte after ${(generatedAtFirstByte / MiB).toFixed(1)} MiB`,
    );
    assert.equal(generated, total);
    assert.equal(echoed, total);
    assert.equal(echoHash.digest('hex'), sentHash.digest('hex'));
    // The body generator is pulled only as fast as the upload drains, so "not all generated" means the
    // upload was still going when the echo started.
    assert.ok(generatedAtHead < total, 'the response head arrived before the upload finished');
    assert.ok(
      generatedAtFirstByte >= 0 && generatedAtFirstByte < total,
      'echoed bytes arrived before the upload finished',
    );
  });

  it('peak RSS (VmHWM) of the edge and of the agent stays under 200 MB', async (t) => {
    const [edgePeak, agentPeak] = await Promise.all([edge.peakRssBytes(), agent.peakRssBytes()]);
    t.diagnostic(`peak RSS: edge ${mb(edgePeak)}, agent ${mb(agentPeak)}`);
    assert.ok(edge.running && agent.running, 'both processes are still up');
    assert.ok(edgePeak < RSS_LIMIT_BYTES, `edge peak RSS ${mb(edgePeak)}`);
    assert.ok(agentPeak < RSS_LIMIT_BYTES, `agent peak RSS ${mb(agentPeak)}`);
  });
});
