/**
 * What every subcommand module shares: flag helpers (each flag also reads a WARREN_* variable),
 * the logger flags, signal handling, the URL box and the one way the command fails. Kept apart from
 * main.ts because main.ts runs the program when it is loaded.
 */
import { type Command, Option } from 'commander';
import { describeError, WarrenError } from '../shared/errors.ts';
import { createLogger, type Logger } from '../shared/log.ts';
import { parseDurationMs, parseHostPort, parsePositiveInt } from './args.ts';

export const hostPort = (flag: string) => (v: string) => parseHostPort(v, flag);
export const duration = (flag: string) => (v: string) => parseDurationMs(v, flag);
export const count = (flag: string, max?: number) => (v: string) => parsePositiveInt(v, flag, max);
export const env = (flag: Option, name: string) => flag.env(`WARREN_${name}`);

/** Where the control API is when neither a flag nor cert.pem says (the edge's default listener). */
export const DEFAULT_EDGE_API = 'http://127.0.0.1:7845';

/** First SIGINT/SIGTERM: graceful. Second: now. */
export function onSignals(graceful: () => void, now: () => void): void {
  let seen = 0;
  const handler = (signal: NodeJS.Signals) => {
    seen += 1;
    if (seen === 1) {
      process.stderr.write(`\n${signal}: shutting down gracefully (send it again to stop at once)\n`);
      graceful();
    } else {
      process.stderr.write(`${signal}: stopping now\n`);
      now();
    }
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}

export function box(lines: string[]): string {
  const width = Math.max(...lines.map((l) => l.length)) + 4;
  const edge = `+${'-'.repeat(width)}+`;
  return [edge, ...lines.map((l) => `|  ${l.padEnd(width - 4)}  |`), edge].join('\n');
}

/** Exit 2 for a usage or configuration mistake, 1 for everything else. */
export function fail(err: unknown): never {
  process.stderr.write(`warren: ${describeError(err)}\n`);
  process.exit(err instanceof WarrenError && err.code === 'bad_config' ? 2 : 1);
}

export interface LogOptions {
  loglevel: string;
  logfile?: string;
}

export function logOptions(cmd: Command, level: string): Command {
  return cmd
    .addOption(
      env(
        new Option('--loglevel <level>', 'debug, info, warn or error')
          .choices(['debug', 'info', 'warn', 'error'])
          .default(level),
        'LOGLEVEL',
      ),
    )
    .addOption(env(new Option('--logfile <file>', 'write logs to this file instead of stderr'), 'LOGFILE'));
}

export function loggerFrom(opts: LogOptions, name: string): Logger {
  return createLogger({ level: opts.loglevel, name, ...(opts.logfile ? { destination: opts.logfile } : {}) });
}

/** Liveness flags, the same on both ends of a tunnel connection. */
export function heartbeatFlags(cmd: Command): Command {
  return cmd
    .addOption(
      env(
        new Option('--heartbeat-interval <duration>', 'PING interval on tunnel connections')
          .argParser(duration('--heartbeat-interval'))
          .default(5000, '5s'),
        'HEARTBEAT_INTERVAL',
      ),
    )
    .addOption(
      env(
        new Option('--heartbeat-count <n>', 'silent intervals before a connection is dead')
          .argParser(count('--heartbeat-count', 100))
          .default(3),
        'HEARTBEAT_COUNT',
      ),
    );
}

/** `--output json` for commands that print tables. */
export function outputFlag(cmd: Command): Command {
  return cmd.addOption(
    env(
      new Option('--output <format>', 'table for people, json for scripts')
        .choices(['table', 'json'])
        .default('table'),
      'OUTPUT',
    ),
  );
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/**
 * For a command that has both its own action and subcommands (`edge` and `edge init`, `tunnel` and
 * `tunnel run`): its options stop at the subcommand's name, so `warren tunnel --url X run` would
 * silently drop `--url`. Refuse that instead of running without the flag.
 */
export function rejectParentFlags(sub: Command): void {
  sub.hook('preAction', (_hooked, actionCommand) => {
    if (actionCommand !== sub) return;
    // Every ancestor but the program itself, which has no flags of its own.
    for (let parent = sub.parent; parent?.parent; parent = parent.parent) {
      const p = parent;
      const given = p.options.filter((o) => p.getOptionValueSource(o.attributeName()) === 'cli');
      if (given.length === 0) continue;
      const where = commandPath(sub);
      fail(
        new WarrenError(
          'bad_config',
          `${given.map((o) => o.long ?? o.flags).join(', ')} must come after \`warren ${where}\`, e.g. \`warren ${where} ${given[0]!.long ?? ''} …\``,
        ),
      );
    }
  });
}

/** `tunnel route dns` for that command. */
function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c?.parent; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/** A command with an action and subcommands says "unknown command" for a word that is neither. */
export function rejectStrayOperands(cmd: Command): void {
  // Hooks also run for the subcommands' actions: only this command's own action is checked.
  cmd.allowExcessArguments(true).hook('preAction', (_hooked, actionCommand) => {
    if (actionCommand === cmd && cmd.args.length > 0) {
      fail(
        new WarrenError(
          'bad_config',
          `unknown command \`warren ${cmd.name()} ${cmd.args[0]}\`; see \`warren ${cmd.name()} --help\``,
        ),
      );
    }
  });
}
