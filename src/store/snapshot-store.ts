/**
 * Snapshots of read models folded from an event log, kept beside it: bytes at a log position, so that
 * a start-up can load the newest one and fold only the events after it. A snapshot is an optimisation
 * and never the truth: whoever reads one checks it and folds the whole log when anything is wrong, so a
 * damaged, missing or foreign snapshot costs time, never correctness.
 *
 * The store knows nothing of what the bytes mean. A snapshot is written as pages (the caller's chunks),
 * each with its length and CRC-32, so that a reader can check and decode one page at a time without
 * holding the whole snapshot in memory, and a writer can produce pages as it goes.
 *
 * File layout (`<dir>/<name>-<16 hex position>.snapshot`; big-endian integers):
 *   "WRNSNAP\n"  u32 file format (= SNAPSHOT_FILE_FORMAT)  u32 n  n bytes of JSON {"name","position"}
 *   per page:    u32 length (> 0)  length bytes  u32 CRC-32 of those bytes
 *   end:         u32 0  u32 page count  u32 CRC-32 of the header JSON and every page CRC
 * Nothing may follow the end. A file is written as `<final name>.tmp`, fsynced, renamed, and the
 * directory fsynced, so a crash at any point leaves the earlier snapshots as they were (and perhaps a
 * `.tmp` file, removed by the next save).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rename, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { crc32 } from 'node:zlib';
import { WarrenError } from '../shared/errors.ts';

/** Version of the file layout above; readers refuse any other. */
export const SNAPSHOT_FILE_FORMAT = 1;

/** Snapshots kept per name: the newest, and the one before it in case the newest cannot be read. */
export const SNAPSHOTS_KEPT = 2;

/** Largest page a reader accepts: a length past it is damage, not data (writers use far smaller pages). */
export const MAX_SNAPSHOT_PAGE_BYTES = 256 * 1024 * 1024;

export interface StoredSnapshot {
  name: string;
  position: number;
  /**
   * The pages as they were saved, read as iterated. Throws `store_corrupt` at the first damage found —
   * possibly only at the end (a truncated file), so a reader must not act on pages before the last one.
   */
  pages(): AsyncIterable<Uint8Array>;
}

export interface SnapshotStore {
  /**
   * Saves `pages` as snapshot `name` at log `position`, atomically and durably: until it resolves, a
   * crash leaves the earlier snapshots as they were. Keeps the newest `SNAPSHOTS_KEPT` of the name.
   * Saves run one at a time, in call order; `pages` is iterated only when this save's turn comes.
   * Throws `store_closed` once the store is closed.
   */
  save(
    name: string,
    position: number,
    pages: Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
  ): Promise<void>;
  /** Snapshots of `name`, newest (highest position) first; waits for saves already started. */
  list(name: string): Promise<StoredSnapshot[]>;
  /** Deletes every snapshot of `name`. */
  delete(name: string): Promise<void>;
  /** Lets saves already started finish (close is not abort); later calls throw `store_closed`. Idempotent. */
  close(): Promise<void>;
}

const MAGIC = Buffer.from('WRNSNAP\n', 'latin1');
const NAME = /^[a-z][a-z0-9-]{0,63}$/;
const SUFFIX = '.snapshot';
const TMP_SUFFIX = '.tmp';

function assertName(name: string): void {
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw new WarrenError('bad_request', `invalid snapshot name ${JSON.stringify(name)}`);
  }
}

function assertPosition(position: number): void {
  if (!Number.isSafeInteger(position) || position < 0) {
    throw new WarrenError('bad_request', `snapshot position must be an integer >= 0, not ${position}`);
  }
}

function assertPageSize(page: Uint8Array): void {
  if (page.length > MAX_SNAPSHOT_PAGE_BYTES) {
    throw new WarrenError('bad_request', `snapshot page of ${page.length} bytes is too large`);
  }
}

function closedError(): WarrenError {
  return new WarrenError('store_closed', 'the snapshot store is closed');
}

function corrupt(file: string, why: string): WarrenError {
  return new WarrenError('store_corrupt', `snapshot ${file} is damaged: ${why}`);
}

/** One operation at a time, in call order; `close` waits for what was started. */
class Queue {
  #tail: Promise<unknown> = Promise.resolve();
  #closing: Promise<void> | undefined;

  run<T>(work: () => Promise<T>): Promise<T> {
    if (this.#closing) return Promise.reject(closedError());
    const result = this.#tail.then(work);
    this.#tail = result.catch(() => {});
    return result;
  }

  close(): Promise<void> {
    this.#closing ??= this.#tail.then(() => {});
    return this.#closing;
  }
}

/**
 * What both stores share: arguments are checked at the call (a bad one rejects at once), then the
 * operation waits its turn in one queue, which `close` drains.
 */
abstract class QueuedSnapshotStore implements SnapshotStore {
  readonly #queue = new Queue();

  save(
    name: string,
    position: number,
    pages: Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
  ): Promise<void> {
    try {
      assertName(name);
      assertPosition(position);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#queue.run(() => this.saveInTurn(name, position, pages));
  }

  list(name: string): Promise<StoredSnapshot[]> {
    try {
      assertName(name);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#queue.run(() => this.listInTurn(name));
  }

  delete(name: string): Promise<void> {
    try {
      assertName(name);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#queue.run(() => this.deleteInTurn(name));
  }

  close(): Promise<void> {
    return this.#queue.close();
  }

  protected abstract saveInTurn(
    name: string,
    position: number,
    pages: Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
  ): Promise<void>;
  protected abstract listInTurn(name: string): Promise<StoredSnapshot[]>;
  protected abstract deleteInTurn(name: string): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Files

/** The snapshots of a LevelDB event log, in `dir` (created on the first save). */
export function openFileSnapshotStore(dir: string): SnapshotStore {
  return new FileSnapshotStore(dir);
}

class FileSnapshotStore extends QueuedSnapshotStore {
  readonly #dir: string;

  constructor(dir: string) {
    super();
    this.#dir = dir;
  }

  protected async saveInTurn(
    name: string,
    position: number,
    pages: Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
  ): Promise<void> {
    await mkdir(this.#dir, { recursive: true });
    // Left by a save that crashed: never read, only in the way.
    for (const f of await this.#files(name)) if (f.tmp) await rm(join(this.#dir, f.file), { force: true });
    const final = fileName(name, position);
    const tmp = join(this.#dir, `${final}.${randomBytes(4).toString('hex')}${TMP_SUFFIX}`);
    const fh = await open(tmp, 'wx', 0o600);
    try {
      const header = Buffer.from(JSON.stringify({ name, position }));
      let summary = crc32(header);
      await fh.write(Buffer.concat([MAGIC, u32(SNAPSHOT_FILE_FORMAT), u32(header.length), header]));
      let count = 0;
      for await (const page of pages) {
        if (page.length === 0) continue; // a zero length marks the end
        assertPageSize(page);
        const crc = u32(crc32(page));
        summary = crc32(crc, summary);
        await fh.writev([u32(page.length), page, crc]);
        count++;
      }
      await fh.write(Buffer.concat([u32(0), u32(count), u32(summary)]));
      await fh.sync();
    } catch (err) {
      await fh.close().catch(() => {});
      await rm(tmp, { force: true });
      throw err;
    }
    await fh.close();
    await rename(tmp, join(this.#dir, final));
    await syncDir(this.#dir);
    const older = (await this.#files(name)).filter((f) => !f.tmp).slice(SNAPSHOTS_KEPT);
    for (const f of older) await rm(join(this.#dir, f.file), { force: true });
  }

  protected async listInTurn(name: string): Promise<StoredSnapshot[]> {
    return (await this.#files(name))
      .filter((f) => !f.tmp)
      .map((f) => ({
        name,
        position: f.position,
        pages: () => readPages(join(this.#dir, f.file), name, f.position),
      }));
  }

  protected async deleteInTurn(name: string): Promise<void> {
    for (const f of await this.#files(name)) await rm(join(this.#dir, f.file), { force: true });
  }

  /** Snapshot files of `name`, highest position first. */
  async #files(name: string): Promise<{ file: string; position: number; tmp: boolean }[]> {
    let entries: string[];
    try {
      entries = await readdir(this.#dir);
    } catch (err) {
      if ((err as { code?: unknown }).code === 'ENOENT') return [];
      throw err;
    }
    const pattern = new RegExp(`^${name}-([0-9a-f]{16})\\${SUFFIX}(\\.[0-9a-f]{8}\\${TMP_SUFFIX})?$`);
    const out: { file: string; position: number; tmp: boolean }[] = [];
    for (const file of entries) {
      const m = pattern.exec(file);
      if (m) out.push({ file, position: Number.parseInt(m[1]!, 16), tmp: m[2] !== undefined });
    }
    return out.sort((a, b) => b.position - a.position);
  }
}

function fileName(name: string, position: number): string {
  return `${name}-${position.toString(16).padStart(16, '0')}${SUFFIX}`;
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

async function syncDir(dir: string): Promise<void> {
  // Makes the rename durable. Some platforms cannot open a directory for fsync; the rename is still
  // atomic there, only perhaps not yet on disk after a power cut.
  const fh = await open(dir, 'r').catch(() => undefined);
  if (!fh) return;
  try {
    await fh.sync();
  } catch {
  } finally {
    await fh.close();
  }
}

async function* readPages(path: string, name: string, position: number): AsyncGenerator<Uint8Array> {
  const file = basename(path);
  const fh = await open(path, 'r').catch((err: unknown) => {
    // Listed, then gone: deleted by hand while the edge was starting.
    if ((err as { code?: unknown }).code === 'ENOENT')
      throw corrupt(file, 'it was deleted before it was read');
    throw err;
  });
  try {
    const size = (await fh.stat()).size;
    let offset = 0;
    const read = async (length: number, what: string): Promise<Buffer> => {
      if (length > size - offset) throw corrupt(file, `it ends inside the ${what} (truncated)`);
      const buf = Buffer.allocUnsafe(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
        if (bytesRead === 0) throw corrupt(file, `it ends inside the ${what} (truncated)`);
        got += bytesRead;
      }
      offset += length;
      return buf;
    };
    const start = await read(MAGIC.length + 8, 'header');
    if (!start.subarray(0, MAGIC.length).equals(MAGIC)) throw corrupt(file, 'it is not a snapshot file');
    const format = start.readUInt32BE(MAGIC.length);
    if (format !== SNAPSHOT_FILE_FORMAT) {
      throw corrupt(file, `its file format is ${format}, this version reads ${SNAPSHOT_FILE_FORMAT}`);
    }
    const headerBytes = await read(start.readUInt32BE(MAGIC.length + 4), 'header');
    let header: { name?: unknown; position?: unknown };
    try {
      header = JSON.parse(headerBytes.toString('utf8')) as typeof header;
    } catch {
      throw corrupt(file, 'its header is not JSON');
    }
    if (header.name !== name || header.position !== position) {
      throw corrupt(file, 'its header does not match its file name');
    }
    let summary = crc32(headerBytes);
    let count = 0;
    for (;;) {
      const length = (await read(4, 'page length')).readUInt32BE(0);
      if (length === 0) break;
      if (length > MAX_SNAPSHOT_PAGE_BYTES) throw corrupt(file, `page ${count} claims ${length} bytes`);
      const page = await read(length + 4, `page ${count}`);
      const body = page.subarray(0, length);
      const crc = page.subarray(length);
      if (crc32(body) !== crc.readUInt32BE(0)) throw corrupt(file, `page ${count} fails its checksum`);
      summary = crc32(crc, summary);
      count++;
      yield body;
    }
    const end = await read(8, 'end');
    if (end.readUInt32BE(0) !== count || end.readUInt32BE(4) !== summary) {
      throw corrupt(file, 'its page count or summary checksum is wrong');
    }
    if (offset !== size) throw corrupt(file, 'bytes follow its end');
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Memory

/** Snapshots of an in-memory event log: held in memory, with the same contract as the files. */
export function openMemorySnapshotStore(): SnapshotStore {
  return new MemorySnapshotStore();
}

class MemorySnapshotStore extends QueuedSnapshotStore {
  readonly #snapshots = new Map<string, { position: number; pages: Uint8Array[] }[]>();

  protected async saveInTurn(
    name: string,
    position: number,
    pages: Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
  ): Promise<void> {
    const copies: Uint8Array[] = [];
    for await (const page of pages) {
      assertPageSize(page);
      if (page.length > 0) copies.push(Uint8Array.prototype.slice.call(page));
    }
    const kept = (this.#snapshots.get(name) ?? []).filter((s) => s.position !== position);
    kept.push({ position, pages: copies });
    kept.sort((a, b) => b.position - a.position);
    this.#snapshots.set(name, kept.slice(0, SNAPSHOTS_KEPT));
  }

  protected async listInTurn(name: string): Promise<StoredSnapshot[]> {
    return (this.#snapshots.get(name) ?? []).map((s) => ({
      name,
      position: s.position,
      pages: async function* () {
        yield* s.pages;
      },
    }));
  }

  protected async deleteInTurn(name: string): Promise<void> {
    this.#snapshots.delete(name);
  }
}
