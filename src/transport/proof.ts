import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * The registration proof: HMAC-SHA256(tunnelSecret, nonce ‖ tunnelId (UTF-8) ‖ connIndex (u32 BE)).
 * The nonce is fresh per connection, so a recorded proof is useless later, and the secret itself
 * never crosses the wire.
 */
export function registrationProof(
  secret: Buffer,
  nonce: Buffer,
  tunnelId: string,
  connIndex: number,
): Buffer {
  const idx = Buffer.allocUnsafe(4);
  idx.writeUInt32BE(connIndex >>> 0, 0);
  return createHmac('sha256', secret).update(nonce).update(tunnelId, 'utf8').update(idx).digest();
}

/** Constant-time check of a proof a peer sent. */
export function proofMatches(expected: Buffer, received: Buffer): boolean {
  return expected.length === received.length && timingSafeEqual(expected, received);
}
