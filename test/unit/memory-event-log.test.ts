import { ManualClock } from '../../src/shared/clock.ts';
import { openMemoryEventLog } from '../../src/store/memory-event-log.ts';
import { eventLogContract } from './event-log.contract.ts';

eventLogContract('memory', async () => {
  const clock = new ManualClock();
  return { log: openMemoryEventLog({ clock }), clock };
});
