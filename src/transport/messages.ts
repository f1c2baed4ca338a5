/**
 * What travels inside HEADERS and CONTROL frames: request/response heads and control messages,
 * msgpackr-encoded with pinned options. Decoding validates shape; a malformed payload becomes a
 * `WarrenError('protocol_error')` here, at the boundary, and nowhere else.
 */
import { Packr } from 'msgpackr';
import { WarrenError } from '../shared/errors.ts';

// Pinned: plain maps and arrays only (no record extension, no structured clone), so any peer with a
// MessagePack library can speak warren/1. Buffers travel as `bin` and come back as Buffers.
const packr = new Packr({
  useRecords: false,
  moreTypes: false,
  structuredClone: false,
  mapsAsObjects: true,
  variableMapSize: true,
  bundleStrings: false,
  int64AsType: 'number',
});

export type StreamKind = 'http' | 'websocket' | 'upgrade';

/** A visitor's request as the edge forwards it. `headers` is a flat [name, value, …] list: case, order and duplicates kept. */
export interface RequestHead {
  kind: StreamKind;
  method: string;
  target: string;
  headers: string[];
}

/** The origin's answer. `error` is set when the agent could not get one (then status is 502/504). */
export interface ResponseHead {
  status: number;
  statusText?: string;
  headers: string[];
  error?: { code: string; message: string };
  /**
   * The first bytes of the body, carried in the head (at most INLINE_BODY_BYTES); DATA frames, if any,
   * continue it. A small answer the agent has whole goes as one HEADERS frame with END.
   */
  body?: Buffer;
}

/** Most body bytes a response head carries inline. */
export const INLINE_BODY_BYTES = 16 * 1024;

export interface ClientInfo {
  /** Random per agent process: tells replicas of one tunnel apart. */
  id: string;
  version: string;
  os: string;
  arch: string;
  features: string[];
}

export type ControlMessage =
  | {
      type: 'hello';
      protocolVersion: number;
      nonce: Buffer;
      pop: string;
      edgeVersion: string;
      features: string[];
    }
  | {
      type: 'register';
      id: number;
      tunnelId: string;
      connIndex: number;
      proof: Buffer;
      client: ClientInfo;
      originLocalIp: string;
      replaceExisting: boolean;
      previousAttempts: number;
    }
  | { type: 'registered'; id: number; connectionId: string; pop: string; hostname: string }
  | { type: 'error'; id: number; code: string; message: string; retryable: boolean; retryAfterMs?: number }
  | { type: 'unregister'; gracePeriodMs: number }
  | { type: 'drain'; reason: string; deadlineMs: number };

export const PROTOCOL_VERSION = 1;
export const ALPN = 'warren/1';

export function encodeMessage(value: RequestHead | ResponseHead | ControlMessage): Buffer {
  return packr.pack(value);
}

function unpack(payload: Buffer, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = packr.unpack(payload);
  } catch (cause) {
    throw new WarrenError('protocol_error', `malformed ${what}: not valid MessagePack`, { cause });
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new WarrenError('protocol_error', `malformed ${what}: expected a map`);
  }
  return value as Record<string, unknown>;
}

function isHeaderList(v: unknown): v is string[] {
  return Array.isArray(v) && v.length % 2 === 0 && v.every((s) => typeof s === 'string');
}

export function decodeRequestHead(payload: Buffer): RequestHead {
  const v = unpack(payload, 'request head');
  if (
    (v.kind !== 'http' && v.kind !== 'websocket' && v.kind !== 'upgrade') ||
    typeof v.method !== 'string' ||
    typeof v.target !== 'string' ||
    !isHeaderList(v.headers)
  ) {
    throw new WarrenError('protocol_error', 'malformed request head');
  }
  return { kind: v.kind, method: v.method, target: v.target, headers: v.headers };
}

export function decodeResponseHead(payload: Buffer): ResponseHead {
  const v = unpack(payload, 'response head');
  if (typeof v.status !== 'number' || !Number.isInteger(v.status) || v.status < 100 || v.status > 999) {
    throw new WarrenError('protocol_error', 'malformed response head: bad status');
  }
  if (!isHeaderList(v.headers))
    throw new WarrenError('protocol_error', 'malformed response head: bad headers');
  const head: ResponseHead = { status: v.status, headers: v.headers };
  if (typeof v.statusText === 'string') head.statusText = v.statusText;
  if (v.body !== undefined) {
    if (!(v.body instanceof Uint8Array) || v.body.length > INLINE_BODY_BYTES) {
      throw new WarrenError('protocol_error', 'malformed response head: bad body');
    }
    head.body = Buffer.isBuffer(v.body)
      ? v.body
      : Buffer.from(v.body.buffer, v.body.byteOffset, v.body.length);
  }
  const err = v.error as Record<string, unknown> | undefined;
  if (err !== undefined) {
    if (
      typeof err !== 'object' ||
      err === null ||
      typeof err.code !== 'string' ||
      typeof err.message !== 'string'
    ) {
      throw new WarrenError('protocol_error', 'malformed response head: bad error');
    }
    head.error = { code: err.code, message: err.message };
  }
  return head;
}

const str = (v: unknown): v is string => typeof v === 'string';
const int = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0;
const bin = (v: unknown): v is Buffer => Buffer.isBuffer(v) || v instanceof Uint8Array;

/**
 * Returns the message, or `undefined` for a well-formed message of a type this version does not know
 * (ignored for forward compatibility). Throws `protocol_error` for a known type with a bad shape.
 */
export function decodeControl(payload: Buffer): ControlMessage | undefined {
  const v = unpack(payload, 'control message');
  // Not String(v.type): a peer can send { type: { toString: 0 } }, and String() of that throws a TypeError.
  const type = typeof v.type === 'string' ? v.type : `<${typeof v.type}>`;
  const bad = () => new WarrenError('protocol_error', `malformed control message of type ${type}`);
  switch (v.type) {
    case 'hello':
      if (
        !int(v.protocolVersion) ||
        !bin(v.nonce) ||
        !str(v.pop) ||
        !str(v.edgeVersion) ||
        !Array.isArray(v.features)
      )
        throw bad();
      return {
        type: 'hello',
        protocolVersion: v.protocolVersion,
        nonce: Buffer.from(v.nonce),
        pop: v.pop,
        edgeVersion: v.edgeVersion,
        features: v.features.filter(str),
      };
    case 'register': {
      const c = v.client as Record<string, unknown> | undefined;
      if (
        !int(v.id) ||
        !str(v.tunnelId) ||
        !int(v.connIndex) ||
        !bin(v.proof) ||
        typeof c !== 'object' ||
        c === null ||
        !str(c.version) ||
        !str(c.os) ||
        !str(c.arch) ||
        !str(v.originLocalIp) ||
        typeof v.replaceExisting !== 'boolean' ||
        !int(v.previousAttempts)
      )
        throw bad();
      return {
        type: 'register',
        id: v.id,
        tunnelId: v.tunnelId,
        connIndex: v.connIndex,
        proof: Buffer.from(v.proof),
        client: {
          id: str(c.id) ? c.id : '',
          version: c.version,
          os: c.os,
          arch: c.arch,
          features: Array.isArray(c.features) ? c.features.filter(str) : [],
        },
        originLocalIp: v.originLocalIp,
        replaceExisting: v.replaceExisting,
        previousAttempts: v.previousAttempts,
      };
    }
    case 'registered':
      if (!int(v.id) || !str(v.connectionId) || !str(v.pop) || !str(v.hostname)) throw bad();
      return { type: 'registered', id: v.id, connectionId: v.connectionId, pop: v.pop, hostname: v.hostname };
    case 'error': {
      if (!int(v.id) || !str(v.code) || !str(v.message) || typeof v.retryable !== 'boolean') throw bad();
      const m: ControlMessage = {
        type: 'error',
        id: v.id,
        code: v.code,
        message: v.message,
        retryable: v.retryable,
      };
      if (int(v.retryAfterMs)) m.retryAfterMs = v.retryAfterMs;
      return m;
    }
    case 'unregister':
      if (!int(v.gracePeriodMs)) throw bad();
      return { type: 'unregister', gracePeriodMs: v.gracePeriodMs };
    case 'drain':
      if (!str(v.reason) || !int(v.deadlineMs)) throw bad();
      return { type: 'drain', reason: v.reason, deadlineMs: v.deadlineMs };
    default:
      if (!str(v.type)) throw bad();
      return undefined;
  }
}
