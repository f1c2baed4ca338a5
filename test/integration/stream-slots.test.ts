/**
 * Every finished request must give its stream slot back. The agent serves at most
 * `maxConcurrentStreams` streams at once; if a finished stream never closed (a GET whose empty request
 * side nobody read), the slots would run out and the next request would hang for good.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import { type Stack, startStack } from '../support/stack.ts';
import { withDeadline } from '../support/wait.ts';

describe('stream slots', () => {
  let stack: Stack;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  before(async () => {
    stack = await startStack({ agent: { maxConcurrentStreams: 4 } });
  });
  after(async () => {
    agent.destroy();
    await stack?.close();
  });

  it('serves many more sequential requests (with and without bodies) than there are slots', async () => {
    for (let i = 0; i < 40; i++) {
      const method = i % 2 === 0 ? 'GET' : 'POST';
      const res = await withDeadline(
        stack.request('/echo', { method, agent, ...(method === 'POST' ? { body: `n=${i}` } : {}) }),
        5000,
        `request ${i} (${method}) got no answer: a stream slot leaked`,
      );
      assert.equal(res.status, 200);
    }
  });
});
