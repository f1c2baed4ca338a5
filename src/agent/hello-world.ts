/**
 * The built-in hello-world origin (`--hello-world`, the `hello_world` ingress service), as
 * cloudflared has: a page that shows the request exactly as it reached the origin through
 * Warren, a WebSocket echo, a server-sent-events stream and a health check.
 *
 *   /        any method → an HTML page with the request line and every header in the order received
 *   /ws      WebSocket echo (text stays text, binary stays binary); a plain request gets 426
 *   /health  200 `ok`
 *   /sse     text/event-stream: `data: tick N` once a second, ten ticks, then the end
 *   else     404 page
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer } from 'ws';

export interface HelloWorldServer {
  /** Where the server can be reached, with a trailing slash. */
  url: string;
  port: number;
  /** Stops listening and ends every connection (keep-alive, SSE and WebSocket) now. Idempotent. */
  close(): Promise<void>;
}

export interface HelloWorldOptions {
  /** Listen address; `127.0.0.1` by default. */
  host?: string;
  /** Listen port; `0` (ephemeral) by default. */
  port?: number;
}

const SSE_TICKS = 10;
const SSE_INTERVAL_MS = 1000;
/** Headers the edge adds; the page points them out. */
const HIGHLIGHTED = new Set(['x-forwarded-for', 'x-forwarded-proto', 'warren-connecting-ip']);

export async function startHelloWorld(opts: HelloWorldOptions = {}): Promise<HelloWorldServer> {
  const host = opts.host ?? '127.0.0.1';
  const intervals = new Set<NodeJS.Timeout>();
  const upgradeSockets = new Set<Duplex>();

  const wss = new WebSocketServer({ noServer: true });
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    ws.on('error', () => ws.terminate());
  });

  const server = http.createServer({ keepAlive: true }, (req, res) => {
    // Bodies are not used by any route; read them so keep-alive connections stay usable.
    req.resume();
    req.on('error', () => {});
    const path = (req.url ?? '/').split('?', 1)[0];
    switch (path) {
      case '/':
        return sendText(res, 200, 'text/html; charset=utf-8', renderPage(req));
      case '/health':
        return sendText(res, 200, 'text/plain; charset=utf-8', 'ok');
      case '/sse':
        return startSse(res, req.method === 'HEAD', intervals);
      case '/ws':
        return sendText(res, 426, 'text/plain; charset=utf-8', 'This path expects a WebSocket.\n');
      default:
        return sendText(res, 404, 'text/html; charset=utf-8', renderNotFound(req));
    }
  });

  server.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    upgradeSockets.add(socket);
    socket.on('close', () => upgradeSockets.delete(socket));
    socket.on('error', () => socket.destroy());
    const path = (req.url ?? '/').split('?', 1)[0];
    if (path !== '/ws' || (req.headers.upgrade ?? '').toLowerCase() !== 'websocket') {
      socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });

  server.listen(opts.port ?? 0, host);
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.once('listening', () => {
      server.off('error', onError);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;

  let closing: Promise<void> | undefined;
  return {
    url: `http://${urlHost(host)}:${port}/`,
    port,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const interval of intervals) clearInterval(interval);
        intervals.clear();
        for (const ws of wss.clients) ws.terminate();
        wss.close();
        // Upgraded sockets are no longer the HTTP server's to close.
        for (const socket of upgradeSockets) socket.destroy();
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

function startSse(res: http.ServerResponse, headOnly: boolean, intervals: Set<NodeJS.Timeout>): void {
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    'x-accel-buffering': 'no',
  });
  if (headOnly) return void res.end();
  let tick = 1;
  res.write(`data: tick ${tick}\n\n`);
  const interval = setInterval(() => {
    tick++;
    res.write(`data: tick ${tick}\n\n`);
    if (tick >= SSE_TICKS) stop();
  }, SSE_INTERVAL_MS);
  intervals.add(interval);
  const stop = () => {
    clearInterval(interval);
    intervals.delete(interval);
    res.end();
  };
  res.on('close', () => {
    clearInterval(interval);
    intervals.delete(interval);
  });
}

function sendText(res: http.ServerResponse, status: number, contentType: string, text: string): void {
  const body = Buffer.from(text);
  res.writeHead(status, {
    'content-type': contentType,
    'content-length': body.length,
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
  });
  // node leaves the body out on its own for HEAD.
  res.end(body);
}

function urlHost(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::') return '[::1]';
  return host.includes(':') ? `[${host}]` : host;
}

function escapeHtml(s: string): string {
  let out = '';
  let last = 0;
  for (let i = 0; i < s.length; i++) {
    let rep: string;
    switch (s.charCodeAt(i)) {
      case 0x26:
        rep = '&amp;';
        break;
      case 0x3c:
        rep = '&lt;';
        break;
      case 0x3e:
        rep = '&gt;';
        break;
      case 0x22:
        rep = '&quot;';
        break;
      case 0x27:
        rep = '&#39;';
        break;
      default:
        continue;
    }
    out += s.slice(last, i) + rep;
    last = i + 1;
  }
  return last === 0 ? s : out + s.slice(last);
}

const STYLE = `
:root{color-scheme:light dark;--bg:#f4f1ea;--card:#fffdf8;--ink:#24201a;--muted:#6b6257;--line:#e4ddd0;
--accent:#b4541a;--hl:#fff1c2;--code:#f0ebe0}
@media (prefers-color-scheme:dark){:root{--bg:#16130f;--card:#201c17;--ink:#efe8dc;--muted:#a39887;
--line:#3a332a;--accent:#f08a4b;--hl:#4a3a12;--code:#2a251e}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:860px;margin:48px auto;padding:0 20px}
.card{background:var(--card);border:1px solid var(--line);border-radius:14px;padding:28px 32px;
box-shadow:0 1px 2px rgba(0,0,0,.04),0 8px 28px rgba(0,0,0,.06)}
h1{margin:0 0 6px;font-size:28px;letter-spacing:-.01em}
h1 .mark{color:var(--accent)}
h2{font-size:13px;text-transform:uppercase;letter-spacing:.08em;color:var(--muted);margin:28px 0 10px}
p.lead{margin:0;color:var(--muted)}
code,td,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
.line{background:var(--code);border-radius:8px;padding:10px 14px;overflow-x:auto;white-space:pre}
table{width:100%;border-collapse:collapse}
td{padding:6px 10px;border-top:1px solid var(--line);vertical-align:top;word-break:break-all}
td.n{width:34%;color:var(--muted);white-space:nowrap;word-break:normal}
tr.hl td{background:var(--hl)}
tr.hl td.n{color:var(--ink);font-weight:600}
.tag{display:inline-block;font:600 11px system-ui,sans-serif;color:var(--accent);margin-left:6px}
#ws{padding:10px 14px;border-radius:8px;background:var(--code)}
#ws.ok{border-left:3px solid #3a9b5c}#ws.bad{border-left:3px solid #c0392b}
footer{margin-top:18px;color:var(--muted);font-size:13px}
footer a{color:var(--accent)}
`;

// Plain string concatenation and textContent only: nothing the server echoes is evaluated.
const SCRIPT = `
(function(){
  var out = document.getElementById('ws');
  function show(text, cls){ out.textContent = text; out.className = 'mono ' + cls; }
  try {
    var url = (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/ws';
    var ws = new WebSocket(url);
    var sent = 'hello from your browser, ' + new Date().toISOString();
    ws.onopen = function(){ show('sent: ' + sent, ''); ws.send(sent); };
    ws.onmessage = function(e){ show('echoed back over ' + url + ': ' + e.data, 'ok'); ws.close(); };
    ws.onerror = function(){ show('could not open a WebSocket to ' + url, 'bad'); };
  } catch (e) { show('WebSocket failed: ' + e, 'bad'); }
})();
`;

function renderPage(req: http.IncomingMessage): string {
  const raw = req.rawHeaders;
  let rows = '';
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!;
    const highlighted = HIGHLIGHTED.has(name.toLowerCase());
    rows +=
      `<tr${highlighted ? ' class="hl"' : ''}><td class="n">${escapeHtml(name)}` +
      `${highlighted ? '<span class="tag">added by Warren</span>' : ''}</td>` +
      `<td>${escapeHtml(raw[i + 1]!)}</td></tr>\n`;
  }
  const requestLine = `${req.method ?? ''} ${req.url ?? ''} HTTP/${req.httpVersion}`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Warren — hello world</title>
<style>${STYLE}</style>
</head>
<body>
<main>
<div class="card">
<h1><span class="mark">✓</span> Hello from the origin</h1>
<p class="lead">This request reached the origin through a Warren tunnel. Below is exactly what the origin received.</p>
<h2>Request</h2>
<div class="line mono">${escapeHtml(requestLine)}</div>
<h2>Headers, in the order received (${raw.length / 2})</h2>
<table>
${rows}</table>
<h2>WebSocket</h2>
<div id="ws" class="mono">opening a WebSocket to /ws…</div>
</div>
<footer>Warren hello-world origin · <a href="/sse">/sse</a> server-sent events · <a href="/health">/health</a></footer>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;
}

function renderNotFound(req: http.IncomingMessage): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Warren — not found</title>
<style>${STYLE}</style>
</head>
<body>
<main>
<div class="card">
<h1>404 · Not found</h1>
<p class="lead">The hello-world origin has nothing at <code>${escapeHtml(req.url ?? '')}</code>.</p>
<footer><a href="/">Back to the hello-world page</a></footer>
</div>
</main>
</body>
</html>
`;
}
