/**
 * A fake edge for the connection and supervisor machines: their `connect`, `watch` and `drain` actors,
 * where every dial and drain settles only when the test says so and nothing waits on real time. Unit
 * tests settle them one by one; property tests drive them from generated commands.
 */
import assert from 'node:assert/strict';
import type { EventObject } from 'xstate';
import { fromCallback, fromPromise } from 'xstate';
import type {
  ConnectInput,
  ConnectionSignal,
  DrainInput,
  LiveConnection,
  WatchInput,
} from '../../src/actors/connection.machine.ts';
import { connectionMachine } from '../../src/actors/connection.machine.ts';
import { supervisorMachine } from '../../src/actors/supervisor.machine.ts';
import type { Clock } from '../../src/shared/clock.ts';

export class FakeConnection implements LiveConnection {
  /** How it ended, once it has: aborted by the machine, or drained by a finished drain. */
  ended: 'aborted' | 'drained' | null = null;
  /** The reason the machine gave when it aborted this connection. */
  abortedWith: Error | null = null;
  constructor(
    readonly connectionId: string,
    readonly connIndex: number,
    readonly pop: string,
    private readonly onEnd: (conn: FakeConnection) => void,
  ) {}
  get live(): boolean {
    return this.ended === null;
  }
  get aborted(): boolean {
    return this.ended === 'aborted';
  }
  get drained(): boolean {
    return this.ended === 'drained';
  }
  abort(reason: Error): void {
    if (this.ended) return;
    this.abortedWith = reason;
    this.#end('aborted');
  }
  drain(): void {
    this.#end('drained');
  }
  #end(how: 'aborted' | 'drained'): void {
    if (this.ended) return;
    this.ended = how;
    this.onEnd(this);
  }
}

export interface FakeDial {
  readonly input: ConnectInput;
  readonly signal: AbortSignal;
  /** Clock time the machine invoked `connect` (0 without a clock). */
  readonly at: number;
  /** Succeeded, failed, or given up by the machine (its signal aborted). */
  settled: boolean;
  /** Hands the machine a new live connection. The dial must not be settled yet. */
  succeed(): FakeConnection;
  /** The dial fails with `err`. The dial must not be settled yet. */
  fail(err: unknown): void;
}

export interface FakeDrain {
  readonly input: DrainInput;
  readonly connection: FakeConnection;
  readonly connIndex: number;
  readonly signal: AbortSignal;
  settled: boolean;
  /** The connection drained: it ends and the drain resolves. The drain must not be settled yet. */
  finish(): void;
  fail(err: Error): void;
}

export interface FakeWatcher {
  readonly connection: FakeConnection;
  readonly connIndex: number;
  /** False once the machine stopped watching. */
  active: boolean;
  sendBack(signal: ConnectionSignal): void;
}

export interface FakeEdgeInit {
  /** Stamps each dial's `at`. */
  clock?: Clock;
  /**
   * Keep the contract of the agent's real `connect` actor: a connection handed over after the machine
   * stopped waiting for it (its signal aborted) is aborted, since nobody will ever hold it.
   */
  closeUnclaimed?: boolean;
}

export class FakeEdge {
  readonly dials: FakeDial[] = [];
  readonly drains: FakeDrain[] = [];
  readonly watchers: FakeWatcher[] = [];
  /** Handed out and not ended. */
  readonly live = new Set<FakeConnection>();
  /** Connections handed out so far. */
  handedOut = 0;
  /** Connections ended so far (aborted or drained). */
  ends = 0;
  readonly #init: FakeEdgeInit;

  constructor(init: FakeEdgeInit = {}) {
    this.#init = init;
  }

  get lastDial(): FakeDial {
    const dial = this.dials.at(-1);
    assert.ok(dial, 'no dial yet');
    return dial;
  }
  get lastDrain(): FakeDrain {
    const drain = this.drains.at(-1);
    assert.ok(drain, 'no drain yet');
    return drain;
  }
  pendingDials(): FakeDial[] {
    return this.dials.filter((d) => !d.settled);
  }
  pendingDial(connIndex: number): FakeDial | undefined {
    return this.dials.find((d) => !d.settled && d.input.connIndex === connIndex);
  }
  pendingDrains(): FakeDrain[] {
    return this.drains.filter((d) => !d.settled);
  }
  pendingDrain(connIndex: number): FakeDrain | undefined {
    return this.drains.find((d) => !d.settled && d.connIndex === connIndex);
  }
  activeWatchers(): FakeWatcher[] {
    return this.watchers.filter((w) => w.active);
  }
  watcher(connIndex: number): FakeWatcher | undefined {
    return this.watchers.find((w) => w.active && w.connIndex === connIndex);
  }

  /** The connection machine with this edge's actors. */
  connectionMachine() {
    return connectionMachine.provide({
      actors: {
        connect: fromPromise<LiveConnection, ConnectInput>(({ input, signal }) => this.#dial(input, signal)),
        watch: fromCallback<EventObject, WatchInput>(({ input, sendBack }) => {
          const connection = input.connection as FakeConnection;
          const watcher: FakeWatcher = {
            connection,
            connIndex: connection.connIndex,
            active: true,
            sendBack,
          };
          this.watchers.push(watcher);
          return () => {
            watcher.active = false;
          };
        }),
        drain: fromPromise<void, DrainInput>(({ input, signal }) => this.#drain(input, signal)),
      },
    });
  }

  /** The supervisor machine whose connections have this edge's actors. */
  supervisorMachine() {
    return supervisorMachine.provide({ actors: { connection: this.connectionMachine() } });
  }

  #dial(input: ConnectInput, signal: AbortSignal): Promise<LiveConnection> {
    return new Promise<LiveConnection>((resolve, reject) => {
      const dial: FakeDial = {
        input,
        signal,
        at: this.#init.clock?.now() ?? 0,
        settled: false,
        succeed: () => {
          settle(dial, 'dial');
          const conn = new FakeConnection(`c${this.handedOut + 1}`, input.connIndex, 'lhr', (c) => {
            this.live.delete(c);
            this.ends++;
          });
          this.handedOut++;
          this.live.add(conn);
          if (this.#init.closeUnclaimed) {
            signal.addEventListener('abort', () => conn.abort(signal.reason), { once: true });
          }
          resolve(conn);
          return conn;
        },
        fail: (err) => {
          settle(dial, 'dial');
          reject(err);
        },
      };
      rejectOnAbort(dial, signal, reject);
      this.dials.push(dial);
    });
  }

  #drain(input: DrainInput, signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const connection = input.connection as FakeConnection;
      const drain: FakeDrain = {
        input,
        connection,
        connIndex: connection.connIndex,
        signal,
        settled: false,
        finish: () => {
          settle(drain, 'drain');
          connection.drain();
          resolve();
        },
        fail: (err) => {
          settle(drain, 'drain');
          reject(err);
        },
      };
      rejectOnAbort(drain, signal, reject);
      this.drains.push(drain);
    });
  }
}

/** The test settles a dial or drain once; settling it twice is a mistake in the test. */
function settle(entry: { settled: boolean }, what: string): void {
  assert.ok(!entry.settled, `${what} already settled`);
  entry.settled = true;
}

/** When the machine gives up on a dial or drain the test has not settled, it rejects with the reason. */
function rejectOnAbort(
  entry: { settled: boolean },
  signal: AbortSignal,
  reject: (reason: unknown) => void,
): void {
  signal.addEventListener(
    'abort',
    () => {
      if (entry.settled) return;
      entry.settled = true;
      reject(signal.reason);
    },
    { once: true },
  );
}

/** Lets settled promises reach the machine: one macrotask turn drains every queued microtask. */
export const flush = (): Promise<void> => new Promise<void>((resolve) => setImmediate(resolve));
