/**
 * Errors with stable codes. Reconnect logic reads `retryable`; nothing branches on `message`.
 * Remote error strings become `WarrenError`s once, at the boundary where they arrive.
 */
export type ErrorCode =
  // configuration and local faults
  | 'bad_config'
  | 'bad_request'
  | 'data_dir_locked'
  | 'store_closed'
  | 'store_corrupt'
  | 'version_conflict'
  // transport
  | 'protocol_error'
  | 'frame_too_large'
  | 'flow_control_error'
  | 'stream_closed'
  | 'stream_reset'
  | 'stream_limit'
  | 'headers_too_large'
  | 'heartbeat_timeout'
  | 'session_closed'
  | 'dial_failed'
  | 'tls_verify_failed'
  | 'handshake_timeout'
  // registration
  | 'auth_failed'
  | 'tunnel_deleted'
  | 'duplicate_connection'
  | 'account_tunnel_limit'
  | 'edge_draining'
  // control plane
  | 'unauthorized'
  | 'token_revoked'
  | 'forbidden'
  | 'not_found'
  | 'already_exists'
  | 'tunnel_active'
  | 'dns_record_exists'
  | 'not_initialized'
  // origin
  | 'origin_unreachable'
  | 'origin_timeout'
  | 'origin_tls'
  | 'origin_reset'
  | 'no_tunnel';

export class WarrenError extends Error {
  override readonly name = 'WarrenError';
  readonly code: ErrorCode;
  readonly retryable: boolean;
  /** Advice from the peer on when to try again, when it gave one. */
  readonly retryAfterMs: number | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    opts: { retryable?: boolean; cause?: unknown; retryAfterMs?: number } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.retryable = opts.retryable ?? false;
    this.retryAfterMs = opts.retryAfterMs;
  }
}

export function isWarrenError(err: unknown, code?: ErrorCode): err is WarrenError {
  return err instanceof WarrenError && (code === undefined || err.code === code);
}

/** For log lines and user-facing messages: a code when there is one, and the message. */
export function describeError(err: unknown): string {
  if (err instanceof WarrenError) return `${err.code}: ${err.message}`;
  if (err instanceof Error) return err.message;
  return String(err);
}
