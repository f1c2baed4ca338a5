/**
 * The Origin CA: it signs the origin certificates that `warren login` hands out, one per zone, for
 * the zone and its wildcard. Unlike the edge CA it issues at run time, so its key is kept, next to
 * the edge CA in `<dataDir>/tls` (`origin-ca-key.pem` 0600, `origin-ca.pem`), or only in memory for
 * an edge without a data dir.
 */
import { createPrivateKey, X509Certificate as NodeX509, randomBytes, webcrypto } from 'node:crypto';
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
// Before @peculiar/x509, which resolves its ASN.1 types through tsyringe and needs the polyfill.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { WarrenError } from '../shared/errors.ts';
import { generateKeys, serial, toPem } from './ca.ts';

const KEY_ALG = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING_ALG = { name: 'ECDSA', hash: 'SHA-256' } as const;
/** Issued certificates live this long; the requirement is at least ten years. */
const CERT_VALIDITY_YEARS = 15;
const MIN_CERT_VALIDITY_YEARS = 10;
/** The CA must outlive every certificate it signs for as long as the edge keeps issuing. */
const CA_VALIDITY_YEARS = 100;
/** Tolerates clocks that run a little behind the edge's. */
const BACKDATE_MS = 60_000;

export interface OriginCertificate {
  certPem: string;
  /** PKCS#8 PEM of the certificate's ECDSA P-256 key; the edge does not keep it. */
  keyPem: string;
  /** Hex. */
  serial: string;
  /** Epoch ms. */
  notAfter: number;
}

export interface OriginCa {
  readonly caCertPem: string;
  /** Issues a certificate for `zone` and `*.zone`, valid 15 years from `now` (epoch ms). */
  issue(req: { zone: string; now: number }): Promise<OriginCertificate>;
}

const ZONE_RE =
  /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;

function addYears(epochMs: number, years: number): number {
  const d = new Date(epochMs);
  d.setUTCFullYear(d.getUTCFullYear() + years);
  return d.getTime();
}

/**
 * Loads the Origin CA from `<dataDir>/tls`, creating it on first start; without a data dir it
 * lives in memory and dies with the process. `now` (epoch ms) dates a newly created CA.
 */
export async function loadOrCreateOriginCa(
  dataDir: string | undefined,
  opts: { now?: number } = {},
): Promise<OriginCa> {
  const now = opts.now ?? Date.now();
  if (dataDir === undefined) {
    const created = await createCa(now);
    return originCa(created.cert, created.keys.privateKey);
  }
  const dir = path.join(dataDir, 'tls');
  const files = { cert: path.join(dir, 'origin-ca.pem'), key: path.join(dir, 'origin-ca-key.pem') };
  const certPem = await readIfExists(files.cert);
  if (certPem === undefined) {
    // The certificate is written last, so without it no certificate was ever issued and any key
    // left by an interrupted first start can be replaced.
    const created = await createCa(now);
    const keyPem = toPem(await webcrypto.subtle.exportKey('pkcs8', created.keys.privateKey), 'PRIVATE KEY');
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await writeReplacing(files.key, keyPem, 0o600);
    await writeReplacing(files.cert, toPem(created.cert.rawData, 'CERTIFICATE'), 0o644);
    return originCa(created.cert, created.keys.privateKey);
  }
  const keyPem = await readIfExists(files.key);
  if (keyPem === undefined) {
    throw new WarrenError(
      'bad_config',
      `the Origin CA key ${files.key} is missing; restore it, or remove ${files.cert} to create a new ` +
        'Origin CA (certificates it issued before will no longer verify)',
    );
  }
  return originCa(...(await loadCa(files, certPem, keyPem)));
}

async function createCa(now: number): Promise<{ cert: x509.X509Certificate; keys: webcrypto.CryptoKeyPair }> {
  const keys = await generateKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: 'CN=Warren origin CA',
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(addYears(now, CA_VALIDITY_YEARS)),
    signingAlgorithm: SIGNING_ALG,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert, keys };
}

async function loadCa(
  files: { cert: string; key: string },
  certPem: string,
  keyPem: string,
): Promise<[x509.X509Certificate, webcrypto.CryptoKey]> {
  let cert: x509.X509Certificate;
  let nodeCert: NodeX509;
  try {
    cert = new x509.X509Certificate(certPem);
    nodeCert = new NodeX509(certPem);
  } catch (cause) {
    throw new WarrenError('bad_config', `${files.cert} is not a PEM certificate`, { cause });
  }
  let key: webcrypto.CryptoKey;
  let matches: boolean;
  try {
    const keyObject = createPrivateKey(keyPem);
    key = await webcrypto.subtle.importKey(
      'pkcs8',
      keyObject.export({ format: 'der', type: 'pkcs8' }),
      KEY_ALG,
      false,
      ['sign'],
    );
    matches = nodeCert.checkPrivateKey(keyObject);
  } catch (cause) {
    throw new WarrenError('bad_config', `${files.key} is not an ECDSA P-256 private key`, { cause });
  }
  if (!matches) {
    throw new WarrenError('bad_config', `the Origin CA key ${files.key} does not belong to ${files.cert}`);
  }
  return [cert, key];
}

function originCa(caCert: x509.X509Certificate, caKey: webcrypto.CryptoKey): OriginCa {
  const caNotAfter = caCert.notAfter.getTime();
  return {
    caCertPem: toPem(caCert.rawData, 'CERTIFICATE'),
    async issue({ zone, now }) {
      if (!Number.isFinite(now)) throw new WarrenError('bad_request', 'issue: `now` must be epoch ms');
      const name = zone.toLowerCase();
      if (!ZONE_RE.test(name)) throw new WarrenError('bad_request', `"${zone}" is not a valid zone name`);
      // Never past the CA's own end: a chain that outlives its root is refused by strict clients.
      const notAfter = Math.min(addYears(now, CERT_VALIDITY_YEARS), caNotAfter);
      if (notAfter < addYears(now, MIN_CERT_VALIDITY_YEARS)) {
        throw new WarrenError(
          'bad_config',
          `the Origin CA expires on ${caCert.notAfter.toISOString()}, too soon to issue a certificate ` +
            `valid ${MIN_CERT_VALIDITY_YEARS} years; replace the Origin CA`,
        );
      }
      const keys = await generateKeys();
      const serialNumber = serial();
      const cert = await x509.X509CertificateGenerator.create({
        serialNumber,
        subject: `CN=${name}`,
        issuer: caCert.subject,
        notBefore: new Date(now - BACKDATE_MS),
        notAfter: new Date(notAfter),
        signingAlgorithm: SIGNING_ALG,
        publicKey: keys.publicKey,
        signingKey: caKey,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
          new x509.SubjectAlternativeNameExtension([
            { type: 'dns', value: name },
            { type: 'dns', value: `*.${name}` },
          ]),
          await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
          await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey),
        ],
      });
      return {
        certPem: toPem(cert.rawData, 'CERTIFICATE'),
        keyPem: toPem(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey), 'PRIVATE KEY'),
        serial: serialNumber,
        notAfter: cert.notAfter.getTime(),
      };
    },
  };
}

async function readIfExists(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Write to a temporary file, then rename: a crash leaves the old file or the new one, never half of one. */
async function writeReplacing(file: string, text: string, mode: number): Promise<void> {
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    const handle = await open(tmp, 'wx', mode);
    try {
      await handle.writeFile(text);
      // The umask may have narrowed the mode; a key must end up exactly owner-only.
      await handle.chmod(mode);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, file);
  } finally {
    await unlink(tmp).catch(() => {});
  }
}
