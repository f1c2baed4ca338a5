/**
 * The stored format of one event: a versioned envelope packed with msgpackr. Bytes written today
 * are read forever, so the Packr options are pinned (a msgpackr upgrade that changes a default must
 * not change what we write) and `test/fixtures/envelope-v1.hex` guards the exact bytes.
 *
 * Envelope v1 is a msgpack array, schema first so a decoder can dispatch on it before reading the rest:
 *   [schema = 1, stream, version, position, recordedAt, type, data, meta]
 * `meta` is a map holding only the keys that are set (`correlationId`, `actor`).
 *
 * Event data must be JSON-like: null, booleans, finite numbers, well-formed strings, arrays and plain
 * objects. The encoder checks this and refuses anything else with `bad_request`, because msgpackr would
 * otherwise store it lossily and we would only find out on replay:
 * - `-0` is written as `0` (msgpackr packs it as the integer 0). We normalise it on purpose, as
 *   JSON.stringify does; no event field gives meaning to the sign of zero.
 * - an own `"__proto__"` key is refused: msgpackr renames it to `"__proto_"` on decode (its guard
 *   against prototype pollution), so it cannot round-trip.
 * - strings with lone UTF-16 surrogates are refused: they come back as U+FFFD.
 * - NaN, ±Infinity, bigint, Date, Map, Set, typed arrays, functions and class instances are refused.
 * - a property whose value is `undefined` is dropped, as JSON.stringify drops it (TypeScript optional
 *   fields); `undefined` as the data itself or inside an array is refused.
 *
 * Decoded events are deep-frozen: they are shared between subscribers and must not be mutated. A reader
 * that owns what it decodes may ask for them unfrozen (`DecodeOptions`); they are checked the same.
 */
import { Packr } from 'msgpackr';
import { WarrenError } from '../shared/errors.ts';
import type { EventMeta, StoredEvent } from './event-log.ts';

/** Version of the envelope layout written by `encodeEnvelope`. Older ones get an upcaster in `decodeEnvelope`. */
export const ENVELOPE_SCHEMA = 1;

/** Largest encoded event. Events are facts about tunnels, not payloads; a bigger one is a bug upstream. */
export const MAX_ENVELOPE_BYTES = 1024 * 1024;
/** Deepest nesting of arrays and objects in event data; also stops a cyclic object with a clear error. */
export const MAX_DATA_DEPTH = 64;

const packr = new Packr({
  // Records (msgpackr's shared-structure extension) would tie the bytes to a structure table we would
  // have to store and keep forever; plain maps are self-describing standard msgpack.
  useRecords: false,
  // No msgpackr-specific extensions for typed arrays, Sets, Errors, RegExps: stored data is JSON-like.
  moreTypes: false,
  // No back-reference extension for cycles and shared objects: every value is written out in full.
  structuredClone: false,
  // Maps decode to plain objects, so a decoded event looks like the one that was appended.
  mapsAsObjects: true,
  // Smallest standard map header (fixmap/map16/map32) instead of msgpackr's always-map16 default.
  variableMapSize: true,
  // Keys like "1" stay strings instead of becoming numbers on decode.
  coercibleKeyAsNumber: false,
  // We never write 64-bit integers (numbers above 2^32 are packed as float64); if one is ever read,
  // it is a number, never a bigint that JSON-like consumers could not handle.
  int64AsType: 'number',
  // Never float32: it would silently lose precision (0 = FLOAT32_OPTIONS.NEVER; the const enum is
  // not importable under isolatedModules).
  useFloat32: 0,
  // String bundling changes the layout of the bytes; keep plain msgpack strings.
  bundleStrings: false,
  // Our validator drops/refuses undefined before packing; pinned so a stray one is never written as nil.
  encodeUndefinedAsNil: false,
  // Decoded strings and containers must not point into the LevelDB read buffer.
  copyBuffers: true,
});

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Encodes one stored event. Throws `bad_request` when the data or meta cannot be stored faithfully. */
export function encodeEnvelope(event: StoredEvent): Uint8Array {
  if (event.schema !== ENVELOPE_SCHEMA) {
    throw new WarrenError(
      'bad_request',
      `can only write envelope schema ${ENVELOPE_SCHEMA}, not ${event.schema}`,
    );
  }
  const data = toStorable(event.data, 'data', false, 0);
  const meta = storableMeta(event.meta);
  const tuple = [
    ENVELOPE_SCHEMA,
    event.stream,
    event.version,
    event.position,
    event.recordedAt,
    event.type,
    data,
    meta,
  ];
  const packed = packr.pack(tuple);
  if (packed.length > MAX_ENVELOPE_BYTES) {
    throw new WarrenError(
      'bad_request',
      `event is ${packed.length} bytes encoded, over ${MAX_ENVELOPE_BYTES}`,
    );
  }
  // msgpackr returns a view into its reusable buffer; copy so the caller owns the bytes.
  return Uint8Array.prototype.slice.call(packed);
}

export interface DecodeOptions {
  /**
   * Deep-freeze the event (default true), as events shared between readers must be. False only for a
   * reader that owns what it gets and keeps no reference to it past its own use (the start-up fold):
   * freezing costs a second walk over every event. The checks are the same either way.
   */
  freeze?: boolean;
}

/** Decodes and validates one stored event. Anything unexpected is `store_corrupt`. */
export function decodeEnvelope(bytes: Uint8Array, opts?: DecodeOptions): StoredEvent {
  let raw: unknown;
  try {
    raw = packr.unpack(bytes);
  } catch (err) {
    throw corrupt('envelope is not valid msgpack', err);
  }
  if (!Array.isArray(raw) || raw.length < 1) throw corrupt('envelope is not an array');
  const schema = raw[0];
  if (schema !== ENVELOPE_SCHEMA) throw corrupt(`unknown envelope schema ${String(schema)}`);
  if (raw.length !== 8) throw corrupt(`envelope v1 has ${raw.length} fields, expected 8`);
  const stream: unknown = raw[1];
  const version: unknown = raw[2];
  const position: unknown = raw[3];
  const recordedAt: unknown = raw[4];
  const type: unknown = raw[5];
  const data: unknown = raw[6];
  if (typeof stream !== 'string' || stream.length === 0) throw corrupt('envelope stream is not a string');
  if (!isPositiveInt(version)) throw corrupt('envelope version is not a positive integer');
  if (!isPositiveInt(position)) throw corrupt('envelope position is not a positive integer');
  if (typeof recordedAt !== 'number' || !Number.isFinite(recordedAt)) {
    throw corrupt('envelope recordedAt is not a number');
  }
  if (typeof type !== 'string' || type.length === 0) throw corrupt('envelope type is not a string');
  const freeze = opts?.freeze ?? true;
  // One walk checks and (by default) freezes; only when it fails is the data walked again, by the slower
  // `checkDecoded`, to name the part that is wrong.
  if (!checkedData(data, freeze)) {
    checkDecoded(data, 'data');
    throw corrupt('data is not JSON-like'); // not reached: checkDecoded throws first
  }
  const meta = decodedMeta(raw[7]);
  const event: StoredEvent = { stream, version, position, recordedAt, schema, type, data, meta };
  if (freeze) {
    Object.freeze(meta);
    Object.freeze(event);
  }
  return event;
}

/**
 * True when decoded data is what `toStorable` could have produced, freezing it bottom-up when asked.
 * The hot path of every read: no paths built, no entry arrays.
 */
function checkedData(value: unknown, freeze: boolean): boolean {
  if (value === null) return true;
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return true;
    case 'number':
      return Number.isFinite(value);
    case 'object': {
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) {
          if (!checkedData(value[i], freeze)) return false;
        }
      } else if (Object.getPrototypeOf(value) === Object.prototype) {
        const record = value as Record<string, unknown>;
        for (const key of Object.keys(record)) {
          if (!checkedData(record[key], freeze)) return false;
        }
      } else {
        return false;
      }
      if (freeze) Object.freeze(value);
      return true;
    }
    default:
      return false;
  }
}

function storableMeta(meta: EventMeta | undefined): EventMeta {
  const out: EventMeta = {};
  if (meta === undefined) return out;
  if (meta === null || typeof meta !== 'object') throw unstorable('meta', 'is not an object');
  for (const key of ['correlationId', 'actor'] as const) {
    const value = meta[key];
    if (value === undefined) continue;
    if (typeof value !== 'string' || LONE_SURROGATE.test(value)) {
      throw unstorable(`meta.${key}`, 'is not a well-formed string');
    }
    out[key] = value;
  }
  return out;
}

function decodedMeta(meta: unknown): EventMeta {
  // The usual case, a plain map with only known string fields: kept as decoded, no copy.
  if (meta !== null && typeof meta === 'object' && Object.getPrototypeOf(meta) === Object.prototype) {
    const record = meta as Record<string, unknown>;
    let known = true;
    for (const key of Object.keys(record)) {
      if ((key !== 'correlationId' && key !== 'actor') || typeof record[key] !== 'string') known = false;
    }
    if (known) return record as EventMeta;
  }
  if (meta === null || typeof meta !== 'object' || Array.isArray(meta))
    throw corrupt('envelope meta is not a map');
  const out: EventMeta = {};
  for (const [key, value] of Object.entries(meta)) {
    if ((key !== 'correlationId' && key !== 'actor') || typeof value !== 'string') {
      throw corrupt(`envelope meta has unexpected field ${key}`);
    }
    out[key] = value;
  }
  return out;
}

/** A fresh JSON-like copy of `value`, or `bad_request` naming the first part that cannot be stored. */
function toStorable(value: unknown, path: string, inObject: boolean, depth: number): unknown {
  switch (typeof value) {
    case 'string':
      if (LONE_SURROGATE.test(value)) throw unstorable(path, 'contains a lone UTF-16 surrogate');
      return value;
    case 'boolean':
      return value;
    case 'number':
      if (!Number.isFinite(value)) throw unstorable(path, `is ${value}`);
      return value === 0 ? 0 : value; // -0 → 0, see the module comment
    case 'undefined':
      // Only reached for array items and the data itself; object properties are filtered below.
      throw unstorable(path, inObject ? 'is undefined' : 'is undefined (use null)');
    case 'object': {
      if (value === null) return null;
      if (depth >= MAX_DATA_DEPTH) throw unstorable(path, `nests deeper than ${MAX_DATA_DEPTH} levels`);
      if (Array.isArray(value)) {
        // Array.from visits holes of a sparse array (as undefined, refused); map would keep them as holes.
        return Array.from(value, (item, i) => toStorable(item, `${path}[${i}]`, false, depth + 1));
      }
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) {
        throw unstorable(path, `is a ${proto?.constructor?.name ?? 'non-plain object'}, not a plain object`);
      }
      const out: Record<string, unknown> = {};
      for (const [key, item] of Object.entries(value)) {
        if (key === '__proto__') throw unstorable(`${path}.__proto__`, 'is a "__proto__" key');
        if (LONE_SURROGATE.test(key)) throw unstorable(path, 'has a key with a lone UTF-16 surrogate');
        if (item === undefined) continue;
        out[key] = toStorable(item, `${path}.${key}`, true, depth + 1);
      }
      return out;
    }
    default:
      throw unstorable(path, `is a ${typeof value}`);
  }
}

/** Checks that decoded data is what `toStorable` could have produced. */
function checkDecoded(value: unknown, path: string): void {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw corrupt(`${path} is ${value}`);
    return;
  }
  if (Array.isArray(value)) {
    for (const [i, item] of value.entries()) checkDecoded(item, `${path}[${i}]`);
    return;
  }
  if (typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    for (const [key, item] of Object.entries(value)) checkDecoded(item, `${path}.${key}`);
    return;
  }
  throw corrupt(`${path} is not JSON-like`);
}

function isPositiveInt(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 1;
}

function unstorable(path: string, why: string): WarrenError {
  return new WarrenError('bad_request', `event ${path} cannot be stored: it ${why}`);
}

function corrupt(why: string, cause?: unknown): WarrenError {
  return new WarrenError('store_corrupt', `stored event is corrupt: ${why}`, { cause });
}
