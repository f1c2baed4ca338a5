/**
 * Directory snapshots through `ControlPlane.open` on a real LevelDB log in a temporary directory, with
 * a history written by the benchmark's generator (the real deciders): a restart from a snapshot, with
 * and without a tail to fold, gives the directory a full replay gives; every way a snapshot can be
 * unusable (damaged, truncated, another format or version, another audit limit, another or a shorter
 * log, a save killed half-way) ends in a warning and a full replay, never a crash or a wrong directory.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Writable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Packr, Unpackr } from 'msgpackr';
import { pino } from 'pino';
import { writeHistory } from '../../bench/event-history.ts';
import { ControlPlane, type ControlPlaneInit } from '../../src/edge/control-plane.ts';
import { Directory, emptyDirectoryState } from '../../src/events/directory.ts';
import { ManualClock } from '../../src/shared/clock.ts';
import type { EventLog } from '../../src/store/event-log.ts';
import { openLevelEventLog } from '../../src/store/level-event-log.ts';
import { openMemoryEventLog } from '../../src/store/memory-event-log.ts';
import {
  DIRECTORY_SNAPSHOT,
  directorySnapshotPages,
  readDirectorySnapshot,
} from '../../src/store/snapshot-codec.ts';
import { openFileSnapshotStore } from '../../src/store/snapshot-store.ts';
import { assertSameDirectory, ordered } from '../support/same-directory.ts';
import { waitFor, withDeadline } from '../support/wait.ts';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const WRITER = fileURLToPath(new URL('../support/snapshot-writer.ts', import.meta.url));
const NOW = Date.UTC(2026, 5, 1);
const INIT: ControlPlaneInit = {
  edgeDomain: 'edge.test',
  accountTunnelLimit: 1000,
  dnsCleanupWindowMs: { minMs: 24 * 3_600_000, maxMs: 48 * 3_600_000 },
};

const tempDirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'warren-snapshot-'));
  tempDirs.push(dir);
  return dir;
}
after(async () => {
  for (const dir of tempDirs) await rm(dir, { recursive: true, force: true });
});

interface LogLine {
  level: number;
  msg: string;
  reason?: string;
  [key: string]: unknown;
}

function capturingLogger() {
  const lines: LogLine[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line) as LogLine);
      done();
    },
  });
  return { logger: pino({ level: 'info' }, stream), lines };
}

/** A data dir holding a realistic history of about `events` events. */
async function history(events: number, seed = 1): Promise<string> {
  const dir = await tempDir();
  await writeHistory(dir, { events, endsAt: NOW, seed });
  return dir;
}

async function open(dataDir: string, init: Partial<ControlPlaneInit> = {}) {
  const clock = new ManualClock(NOW);
  const { logger, lines } = capturingLogger();
  const eventLog = await openLevelEventLog({ clock }, { dataDir });
  const cp = await ControlPlane.open(
    { clock, log: logger, eventLog, random: () => 0.5 },
    { ...INIT, ...init },
  );
  return { cp, eventLog, lines, clock };
}

async function stop(edge: { cp: ControlPlane; eventLog: EventLog }): Promise<void> {
  edge.cp.close();
  await edge.eventLog.close();
}

/** The directory a fold of the whole log (up to `position`) gives. */
async function fullFold(
  dataDir: string,
  maxAuditEntriesPerAccount?: number,
  position?: number,
): Promise<Directory> {
  const eventLog = await openLevelEventLog({ clock: new ManualClock(NOW) }, { dataDir });
  const d = new Directory(maxAuditEntriesPerAccount === undefined ? {} : { maxAuditEntriesPerAccount });
  for await (const e of eventLog.readAll(position === undefined ? {} : { limit: position })) d.apply(e);
  await eventLog.close();
  return d;
}

async function snapshotFiles(dataDir: string): Promise<string[]> {
  try {
    return (await readdir(join(dataDir, 'snapshots'))).sort();
  } catch {
    return [];
  }
}

async function newestSnapshot(dataDir: string): Promise<string> {
  const files = (await snapshotFiles(dataDir)).filter((f) => f.endsWith('.snapshot'));
  assert.ok(files.length > 0, 'a snapshot was saved');
  return join(dataDir, 'snapshots', files.at(-1)!);
}

const loaded = (lines: LogLine[]) => lines.some((l) => l.msg === 'directory loaded from its snapshot');
const refusals = (lines: LogLine[]) =>
  lines.filter((l) => l.msg.startsWith('directory snapshot not used')).map((l) => l.reason);

/**
 * A data dir whose log has a snapshot at its head and then `tail` more events (quick tunnels created
 * by a control plane with snapshots off, so no newer snapshot is saved).
 */
async function withSnapshot(events = 3000, tail = 0): Promise<string> {
  const dataDir = await history(events);
  await stop(await open(dataDir));
  if (tail > 0) {
    const edge = await open(dataDir, { snapshots: false });
    for (let i = 0; i < tail; i++) await edge.cp.createQuickTunnel(`q${i}.edge.test`);
    await stop(edge);
  }
  return dataDir;
}

/** Opens the data dir, checks the directory is the full fold's, returns the log lines. */
async function restartAndCompare(dataDir: string, init: Partial<ControlPlaneInit> = {}): Promise<LogLine[]> {
  const edge = await open(dataDir, init);
  const directory = edge.cp.directory;
  await stop(edge);
  assert.equal(directory.position, edge.eventLog.headPosition, 'nothing was appended at start');
  assertSameDirectory(directory, await fullFold(dataDir, init.maxAuditEntriesPerAccount));
  return edge.lines;
}

/** Rewrites the newest snapshot through `edit(header)` on its first page (the directory header). */
async function editHeader(dataDir: string, edit: (header: Record<string, unknown>) => void): Promise<void> {
  const options = { useRecords: true, moreTypes: true, mapsAsObjects: false } as const;
  const store = openFileSnapshotStore(join(dataDir, 'snapshots'));
  const [snapshot] = await store.list(DIRECTORY_SNAPSHOT);
  assert.ok(snapshot);
  const pages: Uint8Array[] = [];
  for await (const page of snapshot.pages()) pages.push(page);
  const header = new Unpackr(options).unpack(pages[0]!) as Record<string, unknown>;
  edit(header);
  pages[0] = Uint8Array.prototype.slice.call(new Packr(options).pack(header));
  await store.save(DIRECTORY_SNAPSHOT, snapshot.position, pages);
  await store.close();
}

describe('directory snapshot pages', () => {
  it('carry any plain data, not only what the directory holds today', async () => {
    // The codec knows nothing of the views: whatever plain data a future field holds comes back.
    const state = emptyDirectoryState();
    const odd = new Map<string, unknown>([
      ['empty', {}],
      ['nested', { inner: new Map([['k', new Set(['a', 'b'])]]), list: [1, 'two', null, { deep: [] }] }],
      [
        'numbers',
        { zero: -0, nan: Number.NaN, big: 2 ** 53 - 1, small: -1.5, inf: Number.POSITIVE_INFINITY },
      ],
      ['missing', { here: undefined, there: null }],
      ['unicode', { text: 'é 🐇 \u2028', '': 'empty key', '1': 'numeric key' }],
      ['frozen', Object.freeze({ a: 1 })],
    ]);
    const mixed = new Map<string, unknown>([
      ['a', 'text'],
      ['b', 7],
      ['c', null],
      ['d', { x: 1 }],
      ['e', ['list']],
      ['f', true],
    ]);
    Object.assign(state, { accounts: odd, zones: mixed });
    state.audit.set(
      'acc',
      Array.from({ length: 10 }, (_, i) => (i % 3 === 0 ? { i } : i % 3 === 1 ? { i, j: 'x' } : {})) as never,
    );
    const pages = directorySnapshotPages(state, {
      position: 0,
      anchor: null,
      maxAuditEntriesPerAccount: 5,
      pageRows: 3,
    });
    const { state: read } = await readDirectorySnapshot(
      (async function* () {
        yield* pages;
      })(),
      { maxAuditEntriesPerAccount: 5 },
      async () => {},
    );
    assert.deepStrictEqual(ordered(read), ordered(state));
    assert.ok(Object.is((read.accounts.get('numbers') as unknown as { zero: number }).zero, -0));
    assert.ok(Object.isFrozen(read.accounts.get('frozen')));
  });
});

describe('directory snapshots', () => {
  it('a restart loads the snapshot saved at close and gives the directory a full replay gives', async () => {
    const dataDir = await history(3000);
    const first = await open(dataDir);
    assert.ok(!loaded(first.lines));
    const head = first.eventLog.headPosition;
    await first.cp.createQuickTunnel('q.edge.test');
    await stop(first);
    assert.deepEqual(await snapshotFiles(dataDir), [
      `directory-${(head + 1).toString(16).padStart(16, '0')}.snapshot`,
    ]);

    const lines = await restartAndCompare(dataDir);
    assert.ok(loaded(lines));
    assert.deepEqual(refusals(lines), []);
    // Nothing new since: the snapshot is not written again.
    assert.equal(lines.filter((l) => l.msg === 'directory snapshot saved').length, 0);
  });

  it('folds the events appended after the snapshot on top of it', async () => {
    const dataDir = await withSnapshot(3000, 5);
    const lines = await restartAndCompare(dataDir);
    assert.ok(loaded(lines));
    const ready = lines.find((l) => l.msg === 'directory ready');
    assert.equal(ready?.folded, 5);
  });

  it('saves nothing and loads nothing with snapshots off', async () => {
    const dataDir = await withSnapshot(1000);
    const lines = await restartAndCompare(dataDir, { snapshots: false });
    assert.ok(!loaded(lines));
    const fresh = await history(1000, 2);
    await stop(await open(fresh, { snapshots: false }));
    assert.deepEqual(await snapshotFiles(fresh), []);
  });

  it('takes a snapshot in the background after a long fold at start and every N live events', async () => {
    const dataDir = await history(3000);
    const edge = await open(dataDir, { snapshotEveryEvents: 1000 });
    const head = edge.eventLog.headPosition;
    const name = (p: number) => `directory-${p.toString(16).padStart(16, '0')}.snapshot`;
    await waitFor(async () => (await snapshotFiles(dataDir)).includes(name(head)), {
      timeoutMs: 10_000,
      message: 'a snapshot after the fold at start',
    });
    await stop(edge);

    const live = await open(dataDir, { snapshotEveryEvents: 3 });
    for (let i = 0; i < 3; i++) await live.cp.createQuickTunnel(`live${i}.edge.test`);
    await waitFor(async () => (await snapshotFiles(dataDir)).includes(name(head + 3)), {
      timeoutMs: 10_000,
      message: 'a snapshot after 3 live events',
    });
    // Commands go on while it is written, and the one at close covers them.
    await live.cp.createQuickTunnel('after.edge.test');
    await stop(live);
    assert.deepEqual(await snapshotFiles(dataDir), [name(head + 3), name(head + 4)]);
    assert.ok(loaded(await restartAndCompare(dataDir)));
  });

  describe('falls back to a full replay, with a warning, when the snapshot', () => {
    it('has a damaged byte', async () => {
      const dataDir = await withSnapshot(3000, 2);
      const file = await newestSnapshot(dataDir);
      const bytes = await readFile(file);
      bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
      await writeFile(file, bytes);
      const lines = await restartAndCompare(dataDir);
      assert.ok(!loaded(lines));
      assert.deepEqual(refusals(lines), ['corrupt']);
    });

    it('is truncated', async () => {
      for (const cut of [1, 0.5, 0.999, 0]) {
        const dataDir = await withSnapshot(1000, 2);
        const file = await newestSnapshot(dataDir);
        const { length } = await readFile(file);
        const size = cut === 1 ? length - 1 : Math.floor(length * cut);
        await truncate(file, size);
        const lines = await restartAndCompare(dataDir);
        assert.ok(!loaded(lines), `truncated to ${size}`);
        assert.deepEqual(refusals(lines), ['corrupt']);
      }
    });

    it('has another file format', async () => {
      const dataDir = await withSnapshot(1000);
      const file = await newestSnapshot(dataDir);
      const bytes = await readFile(file);
      bytes.writeUInt32BE(99, 8);
      await writeFile(file, bytes);
      assert.deepEqual(refusals(await restartAndCompare(dataDir)), ['corrupt']);
    });

    it('was written by another version: page format, state version or fingerprint', async () => {
      for (const edit of [
        (h: Record<string, unknown>) => {
          h.format = 99;
        },
        (h: Record<string, unknown>) => {
          h.stateVersion = 99;
        },
        (h: Record<string, unknown>) => {
          h.fingerprint = '0123456789abcdef';
        },
      ]) {
        const dataDir = await withSnapshot(1000, 1);
        await editHeader(dataDir, edit);
        const lines = await restartAndCompare(dataDir);
        assert.ok(!loaded(lines));
        assert.deepEqual(refusals(lines), ['version']);
      }
    });

    it('was folded with another audit limit', async () => {
      const dataDir = await withSnapshot(1000);
      const lines = await restartAndCompare(dataDir, { maxAuditEntriesPerAccount: 10 });
      assert.deepEqual(refusals(lines), ['audit_limit']);
    });

    it('is past the end of the log', async () => {
      const dataDir = await withSnapshot(3000);
      const shorter = await history(1000, 2);
      await mkdir(join(shorter, 'snapshots'));
      const file = await newestSnapshot(dataDir);
      await copyFile(file, join(shorter, 'snapshots', file.slice(file.lastIndexOf('/') + 1)));
      const lines = await restartAndCompare(shorter);
      assert.deepEqual(refusals(lines), ['other_log']);
    });

    it('belongs to another log', async () => {
      const dataDir = await withSnapshot(1000);
      const other = await history(3000, 3);
      await mkdir(join(other, 'snapshots'));
      const file = await newestSnapshot(dataDir);
      await copyFile(file, join(other, 'snapshots', file.slice(file.lastIndexOf('/') + 1)));
      const lines = await restartAndCompare(other);
      assert.deepEqual(refusals(lines), ['other_log']);
    });

    it('is damaged, and uses the one before it', async () => {
      const dataDir = await withSnapshot(1000, 2);
      // A second snapshot: two more events, then a close with snapshots on.
      const edge = await open(dataDir);
      await edge.cp.createQuickTunnel('second.edge.test');
      await stop(edge);
      const files = (await snapshotFiles(dataDir)).filter((f) => f.endsWith('.snapshot'));
      assert.equal(files.length, 2);
      await truncate(await newestSnapshot(dataDir), 100);
      const lines = await restartAndCompare(dataDir);
      assert.deepEqual(refusals(lines), ['corrupt']);
      assert.ok(loaded(lines));
    });
  });

  it('keeps the previous snapshot when a save is killed (kill -9) half-way', async () => {
    const dataDir = await withSnapshot(1000);
    const good = await newestSnapshot(dataDir);
    const before = await readFile(good);
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', WRITER, join(dataDir, 'snapshots'), '99999999'],
      {
        cwd: REPO_ROOT,
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    const lines = createInterface({ input: child.stdout! });
    await withDeadline(once(lines, 'line'), 20_000, 'the writer to start writing');
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
    const files = await snapshotFiles(dataDir);
    assert.ok(
      files.some((f) => f.endsWith('.tmp')),
      `a half-written file is left: ${files.join(', ')}`,
    );
    assert.deepEqual(await readFile(good), before);

    const restart = await restartAndCompare(dataDir);
    assert.ok(loaded(restart));
    // The next save clears what the killed one left.
    const edge = await open(dataDir);
    await edge.cp.createQuickTunnel('after-crash.edge.test');
    await stop(edge);
    assert.ok(!(await snapshotFiles(dataDir)).some((f) => f.endsWith('.tmp')));
  });

  it('works the same on the in-memory log, whose snapshots live as long as it does', async () => {
    const clock = new ManualClock(NOW);
    const eventLog = openMemoryEventLog({ clock });
    const first = capturingLogger();
    const cp = await ControlPlane.open({ clock, log: first.logger, eventLog }, INIT);
    const created = await cp.initialize({ accountName: 'ops', zone: 'example.test', member: 'admin' });
    const p = cp.authenticate(created.token);
    await cp.createTunnel(p, p.accountId, 'web');
    await cp.routeDns(p, p.accountId, 'web', {
      hostname: 'app.example.test',
      overwrite: false,
      origin: 'manual',
    });
    cp.close();

    const second = capturingLogger();
    const again = await ControlPlane.open({ clock, log: second.logger, eventLog }, INIT);
    assert.ok(loaded(second.lines));
    const d = new Directory();
    for await (const e of eventLog.readAll()) d.apply(e);
    assertSameDirectory(again.directory, d);
    assert.equal(
      again.directory.tunnelForHost('app.example.test'),
      again.directory.tunnelByName(p.accountId, 'web')?.tunnelId,
    );
    again.close();
    await eventLog.close();
    // Nothing happened since the snapshot it loaded: none is written again.
    assert.ok(!second.lines.some((l) => l.msg === 'directory snapshot saved'));
    assert.ok(first.lines.some((l) => l.msg === 'directory snapshot saved'));
  });
});
