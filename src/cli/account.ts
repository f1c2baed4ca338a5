/** `warren account create`, `warren account member add|list|remove` and `warren token roll`. */
import { type Command, Option } from 'commander';
import { type AccountFlags, accountFlags, withAccount } from './account-context.ts';
import { env, fail, outputFlag, printJson } from './common.ts';
import { membersText } from './format.ts';

const ONCE = 'It is shown only now and is not stored anywhere (the edge keeps only its hash).';

export function registerAccountCommands(program: Command): void {
  const accountCmd = program.command('account').description('accounts and their members (API tokens)');

  accountFlags(
    accountCmd
      .command('create')
      .description('create an account with its own zone (operator admins only)')
      .argument('<name>', 'a name for the account'),
  )
    .addOption(env(new Option('--zone <domain>', "the new account's DNS zone").makeOptionMandatory(), 'ZONE'))
    .addOption(
      env(new Option('--member <name>', 'who its first admin token is for').default('admin'), 'MEMBER'),
    )
    .action((name: string, opts: AccountFlags & { zone: string; member: string }) =>
      withAccount(opts, async (ctx) => {
        const a = await ctx.api.createAccount({ name, zone: opts.zone, member: opts.member });
        process.stdout.write(
          [
            `Created account ${name} (${a.accountId}) with zone ${a.zone}.`,
            `  admin ${a.member} (token id ${a.tokenId}): ${a.token}`,
            '',
            `${ONCE} Give it to the account's admin, who runs \`warren login --token <token>\`.`,
            '',
          ].join('\n'),
        );
      }).catch(fail),
    );

  const memberCmd = accountCmd.command('member').description("your account's members");

  accountFlags(
    memberCmd
      .command('add')
      .description('issue an API token for a new member')
      .argument('<member>', 'a name or e-mail'),
  )
    .addOption(
      env(
        new Option('--role <role>', 'admin (may manage members) or member')
          .choices(['admin', 'member'])
          .default('member'),
        'ROLE',
      ),
    )
    .action((member: string, opts: AccountFlags & { role: 'admin' | 'member' }) =>
      withAccount(opts, async (ctx) => {
        const t = await ctx.api.addMember(ctx.accountId, member, opts.role);
        process.stdout.write(
          `Added ${t.member} (${t.role}, token id ${t.tokenId}): ${t.token}\n\n${ONCE} They log in with \`warren login --token <token>\`.\n`,
        );
      }).catch(fail),
    );

  outputFlag(accountFlags(memberCmd.command('list').description("the account's live API tokens"))).action(
    (opts: AccountFlags & { output: 'table' | 'json' }) =>
      withAccount(opts, async (ctx) => {
        const members = await ctx.api.listMembers(ctx.accountId);
        if (opts.output === 'json') printJson(members);
        else process.stdout.write(`${membersText(members)}\n`);
      }).catch(fail),
  );

  accountFlags(
    memberCmd
      .command('remove')
      .description("revoke a member's API token (their cert.pem stops working)")
      .argument('<token-id>', 'from `warren account member list`'),
  ).action((tokenId: string, opts: AccountFlags) =>
    withAccount(opts, async (ctx) => {
      await ctx.api.removeMember(ctx.accountId, tokenId);
      process.stdout.write(`Revoked API token ${tokenId}\n`);
    }).catch(fail),
  );

  const tokenCmd = program.command('token').description('API tokens');
  accountFlags(
    tokenCmd
      .command('roll')
      .description('replace an API token with a new one (default: your own); the old one stops working')
      .argument('[token-id]', 'whose token (admins may roll any in the account)'),
  ).action((tokenId: string | undefined, opts: AccountFlags) =>
    withAccount(opts, async (ctx) => {
      const me = (await ctx.api.verifyToken()).token_id;
      const id = tokenId ?? me;
      const own = id === me;
      const t = await ctx.api.rollToken(ctx.accountId, id);
      const next = own
        ? `${ctx.certFile} still holds the old token, which no longer works. Move it away and log in again:\n` +
          `  mv ${ctx.certFile} ${ctx.certFile}.old\n` +
          `  warren login --edge-api ${ctx.api.apiUrl} --token <the new token>\n`
        : `Give it to ${t.member}: their cert.pem stopped working, and \`warren login --token <token>\` makes a new one.\n`;
      process.stdout.write(
        `Rolled the API token of ${t.member} (${t.role}). New token (id ${t.tokenId}): ${t.token}\n\n${ONCE}\n${next}`,
      );
    }).catch(fail),
  );
}
