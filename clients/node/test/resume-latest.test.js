'use strict';
const assert = require('node:assert/strict');
const { after, before, describe, it } = require('node:test');
const { SidecarClient } = require('..');
const { SidecarProcess } = require('./support/sidecar');
const { take } = require('./support/iterate');

describe('a latest subscription resumes a topic it had no event on', { timeout: 60000 }, () => {
  let sidecar;
  const clients = [];

  before(async () => {
    sidecar = new SidecarProcess({});
    await sidecar.start();
  });

  after(async () => {
    for (const c of clients) c.close();
    if (sidecar) await sidecar.destroy();
  });

  function newClient(options = {}) {
    const c = new SidecarClient({ address: sidecar.address, deadlineMs: 5000, ...options });
    clients.push(c);
    return c;
  }

  /** Bounded wait for something only the subscription's own state shows. */
  async function until(check, what, timeoutMs = 10000) {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  it('gets the events published while the sidecar restarted, once and in order', async () => {
    const publisher = newClient({ waitForReady: true });
    await publisher.publish({ topic: 'quiet', data: { n: 0 } }); // older than the subscription
    const sub = newClient().subscribe(['quiet', 'empty'], {
      reconnect: { initialDelayMs: 20, maxDelayMs: 100 },
    });
    const missed = take(sub, 3, 20000); // iterating opens the stream
    // The stream's opening names where each topic starts; nothing is yielded for it.
    await until(() => sub.offsets.quiet === 1 && sub.offsets.empty === 0, 'the announced offsets');

    await sidecar.stop('SIGTERM');
    await sidecar.start();
    const published = [
      await publisher.publish({ topic: 'quiet', data: { n: 1 } }),
      await publisher.publish({ topic: 'quiet', data: { n: 2 } }),
      await publisher.publish({ topic: 'empty', data: { n: 1 } }),
    ];
    const got = await missed;
    assert.deepEqual(got.map((e) => e.id), published.map((p) => p.eventId));
    assert.deepEqual(got.map((e) => [e.topic, e.offset]), [['quiet', 2], ['quiet', 3], ['empty', 1]]);

    const later = await publisher.publish({ topic: 'quiet', data: { n: 3 } });
    const [next] = await take(sub, 1);
    assert.equal(next.id, later.eventId);
    assert.deepEqual(sub.offsets, { quiet: 4, empty: 1 });
    sub.close();
  });
});
