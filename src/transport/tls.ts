/**
 * TLS for the tunnel: TLS 1.3 only, ALPN `warren/1`, and on the agent the edge CA verified — never
 * `rejectUnauthorized: false`.
 */
import tls from 'node:tls';
import { WarrenError } from '../shared/errors.ts';
import { ALPN } from './messages.ts';

export interface DialOptions {
  host: string;
  port: number;
  /** Name the edge certificate must carry; also sent as SNI. */
  servername: string;
  /** PEM of the edge CA that signs the edge's tunnel certificate. */
  caPem: string;
  timeoutMs: number;
  signal?: AbortSignal;
}

const VERIFY_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_SIGNATURE_FAILURE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
]);

/** Dials the edge's tunnel port. Resolves once TLS is up and ALPN agreed on warren/1. */
export function dialEdge(opts: DialOptions): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted)
      return reject(new WarrenError('dial_failed', 'dial aborted', { retryable: true }));
    const socket = tls.connect({
      host: opts.host,
      port: opts.port,
      servername: opts.servername,
      ca: opts.caPem,
      minVersion: 'TLSv1.3',
      ALPNProtocols: [ALPN],
      rejectUnauthorized: true,
    });
    const timer = setTimeout(
      () =>
        fail(
          new WarrenError(
            'handshake_timeout',
            `no TLS handshake with ${opts.host}:${opts.port} within ${opts.timeoutMs} ms`,
            { retryable: true },
          ),
        ),
      opts.timeoutMs,
    );
    const onAbort = () => fail(new WarrenError('dial_failed', 'dial aborted', { retryable: true }));
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const cleanup = () => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      socket.off('secureConnect', onSecure);
      socket.off('error', onError);
    };
    function fail(err: WarrenError) {
      cleanup();
      socket.destroy();
      reject(err);
    }
    function onError(err: NodeJS.ErrnoException) {
      if (err.code && VERIFY_CODES.has(err.code)) {
        fail(
          new WarrenError(
            'tls_verify_failed',
            `the edge at ${opts.host}:${opts.port} presented a certificate that the edge CA does not vouch for (${err.code}); ` +
              'check that the CA in your credentials belongs to this edge, or log in again',
            { cause: err },
          ),
        );
      } else {
        fail(
          new WarrenError(
            'dial_failed',
            `cannot reach the edge at ${opts.host}:${opts.port}: ${err.message}`,
            { retryable: true, cause: err },
          ),
        );
      }
    }
    function onSecure() {
      if (socket.alpnProtocol !== ALPN) {
        return fail(
          new WarrenError('protocol_error', `the edge at ${opts.host}:${opts.port} does not speak ${ALPN}`),
        );
      }
      cleanup();
      socket.setNoDelay(true);
      resolve(socket);
    }
    socket.once('secureConnect', onSecure);
    socket.once('error', onError);
  });
}

export interface TunnelServerOptions {
  keyPem: string;
  certPem: string;
  /** Sockets that do not finish the TLS handshake within this time are dropped. */
  handshakeTimeoutMs: number;
}

export function createTunnelServer(
  opts: TunnelServerOptions,
  onSession: (socket: tls.TLSSocket) => void,
): tls.Server {
  const server = tls.createServer(
    {
      key: opts.keyPem,
      cert: opts.certPem,
      minVersion: 'TLSv1.3',
      ALPNProtocols: [ALPN],
      handshakeTimeout: opts.handshakeTimeoutMs,
    },
    (socket) => {
      if (socket.alpnProtocol !== ALPN) {
        socket.destroy();
        return;
      }
      socket.setNoDelay(true);
      onSession(socket);
    },
  );
  // A failed handshake is the client's problem; never let it reach the process.
  server.on('tlsClientError', () => {});
  return server;
}
