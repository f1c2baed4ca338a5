/** Two warren/1 sessions joined by a real TCP connection on loopback. */

import { once } from 'node:events';
import net from 'node:net';
import { type Clock, systemClock } from '../../src/shared/clock.ts';
import { silentLogger } from '../../src/shared/log.ts';
import { MuxSession, type SessionInit } from '../../src/transport/session.ts';

export interface MuxPair {
  edge: MuxSession;
  agent: MuxSession;
  close(): Promise<void>;
}

export async function createMuxPair(
  opts: { clock?: Clock; edge?: Partial<SessionInit>; agent?: Partial<SessionInit> } = {},
): Promise<MuxPair> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  const accepted = once(server, 'connection') as Promise<[net.Socket]>;
  const client = net.connect(port, '127.0.0.1');
  await once(client, 'connect');
  const [serverSide] = await accepted;
  server.close();
  const components = { clock: opts.clock ?? systemClock, log: silentLogger };
  const edge = new MuxSession(serverSide, components, { role: 'edge', heartbeatIntervalMs: 0, ...opts.edge });
  const agent = new MuxSession(client, components, { role: 'agent', heartbeatIntervalMs: 0, ...opts.agent });
  return {
    edge,
    agent,
    async close() {
      edge.destroy();
      agent.destroy();
      await Promise.all([edge.closed, agent.closed]);
    },
  };
}
