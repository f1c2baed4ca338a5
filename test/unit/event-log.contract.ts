/**
 * The EventLog contract: every implementation runs this same suite (see memory-event-log.test.ts and
 * level-event-log.test.ts). Nothing here sleeps: tests wait for the events they expect, with a deadline.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { firstValueFrom, lastValueFrom, type Observable, take, toArray } from 'rxjs';
import type { ManualClock } from '../../src/shared/clock.ts';
import { isWarrenError } from '../../src/shared/errors.ts';
import type { EventLog, NewEvent, StoredEvent } from '../../src/store/event-log.ts';
import type { SnapshotStore, StoredSnapshot } from '../../src/store/snapshot-store.ts';
import { withDeadline } from '../support/wait.ts';

export interface ContractSubject {
  log: EventLog;
  /** When given, `recordedAt` must come from it. */
  clock?: ManualClock;
  /** Opens the same storage again after `log` has been closed (durable implementations only). */
  reopen?: () => Promise<EventLog>;
}

const DEADLINE_MS = 5_000;

function ev(type: string, data: unknown = {}): NewEvent {
  return { type, data };
}

async function all(iterable: AsyncIterable<StoredEvent>): Promise<StoredEvent[]> {
  const out: StoredEvent[] = [];
  for await (const e of iterable) out.push(e);
  return out;
}

/** The first `count` events of `obs`, or a failure after the deadline. */
function collect(obs: Observable<StoredEvent>, count: number): Promise<StoredEvent[]> {
  return withDeadline(
    firstValueFrom(obs.pipe(take(count), toArray())),
    DEADLINE_MS,
    `waiting for ${count} subscribed events`,
  );
}

function positions(events: readonly StoredEvent[]): number[] {
  return events.map((e) => e.position);
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

async function rejectsWith(promise: Promise<unknown> | (() => unknown), code: string): Promise<void> {
  await assert.rejects(
    async () => (typeof promise === 'function' ? await promise() : await promise),
    (err: unknown) => {
      assert.ok(isWarrenError(err), `expected a WarrenError, got ${String(err)}`);
      assert.equal(err.code, code);
      return true;
    },
  );
}

export interface ContractOptions {
  /** The implementation keeps its data across close and `reopen`; adds the reopen tests. */
  durable?: boolean;
}

export function eventLogContract(
  name: string,
  open: () => Promise<ContractSubject>,
  opts: ContractOptions = {},
): void {
  describe(`EventLog contract: ${name}`, () => {
    const opened: EventLog[] = [];
    async function subject(): Promise<ContractSubject> {
      const s = await open();
      opened.push(s.log);
      return s;
    }
    afterEach(async () => {
      for (const log of opened.splice(0)) await log.close();
    });

    describe('append', () => {
      it('stores events with versions, positions, recordedAt, schema and meta', async () => {
        const { log, clock } = await subject();
        assert.equal(log.headPosition, 0);
        const result = await log.append('tunnel-a', [
          { type: 'TunnelCreated', data: { name: 'web' }, meta: { actor: 'admin', correlationId: 'c-1' } },
          ev('ConnectionRegistered', { connIndex: 0 }),
        ]);
        assert.deepEqual(result, { nextExpectedVersion: 2, lastPosition: 2 });
        assert.equal(log.headPosition, 2);
        const events = await log.readStream('tunnel-a');
        assert.equal(events.length, 2);
        const [first, second] = events as [StoredEvent, StoredEvent];
        assert.deepEqual(
          { ...first, recordedAt: 0 },
          {
            stream: 'tunnel-a',
            version: 1,
            position: 1,
            recordedAt: 0,
            schema: 1,
            type: 'TunnelCreated',
            data: { name: 'web' },
            meta: { actor: 'admin', correlationId: 'c-1' },
          },
        );
        assert.equal(second.version, 2);
        assert.equal(second.position, 2);
        assert.deepEqual(second.meta, {});
        assert.equal(typeof first.recordedAt, 'number');
        if (clock) {
          assert.equal(first.recordedAt, clock.now());
          clock.advance(1_000);
          await log.append('tunnel-a', [ev('X')]);
          const [third] = await log.readStream('tunnel-a', { fromVersion: 3 });
          assert.equal(third?.recordedAt, clock.now());
        }
      });

      it('checks an exact expectedVersion and writes nothing on conflict', async () => {
        const { log } = await subject();
        await log.append('s-1', [ev('A'), ev('B')]);
        const ok = await log.append('s-1', [ev('C')], { expectedVersion: 2 });
        assert.deepEqual(ok, { nextExpectedVersion: 3, lastPosition: 3 });
        await assert.rejects(log.append('s-1', [ev('D')], { expectedVersion: 2 }), (err: unknown) => {
          assert.ok(isWarrenError(err, 'version_conflict'));
          assert.equal(err.retryable, true);
          return true;
        });
        assert.equal(log.headPosition, 3);
        assert.equal((await log.readStream('s-1')).length, 3);
      });

      it('expectedVersion 0 means the stream must not exist yet', async () => {
        const { log } = await subject();
        assert.deepEqual(await log.append('s-1', [ev('A')], { expectedVersion: 0 }), {
          nextExpectedVersion: 1,
          lastPosition: 1,
        });
        await rejectsWith(log.append('s-1', [ev('B')], { expectedVersion: 0 }), 'version_conflict');
        await rejectsWith(log.append('s-2', [ev('B')], { expectedVersion: 1 }), 'version_conflict');
      });

      it("'any' and no expectedVersion append whatever the version", async () => {
        const { log } = await subject();
        await log.append('s-1', [ev('A')], { expectedVersion: 'any' });
        await log.append('s-1', [ev('B')]);
        const r = await log.append('s-1', [ev('C')], { expectedVersion: 'any' });
        assert.equal(r.nextExpectedVersion, 3);
      });

      it('an empty append writes nothing, returns the current version and still checks expectedVersion', async () => {
        const { log } = await subject();
        assert.deepEqual(await log.append('s-1', []), { nextExpectedVersion: 0, lastPosition: 0 });
        await log.append('s-2', [ev('A')]);
        await log.append('s-1', [ev('A'), ev('B')]);
        await log.append('s-2', [ev('C')]);
        assert.deepEqual(await log.append('s-1', [], { expectedVersion: 2 }), {
          nextExpectedVersion: 2,
          lastPosition: 3,
        });
        await rejectsWith(log.append('s-1', [], { expectedVersion: 5 }), 'version_conflict');
        assert.equal(log.headPosition, 4);
      });

      it('is atomic: one unstorable event leaves the log untouched', async () => {
        const { log } = await subject();
        await log.append('s-1', [ev('A')]);
        const bad = JSON.parse('{"__proto__": 1}');
        await rejectsWith(log.append('s-1', [ev('B'), ev('C', bad)]), 'bad_request');
        await rejectsWith(log.append('s-1', [ev('B'), ev('C', { n: Number.NaN })]), 'bad_request');
        await rejectsWith(log.append('s-1', [ev('B'), ev('C', new Date(0))]), 'bad_request');
        assert.equal(log.headPosition, 1);
        assert.equal((await log.readStream('s-1')).length, 1);
        assert.equal((await log.append('s-1', [ev('B')])).lastPosition, 2, 'no position was used up');
      });

      it('refuses bad stream names, event types and expectedVersions', async () => {
        const { log } = await subject();
        for (const stream of ['', 'a!b', 'a b', '-a', 'x'.repeat(201)]) {
          await rejectsWith(log.append(stream, [ev('A')]), 'bad_request');
        }
        await rejectsWith(log.append('s-1', [ev('')]), 'bad_request');
        await rejectsWith(log.append('s-1', [ev('A')], { expectedVersion: -1 }), 'bad_request');
        await rejectsWith(log.append('s-1', [ev('A')], { expectedVersion: 1.5 }), 'bad_request');
        assert.equal(log.headPosition, 0);
      });

      it('stores data as the codec defines it: -0 becomes 0, undefined properties are dropped', async () => {
        const { log } = await subject();
        await log.append('s-1', [ev('A', { z: -0, gone: undefined, list: [1, { k: undefined }] })]);
        const [e] = await log.readStream('s-1');
        assert.deepEqual(e?.data, { z: 0, list: [1, {}] });
        assert.ok(Object.is((e!.data as { z: number }).z, 0));
      });

      it('hands out frozen events that callers cannot change', async () => {
        const { log } = await subject();
        const data = { nested: { n: 1 } };
        await log.append('s-1', [ev('A', data)]);
        data.nested.n = 2; // the caller's object is not the stored one
        const [e] = await log.readStream('s-1');
        assert.deepEqual(e?.data, { nested: { n: 1 } });
        assert.ok(Object.isFrozen(e));
        assert.ok(Object.isFrozen((e!.data as { nested: object }).nested));
      });

      it('keeps positions gapless and versions per stream gapless under concurrent appends', async () => {
        const { log } = await subject();
        const streams = ['s-a', 's-b', 's-c'];
        await Promise.all(
          range(0, 59).map((i) => log.append(streams[i % 3]!, [ev('E', { i }), ev('F', { i })])),
        );
        const everything = await all(log.readAll());
        assert.deepEqual(positions(everything), range(1, 120));
        assert.equal(log.headPosition, 120);
        for (const s of streams) {
          const events = await log.readStream(s);
          assert.deepEqual(
            events.map((e) => e.version),
            range(1, 40),
          );
          // Both events of one append are adjacent in the global order.
          for (let v = 0; v < 40; v += 2) assert.equal(events[v + 1]!.position, events[v]!.position + 1);
        }
      });

      it('lets exactly one of several appends with the same expectedVersion win', async () => {
        const { log } = await subject();
        await log.append('s-1', [ev('A')]);
        const results = await Promise.allSettled(
          range(1, 5).map((i) => log.append('s-1', [ev('B', { i })], { expectedVersion: 1 })),
        );
        assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
        for (const r of results) {
          if (r.status === 'rejected') assert.ok(isWarrenError(r.reason, 'version_conflict'));
        }
        assert.equal(log.headPosition, 2);
      });
    });

    describe('readStream', () => {
      it('reads from a version, and [] for a stream that does not exist', async () => {
        const { log } = await subject();
        await log.append('s-1', [ev('A'), ev('B'), ev('C')]);
        await log.append('s-10', [ev('other stream sharing a prefix')]);
        const from2 = await log.readStream('s-1', { fromVersion: 2 });
        assert.deepEqual(
          from2.map((e) => [e.version, e.type]),
          [
            [2, 'B'],
            [3, 'C'],
          ],
        );
        assert.deepEqual(await log.readStream('s-1', { fromVersion: 4 }), []);
        assert.deepEqual(await log.readStream('nope'), []);
        assert.equal((await log.readStream('s-10')).length, 1);
        await rejectsWith(log.readStream('s-1', { fromVersion: 0 }), 'bad_request');
      });
    });

    describe('readAll', () => {
      it('reads the global order across streams, from a position, up to a limit', async () => {
        const { log } = await subject();
        await log.append('s-1', [ev('A1')]);
        await log.append('s-2', [ev('B1'), ev('B2')]);
        await log.append('s-1', [ev('A2')]);
        await log.append('s-3', [ev('C1')]);
        const everything = await all(log.readAll());
        assert.deepEqual(
          everything.map((e) => `${e.position}:${e.stream}:${e.type}`),
          ['1:s-1:A1', '2:s-2:B1', '3:s-2:B2', '4:s-1:A2', '5:s-3:C1'],
        );
        assert.deepEqual(positions(await all(log.readAll({ fromPosition: 3 }))), [3, 4, 5]);
        assert.deepEqual(positions(await all(log.readAll({ fromPosition: 2, limit: 2 }))), [2, 3]);
        assert.deepEqual(positions(await all(log.readAll({ limit: 0 }))), []);
        assert.deepEqual(positions(await all(log.readAll({ fromPosition: 6 }))), []);
        assert.throws(
          () => log.readAll({ fromPosition: 0 }),
          (err: unknown) => isWarrenError(err, 'bad_request'),
        );
      });

      it('reads more than one internal batch and can stop early', async () => {
        const { log } = await subject();
        for (let i = 0; i < 6; i++)
          await log.append(
            `s-${i}`,
            range(1, 100).map((n) => ev('E', { n })),
          );
        assert.deepEqual(positions(await all(log.readAll())), range(1, 600));
        const firstFew: number[] = [];
        for await (const e of log.readAll({ fromPosition: 250 })) {
          firstFew.push(e.position);
          if (firstFew.length === 10) break;
        }
        assert.deepEqual(firstFew, range(250, 259));
      });
    });

    describe('subscribe', () => {
      it('catches up from the start and then delivers live events', async () => {
        const { log } = await subject();
        await log.append('s-1', [ev('A'), ev('B')]);
        await log.append('s-2', [ev('C')]);
        const received = collect(log.subscribe(), 5);
        await log.append('s-1', [ev('D')]);
        await log.append('s-3', [ev('E')]);
        const events = await received;
        assert.deepEqual(positions(events), [1, 2, 3, 4, 5]);
        assert.deepEqual(
          events.map((e) => e.type),
          ['A', 'B', 'C', 'D', 'E'],
        );
      });

      it('starts at fromPosition, also beyond the head', async () => {
        const { log } = await subject();
        await log.append('s-1', [ev('A'), ev('B'), ev('C')]);
        assert.deepEqual(positions(await collect(log.subscribe(2), 2)), [2, 3]);
        const ahead = collect(log.subscribe(5), 1);
        await log.append('s-1', [ev('D'), ev('E')]);
        assert.deepEqual(positions(await ahead), [5]);
      });

      it('has no gaps or duplicates when appends race with catch-up', async () => {
        const { log } = await subject();
        // More than one catch-up page, so the catch-up really spans several reads.
        for (let i = 0; i < 3; i++)
          await log.append(
            `s-${i}`,
            range(1, 250).map((n) => ev('Old', { n })),
          );
        const total = 750 + 200;
        const appendPair = (i: number) => log.append(`r-${i % 7}`, [ev('New', { i }), ev('New2', { i })]);
        // A burst issued before the subscriptions have read anything...
        const burst = range(1, 50).map(appendPair);
        const early = collect(log.subscribe(), total);
        const mid = collect(log.subscribe(400), total - 399);
        // ...and a trickle that keeps appending, one await at a time, while they catch up.
        const trickle = (async () => {
          for (const i of range(51, 100)) await appendPair(i);
        })();
        const late = collect(log.subscribe(), total);
        await Promise.all([...burst, trickle]);
        assert.deepEqual(positions(await early), range(1, total));
        assert.deepEqual(positions(await mid), range(400, total));
        assert.deepEqual(positions(await late), range(1, total));
      });

      it('stays in order when a subscriber appends from inside its handler', async () => {
        const { log } = await subject();
        const seen: number[] = [];
        const done = withDeadline(
          new Promise<void>((resolve, reject) => {
            log.subscribe().subscribe((e) => {
              seen.push(e.position);
              if (e.type !== 'Echo') log.append('echo', [ev('Echo', { of: e.position })]).catch(reject);
              if (seen.length === 4) resolve();
            });
          }),
          DEADLINE_MS,
          'echoed events',
        );
        // Two live events in one append: the echo of the first is appended (synchronously, in the
        // in-memory log) while the second is still to be delivered.
        await log.append('s-1', [ev('A'), ev('B')]);
        await done;
        assert.deepEqual(seen, [1, 2, 3, 4]);
      });

      it('completes, without error, a subscription still catching up when the log closes', async () => {
        const { log } = await subject();
        for (let i = 0; i < 3; i++)
          await log.append(
            `s-${i}`,
            range(1, 250).map((n) => ev('E', { n })),
          );
        const received = withDeadline(
          lastValueFrom(log.subscribe().pipe(toArray())),
          DEADLINE_MS,
          'completion',
        );
        await log.close();
        const got = positions(await received);
        assert.deepEqual(got, range(1, got.length));
      });

      it('serves several subscribers independently and stops delivering after unsubscribe', async () => {
        const { log } = await subject();
        const seen: number[] = [];
        const sub = log.subscribe().subscribe((e) => seen.push(e.position));
        const other = collect(log.subscribe(), 3);
        await log.append('s-1', [ev('A')]);
        await log.append('s-1', [ev('B')]);
        sub.unsubscribe();
        await log.append('s-1', [ev('C')]);
        assert.deepEqual(positions(await other), [1, 2, 3]);
        assert.deepEqual(seen, [1, 2]);
      });

      it('completes when the log closes; subscribing afterwards throws store_closed', async () => {
        const { log } = await subject();
        await log.append('s-1', [ev('A')]);
        const observable = log.subscribe();
        const everything = withDeadline(
          lastValueFrom(observable.pipe(toArray())),
          DEADLINE_MS,
          'subscription to complete on close',
        );
        await collect(log.subscribe(), 1); // the log is serving subscriptions
        await log.close();
        assert.deepEqual(positions(await everything), [1]);
        assert.throws(
          () => log.subscribe(),
          (err: unknown) => isWarrenError(err, 'store_closed'),
        );
        await rejectsWith(lastValueFrom(observable), 'store_closed');
      });
    });

    describe('close', () => {
      it('is idempotent, finishes appends already started and refuses later calls', async () => {
        const { log } = await subject();
        const done = lastValueFrom(log.subscribe().pipe(toArray()));
        const inFlight = log.append('s-1', [ev('A')], { sync: true });
        await Promise.all([log.close(), log.close()]);
        await log.close();
        assert.deepEqual(await inFlight, { nextExpectedVersion: 1, lastPosition: 1 });
        assert.deepEqual(positions(await withDeadline(done, DEADLINE_MS, 'completion')), [1]);
        assert.equal(log.headPosition, 1);
        await rejectsWith(log.append('s-1', [ev('B')]), 'store_closed');
        await rejectsWith(log.readStream('s-1'), 'store_closed');
        await rejectsWith(() => all(log.readAll()), 'store_closed');
      });

      // Registered only for durable implementations, rather than skipped at run time.
      if (opts.durable) {
        it('keeps everything across close and reopen', async () => {
          const s = await subject();
          assert.ok(s.reopen, 'a durable subject provides reopen');
          await s.log.append('s-1', [ev('A', { n: 1 }), ev('B', { deep: [{ x: 'é' }] })]);
          await s.log.append('s-2', [ev('C')], { sync: true });
          const before = await all(s.log.readAll());
          await s.log.close();

          const log = await s.reopen();
          opened.push(log);
          assert.equal(log.headPosition, 3);
          assert.deepEqual(await all(log.readAll()), before);
          await rejectsWith(log.append('s-1', [ev('D')], { expectedVersion: 1 }), 'version_conflict');
          assert.deepEqual(await log.append('s-1', [ev('D')], { expectedVersion: 2 }), {
            nextExpectedVersion: 3,
            lastPosition: 4,
          });
          assert.deepEqual(positions(await collect(log.subscribe(), 4)), [1, 2, 3, 4]);
        });
      }
    });

    describe('snapshots', () => {
      const bytes = (...values: number[]) => Uint8Array.from(values);
      async function read(snapshot: StoredSnapshot): Promise<number[][]> {
        const out: number[][] = [];
        for await (const page of snapshot.pages()) out.push([...page]);
        return out;
      }
      function store(log: EventLog): SnapshotStore {
        assert.ok(log.snapshots, 'the log keeps snapshots');
        return log.snapshots;
      }

      it('saves pages at a position and reads them back, newest first, keeping two per name', async () => {
        const snapshots = store((await subject()).log);
        assert.deepEqual(await snapshots.list('directory'), []);
        await snapshots.save('directory', 10, [bytes(1, 2), bytes(3)]);
        await snapshots.save(
          'directory',
          20,
          (async function* () {
            yield bytes(4);
            yield bytes(); // empty pages are dropped
            yield bytes(5, 6, 7);
          })(),
        );
        await snapshots.save('other', 5, [bytes(9)]);
        let listed = await snapshots.list('directory');
        assert.deepEqual(
          listed.map((s) => s.position),
          [20, 10],
        );
        assert.deepEqual(await read(listed[0]!), [[4], [5, 6, 7]]);
        assert.deepEqual(await read(listed[1]!), [[1, 2], [3]]);

        await snapshots.save('directory', 30, [bytes(8)]);
        listed = await snapshots.list('directory');
        assert.deepEqual(
          listed.map((s) => s.position),
          [30, 20],
        );
        // The same position again replaces that snapshot.
        await snapshots.save('directory', 30, [bytes(0)]);
        assert.deepEqual(await read((await snapshots.list('directory'))[0]!), [[0]]);

        await snapshots.delete('directory');
        assert.deepEqual(await snapshots.list('directory'), []);
        assert.deepEqual(
          (await snapshots.list('other')).map((s) => s.position),
          [5],
        );
      });

      it('keeps the earlier snapshots when a save fails half-way', async () => {
        const snapshots = store((await subject()).log);
        await snapshots.save('directory', 10, [bytes(1)]);
        const failing = (async function* () {
          yield bytes(2);
          throw new Error('the encoder broke');
        })();
        await assert.rejects(snapshots.save('directory', 20, failing), /the encoder broke/);
        const listed = await snapshots.list('directory');
        assert.deepEqual(
          listed.map((s) => s.position),
          [10],
        );
        assert.deepEqual(await read(listed[0]!), [[1]]);
      });

      it('refuses bad names and positions with bad_request', async () => {
        const snapshots = store((await subject()).log);
        await rejectsWith(snapshots.save('Bad/Name', 1, []), 'bad_request');
        await rejectsWith(snapshots.save('directory', -1, []), 'bad_request');
        await rejectsWith(snapshots.save('directory', 1.5, []), 'bad_request');
        await rejectsWith(snapshots.list('../x'), 'bad_request');
      });

      it('finishes a save already started when the log closes, then refuses with store_closed', async () => {
        const { log } = await subject();
        const snapshots = store(log);
        let release!: () => void;
        const gate = new Promise<void>((resolve) => {
          release = resolve;
        });
        const slow = (async function* () {
          yield bytes(1);
          await gate;
          yield bytes(2);
        })();
        const saving = snapshots.save('directory', 7, slow);
        const closing = log.close();
        release();
        await saving;
        await closing;
        await rejectsWith(snapshots.save('directory', 8, [bytes(3)]), 'store_closed');
        await rejectsWith(snapshots.list('directory'), 'store_closed');
      });

      if (opts.durable) {
        it('keeps snapshots across close and reopen', async () => {
          const s = await subject();
          assert.ok(s.reopen, 'a durable subject provides reopen');
          await store(s.log).save('directory', 3, [bytes(1, 2, 3), bytes(4)]);
          await s.log.close();
          const log = await s.reopen();
          opened.push(log);
          const listed = await store(log).list('directory');
          assert.deepEqual(
            listed.map((x) => x.position),
            [3],
          );
          assert.deepEqual(await read(listed[0]!), [[1, 2, 3], [4]]);
        });
      }
    });
  });
}
