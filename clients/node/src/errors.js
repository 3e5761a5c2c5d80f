'use strict';
/**
 * Typed errors: every failed RPC becomes a SidecarError subclass chosen by its
 * gRPC code, or by the sidecar's ErrorInfo reason where callers act on it.
 *
 *   SidecarError
 *   ├── InvalidArgumentError        INVALID_ARGUMENT (fieldViolations)
 *   ├── NotFoundError               INTEGRATION_NOT_FOUND, QUEUED_CALL_NOT_FOUND, ...
 *   ├── UnauthenticatedError        API_TOKEN_INVALID
 *   ├── PermissionDeniedError
 *   ├── UnavailableError            UPSTREAM_UNREACHABLE, STORAGE_UNAVAILABLE, SHUTTING_DOWN, ...
 *   │   └── CircuitOpenError        CIRCUIT_OPEN (retryDelayMs)
 *   ├── ResourceExhaustedError      BULKHEAD_FULL, RESPONSE_TOO_LARGE, ...
 *   │   ├── RateLimitedError        RATE_LIMITED (retryDelayMs)
 *   │   └── SlowConsumerError       SLOW_CONSUMER
 *   ├── DeadlineExceededError       DEADLINE_EXCEEDED, UPSTREAM_TIMEOUT
 *   ├── AbortedError
 *   │   └── IdempotencyInFlightError       IDEMPOTENCY_IN_FLIGHT
 *   ├── FailedPreconditionError
 *   │   └── IdempotencyKeyReusedError      IDEMPOTENCY_KEY_REUSED
 *   ├── UnimplementedError          NOT_IMPLEMENTED
 *   ├── CancelledError              the caller cancelled (AbortSignal, close())
 *   └── InternalError               INTERNAL, UNKNOWN, DATA_LOSS, ...
 */
const { status: Code } = require('@grpc/grpc-js');
const { decodeRichDetails } = require('./status');

const CODE_NAMES = Object.fromEntries(Object.entries(Code).map(([name, value]) => [value, name]));

/** The domain of every ErrorInfo the sidecar sends. */
const ERROR_DOMAIN = 'integration-sidecar';

class SidecarError extends Error {
  /**
   * @param {string} message
   * @param {object} [fields] code (gRPC status number), reason, domain,
   *   metadata (ErrorInfo metadata), retryDelayMs, fieldViolations, trailers, cause
   */
  constructor(message, fields = {}) {
    super(message, fields.cause === undefined ? undefined : { cause: fields.cause });
    const code = fields.code ?? this.constructor.defaultCode;
    this.code = code;
    this.codeName = CODE_NAMES[code] || 'UNKNOWN';
    this.reason = fields.reason || this.codeName;
    this.domain = fields.domain || '';
    this.metadata = fields.metadata || {};
    this.retryDelayMs = fields.retryDelayMs ?? null;
    this.fieldViolations = fields.fieldViolations || [];
    // The raw trailing metadata (a grpc-js Metadata), for anything not unpacked above.
    Object.defineProperty(this, 'trailers', { value: fields.trailers || null, enumerable: false });
  }

  get name() {
    return this.constructor.name;
  }

  /**
   * For a failed call: whether the upstream may have received the request, 'no',
   * 'maybe' or 'yes'. 'no' means trying again (or another way) cannot repeat a side
   * effect. Errors that did not come from the sidecar's Call say 'maybe'.
   */
  get upstreamReached() {
    return this.metadata.upstream_reached || 'maybe';
  }

  /** For a failed call: how many attempts the sidecar sent; null if unknown. */
  get attempts() {
    const value = this.metadata.attempts;
    return value !== undefined && /^[0-9]+$/.test(value) ? Number(value) : null;
  }
}

class InvalidArgumentError extends SidecarError {}
class NotFoundError extends SidecarError {}
class UnauthenticatedError extends SidecarError {}
class PermissionDeniedError extends SidecarError {}
class UnavailableError extends SidecarError {}
class CircuitOpenError extends UnavailableError {}
class ResourceExhaustedError extends SidecarError {}
class RateLimitedError extends ResourceExhaustedError {}
class SlowConsumerError extends ResourceExhaustedError {}
class DeadlineExceededError extends SidecarError {}
class AbortedError extends SidecarError {}
class IdempotencyInFlightError extends AbortedError {}
class FailedPreconditionError extends SidecarError {}
class IdempotencyKeyReusedError extends FailedPreconditionError {}
class UnimplementedError extends SidecarError {}
class CancelledError extends SidecarError {}
class InternalError extends SidecarError {}

const BY_CODE = {
  [Code.INVALID_ARGUMENT]: InvalidArgumentError,
  [Code.NOT_FOUND]: NotFoundError,
  [Code.UNAUTHENTICATED]: UnauthenticatedError,
  [Code.PERMISSION_DENIED]: PermissionDeniedError,
  [Code.UNAVAILABLE]: UnavailableError,
  [Code.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [Code.DEADLINE_EXCEEDED]: DeadlineExceededError,
  [Code.ABORTED]: AbortedError,
  [Code.FAILED_PRECONDITION]: FailedPreconditionError,
  [Code.UNIMPLEMENTED]: UnimplementedError,
  [Code.CANCELLED]: CancelledError,
  [Code.INTERNAL]: InternalError,
  [Code.UNKNOWN]: InternalError,
  [Code.DATA_LOSS]: InternalError,
};

// Each class's own code, for errors made here rather than received.
SidecarError.defaultCode = Code.UNKNOWN;
InternalError.defaultCode = Code.INTERNAL;
for (const [code, cls] of Object.entries(BY_CODE)) {
  if (!Object.prototype.hasOwnProperty.call(cls, 'defaultCode')) cls.defaultCode = Number(code);
}

// Reasons a caller handles differently from the rest of their code's family.
const BY_REASON = {
  CIRCUIT_OPEN: CircuitOpenError,
  RATE_LIMITED: RateLimitedError,
  SLOW_CONSUMER: SlowConsumerError,
  IDEMPOTENCY_IN_FLIGHT: IdempotencyInFlightError,
  IDEMPOTENCY_KEY_REUSED: IdempotencyKeyReusedError,
};

/** A SidecarError for whatever a grpc-js call failed with (a ServiceError or anything else). */
function fromGrpcError(err) {
  if (err instanceof SidecarError) return err;
  if (!err || typeof err.code !== 'number') {
    return new InternalError(String(err && err.message ? err.message : err), { cause: err });
  }
  const rich = decodeRichDetails(err.metadata);
  const fields = { code: err.code, trailers: err.metadata || null, cause: err, ...(rich || {}) };
  let cls = BY_CODE[err.code] || SidecarError;
  const special = rich && rich.domain === ERROR_DOMAIN ? BY_REASON[rich.reason] : undefined;
  if (special && special.prototype instanceof cls) cls = special;
  const message = err.details || (err.message || '').replace(/^\d+ [A-Z_]+: /, '') || fields.reason;
  return new cls(message, fields);
}

/**
 * Whether a subscription should reconnect after this error: the sidecar is
 * unreachable or restarting, the connection broke, or it dropped a slow consumer.
 * A deliberate answer (bad topic, bad token, ...) is final.
 */
function isReconnectable(error) {
  if (error instanceof UnavailableError || error instanceof SlowConsumerError) return true;
  const transportLevel = error.domain !== ERROR_DOMAIN;
  return transportLevel && [Code.INTERNAL, Code.UNKNOWN, Code.CANCELLED].includes(error.code);
}

module.exports = {
  Code,
  ERROR_DOMAIN,
  SidecarError,
  InvalidArgumentError,
  NotFoundError,
  UnauthenticatedError,
  PermissionDeniedError,
  UnavailableError,
  CircuitOpenError,
  ResourceExhaustedError,
  RateLimitedError,
  SlowConsumerError,
  DeadlineExceededError,
  AbortedError,
  IdempotencyInFlightError,
  FailedPreconditionError,
  IdempotencyKeyReusedError,
  UnimplementedError,
  CancelledError,
  InternalError,
  fromGrpcError,
  isReconnectable,
};
