'use strict';
/** integration-sidecar-client: the public exports (pinned by test/exports.test.js). */
const { SidecarClient, DEFAULT_ADDRESS, DEFAULT_DEADLINE_MS } = require('./client');
const { Subscription } = require('./subscription');
const { GroupConsumer, DeadLetter } = require('./consumer');
const { Backoff, DEFAULT_RECONNECT } = require('./backoff');
const { queuedCallOutcome, OUTCOME_TYPES } = require('./outcome');
const errors = require('./errors');

module.exports = {
  SidecarClient,
  Subscription,
  GroupConsumer,
  DeadLetter,
  Backoff,
  DEFAULT_ADDRESS,
  DEFAULT_DEADLINE_MS,
  DEFAULT_RECONNECT,
  OUTCOME_TYPES,
  queuedCallOutcome,
  Code: errors.Code,
  ERROR_DOMAIN: errors.ERROR_DOMAIN,
  SidecarError: errors.SidecarError,
  InvalidArgumentError: errors.InvalidArgumentError,
  NotFoundError: errors.NotFoundError,
  UnauthenticatedError: errors.UnauthenticatedError,
  PermissionDeniedError: errors.PermissionDeniedError,
  UnavailableError: errors.UnavailableError,
  CircuitOpenError: errors.CircuitOpenError,
  ResourceExhaustedError: errors.ResourceExhaustedError,
  RateLimitedError: errors.RateLimitedError,
  SlowConsumerError: errors.SlowConsumerError,
  DeadlineExceededError: errors.DeadlineExceededError,
  AbortedError: errors.AbortedError,
  IdempotencyInFlightError: errors.IdempotencyInFlightError,
  FailedPreconditionError: errors.FailedPreconditionError,
  IdempotencyKeyReusedError: errors.IdempotencyKeyReusedError,
  UnimplementedError: errors.UnimplementedError,
  CancelledError: errors.CancelledError,
  InternalError: errors.InternalError,
  isReconnectable: errors.isReconnectable,
};
