/**
 * The `warren` command: the program assembled from one module per subcommand group (edge, tunnel,
 * tunnel management, login, account, audit). Each subcommand parses its flags (each also readable
 * from a WARREN_* environment variable) and hands components to the edge or agent composition roots
 * or to the control API client. Signal handlers are installed by the long-running commands only.
 */
import { Command } from 'commander';
import { registerAccountCommands } from './account.ts';
import { registerAuditCommand } from './audit.ts';
import { fail } from './common.ts';
import { registerEdgeCommands } from './edge.ts';
import { registerLoginCommand } from './login.ts';
import { registerTunnelCommands } from './tunnel.ts';
import { registerTunnelManageCommands } from './tunnel-manage.ts';

export function buildProgram(): Command {
  const program = new Command('warren')
    .description('Warren: expose a local web server through an edge you run yourself.')
    // `edge` and `tunnel` have actions of their own and subcommands with flags of the same names:
    // a flag belongs to the command it follows, so `tunnel run --url X` reaches `run`.
    .enablePositionalOptions();
  program.showHelpAfterError();
  registerEdgeCommands(program);
  const tunnelCmd = registerTunnelCommands(program);
  registerTunnelManageCommands(tunnelCmd);
  registerLoginCommand(program);
  registerAccountCommands(program);
  registerAuditCommand(program);
  return program;
}

await buildProgram().parseAsync(process.argv).catch(fail);
