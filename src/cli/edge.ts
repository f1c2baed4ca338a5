/** `warren edge`, `warren edge init` and `warren dev` (an edge, the hello-world origin and a quick tunnel). */
import os from 'node:os';
import path from 'node:path';
import { type Command, Option } from 'commander';
import { defaultEdgeConfig, type EdgeConfig } from '../edge/config.ts';
import type { NewAccount } from '../edge/control-plane.ts';
import type { Edge } from '../edge/edge.ts';
import { systemClock } from '../shared/clock.ts';
import { isWarrenError, WarrenError } from '../shared/errors.ts';
import type { Logger } from '../shared/log.ts';
import type { EventLog } from '../store/event-log.ts';
import { parseDurationRange } from './args.ts';
import {
  box,
  count,
  duration,
  env,
  fail,
  heartbeatFlags,
  hostPort,
  type LogOptions,
  loggerFrom,
  logOptions,
  onSignals,
  rejectParentFlags,
  rejectStrayOperands,
} from './common.ts';
import { runQuickTunnel } from './tunnel.ts';

interface EdgeOptions extends LogOptions {
  dataDir: string;
  memory?: boolean;
  listen: { host: string; port: number };
  tunnelListen: { host: string; port: number };
  apiListen: { host: string; port: number };
  pop: string;
  zone: string;
  heartbeatInterval: number;
  heartbeatCount: number;
  drainTimeout: number;
  dnsListen: { host: string; port: number } | false;
  edgeDomain: string;
  accountTunnelLimit: number;
  dnsCleanupWindow: { minMs: number; maxMs: number };
  visitorHold: number;
  visitorHoldMax: number;
  snapshots: boolean;
  snapshotEvery: number;
}

interface InitOptions extends LogOptions {
  dataDir: string;
  account: string;
  zone: string;
  member: string;
}

const defaultDataDir = () => path.join(os.homedir(), '.warren', 'edge');

/** The LevelDB log in `<dataDir>/events`. Loaded lazily: an agent process never needs classic-level. */
async function openEventLog(dataDir: string, log: Logger): Promise<EventLog> {
  const { openLevelEventLog } = await import('../store/level-event-log.ts');
  return openLevelEventLog({ clock: systemClock, log }, { dataDir });
}

export async function runEdge(opts: EdgeOptions, log: Logger): Promise<Edge> {
  const config: EdgeConfig = {
    ...defaultEdgeConfig,
    pop: opts.pop,
    zone: opts.zone,
    visitor: opts.listen,
    tunnel: opts.tunnelListen,
    api: opts.apiListen,
    heartbeatIntervalMs: opts.heartbeatInterval,
    heartbeatMissedLimit: opts.heartbeatCount,
    drainTimeoutMs: opts.drainTimeout,
    dns: opts.dnsListen === false ? null : opts.dnsListen,
    edgeDomain: opts.edgeDomain,
    accountTunnelLimit: opts.accountTunnelLimit,
    dnsCleanupWindowMs: opts.dnsCleanupWindow,
    visitorHold: {
      ...defaultEdgeConfig.visitorHold,
      timeoutMs: opts.visitorHold,
      maxTotal: opts.visitorHoldMax,
      maxPerTunnel: Math.min(defaultEdgeConfig.visitorHold.maxPerTunnel, opts.visitorHoldMax),
    },
    snapshots: opts.snapshots,
    snapshotEveryEvents: opts.snapshotEvery,
  };
  if (!opts.memory) config.dataDir = opts.dataDir;
  // Loaded here, not at the top: an agent process never needs the edge's LevelDB, fastify or x509.
  const { startEdge } = await import('../edge/edge.ts');
  const { Registry } = await import('prom-client');
  const { openMemoryEventLog } = await import('../store/memory-event-log.ts');
  const eventLog = opts.memory
    ? openMemoryEventLog({ clock: systemClock })
    : await openEventLog(opts.dataDir, log);
  try {
    return await startEdge({ clock: systemClock, log, registry: new Registry(), eventLog }, config);
  } catch (err) {
    await eventLog.close();
    throw err;
  }
}

/** `warren edge init`: the operator account, its zone and first admin token, straight into the log. */
async function initEdge(opts: InitOptions, log: Logger): Promise<void> {
  const { ControlPlane } = await import('../edge/control-plane.ts');
  const eventLog = await openEventLog(opts.dataDir, log).catch((err: unknown) => {
    if (!isWarrenError(err, 'data_dir_locked')) throw err;
    throw new WarrenError(
      'data_dir_locked',
      `the data directory ${opts.dataDir} is in use, most likely by a running \`warren edge\`: stop the edge first, then run \`warren edge init\` again`,
      { cause: err },
    );
  });
  let created: NewAccount;
  try {
    const cp = await ControlPlane.open(
      { clock: systemClock, log, eventLog },
      {
        edgeDomain: defaultEdgeConfig.edgeDomain,
        accountTunnelLimit: defaultEdgeConfig.accountTunnelLimit,
        dnsCleanupWindowMs: defaultEdgeConfig.dnsCleanupWindowMs,
      },
    );
    try {
      created = await cp.initialize({ accountName: opts.account, zone: opts.zone, member: opts.member });
    } finally {
      cp.close();
    }
  } finally {
    await eventLog.close();
  }
  process.stdout.write(
    [
      `Initialised the edge in ${opts.dataDir}.`,
      '',
      `  account:   ${opts.account} (${created.accountId})`,
      `  zone:      ${created.zone}`,
      `  member:    ${created.member} (admin, token id ${created.tokenId})`,
      `  API token: ${created.token}`,
      '',
      'This token is shown only now and is not stored anywhere: the edge keeps only its hash. Keep it safe.',
      `Next: start the edge (\`warren edge --data-dir ${opts.dataDir}\`), then \`warren login --token <token>\`.`,
      '',
    ].join('\n'),
  );
}

function dataDirFlag(cmd: Command, dflt: string): Command {
  return cmd.addOption(
    env(
      new Option('--data-dir <dir>', 'where the edge keeps its event log and keys').default(dflt),
      'DATA_DIR',
    ),
  );
}

function edgeFlags(cmd: Command, defaults: { dataDir: string }): Command {
  return dataDirFlag(heartbeatFlags(cmd), defaults.dataDir)
    .addOption(
      env(new Option('--memory', 'keep the event log in memory only (nothing survives a restart)'), 'MEMORY'),
    )
    .addOption(
      env(
        new Option('--listen <host:port>', 'visitor HTTP listener')
          .argParser(hostPort('--listen'))
          .default(defaultEdgeConfig.visitor, '127.0.0.1:8080'),
        'LISTEN',
      ),
    )
    .addOption(
      env(
        new Option('--tunnel-listen <host:port>', 'tunnel (TLS) listener')
          .argParser(hostPort('--tunnel-listen'))
          .default(defaultEdgeConfig.tunnel, '127.0.0.1:7844'),
        'TUNNEL_LISTEN',
      ),
    )
    .addOption(
      env(
        new Option('--api-listen <host:port>', 'control API listener')
          .argParser(hostPort('--api-listen'))
          .default(defaultEdgeConfig.api, '127.0.0.1:7845'),
        'API_LISTEN',
      ),
    )
    .addOption(
      env(
        new Option('--pop <name>', 'point-of-presence name of this edge').default(defaultEdgeConfig.pop),
        'POP',
      ),
    )
    .addOption(
      env(
        new Option('--zone <domain>', 'zone for quick-tunnel hostnames').default(defaultEdgeConfig.zone),
        'ZONE',
      ),
    )
    .addOption(
      env(
        new Option('--drain-timeout <duration>', 'how long agents get to move on shutdown')
          .argParser(duration('--drain-timeout'))
          .default(15_000, '15s'),
        'DRAIN_TIMEOUT',
      ),
    )
    .addOption(
      env(
        new Option('--dns-listen <host:port>', 'DNS listener, UDP and TCP')
          .argParser(hostPort('--dns-listen'))
          .default(defaultEdgeConfig.dns, '127.0.0.1:5300'),
        'DNS_LISTEN',
      ),
    )
    .addOption(env(new Option('--no-dns-listen', 'do not serve DNS'), 'NO_DNS'))
    .addOption(
      env(
        new Option(
          '--edge-domain <domain>',
          'domain of tunnel CNAME targets (<id>.tunnels.<domain>)',
        ).default(defaultEdgeConfig.edgeDomain),
        'EDGE_DOMAIN',
      ),
    )
    .addOption(
      env(
        new Option('--account-tunnel-limit <n>', 'tunnels one account may have connected at once')
          .argParser(count('--account-tunnel-limit'))
          .default(defaultEdgeConfig.accountTunnelLimit),
        'ACCOUNT_TUNNEL_LIMIT',
      ),
    )
    .addOption(
      env(
        new Option(
          '--dns-cleanup-window <min-max>',
          "when an inactive tunnel's automatic DNS records are deleted, e.g. 24h-48h",
        )
          .argParser((v) => parseDurationRange(v, '--dns-cleanup-window'))
          .default(defaultEdgeConfig.dnsCleanupWindowMs, '24h-48h'),
        'DNS_CLEANUP_WINDOW',
      ),
    )
    .addOption(
      env(
        new Option(
          '--visitor-hold <duration>',
          'how long a request waits for a tunnel that just lost its connections to come back (0: answer 530 at once)',
        )
          .argParser(duration('--visitor-hold'))
          .default(defaultEdgeConfig.visitorHold.timeoutMs, '5s'),
        'VISITOR_HOLD',
      ),
    )
    .addOption(
      env(
        new Option('--visitor-hold-max <n>', 'requests held at once across all tunnels; more get 530')
          .argParser(count('--visitor-hold-max'))
          .default(defaultEdgeConfig.visitorHold.maxTotal),
        'VISITOR_HOLD_MAX',
      ),
    )
    .addOption(
      env(
        new Option(
          '--no-snapshots',
          'fold the whole event log at every start and save no directory snapshot',
        ),
        'NO_SNAPSHOTS',
      ),
    )
    .addOption(
      env(
        new Option('--snapshot-every <n>', 'events folded between two background directory snapshots')
          .argParser(count('--snapshot-every'))
          .default(defaultEdgeConfig.snapshotEveryEvents),
        'SNAPSHOT_EVERY',
      ),
    );
}

export function registerEdgeCommands(program: Command): void {
  const edgeCmd = logOptions(
    edgeFlags(program.command('edge').description('run an edge'), { dataDir: defaultDataDir() }),
    'info',
  )
    // `edge init` has flags of the same names; without this, `edge` would take them.
    .enablePositionalOptions();
  rejectStrayOperands(edgeCmd);
  edgeCmd.action(async (opts: EdgeOptions) => {
    const log = loggerFrom(opts, 'edge');
    const edge = await runEdge(opts, log).catch(fail);
    process.stdout.write(
      `Warren edge "${opts.pop}" is up.\n  visitors: http://${opts.listen.host}:${edge.visitorPort}\n  tunnels:  ${opts.tunnelListen.host}:${edge.tunnelPort} (TLS)\n  API:      ${edge.apiUrl}\n  DNS:      ${opts.dnsListen ? `${opts.dnsListen.host}:${edge.dnsPort} (UDP, TCP)` : 'off'}\n`,
    );
    onSignals(
      () => void edge.close().then(() => process.exit(0), fail),
      () => process.exit(1),
    );
  });

  const initCmd = logOptions(
    dataDirFlag(
      edgeCmd
        .command('init')
        .description('create the first account, its zone and an admin API token (the edge must be stopped)'),
      defaultDataDir(),
    ),
    'warn',
  )
    .addOption(
      env(new Option('--account <name>', 'name of the operator account').default('operator'), 'ACCOUNT'),
    )
    .addOption(
      env(new Option('--zone <domain>', "the account's DNS zone").default(defaultEdgeConfig.zone), 'ZONE'),
    )
    .addOption(
      env(
        new Option('--member <name>', 'who the admin token is for (a name or e-mail)').default('admin'),
        'MEMBER',
      ),
    );
  rejectParentFlags(initCmd);
  initCmd.action(async (opts: InitOptions) => {
    await initEdge(opts, loggerFrom(opts, 'edge')).catch(fail);
  });

  const devCmd = logOptions(
    edgeFlags(
      program
        .command('dev')
        .description('run an edge, the hello-world origin and a tunnel to it (npm start)'),
      { dataDir: path.resolve('.warren-dev') },
    ),
    'warn',
  );
  devCmd.action(async (opts: EdgeOptions) => {
    const log = loggerFrom(opts, 'warren');
    const edge = await runEdge(opts, log).catch(fail);
    const { startHelloWorld } = await import('../agent/hello-world.ts');
    const hello = await startHelloWorld();
    const quick = await runQuickTunnel(
      {
        edgeApi: edge.apiUrl,
        haConnections: 1,
        gracePeriod: 5000,
        heartbeatInterval: opts.heartbeatInterval,
        heartbeatCount: opts.heartbeatCount,
        connectTimeout: 30_000,
      },
      log,
      new URL(hello.url),
    ).catch(fail);
    await quick.agent.firstRegistration.catch(fail);
    process.stdout.write(
      `${box([
        'Warren is running: an edge, the hello-world origin and a tunnel to it.',
        '',
        `Open  ${quick.url}`,
        `or    curl ${quick.url}`,
        '',
        `Edge API ${edge.apiUrl}  ·  data in ${opts.memory ? '(memory)' : opts.dataDir}`,
        'Press Ctrl-C to stop.',
      ])}\n`,
    );
    const stop = async (mode: 'graceful' | 'now') => {
      await quick.agent.shutdown(mode);
      await edge.close();
      await hello.close();
      process.exit(0);
    };
    onSignals(
      () => void stop('graceful').catch(fail),
      () => process.exit(1),
    );
  });
}
