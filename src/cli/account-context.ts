/**
 * Commands that act for an account read `cert.pem` (written by `warren login`): its API token, its
 * account and the edge API's URL (`--edge-api` overrides the URL, e.g. after the edge moved).
 */
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { type Command, Option } from 'commander';
import { defaultWarrenDir, findOriginCert, type OriginCert, parseOriginCert } from '../agent/credentials.ts';
import { isWarrenError, WarrenError } from '../shared/errors.ts';
import { ApiClient } from './api-client.ts';
import { env } from './common.ts';

export interface AccountFlags {
  origincert?: string;
  edgeApi?: string;
}

export interface AccountContext {
  api: ApiClient;
  cert: OriginCert;
  /** The cert.pem that was read. */
  certFile: string;
  accountId: string;
}

/** `--origincert` (WARREN_ORIGINCERT is read by findOriginCert itself, so errors can name the source). */
export function origincertFlag(cmd: Command): Command {
  return cmd.addOption(
    new Option(
      '--origincert <file>',
      'the cert.pem from `warren login` (env: WARREN_ORIGINCERT; default: ~/.warren/cert.pem, or $WARREN_HOME/cert.pem)',
    ),
  );
}

/** `--origincert` and an `--edge-api` that overrides the URL in cert.pem. */
export function accountFlags(cmd: Command): Command {
  return origincertFlag(cmd).addOption(
    env(new Option('--edge-api <url>', "the edge's control API (default: the one in cert.pem)"), 'EDGE_API'),
  );
}

/** Where cert.pem is or is to be written: the flag, WARREN_ORIGINCERT, or `<warren dir>/cert.pem`. */
export function originCertPath(explicit: string | undefined, envVars = process.env): string {
  const given = explicit || envVars.WARREN_ORIGINCERT;
  if (!given) return path.join(defaultWarrenDir(envVars), 'cert.pem');
  return path.resolve(
    given === '~' || given.startsWith('~/') ? path.join(os.homedir(), given.slice(1)) : given,
  );
}

export async function openAccount(flags: AccountFlags): Promise<AccountContext> {
  const certFile = await findOriginCert(flags.origincert);
  const cert = parseOriginCert(await readFile(certFile, 'utf8'), certFile);
  const api = new ApiClient({ apiUrl: flags.edgeApi ?? cert.apiUrl, token: cert.apiToken });
  return { api, cert, certFile, accountId: cert.accountId };
}

/**
 * A refused token means cert.pem is stale; the edge's message says to log in again, and since
 * `warren login` never overwrites cert.pem, this adds how to make room for the new one.
 */
export function withLoginAdvice(err: unknown, certFile: string): unknown {
  if (!isWarrenError(err, 'token_revoked') && !isWarrenError(err, 'unauthorized')) return err;
  return new WarrenError(
    err.code,
    `${err.message} (\`warren login\` does not overwrite ${certFile}: move it away first, e.g. \`mv ${certFile} ${certFile}.old\`)`,
    { cause: err },
  );
}

/** Runs `fn` with the account of cert.pem. */
export async function withAccount<T>(
  flags: AccountFlags,
  fn: (ctx: AccountContext) => Promise<T>,
): Promise<T> {
  const ctx = await openAccount(flags);
  try {
    return await fn(ctx);
  } catch (err) {
    throw withLoginAdvice(err, ctx.certFile);
  }
}
