'use strict';
const assert = require('node:assert/strict');
const { after, before, describe, it } = require('node:test');
const { SidecarClient } = require('..');
const { SidecarProcess } = require('./support/sidecar');
const { flood } = require('./support/events');
const { take } = require('./support/iterate');

describe('gaps from a real sidecar process', { timeout: 60000 }, () => {
  let sidecar;
  let client;

  before(async () => {
    // drop_oldest: a subscriber that falls behind loses events and is told so with a Gap.
    sidecar = new SidecarProcess({ config: { realtime: { slow_consumer: 'drop_oldest', queue_size: 4 } } });
    await sidecar.start();
    client = new SidecarClient({ address: sidecar.address, deadlineMs: 5000 });
  });

  after(async () => {
    if (client) client.close();
    if (sidecar) await sidecar.destroy();
  });

  it('a slow consumer gets a gap item, and every offset is either yielded or inside a gap', async () => {
    const sub = client.subscribe('burst', { start: 'earliest', reconnect: { initialDelayMs: 50 } });
    const first = await client.publish({ topic: 'burst', data: 'first' });
    const [opened] = await take(sub, 1);
    assert.equal(opened.id, first.eventId);

    // Not reading now: these fill the transport's buffers, then the sidecar's queue of 4.
    const last = await flood(client, 'burst');

    const covered = [opened.offset];
    const gaps = [];
    while (covered.length < last) {
      const [item] = await take(sub, 1);
      if (item.kind === 'gap') {
        gaps.push(item);
        for (let o = item.fromOffset; o <= item.toOffset; o += 1) covered.push(o);
      } else {
        covered.push(item.offset);
      }
    }
    sub.close();
    assert.ok(gaps.length >= 1, 'the consumer fell behind and was told');
    assert.ok(gaps.every((g) => g.topic === 'burst' && g.reason === 'SLOW_CONSUMER'));
    assert.deepEqual(covered, Array.from({ length: last }, (_, i) => i + 1), 'in order, none twice, none missing');
    // A reconnect would resume after the gap, not ask for the dropped events again.
    assert.deepEqual(sub.offsets, { burst: last });
  });
});
