'use strict';
/** Publishing test events through a SidecarClient. */

/** Publishes `count` JSON events one after another; resolves to their PublishResponses. */
async function publishMany(client, topic, count, prefix) {
  const out = [];
  for (let i = 0; i < count; i += 1) {
    out.push(await client.publish({ topic, type: 'test.event', data: { prefix, i } }));
  }
  return out;
}

/**
 * Publishes 120 events of 16 KiB (10 at a time): more than the transport buffers
 * of a subscriber that is not reading, so the sidecar's small queue overflows.
 * Resolves to the highest offset published.
 */
async function flood(client, topic) {
  const payload = Buffer.alloc(16384, 'x');
  let last = 0;
  for (let batch = 0; batch < 12; batch += 1) {
    const done = await Promise.all(Array.from({ length: 10 }, () => client.publish({ topic, data: payload })));
    last = Math.max(last, ...done.map((p) => p.offset));
  }
  return last;
}

module.exports = { publishMany, flood };
