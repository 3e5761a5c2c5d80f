'use strict';
/**
 * A durable consumer group member: runs a handler for each delivered event and
 * acks it, success when the handler resolves, retry (redelivered after the
 * group's backoff) when it throws, dead-letter when it throws a DeadLetter.
 */

/** Throw this from a handler to dead-letter the event instead of retrying it. */
class DeadLetter extends Error {
  get name() {
    return 'DeadLetter';
  }
}

// AckRequest.error holds at most 2000 characters.
const MAX_ERROR_CHARS = 2000;

function describe(err) {
  const text = err && err.message !== undefined ? `${err.name || 'Error'}: ${err.message}` : String(err);
  return text.slice(0, MAX_ERROR_CHARS);
}

class GroupConsumer {
  constructor(client, options) {
    const { group, topics, handler } = options || {};
    if (!group) throw new TypeError('consume() needs a group');
    if (typeof handler !== 'function') throw new TypeError('consume() needs a handler function');
    this._client = client;
    this._group = group;
    this._handler = handler;
    this._onError = options.onError || (() => {});
    this._concurrency = Math.max(1, options.concurrency || 1);
    this._inFlight = new Set();
    this._subscription = client.subscribe(topics, {
      group,
      consumer: options.consumer,
      maxInFlight: options.maxInFlight || this._concurrency,
      reconnect: options.reconnect,
      onReconnect: options.onReconnect,
      signal: options.signal,
      metadata: options.metadata,
    });
    /** Settles when the consumer stops: resolves after close(), rejects on a final stream error. */
    this.done = this._loop();
    this.done.catch(() => {});
  }

  /** Stops receiving, waits for running handlers (and their acks), then resolves. */
  async close() {
    this._subscription.close();
    await this.done.catch(() => {});
  }

  async _loop() {
    try {
      for await (const event of this._subscription) {
        if (event.kind !== 'event') continue;
        const task = this._settle(event).finally(() => this._inFlight.delete(task));
        this._inFlight.add(task);
        if (this._inFlight.size >= this._concurrency) await Promise.race(this._inFlight);
      }
    } finally {
      await Promise.allSettled(this._inFlight);
    }
  }

  async _settle(event) {
    let outcome = 'success';
    let error = '';
    try {
      await this._handler(event);
    } catch (err) {
      outcome = err instanceof DeadLetter ? 'deadLetter' : 'retry';
      error = describe(err);
    }
    try {
      await this._client.ack({ group: this._group, eventIds: [event.id], outcome, error });
    } catch (err) {
      // Unacked, the event is redelivered after the group's ack timeout.
      this._onError(err, event);
    }
  }
}

module.exports = { GroupConsumer, DeadLetter };
