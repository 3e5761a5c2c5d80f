// Type declarations for integration-sidecar-client (hand-written; the code is plain JS in src/).

import type { ChannelCredentials, ClientOptions, Metadata, status } from '@grpc/grpc-js';

/** gRPC status codes (grpc-js `status`). */
export declare const Code: typeof status;
/** The `domain` of every ErrorInfo the sidecar sends. */
export declare const ERROR_DOMAIN: 'integration-sidecar';
export declare const DEFAULT_ADDRESS: string;
export declare const DEFAULT_DEADLINE_MS: number;
export declare const DEFAULT_RECONNECT: Readonly<Required<ReconnectOptions>>;
/** The event types of queued-call outcome events. */
export declare const OUTCOME_TYPES: ReadonlyArray<'call.succeeded' | 'call.failed' | 'call.dead'>;

/** Headers or query parameters: pairs, an object (a value may be a list), or an iterable like WHATWG Headers. */
export type NameValues =
  | ReadonlyArray<{ name: string; value: string }>
  | ReadonlyArray<readonly [string, string]>
  | Iterable<readonly [string, string]>
  | Record<string, string | number | ReadonlyArray<string>>;

/** Bytes; a string is sent as UTF-8. */
export type BytesLike = Buffer | Uint8Array | ArrayBuffer | string;

export interface Header {
  name: string;
  value: string;
}

export interface SidecarClientOptions {
  /** `host:port` or `unix:///path/to/sidecar.sock`. Default `127.0.0.1:50051`. */
  address?: string;
  /** Sent as `authorization: Bearer <token>` on every RPC when the sidecar requires an API token. */
  token?: string;
  /** Default deadline of each unary RPC in milliseconds (default 30000; 0 or Infinity: none). */
  deadlineMs?: number;
  /** Queue unary RPCs while the channel (re)connects instead of failing at once with UNAVAILABLE. */
  waitForReady?: boolean;
  /** Default: insecure (plaintext), right for a sidecar on loopback or a Unix socket. */
  credentials?: ChannelCredentials;
  /** grpc-js channel options and `interceptors`; merged over the client's reconnect-backoff defaults. */
  channelOptions?: ClientOptions;
  /** Directory holding `integration_sidecar/v1/sidecar.proto` (default: the packaged copy, else the repository's protos/). */
  protoDir?: string;
}

export interface CallOptions {
  /** Overrides the client's default deadline for this RPC. */
  deadlineMs?: number;
  /** Aborting cancels the RPC; it then rejects with a CancelledError. */
  signal?: AbortSignal;
  /** Extra request metadata, e.g. `{ traceparent: '00-...' }` or `{ 'idempotency-key': '...' }`. */
  metadata?: Record<string, string>;
  waitForReady?: boolean;
}

export interface CallRequest {
  /** A configured integration, e.g. `payments`. */
  integration: string;
  /** Default `GET`. */
  method?: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE' | 'OPTIONS' | string;
  /** Relative to the integration's base URL; no query string (use `query`). */
  path?: string;
  query?: NameValues;
  headers?: NameValues;
  body?: BytesLike;
  idempotencyKey?: string;
  apiVersion?: string;
}

export interface Deprecation {
  deprecated: boolean;
  deprecatedAt: Date | null;
  sunsetAt: Date | null;
  link: string;
}

/** The upstream's final answer: any HTTP status, including 4xx/5xx, is a response. */
export interface CallResponse {
  status: number;
  headers: Header[];
  body: Buffer;
  /** Upstream attempts (0 when replayed or served from the fallback cache). */
  attempts: number;
  replayed: boolean;
  stale: boolean;
  deprecation: Deprecation | null;
  route: string;
  durationMs: number;
}

export interface EnqueueCallRequest extends CallRequest {
  /**
   * Required: identifies the queued call (the same key and request again resolve to
   * the same id with `duplicate: true`; another request with it rejects with an
   * IdempotencyKeyReusedError) and goes upstream on every attempt. Derive it from the
   * operation (e.g. `refund-${orderId}`) so a retried enqueue cannot queue it twice.
   */
  idempotencyKey: string;
  /** Not attempted before this time (a Date, or milliseconds since the epoch). Default: at once. */
  notBefore?: Date | number | null;
  /** Where the outcome event goes. Default `calls.<integration>`. */
  resultTopic?: string;
  /** Calls with the same key run one at a time, in enqueue order. */
  orderingKey?: string;
}

export interface EnqueueCallResponse {
  /** The queued call's id (`qc_...`). */
  id: string;
  /** This key was already enqueued with the same request: `id` is that call's, nothing new was queued. */
  duplicate: boolean;
}

export type QueuedCallState =
  | 'QUEUED'
  | 'RUNNING'
  | 'SUCCEEDED'
  | 'FAILED'
  | 'DEAD'
  | 'CANCELLED'
  | 'UNSPECIFIED';

/** A queued call and where it stands (getQueuedCall, cancelQueuedCall, outcome events). */
export interface QueuedCall {
  id: string;
  integration: string;
  state: QueuedCallState;
  /** Attempts that went out so far. */
  attempts: number;
  createdAt: Date | null;
  /** When the next attempt is due; null unless QUEUED. */
  nextAttemptAt: Date | null;
  /** Null until it finished. */
  finishedAt: Date | null;
  /** HTTP status of the last attempt's answer; 0 when it got none. */
  lastStatus: number;
  /** Reason of the last attempt that got no answer (`UPSTREAM_UNREACHABLE`) or of a refusal (`CIRCUIT_OPEN`); '' otherwise. */
  lastError: string;
  /** The final answer once SUCCEEDED (or FAILED with one); else null. */
  response: CallResponse | null;
  resultTopic: string;
  orderingKey: string;
  idempotencyKey: string;
}

export interface VerifyWebhookRequest {
  source: string;
  headers?: NameValues;
  /** The raw body, byte for byte as received. */
  body: BytesLike;
  url?: string;
  /** Also de-duplicate and store a valid webhook, to be delivered on the source's topic. */
  record?: boolean;
}

export type VerifyResult =
  | 'VALID'
  | 'MISSING_SIGNATURE'
  | 'INVALID_SIGNATURE'
  | 'STALE_TIMESTAMP'
  | 'FUTURE_TIMESTAMP'
  | 'MALFORMED'
  | 'UNSPECIFIED';

export interface VerifyWebhookResponse {
  valid: boolean;
  result: VerifyResult;
  reason: string;
  eventId: string;
  eventType: string;
  timestamp: Date | null;
  duplicate: boolean;
  recorded: boolean;
}

export interface PublishRequest {
  topic: string;
  type?: string;
  /** Bytes as given; any other value is sent as JSON (content type `application/json` unless set). */
  data?: BytesLike | unknown;
  contentType?: string;
  attributes?: Record<string, string>;
  idempotencyKey?: string;
}

export interface PublishResponse {
  eventId: string;
  offset: number;
  replayed: boolean;
}

export type AckOutcome = 'success' | 'retry' | 'deadLetter';

export interface AckRequest {
  group: string;
  eventIds: string | ReadonlyArray<string>;
  /** Default `success`. */
  outcome?: AckOutcome;
  /** Why, with `retry` or `deadLetter` (up to 2000 characters). */
  error?: string;
}

export interface AckResponse {
  settled: number;
  unknownEventIds: string[];
}

export interface PresenceResponse {
  topic: string;
  connections: number;
  users: number;
}

export interface Event {
  kind: 'event';
  id: string;
  topic: string;
  type: string;
  data: Buffer;
  contentType: string;
  attributes: Record<string, string>;
  offset: number;
  time: Date | null;
  /** Durable groups: 1 on first delivery; 0 for live subscriptions. */
  deliveryAttempt: number;
}

/** Offsets `fromOffset..toOffset` (inclusive) of `topic` will not be delivered on this subscription. */
export interface Gap {
  kind: 'gap';
  topic: string;
  reason: 'RETENTION' | 'SLOW_CONSUMER' | 'UNSPECIFIED';
  fromOffset: number;
  toOffset: number;
}

export type SubscriptionItem = Event | Gap;

export interface ReconnectOptions {
  /** Default 100. */
  initialDelayMs?: number;
  /** Default 2. */
  multiplier?: number;
  /** Default 5000. */
  maxDelayMs?: number;
  /** Consecutive failed connections before the iterator throws the last error. Default Infinity. */
  maxAttempts?: number;
}

export interface ReconnectInfo {
  /** 1 for the first reconnect after a failure, growing while connecting keeps failing. */
  attempt: number;
  delayMs: number;
  error: SidecarError;
}

export interface SubscribeOptions {
  /** Live subscriptions: where to begin (default `latest`). Ignored with `afterOffsets` or `afterEventId`. */
  start?: 'latest' | 'earliest';
  /** Per topic, the last offset already processed (e.g. a saved `subscription.offsets`). */
  afterOffsets?: Record<string, number>;
  afterEventId?: string;
  /** A durable consumer group: events are delivered until acked (see `ack` and `consume`). */
  group?: string;
  consumer?: string;
  maxInFlight?: number;
  /** `false`: no reconnect, the first stream error is thrown. */
  reconnect?: ReconnectOptions | false;
  onReconnect?: (info: ReconnectInfo) => void;
  /** Aborting closes the subscription. */
  signal?: AbortSignal;
  metadata?: Record<string, string>;
}

export declare class Subscription implements AsyncIterableIterator<SubscriptionItem> {
  private constructor();
  /**
   * Per topic, the offset of the last event (or end of the last gap) yielded; for a
   * topic with nothing yielded yet, the offset its live stream announced it starts
   * after (so a reconnect at `latest` still gets what was published meanwhile).
   */
  readonly offsets: Record<string, number>;
  readonly closed: boolean;
  [Symbol.asyncIterator](): this;
  next(): Promise<IteratorResult<SubscriptionItem, undefined>>;
  return(value?: unknown): Promise<IteratorResult<SubscriptionItem, undefined>>;
  throw(error?: unknown): Promise<IteratorResult<SubscriptionItem, undefined>>;
  close(): void;
}

export interface ConsumeOptions {
  group: string;
  topics: string | ReadonlyArray<string>;
  /** Resolve: acked as success. Throw: acked as retry. Throw a DeadLetter: dead-lettered. */
  handler: (event: Event) => unknown | Promise<unknown>;
  consumer?: string;
  /** Handlers running at once (default 1). */
  concurrency?: number;
  /** Default: `concurrency`. */
  maxInFlight?: number;
  reconnect?: ReconnectOptions | false;
  onReconnect?: (info: ReconnectInfo) => void;
  /** An ack failed; the event will be redelivered after the group's ack timeout. */
  onError?: (error: SidecarError, event: Event) => void;
  signal?: AbortSignal;
  metadata?: Record<string, string>;
}

export interface ConsumeCallOutcomesOptions extends Omit<ConsumeOptions, 'handler'> {
  /** Resolve: acked as success. Throw: retried. Throw a DeadLetter: dead-lettered. An event
   * on the topics that is not an outcome (or does not parse) is dead-lettered. */
  handler: (call: QueuedCall) => unknown | Promise<unknown>;
}

export declare class GroupConsumer {
  private constructor();
  /** Resolves once the consumer stopped after close(); rejects with a final stream error. */
  readonly done: Promise<void>;
  /** Stops receiving and waits for running handlers and their acks. */
  close(): Promise<void>;
}

/** Throw from a `consume` handler to dead-letter the event instead of retrying it. */
export declare class DeadLetter extends Error {}

export declare class Backoff {
  constructor(options?: ReconnectOptions, random?: () => number);
  readonly policy: Required<ReconnectOptions>;
  /** Milliseconds before reconnect attempt `attempt` (0-based): full jitter under the exponential ceiling. */
  delay(attempt: number): number;
}

export declare class SidecarClient {
  constructor(options?: SidecarClientOptions);
  readonly address: string;
  deadlineMs: number;
  waitForReady: boolean;
  call(request: CallRequest, options?: CallOptions): Promise<CallResponse>;
  verifyWebhook(request: VerifyWebhookRequest, options?: CallOptions): Promise<VerifyWebhookResponse>;
  publish(request: PublishRequest, options?: CallOptions): Promise<PublishResponse>;
  ack(request: AckRequest, options?: CallOptions): Promise<AckResponse>;
  getPresence(topic: string, options?: CallOptions): Promise<PresenceResponse>;
  /** Stores a call for durable asynchronous delivery; resolves once it is durable. */
  enqueueCall(request: EnqueueCallRequest, options?: CallOptions): Promise<EnqueueCallResponse>;
  /** Rejects with a NotFoundError (reason `QUEUED_CALL_NOT_FOUND`) for an unknown id. */
  getQueuedCall(id: string, options?: CallOptions): Promise<QueuedCall>;
  /** QUEUED: CANCELLED at once; RUNNING: after its attempt unless that succeeded; finished: unchanged. */
  cancelQueuedCall(id: string, options?: CallOptions): Promise<QueuedCall>;
  subscribe(topics: string | ReadonlyArray<string>, options?: SubscribeOptions): Subscription;
  consume(options: ConsumeOptions): GroupConsumer;
  /** consume() for queued-call result topics: the handler gets each outcome as a QueuedCall (at least once: key on its id). */
  consumeCallOutcomes(options: ConsumeCallOutcomesOptions): GroupConsumer;
  /** Closes every subscription and the channel. */
  close(): void;
}

export interface FieldViolation {
  field: string;
  description: string;
}

export declare class SidecarError extends Error {
  constructor(message: string, fields?: Partial<Pick<SidecarError,
    'code' | 'reason' | 'domain' | 'metadata' | 'retryDelayMs' | 'fieldViolations'>> & { cause?: unknown; trailers?: Metadata });
  /** gRPC status code. */
  readonly code: status;
  /** Its name, e.g. `UNAVAILABLE`. */
  readonly codeName: string;
  /** The sidecar's stable UPPER_SNAKE reason (ErrorInfo), else `codeName`. */
  readonly reason: string;
  /** `integration-sidecar` when the sidecar itself sent the error details. */
  readonly domain: string;
  /** ErrorInfo metadata. */
  readonly metadata: Record<string, string>;
  /** From RetryInfo: how long to wait before trying again, when the sidecar says. */
  readonly retryDelayMs: number | null;
  /** From BadRequest: each invalid request field. */
  readonly fieldViolations: FieldViolation[];
  /** The raw trailing metadata. */
  readonly trailers: Metadata | null;
  /** For a failed call: whether the upstream may have received the request; 'no'
   * means trying again cannot repeat a side effect. 'maybe' when unknown. */
  readonly upstreamReached: 'no' | 'maybe' | 'yes';
  /** For a failed call: how many attempts the sidecar sent; null if unknown. */
  readonly attempts: number | null;
}
export declare class InvalidArgumentError extends SidecarError {}
export declare class NotFoundError extends SidecarError {}
export declare class UnauthenticatedError extends SidecarError {}
export declare class PermissionDeniedError extends SidecarError {}
export declare class UnavailableError extends SidecarError {}
export declare class CircuitOpenError extends UnavailableError {}
export declare class ResourceExhaustedError extends SidecarError {}
export declare class RateLimitedError extends ResourceExhaustedError {}
export declare class SlowConsumerError extends ResourceExhaustedError {}
export declare class DeadlineExceededError extends SidecarError {}
export declare class AbortedError extends SidecarError {}
export declare class IdempotencyInFlightError extends AbortedError {}
export declare class FailedPreconditionError extends SidecarError {}
export declare class IdempotencyKeyReusedError extends FailedPreconditionError {}
export declare class UnimplementedError extends SidecarError {}
export declare class CancelledError extends SidecarError {}
export declare class InternalError extends SidecarError {}

/**
 * The finished QueuedCall an outcome event (`call.succeeded`, `call.failed`, `call.dead`)
 * carries. Throws a TypeError for any other event, or data that does not parse.
 */
export declare function queuedCallOutcome(event: Event, options?: { protoDir?: string }): QueuedCall;

/** Whether a subscription reconnects after this error (unreachable, restarting, reset, slow consumer). */
export declare function isReconnectable(error: SidecarError): boolean;
