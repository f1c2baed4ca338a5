/** How the CLI shows API answers to people: pure functions from JSON to text, no I/O. */
import type { AuditEntryJson, ConnectionJson, MemberJson, TunnelJson } from './api-client.ts';

/** Left-aligned columns, three spaces apart, no trailing spaces. */
export function formatTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    widths
      .map((w, i) => (cells[i] ?? '').padEnd(w))
      .join('   ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

/** Connections counted per PoP, as cloudflared shows them: `2xdev, 1xlhr` (PoPs in name order). */
export function connectionSummary(connections: readonly Pick<ConnectionJson, 'pop'>[]): string {
  const perPop = new Map<string, number>();
  for (const c of connections) perPop.set(c.pop, (perPop.get(c.pop) ?? 0) + 1);
  return [...perPop]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([pop, n]) => `${n}x${pop}`)
    .join(', ');
}

/** ISO 8601 in UTC to the second (`2026-01-01T12:00:00Z`); '-' for none. */
export function formatTime(time: string | number | null | undefined): string {
  if (time === null || time === undefined || time === '') return '-';
  const ms = typeof time === 'number' ? time : Date.parse(time);
  if (!Number.isFinite(ms)) return String(time);
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export function tunnelListText(tunnels: readonly TunnelJson[]): string {
  if (tunnels.length === 0) {
    return 'No tunnels were found. Create one with `warren tunnel create NAME`.';
  }
  return formatTable(
    ['ID', 'NAME', 'CREATED', 'CONNECTIONS'],
    tunnels.map((t) => [t.id, t.name, formatTime(t.created_at), connectionSummary(t.connections)]),
  );
}

export interface ConnectorRow {
  connectorId: string;
  /** When its first live connection opened. */
  created: string;
  architecture: string;
  version: string;
  originIp: string;
  /** Its connections per PoP, `2xdev`. */
  edge: string;
}

/** One row per connector (an agent process), its connections grouped; the oldest connector first. */
export function connectorRows(connections: readonly ConnectionJson[]): ConnectorRow[] {
  const groups = new Map<string, ConnectionJson[]>();
  for (const c of connections) {
    const key = c.connector_id ?? '';
    groups.set(key, [...(groups.get(key) ?? []), c]);
  }
  const rows = [...groups].map(([connectorId, conns]) => {
    const first = conns.reduce((a, b) => (Date.parse(b.opened_at) < Date.parse(a.opened_at) ? b : a));
    return {
      connectorId: connectorId || '-',
      created: first.opened_at,
      architecture: `${first.os}_${first.arch}`,
      version: first.client_version,
      originIp: first.origin_ip,
      edge: connectionSummary(conns),
    };
  });
  return rows.sort((a, b) => Date.parse(a.created) - Date.parse(b.created));
}

/** `LABEL:  value` lines with the values aligned. */
export function labelled(pairs: readonly (readonly [string, string])[]): string {
  const width = Math.max(0, ...pairs.map(([label]) => label.length + 1));
  return pairs.map(([label, value]) => `${`${label}:`.padEnd(width)}  ${value}`).join('\n');
}

export function tunnelInfoText(t: TunnelJson): string {
  const header = labelled([
    ['NAME', t.name],
    ['ID', t.id],
    ['CREATED', formatTime(t.created_at)],
    ...(t.deleted_at ? [['DELETED', formatTime(t.deleted_at)] as const] : []),
    ...(t.dns_cleanup_due_at
      ? [['DNS CLEANUP', `${formatTime(t.dns_cleanup_due_at)} (its automatic DNS routes go then)`] as const]
      : []),
  ]);
  if (t.connections.length === 0) {
    return `${header}\n\nTunnel ${t.name} has no active connection.`;
  }
  const table = formatTable(
    ['CONNECTOR ID', 'CREATED', 'ARCHITECTURE', 'VERSION', 'ORIGIN IP', 'EDGE'],
    connectorRows(t.connections).map((r) => [
      r.connectorId,
      formatTime(r.created),
      r.architecture,
      r.version,
      r.originIp,
      r.edge,
    ]),
  );
  return `${header}\n\n${table}`;
}

/** `key=value` pairs in the order the edge gave them; values with spaces are quoted. */
export function detailsText(details: AuditEntryJson['details']): string {
  return Object.entries(details)
    .filter(([, v]) => v !== null && v !== undefined && v !== '')
    .map(([k, v]) => {
      const s = String(v);
      return `${k}=${/[\s"]/.test(s) ? JSON.stringify(s) : s}`;
    })
    .join(' ');
}

export function auditText(entries: readonly AuditEntryJson[]): string {
  if (entries.length === 0) return 'No audit log entries match.';
  return formatTable(
    ['TIME', 'ACTION', 'ACTOR', 'TUNNEL', 'CONNECTION', 'POP', 'VERSION', 'DETAILS'],
    entries.map((e) => [
      formatTime(e.time),
      e.action,
      e.actor,
      e.tunnel_name ?? e.tunnel_id ?? '-',
      e.connection_id ?? '-',
      e.pop ?? '-',
      e.client_version ?? '-',
      detailsText(e.details),
    ]),
  );
}

export function membersText(members: readonly MemberJson[]): string {
  return formatTable(
    ['TOKEN ID', 'MEMBER', 'ROLE', 'ISSUED'],
    members.map((m) => [m.tokenId, m.member, m.role, formatTime(m.issuedAt)]),
  );
}
