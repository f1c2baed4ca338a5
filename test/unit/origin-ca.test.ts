import assert from 'node:assert/strict';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadOrCreateOriginCa } from '../../src/edge/origin-ca.ts';
import { isWarrenError } from '../../src/shared/errors.ts';

const NOW = Date.UTC(2025, 0, 15, 12, 0, 0);
const YEAR_MS = 365.25 * 24 * 3600 * 1000;

function sans(cert: X509Certificate): string[] {
  return (cert.subjectAltName ?? '').split(', ').sort();
}

describe('Origin CA', () => {
  let tmp: string;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'warren-origin-ca-'));
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('issues a certificate for the zone and its wildcard that verifies against the CA', async () => {
    const ca = await loadOrCreateOriginCa(undefined, { now: NOW });
    const issued = await ca.issue({ zone: 'example.com', now: NOW });
    const caCert = new X509Certificate(ca.caCertPem);
    const cert = new X509Certificate(issued.certPem);
    assert.ok(caCert.ca);
    assert.ok(!cert.ca);
    assert.ok(cert.checkIssued(caCert));
    assert.ok(cert.verify(caCert.publicKey));
    assert.deepEqual(sans(cert), ['DNS:*.example.com', 'DNS:example.com']);
    assert.ok(cert.checkHost('example.com'));
    assert.ok(cert.checkHost('www.example.com'));
    assert.equal(cert.checkHost('a.b.example.com'), undefined);
    assert.ok(cert.checkPrivateKey(createPrivateKey(issued.keyPem)));
    assert.equal(cert.publicKey.asymmetricKeyType, 'ec');
    assert.equal(cert.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    assert.equal(cert.serialNumber.toLowerCase().replace(/^0+/, ''), issued.serial.replace(/^0+/, ''));
  });

  it('makes the certificate valid for at least ten years (fifteen) from now', async () => {
    const ca = await loadOrCreateOriginCa(undefined, { now: NOW });
    const issued = await ca.issue({ zone: 'example.com', now: NOW });
    const cert = new X509Certificate(issued.certPem);
    const from = Date.parse(cert.validFrom);
    const to = Date.parse(cert.validTo);
    assert.ok(from <= NOW);
    assert.equal(to, issued.notAfter);
    assert.ok(to - NOW >= 10 * YEAR_MS);
    assert.equal(new Date(to).toISOString(), '2040-01-15T12:00:00.000Z');
    // The CA outlives what it signs.
    assert.ok(Date.parse(new X509Certificate(ca.caCertPem).validTo) >= to);
  });

  it('issues each certificate with its own key and serial', async () => {
    const ca = await loadOrCreateOriginCa(undefined, { now: NOW });
    const a = await ca.issue({ zone: 'example.com', now: NOW });
    const b = await ca.issue({ zone: 'example.com', now: NOW });
    assert.notEqual(a.serial, b.serial);
    assert.notEqual(a.keyPem, b.keyPem);
  });

  it('lowercases the zone and refuses names that are not zones', async () => {
    const ca = await loadOrCreateOriginCa(undefined, { now: NOW });
    const issued = await ca.issue({ zone: 'Example.LOCALHOST', now: NOW });
    assert.deepEqual(sans(new X509Certificate(issued.certPem)), [
      'DNS:*.example.localhost',
      'DNS:example.localhost',
    ]);
    for (const zone of [
      '',
      '*.example.com',
      'exa mple.com',
      '-a.com',
      'a..com',
      'a.com.',
      `${'a'.repeat(64)}.com`,
    ]) {
      await assert.rejects(ca.issue({ zone, now: NOW }), (err) => isWarrenError(err, 'bad_request'), zone);
    }
  });

  it('refuses to issue once the CA has less than ten years left', async () => {
    const ca = await loadOrCreateOriginCa(undefined, { now: Date.UTC(1960, 0, 1) });
    await assert.rejects(ca.issue({ zone: 'example.com', now: Date.UTC(2055, 0, 1) }), (err) =>
      isWarrenError(err, 'bad_config'),
    );
    // Between ten and fifteen years left: the certificate ends with the CA.
    const capped = await ca.issue({ zone: 'example.com', now: Date.UTC(2048, 0, 1) });
    assert.equal(capped.notAfter, Date.parse(new X509Certificate(ca.caCertPem).validTo));
  });

  it('keeps its key in the data dir (0600, directory 0700) and issues with the same CA after a reload', async () => {
    const dataDir = path.join(tmp, 'reload');
    const first = await loadOrCreateOriginCa(dataDir, { now: NOW });
    const keyFile = path.join(dataDir, 'tls', 'origin-ca-key.pem');
    assert.equal((await stat(keyFile)).mode & 0o777, 0o600);
    assert.equal((await stat(path.join(dataDir, 'tls'))).mode & 0o777, 0o700);
    assert.equal(await readFile(path.join(dataDir, 'tls', 'origin-ca.pem'), 'utf8'), first.caCertPem);

    const second = await loadOrCreateOriginCa(dataDir, { now: NOW + 1000 });
    assert.equal(second.caCertPem, first.caCertPem);
    const issued = await second.issue({ zone: 'example.com', now: NOW });
    const cert = new X509Certificate(issued.certPem);
    const caCert = new X509Certificate(first.caCertPem);
    assert.ok(cert.checkIssued(caCert));
    assert.ok(cert.verify(caCert.publicKey));
  });

  it('replaces a key left without a certificate by an interrupted first start', async () => {
    const dataDir = path.join(tmp, 'interrupted');
    const first = await loadOrCreateOriginCa(dataDir, { now: NOW });
    await unlink(path.join(dataDir, 'tls', 'origin-ca.pem'));
    const second = await loadOrCreateOriginCa(dataDir, { now: NOW });
    assert.notEqual(second.caCertPem, first.caCertPem);
    const third = await loadOrCreateOriginCa(dataDir, { now: NOW });
    assert.equal(third.caCertPem, second.caCertPem);
  });

  it('refuses to start with the key missing or not belonging to the certificate', async () => {
    const dataDir = path.join(tmp, 'broken');
    await loadOrCreateOriginCa(dataDir, { now: NOW });
    const keyFile = path.join(dataDir, 'tls', 'origin-ca-key.pem');
    const key = await readFile(keyFile, 'utf8');

    await unlink(keyFile);
    await assert.rejects(
      loadOrCreateOriginCa(dataDir),
      (err) => isWarrenError(err, 'bad_config') && err.message.includes('origin-ca-key.pem is missing'),
    );

    await loadOrCreateOriginCa(path.join(tmp, 'other'), { now: NOW });
    await writeFile(keyFile, await readFile(path.join(tmp, 'other', 'tls', 'origin-ca-key.pem')));
    await assert.rejects(
      loadOrCreateOriginCa(dataDir),
      (err) => isWarrenError(err, 'bad_config') && err.message.includes('does not belong'),
    );

    await writeFile(keyFile, 'not a key');
    await assert.rejects(loadOrCreateOriginCa(dataDir), (err) => isWarrenError(err, 'bad_config'));

    await writeFile(keyFile, key);
    await writeFile(path.join(dataDir, 'tls', 'origin-ca.pem'), 'not a certificate');
    await assert.rejects(loadOrCreateOriginCa(dataDir), (err) => isWarrenError(err, 'bad_config'));
  });
});
