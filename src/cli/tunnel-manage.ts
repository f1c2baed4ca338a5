/** `warren tunnel create|list|info|delete|cleanup|token|route dns`: named tunnels through the control API. */
import { unlink } from 'node:fs/promises';
import path from 'node:path';
import { type Command, Option } from 'commander';
import { formatCredentialsFile, parseCredentialsFile, writeCredentialsFile } from '../agent/credentials.ts';
import { isWarrenError, WarrenError } from '../shared/errors.ts';
import { type AccountFlags, accountFlags, withAccount } from './account-context.ts';
import { env, fail, outputFlag, printJson, rejectParentFlags } from './common.ts';
import { tunnelInfoText, tunnelListText } from './format.ts';

type Output = { output: 'table' | 'json' };

function sub(parent: Command, name: string, description: string): Command {
  const cmd = accountFlags(parent.command(name).description(description));
  rejectParentFlags(cmd);
  return cmd;
}

export function registerTunnelManageCommands(tunnelCmd: Command): void {
  sub(tunnelCmd, 'create', 'create a named tunnel and write its credentials file beside cert.pem')
    .argument('<name>', 'a name for the tunnel (letters, digits, . _ -; not a UUID)')
    .addOption(
      env(
        new Option(
          '--credentials-file <file>',
          'where to write the credentials (default: <cert.pem dir>/<tunnel-id>.json)',
        ),
        'CREDENTIALS_FILE',
      ),
    )
    .action((name: string, opts: AccountFlags & { credentialsFile?: string }) =>
      withAccount(opts, async (ctx) => {
        const t = await ctx.api.createTunnel(ctx.accountId, name);
        const file = opts.credentialsFile
          ? path.resolve(opts.credentialsFile)
          : path.join(path.dirname(ctx.certFile), `${t.id}.json`);
        try {
          const creds = parseCredentialsFile(JSON.stringify(t.credentials), 'the credentials from the edge');
          await writeCredentialsFile(file, formatCredentialsFile(creds));
        } catch (err) {
          if (!isWarrenError(err)) throw err;
          throw new WarrenError(
            err.code,
            `${err.message}. The tunnel ${t.name} (${t.id}) was created: \`warren tunnel run --token $(warren tunnel token ${t.name}) …\` runs it without the file`,
            { cause: err },
          );
        }
        process.stdout.write(
          `Tunnel credentials written to ${file}. Keep this file secret. To revoke these credentials, delete the tunnel.\n\n` +
            `Created tunnel ${t.name} with id ${t.id}\n`,
        );
      }).catch(fail),
    );

  outputFlag(sub(tunnelCmd, 'list', 'list the tunnels of your account')).action(
    (opts: AccountFlags & Output) =>
      withAccount(opts, async (ctx) => {
        const tunnels = await ctx.api.listTunnels(ctx.accountId);
        if (opts.output === 'json') printJson(tunnels);
        else process.stdout.write(`${tunnelListText(tunnels)}\n`);
      }).catch(fail),
  );

  outputFlag(sub(tunnelCmd, 'info', 'show a tunnel and its connectors (one row per agent process)'))
    .argument('<tunnel>', 'name or ID')
    .action((ref: string, opts: AccountFlags & Output) =>
      withAccount(opts, async (ctx) => {
        const t = await ctx.api.getTunnel(ctx.accountId, ref);
        if (opts.output === 'json') printJson(t);
        else process.stdout.write(`${tunnelInfoText(t)}\n`);
      }).catch(fail),
    );

  sub(tunnelCmd, 'delete', 'delete a tunnel: its DNS routes go and its credentials stop working')
    .argument('<tunnel>', 'name or ID')
    .addOption(
      env(new Option('--force', 'delete it even while it has live connections (they are closed)'), 'FORCE'),
    )
    .action((ref: string, opts: AccountFlags & { force?: boolean }) =>
      withAccount(opts, async (ctx) => {
        const t = await ctx.api.deleteTunnel(ctx.accountId, ref, opts.force === true);
        process.stdout.write(`Deleted tunnel ${t.name} (${t.id})\n`);
        // Useless now, and it holds a secret.
        const file = path.join(path.dirname(ctx.certFile), `${t.id}.json`);
        await unlink(file).then(
          () => process.stdout.write(`Removed its credentials file ${file}\n`),
          (err: NodeJS.ErrnoException) => {
            if (err.code !== 'ENOENT') {
              process.stderr.write(`warren: could not remove ${file} (${err.message}); delete it by hand\n`);
            }
          },
        );
      }).catch(fail),
    );

  sub(tunnelCmd, 'cleanup', 'drop connection records that no agent holds any more (left by a crash)')
    .argument('<tunnel>', 'name or ID')
    .action((ref: string, opts: AccountFlags) =>
      withAccount(opts, async (ctx) => {
        const { dropped } = await ctx.api.cleanupConnections(ctx.accountId, ref);
        process.stdout.write(
          `Removed ${dropped} stale connection${dropped === 1 ? '' : 's'} of tunnel ${ref}\n`,
        );
      }).catch(fail),
    );

  sub(tunnelCmd, 'token', 'print the tunnel token, for `warren tunnel run --token`')
    .argument('<tunnel>', 'name or ID')
    .action((ref: string, opts: AccountFlags) =>
      withAccount(opts, async (ctx) => {
        process.stdout.write(`${await ctx.api.tunnelToken(ctx.accountId, ref)}\n`);
      }).catch(fail),
    );

  const routeCmd = tunnelCmd.command('route').description('route traffic to a tunnel');
  sub(routeCmd, 'dns', 'add a CNAME from HOSTNAME to the tunnel in your zone')
    .argument('<tunnel>', 'name or ID')
    .argument('<hostname>', 'e.g. app.example.com, in your zone')
    .addOption(env(new Option('--overwrite-dns', 'replace a record that points elsewhere'), 'OVERWRITE_DNS'))
    .action((ref: string, hostname: string, opts: AccountFlags & { overwriteDns?: boolean }) =>
      withAccount(opts, async (ctx) => {
        const records = await ctx.api.routeDns(ctx.accountId, ref, {
          hostname,
          overwrite: opts.overwriteDns === true,
          origin: 'manual',
        });
        const cname = records.find((r) => r.type === 'CNAME');
        process.stdout.write(
          `Added CNAME ${cname?.name ?? hostname} which will route to this tunnel${cname?.tunnelId ? ` tunnelID=${cname.tunnelId}` : ''}\n`,
        );
      }).catch(fail),
    );
}
