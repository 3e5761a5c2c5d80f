'use strict';
const assert = require('node:assert/strict');
const http = require('node:http');
const { after, before, describe, it } = require('node:test');
const { DeadLetter, SidecarClient } = require('..');
const { SidecarProcess } = require('./support/sidecar');

function metricsText(sidecar) {
  return new Promise((resolve, reject) => {
    http.get(`${sidecar.adminUrl}/metrics`, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

function counter(text, name, labels) {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

describe('durable group consumer against a real sidecar process', { timeout: 60000 }, () => {
  let sidecar;
  let client;

  before(async () => {
    sidecar = new SidecarProcess({
      config: {
        webhooks: {
          delivery: {
            ack_timeout: '5s',
            max_attempts: 5,
            backoff: { initial: '50ms', multiplier: 1, max: '50ms', jitter: 'none' },
            heartbeat: '300ms',
          },
        },
      },
    });
    await sidecar.start();
    client = new SidecarClient({ address: sidecar.address, deadlineMs: 5000 });
  });

  after(async () => {
    if (client) client.close();
    if (sidecar) await sidecar.destroy();
  });

  it('acks success when the handler resolves, retry when it throws, dead-letter on DeadLetter', async () => {
    const published = [];
    for (let n = 0; n < 4; n += 1) published.push(await client.publish({ topic: 'jobs', data: { n } }));

    const attempts = new Map();
    let finish;
    const finished = new Promise((resolve) => { finish = resolve; });
    const handled = new Set();
    const consumer = client.consume({
      group: 'workers',
      topics: ['jobs'],
      consumer: 'worker-1',
      concurrency: 2,
      handler: async (event) => {
        const { n } = JSON.parse(event.data.toString());
        attempts.set(n, [...(attempts.get(n) || []), event.deliveryAttempt]);
        if (n === 1 && event.deliveryAttempt === 1) throw new Error('transient failure');
        handled.add(n);
        if (handled.size === 4) finish();
        if (n === 2) throw new DeadLetter('cannot be processed');
      },
      onError: (err) => assert.fail(`ack failed: ${err.message}`),
    });
    const timer = setTimeout(() => finish(new Error('not every event was handled in time')), 10000);
    const outcome = await finished;
    clearTimeout(timer);
    await consumer.close();
    assert.equal(outcome, undefined, outcome && outcome.message);

    assert.deepEqual(attempts.get(0), [1]);
    assert.deepEqual(attempts.get(1), [1, 2], 'a throwing handler gets the event again');
    assert.deepEqual(attempts.get(2), [1]);
    assert.deepEqual(attempts.get(3), [1]);
    const text = await metricsText(sidecar);
    assert.equal(counter(text, 'sidecar_acks_total', 'group="workers",outcome="success"'), 3);
    assert.equal(counter(text, 'sidecar_acks_total', 'group="workers",outcome="retry"'), 1);
    assert.equal(counter(text, 'sidecar_acks_total', 'group="workers",outcome="dead_letter"'), 1);
    assert.equal(published.length, 4);
  });
});
