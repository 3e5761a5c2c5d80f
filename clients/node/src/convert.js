'use strict';
/** Plain JS objects <-> the proto messages proto-loader produces: the only place that knows both. */

const VERIFY_PREFIX = 'VERIFY_RESULT_';
const GAP_PREFIX = 'GAP_REASON_';
const QUEUED_CALL_STATE_PREFIX = 'QUEUED_CALL_STATE_';
const ACK_OUTCOMES = {
  success: 'ACK_OUTCOME_SUCCESS',
  retry: 'ACK_OUTCOME_RETRY',
  deadLetter: 'ACK_OUTCOME_DEAD_LETTER',
};

/** Name/value pairs from an array of {name, value} or [name, value], a Headers-like iterable, or an object. */
function pairs(input, what) {
  if (input === undefined || input === null) return [];
  let entries;
  if (typeof input === 'string') {
    throw new TypeError(`${what} must be an array of {name, value}, an iterable of pairs or an object`);
  } else if (Array.isArray(input) || typeof input[Symbol.iterator] === 'function') {
    entries = Array.from(input, (item) => (Array.isArray(item) ? item : [item.name, item.value]));
  } else if (typeof input === 'object') {
    entries = [];
    for (const [name, value] of Object.entries(input)) {
      for (const v of Array.isArray(value) ? value : [value]) entries.push([name, v]);
    }
  } else {
    throw new TypeError(`${what} must be an array of {name, value}, an iterable of pairs or an object`);
  }
  return entries.map(([name, value]) => ({ name: String(name), value: String(value) }));
}

/** Bytes from a Buffer, typed array, ArrayBuffer or string (UTF-8). */
function bytes(input, what) {
  if (input === undefined || input === null) return Buffer.alloc(0);
  if (Buffer.isBuffer(input)) return input;
  if (typeof input === 'string') return Buffer.from(input, 'utf8');
  if (ArrayBuffer.isView(input)) return Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  if (input instanceof ArrayBuffer) return Buffer.from(input);
  throw new TypeError(`${what} must be a Buffer, Uint8Array, ArrayBuffer or string`);
}

function isBinary(input) {
  return typeof input === 'string' || Buffer.isBuffer(input) || ArrayBuffer.isView(input) ||
    input instanceof ArrayBuffer;
}

function toDate(ts) {
  if (!ts) return null;
  return new Date(Number(ts.seconds) * 1000 + Math.floor(Number(ts.nanos || 0) / 1e6));
}

/** A google.protobuf.Timestamp from a Date or milliseconds since the epoch. */
function toTimestamp(value, what) {
  const ms = value instanceof Date ? value.getTime() : value;
  if (typeof ms !== 'number' || !Number.isFinite(ms)) {
    throw new TypeError(`${what} must be a Date or milliseconds since the epoch`);
  }
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: Math.round((ms - seconds * 1000) * 1e6) };
}

function unprefixed(value, prefix) {
  return value.startsWith(prefix) ? value.slice(prefix.length) : value;
}

function callRequest(req) {
  if (!req || !req.integration) throw new TypeError('call() needs an integration');
  return {
    integration: req.integration,
    method: req.method || 'GET',
    path: req.path || '',
    query: pairs(req.query, 'query'),
    headers: pairs(req.headers, 'headers'),
    body: bytes(req.body, 'body'),
    idempotencyKey: req.idempotencyKey || '',
    apiVersion: req.apiVersion || '',
  };
}

function callResponse(res) {
  const dep = res.deprecation;
  return {
    status: res.status,
    headers: res.headers.map(({ name, value }) => ({ name, value })),
    body: res.body,
    attempts: res.attempts,
    replayed: res.replayed,
    stale: res.stale,
    deprecation: dep
      ? { deprecated: dep.deprecated, deprecatedAt: toDate(dep.deprecatedAt), sunsetAt: toDate(dep.sunsetAt), link: dep.link }
      : null,
    route: res.route,
    durationMs: res.durationMs,
  };
}

function enqueueCallRequest(req) {
  if (!req || !req.integration) throw new TypeError('enqueueCall() needs an integration');
  const call = callRequest(req);
  // The key identifies the queued call: without one a retried enqueue could queue it twice.
  if (!req.idempotencyKey) throw new TypeError('enqueueCall() needs an idempotencyKey');
  return {
    call,
    notBefore: req.notBefore === undefined || req.notBefore === null ? null : toTimestamp(req.notBefore, 'notBefore'),
    resultTopic: req.resultTopic || '',
    orderingKey: req.orderingKey || '',
  };
}

function queuedCall(msg) {
  return {
    id: msg.id,
    integration: msg.integration,
    state: unprefixed(msg.state, QUEUED_CALL_STATE_PREFIX),
    attempts: msg.attempts,
    createdAt: toDate(msg.createdAt),
    nextAttemptAt: toDate(msg.nextAttemptAt),
    finishedAt: toDate(msg.finishedAt),
    lastStatus: msg.lastStatus,
    lastError: msg.lastError,
    response: msg.response ? callResponse(msg.response) : null,
    resultTopic: msg.resultTopic,
    orderingKey: msg.orderingKey,
    idempotencyKey: msg.idempotencyKey,
  };
}

function verifyRequest(req) {
  if (!req || !req.source) throw new TypeError('verifyWebhook() needs a source');
  return {
    source: req.source,
    headers: pairs(req.headers, 'headers'),
    body: bytes(req.body, 'body'),
    url: req.url || '',
    record: Boolean(req.record),
  };
}

function verifyResponse(res) {
  const result = unprefixed(res.result, VERIFY_PREFIX);
  return {
    valid: result === 'VALID',
    result,
    reason: res.reason,
    eventId: res.eventId,
    eventType: res.eventType,
    timestamp: toDate(res.timestamp),
    duplicate: res.duplicate,
    recorded: res.recorded,
  };
}

function publishRequest(req) {
  if (!req || !req.topic) throw new TypeError('publish() needs a topic');
  let data = req.data;
  let contentType = req.contentType || '';
  if (data !== undefined && data !== null && !isBinary(data)) {
    data = JSON.stringify(data);
    contentType = contentType || 'application/json';
  }
  return {
    topic: req.topic,
    type: req.type || '',
    data: bytes(data, 'data'),
    contentType,
    attributes: Object.fromEntries(Object.entries(req.attributes || {}).map(([k, v]) => [k, String(v)])),
    idempotencyKey: req.idempotencyKey || '',
  };
}

function ackRequest(req) {
  if (!req || !req.group) throw new TypeError('ack() needs a group');
  const outcome = ACK_OUTCOMES[req.outcome || 'success'];
  if (!outcome) throw new TypeError(`ack() outcome must be one of ${Object.keys(ACK_OUTCOMES).join(', ')}`);
  const ids = typeof req.eventIds === 'string' ? [req.eventIds] : Array.from(req.eventIds || []);
  return { group: req.group, eventIds: ids, outcome, error: req.error || '' };
}

function event(msg) {
  return {
    kind: 'event',
    id: msg.id,
    topic: msg.topic,
    type: msg.type,
    data: msg.data,
    contentType: msg.contentType,
    attributes: { ...msg.attributes },
    offset: msg.offset,
    time: toDate(msg.time),
    deliveryAttempt: msg.deliveryAttempt,
  };
}

function gap(msg) {
  const reason = unprefixed(msg.reason, GAP_PREFIX);
  return { kind: 'gap', topic: msg.topic, reason, fromOffset: msg.fromOffset, toOffset: msg.toOffset };
}

module.exports = {
  callRequest,
  callResponse,
  enqueueCallRequest,
  queuedCall,
  verifyRequest,
  verifyResponse,
  publishRequest,
  ackRequest,
  event,
  gap,
  ACK_OUTCOMES,
};
