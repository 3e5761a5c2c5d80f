'use strict';
const assert = require('node:assert/strict');
const http = require('node:http');
const { after, before, describe, it } = require('node:test');
const { Code, DeadLetter, SidecarClient } = require('..');
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

  it('keeps consuming across a sidecar restart, each event handled once', async () => {
    const publisher = new SidecarClient({ address: sidecar.address, deadlineMs: 5000, waitForReady: true });
    const handled = [];
    const waiters = [];
    const handledCount = (n) => new Promise((resolve) => {
      waiters.push({ n, resolve });
      waiters.filter((w) => handled.length >= w.n).forEach((w) => w.resolve());
    });
    const reconnects = [];
    const consumer = client.consume({
      group: 'restarts',
      topics: ['tasks'],
      consumer: 'worker-2',
      reconnect: { initialDelayMs: 50, maxDelayMs: 400 },
      onReconnect: (info) => reconnects.push(info),
      handler: (event) => {
        handled.push(event.data.toString());
        waiters.filter((w) => handled.length >= w.n).forEach((w) => w.resolve());
      },
    });
    try {
      await publisher.publish({ topic: 'tasks', data: 'one' });
      await publisher.publish({ topic: 'tasks', data: 'two' });
      await handledCount(2);
      // The acks are sent after the handler returns: wait until the sidecar has them.
      const deadline = Date.now() + 5000;
      while (counter(await metricsText(sidecar), 'sidecar_acks_total', 'group="restarts",outcome="success"') < 2) {
        assert.ok(Date.now() < deadline, 'acks did not arrive');
        await new Promise((resolve) => setTimeout(resolve, 20));
      }

      await sidecar.stop('SIGTERM');
      await sidecar.start();
      await publisher.publish({ topic: 'tasks', data: 'three' });
      await publisher.publish({ topic: 'tasks', data: 'four' });
      await handledCount(4);
      assert.deepEqual(handled, ['one', 'two', 'three', 'four']);
      assert.ok(reconnects.length >= 1 && reconnects.every((r) => r.error.code === Code.UNAVAILABLE));
    } finally {
      await consumer.close();
      publisher.close();
    }
  });
});
