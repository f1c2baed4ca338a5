/**
 * The edge CA: generated on first start and kept in the data dir, it signs the certificate the
 * tunnel listener presents. Agents get the CA certificate (never its key) and verify the edge with it.
 */
import { webcrypto } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
// @peculiar/x509 resolves its ASN.1 types through tsyringe, which needs the Reflect metadata polyfill.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

export interface EdgeTls {
  caCertPem: string;
  /** Certificate for the tunnel listener, for `tunnelHostname` and loopback addresses. */
  serverCertPem: string;
  serverKeyPem: string;
  tunnelHostname: string;
}

export function toPem(der: ArrayBuffer, label: string): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64.trimEnd()}\n-----END ${label}-----\n`;
}

export async function generateKeys(): Promise<webcrypto.CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
}

export function serial(): string {
  return Buffer.from(webcrypto.getRandomValues(new Uint8Array(16)))
    .toString('hex')
    .replace(/^[89a-f]/, '1');
}

/** Creates a CA and a server certificate in memory. */
export async function createEdgeTls(tunnelHostname: string, now = new Date()): Promise<EdgeTls> {
  const caKeys = await generateKeys();
  const notAfter = new Date(now.getTime() + 10 * 365 * 24 * 3600 * 1000);
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: 'CN=Warren edge CA',
    notBefore: new Date(now.getTime() - 60_000),
    notAfter,
    signingAlgorithm: ALG,
    keys: caKeys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });
  const serverKeys = await generateKeys();
  const server = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=${tunnelHostname}`,
    issuer: ca.subject,
    notBefore: new Date(now.getTime() - 60_000),
    notAfter,
    signingAlgorithm: ALG,
    publicKey: serverKeys.publicKey,
    signingKey: caKeys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension([
        { type: 'dns', value: tunnelHostname },
        { type: 'dns', value: 'localhost' },
        { type: 'ip', value: '127.0.0.1' },
        { type: 'ip', value: '::1' },
      ]),
      await x509.AuthorityKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });
  return {
    caCertPem: ca.toString('pem'),
    serverCertPem: server.toString('pem'),
    serverKeyPem: toPem(await webcrypto.subtle.exportKey('pkcs8', serverKeys.privateKey), 'PRIVATE KEY'),
    tunnelHostname,
  };
}

/**
 * Loads the edge TLS material from `<dataDir>/tls`, creating it on first start. Private keys are
 * written 0600. The CA key itself is not kept: the edge re-issues nothing at run time yet, so a key
 * that is never needed again is never stored.
 */
export async function loadOrCreateEdgeTls(dataDir: string, tunnelHostname: string): Promise<EdgeTls> {
  const dir = path.join(dataDir, 'tls');
  const files = {
    ca: path.join(dir, 'edge-ca.pem'),
    cert: path.join(dir, 'tunnel-cert.pem'),
    key: path.join(dir, 'tunnel-key.pem'),
  };
  try {
    const [caCertPem, serverCertPem, serverKeyPem] = await Promise.all([
      readFile(files.ca, 'utf8'),
      readFile(files.cert, 'utf8'),
      readFile(files.key, 'utf8'),
    ]);
    return { caCertPem, serverCertPem, serverKeyPem, tunnelHostname };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const created = await createEdgeTls(tunnelHostname);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFile(files.key, created.serverKeyPem, { mode: 0o600 });
  await writeFile(files.cert, created.serverCertPem, { mode: 0o644 });
  await writeFile(files.ca, created.caCertPem, { mode: 0o644 });
  return created;
}
