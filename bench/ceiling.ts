/**
 * What any two-process tunnel written in Node can reach on this machine, to put Warren's figures and
 * the targets in proportion: the bench's origin behind a pair of bare relays (an "edge" that takes
 * visitor connections and an "agent" that connects to the origin), each a separate Node process that
 * only `.pipe()`s bytes — no HTTP parsing, no multiplexing: one relay connection per visitor
 * connection. Once with plain TCP between the relays, once with TLS 1.3 (Warren's tunnel is TLS).
 *
 *   node --import tsx bench/ceiling.ts [--duration S]
 *
 * Prints tiny-GET req/s and CPU µs/request (c=64 and c=256), 100 MiB download/upload MB/s with the
 * relays' CPU, and the WebSocket round trip, each beside the direct figure.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { createEdgeTls } from '../src/edge/ca.ts';
import {
  BenchError,
  type BulkFigures,
  cleanupSync,
  curlBulk,
  ensureWrk,
  fmt,
  machine,
  markStopping,
  ROOT,
  type Service,
  startService,
  stopService,
  tempPaths,
  type WrkFigures,
  type WsFigures,
  writeUploadFile,
  wrk,
  wsRoundTrips,
} from './lib.ts';

const SELF = path.join(ROOT, 'bench/ceiling.ts');

/** `ceiling.ts relay edge|agent tls|plain TARGET_PORT CERT_DIR`: one relay; prints `relay: PORT`. */
function relay(role: string, mode: string, targetPort: number, certDir: string): void {
  const certs =
    mode === 'tls' ? JSON.parse(fs.readFileSync(path.join(certDir, 'tls.json'), 'utf8')) : undefined;
  const join = (a: net.Socket, b: net.Socket) => {
    a.pipe(b);
    b.pipe(a);
    a.on('error', () => b.destroy());
    b.on('error', () => a.destroy());
    a.on('close', () => b.destroy());
    b.on('close', () => a.destroy());
  };
  let server: net.Server;
  if (role === 'agent') {
    const onConnection = (s: net.Socket) => {
      s.setNoDelay(true);
      const o = net.connect(targetPort, '127.0.0.1');
      o.setNoDelay(true);
      join(s, o);
    };
    server = certs
      ? tls.createServer(
          { key: certs.serverKeyPem, cert: certs.serverCertPem, minVersion: 'TLSv1.3' },
          onConnection,
        )
      : net.createServer(onConnection);
  } else {
    server = net.createServer((s) => {
      s.setNoDelay(true);
      const o = certs
        ? tls.connect({
            port: targetPort,
            host: '127.0.0.1',
            servername: certs.tunnelHostname,
            ca: certs.caCertPem,
            minVersion: 'TLSv1.3',
          })
        : net.connect(targetPort, '127.0.0.1');
      o.setNoDelay(true);
      join(s, o);
    });
  }
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write(`relay: ${(server.address() as net.AddressInfo).port}\n`);
  });
  process.stdin.resume();
  process.stdin.once('end', () => process.exit(0));
}

interface Row {
  label: string;
  tiny: Record<number, WrkFigures>;
  download: BulkFigures;
  upload: BulkFigures;
  ws: WsFigures;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === 'relay') return relay(argv[1]!, argv[2]!, Number(argv[3]), argv[4]!);
  const di = argv.indexOf('--duration');
  const durationS = di === -1 ? 5 : Number(argv[di + 1]);
  if (!Number.isInteger(durationS) || durationS < 1) throw new BenchError('--duration takes whole seconds');
  await ensureWrk();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'warren-ceiling-'));
  tempPaths.push(tmp);
  fs.writeFileSync(
    path.join(tmp, 'tls.json'),
    JSON.stringify(await createEdgeTls('tunnel.ceiling.localhost')),
  );
  const uploadFile = path.join(tmp, 'upload.bin');
  writeUploadFile(uploadFile);

  const node = (script: string, ...args: string[]) => ['--import', 'tsx', script, ...args];
  const { service: origin, match: om } = await startService(
    'origin',
    node(path.join(ROOT, 'bench/origin.ts')),
    /origin: http:\/\/127\.0\.0\.1:(\d+)/,
  );
  const services: Service[] = [origin];
  const paths: { label: string; port: number; relays: Service[] }[] = [
    { label: 'direct', port: Number(om[1]), relays: [] },
  ];
  for (const mode of ['plain', 'tls']) {
    const { service: agent, match: am } = await startService(
      'agent',
      node(SELF, 'relay', 'agent', mode, om[1]!, tmp),
      /relay: (\d+)/,
    );
    const { service: edge, match: em } = await startService(
      'edge',
      node(SELF, 'relay', 'edge', mode, am[1]!, tmp),
      /relay: (\d+)/,
    );
    services.push(agent, edge);
    paths.push({ label: `bare ${mode} relay pair`, port: Number(em[1]), relays: [edge, agent] });
  }

  const rows: Row[] = [];
  for (const p of paths) {
    const base = `http://127.0.0.1:${p.port}`;
    process.stdout.write(`ceiling: ${p.label}\n`);
    const watch = [origin, ...p.relays];
    await wrk(`${base}/tiny`, 256, 2, undefined, []);
    const tiny: Record<number, WrkFigures> = {};
    for (const c of [64, 256]) tiny[c] = await wrk(`${base}/tiny`, c, durationS, undefined, watch);
    const download = await curlBulk('download', base, undefined, uploadFile, watch);
    const upload = await curlBulk('upload', base, undefined, uploadFile, watch);
    const ws = await wsRoundTrips(`ws://127.0.0.1:${p.port}/ws`, undefined);
    rows.push({ label: p.label, tiny, download, upload, ws });
  }
  markStopping();
  for (const s of services) await stopService(s, 'SIGTERM', 3000);

  const relayCpu = (cpu: Record<string, number>, unit: (v: number) => string) =>
    cpu.edge === undefined ? unit(cpu.origin ?? Number.NaN) : unit((cpu.edge ?? 0) + (cpu.agent ?? 0));
  const direct = rows[0]!;
  const table: string[][] = [['', ...rows.map((r) => r.label)]];
  for (const c of [64, 256]) {
    table.push([
      `tiny GET c=${c} req/s`,
      ...rows.map((r) => `${fmt.n(r.tiny[c]!.rps)} (${fmt.ratio(r.tiny[c]!.rps, direct.tiny[c]!.rps)})`),
    ]);
    table.push([
      `  CPU/request (origin | relays)`,
      ...rows.map((r) => relayCpu(r.tiny[c]!.cpuPerReq, fmt.us)),
    ]);
  }
  for (const kind of ['download', 'upload'] as const) {
    table.push([
      `100 MiB ${kind}`,
      ...rows.map((r) => `${fmt.mb(r[kind].mbps)} (${fmt.ratio(r[kind].mbps, direct[kind].mbps)})`),
    ]);
    table.push([`  CPU (origin | relays)`, ...rows.map((r) => relayCpu(r[kind].cpuMs, fmt.ms))]);
  }
  table.push(['WebSocket round trip p50', ...rows.map((r) => fmt.us(r.ws.p50Us))]);
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  process.stdout.write('\n');
  for (const row of table)
    process.stdout.write(
      `${row.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('   ')}\n`,
    );
  const problems = rows.flatMap((r) => [
    ...Object.values(r.tiny).flatMap((t) => t.problems),
    ...r.download.problems,
    ...r.upload.problems,
    ...r.ws.problems,
  ]);
  if (problems.length) process.stdout.write(`\nProblems:\n${problems.map((p) => `  - ${p}`).join('\n')}\n`);
  const others = rows.flatMap((r) => Object.values(r.tiny).map((t) => t.otherCores));
  const m = machine();
  process.stdout.write(
    `\n${m.cpu}, ${m.cores} cores, Node ${m.node}; other processes kept up to ${Math.max(...others).toFixed(2)} cores busy.\n`,
  );
}

main().then(
  () => {
    if (process.argv[2] !== 'relay') {
      cleanupSync();
      process.exit(0);
    }
  },
  (err: unknown) => {
    process.stderr.write(
      `ceiling: ${err instanceof BenchError ? err.message : ((err as Error).stack ?? String(err))}\n`,
    );
    cleanupSync();
    process.exit(1);
  },
);
