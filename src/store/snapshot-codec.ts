/**
 * The directory as snapshot pages (see snapshot-store.ts for the file around them), and back.
 *
 * The encoding is generic over the directory's plain data (`DirectoryState`: Maps, Sets, arrays, plain
 * objects, primitives), so a field added to a view or a container added to the state is saved without
 * anyone listing it here. What makes an old snapshot unusable is caught, not assumed away:
 *   - `DIRECTORY_SNAPSHOT_FORMAT`: the page layout below;
 *   - `DIRECTORY_STATE_VERSION` (directory.ts): bumped by hand when the fold's meaning changes;
 *   - the fingerprint: a hash of the state this code folds from a fixed probe history that holds every
 *     event type, as this code encodes it. A field added to `TunnelView`, a container added to the
 *     state, a changed audit entry or a msgpackr upgrade that writes other bytes all change it, so a
 *     snapshot written before such a change is refused (and the log replayed) even if nobody bumped a
 *     version;
 *   - the audit limit it was folded with, and the event at its position (stream, version, recordedAt),
 *     so that it is only used with the log it was taken from.
 *
 * Pages are msgpack (msgpackr, records on, so that each page decodes alone). The first page is the
 * header; every other one is `[strings, op]`: `strings` is the page's string table (each distinct
 * string of a page is written, decoded and held once: an audit list names the same account, tunnels
 * and PoPs over and over), and `op` rebuilds part of one field of a fresh state:
 *   ['map', field, keys, values]   set entries (two columns of one length), in the Map's order
 *   ['push', field, key, items]    append a column to the array at `key` of a Map (long audit lists)
 *   ['set', field, items]          add to a Set
 *   ['array', field, items]        append to an array
 *   ['value', field, value]        a field that is not a container
 *   ['end', sizes]                 the last page: each field's size, checked
 * A column is a list of values written by kind, which is what makes a million audit entries cheap:
 *   ['s', codes]                          strings or nulls: indexes into the page's table (an
 *                                         Int32Array), -1 for null
 *   ['n', numbers]                        numbers, as a Float64Array
 *   ['o', shapes, frozen, rows, columns]  plain objects, grouped by their keys (`shapes`, in order);
 *                                         `rows[i]` is row i's shape (an Int32Array; with one shape,
 *                                         just the number of rows),
 *                                         `columns[s][k]` the column of key k over the rows of shape s,
 *                                         `frozen[s]` whether those objects were frozen
 *   ['v', values]                         anything else, as msgpackr writes it (msgpack has no -0:
 *                                         it comes back as 0 there, as it does in events)
 * Typed arrays are written in the machine's byte order; a machine of the other order computes another
 * fingerprint, so a snapshot never crosses between them. Pages hold about `PAGE_ROWS` entries, so a
 * reader holds one page at a time and a writer can stop between pages.
 *
 * Unlike the event codec (codec.ts), nothing here is kept forever: a snapshot from another version is
 * refused and rebuilt from the log, so this layout may change with a version bump.
 */
import { createHash } from 'node:crypto';
import { Packr, Unpackr } from 'msgpackr';
import {
  DIRECTORY_STATE_VERSION,
  Directory,
  type DirectoryEvent,
  type DirectoryState,
  emptyDirectoryState,
} from '../events/directory.ts';
import { WarrenError } from '../shared/errors.ts';

/** Version of the page layout described above. */
export const DIRECTORY_SNAPSHOT_FORMAT = 1;

/** The snapshot's name in a `SnapshotStore`. */
export const DIRECTORY_SNAPSHOT = 'directory';

/** Entries per page (a Map entry whose value is a container counts by its size): 0.1–0.5 MB. */
const PAGE_ROWS = 4096;

const options = {
  // Objects inside `v` columns (a tunnel's connections, a pending cleanup) are written as records.
  useRecords: true,
  // Sets as a msgpackr extension (without it a Set would be written as an array).
  moreTypes: true,
  // msgpack maps are JavaScript Maps; plain objects are records.
  mapsAsObjects: false,
  structuredClone: false,
  useFloat32: 0,
  int64AsType: 'number',
  bundleStrings: false,
  copyBuffers: false,
} as const;

/** The event a snapshot was taken after: the log it is used with must have the same one there. */
export interface SnapshotAnchor {
  stream: string;
  version: number;
  recordedAt: number;
}

export interface DirectorySnapshotHeader {
  format: number;
  stateVersion: number;
  fingerprint: string;
  position: number;
  maxAuditEntriesPerAccount: number;
  /** null only for position 0. */
  anchor: SnapshotAnchor | null;
  fields: string[];
}

type Column =
  | ['s', Int32Array]
  | ['n', Float64Array]
  | ['o', string[][], boolean[], Int32Array | number, Column[][]]
  | ['v', unknown[]];

type Op =
  | ['map', string, Column, Column]
  | ['push', string, unknown, Column]
  | ['set', string, Column]
  | ['array', string, Column]
  | ['value', string, unknown]
  | ['end', Record<string, number>];

function sizeOf(value: unknown): number {
  if (value instanceof Map || value instanceof Set) return value.size;
  if (Array.isArray(value)) return value.length;
  return 1;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype;
}

// ---------------------------------------------------------------------------------------------
// Writing

/** Turns values into columns, numbering the strings of each page in a table. */
class ColumnWriter {
  #codes = new Map<string, number>();
  #strings: string[] = [];

  /** The string table of the page written since the last call; the next page starts a new one. */
  takeStrings(): string[] {
    const strings = this.#strings;
    this.#strings = [];
    this.#codes = new Map();
    return strings;
  }

  column(values: readonly unknown[]): Column {
    let strings = 0;
    let objects = 0;
    let numbers = 0;
    for (const v of values) {
      if (typeof v === 'string') strings++;
      else if (typeof v === 'number') numbers++;
      else if (isPlainObject(v)) objects++;
      else if (v !== null) return ['v', values as unknown[]];
    }
    const n = values.length;
    if (n > 0 && numbers === n) return ['n', Float64Array.from(values as number[])];
    if (n > 0 && objects === n) return this.#objects(values as Record<string, unknown>[]);
    // Strings and nulls only, at least one string.
    if (strings === 0 || numbers > 0 || objects > 0) return ['v', values as unknown[]];
    const codes = new Int32Array(n);
    // Neighbours often repeat (an account's audit list names the account in every entry): skip the lookup.
    let previous: string | null = null;
    let previousCode = -1;
    for (let i = 0; i < values.length; i++) {
      const v = values[i] as string | null;
      if (v !== previous) {
        previous = v;
        previousCode = v === null ? -1 : this.#code(v);
      }
      codes[i] = previousCode;
    }
    return ['s', codes];
  }

  #code(s: string): number {
    let code = this.#codes.get(s);
    if (code === undefined) {
      code = this.#codes.size;
      this.#codes.set(s, code);
      this.#strings.push(s);
    }
    return code;
  }

  #objects(rows: readonly Record<string, unknown>[]): Column {
    const shapes: string[][] = [];
    const shapeIds = new Map<string, number>();
    const frozen: boolean[] = [];
    const members: Record<string, unknown>[][] = [];
    const rowShapes = new Int32Array(rows.length);
    let last: string[] | undefined;
    let lastId = 0;
    for (let i = 0; i < rows.length; i++) {
      const row = rows[i]!;
      let id = lastId;
      if (!last || !hasKeys(row, last)) {
        const keys = Object.keys(row);
        const key = keys.join('\0');
        const known = shapeIds.get(key);
        if (known === undefined) {
          id = shapes.length;
          shapeIds.set(key, id);
          shapes.push(keys);
          frozen.push(true);
          members.push([]);
        } else id = known;
        last = shapes[id];
        lastId = id;
      }
      rowShapes[i] = id;
      members[id]!.push(row);
      if (frozen[id] && !Object.isFrozen(row)) frozen[id] = false;
    }
    const columns = shapes.map((keys, s) => splitter(keys)(members[s]!).map((values) => this.column(values)));
    return ['o', shapes, frozen, shapes.length === 1 ? rows.length : rowShapes, columns];
  }
}

const splitters = new Map<string, (rows: readonly Record<string, unknown>[]) => unknown[][]>();

/**
 * Splits rows of one shape into one array per key. Generated code (see `ColumnReader.#factory`): a
 * loop reading each key by name is several times faster than reading `row[key]` with `key` varying.
 */
function splitter(keys: readonly string[]): (rows: readonly Record<string, unknown>[]) => unknown[][] {
  const id = keys.join('\0');
  let split = splitters.get(id);
  if (!split) {
    const body = [
      'const n = rows.length;',
      ...keys.map((_, i) => `const c${i} = new Array(n);`),
      'for (let i = 0; i < n; i++) {',
      '  const r = rows[i];',
      ...keys.map((k, i) => `  c${i}[i] = r[${JSON.stringify(k)}];`),
      '}',
      `return [${keys.map((_, i) => `c${i}`).join(', ')}];`,
    ].join('\n');
    split = new Function('rows', body) as (rows: readonly Record<string, unknown>[]) => unknown[][];
    // Shapes come from the directory's own code: a handful, so the cache stays small.
    if (splitters.size < 1024) splitters.set(id, split);
  }
  return split;
}

/** `Object.keys(row)` equals `keys`, found without making an array per row. */
function hasKeys(row: Record<string, unknown>, keys: readonly string[]): boolean {
  let i = 0;
  for (const k in row) if (k !== keys[i++]) return false;
  return i === keys.length;
}

/** The operations that rebuild `state`, about `pageRows` entries each. */
function* operations(state: DirectoryState, w: ColumnWriter, pageRows: number): Generator<Op> {
  const fields = state as unknown as Record<string, unknown>;
  const sizes: Record<string, number> = {};
  for (const field of Object.keys(fields)) {
    const value = fields[field];
    sizes[field] = sizeOf(value);
    if (value instanceof Map) {
      let keys: unknown[] = [];
      let values: unknown[] = [];
      let rows = 0;
      const flush = function* (): Generator<Op> {
        if (keys.length > 0) yield ['map', field, w.column(keys), w.column(values)];
        keys = [];
        values = [];
        rows = 0;
      };
      for (const [key, item] of value) {
        if (Array.isArray(item) && item.length > pageRows) {
          // A long list (an account's audit log) goes in slices: its key first, to keep the Map's order.
          keys.push(key);
          values.push([]);
          yield* flush();
          for (let i = 0; i < item.length; i += pageRows) {
            yield ['push', field, key, w.column(item.slice(i, i + pageRows))];
          }
          continue;
        }
        keys.push(key);
        values.push(item);
        rows += 1 + (item instanceof Map || item instanceof Set || Array.isArray(item) ? sizeOf(item) : 0);
        if (rows >= pageRows) yield* flush();
      }
      yield* flush();
    } else if (value instanceof Set || Array.isArray(value)) {
      const items = [...value];
      for (let i = 0; i < items.length; i += pageRows) {
        yield [value instanceof Set ? 'set' : 'array', field, w.column(items.slice(i, i + pageRows))];
      }
    } else {
      yield ['value', field, value];
    }
  }
  yield ['end', sizes];
}

function pack(packr: Packr, value: unknown): Uint8Array {
  // A copy: msgpackr returns a view into a buffer it shares between calls (and with the event codec).
  return Uint8Array.prototype.slice.call(packr.pack(value));
}

/**
 * The pages of a snapshot of `state` taken at `position`, produced as they are iterated. `state` must
 * not change until the last page has been taken: iterate at once, or give a `captureDirectoryState`.
 */
export function* directorySnapshotPages(
  state: DirectoryState,
  at: {
    position: number;
    anchor: SnapshotAnchor | null;
    maxAuditEntriesPerAccount: number;
    /** Entries per page; default `PAGE_ROWS`. Tests make it small to reach the page boundaries. */
    pageRows?: number;
  },
): Generator<Uint8Array> {
  const packr = new Packr(options);
  const header: DirectorySnapshotHeader = {
    format: DIRECTORY_SNAPSHOT_FORMAT,
    stateVersion: DIRECTORY_STATE_VERSION,
    fingerprint: directoryFingerprint(),
    position: at.position,
    maxAuditEntriesPerAccount: at.maxAuditEntriesPerAccount,
    anchor: at.anchor,
    fields: Object.keys(state),
  };
  yield pack(packr, header);
  const w = new ColumnWriter();
  for (const op of operations(state, w, at.pageRows ?? PAGE_ROWS)) yield pack(packr, [w.takeStrings(), op]);
}

/**
 * A copy of `state` that later `apply` calls do not change, cheap because it shares what cannot
 * change: frozen objects (the directory freezes its audit entries, the bulk) and primitives. Maps,
 * Sets, arrays and unfrozen plain objects (a tunnel, which the fold updates in place) are copied.
 */
export function captureDirectoryState(state: DirectoryState): DirectoryState {
  return capture(state) as DirectoryState;
}

function capture(value: unknown): unknown {
  if (value === null || typeof value !== 'object' || Object.isFrozen(value)) return value;
  if (value instanceof Map) {
    const out = new Map();
    for (const [k, v] of value) out.set(k, needsCopy(v) ? capture(v) : v);
    return out;
  }
  if (value instanceof Set) return new Set(value);
  if (Array.isArray(value)) {
    const out = value.slice();
    for (let i = 0; i < out.length; i++) if (needsCopy(out[i])) out[i] = capture(out[i]);
    return out;
  }
  if (!isPlainObject(value)) {
    throw new WarrenError('bad_request', 'directory state holds something other than plain data');
  }
  const out: Record<string, unknown> = { ...value };
  for (const k in out) if (needsCopy(out[k])) out[k] = capture(out[k]);
  return out;
}

function needsCopy(value: unknown): boolean {
  return value !== null && typeof value === 'object' && !Object.isFrozen(value);
}

// ---------------------------------------------------------------------------------------------
// Reading

/** Why a snapshot cannot be used: a stable reason for logs and tests, and a sentence. */
export class SnapshotRefused extends Error {
  override readonly name = 'SnapshotRefused';
  readonly reason: 'corrupt' | 'version' | 'audit_limit' | 'other_log';

  constructor(reason: SnapshotRefused['reason'], message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.reason = reason;
  }
}

/**
 * Reads a snapshot's pages into a state. Throws `SnapshotRefused` when it was written by another
 * version of the code or with another audit limit, or is damaged (whatever goes wrong while reading
 * it becomes one, with the cause). `checkHeader` runs on the header before any other page is read,
 * so a snapshot of another log is refused without decoding the rest.
 */
export async function readDirectorySnapshot(
  pages: AsyncIterable<Uint8Array>,
  expect: { maxAuditEntriesPerAccount: number },
  checkHeader: (header: DirectorySnapshotHeader) => Promise<void>,
): Promise<{ header: DirectorySnapshotHeader; state: DirectoryState }> {
  const unpackr = new Unpackr(options);
  const state = emptyDirectoryState();
  const fields = state as unknown as Record<string, unknown>;
  const reader = new ColumnReader();
  let header: DirectorySnapshotHeader | undefined;
  let ended = false;
  const iterator = pages[Symbol.asyncIterator]();
  try {
    for (;;) {
      const next = await refusedIfItFails(() => iterator.next());
      if (next.done) break;
      if (!header) {
        header = refusedIfItFails(() => checkedHeader(unpackr.unpack(next.value), expect));
        // Not wrapped: the caller's own check says why it refuses, and its other failures are its own.
        await checkHeader(header);
        continue;
      }
      if (ended) throw new SnapshotRefused('corrupt', 'pages follow the end');
      ended = refusedIfItFails(() => {
        const value = unpackr.unpack(next.value);
        if (!Array.isArray(value) || value.length !== 2 || !Array.isArray(value[0])) {
          throw new SnapshotRefused('corrupt', 'a page is not [strings, operation]');
        }
        reader.useStrings(value[0]);
        return applyOp(fields, value[1] as Op, reader);
      });
    }
  } catch (err) {
    await iterator.return?.().catch(() => {});
    throw err;
  }
  if (!header) throw new SnapshotRefused('corrupt', 'it has no pages');
  if (!ended) throw new SnapshotRefused('corrupt', 'it has no end');
  return { header, state };
}

/** Runs `work`; whatever it throws (msgpackr on garbage, the store on damage) becomes `SnapshotRefused`. */
function refusedIfItFails<T>(work: () => T): T {
  const wrap = (err: unknown): never => {
    if (err instanceof SnapshotRefused) throw err;
    const why =
      err instanceof WarrenError && err.code === 'store_corrupt' ? err.message : 'it cannot be decoded';
    throw new SnapshotRefused('corrupt', why, err);
  };
  try {
    const result = work();
    return (result instanceof Promise ? result.catch(wrap) : result) as T;
  } catch (err) {
    return wrap(err);
  }
}

function checkedHeader(
  value: unknown,
  expect: { maxAuditEntriesPerAccount: number },
): DirectorySnapshotHeader {
  const h = value as Partial<DirectorySnapshotHeader> | null;
  if (h === null || typeof h !== 'object' || typeof h.format !== 'number') {
    throw new SnapshotRefused('corrupt', 'its first page is not a header');
  }
  if (h.format !== DIRECTORY_SNAPSHOT_FORMAT) {
    throw new SnapshotRefused(
      'version',
      `it has format ${h.format}; this version of the edge reads ${DIRECTORY_SNAPSHOT_FORMAT}`,
    );
  }
  if (h.stateVersion !== DIRECTORY_STATE_VERSION || h.fingerprint !== directoryFingerprint()) {
    throw new SnapshotRefused(
      'version',
      `it was written by a version of the edge whose directory differs from this one's (state version ${String(h.stateVersion)}, fingerprint ${String(h.fingerprint)}; this one: ${DIRECTORY_STATE_VERSION}, ${directoryFingerprint()})`,
    );
  }
  if (h.maxAuditEntriesPerAccount !== expect.maxAuditEntriesPerAccount) {
    throw new SnapshotRefused(
      'audit_limit',
      `it keeps ${String(h.maxAuditEntriesPerAccount)} audit entries per account, this edge ${expect.maxAuditEntriesPerAccount}`,
    );
  }
  const expected = Object.keys(emptyDirectoryState());
  const position = h.position;
  if (
    typeof position !== 'number' ||
    !Number.isSafeInteger(position) ||
    position < 0 ||
    !Array.isArray(h.fields) ||
    h.fields.join('\n') !== expected.join('\n') ||
    (h.anchor === null) !== (position === 0)
  ) {
    throw new SnapshotRefused('corrupt', 'its header is not one this version writes');
  }
  return h as DirectorySnapshotHeader;
}

type Factory = (columns: ArrayLike<unknown>[], row: number) => Record<string, unknown>;

/** Turns columns back into values, with each page's string table. */
class ColumnReader {
  #strings: string[] = [];
  readonly #factories = new Map<string, Factory>();

  /** The table of the page about to be read. */
  useStrings(strings: unknown[]): void {
    if (!strings.every((s) => typeof s === 'string')) {
      throw new SnapshotRefused('corrupt', 'a string table holds something else');
    }
    this.#strings = strings;
  }

  values(column: Column): ArrayLike<unknown> {
    if (!Array.isArray(column)) throw new SnapshotRefused('corrupt', 'a column is not a list');
    switch (column[0]) {
      case 'v':
        if (Array.isArray(column[1])) return column[1];
        break;
      case 'n':
        if (column[1] instanceof Float64Array) return column[1];
        break;
      case 's': {
        const codes = column[1];
        if (!(codes instanceof Int32Array)) break;
        const strings = this.#strings;
        const out = new Array<string | null>(codes.length);
        for (let i = 0; i < codes.length; i++) {
          const code = codes[i]!;
          const s = code === -1 ? null : strings[code];
          if (s === undefined) throw new SnapshotRefused('corrupt', `string ${code} is not in its table`);
          out[i] = s;
        }
        return out;
      }
      case 'o':
        return this.#objects(column);
    }
    throw new SnapshotRefused('corrupt', 'a column has an unknown kind');
  }

  #objects([, shapes, frozen, rows, columns]: Extract<Column, ['o', ...unknown[]]>): unknown[] {
    if (!Array.isArray(shapes) || !Array.isArray(columns) || columns.length !== shapes.length) {
      throw new SnapshotRefused('corrupt', 'an object column is malformed');
    }
    // Rows per shape: from the shape of each row, or all of them for a single shape. A shape without
    // keys (empty objects) has no column to count them by.
    const lengths = new Array<number>(shapes.length).fill(0);
    if (typeof rows === 'number' && shapes.length === 1 && Number.isSafeInteger(rows) && rows >= 0) {
      lengths[0] = rows;
    } else if (rows instanceof Int32Array) {
      for (let i = 0; i < rows.length; i++) {
        if (lengths[rows[i]!] === undefined)
          throw new SnapshotRefused('corrupt', 'an object column is malformed');
        lengths[rows[i]!]!++;
      }
    } else {
      throw new SnapshotRefused('corrupt', 'an object column is malformed');
    }
    const groups = shapes.map((keys, s) => {
      const cols = columns[s];
      if (!Array.isArray(keys) || !Array.isArray(cols) || cols.length !== keys.length) {
        throw new SnapshotRefused('corrupt', 'an object column is malformed');
      }
      const values = cols.map((c) => this.values(c));
      const length = lengths[s]!;
      if (values.some((v) => v.length !== length)) {
        throw new SnapshotRefused('corrupt', 'an object column has columns of different lengths');
      }
      return { make: this.#factory(keys), values, length, frozen: frozen?.[s] === true, next: 0 };
    });
    if (typeof rows === 'number') {
      const g = groups[0]!;
      const out = new Array<unknown>(g.length);
      for (let i = 0; i < g.length; i++) {
        const o = g.make(g.values, i);
        out[i] = g.frozen ? Object.freeze(o) : o;
      }
      return out;
    }
    const out = new Array<unknown>(rows.length);
    for (let i = 0; i < rows.length; i++) {
      const g = groups[rows[i]!]!;
      const o = g.make(g.values, g.next++);
      out[i] = g.frozen ? Object.freeze(o) : o;
    }
    return out;
  }

  /**
   * Builds objects of one shape. Generated code, as msgpackr does for its records: an object literal
   * with the keys in order is about four times faster than adding the keys one by one, which over a
   * million audit entries is most of a second. Keys are written as JSON string literals, and
   * `__proto__` (which a literal would take as the prototype) is refused.
   */
  #factory(keys: unknown[]): Factory {
    const id = keys.join('\0');
    const make = this.#factories.get(id);
    if (!make) {
      if (keys.some((k) => typeof k !== 'string' || k === '__proto__')) {
        throw new SnapshotRefused('corrupt', 'an object column has a bad key');
      }
      const body = keys.map((k, i) => `${JSON.stringify(k)}: c[${i}][r]`).join(', ');
      const made = new Function('c', 'r', `return { ${body} };`) as Factory;
      this.#factories.set(id, made);
      return made;
    }
    return make;
  }
}

/** Applies one operation; true for the end. */
function applyOp(fields: Record<string, unknown>, op: Op, reader: ColumnReader): boolean {
  if (!Array.isArray(op)) throw new SnapshotRefused('corrupt', 'a page is not an operation');
  if (op[0] === 'end') {
    const sizes = op[1];
    for (const field of Object.keys(fields)) {
      if (sizes?.[field] !== sizeOf(fields[field])) {
        throw new SnapshotRefused(
          'corrupt',
          `field ${field} has ${sizeOf(fields[field])} entries, not ${sizes?.[field]}`,
        );
      }
    }
    return true;
  }
  const field = op[1];
  if (typeof field !== 'string' || !Object.hasOwn(fields, field)) {
    throw new SnapshotRefused('corrupt', `a page names an unknown field ${String(field)}`);
  }
  const target = fields[field];
  switch (op[0]) {
    case 'map': {
      if (!(target instanceof Map)) break;
      const keys = reader.values(op[2]);
      const values = reader.values(op[3]);
      if (keys.length !== values.length) break;
      for (let i = 0; i < keys.length; i++) target.set(keys[i], values[i]);
      return false;
    }
    case 'push': {
      const list = target instanceof Map ? target.get(op[2]) : undefined;
      if (!Array.isArray(list)) break;
      const items = reader.values(op[3]);
      for (let i = 0; i < items.length; i++) list.push(items[i]);
      return false;
    }
    case 'set': {
      if (!(target instanceof Set)) break;
      const items = reader.values(op[2]);
      for (let i = 0; i < items.length; i++) target.add(items[i]);
      return false;
    }
    case 'array': {
      if (!Array.isArray(target)) break;
      const items = reader.values(op[2]);
      for (let i = 0; i < items.length; i++) target.push(items[i]);
      return false;
    }
    case 'value':
      if (target instanceof Map || target instanceof Set || Array.isArray(target)) break;
      fields[field] = op[2];
      return false;
  }
  throw new SnapshotRefused('corrupt', `a page holds an operation that does not fit field ${field}`);
}

// ---------------------------------------------------------------------------------------------
// Fingerprint

let fingerprint: string | undefined;

/** A hash of what this code folds from `PROBE` and of how it encodes it; computed once. */
export function directoryFingerprint(): string {
  if (fingerprint === undefined) {
    const d = new Directory({ maxAuditEntriesPerAccount: 3 });
    for (const e of PROBE) d.apply(e);
    const hash = createHash('sha256');
    const packr = new Packr(options);
    const w = new ColumnWriter();
    for (const op of operations(d.exportState(), w, PAGE_ROWS))
      hash.update(packr.pack([w.takeStrings(), op]));
    fingerprint = hash.digest('hex').slice(0, 16);
  }
  return fingerprint;
}

let probePosition = 0;
const probe = (type: string, data: Record<string, unknown>, actor = 'probe'): DirectoryEvent => {
  probePosition++;
  return { position: probePosition, recordedAt: 1_000 + probePosition, type, data, meta: { actor } };
};
const account = { accountId: 'a1' };
const tunnel = { tunnelId: 't1' };
const connection = (connectionId: string, connIndex: number, registeredAt: number) => ({
  ...tunnel,
  connectionId,
  connIndex,
  pop: 'ams',
  clientVersion: '1.0.0',
  clientOs: 'linux',
  clientArch: 'amd64',
  originIp: '10.0.0.1',
  connectorId: 'k1',
  registeredAt,
});
const record = (recordId: string, name: string, type: string, tunnelId: string | null, origin: string) => ({
  zone: 'probe.example',
  recordId,
  name,
  type,
  content: tunnelId ? `${tunnelId}.tunnels.edge.example` : '192.0.2.1',
  tunnelId,
  origin,
  addedAt: 5,
});

/**
 * Every event type the directory folds, with every field, in an order that reaches each branch (an
 * audit list trimmed, a token rolled and one revoked, a cleanup cancelled and one fired, a tunnel
 * deleted, a record deleted), plus one type it does not know.
 */
const PROBE: readonly DirectoryEvent[] = [
  probe('ZoneAdded', { zone: 'probe.example', zoneId: 'z1', ...account, addedAt: 1 }, 'init'),
  probe('AccountCreated', { ...account, name: 'probe', operator: true, createdAt: 1 }, 'init'),
  probe('ApiTokenIssued', {
    ...account,
    tokenId: 'k1',
    member: 'm1',
    role: 'admin',
    tokenHash: 'h1',
    issuedAt: 1,
  }),
  probe('ApiTokenIssued', {
    ...account,
    tokenId: 'k2',
    member: 'm2',
    role: 'member',
    tokenHash: 'h2',
    issuedAt: 1,
  }),
  probe('ApiTokenRolled', { ...account, tokenId: 'k1', newTokenId: 'k3', tokenHash: 'h3', rolledAt: 2 }),
  probe('ApiTokenRevoked', { ...account, tokenId: 'k2', revokedAt: 3 }),
  probe('OriginCertificateIssued', {
    ...account,
    serial: 's1',
    zone: 'probe.example',
    tokenId: 'k3',
    notAfter: 9,
    issuedAt: 3,
  }),
  probe('TunnelNameClaimed', { ...account, name: 'web', ...tunnel, claimedAt: 3 }),
  probe('TunnelCreated', { ...tunnel, name: 'web', ...account, quick: false, hostname: null, createdAt: 3 }),
  probe('TunnelCreated', {
    tunnelId: 'q1',
    name: 'quick.edge.example',
    accountId: null,
    quick: true,
    hostname: 'quick.edge.example',
    createdAt: 3,
  }),
  probe('DnsRecordAdded', record('r1', 'app.probe.example', 'CNAME', 't1', 'auto')),
  probe('DnsRecordAdded', record('r2', 'ip.probe.example', 'A', null, 'manual')),
  probe('DnsRecordAdded', record('r3', 'ip.probe.example', 'AAAA', null, 'manual')),
  probe('DnsRecordAdded', record('r4', 'www.probe.example', 'CNAME', 't1', 'manual')),
  probe('ConnectionRegistered', connection('c1', 0, 5), 'agent'),
  probe('ConnectionRegistered', connection('c2', 1, 5), 'agent'),
  probe(
    'ConnectionUnregistered',
    { ...tunnel, connectionId: 'c1', reason: 'graceful', unregisteredAt: 6 },
    'agent',
  ),
  probe(
    'ConnectionUnregistered',
    { ...tunnel, connectionId: 'c2', reason: 'lost', unregisteredAt: 6 },
    'edge',
  ),
  probe('TunnelBecameInactive', { ...tunnel, inactiveAt: 6 }, 'edge'),
  probe('DnsCleanupScheduled', { ...tunnel, dueAt: 100, scheduledAt: 6 }, 'edge'),
  probe('DnsCleanupCancelled', { ...tunnel, dueAt: 100, cancelledAt: 7 }, 'agent'),
  probe('ConnectionRegistered', connection('c3', 0, 7), 'agent'),
  probe(
    'ConnectionUnregistered',
    { ...tunnel, connectionId: 'c3', reason: 'lost', unregisteredAt: 8 },
    'edge',
  ),
  probe('TunnelBecameInactive', { ...tunnel, inactiveAt: 8 }, 'edge'),
  probe('DnsCleanupScheduled', { ...tunnel, dueAt: 200, scheduledAt: 8 }, 'edge'),
  probe('DnsCleanupDue', { ...tunnel, dueAt: 200, firedAt: 200 }, 'janitor'),
  probe(
    'DnsRecordDeleted',
    {
      zone: 'probe.example',
      recordId: 'r1',
      name: 'app.probe.example',
      type: 'CNAME',
      tunnelId: 't1',
      reason: 'tunnel_inactive',
      deletedAt: 200,
    },
    'janitor',
  ),
  probe('TunnelNameClaimed', { ...account, name: 'ssh', tunnelId: 't2', claimedAt: 201 }),
  probe('TunnelCreated', {
    tunnelId: 't2',
    name: 'ssh',
    ...account,
    quick: false,
    hostname: null,
    createdAt: 201,
  }),
  probe('ConnectionRegistered', { ...connection('c4', 0, 202), tunnelId: 't2' }, 'agent'),
  probe('TunnelDeleted', { tunnelId: 't2', deletedAt: 203 }),
  probe('TunnelDeleted', { tunnelId: 'q1', deletedAt: 203 }, 'edge'),
  probe('TunnelNameReleased', { ...account, name: 'ssh', tunnelId: 't2', releasedAt: 203 }),
  probe('ProbeTypeFromTheFuture', { ...tunnel }),
];
