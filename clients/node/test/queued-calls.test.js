'use strict';
const assert = require('node:assert/strict');
const { after, before, describe, it } = require('node:test');
const {
  IdempotencyKeyReusedError, NotFoundError, OUTCOME_TYPES, SidecarClient, queuedCallOutcome,
} = require('..');
const { SidecarProcess, Upstream } = require('./support/sidecar');
const { take } = require('./support/iterate');

const WAIT_MS = 10000;

/** Runs consumeCallOutcomes in `group` until `stop()`; `next()` is the next QueuedCall its handler got. */
function consuming(client, topics, group) {
  const got = [];
  const waiting = [];
  const consumer = client.consumeCallOutcomes({
    group,
    topics,
    handler: (call) => {
      const resolve = waiting.shift();
      if (resolve) resolve(call);
      else got.push(call);
    },
  });
  return {
    next() {
      if (got.length) return Promise.resolve(got.shift());
      let timer;
      return Promise.race([
        new Promise((resolve) => waiting.push(resolve)),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no outcome within ${WAIT_MS} ms`)), WAIT_MS);
        }),
      ]).finally(() => clearTimeout(timer));
    },
    stop: () => consumer.close(),
  };
}

describe('queued calls against a real sidecar process', { timeout: 60000 }, () => {
  const upstream = new Upstream();
  let sidecar;
  let client;

  before(async () => {
    await upstream.start();
    sidecar = new SidecarProcess({
      config: {
        integrations: {
          pay: { base_url: `${upstream.url}/v1`, allow_insecure_http: true },
        },
        webhooks: { delivery: { backoff: { initial: '10ms', max: '10ms' } } },
      },
    });
    await sidecar.start();
    client = new SidecarClient({ address: sidecar.address, deadlineMs: WAIT_MS });
  });

  after(async () => {
    if (client) client.close();
    if (sidecar) await sidecar.destroy();
    await upstream.close();
  });

  it('enqueues a call; its outcome arrives through consumeCallOutcomes as a QueuedCall', async () => {
    upstream.respond = (req, body) => ({ status: 201, body: JSON.stringify({ got: body.toString(), url: req.url }) });
    const queued = await client.enqueueCall({
      integration: 'pay',
      method: 'POST',
      path: '/charges',
      query: { expand: 'customer' },
      body: '{"amount":5}',
      idempotencyKey: 'charge-7',
    });
    assert.match(queued.id, /^qc_/);
    assert.equal(queued.duplicate, false);

    const outcomes = consuming(client, 'calls.pay', 'billing');
    let done;
    try {
      done = await outcomes.next();
    } finally {
      await outcomes.stop();
    }
    assert.equal(done.id, queued.id);
    assert.equal(done.integration, 'pay');
    assert.equal(done.state, 'SUCCEEDED');
    assert.equal(done.attempts, 1);
    assert.equal(done.lastStatus, 201);
    assert.equal(done.resultTopic, 'calls.pay');
    assert.equal(done.idempotencyKey, 'charge-7');
    assert.ok(done.createdAt instanceof Date && done.finishedAt instanceof Date);
    assert.ok(done.createdAt <= done.finishedAt);
    assert.equal(done.nextAttemptAt, null);
    assert.equal(done.response.status, 201);
    assert.deepEqual(JSON.parse(done.response.body.toString()),
      { got: '{"amount":5}', url: '/v1/charges?expand=customer' });

    const got = await client.getQueuedCall(queued.id);
    // The event says what GetQueuedCall says (the store keeps no response duration).
    assert.deepEqual({ ...got, response: { ...got.response, durationMs: 0 } },
      { ...done, response: { ...done.response, durationMs: 0 } });
    const seen = upstream.seen.filter((s) => s.url.startsWith('/v1/charges'));
    assert.equal(seen.length, 1);
    assert.equal(seen[0].headers['idempotency-key'], 'charge-7');
  });

  it('the same key is the same call; another request with it is refused', async () => {
    const notBefore = new Date(Date.now() + 3600 * 1000);
    const request = { integration: 'pay', method: 'POST', path: '/refunds', body: 'a', idempotencyKey: 'refund-1', notBefore };
    const first = await client.enqueueCall(request);
    const again = await client.enqueueCall(request);
    assert.deepEqual(again, { id: first.id, duplicate: true });
    const err = await client.enqueueCall({ ...request, body: 'b' }).then(() => assert.fail('expected a refusal'), (e) => e);
    assert.ok(err instanceof IdempotencyKeyReusedError, `got ${err && err.name}`);
    assert.equal(err.reason, 'IDEMPOTENCY_KEY_REUSED');
    await client.cancelQueuedCall(first.id);
  });

  it('notBefore in the future keeps a call QUEUED until cancelled', async () => {
    const notBefore = new Date(Math.floor(Date.now() / 1000) * 1000 + 3600 * 1000);
    const waiting = await client.enqueueCall({
      integration: 'pay', method: 'POST', path: '/later', idempotencyKey: 'later-1', notBefore,
      resultTopic: 'billing.outcomes', orderingKey: 'customer-7',
    });
    // Enqueued after it and due now, this one runs and finishes first: the queue works,
    // and the waiting call was not attempted.
    const now = await client.enqueueCall({
      integration: 'pay', method: 'POST', path: '/now', idempotencyKey: 'now-1', resultTopic: 'billing.outcomes',
    });
    const outcomes = consuming(client, ['billing.outcomes'], 'later');
    try {
      assert.equal((await outcomes.next()).id, now.id);
    } finally {
      await outcomes.stop();
    }
    const held = await client.getQueuedCall(waiting.id);
    assert.equal(held.state, 'QUEUED');
    assert.equal(held.attempts, 0);
    assert.equal(held.nextAttemptAt.getTime(), notBefore.getTime());
    assert.equal(held.orderingKey, 'customer-7');
    assert.equal(held.response, null);
    assert.equal(held.finishedAt, null);
    const cancelled = await client.cancelQueuedCall(waiting.id);
    assert.equal(cancelled.state, 'CANCELLED');
    assert.ok(cancelled.finishedAt instanceof Date);
    assert.deepEqual(await client.cancelQueuedCall(waiting.id), cancelled);
    assert.equal(upstream.seen.filter((s) => s.url === '/v1/later').length, 0);
  });

  it('an unknown id is a NotFoundError; a missing key never leaves the client', async () => {
    for (const attempt of [client.getQueuedCall('qc_missing'), client.cancelQueuedCall('qc_missing')]) {
      const err = await attempt.then(() => assert.fail('expected NOT_FOUND'), (e) => e);
      assert.ok(err instanceof NotFoundError, `got ${err && err.name}`);
      assert.equal(err.reason, 'QUEUED_CALL_NOT_FOUND');
    }
    await assert.rejects(client.enqueueCall({ integration: 'pay', method: 'POST' }), /needs an idempotencyKey/);
    await assert.rejects(client.enqueueCall({ integration: 'pay', idempotencyKey: 'x', notBefore: 'tomorrow' }),
      /notBefore must be a Date/);
  });

  it('a failed call is an outcome with its answer; queuedCallOutcome reads it from a live subscription', async () => {
    upstream.respond = () => ({ status: 400, body: 'card declined' });
    const queued = await client.enqueueCall({
      integration: 'pay', method: 'POST', path: '/declined', idempotencyKey: 'declined-1', resultTopic: 'declined.outcomes',
    });
    const sub = client.subscribe('declined.outcomes', { start: 'earliest' });
    let event;
    try {
      [event] = await take(sub, 1);
    } finally {
      sub.close();
    }
    assert.equal(event.type, 'call.failed');
    assert.equal(event.attributes.queued_call_id, queued.id);
    const failed = queuedCallOutcome(event);
    assert.equal(failed.id, queued.id);
    assert.equal(failed.state, 'FAILED');
    assert.equal(failed.lastStatus, 400);
    assert.equal(failed.response.body.toString(), 'card declined');
  });

  it('consumeCallOutcomes dead-letters an event that is not an outcome', async () => {
    const topic = 'mixed.outcomes';
    await client.publish({ topic, type: 'something.else', data: {} });
    const queued = await client.enqueueCall({
      integration: 'pay', method: 'POST', path: '/mixed', idempotencyKey: 'mixed-1', resultTopic: topic,
    });
    const outcomes = consuming(client, topic, 'mixed');
    try {
      assert.equal((await outcomes.next()).id, queued.id);
    } finally {
      await outcomes.stop();
    }
    const res = await fetch(`${sidecar.adminUrl}/webhooks/events?group=mixed&status=dead&topic=${topic}`);
    const { events } = await res.json();
    assert.equal(events.length, 1, JSON.stringify(events));
    assert.match(JSON.stringify(events[0]), /not a queued-call outcome/);
  });

  it('parses the proto3 JSON mapping, ignoring fields it does not know', () => {
    const data = Buffer.from(JSON.stringify({
      id: 'qc_1', state: 'QUEUED_CALL_STATE_DEAD', attempts: 8, lastStatus: 503,
      finishedAt: '2026-01-02T03:04:05.250Z',
      response: { status: 503, body: Buffer.from('busy').toString('base64'), durationMs: '1500' },
      aFieldFromANewerSidecar: true,
    }));
    const call = queuedCallOutcome({ kind: 'event', id: 'e1', type: 'call.dead', data });
    assert.equal(call.state, 'DEAD');
    assert.equal(call.attempts, 8);
    assert.equal(call.finishedAt.toISOString(), '2026-01-02T03:04:05.250Z');
    assert.equal(call.createdAt, null);
    assert.equal(call.response.body.toString(), 'busy');
    assert.equal(call.response.durationMs, 1500);
    assert.deepEqual([...OUTCOME_TYPES].sort(), ['call.dead', 'call.failed', 'call.succeeded']);
    assert.throws(() => queuedCallOutcome({ id: 'e2', type: 'other', data: Buffer.from('{}') }), /not a queued-call outcome/);
    assert.throws(() => queuedCallOutcome({ id: 'e3', type: 'call.dead', data: Buffer.from('nope') }), TypeError);
  });
});
