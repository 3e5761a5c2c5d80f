'use strict';
const assert = require('node:assert/strict');
const { after, before, describe, it } = require('node:test');
const grpc = require('@grpc/grpc-js');
const { InvalidArgumentError, SidecarClient, SlowConsumerError, UnavailableError } = require('..');
const { SidecarProcess } = require('./support/sidecar');
const { flood, publishMany } = require('./support/events');
const { take, brief } = require('./support/iterate');

const FAST_RECONNECT = { initialDelayMs: 50, maxDelayMs: 400 };

describe('subscribe against a real sidecar process', { timeout: 60000 }, () => {
  let sidecar;
  let publisher;
  const clients = [];

  before(async () => {
    // A small queue: a subscriber that stops reading is disconnected (SLOW_CONSUMER) quickly.
    sidecar = new SidecarProcess({ config: { realtime: { heartbeat: '300ms', queue_size: 4 } } });
    await sidecar.start();
    // The publisher waits for the channel to come back after the restart; subscribers do not.
    publisher = new SidecarClient({ address: sidecar.address, deadlineMs: 5000, waitForReady: true });
    clients.push(publisher);
  });

  after(async () => {
    for (const c of clients) c.close();
    if (sidecar) await sidecar.destroy();
  });

  function newClient(channelOptions) {
    const c = new SidecarClient({ address: sidecar.address, deadlineMs: 5000, channelOptions });
    clients.push(c);
    return c;
  }

  for (const signal of ['SIGTERM', 'SIGKILL']) {
    it(`resumes after a sidecar restart mid-stream (${signal}) with no event lost or repeated`, async () => {
      const orders = `orders-${signal}`;
      const audit = `audit-${signal}`;
      // Record every SubscribeRequest the client sends (a grpc-js client interceptor).
      const requests = [];
      const recorder = (options, nextCall) => new grpc.InterceptingCall(nextCall(options), {
        sendMessage(message, next) {
          if (options.method_definition.path.endsWith('/Subscribe')) requests.push(message);
          next(message);
        },
      });
      const client = newClient({ interceptors: [recorder] });
      const reconnects = [];
      const sub = client.subscribe([orders, audit], {
        start: 'earliest',
        reconnect: FAST_RECONNECT,
        onReconnect: (info) => reconnects.push(info),
      });
      const before = [
        ...(await publishMany(publisher, orders, 5, 'a')),
        ...(await publishMany(publisher, audit, 2, 'a')),
      ];
      const first = await take(sub, 7);
      assert.deepEqual(first.map((e) => e.id).sort(), before.map((p) => p.eventId).sort());
      assert.deepEqual(sub.offsets, { [orders]: 5, [audit]: 2 });

      // Wait for the rest while the sidecar goes away and comes back.
      const rest = take(sub, 5, 15000);
      const exit = await sidecar.stop(signal);
      assert.equal(exit.signal, signal === 'SIGTERM' ? null : 'SIGKILL', 'SIGTERM: the sidecar stopped by itself');
      await sidecar.start();
      const after = [
        ...(await publishMany(publisher, orders, 4, 'b')),
        ...(await publishMany(publisher, audit, 1, 'b')),
      ];
      const second = await rest;
      assert.deepEqual(second.map((e) => e.id).sort(), after.map((p) => p.eventId).sort());

      const all = [...first, ...second];
      const offsets = (topic) => all.filter((e) => e.topic === topic).map((e) => e.offset);
      assert.deepEqual(offsets(orders), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
      assert.deepEqual(offsets(audit), [1, 2, 3]);
      assert.ok(reconnects.length >= 1, 'reconnected at least once');
      assert.ok(reconnects.every((r) => r.error instanceof UnavailableError), reconnects.map((r) => r.error.reason).join());
      // The sidecar, not only the client, skipped what was already yielded.
      assert.equal(requests[0].start, 'START_POSITION_EARLIEST');
      assert.equal(requests.length, reconnects.length + 1);
      for (const request of requests.slice(1)) {
        assert.equal(request.start, 'START_POSITION_AFTER_OFFSET');
        assert.deepEqual(request.afterOffsets, { [orders]: 5, [audit]: 2 });
      }

      // Nothing else is pending: the next item is the next event published.
      const sentinel = await publisher.publish({ topic: orders, data: 'last' });
      const [next] = await take(sub, 1);
      assert.equal(brief(next), `${orders}#10`);
      assert.equal(next.id, sentinel.eventId);
      await sub.return();
      assert.equal(sub.closed, true);
    });
  }

  it('yields events with their payload, attributes and time; break closes the stream', async () => {
    const client = newClient();
    const sub = client.subscribe('profile', { start: 'latest', reconnect: FAST_RECONNECT });
    // A live subscription from `latest` only sees what is published after it is open:
    // publish until the first event arrives, then check the ones after it.
    const seen = [];
    const reading = (async () => {
      for await (const item of sub) {
        seen.push(item);
        if (seen.length === 2) break;
      }
    })();
    const started = Date.now();
    const published = [];
    while (seen.length === 0 && Date.now() - started < 5000) {
      published.push(await publisher.publish({
        topic: 'profile', type: 'profile.updated', data: { n: published.length },
        attributes: { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' },
      }));
      await new Promise((resolve) => setImmediate(resolve));
    }
    const last = await publisher.publish({ topic: 'profile', type: 'profile.updated', data: { n: 'end' } });
    await reading;
    assert.equal(sub.closed, true, 'break closed the subscription');
    const [event] = seen;
    assert.equal(event.kind, 'event');
    assert.equal(event.type, 'profile.updated');
    assert.equal(event.contentType, 'application/json');
    assert.equal(event.attributes.traceparent, '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
    assert.ok(event.time instanceof Date && Math.abs(event.time.getTime() - Date.now()) < 60000);
    assert.equal(event.deliveryAttempt, 0);
    assert.deepEqual(JSON.parse(event.data.toString()).n, published.findIndex((p) => p.eventId === event.id));
    assert.equal(seen[1].offset, event.offset + 1);
    assert.ok(seen[1].offset <= last.offset);
  });

  it('heartbeats are swallowed and close() ends a pending iteration', async () => {
    // Count the heartbeats that reach the client (a grpc-js interceptor sees every message).
    let heartbeats = 0;
    let sawTwo;
    const twoHeartbeats = new Promise((resolve) => { sawTwo = resolve; });
    const counter = (options, nextCall) => new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        next(metadata, {
          onReceiveMessage(message, nextMessage) {
            if (message && message.message === 'heartbeat' && ++heartbeats === 2) sawTwo();
            nextMessage(message);
          },
        });
      },
    });
    const client = newClient({ interceptors: [counter] });
    const sub = client.subscribe('quiet', { start: 'latest', reconnect: FAST_RECONNECT });
    const pending = sub.next();
    let settled = false;
    pending.then(() => { settled = true; });
    await twoHeartbeats;
    assert.equal(settled, false, 'heartbeats are not yielded');
    sub.close();
    assert.deepEqual(await pending, { value: undefined, done: true });
  });

  it('resumes from saved offsets, and a bad request is a final error, not a reconnect loop', async () => {
    const published = await publishMany(publisher, 'ledger', 4, 'c');
    const client = newClient();
    const sub = client.subscribe('ledger', { afterOffsets: { ledger: 2 }, reconnect: FAST_RECONNECT });
    const items = await take(sub, 2);
    assert.deepEqual(items.map((e) => e.id), published.slice(2).map((p) => p.eventId));
    sub.close();

    const reconnects = [];
    const bad = client.subscribe(['no\ncontrol characters'], { onReconnect: (r) => reconnects.push(r) });
    const err = await bad.next().then(() => assert.fail('expected INVALID_ARGUMENT'), (e) => e);
    assert.ok(err instanceof InvalidArgumentError, `got ${err && err.name}`);
    assert.match(err.fieldViolations[0].field, /^topics/);
    assert.equal(reconnects.length, 0);
    assert.equal(bad.closed, true);
  });

  it('a slow consumer that the sidecar disconnects catches up with no event lost or repeated', async () => {
    const client = newClient();
    const reconnects = [];
    const sub = client.subscribe('firehose', {
      start: 'earliest', reconnect: FAST_RECONNECT, onReconnect: (info) => reconnects.push(info),
    });
    const first = await publisher.publish({ topic: 'firehose', data: 'first' });
    const [opened] = await take(sub, 1);
    assert.equal(opened.id, first.eventId);

    // Not reading now: the transport's buffers fill, then the sidecar's queue of 4 overflows.
    const last = await flood(publisher, 'firehose');
    const rest = await take(sub, last - 1, 20000);
    sub.close();
    assert.deepEqual([opened, ...rest].map(brief), Array.from({ length: last }, (_, i) => `firehose#${i + 1}`));
    assert.ok(reconnects.some((r) => r.error instanceof SlowConsumerError && r.error.reason === 'SLOW_CONSUMER'),
      `reconnected after: ${reconnects.map((r) => r.error.reason).join() || 'nothing'}`);
  });
});
