'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { describe, it } = require('node:test');
const client = require('..');
const { freePort } = require('./support/sidecar');

describe('the package surface, and what happens with no sidecar at all', { timeout: 60000 }, () => {
  it('exports exactly what index.d.ts declares', () => {
    const dts = fs.readFileSync(path.join(__dirname, '..', 'index.d.ts'), 'utf8');
    const declared = [...dts.matchAll(/^export declare (?:const|class|function) (\w+)/gm)].map((m) => m[1]);
    assert.deepEqual(Object.keys(client).sort(), declared.sort());
  });

  it('maps gRPC codes and reasons to the error tree', () => {
    const { SidecarError, UnavailableError, CircuitOpenError, RateLimitedError, ResourceExhaustedError } = client;
    assert.ok(CircuitOpenError.prototype instanceof UnavailableError);
    assert.ok(RateLimitedError.prototype instanceof ResourceExhaustedError);
    const err = new RateLimitedError('slow down', { reason: 'RATE_LIMITED', retryDelayMs: 250 });
    assert.ok(err instanceof SidecarError && err instanceof Error);
    assert.equal(err.name, 'RateLimitedError');
    assert.equal(err.code, client.Code.RESOURCE_EXHAUSTED, 'the class gives the code');
    assert.equal(err.codeName, 'RESOURCE_EXHAUSTED');
    assert.equal(new client.InternalError('x').codeName, 'INTERNAL');
    assert.equal(new SidecarError('x').codeName, 'UNKNOWN');
    assert.equal(client.isReconnectable(err), false);
    assert.equal(client.isReconnectable(new client.SlowConsumerError('x')), true);
  });

  it('backoff waits a random time under an exponential ceiling (full jitter)', () => {
    const top = new client.Backoff({ initialDelayMs: 100, multiplier: 2, maxDelayMs: 1000 }, () => 0.999999);
    assert.deepEqual([0, 1, 2, 3, 4, 10].map((n) => top.delay(n)), [99, 199, 399, 799, 999, 999]);
    const bottom = new client.Backoff({}, () => 0);
    assert.equal(bottom.delay(5), 0);
    assert.deepEqual(client.DEFAULT_RECONNECT, { initialDelayMs: 100, multiplier: 2, maxDelayMs: 5000, maxAttempts: Infinity });
  });

  it('with nothing listening, a call is an UnavailableError without sidecar details', async () => {
    const c = new client.SidecarClient({ address: `127.0.0.1:${await freePort()}`, deadlineMs: 2000 });
    try {
      const err = await c.publish({ topic: 't', data: 'x' }).then(() => assert.fail('expected UNAVAILABLE'), (e) => e);
      assert.ok(err instanceof client.UnavailableError, `got ${err && err.name}`);
      assert.equal(err.reason, 'UNAVAILABLE');
      assert.equal(err.domain, '');
      assert.equal(err.retryDelayMs, null);
    } finally {
      c.close();
    }
  });

  it('a subscription gives up after maxAttempts failed reconnects and throws the last error', async () => {
    const c = new client.SidecarClient({ address: `127.0.0.1:${await freePort()}` });
    const reconnects = [];
    const sub = c.subscribe('t', {
      reconnect: { initialDelayMs: 10, maxDelayMs: 20, maxAttempts: 3 },
      onReconnect: (info) => reconnects.push(info),
    });
    try {
      const err = await sub.next().then(() => assert.fail('expected the subscription to give up'), (e) => e);
      assert.ok(err instanceof client.UnavailableError, `got ${err && err.name}`);
      assert.deepEqual(reconnects.map((r) => r.attempt), [1, 2, 3]);
      assert.ok(reconnects.every((r) => r.delayMs >= 0 && r.delayMs < 20));
      assert.equal(sub.closed, true);
      assert.deepEqual(await sub.next(), { value: undefined, done: true });
    } finally {
      c.close();
    }
  });

  it('a closed client refuses new work', async () => {
    const c = new client.SidecarClient({ address: `127.0.0.1:${await freePort()}` });
    c.close();
    await assert.rejects(c.publish({ topic: 't' }), client.CancelledError);
    assert.throws(() => c.subscribe('t'), client.CancelledError);
  });
});
