'use strict';
/**
 * Queued-call outcome events: when a queued call finishes, the sidecar appends
 * `call.succeeded`, `call.failed` or `call.dead` to its result topic, data the
 * QueuedCall in the proto3 JSON mapping. Read back here into the same object
 * getQueuedCall returns.
 */
const { loadMessageType, LOADER_OPTIONS } = require('./proto');
const { queuedCall } = require('./convert');
const { DeadLetter } = require('./consumer');

const OUTCOME_TYPES = Object.freeze(['call.succeeded', 'call.failed', 'call.dead']);
const TIMESTAMP = '.google.protobuf.Timestamp';
// RFC 3339 as the proto3 JSON mapping writes a Timestamp: up to nine fraction digits, Z or an offset.
const RFC3339 = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$/i;

function parseTimestamp(text, where) {
  const match = typeof text === 'string' ? RFC3339.exec(text) : null;
  const ms = match ? Date.parse(`${match[1]}${match[3]}`) : NaN;
  if (Number.isNaN(ms)) throw new TypeError(`${where}: not an RFC 3339 timestamp`);
  return { seconds: ms / 1000, nanos: Number((match[2] || '').padEnd(9, '0')) };
}

// protobufjs reads every proto3 JSON form but a Timestamp's string: turn those
// (wherever the message type has one) into {seconds, nanos} first.
function withTimestamps(type, value, where) {
  if (type.fullName === TIMESTAMP) return parseTimestamp(value, where);
  if (!value || typeof value !== 'object' || Array.isArray(value)) return value;
  const out = { ...value };
  for (const field of type.fieldsArray) {
    const nested = field.resolvedType;
    if (!nested || !nested.fieldsArray || out[field.name] === undefined || out[field.name] === null) continue;
    const at = `${where}.${field.name}`;
    out[field.name] = field.repeated && Array.isArray(out[field.name])
      ? out[field.name].map((item, i) => withTimestamps(nested, item, `${at}[${i}]`))
      : withTimestamps(nested, out[field.name], at);
  }
  return out;
}

/** A QueuedCall (as getQueuedCall returns it) from its proto3 JSON mapping: text, bytes or a parsed object. */
function queuedCallFromJson(data, options = {}) {
  const type = loadMessageType('QueuedCall', options.protoDir);
  let doc = data;
  if (typeof data === 'string' || Buffer.isBuffer(data) || data instanceof Uint8Array) {
    try {
      doc = JSON.parse(Buffer.from(data).toString('utf8'));
    } catch (err) {
      throw new TypeError(`not a QueuedCall in the proto3 JSON mapping: ${err.message}`);
    }
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new TypeError('not a QueuedCall in the proto3 JSON mapping: not a JSON object');
  }
  let message;
  try {
    message = type.fromObject(withTimestamps(type, doc, 'QueuedCall'));
  } catch (err) {
    throw new TypeError(`not a QueuedCall in the proto3 JSON mapping: ${err.message}`);
  }
  return queuedCall(type.toObject(message, LOADER_OPTIONS));
}

/**
 * The finished QueuedCall an outcome event carries (from subscribe or consume).
 * Outcomes arrive at least once: key your handling on its `id`. Throws a
 * TypeError for an event that is not an outcome or whose data does not parse.
 */
function queuedCallOutcome(event, options) {
  if (!event || !OUTCOME_TYPES.includes(event.type)) {
    throw new TypeError(`event ${event && event.id} is not a queued-call outcome ` +
      `(type ${JSON.stringify(event && event.type)}, expected one of ${OUTCOME_TYPES.join(', ')})`);
  }
  return queuedCallFromJson(event.data, options);
}

/**
 * A consume() handler that passes `handler` each outcome as a QueuedCall. An event
 * that is not an outcome, or does not parse, can never be handled: it is
 * dead-lettered rather than retried.
 */
function outcomeHandler(handler, options) {
  if (typeof handler !== 'function') throw new TypeError('consumeCallOutcomes() needs a handler function');
  return async (event) => {
    let outcome;
    try {
      outcome = queuedCallOutcome(event, options);
    } catch (err) {
      throw new DeadLetter(err.message);
    }
    return handler(outcome);
  };
}

module.exports = { queuedCallOutcome, queuedCallFromJson, outcomeHandler, OUTCOME_TYPES };
