/**
 * The benchmark's origin, run as its own process so its CPU is not the bench's or the tunnel's:
 *   GET  /tiny        → 200, 2-byte body with Content-Length
 *   GET  /bytes?n=N   → N bytes (Content-Length), streamed from one reused 64 KiB buffer with backpressure
 *   POST /upload      → consumes the body, answers the byte count (text)
 *   /ws               → WebSocket echo (binary stays binary, text stays text)
 * Listens on 127.0.0.1 with an ephemeral port (or argv[2]) and prints `origin: http://127.0.0.1:PORT`.
 * Exits when its stdin closes, so it never outlives the bench.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';

const CHUNK = Buffer.alloc(64 * 1024, 0x61);
const TINY = Buffer.from('ok');

function sendBytes(res: http.ServerResponse, n: number): void {
  res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': n });
  let left = n;
  const pump = () => {
    while (left > 0) {
      const size = Math.min(left, CHUNK.length);
      left -= size;
      const ok = res.write(size === CHUNK.length ? CHUNK : CHUNK.subarray(0, size));
      if (!ok && left > 0) {
        res.once('drain', pump);
        return;
      }
    }
    res.end();
  };
  pump();
}

const server = http.createServer((req, res) => {
  const url = req.url ?? '/';
  if (req.method === 'GET' && url === '/tiny') {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': TINY.length });
    res.end(TINY);
    return;
  }
  if (req.method === 'GET' && url.startsWith('/bytes')) {
    const n = Number(new URL(url, 'http://x').searchParams.get('n') ?? '0');
    if (!Number.isSafeInteger(n) || n < 0) {
      res.writeHead(400, { 'Content-Length': 0 });
      res.end();
      return;
    }
    sendBytes(res, n);
    return;
  }
  if (req.method === 'POST' && url === '/upload') {
    let bytes = 0;
    req.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
    });
    req.once('end', () => {
      const body = String(bytes);
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    });
    return;
  }
  req.resume();
  res.writeHead(404, { 'Content-Length': 0 });
  res.end();
});

const wss = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) => {
  if (req.url !== '/ws') {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    ws.on('error', () => ws.terminate());
  });
});

server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  const { port } = server.address() as AddressInfo;
  process.stdout.write(`origin: http://127.0.0.1:${port}\n`);
});

process.stdin.resume();
process.stdin.once('end', () => process.exit(0));
process.stdin.once('error', () => process.exit(0));
process.once('SIGTERM', () => process.exit(0));
process.once('SIGINT', () => process.exit(0));
