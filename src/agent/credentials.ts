/**
 * What a user keeps on disk to run tunnels, shared by the CLI and the agent:
 *
 * - `cert.pem`, written by `warren login` (like cloudflared's): the origin key and certificate, the
 *   edge CA, and a `WARREN TUNNEL TOKEN` block that lets the CLI manage tunnels for the zone.
 * - `<tunnel-id>.json`, written by `warren tunnel create`: what one tunnel needs to connect.
 * - the tunnel token, the same as one opaque string for `tunnel run --token`.
 *
 * Parsing validates everything, so a damaged file fails here with the file's name rather than later
 * as a TLS or registration error. Messages never quote a secret or a token.
 */
import { createPrivateKey, type KeyObject, randomBytes, X509Certificate } from 'node:crypto';
import { link, lstat, mkdir, open, rename, stat, unlink } from 'node:fs/promises';
import { isIP } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { WarrenError } from '../shared/errors.ts';
import type { TunnelCredentials } from './tunnel-connection.ts';

/** The contents of `cert.pem`. PEM strings are normalised: 64-column base64, trailing newline. */
export interface OriginCert {
  /** PKCS#8 `PRIVATE KEY` PEM of the origin certificate. */
  keyPem: string;
  certPem: string;
  /** The edge CA certificate, labelled `CERTIFICATE` (in the file it is `WARREN EDGE CA`). */
  edgeCaPem: string;
  accountId: string;
  zoneId: string;
  zone: string;
  apiToken: string;
  /** The edge's control API, `http(s)://host:port`. */
  apiUrl: string;
}

/** A named tunnel's credentials: what the agent dials with, and whose tunnel it is. */
export interface NamedTunnelCredentials extends TunnelCredentials {
  accountId: string;
  tunnelName?: string | undefined;
}

/** `<tunnel-id>.json`, with cloudflared's field names. */
export type CredentialsFileFields = {
  AccountTag: string;
  TunnelID: string;
  TunnelName?: string;
  /** Base64 of the 32-byte secret. */
  TunnelSecret: string;
  /** `host:port` of the edge's tunnel listener (`[v6]:port` for IPv6). */
  Endpoint: string;
  /** The name the edge's certificate is checked against. */
  ServerName: string;
  EdgeCA: string;
};

const SECRET_BYTES = 32;
const LABEL = {
  key: 'PRIVATE KEY',
  cert: 'CERTIFICATE',
  edgeCa: 'WARREN EDGE CA',
  token: 'WARREN TUNNEL TOKEN',
} as const;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const HOSTNAME_RE =
  /^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$/i;
const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** A reason something is malformed; the public functions turn it into a `WarrenError` with context. */
class Malformed extends Error {}

function malformed(message: string): never {
  throw new Malformed(message);
}

/** Runs `fn`, turning a `Malformed` into a `WarrenError` whose message `wrap` builds from the reason. */
function withContext<T>(
  code: 'bad_config' | 'bad_request',
  wrap: (reason: string) => string,
  fn: () => T,
): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof Malformed) throw new WarrenError(code, wrap(err.message), { cause: err });
    throw err;
  }
}

// ---- PEM ----

interface PemBlock {
  label: string;
  der: Buffer;
}

// Kept apart from the edge's PEM helper so the agent does not load the edge's X.509 library.
function pemBlock(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64.trimEnd()}\n-----END ${label}-----\n`;
}

/** Text outside the blocks is ignored, as RFC 7468 allows; an unterminated block is an error. */
function readPemBlocks(text: string): PemBlock[] {
  const blocks: PemBlock[] = [];
  const re = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END ([A-Z0-9 ]+)-----/g;
  for (const m of text.matchAll(re)) {
    const [, label = '', body = '', endLabel] = m;
    if (label !== endLabel) malformed(`the ${label} block ends with END ${endLabel}`);
    const b64 = body.replace(/\s+/g, '');
    if (b64 === '' || !BASE64_RE.test(b64)) malformed(`the ${label} block is not valid base64`);
    blocks.push({ label, der: Buffer.from(b64, 'base64') });
  }
  const begins = text.match(/-----BEGIN /g)?.length ?? 0;
  if (begins !== blocks.length) malformed('a PEM block has no END line, so the file may be truncated');
  return blocks;
}

function onlyBlock(blocks: PemBlock[], label: string, where = 'it'): Buffer {
  const found = blocks.filter((b) => b.label === label);
  if (found.length === 0) malformed(`${where} has no ${label} block`);
  if (found.length > 1) malformed(`${where} has more than one ${label} block`);
  return found[0]!.der;
}

function parseCertificate(der: Buffer, what: string): X509Certificate {
  try {
    return new X509Certificate(der);
  } catch {
    return malformed(`${what} is not a valid X.509 certificate`);
  }
}

/** One `CERTIFICATE` PEM block that parses; returned normalised. */
function certificatePem(pem: unknown, what: string): string {
  if (typeof pem !== 'string') malformed(`${what} is missing or not a string`);
  const der = onlyBlock(readPemBlocks(pem), LABEL.cert, what);
  parseCertificate(der, what);
  return pemBlock(LABEL.cert, der);
}

// ---- Field checks ----

function text(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.trim() === '') malformed(`${what} is missing or empty`);
  return value;
}

function hostname(value: unknown, what: string): string {
  const s = text(value, what);
  if (!HOSTNAME_RE.test(s)) malformed(`${what} "${s}" is not a valid hostname`);
  return s.toLowerCase();
}

function httpUrl(value: unknown, what: string): string {
  const s = text(value, what);
  let url: URL;
  try {
    url = new URL(s);
  } catch {
    return malformed(`${what} "${s}" is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    malformed(`${what} "${s}" is not an http(s) URL`);
  return s;
}

function tunnelId(value: unknown, what: string): string {
  const s = text(value, what);
  if (!UUID_RE.test(s)) malformed(`${what} "${s}" is not a UUID`);
  return s.toLowerCase();
}

function secret(value: unknown, what: string): Buffer {
  const s = text(value, what);
  if (!BASE64_RE.test(s)) malformed(`${what} is not base64`);
  const bytes = Buffer.from(s, 'base64');
  if (bytes.length !== SECRET_BYTES) malformed(`${what} must be ${SECRET_BYTES} bytes, not ${bytes.length}`);
  return bytes;
}

function endpoint(value: unknown, what: string): { host: string; port: number } {
  const s = text(value, what);
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(s);
  if (!m) malformed(`${what} "${s}" is not host:port`);
  const [, v6, name, portText] = m;
  const host = v6 ?? name ?? '';
  if (v6 !== undefined ? isIP(v6) !== 6 : isIP(host) === 0 && !HOSTNAME_RE.test(host)) {
    malformed(`${what} "${s}" has an invalid host`);
  }
  const port = Number(portText);
  if (port < 1 || port > 65535) malformed(`${what} "${s}" has a port outside 1-65535`);
  return { host: host.toLowerCase(), port };
}

function formatEndpoint(edge: { host: string; port: number }): string {
  return `${edge.host.includes(':') ? `[${edge.host}]` : edge.host}:${edge.port}`;
}

function record(value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    malformed(`${what} is not a JSON object`);
  return value as Record<string, unknown>;
}

function parseJson(json: string, what: string): unknown {
  try {
    return JSON.parse(json);
  } catch {
    return malformed(`${what} is not valid JSON`);
  }
}

/** The checks every form of tunnel credentials goes through; `names` says how each field is called there. */
function tunnelCredentials(
  raw: {
    account: unknown;
    tunnelId: unknown;
    tunnelName?: unknown;
    secret: unknown;
    endpoint: unknown;
    serverName: unknown;
    edgeCa: unknown;
  },
  names: Record<keyof typeof raw, string>,
): NamedTunnelCredentials {
  const creds: NamedTunnelCredentials = {
    accountId: text(raw.account, names.account),
    tunnelId: tunnelId(raw.tunnelId, names.tunnelId),
    secret: secret(raw.secret, names.secret),
    edge: {
      ...endpoint(raw.endpoint, names.endpoint),
      serverName: hostname(raw.serverName, names.serverName),
    },
    edgeCaPem: certificatePem(raw.edgeCa, names.edgeCa),
  };
  if (raw.tunnelName !== undefined) creds.tunnelName = text(raw.tunnelName, names.tunnelName);
  return creds;
}

// ---- cert.pem ----

interface TokenBlock {
  accountId: string;
  zoneId: string;
  zone: string;
  apiToken: string;
  apiUrl: string;
}

function tokenBlock(value: unknown): TokenBlock {
  const o = record(value, `the ${LABEL.token} block`);
  return {
    accountId: text(o.accountId, 'accountId'),
    zoneId: text(o.zoneId, 'zoneId'),
    zone: hostname(o.zone, 'zone'),
    apiToken: text(o.apiToken, 'apiToken'),
    apiUrl: httpUrl(o.apiUrl, 'apiUrl'),
  };
}

function decodeOriginCert(blocks: PemBlock[]): OriginCert {
  const keyDer = onlyBlock(blocks, LABEL.key);
  const certDer = onlyBlock(blocks, LABEL.cert);
  const edgeCaDer = onlyBlock(blocks, LABEL.edgeCa);
  const tokenJson = onlyBlock(blocks, LABEL.token).toString('utf8');
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: keyDer, format: 'der', type: 'pkcs8' });
  } catch {
    return malformed(`the ${LABEL.key} block is not a PKCS#8 private key`);
  }
  const cert = parseCertificate(certDer, `the ${LABEL.cert} block`);
  let matches = false;
  try {
    matches = cert.checkPrivateKey(key);
  } catch {
    // A key of another type than the certificate's does not match either.
  }
  if (!matches) malformed(`the private key does not belong to the certificate`);
  parseCertificate(edgeCaDer, `the ${LABEL.edgeCa} block`);
  return {
    keyPem: pemBlock(LABEL.key, keyDer),
    certPem: pemBlock(LABEL.cert, certDer),
    edgeCaPem: pemBlock(LABEL.cert, edgeCaDer),
    ...tokenBlock(parseJson(tokenJson, `the ${LABEL.token} block`)),
  };
}

/**
 * `cert.pem`: `PRIVATE KEY`, `CERTIFICATE`, `WARREN EDGE CA` (the edge CA, relabelled so tools that
 * take the first certificate get the origin's), `WARREN TUNNEL TOKEN` (base64 of the JSON
 * `{ accountId, zoneId, zone, apiToken, apiUrl }`). Throws `bad_request` when a part is malformed.
 */
export function formatOriginCert(parts: OriginCert): string {
  return withContext(
    'bad_request',
    (reason) => `cannot write an origin certificate: ${reason}`,
    () => {
      const token: TokenBlock = tokenBlock({
        accountId: parts.accountId,
        zoneId: parts.zoneId,
        zone: parts.zone,
        apiToken: parts.apiToken,
        apiUrl: parts.apiUrl,
      });
      const blocks: PemBlock[] = [
        { label: LABEL.key, der: onlyBlock(readPemBlocks(parts.keyPem), LABEL.key, 'keyPem') },
        { label: LABEL.cert, der: onlyBlock(readPemBlocks(parts.certPem), LABEL.cert, 'certPem') },
        { label: LABEL.edgeCa, der: onlyBlock(readPemBlocks(parts.edgeCaPem), LABEL.cert, 'edgeCaPem') },
        { label: LABEL.token, der: Buffer.from(JSON.stringify(token)) },
      ];
      // Everything written must read back: the same checks as `parseOriginCert`.
      decodeOriginCert(blocks);
      return blocks.map((b) => pemBlock(b.label, b.der)).join('');
    },
  );
}

/** Reads `cert.pem`; `file` names it in errors (`bad_config`), which say to run `warren login` again. */
export function parseOriginCert(text: string, file: string): OriginCert {
  return withContext(
    'bad_config',
    (reason) => `${file} is not a valid Warren origin certificate: ${reason}. Run \`warren login\` again`,
    () => decodeOriginCert(readPemBlocks(text)),
  );
}

// ---- <tunnel-id>.json ----

const FILE_NAMES = {
  account: 'AccountTag',
  tunnelId: 'TunnelID',
  tunnelName: 'TunnelName',
  secret: 'TunnelSecret',
  endpoint: 'Endpoint',
  serverName: 'ServerName',
  edgeCa: 'EdgeCA',
};

function fileFieldsOf(creds: NamedTunnelCredentials): CredentialsFileFields {
  const fields: CredentialsFileFields = {
    AccountTag: creds.accountId,
    TunnelID: creds.tunnelId,
    TunnelSecret: Buffer.from(creds.secret).toString('base64'),
    Endpoint: formatEndpoint(creds.edge),
    ServerName: creds.edge.serverName,
    EdgeCA: creds.edgeCaPem,
  };
  if (creds.tunnelName !== undefined) fields.TunnelName = creds.tunnelName;
  return fields;
}

function credentialsFromFields(value: unknown): NamedTunnelCredentials {
  const o = record(value, 'its content');
  return tunnelCredentials(
    {
      account: o.AccountTag,
      tunnelId: o.TunnelID,
      tunnelName: o.TunnelName,
      secret: o.TunnelSecret,
      endpoint: o.Endpoint,
      serverName: o.ServerName,
      edgeCa: o.EdgeCA,
    },
    FILE_NAMES,
  );
}

/** The credentials file's fields, for an API answer; `bad_request` when the credentials are malformed. */
export function credentialsFileFields(creds: NamedTunnelCredentials): CredentialsFileFields {
  return withContext(
    'bad_request',
    (reason) => `cannot write tunnel credentials: ${reason}`,
    () => fileFieldsOf(credentialsFromFields(fileFieldsOf(creds))),
  );
}

/** `<tunnel-id>.json`: pretty JSON with cloudflared's field names, validated before it is written. */
export function formatCredentialsFile(creds: NamedTunnelCredentials): string {
  return `${JSON.stringify(credentialsFileFields(creds), null, 2)}\n`;
}

/** Reads `<tunnel-id>.json`; unknown fields are ignored. `file` names it in errors (`bad_config`). */
export function parseCredentialsFile(text: string, file: string): NamedTunnelCredentials {
  return withContext(
    'bad_config',
    (reason) => `${file} is not a valid tunnel credentials file: ${reason}`,
    () => credentialsFromFields(parseJson(text, 'it')),
  );
}

// ---- Tunnel token ----

const TOKEN_NAMES = {
  account: 'the account',
  tunnelId: 'the tunnel ID',
  tunnelName: 'the tunnel name',
  secret: 'the tunnel secret',
  endpoint: 'the edge endpoint',
  serverName: 'the edge server name',
  edgeCa: 'the edge CA',
};

/** Base64 of the compact JSON `{ a, t, s, e, n, c }`: account, tunnel id, secret, endpoint, server name, edge CA. */
export function encodeTunnelToken(creds: NamedTunnelCredentials): string {
  const f = credentialsFileFields(creds);
  const token = {
    a: f.AccountTag,
    t: f.TunnelID,
    s: f.TunnelSecret,
    e: f.Endpoint,
    n: f.ServerName,
    c: f.EdgeCA,
  };
  return Buffer.from(JSON.stringify(token)).toString('base64');
}

/** Errors are `bad_config` and never quote the token. */
export function decodeTunnelToken(token: string): NamedTunnelCredentials {
  return withContext(
    'bad_config',
    (reason) => `the tunnel token is not valid: ${reason}`,
    () => {
      // Pasted tokens may be wrapped across lines or come URL-safe.
      const b64 = token.replace(/\s+/g, '').replace(/-/g, '+').replace(/_/g, '/');
      const garbled = 'it is truncated or garbled; copy it again from `warren tunnel token NAME`';
      if (b64 === '') malformed('it is empty');
      const padded = b64.padEnd(b64.length + ((4 - (b64.length % 4)) % 4), '=');
      if (!BASE64_RE.test(padded)) malformed(garbled);
      let value: unknown;
      try {
        value = JSON.parse(Buffer.from(padded, 'base64').toString('utf8'));
      } catch {
        return malformed(garbled);
      }
      const o = record(value, 'its content');
      return tunnelCredentials(
        { account: o.a, tunnelId: o.t, secret: o.s, endpoint: o.e, serverName: o.n, edgeCa: o.c },
        TOKEN_NAMES,
      );
    },
  );
}

// ---- Files ----

type Env = Record<string, string | undefined>;

/** `~/.warren`, or `WARREN_HOME` when set. */
export function defaultWarrenDir(env: Env = process.env): string {
  return env.WARREN_HOME ? expandHome(env.WARREN_HOME) : path.join(os.homedir(), '.warren');
}

function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') ? path.join(os.homedir(), p.slice(1)) : p;
}

/**
 * The `cert.pem` to use: `explicit` (the `--origincert` flag), else `WARREN_ORIGINCERT`, else
 * `~/.warren/cert.pem`. Throws `bad_config` saying to run `warren login` when it is missing or empty.
 */
export async function findOriginCert(explicit?: string, env: Env = process.env): Promise<string> {
  const given = explicit || env.WARREN_ORIGINCERT;
  const source = explicit ? ' (from --origincert)' : given ? ' (from WARREN_ORIGINCERT)' : '';
  const file = given ? expandHome(given) : path.join(defaultWarrenDir(env), 'cert.pem');
  const found = await stat(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (found !== undefined && !found.isFile()) {
    throw new WarrenError('bad_config', `the origin certificate ${file}${source} is not a file`);
  }
  if (found === undefined || found.size === 0) {
    throw new WarrenError(
      'bad_config',
      `no origin certificate at ${file}${source}; run \`warren login\` first` +
        (explicit ? '' : ', or pass --origincert'),
    );
  }
  return file;
}

/**
 * Writes `cert.pem` with mode 0600, creating its directory (0700) when missing. Refuses with
 * `already_exists` when the file exists and is not empty; an empty one is replaced.
 */
export async function writeOriginCert(file: string, contents: string): Promise<void> {
  await writeNewFile(file, contents, 0o600, {
    replaceEmpty: true,
    advice: 'move it away or pass a different path with --origincert',
  });
}

/** Writes `<tunnel-id>.json` with mode 0400. Refuses with `already_exists` when the file exists. */
export async function writeCredentialsFile(file: string, contents: string): Promise<void> {
  await writeNewFile(file, contents, 0o400, {
    replaceEmpty: false,
    advice: 'move it away or pass a different path with --credentials-file',
  });
}

/**
 * The file is written whole under a temporary name, then hard-linked into place: `link` fails when
 * the name exists, so a race cannot overwrite a file, and a crash leaves no half-written one.
 */
async function writeNewFile(
  file: string,
  contents: string,
  mode: number,
  opts: { replaceEmpty: boolean; advice: string },
): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    await writeWhole(tmp, contents, mode);
    if (await placeExclusive(tmp, file, contents, mode)) return;
    const existing = await lstat(file);
    // Replacing an empty file is not exclusive: a writer that fills it between the check and the
    // rename loses its contents. An empty cert.pem is left by an interrupted login, not a rival one.
    if (!opts.replaceEmpty || !existing.isFile() || existing.size > 0) {
      throw new WarrenError('already_exists', `${file} already exists; ${opts.advice}`);
    }
    await rename(tmp, file);
  } finally {
    await unlink(tmp).catch(() => {});
  }
}

/** Creates `file` (never an existing one) with the contents; false when the name is taken. */
async function placeExclusive(tmp: string, file: string, contents: string, mode: number): Promise<boolean> {
  try {
    await link(tmp, file);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return false;
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'ENOSYS') throw err;
  }
  // Some file systems have no hard links: an exclusive create still never overwrites.
  try {
    await writeWhole(file, contents, mode);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
}

async function writeWhole(file: string, contents: string, mode: number): Promise<void> {
  const handle = await open(file, 'wx', mode);
  try {
    await handle.writeFile(contents);
    // The umask may have narrowed the mode; the file must end up with exactly this one.
    await handle.chmod(mode);
    await handle.sync();
  } finally {
    await handle.close();
  }
}
