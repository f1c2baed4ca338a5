import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  credentialsFileFields,
  decodeTunnelToken,
  defaultWarrenDir,
  encodeTunnelToken,
  findOriginCert,
  formatCredentialsFile,
  formatOriginCert,
  type NamedTunnelCredentials,
  type OriginCert,
  parseCredentialsFile,
  parseOriginCert,
  writeCredentialsFile,
  writeOriginCert,
} from '../../src/agent/credentials.ts';
import { createEdgeTls } from '../../src/edge/ca.ts';
import { loadOrCreateOriginCa } from '../../src/edge/origin-ca.ts';
import { isWarrenError } from '../../src/shared/errors.ts';

const TUNNEL_ID = '6ff42ae2-765d-4adf-8112-31c55c1551ef';
const API_TOKEN = 'wt_secret-api-token-value';

let originCert: OriginCert;
let otherKeyPem: string;
/** As the edge hands it out: no newline after the END line. */
let edgeCaRaw: string;
/** The same, normalised as the parsers return PEM. */
let edgeCaPem: string;

function blocksOf(text: string): { label: string; body: string }[] {
  return [...text.matchAll(/-----BEGIN ([A-Z ]+)-----\n([\s\S]*?)\n-----END \1-----\n/g)].map((m) => ({
    label: m[1]!,
    body: m[2]!,
  }));
}

function pem(label: string, body: string): string {
  return `-----BEGIN ${label}-----\n${body}\n-----END ${label}-----\n`;
}

function tunnelCreds(over: Partial<NamedTunnelCredentials> = {}): NamedTunnelCredentials {
  return {
    accountId: 'acct-1',
    tunnelId: TUNNEL_ID,
    tunnelName: 'web',
    secret: Buffer.alloc(32, 7),
    edge: { host: 'edge.example.com', port: 7844, serverName: 'tunnel.example.com' },
    edgeCaPem,
    ...over,
  };
}

/** Asserts a `code` error whose message contains every `parts` and never the secrets. */
function rejectsWith(fn: () => unknown, code: string, ...parts: string[]): void {
  assert.throws(fn, (err) => {
    assert.ok(isWarrenError(err), `not a WarrenError: ${err}`);
    assert.equal(err.code, code, err.message);
    for (const p of parts) assert.ok(err.message.includes(p), `"${err.message}" lacks "${p}"`);
    assert.ok(!err.message.includes(API_TOKEN), 'the message quotes the API token');
    assert.ok(!err.message.includes(Buffer.alloc(32, 7).toString('base64')), 'the message quotes the secret');
    return true;
  });
}

before(async () => {
  const origin = await loadOrCreateOriginCa(undefined);
  edgeCaRaw = (await createEdgeTls('tunnel.example.com')).caCertPem;
  edgeCaPem = `${edgeCaRaw}\n`;
  const issued = await origin.issue({ zone: 'example.com', now: Date.now() });
  otherKeyPem = (await origin.issue({ zone: 'example.com', now: Date.now() })).keyPem;
  originCert = {
    keyPem: issued.keyPem,
    certPem: issued.certPem,
    edgeCaPem,
    accountId: 'acct-1',
    zoneId: 'zone-1',
    zone: 'example.com',
    apiToken: API_TOKEN,
    apiUrl: 'http://127.0.0.1:8080',
  };
});

describe('cert.pem', () => {
  const FILE = '/home/u/.warren/cert.pem';

  it('holds the key, the certificate, the edge CA and the token, in that order, and round-trips', () => {
    const text = formatOriginCert(originCert);
    const blocks = blocksOf(text);
    assert.deepEqual(
      blocks.map((b) => b.label),
      ['PRIVATE KEY', 'CERTIFICATE', 'WARREN EDGE CA', 'WARREN TUNNEL TOKEN'],
    );
    assert.equal(blocks.map((b) => pem(b.label, b.body)).join(''), text);
    assert.deepEqual(JSON.parse(Buffer.from(blocks[3]!.body, 'base64').toString('utf8')), {
      accountId: 'acct-1',
      zoneId: 'zone-1',
      zone: 'example.com',
      apiToken: API_TOKEN,
      apiUrl: 'http://127.0.0.1:8080',
    });
    // The edge CA is the same DER under another label.
    assert.equal(pem('CERTIFICATE', blocks[2]!.body), edgeCaPem);
    const parsed = parseOriginCert(text, FILE);
    assert.deepEqual(parsed, originCert);
    assert.equal(formatOriginCert(parsed), text);
  });

  it('takes the edge CA as the edge produces it and normalises every PEM', () => {
    const parts = { ...originCert, edgeCaPem: edgeCaRaw, keyPem: originCert.keyPem.trimEnd() };
    assert.equal(formatOriginCert(parts), formatOriginCert(originCert));
  });

  it('reads CRLF line endings and ignores text around the blocks', () => {
    const text = `# issued by warren login\n${formatOriginCert(originCert)}\ntrailing note\n`.replace(
      /\n/g,
      '\r\n',
    );
    assert.deepEqual(parseOriginCert(text, FILE), originCert);
  });

  it('names the file and says to log in again for every kind of damage', async (t) => {
    const text = formatOriginCert(originCert);
    const blocks = blocksOf(text);
    const build = (list: { label: string; body: string }[]) => list.map((b) => pem(b.label, b.body)).join('');
    const withToken = (token: unknown) =>
      build([
        ...blocks.slice(0, 3),
        { label: 'WARREN TUNNEL TOKEN', body: Buffer.from(JSON.stringify(token)).toString('base64') },
      ]);
    const token = JSON.parse(Buffer.from(blocks[3]!.body, 'base64').toString('utf8')) as Record<
      string,
      unknown
    >;
    const cases: [string, string, string][] = [
      ['empty', '', 'no PRIVATE KEY block'],
      ['truncated', text.slice(0, text.length - 40), 'no END line'],
      ['mismatched END', text.replace('-----END CERTIFICATE-----', '-----END PRIVATE KEY-----'), 'ends with'],
      [
        'bad base64',
        text.replace(blocks[1]!.body, `${blocks[1]!.body.slice(0, -4)}!!!!`),
        'not valid base64',
      ],
      [
        'duplicate certificate',
        build([blocks[0]!, blocks[1]!, blocks[1]!, blocks[2]!, blocks[3]!]),
        'more than one',
      ],
      ['key not PKCS#8', build([{ label: 'PRIVATE KEY', body: 'AAAA' }, ...blocks.slice(1)]), 'not a PKCS#8'],
      [
        'garbled certificate',
        build([blocks[0]!, { label: 'CERTIFICATE', body: 'AAAA' }, ...blocks.slice(2)]),
        'not a valid X.509',
      ],
      [
        'key of another certificate',
        build([blocksOf(otherKeyPem)[0]!, ...blocks.slice(1)]),
        'does not belong to the certificate',
      ],
      [
        'garbled edge CA',
        build([...blocks.slice(0, 2), { label: 'WARREN EDGE CA', body: 'AAAA' }, blocks[3]!]),
        'WARREN EDGE CA',
      ],
      [
        'token not JSON',
        build([...blocks.slice(0, 3), { label: 'WARREN TUNNEL TOKEN', body: 'bm90IGpzb24=' }]),
        'not valid JSON',
      ],
      ['token not an object', withToken([1, 2]), 'not a JSON object'],
      ['bad zone', withToken({ ...token, zone: 'not a zone' }), 'zone'],
      ['apiUrl not a URL', withToken({ ...token, apiUrl: 'nope' }), 'apiUrl'],
      ['apiUrl not http', withToken({ ...token, apiUrl: 'ftp://edge' }), 'not an http(s) URL'],
    ];
    for (const label of ['PRIVATE KEY', 'CERTIFICATE', 'WARREN EDGE CA', 'WARREN TUNNEL TOKEN']) {
      cases.push([`no ${label}`, build(blocks.filter((b) => b.label !== label)), `no ${label} block`]);
    }
    for (const field of ['accountId', 'zoneId', 'zone', 'apiToken', 'apiUrl']) {
      cases.push([`no ${field}`, withToken({ ...token, [field]: undefined }), `${field} is missing`]);
      cases.push([`empty ${field}`, withToken({ ...token, [field]: '' }), `${field} is missing`]);
    }
    for (const [name, damaged, reason] of cases) {
      await t.test(name, () => {
        rejectsWith(() => parseOriginCert(damaged, FILE), 'bad_config', reason, 'Run `warren login` again');
        assert.throws(
          () => parseOriginCert(damaged, FILE),
          (err) => String(err).includes(`Error: ${FILE} `),
        );
      });
    }
  });

  it('refuses to format malformed parts (bad_request)', () => {
    rejectsWith(
      () => formatOriginCert({ ...originCert, keyPem: originCert.certPem }),
      'bad_request',
      'no PRIVATE KEY',
    );
    rejectsWith(
      () => formatOriginCert({ ...originCert, keyPem: otherKeyPem }),
      'bad_request',
      'does not belong',
    );
    rejectsWith(() => formatOriginCert({ ...originCert, apiToken: '' }), 'bad_request', 'apiToken');
    rejectsWith(() => formatOriginCert({ ...originCert, edgeCaPem: 'x' }), 'bad_request', 'edgeCaPem');
  });
});

describe('tunnel credentials file', () => {
  const FILE = `/home/u/.warren/${TUNNEL_ID}.json`;

  it("uses cloudflared's field names and round-trips", () => {
    const creds = tunnelCreds();
    const text = formatCredentialsFile(creds);
    assert.ok(text.endsWith('}\n'));
    assert.deepEqual(JSON.parse(text), {
      AccountTag: 'acct-1',
      TunnelID: TUNNEL_ID,
      TunnelName: 'web',
      TunnelSecret: Buffer.alloc(32, 7).toString('base64'),
      Endpoint: 'edge.example.com:7844',
      ServerName: 'tunnel.example.com',
      EdgeCA: edgeCaPem,
    });
    assert.deepEqual(credentialsFileFields(creds), JSON.parse(text));
    assert.deepEqual(parseCredentialsFile(text, FILE), creds);
  });

  it('takes the edge CA as the edge produces it', () => {
    const text = formatCredentialsFile(tunnelCreds({ edgeCaPem: edgeCaRaw }));
    assert.equal(text, formatCredentialsFile(tunnelCreds()));
    assert.equal(
      decodeTunnelToken(encodeTunnelToken(tunnelCreds({ edgeCaPem: edgeCaRaw }))).edgeCaPem,
      edgeCaPem,
    );
  });

  it('round-trips without a name and with an IPv6 endpoint, and ignores unknown fields', () => {
    const creds = tunnelCreds({
      tunnelName: undefined,
      edge: { host: '::1', port: 1, serverName: 'localhost' },
    });
    delete creds.tunnelName;
    const fields = JSON.parse(formatCredentialsFile(creds)) as Record<string, unknown>;
    assert.equal(fields.Endpoint, '[::1]:1');
    assert.ok(!('TunnelName' in fields));
    assert.deepEqual(parseCredentialsFile(JSON.stringify({ ...fields, Future: 1 }), FILE), creds);
  });

  it('names the file and the field for every invalid value, never quoting the secret', async (t) => {
    const good = credentialsFileFields(tunnelCreds()) as Record<string, unknown>;
    const cases: [string, string, string][] = [
      ['not JSON', '{"AccountTag":', 'not valid JSON'],
      ['an array', '[]', 'not a JSON object'],
      ['not a UUID', JSON.stringify({ ...good, TunnelID: 'tunnel-1' }), 'TunnelID "tunnel-1" is not a UUID'],
      [
        'secret not base64',
        JSON.stringify({ ...good, TunnelSecret: 'not base64!' }),
        'TunnelSecret is not base64',
      ],
      [
        'short secret',
        JSON.stringify({ ...good, TunnelSecret: randomBytes(16).toString('base64') }),
        'TunnelSecret must be 32 bytes, not 16',
      ],
      [
        'no port',
        JSON.stringify({ ...good, Endpoint: 'edge.example.com' }),
        'Endpoint "edge.example.com" is not host:port',
      ],
      ['port 0', JSON.stringify({ ...good, Endpoint: 'edge.example.com:0' }), 'outside 1-65535'],
      ['port too high', JSON.stringify({ ...good, Endpoint: 'edge.example.com:65536' }), 'outside 1-65535'],
      ['bad host', JSON.stringify({ ...good, Endpoint: 'edge..example.com:7844' }), 'invalid host'],
      ['bad IPv6', JSON.stringify({ ...good, Endpoint: '[::g]:7844' }), 'Endpoint'],
      [
        'bad server name',
        JSON.stringify({ ...good, ServerName: 'a b' }),
        'ServerName "a b" is not a valid hostname',
      ],
      ['CA not PEM', JSON.stringify({ ...good, EdgeCA: 'hello' }), 'EdgeCA has no CERTIFICATE block'],
      [
        'CA garbled',
        JSON.stringify({ ...good, EdgeCA: pem('CERTIFICATE', 'AAAA') }),
        'EdgeCA is not a valid X.509',
      ],
      ['empty name', JSON.stringify({ ...good, TunnelName: '' }), 'TunnelName is missing or empty'],
      ['number field', JSON.stringify({ ...good, AccountTag: 42 }), 'AccountTag is missing'],
    ];
    for (const field of ['AccountTag', 'TunnelID', 'TunnelSecret', 'Endpoint', 'ServerName', 'EdgeCA']) {
      cases.push([`no ${field}`, JSON.stringify({ ...good, [field]: undefined }), `${field} is missing`]);
    }
    for (const [name, text, reason] of cases) {
      await t.test(name, () =>
        rejectsWith(() => parseCredentialsFile(text, FILE), 'bad_config', FILE, reason),
      );
    }
  });

  it('refuses to format malformed credentials (bad_request)', () => {
    rejectsWith(
      () => formatCredentialsFile(tunnelCreds({ secret: Buffer.alloc(31) })),
      'bad_request',
      '32 bytes',
    );
    rejectsWith(() => credentialsFileFields(tunnelCreds({ accountId: '' })), 'bad_request', 'AccountTag');
    rejectsWith(() => credentialsFileFields(tunnelCreds({ tunnelId: 'x' })), 'bad_request', 'TunnelID');
  });
});

describe('tunnel token', () => {
  it('is base64 of compact JSON { a, t, s, e, n, c } and round-trips without the name', () => {
    const creds = tunnelCreds();
    const token = encodeTunnelToken(creds);
    assert.match(token, /^[A-Za-z0-9+/]+=*$/);
    const json = Buffer.from(token, 'base64').toString('utf8');
    assert.ok(!json.includes('\n  '));
    assert.deepEqual(JSON.parse(json), {
      a: 'acct-1',
      t: TUNNEL_ID,
      s: Buffer.alloc(32, 7).toString('base64'),
      e: 'edge.example.com:7844',
      n: 'tunnel.example.com',
      c: edgeCaPem,
    });
    const { tunnelName, ...rest } = creds;
    assert.equal(tunnelName, 'web');
    assert.deepEqual(decodeTunnelToken(token), rest);
  });

  it('accepts a token wrapped across lines, URL-safe or without padding', () => {
    const creds = tunnelCreds({ tunnelName: undefined });
    delete creds.tunnelName;
    const token = encodeTunnelToken(creds);
    assert.deepEqual(decodeTunnelToken(`  ${token.replace(/.{60}/g, '$&\n')}\n`), creds);
    assert.deepEqual(
      decodeTunnelToken(token.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')),
      creds,
    );
  });

  it('says a truncated or garbled token is truncated or garbled, without quoting it', () => {
    const token = encodeTunnelToken(tunnelCreds());
    for (const bad of [
      token.slice(0, token.length / 2),
      `${token.slice(0, 20)}!${token.slice(21)}`,
      'abc',
      '@@@@',
    ]) {
      assert.throws(
        () => decodeTunnelToken(bad),
        (err) =>
          isWarrenError(err, 'bad_config') &&
          err.message.includes('truncated or garbled') &&
          !err.message.includes(bad.slice(0, 16)),
      );
    }
    rejectsWith(() => decodeTunnelToken(''), 'bad_config', 'empty');
  });

  it('validates every field like the credentials file', () => {
    const fields = JSON.parse(Buffer.from(encodeTunnelToken(tunnelCreds()), 'base64').toString('utf8'));
    const encode = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64');
    rejectsWith(() => decodeTunnelToken(encode([])), 'bad_config', 'not a JSON object');
    rejectsWith(
      () => decodeTunnelToken(encode({ ...fields, a: '' })),
      'bad_config',
      'the account is missing',
    );
    rejectsWith(
      () => decodeTunnelToken(encode({ ...fields, t: 'x' })),
      'bad_config',
      'the tunnel ID "x" is not a UUID',
    );
    rejectsWith(
      () => decodeTunnelToken(encode({ ...fields, s: Buffer.alloc(33).toString('base64') })),
      'bad_config',
      'the tunnel secret must be 32 bytes',
    );
    rejectsWith(
      () => decodeTunnelToken(encode({ ...fields, e: 'h:99999' })),
      'bad_config',
      'the edge endpoint',
    );
    rejectsWith(() => decodeTunnelToken(encode({ ...fields, n: '' })), 'bad_config', 'the edge server name');
    rejectsWith(() => decodeTunnelToken(encode({ ...fields, c: 'x' })), 'bad_config', 'the edge CA');
  });
});

describe('credential files on disk', () => {
  let tmp: string;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'warren-credentials-'));
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  const mode = async (p: string) => (await stat(p)).mode & 0o777;

  it('writes cert.pem 0600, creating a missing directory 0700', async () => {
    const file = path.join(tmp, 'home', '.warren', 'cert.pem');
    const text = formatOriginCert(originCert);
    await writeOriginCert(file, text);
    assert.equal(await readFile(file, 'utf8'), text);
    assert.equal(await mode(file), 0o600);
    assert.equal(await mode(path.dirname(file)), 0o700);
    assert.deepEqual(await readdir(path.dirname(file)), ['cert.pem']);
  });

  it('refuses to overwrite a cert.pem that has contents', async () => {
    const file = path.join(tmp, 'existing-cert.pem');
    await writeFile(file, 'old');
    await assert.rejects(
      writeOriginCert(file, 'new'),
      (err) =>
        isWarrenError(err, 'already_exists') &&
        err.message.includes(file) &&
        err.message.includes('move it away') &&
        err.message.includes('different path'),
    );
    assert.equal(await readFile(file, 'utf8'), 'old');
    assert.deepEqual(await readdir(tmp), ['existing-cert.pem', 'home']);
  });

  it('replaces an empty cert.pem, with mode 0600', async () => {
    const file = path.join(tmp, 'empty', 'cert.pem');
    await mkdir(path.dirname(file));
    await writeFile(file, '', { mode: 0o644 });
    await writeOriginCert(file, 'contents');
    assert.equal(await readFile(file, 'utf8'), 'contents');
    assert.equal(await mode(file), 0o600);
    assert.deepEqual(await readdir(path.dirname(file)), ['cert.pem']);
  });

  it('refuses a directory in the way of cert.pem', async () => {
    const file = path.join(tmp, 'dir-in-the-way');
    await mkdir(file);
    await assert.rejects(writeOriginCert(file, 'x'), (err) => isWarrenError(err, 'already_exists'));
  });

  it('writes a credentials file 0400 and refuses to overwrite any existing one, even empty', async () => {
    const dir = path.join(tmp, 'creds');
    const file = path.join(dir, `${TUNNEL_ID}.json`);
    const text = formatCredentialsFile(tunnelCreds());
    await writeCredentialsFile(file, text);
    assert.equal(await mode(file), 0o400);
    assert.deepEqual(parseCredentialsFile(await readFile(file, 'utf8'), file), tunnelCreds());
    await assert.rejects(
      writeCredentialsFile(file, 'other'),
      (err) =>
        isWarrenError(err, 'already_exists') &&
        err.message.includes(file) &&
        err.message.includes('move it away'),
    );
    assert.equal(await readFile(file, 'utf8'), text);

    const empty = path.join(dir, 'empty.json');
    await writeFile(empty, '');
    await assert.rejects(writeCredentialsFile(empty, text), (err) => isWarrenError(err, 'already_exists'));
    assert.equal(await readFile(empty, 'utf8'), '');
    assert.deepEqual((await readdir(dir)).sort(), [`${TUNNEL_ID}.json`, 'empty.json']);
  });

  it('lets exactly one of several racing writers create a credentials file', async () => {
    const file = path.join(tmp, 'race.json');
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) => writeCredentialsFile(file, `writer ${i}`)),
    );
    const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
    assert.equal(won.length, 1);
    assert.equal(await readFile(file, 'utf8'), `writer ${won[0]}`);
    for (const r of results) {
      if (r.status === 'rejected') assert.ok(isWarrenError(r.reason, 'already_exists'));
    }
  });

  it('finds ~/.warren under WARREN_HOME, or the home directory', () => {
    assert.equal(defaultWarrenDir({ WARREN_HOME: '/srv/warren' }), '/srv/warren');
    assert.equal(defaultWarrenDir({}), path.join(os.homedir(), '.warren'));
  });

  it('finds cert.pem from the flag, then WARREN_ORIGINCERT, then the warren dir', async () => {
    const home = path.join(tmp, 'find');
    const fromHome = path.join(home, 'cert.pem');
    const fromEnv = path.join(tmp, 'env-cert.pem');
    const fromFlag = path.join(tmp, 'flag-cert.pem');
    await writeOriginCert(fromHome, 'x');
    await writeOriginCert(fromEnv, 'x');
    await writeOriginCert(fromFlag, 'x');
    const env = { WARREN_HOME: home, WARREN_ORIGINCERT: fromEnv };
    assert.equal(await findOriginCert(fromFlag, env), fromFlag);
    assert.equal(await findOriginCert(undefined, env), fromEnv);
    assert.equal(await findOriginCert(undefined, { WARREN_HOME: home }), fromHome);
  });

  it('says to run `warren login` first when cert.pem is missing or empty', async () => {
    const home = path.join(tmp, 'nobody');
    const check = (err: unknown, file: string) =>
      isWarrenError(err, 'bad_config') &&
      err.message.includes(file) &&
      err.message.includes('run `warren login` first');
    await assert.rejects(findOriginCert(undefined, { WARREN_HOME: home }), (err) =>
      check(err, path.join(home, 'cert.pem')),
    );
    const flag = path.join(tmp, 'missing.pem');
    await assert.rejects(
      findOriginCert(flag, {}),
      (err) => check(err, flag) && String(err).includes('--origincert'),
    );
    const empty = path.join(tmp, 'empty-cert.pem');
    await writeFile(empty, '');
    await assert.rejects(findOriginCert(undefined, { WARREN_ORIGINCERT: empty }), (err) => check(err, empty));
  });
});
