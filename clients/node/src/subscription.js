'use strict';
/**
 * Subscribe as an async iterator that survives the sidecar going away: on a
 * broken stream it reconnects with exponential backoff and full jitter and, for
 * live subscriptions, resumes after the last offset it yielded on each topic.
 */
const { Backoff, sleep } = require('./backoff');
const convert = require('./convert');
const {
  InvalidArgumentError, SidecarError, UnavailableError, fromGrpcError, isReconnectable,
} = require('./errors');

const START_POSITIONS = {
  latest: 'START_POSITION_LATEST',
  earliest: 'START_POSITION_EARLIEST',
};

class Subscription {
  /**
   * @param {object} opener has `_openStream(request, callOptions)` returning a grpc-js stream
   *   and `_forget(subscription)`
   * @param {string|string[]} topics
   * @param {object} options see index.d.ts SubscribeOptions
   */
  constructor(opener, topics, options = {}) {
    this._opener = opener;
    this._topics = typeof topics === 'string' ? [topics] : Array.from(topics || []);
    if (this._topics.length === 0) throw new TypeError('subscribe() needs at least one topic');
    this._options = options;
    this._group = options.group || '';
    this._initial = this._initialRequest(options);
    this._base = this._baseOffsets(options);
    // Per topic: the offset of the last event (or end of the last gap) yielded, or
    // where the stream said it started (its `subscribed` message) if nothing came yet.
    this._offsets = new Map();
    this._reconnect = options.reconnect === false ? null : new Backoff(options.reconnect || {});
    this._stop = new AbortController();
    this._call = null;
    this._closed = false;
    this._onAbort = () => this.close();
    if (options.signal) {
      if (options.signal.aborted) this.close();
      else options.signal.addEventListener('abort', this._onAbort, { once: true });
    }
    this._gen = this._run();
  }

  /**
   * Per topic, the last offset this subscription yielded, or where its stream started
   * when nothing came yet (persist it to resume later with `afterOffsets`).
   */
  get offsets() {
    return Object.fromEntries(this._offsets);
  }

  get closed() {
    return this._closed;
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  next() {
    return this._gen.next();
  }

  return(value) {
    this.close();
    return this._gen.return(value);
  }

  throw(error) {
    this.close();
    return this._gen.throw(error);
  }

  /** Stops the subscription: the stream is cancelled and the iterator ends. */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._stop.abort();
    if (this._call) this._call.cancel();
    if (this._options.signal) this._options.signal.removeEventListener('abort', this._onAbort);
    this._opener._forget(this);
  }

  _initialRequest(options) {
    const request = {
      topics: this._topics,
      start: 'START_POSITION_UNSPECIFIED',
      afterOffsets: {},
      afterEventId: '',
      group: this._group,
      consumer: options.consumer || '',
      maxInFlight: options.maxInFlight || 0,
    };
    if (this._group) return request;
    if (options.afterOffsets) {
      request.start = 'START_POSITION_AFTER_OFFSET';
      request.afterOffsets = { ...options.afterOffsets };
    } else if (options.afterEventId) {
      request.start = 'START_POSITION_AFTER_EVENT_ID';
      request.afterEventId = options.afterEventId;
    } else {
      const start = START_POSITIONS[options.start || 'latest'];
      if (!start) throw new TypeError("subscribe() start must be 'latest' or 'earliest'");
      request.start = start;
    }
    return request;
  }

  /** Where each topic resumes when nothing was yielded on it yet (absent: latest). */
  _baseOffsets(options) {
    if (this._group) return {};
    if (options.afterOffsets) return { ...options.afterOffsets };
    if (!options.afterEventId && options.start === 'earliest') {
      return Object.fromEntries(this._topics.map((t) => [t, 0]));
    }
    return {};
  }

  _request() {
    // A durable group continues where the group left off; a live subscription
    // that has yielded nothing yet still wants what it first asked for.
    if (this._group || this._offsets.size === 0) return this._initial;
    return {
      ...this._initial,
      start: 'START_POSITION_AFTER_OFFSET',
      afterOffsets: { ...this._base, ...Object.fromEntries(this._offsets) },
      afterEventId: '',
    };
  }

  /** The item to yield for one stream message, or null (heartbeat, repeat, opening). */
  _accept(message) {
    if (message.message === 'subscribed') {
      // A topic with nothing yielded yet resumes after the offset its stream started
      // after: with 'latest', events published while the stream was down still arrive.
      for (const [topic, offset] of Object.entries(message.subscribed.offsets || {})) {
        if (!this._offsets.has(topic)) this._offsets.set(topic, Number(offset));
      }
      return null;
    }
    if (message.message === 'event') {
      const event = convert.event(message.event);
      if (!this._group) {
        const last = this._offsets.get(event.topic);
        if (last !== undefined && event.offset <= last) return null;
        this._offsets.set(event.topic, event.offset);
      }
      return event;
    }
    if (message.message === 'gap') {
      const gap = convert.gap(message.gap);
      const last = this._offsets.get(gap.topic) || 0;
      this._offsets.set(gap.topic, Math.max(last, gap.toOffset));
      return gap;
    }
    return null;
  }

  /**
   * After a broken stream the sidecar may not have noticed yet that this group
   * member left, and refuses the same consumer name for a moment: wait and retry.
   */
  _stillConnectedElsewhere(error) {
    return Boolean(this._group) && this._options.consumer && error instanceof InvalidArgumentError &&
      error.fieldViolations.length > 0 && error.fieldViolations.every((v) => v.field === 'consumer');
  }

  async *_run() {
    let failures = 0;
    let connectedBefore = false;
    try {
      while (!this._closed) {
        const call = this._opener._openStream(this._request(), this._options);
        this._call = call;
        let error;
        try {
          for await (const message of call) {
            failures = 0;
            connectedBefore = true;
            const item = this._accept(message);
            if (item) yield item;
          }
          error = new UnavailableError('the sidecar ended the subscription stream', { reason: 'STREAM_ENDED' });
        } catch (err) {
          if (this._closed) return;
          error = err instanceof SidecarError ? err : fromGrpcError(err);
          const retry = isReconnectable(error) || (connectedBefore && this._stillConnectedElsewhere(error));
          if (!retry) throw error;
        } finally {
          call.cancel();
          this._call = null;
        }
        if (this._closed) return;
        if (!this._reconnect || failures >= this._reconnect.policy.maxAttempts) throw error;
        const delayMs = this._reconnect.delay(failures);
        failures += 1;
        if (this._options.onReconnect) this._options.onReconnect({ attempt: failures, delayMs, error });
        await sleep(delayMs, this._stop.signal);
      }
    } finally {
      this.close();
    }
  }
}

module.exports = { Subscription };
