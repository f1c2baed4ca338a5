/**
 * The agent commands: `warren tunnel --url URL` (a quick tunnel: random hostname, no account) and
 * `warren tunnel run [NAME|ID]` (a named tunnel, with credentials from --token, --credentials-file or
 * the `<tunnel-id>.json` beside cert.pem).
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { type Command, Option } from 'commander';
import type { Agent, AgentConfig } from '../agent/agent.ts';
import {
  decodeTunnelToken,
  type NamedTunnelCredentials,
  parseCredentialsFile,
} from '../agent/credentials.ts';
import type { HelloWorldServer } from '../agent/hello-world.ts';
import type { AgentConnection, EdgeEndpoint, TunnelCredentials } from '../agent/tunnel-connection.ts';
import { describeError, WarrenError } from '../shared/errors.ts';
import type { Logger } from '../shared/log.ts';
import {
  accountFlags,
  openAccount,
  originCertPath,
  withAccount,
  withLoginAdvice,
} from './account-context.ts';
import { parseHostPort, parseOriginUrl } from './args.ts';
import {
  box,
  count,
  DEFAULT_EDGE_API,
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

/** What both agent commands take: the origin and how the agent behaves. */
interface AgentOptions {
  url?: URL;
  helloWorld?: boolean;
  haConnections: number;
  gracePeriod: number;
  metrics?: { host: string; port: number };
  retries?: number;
  heartbeatInterval: number;
  heartbeatCount: number;
  connectTimeout: number;
  /** `--no-tls-verify` sets this to false (commander's negated flag). */
  tlsVerify?: boolean;
  httpHostHeader?: string;
}

interface QuickTunnelOptions extends AgentOptions {
  edgeApi: string;
  edgeCa?: string;
}

interface RunOptions extends AgentOptions, LogOptions {
  credentialsFile?: string;
  token?: string;
  hostname?: string;
  overwriteDns?: boolean;
  origincert?: string;
  edgeApi?: string;
  edgeCa?: string;
  /** Every `--edge`, in order (`WARREN_EDGE` may list several, comma-separated). */
  edge?: { host: string; port: number }[];
  edgeSrv?: string;
  dnsResolver?: { host: string; port: number };
}

/**
 * `--edge` given more than once collects every value; one value (and `WARREN_EDGE`) may also list
 * several, comma-separated.
 */
function collectEdges(value: string, previous: { host: string; port: number }[] | undefined) {
  const parsed = value
    .split(',')
    .map((part) => part.trim())
    .filter((part) => part.length > 0)
    .map((part) => parseHostPort(part, '--edge'));
  if (parsed.length === 0) throw new WarrenError('bad_config', `--edge: "${value}" names no host:port`);
  return [...(previous ?? []), ...parsed];
}

/**
 * The endpoints `tunnel run` dials: every `--edge`, else the ones the `--edge-srv` record lists, else
 * none (the agent then dials the one in the credentials). Either way the credentials' server name is
 * kept: it is the edge's certificate name, not an address.
 */
async function edgeEndpoints(
  opts: RunOptions,
  credentials: TunnelCredentials,
): Promise<EdgeEndpoint[] | undefined> {
  const { serverName } = credentials.edge;
  if (opts.edge && opts.edge.length > 0)
    return opts.edge.map(({ host, port }) => ({ host, port, serverName }));
  if (!opts.edgeSrv) return undefined;
  const { discoverEdgeEndpoints } = await import('../agent/tunnel-connection.ts');
  return discoverEdgeEndpoints(opts.edgeSrv, {
    serverName,
    ...(opts.dnsResolver ? { resolver: opts.dnsResolver } : {}),
  });
}

/** `tunnel run` keeps as many connections as the agent does by default; a quick tunnel one. */
const RUN_HA_CONNECTIONS = 4;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Starts the agent. Its modules (xstate, prom-client, the transport) are loaded only here, so the
 * management commands, which never run an agent, start faster.
 */
async function launchAgent(
  opts: AgentOptions,
  log: Logger,
  credentials: TunnelCredentials,
  origin: URL,
  edges?: EdgeEndpoint[],
): Promise<Agent> {
  const [{ startAgent, defaultAgentConfig }, { Registry }, { systemClock }] = await Promise.all([
    import('../agent/agent.ts'),
    import('prom-client'),
    import('../shared/clock.ts'),
  ]);
  const config: AgentConfig = {
    ...defaultAgentConfig,
    credentials,
    ...(edges ? { edges } : {}),
    origin: {
      originUrl: origin,
      connectTimeoutMs: opts.connectTimeout,
      ...(opts.tlsVerify === false ? { noTlsVerify: true } : {}),
      ...(opts.httpHostHeader ? { httpHostHeader: opts.httpHostHeader } : {}),
    },
    haConnections: opts.haConnections,
    gracePeriodMs: opts.gracePeriod,
    heartbeatIntervalMs: opts.heartbeatInterval,
    heartbeatMissedLimit: opts.heartbeatCount,
    ...(opts.retries !== undefined ? { maxRetries: opts.retries } : {}),
    ...(opts.metrics ? { metrics: opts.metrics } : {}),
  };
  return startAgent({ clock: systemClock, log, registry: new Registry() }, config);
}

export async function runQuickTunnel(
  opts: QuickTunnelOptions,
  log: Logger,
  origin: URL,
): Promise<{ agent: Agent; url: string }> {
  const { requestQuickTunnel } = await import('../agent/quick-tunnel.ts');
  const edgeCaPem = opts.edgeCa ? await readFile(opts.edgeCa, 'utf8') : undefined;
  const quick = await requestQuickTunnel(opts.edgeApi, edgeCaPem ? { edgeCaPem } : {});
  const agent = await launchAgent(opts, log, quick.credentials, origin);
  return { agent, url: quick.url };
}

/** The origin from --url, or a hello-world server started for the purpose. */
async function originOf(opts: AgentOptions): Promise<{ origin: URL; hello?: HelloWorldServer }> {
  if (!opts.helloWorld) return { origin: opts.url! };
  const { startHelloWorld } = await import('../agent/hello-world.ts');
  const hello = await startHelloWorld();
  return { origin: new URL(hello.url), hello };
}

/** Serves until a signal or a fatal error, then exits with the agent's code. */
async function serveUntilDone(
  agent: Agent,
  hello: HelloWorldServer | undefined,
  announce: (first: AgentConnection) => void,
): Promise<never> {
  onSignals(
    () => void agent.shutdown('graceful'),
    () => void agent.shutdown('now'),
  );
  agent.firstRegistration.then(announce, () => {});
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
}

async function readCredentialsFile(file: string, advice: string): Promise<NamedTunnelCredentials> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new WarrenError(
      'bad_config',
      code === 'ENOENT'
        ? `no tunnel credentials file at ${file}; ${advice}`
        : `cannot read the tunnel credentials file ${file}: ${(err as Error).message}`,
      { cause: err },
    );
  }
  return parseCredentialsFile(text, file);
}

/** --token, else --credentials-file, else the NAME or ID's `<tunnel-id>.json` beside cert.pem. */
async function resolveCredentials(
  ref: string | undefined,
  opts: RunOptions,
): Promise<NamedTunnelCredentials> {
  let creds: NamedTunnelCredentials;
  if (opts.token) creds = decodeTunnelToken(opts.token);
  else if (opts.credentialsFile) {
    creds = await readCredentialsFile(path.resolve(opts.credentialsFile), 'check --credentials-file');
  } else if (!ref) {
    throw new WarrenError(
      'bad_config',
      'say which tunnel to run: a NAME or ID, --credentials-file FILE or --token TOKEN (`warren tunnel --url URL` runs a quick tunnel instead)',
    );
  } else {
    const advice = `pass --credentials-file, or --token with the token from \`warren tunnel token ${ref}\``;
    // An ID needs no API call (nor cert.pem): its file is found by name.
    if (UUID.test(ref)) {
      const file = path.join(path.dirname(originCertPath(opts.origincert)), `${ref.toLowerCase()}.json`);
      return readCredentialsFile(file, advice);
    }
    const ctx = await openAccount(opts);
    const tunnel = await ctx.api.getTunnel(ctx.accountId, ref).catch((err: unknown) => {
      throw withLoginAdvice(err, ctx.certFile);
    });
    return readCredentialsFile(path.join(path.dirname(ctx.certFile), `${tunnel.id}.json`), advice);
  }
  // Both given: they must agree, or the user is running a tunnel they did not mean to.
  if (
    ref &&
    (UUID.test(ref) ? ref.toLowerCase() !== creds.tunnelId : creds.tunnelName && ref !== creds.tunnelName)
  ) {
    throw new WarrenError(
      'bad_config',
      `the credentials are for tunnel ${creds.tunnelName ?? creds.tunnelId}, not ${ref}; drop the NAME or pass the matching credentials`,
    );
  }
  return creds;
}

/** Flags of both agent commands; `haConnections` differs (a quick tunnel keeps one). */
function agentFlags(cmd: Command, defaults: { haConnections: number }): Command {
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
        new Option(
          '--edge-ca <file>',
          'PEM of the edge CA (default: the one the edge gave with the credentials)',
        ),
        'EDGE_CA',
      ),
    )
    .addOption(
      env(
        new Option('--ha-connections <n>', 'connections to keep to the edge')
          .argParser(count('--ha-connections', 16))
          .default(defaults.haConnections),
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

/** `warren tunnel` itself (the quick tunnel) and `warren tunnel run`; returns `tunnel` for the rest. */
export function registerTunnelCommands(program: Command): Command {
  const tunnelCmd = logOptions(
    agentFlags(
      program
        .command('tunnel')
        .description(
          'run a quick tunnel to a local origin (--url or --hello-world), or manage named tunnels (see the commands below)',
        ),
      { haConnections: 1 },
    ),
    'info',
  )
    .addOption(
      env(new Option('--edge-api <url>', "the edge's control API").default(DEFAULT_EDGE_API), 'EDGE_API'),
    )
    // The subcommands reuse these flag names; without this, `tunnel` would take them.
    .enablePositionalOptions();
  rejectStrayOperands(tunnelCmd);
  tunnelCmd.action(async (opts: QuickTunnelOptions & LogOptions) => {
    if (!opts.url && !opts.helloWorld) {
      fail(
        new WarrenError(
          'bad_config',
          'give the origin with --url URL, or use --hello-world (`warren tunnel --help` lists the named-tunnel commands)',
        ),
      );
    }
    const log = loggerFrom(opts, 'agent');
    const { origin, hello } = await originOf(opts);
    const { agent, url } = await runQuickTunnel(opts, log, origin).catch(fail);
    await serveUntilDone(agent, hello, () =>
      process.stdout.write(`${box(['Your quick tunnel is up! Visit it at:', url])}\n`),
    );
  });

  const runCmd = logOptions(
    accountFlags(
      agentFlags(
        tunnelCmd
          .command('run')
          .description(
            'run a named tunnel: credentials from --token, --credentials-file, or NAME|ID beside cert.pem',
          )
          .argument('[tunnel]', 'name or ID of the tunnel'),
        { haConnections: RUN_HA_CONNECTIONS },
      ),
    ),
    'info',
  )
    .addOption(
      env(
        new Option('--credentials-file <file>', 'the <tunnel-id>.json from `warren tunnel create`'),
        'CREDENTIALS_FILE',
      ),
    )
    .addOption(
      env(new Option('--token <token>', 'the tunnel token from `warren tunnel token NAME`'), 'TUNNEL_TOKEN'),
    )
    .addOption(
      env(
        new Option('--hostname <host>', 'route this hostname to the tunnel first (needs cert.pem)'),
        'HOSTNAME',
      ),
    )
    .addOption(
      env(
        new Option('--overwrite-dns', 'with --hostname: replace a record that points elsewhere'),
        'OVERWRITE_DNS',
      ),
    )
    .addOption(
      env(
        new Option(
          '--edge <host:port>',
          "the edge's tunnel listener; repeat it (or list them, comma-separated) for several (default: the one in the credentials)",
        ).argParser(collectEdges),
        'EDGE',
      ),
    )
    .addOption(
      env(
        new Option(
          '--edge-srv <name>',
          "find the edge's tunnel listeners in its SRV record: the edge's domain (looked up as _warren._tcp.<name>) or a whole SRV name",
        ).conflicts('edge'),
        'EDGE_SRV',
      ),
    )
    .addOption(
      env(
        new Option(
          '--dns-resolver <host:port>',
          "the DNS server --edge-srv asks, e.g. the edge's own (default: the system resolvers)",
        ).argParser(hostPort('--dns-resolver')),
        'DNS_RESOLVER',
      ),
    );
  rejectParentFlags(runCmd);
  runCmd.action(async (ref: string | undefined, opts: RunOptions) => {
    const log = loggerFrom(opts, 'agent');
    if (!opts.url && !opts.helloWorld) {
      fail(new WarrenError('bad_config', 'give the origin with --url URL, or use --hello-world'));
    }
    const creds = await resolveCredentials(ref, opts).catch(fail);
    if (opts.edgeCa) creds.edgeCaPem = await readFile(opts.edgeCa, 'utf8').catch(fail);
    const edges = await edgeEndpoints(opts, creds).catch(fail);
    if (edges) log.info({ edges: edges.map((e) => `${e.host}:${e.port}`) }, 'edge endpoints');
    const name = creds.tunnelName ? `${creds.tunnelName} (${creds.tunnelId})` : creds.tunnelId;
    if (opts.hostname) {
      const hostname = opts.hostname;
      // Origin `auto`: the edge deletes it once the tunnel has been inactive for its cleanup window.
      await withAccount(opts, (ctx) =>
        ctx.api.routeDns(ctx.accountId, creds.tunnelId, {
          hostname,
          overwrite: opts.overwriteDns === true,
          origin: 'auto',
        }),
      ).catch(fail);
      process.stdout.write(
        `Added CNAME ${hostname} which will route to this tunnel (tunnel ID ${creds.tunnelId})\n`,
      );
    }
    const { origin, hello } = await originOf(opts);
    const agent = await launchAgent(opts, log, creds, origin, edges).catch(fail);
    await serveUntilDone(agent, hello, (first) =>
      process.stdout.write(
        `Tunnel ${name} is connected to the edge (PoP ${first.pop}), serving ${origin.href}\n`,
      ),
    );
  });
  return tunnelCmd;
}
