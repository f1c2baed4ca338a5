/**
 * `warren login`: gets an origin certificate for the account's zone and writes cert.pem. With
 * `--token` (headless machines) it asks the API directly; without, it opens a login session, prints
 * its URL for a browser, and polls until someone approves it there.
 */
import { stat } from 'node:fs/promises';
import { type Command, Option } from 'commander';
import { formatOriginCert, writeOriginCert } from '../agent/credentials.ts';
import type { OriginCertBundle } from '../edge/api.ts';
import { isWarrenError, WarrenError } from '../shared/errors.ts';
import { originCertPath, origincertFlag } from './account-context.ts';
import { ApiClient } from './api-client.ts';
import { DEFAULT_EDGE_API, env, fail } from './common.ts';

interface LoginOptions {
  edgeApi: string;
  token?: string;
  zone?: string;
  origincert?: string;
}

const POLL_INTERVAL_MS = 1000;

/** Fails before anything is asked of the edge (or of a person at a browser) when the write would. */
async function refuseExisting(file: string): Promise<void> {
  const found = await stat(file).catch(() => undefined);
  if (found && (!found.isFile() || found.size > 0)) {
    throw new WarrenError(
      'already_exists',
      `${file} already exists; move it away (e.g. \`mv ${file} ${file}.old\`) or pass a different path with --origincert`,
    );
  }
}

async function viaToken(api: ApiClient, token: string, zone: string | undefined) {
  // The edge's own message says to log in again, which is what is being done: say what is wrong instead.
  const me = await api.verifyToken().catch((err: unknown) => {
    if (isWarrenError(err, 'unauthorized')) {
      throw new WarrenError(
        err.code,
        'the edge did not accept the API token given with --token; check that it was copied whole, and that it is for this edge',
        { cause: err },
      );
    }
    if (isWarrenError(err, 'token_revoked')) {
      throw new WarrenError(
        err.code,
        'the API token given with --token no longer works (it was rolled, or its member was removed); use the newest token',
        { cause: err },
      );
    }
    throw err;
  });
  const bundle = await api.issueOriginCertificate(me.account_id, zone);
  return { bundle, apiToken: token, member: me.member as string | undefined };
}

async function viaBrowser(api: ApiClient, zone: string | undefined) {
  if (zone) {
    // The zone is picked on the approval page; say so rather than ignore the flag silently.
    process.stderr.write('warren: --zone is only used with --token; pick the zone on the approval page\n');
  }
  const session = await api.createLoginSession();
  process.stdout.write(
    `Open this URL in a browser to approve: ${session.login_url}\n` +
      `Waiting for approval (until ${session.expires_at}) …\n`,
  );
  for (;;) {
    const poll = await api.pollLoginSession(session.id, session.poll_secret);
    if (poll.status === 'approved') {
      const { status: _status, apiToken, ...bundle } = poll;
      return { bundle: bundle as OriginCertBundle, apiToken, member: undefined };
    }
    await new Promise<void>((resolve) => setTimeout(resolve, POLL_INTERVAL_MS));
  }
}

export function registerLoginCommand(program: Command): void {
  origincertFlag(
    program
      .command('login')
      .description("get an origin certificate for your account's zone and save it as cert.pem")
      .addOption(
        env(new Option('--edge-api <url>', "the edge's control API").default(DEFAULT_EDGE_API), 'EDGE_API'),
      )
      .addOption(
        env(
          new Option('--token <token>', 'log in with this API token instead of approving in a browser'),
          'API_TOKEN',
        ),
      )
      .addOption(
        env(new Option('--zone <domain>', 'with --token: which of your zones (default: the first)'), 'ZONE'),
      ),
  ).action(async (opts: LoginOptions) => {
    try {
      const file = originCertPath(opts.origincert);
      await refuseExisting(file);
      const anonymous = new ApiClient({ apiUrl: opts.edgeApi });
      const got = opts.token
        ? await viaToken(new ApiClient({ apiUrl: opts.edgeApi, token: opts.token }), opts.token, opts.zone)
        : await viaBrowser(anonymous, opts.zone);
      // The URL this machine reached the edge at, not the one the edge thinks it listens on.
      await writeOriginCert(
        file,
        formatOriginCert({ ...got.bundle, apiToken: got.apiToken, apiUrl: anonymous.apiUrl }),
      );
      process.stdout.write(
        `You have successfully logged in${got.member ? ` as ${got.member}` : ''} (zone ${got.bundle.zone}).\n` +
          `The origin certificate and API token were saved to:\n${file}\n`,
      );
    } catch (err) {
      fail(err);
    }
  });
}
