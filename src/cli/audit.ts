/** `warren audit`: the account's audit log, newest first. */
import { type Command, Option } from 'commander';
import { type AccountFlags, accountFlags, withAccount } from './account-context.ts';
import { parseTimeFlag } from './args.ts';
import { env, fail, outputFlag, printJson } from './common.ts';
import { auditText } from './format.ts';

interface AuditOptions extends AccountFlags {
  since?: string;
  before?: string;
  action?: string;
  tunnel?: string;
  output: 'table' | 'json';
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function registerAuditCommand(program: Command): void {
  outputFlag(
    accountFlags(
      program
        .command('audit')
        .description("your account's audit log, newest first")
        .addOption(
          env(
            new Option('--since <time>', 'entries at or after: an ISO date, epoch ms, or e.g. 2h (ago)'),
            'SINCE',
          ),
        )
        .addOption(env(new Option('--before <time>', 'entries before this time (same forms)'), 'BEFORE'))
        .addOption(
          env(
            new Option(
              '--action <actions>',
              'only these, comma-separated, e.g. connection.register,dns.cname_add',
            ),
            'ACTION',
          ),
        )
        .addOption(
          env(new Option('--tunnel <tunnel>', 'only entries about this tunnel (name or ID)'), 'TUNNEL'),
        ),
    ),
  ).action((opts: AuditOptions) =>
    withAccount(opts, async (ctx) => {
      const now = Date.now();
      const since = opts.since === undefined ? undefined : parseTimeFlag(opts.since, '--since', now);
      const before = opts.before === undefined ? undefined : parseTimeFlag(opts.before, '--before', now);
      // An ID is used as it is, so a deleted tunnel's history can still be read.
      const tunnelId =
        opts.tunnel === undefined || UUID.test(opts.tunnel)
          ? opts.tunnel?.toLowerCase()
          : (await ctx.api.getTunnel(ctx.accountId, opts.tunnel)).id;
      const actions = opts.action
        ?.split(',')
        .map((a) => a.trim())
        .filter((a) => a !== '');
      const entries = await ctx.api.auditLogs(ctx.accountId, {
        ...(since !== undefined ? { since } : {}),
        ...(before !== undefined ? { before } : {}),
        ...(actions ? { actions } : {}),
        ...(tunnelId ? { tunnelId } : {}),
      });
      if (opts.output === 'json') printJson(entries);
      else process.stdout.write(`${auditText(entries)}\n`);
    }).catch(fail),
  );
}
