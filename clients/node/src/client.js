'use strict';
/** SidecarClient: promise-based access to every RPC of SidecarService. */
const grpc = require('@grpc/grpc-js');
const { loadService } = require('./proto');
const convert = require('./convert');
const { CancelledError, fromGrpcError } = require('./errors');
const { Subscription } = require('./subscription');
const { GroupConsumer } = require('./consumer');
const { outcomeHandler } = require('./outcome');

const DEFAULT_ADDRESS = '127.0.0.1:50051';
// The sidecar's own default total timeout for a Call is 30 s; a caller that
// waits less than that still gets a DEADLINE_EXCEEDED rather than hanging.
const DEFAULT_DEADLINE_MS = 30000;
// grpc-js waits a second (growing to two minutes) before reconnecting a broken
// channel; a sidecar on the same host is back much sooner after a restart.
const DEFAULT_CHANNEL_OPTIONS = Object.freeze({
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 5000,
});

class SidecarClient {
  /** @param {import('../index').SidecarClientOptions} [options] */
  constructor(options = {}) {
    const Service = loadService(options.protoDir);
    this.address = options.address || DEFAULT_ADDRESS;
    this.deadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;
    this.waitForReady = Boolean(options.waitForReady);
    const credentials = options.credentials || grpc.credentials.createInsecure();
    this._protoDir = options.protoDir;
    this._stub = new Service(this.address, credentials, { ...DEFAULT_CHANNEL_OPTIONS, ...options.channelOptions });
    // Kept off the instance's enumerable fields so it never shows in a log of the client.
    Object.defineProperty(this, '_token', { value: options.token || '', enumerable: false });
    this._subscriptions = new Set();
    this._closed = false;
  }

  /** One HTTP request to a configured integration; any upstream status is a response. */
  async call(request, options) {
    return convert.callResponse(await this._unary('Call', convert.callRequest(request), options));
  }

  /** Stores a call for durable asynchronous delivery; resolves once it is durable, to {id, duplicate}. */
  async enqueueCall(request, options) {
    const res = await this._unary('EnqueueCall', convert.enqueueCallRequest(request), options);
    return { id: res.id, duplicate: res.duplicate };
  }

  async getQueuedCall(id, options) {
    return convert.queuedCall(await this._unary('GetQueuedCall', { id }, options));
  }

  async cancelQueuedCall(id, options) {
    return convert.queuedCall(await this._unary('CancelQueuedCall', { id }, options));
  }

  async verifyWebhook(request, options) {
    return convert.verifyResponse(await this._unary('VerifyWebhook', convert.verifyRequest(request), options));
  }

  async publish(request, options) {
    const res = await this._unary('Publish', convert.publishRequest(request), options);
    return { eventId: res.eventId, offset: res.offset, replayed: res.replayed };
  }

  async ack(request, options) {
    const res = await this._unary('Ack', convert.ackRequest(request), options);
    return { settled: res.settled, unknownEventIds: [...res.unknownEventIds] };
  }

  async getPresence(topic, options) {
    const res = await this._unary('GetPresence', { topic }, options);
    return { topic: res.topic, connections: res.connections, users: res.users };
  }

  /** An async iterator of events (and gaps) that reconnects and resumes by itself. */
  subscribe(topics, options = {}) {
    this._checkOpen();
    const subscription = new Subscription(this, topics, options);
    if (!subscription.closed) this._subscriptions.add(subscription);
    return subscription;
  }

  /** A durable group member that acks each event after `handler` settles. */
  consume(options) {
    this._checkOpen();
    return new GroupConsumer(this, options);
  }

  /** consume() for queued-call result topics: `handler` gets each outcome as a QueuedCall. */
  consumeCallOutcomes(options) {
    const { handler } = options || {};
    return this.consume({ ...options, handler: outcomeHandler(handler, { protoDir: this._protoDir }) });
  }

  /** Closes every subscription and the channel. */
  close() {
    if (this._closed) return;
    this._closed = true;
    for (const subscription of [...this._subscriptions]) subscription.close();
    this._stub.close();
  }

  _checkOpen() {
    if (this._closed) throw new CancelledError('the client is closed', { code: grpc.status.CANCELLED });
  }

  _metadata(extra, waitForReady) {
    // grpc-js takes waitForReady as a metadata option, not a call option.
    const metadata = new grpc.Metadata({ waitForReady: Boolean(waitForReady) });
    for (const [key, value] of Object.entries(extra || {})) metadata.set(key, value);
    if (this._token) metadata.set('authorization', `Bearer ${this._token}`);
    return metadata;
  }

  _unary(method, request, options = {}) {
    this._checkOpen();
    const deadlineMs = options.deadlineMs ?? this.deadlineMs;
    const callOptions = deadlineMs > 0 && Number.isFinite(deadlineMs) ? { deadline: Date.now() + deadlineMs } : {};
    const metadata = this._metadata(options.metadata, options.waitForReady ?? this.waitForReady);
    const { signal } = options;
    return new Promise((resolve, reject) => {
      if (signal && signal.aborted) {
        reject(new CancelledError('aborted before the call started', { code: grpc.status.CANCELLED }));
        return;
      }
      const onAbort = () => call.cancel();
      const call = this._stub[method](request, metadata, callOptions, (err, res) => {
        if (signal) signal.removeEventListener('abort', onAbort);
        if (err) reject(fromGrpcError(err));
        else resolve(res);
      });
      if (signal) signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  // For Subscription: a new Subscribe stream (no deadline: it lives until closed).
  _openStream(request, options = {}) {
    return this._stub.Subscribe(request, this._metadata(options.metadata));
  }

  _forget(subscription) {
    this._subscriptions.delete(subscription);
  }
}

module.exports = { SidecarClient, DEFAULT_ADDRESS, DEFAULT_DEADLINE_MS, DEFAULT_CHANNEL_OPTIONS };
