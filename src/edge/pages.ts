/** The pages the edge shows visitors when it cannot give them the origin's answer. */

const escapeHtml = (s: string) =>
  s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

function page(status: number, title: string, body: string, code: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${status} ${escapeHtml(title)} · Warren</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}
h1{font-size:1.6rem}code{background:#f3f3f3;padding:.1rem .3rem;border-radius:3px}.muted{color:#777}</style></head>
<body><h1>${status} · ${escapeHtml(title)}</h1>${body}
<p class="muted">Error code <code>${escapeHtml(code)}</code> · served by the Warren edge</p></body></html>
`;
}

export interface ErrorPage {
  status: number;
  code: string;
  html: string;
}

export function noTunnelPage(host: string): ErrorPage {
  return {
    status: 530,
    code: 'no_tunnel',
    html: page(
      530,
      'No tunnel is serving this host',
      `<p>The hostname <code>${escapeHtml(host)}</code> has no live Warren tunnel right now.</p>
<p>If you run this site, start its agent (<code>warren tunnel run</code>) and check that it reports a registered connection.</p>`,
      'no_tunnel',
    ),
  };
}

export function originErrorPage(host: string, code: string, message: string): ErrorPage {
  const status = code === 'origin_timeout' ? 504 : 502;
  return {
    status,
    code,
    html: page(
      status,
      'The origin did not answer',
      `<p>The tunnel for <code>${escapeHtml(host)}</code> is up, but its agent could not get an answer from the origin server: ${escapeHtml(message)}.</p>
<p>If you run this site, check that the service the agent points at is running and reachable from the agent's machine.</p>`,
      code,
    ),
  };
}

export function edgeErrorPage(status: number, title: string, message: string, code: string): ErrorPage {
  return { status, code, html: page(status, title, `<p>${escapeHtml(message)}</p>`, code) };
}
