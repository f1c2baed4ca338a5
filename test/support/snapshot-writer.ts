/**
 * A child process for the snapshot crash test:
 *   snapshot-writer.ts <dir> <position>   saves a snapshot at <position> in a file snapshot store on
 *                                         <dir> whose pages never end (64 KiB each, a tick apart),
 *                                         printing "writing" once a few are out, until it is killed
 */
import { setImmediate } from 'node:timers/promises';
import { openFileSnapshotStore } from '../../src/store/snapshot-store.ts';

const [dir, position] = process.argv.slice(2);
if (!dir || !position) {
  process.stderr.write('usage: snapshot-writer.ts <dir> <position>\n');
  process.exit(2);
}

const store = openFileSnapshotStore(dir);
async function* endless(): AsyncGenerator<Uint8Array> {
  for (let i = 0; ; i++) {
    yield new Uint8Array(64 * 1024).fill(i & 0xff);
    if (i === 16) process.stdout.write('writing\n');
    await setImmediate();
  }
}
await store.save('directory', Number(position), endless());
