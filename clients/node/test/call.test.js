'use strict';
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { after, before, describe, it } = require('node:test');
const {
  CircuitOpenError, InvalidArgumentError, NotFoundError, SidecarClient, SidecarError,
  UnauthenticatedError, UnavailableError, Code,
} = require('..');
const { SidecarProcess, Upstream } = require('./support/sidecar');
const { take } = require('./support/iterate');

const TOKEN = 'test-token-0123456789';
const JWT_SECRET = 'jwt-secret-for-the-node-client-tests-0123456789';
const HOOK_SECRET = 'hook-secret-0123456789';

describe('unary RPCs against a real sidecar', { timeout: 60000 }, () => {
  const upstream = new Upstream();
  let sidecar;
  let client;

  before(async () => {
    await upstream.start();
    sidecar = new SidecarProcess({
      env: { NODE_CLIENT_TEST_TOKEN: TOKEN, NODE_CLIENT_TEST_JWT: JWT_SECRET, NODE_CLIENT_TEST_HOOK: HOOK_SECRET },
      config: {
        server: { grpc: { api_token_env: 'NODE_CLIENT_TEST_TOKEN' } },
        realtime: { websocket: { jwt: { algorithms: ['HS256'], hs256_secret_env: 'NODE_CLIENT_TEST_JWT' } } },
        webhooks: {
          sources: {
            partner: {
              scheme: 'generic_hmac',
              secrets_env: ['NODE_CLIENT_TEST_HOOK'],
              signature_header: 'X-Signature',
              encoding: 'hex',
              prefix: 'sha256=',
              id_header: 'X-Event-Id',
            },
          },
        },
        integrations: {
          svc: {
            base_url: `${upstream.url}/v1`,
            allow_insecure_http: true,
            retry: { max_attempts: 1 },
            circuit_breaker: { consecutive_failures: 2, open_duration: '30s' },
          },
          flaky: {
            base_url: `${upstream.url}/flaky`,
            allow_insecure_http: true,
            retry: { max_attempts: 1 },
            circuit_breaker: { consecutive_failures: 2, open_duration: '30s' },
          },
        },
      },
    });
    await sidecar.start();
    client = new SidecarClient({ address: sidecar.address, token: TOKEN, deadlineMs: 5000 });
  });

  after(async () => {
    if (client) client.close();
    if (sidecar) await sidecar.destroy();
    await upstream.close();
  });

  it('call returns the upstream answer, with headers and body, and sends ours', async () => {
    upstream.respond = (req, body) => ({
      status: 201,
      headers: { 'x-echo': req.headers['x-request'] || '' },
      body: JSON.stringify({ got: body.toString(), url: req.url }),
    });
    const res = await client.call({
      integration: 'svc',
      method: 'POST',
      path: '/charges',
      query: { limit: '2' },
      headers: { 'X-Request': 'abc' },
      body: JSON.stringify({ amount: 5 }),
      idempotencyKey: 'key-1',
    });
    assert.equal(res.status, 201);
    assert.equal(res.attempts, 1);
    assert.equal(res.replayed, false);
    assert.equal(res.deprecation, null);
    assert.ok(Buffer.isBuffer(res.body));
    assert.deepEqual(JSON.parse(res.body.toString()), { got: '{"amount":5}', url: '/v1/charges?limit=2' });
    assert.equal(res.headers.find((h) => h.name.toLowerCase() === 'x-echo').value, 'abc');
    const seen = upstream.seen.at(-1);
    assert.equal(seen.headers['idempotency-key'], 'key-1');

    const again = await client.call({
      integration: 'svc', method: 'POST', path: '/charges', query: { limit: '2' },
      headers: { 'X-Request': 'abc' }, body: JSON.stringify({ amount: 5 }), idempotencyKey: 'key-1',
    });
    assert.equal(again.replayed, true);
    assert.equal(again.status, 201);
  });

  it('an open breaker is a CircuitOpenError with its reason and retry delay', async () => {
    upstream.respond = () => ({ status: 500, body: 'down' });
    for (let i = 0; i < 2; i += 1) {
      assert.equal((await client.call({ integration: 'flaky', path: '/x' })).status, 500);
    }
    const before = upstream.seen.length;
    const err = await client.call({ integration: 'flaky', path: '/x' }).then(
      () => assert.fail('expected the breaker to be open'), (e) => e);
    assert.ok(err instanceof CircuitOpenError, `got ${err && err.name}`);
    assert.ok(err instanceof UnavailableError && err instanceof SidecarError);
    assert.equal(err.code, Code.UNAVAILABLE);
    assert.equal(err.codeName, 'UNAVAILABLE');
    assert.equal(err.reason, 'CIRCUIT_OPEN');
    assert.equal(err.domain, 'integration-sidecar');
    assert.ok(err.retryDelayMs > 25000 && err.retryDelayMs <= 30000, `retryDelayMs ${err.retryDelayMs}`);
    assert.equal(upstream.seen.length, before, 'failing fast: nothing reached the upstream');
    assert.equal(err.upstreamReached, 'no');
    assert.equal(err.attempts, 0);
  });

  it('a bad path is an InvalidArgumentError naming the field', async () => {
    const err = await client.call({ integration: 'svc', path: '../../etc/passwd' }).then(
      () => assert.fail('expected INVALID_ARGUMENT'), (e) => e);
    assert.ok(err instanceof InvalidArgumentError, `got ${err && err.name}`);
    assert.equal(err.reason, 'INVALID_ARGUMENT');
    assert.equal(err.retryDelayMs, null);
    assert.deepEqual(err.fieldViolations.map((v) => v.field), ['path']);
    assert.ok(err.fieldViolations[0].description.length > 0);
  });

  it('an unknown integration is a NotFoundError', async () => {
    const err = await client.call({ integration: 'nope' }).then(() => assert.fail('expected NOT_FOUND'), (e) => e);
    assert.ok(err instanceof NotFoundError);
    assert.equal(err.reason, 'INTEGRATION_NOT_FOUND');
  });

  it('without the API token every RPC is refused, and the token never shows', async () => {
    const anonymous = new SidecarClient({ address: sidecar.address });
    const wrong = new SidecarClient({ address: sidecar.address, token: 'not-the-token' });
    try {
      for (const c of [anonymous, wrong]) {
        const err = await c.getPresence('broadcast').then(() => assert.fail('expected UNAUTHENTICATED'), (e) => e);
        assert.ok(err instanceof UnauthenticatedError);
        assert.equal(err.reason, 'API_TOKEN_INVALID');
        // A stream refused for its token is a final error, not a reconnect loop.
        const sub = c.subscribe('orders', { onReconnect: () => assert.fail('must not reconnect') });
        await assert.rejects(sub.next(), UnauthenticatedError);
      }
      assert.ok(!JSON.stringify(client).includes(TOKEN));
    } finally {
      anonymous.close();
      wrong.close();
    }
  });

  it('publish returns consecutive offsets and replays an idempotency key', async () => {
    const first = await client.publish({ topic: 'orders', type: 'order.created', data: { id: 1 } });
    const second = await client.publish({ topic: 'orders', type: 'order.created', data: Buffer.from('x') });
    assert.equal(second.offset, first.offset + 1);
    const keyed = await client.publish({ topic: 'orders', data: 'a', idempotencyKey: 'p-1' });
    const replay = await client.publish({ topic: 'orders', data: 'a', idempotencyKey: 'p-1' });
    assert.deepEqual(replay, { ...keyed, replayed: true });

    // The token goes on streams too.
    const sub = client.subscribe('orders', { start: 'earliest' });
    const [event] = await take(sub, 1);
    sub.close();
    assert.equal(event.id, first.eventId);
    assert.deepEqual(JSON.parse(event.data.toString()), { id: 1 });
    assert.equal(event.contentType, 'application/json');
  });

  it('getPresence, verifyWebhook and ack answer through the same client', async () => {
    assert.deepEqual(await client.getPresence('broadcast'), { topic: 'broadcast', connections: 0, users: 0 });

    const body = '{"kind":"invoice.paid"}';
    const signature = `sha256=${crypto.createHmac('sha256', HOOK_SECRET).update(body).digest('hex')}`;
    const valid = await client.verifyWebhook({
      source: 'partner', body, headers: [['X-Signature', signature], ['X-Event-Id', 'evt_1']],
    });
    assert.equal(valid.valid, true);
    assert.equal(valid.result, 'VALID');
    assert.equal(valid.eventId, 'evt_1');
    const forged = await client.verifyWebhook({
      source: 'partner', body: `${body} `, headers: { 'X-Signature': signature, 'X-Event-Id': 'evt_1' },
    });
    assert.equal(forged.valid, false);
    assert.equal(forged.result, 'INVALID_SIGNATURE');
    assert.ok(!forged.reason.includes(HOOK_SECRET));

    const unknown = await client.verifyWebhook({ source: 'nope', body }).then(() => assert.fail(), (e) => e);
    assert.ok(unknown instanceof NotFoundError);
    assert.equal(unknown.reason, 'WEBHOOK_SOURCE_NOT_FOUND');

    const noGroup = await client.ack({ group: 'g1', eventIds: ['evt-unknown'] }).then(() => assert.fail(), (e) => e);
    assert.ok(noGroup instanceof NotFoundError);
    assert.equal(noGroup.reason, 'CONSUMER_GROUP_NOT_FOUND');
    assert.deepEqual(noGroup.metadata, { group: 'g1' });
  });

  it('a per-call deadline and an AbortSignal end the call', async () => {
    let release;
    upstream.respond = () => ({ status: 200, body: 'late' });
    const hold = new Promise((resolve) => { release = resolve; });
    const original = upstream.server.listeners('request')[0];
    upstream.server.removeAllListeners('request');
    upstream.server.on('request', (req, res) => hold.then(() => original(req, res)));
    try {
      const timedOut = await client.call({ integration: 'svc', path: '/slow' }, { deadlineMs: 200 }).catch((e) => e);
      assert.equal(timedOut.code, Code.DEADLINE_EXCEEDED);
      const controller = new AbortController();
      const pending = client.call({ integration: 'svc', path: '/slow' }, { signal: controller.signal }).catch((e) => e);
      controller.abort();
      assert.equal((await pending).code, Code.CANCELLED);
    } finally {
      release();
      upstream.server.removeAllListeners('request');
      upstream.server.on('request', original);
    }
  });
});
