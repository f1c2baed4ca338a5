/**
 * The `warren` command. Each subcommand parses its flags (each also readable from a WARREN_*
 * environment variable), builds components and hands them to the edge or agent composition roots.
 * Signal handlers are installed here and only here.
 */

import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Command, Option } from 'commander';
import { Registry } from 'prom-client';
import { type Agent, defaultAgentConfig, startAgent } from '../agent/agent.ts';
import { startHelloWorld } from '../agent/hello-world.ts';
import { requestQuickTunnel } from '../agent/quick-tunnel.ts';
import { defaultEdgeConfig, type EdgeConfig } from '../edge/config.ts';
import type { Edge } from '../edge/edge.ts';
import { systemClock } from '../shared/clock.ts';
import { describeError, WarrenError } from '../shared/errors.ts';
import { createLogger, type Logger } from '../shared/log.ts';
import {
  parseDurationMs,
  parseDurationRange,
  parseHostPort,
  parseOriginUrl,
  parsePositiveInt,
} from './args.ts';

const hostPort = (flag: string) => (v: string) => parseHostPort(v, flag);
const duration = (flag: string) => (v: string) => parseDurationMs(v, flag);
const count = (flag: string, max?: number) => (v: string) => parsePositiveInt(v, flag, max);
const env = (flag: Option, name: string) => flag.env(`WARREN_${name}`);

/** First SIGINT/SIGTERM: graceful. Second: now. */
function onSignals(graceful: () => void, now: () => void): void {
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

function box(lines: string[]): string {
  const width = Math.max(...lines.map((l) => l.length)) + 4;
  const edge = `+${'-'.repeat(width)}+`;
  return [edge, ...lines.map((l) => `|  ${l.padEnd(width - 4)}  |`), edge].join('\n');
}

function fail(err: unknown): never {
  process.stderr.write(`warren: ${describeError(err)}\n`);
  process.exit(err instanceof WarrenError && err.code === 'bad_config' ? 2 : 1);
}

interface EdgeOptions {
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
}

async function runEdge(opts: EdgeOptions, log: Logger): Promise<Edge> {
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
  };
  if (!opts.memory) config.dataDir = opts.dataDir;
  // Loaded here, not at the top: an agent process never needs the edge's LevelDB, fastify or x509.
  const { startEdge } = await import('../edge/edge.ts');
  const { openMemoryEventLog } = await import('../store/memory-event-log.ts');
  const { openLevelEventLog } = await import('../store/level-event-log.ts');
  const eventLog = opts.memory
    ? openMemoryEventLog({ clock: systemClock })
    : await openLevelEventLog({ clock: systemClock, log }, { dataDir: path.join(opts.dataDir, 'events') });
  try {
    return await startEdge({ clock: systemClock, log, registry: new Registry(), eventLog }, config);
  } catch (err) {
    await eventLog.close();
    throw err;
  }
}

interface TunnelOptions {
  url?: URL;
  helloWorld?: boolean;
  edgeApi: string;
  edgeCa?: string;
  haConnections: number;
  gracePeriod: number;
  metrics?: { host: string; port: number };
  retries?: number;
  heartbeatInterval: number;
  heartbeatCount: number;
  connectTimeout: number;
  noTlsVerify?: boolean;
  httpHostHeader?: string;
}

async function runQuickTunnel(
  opts: TunnelOptions,
  log: Logger,
  origin: URL,
): Promise<{ agent: Agent; url: string }> {
  const edgeCaPem = opts.edgeCa ? await readFile(opts.edgeCa, 'utf8') : undefined;
  const quick = await requestQuickTunnel(opts.edgeApi, edgeCaPem ? { edgeCaPem } : {});
  const agent = await startAgent(
    { clock: systemClock, log, registry: new Registry() },
    {
      ...defaultAgentConfig,
      credentials: quick.credentials,
      origin: {
        originUrl: origin,
        connectTimeoutMs: opts.connectTimeout,
        ...(opts.noTlsVerify ? { noTlsVerify: true } : {}),
        ...(opts.httpHostHeader ? { httpHostHeader: opts.httpHostHeader } : {}),
      },
      haConnections: opts.haConnections,
      gracePeriodMs: opts.gracePeriod,
      heartbeatIntervalMs: opts.heartbeatInterval,
      heartbeatMissedLimit: opts.heartbeatCount,
      ...(opts.retries !== undefined ? { maxRetries: opts.retries } : {}),
      ...(opts.metrics ? { metrics: opts.metrics } : {}),
    },
  );
  return { agent, url: quick.url };
}

/** Liveness flags, the same on both ends of a tunnel connection. */
function heartbeatFlags(cmd: Command): Command {
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

function edgeFlags(cmd: Command, defaults: { dataDir: string }): Command {
  return heartbeatFlags(cmd)
    .addOption(
      env(
        new Option('--data-dir <dir>', 'where the edge keeps its event log and keys').default(
          defaults.dataDir,
        ),
        'DATA_DIR',
      ),
    )
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
    );
}

function tunnelFlags(cmd: Command): Command {
  return heartbeatFlags(cmd)
    .addOption(
      env(
        new Option('--url <url>', 'the origin to expose, e.g. http://localhost:3000').argParser((v) =>
          parseOriginUrl(v, '--url'),
        ),
        'URL',
      ),
    )
    .addOption(env(new Option('--hello-world', 'serve the built-in hello-world origin'), 'HELLO_WORLD'))
    .addOption(
      env(
        new Option('--edge-api <url>', "the edge's control API").default('http://127.0.0.1:7845'),
        'EDGE_API',
      ),
    )
    .addOption(
      env(
        new Option('--edge-ca <file>', 'PEM of the edge CA (default: the one the edge API returns)'),
        'EDGE_CA',
      ),
    )
    .addOption(
      env(
        new Option('--ha-connections <n>', 'connections to keep to the edge')
          .argParser(count('--ha-connections', 16))
          .default(1),
        'HA_CONNECTIONS',
      ),
    )
    .addOption(
      env(
        new Option('--grace-period <duration>', 'time for in-flight requests on shutdown')
          .argParser(duration('--grace-period'))
          .default(30_000, '30s'),
        'GRACE_PERIOD',
      ),
    )
    .addOption(
      env(
        new Option('--metrics <host:port>', 'serve /ready, /healthcheck and /metrics here').argParser(
          hostPort('--metrics'),
        ),
        'METRICS',
      ),
    )
    .addOption(
      env(
        new Option(
          '--retries <n>',
          'consecutive failed attempts before giving up (default: keep trying)',
        ).argParser(count('--retries')),
        'RETRIES',
      ),
    )
    .addOption(
      env(
        new Option('--connect-timeout <duration>', 'TCP connect timeout to the origin')
          .argParser(duration('--connect-timeout'))
          .default(30_000, '30s'),
        'CONNECT_TIMEOUT',
      ),
    )
    .addOption(
      env(new Option('--no-tls-verify', 'do not verify an https origin certificate'), 'NO_TLS_VERIFY'),
    )
    .addOption(
      env(new Option('--http-host-header <host>', 'Host header to send to the origin'), 'HTTP_HOST_HEADER'),
    );
}

const logOptions = (cmd: Command, level: string) =>
  cmd
    .addOption(
      env(
        new Option('--loglevel <level>', 'debug, info, warn or error')
          .choices(['debug', 'info', 'warn', 'error'])
          .default(level),
        'LOGLEVEL',
      ),
    )
    .addOption(env(new Option('--logfile <file>', 'write logs to this file instead of stderr'), 'LOGFILE'));

function loggerFrom(opts: { loglevel: string; logfile?: string }, name: string): Logger {
  return createLogger({ level: opts.loglevel, name, ...(opts.logfile ? { destination: opts.logfile } : {}) });
}

export function buildProgram(): Command {
  const program = new Command('warren').description(
    'Warren: expose a local web server through an edge you run yourself.',
  );
  program.showHelpAfterError();

  const edgeCmd = logOptions(
    edgeFlags(program.command('edge').description('run an edge'), {
      dataDir: path.join(os.homedir(), '.warren', 'edge'),
    }),
    'info',
  );
  edgeCmd.action(async (opts: EdgeOptions & { loglevel: string; logfile?: string }) => {
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

  const tunnelCmd = logOptions(
    tunnelFlags(
      program.command('tunnel').description('run a quick tunnel to a local origin (--url or --hello-world)'),
    ),
    'info',
  );
  tunnelCmd.action(async (opts: TunnelOptions & { loglevel: string; logfile?: string }) => {
    const log = loggerFrom(opts, 'agent');
    if (!opts.url && !opts.helloWorld)
      fail(new WarrenError('bad_config', 'give the origin with --url URL, or use --hello-world'));
    const hello = opts.helloWorld ? await startHelloWorld() : undefined;
    const origin = hello ? new URL(hello.url) : opts.url!;
    const { agent, url } = await runQuickTunnel(opts, log, origin).catch(fail);
    onSignals(
      () => void agent.shutdown('graceful'),
      () => void agent.shutdown('now'),
    );
    agent.firstRegistration.then(
      () => process.stdout.write(`${box(['Your quick tunnel is up! Visit it at:', url])}\n`),
      () => {},
    );
    // The agent's timers (backoff, heartbeats) are unref'd so that they never hold a stopping process
    // open. While every connection is down and waiting to redial (say, the edge is restarting), nothing
    // else keeps the event loop alive and node would exit with code 13 (unsettled top-level await)
    // instead of reconnecting. Hold the process open until the agent is done.
    const keepAlive = setInterval(() => {}, 2 ** 30);
    const exit = await agent.done;
    clearInterval(keepAlive);
    await hello?.close();
    if (exit.error) process.stderr.write(`warren: ${describeError(exit.error)}\n`);
    process.exit(exit.exitCode);
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
  devCmd.action(async (opts: EdgeOptions & { loglevel: string; logfile?: string }) => {
    const log = loggerFrom(opts, 'warren');
    const edge = await runEdge(opts, log).catch(fail);
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
  return program;
}

await buildProgram().parseAsync(process.argv).catch(fail);
