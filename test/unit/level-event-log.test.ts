import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ClassicLevel } from 'classic-level';
import { ManualClock } from '../../src/shared/clock.ts';
import { isWarrenError } from '../../src/shared/errors.ts';
import type { EventLog, StoredEvent } from '../../src/store/event-log.ts';
import { openLevelEventLog } from '../../src/store/level-event-log.ts';
import { withDeadline } from '../support/wait.ts';
import { eventLogContract } from './event-log.contract.ts';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CHILD_SCRIPT = fileURLToPath(new URL('../support/open-level-log.ts', import.meta.url));
const DEADLINE_MS = 20_000;

const tempDirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'warren-event-log-'));
  tempDirs.push(dir);
  return dir;
}
after(async () => {
  for (const dir of tempDirs) await rm(dir, { recursive: true, force: true });
});

eventLogContract(
  'level',
  async () => {
    const clock = new ManualClock();
    const dataDir = await tempDir();
    const log = await openLevelEventLog({ clock }, { dataDir });
    return { log, clock, reopen: () => openLevelEventLog({ clock }, { dataDir }) };
  },
  { durable: true },
);

async function all(log: EventLog): Promise<StoredEvent[]> {
  const out: StoredEvent[] = [];
  for await (const e of log.readAll()) out.push(e);
  return out;
}

function child(dataDir: string, mode: 'open' | 'append'): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', CHILD_SCRIPT, dataDir, mode], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
}

describe('LevelDB event log', () => {
  const lockedMessage = (dir: string) =>
    `the data directory ${dir} is already in use by another edge; stop it or pass a different --data-dir`;

  it('refuses a second process on the same data directory with data_dir_locked', async () => {
    const dataDir = await tempDir();
    const log = await openLevelEventLog({ clock: new ManualClock() }, { dataDir });
    try {
      const proc = child(dataDir, 'open');
      const lines = createInterface({ input: proc.stdout! });
      const first = await withDeadline(
        (async () => {
          for await (const line of lines) return line;
          return '';
        })(),
        DEADLINE_MS,
        'the second process to report',
      );
      assert.deepEqual(JSON.parse(first), { code: 'data_dir_locked', message: lockedMessage(dataDir) });
    } finally {
      await log.close();
    }
  });

  it('refuses a second open in the same process, and opens again once closed', async () => {
    const dataDir = await tempDir();
    const log = await openLevelEventLog({ clock: new ManualClock() }, { dataDir });
    await assert.rejects(openLevelEventLog({ clock: new ManualClock() }, { dataDir }), (err: unknown) => {
      assert.ok(isWarrenError(err, 'data_dir_locked'));
      assert.equal(err.message, lockedMessage(dataDir));
      return true;
    });
    await log.close();
    const again = await openLevelEventLog({ clock: new ManualClock() }, { dataDir });
    await again.close();
  });

  it('keeps every acknowledged sync append when the process is killed', async () => {
    const dataDir = await tempDir();
    const proc = child(dataDir, 'append');
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    let acked = 0;
    try {
      await withDeadline(
        (async () => {
          for await (const line of createInterface({ input: proc.stdout! })) {
            const m = /^acked (\d+)$/.exec(line);
            assert.ok(m, `unexpected child output: ${line}`);
            acked = Number(m[1]);
            if (acked >= 50) {
              proc.kill('SIGKILL');
              return;
            }
          }
        })(),
        DEADLINE_MS,
        'the child to acknowledge 50 appends',
      );
    } finally {
      proc.kill('SIGKILL');
      await exited;
    }
    const log = await openLevelEventLog({ clock: new ManualClock() }, { dataDir });
    try {
      assert.ok(log.headPosition >= acked, `head ${log.headPosition} < acknowledged ${acked}`);
      const events = await all(log);
      assert.deepEqual(
        events.map((e) => e.position),
        Array.from({ length: log.headPosition }, (_, i) => i + 1),
      );
      assert.deepEqual(
        events.slice(0, acked).map((e) => e.data),
        Array.from({ length: acked }, (_, i) => ({ i: i + 1 })),
      );
      // Stream versions were recovered too: the next append continues each stream.
      const streamLength = (await log.readStream('crash-1')).length;
      const r = await log.append('crash-1', [{ type: 'After', data: {} }], { expectedVersion: streamLength });
      assert.equal(r.lastPosition, log.headPosition);
    } finally {
      await log.close();
    }
  });

  it('reports a damaged stored value as store_corrupt', async () => {
    const dataDir = await tempDir();
    const log = await openLevelEventLog({ clock: new ManualClock() }, { dataDir });
    await log.append('s-1', [{ type: 'A', data: {} }]);
    await log.close();
    const db = new ClassicLevel<string, Uint8Array>(join(dataDir, 'events'), {
      keyEncoding: 'utf8',
      valueEncoding: 'view',
    });
    await db.put('g!0000000000000001', new Uint8Array([0x93, 0x01, 0xc1]));
    await db.close();
    const reopened = await openLevelEventLog({ clock: new ManualClock() }, { dataDir });
    try {
      await assert.rejects(all(reopened), (err: unknown) => isWarrenError(err, 'store_corrupt'));
      // The start-up replay reads unfrozen events for speed; it checks them all the same.
      await assert.rejects(
        (async () => {
          for await (const _ of reopened.readAll({ frozen: false })) {
            // reading is the test
          }
        })(),
        (err: unknown) => isWarrenError(err, 'store_corrupt'),
      );
      await assert.rejects(reopened.readStream('s-1'), (err: unknown) => isWarrenError(err, 'store_corrupt'));
    } finally {
      await reopened.close();
    }
  });
});
