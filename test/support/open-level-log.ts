/**
 * A child process for the LevelDB event log tests:
 *   open-level-log.ts <dataDir> open     opens the log and prints {"ok":true} or {"code","message"}
 *   open-level-log.ts <dataDir> append   appends one event per line it prints ("acked <position>"),
 *                                        each with sync, until it is killed
 */
import { systemClock } from '../../src/shared/clock.ts';
import { isWarrenError } from '../../src/shared/errors.ts';
import { openLevelEventLog } from '../../src/store/level-event-log.ts';

const [dataDir, mode] = process.argv.slice(2);
if (!dataDir || (mode !== 'open' && mode !== 'append')) {
  process.stderr.write('usage: open-level-log.ts <dataDir> open|append\n');
  process.exit(2);
}

let log: Awaited<ReturnType<typeof openLevelEventLog>>;
try {
  log = await openLevelEventLog({ clock: systemClock }, { dataDir });
} catch (err) {
  const out = isWarrenError(err) ? { code: err.code, message: err.message } : { error: String(err) };
  process.stdout.write(`${JSON.stringify(out)}\n`);
  process.exit(1);
}

if (mode === 'open') {
  await log.close();
  process.stdout.write(`${JSON.stringify({ ok: true })}\n`);
} else {
  for (let i = 1; ; i++) {
    const { lastPosition } = await log.append(`crash-${i % 3}`, [{ type: 'Appended', data: { i } }], {
      sync: true,
    });
    process.stdout.write(`acked ${lastPosition}\n`);
  }
}
