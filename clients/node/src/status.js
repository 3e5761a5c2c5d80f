'use strict';
/**
 * Decodes the `grpc-status-details-bin` trailer: a google.rpc.Status whose
 * details are Any-packed ErrorInfo, RetryInfo and BadRequest messages.
 *
 * The few google.rpc messages needed are declared here by field number
 * (the wire format is all that matters), so no googleapis protos are vendored.
 */
const protobuf = require('protobufjs');

const DETAILS_KEY = 'grpc-status-details-bin';
const TYPE_PREFIX = 'type.googleapis.com/';

const root = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Any: { fields: { typeUrl: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } },
            Duration: { fields: { seconds: { type: 'int64', id: 1 }, nanos: { type: 'int32', id: 2 } } },
          },
        },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
            RetryInfo: { fields: { retryDelay: { type: 'google.protobuf.Duration', id: 1 } } },
            BadRequest: {
              fields: { fieldViolations: { rule: 'repeated', type: 'FieldViolation', id: 1 } },
              nested: {
                FieldViolation: {
                  fields: { field: { type: 'string', id: 1 }, description: { type: 'string', id: 2 } },
                },
              },
            },
          },
        },
      },
    },
  },
});

const Status = root.lookupType('google.rpc.Status');
const DETAIL_TYPES = {
  'google.rpc.ErrorInfo': root.lookupType('google.rpc.ErrorInfo'),
  'google.rpc.RetryInfo': root.lookupType('google.rpc.RetryInfo'),
  'google.rpc.BadRequest': root.lookupType('google.rpc.BadRequest'),
};

function toNumber(value) {
  return typeof value === 'number' ? value : Number(value.toString());
}

/**
 * The rich details in a call's trailing metadata: `{reason, domain, metadata,
 * retryDelayMs, fieldViolations}`, or null when there are none (or they are
 * malformed: a broken trailer must not hide the status it came with).
 */
function decodeRichDetails(trailers) {
  const values = trailers && typeof trailers.get === 'function' ? trailers.get(DETAILS_KEY) : [];
  if (!values || values.length === 0 || !Buffer.isBuffer(values[0])) return null;
  let status;
  try {
    status = Status.decode(values[0]);
  } catch {
    return null;
  }
  const out = { reason: '', domain: '', metadata: {}, retryDelayMs: null, fieldViolations: [] };
  for (const any of status.details) {
    const name = any.typeUrl.startsWith(TYPE_PREFIX) ? any.typeUrl.slice(TYPE_PREFIX.length) : any.typeUrl;
    const type = DETAIL_TYPES[name];
    if (!type) continue;
    let detail;
    try {
      detail = type.decode(any.value);
    } catch {
      continue;
    }
    if (name === 'google.rpc.ErrorInfo') {
      out.reason = detail.reason;
      out.domain = detail.domain;
      out.metadata = { ...detail.metadata };
    } else if (name === 'google.rpc.RetryInfo' && detail.retryDelay) {
      const { seconds, nanos } = detail.retryDelay;
      out.retryDelayMs = toNumber(seconds || 0) * 1000 + Math.round((nanos || 0) / 1e6);
    } else if (name === 'google.rpc.BadRequest') {
      for (const v of detail.fieldViolations) {
        out.fieldViolations.push({ field: v.field, description: v.description });
      }
    }
  }
  return out;
}

module.exports = { decodeRichDetails, DETAILS_KEY };
