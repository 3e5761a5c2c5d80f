// Types for sidecar-ws.js, the browser client of the integration sidecar's /ws edge.

export const CLOSE_TOKEN_EXPIRED: 4001;
export const CLOSE_SLOW_CONSUMER: 4008;
export const CLOSE_GOING_AWAY: 1001;

/** A JWT, or a function returning a fresh one; a function is called before every (re)connect. */
export type TokenSource = string | (() => string | Promise<string>);

export interface BackoffOptions {
  /** Ceiling of the first delay, in ms (default 500). */
  initial?: number;
  /** Cap of every delay, in ms (default 30000). */
  max?: number;
  /** Growth of the ceiling per failed attempt (default 2). */
  factor?: number;
}

export interface SidecarSocketOptions {
  token: TokenSource;
  /** Topics to subscribe to beyond the rooms the token joins (needs the token's `topics` claim). */
  topics?: string[];
  /** Resume points known in advance, e.g. rendered by the server: topic -> last offset seen. */
  offsets?: Record<string, number>;
  backoff?: BackoffOptions;
  /** A connection up this long (ms) resets the backoff (default 10000). */
  stableAfter?: number;
  /** Give up on an opening handshake after this long (ms, default 10000). */
  connectTimeout?: number;
  /** Start connecting in the constructor (default true). */
  connect?: boolean;
  /** Source of randomness for the jitter (default Math.random). */
  random?: () => number;
  /** WebSocket implementation (default globalThis.WebSocket). */
  WebSocket?: typeof WebSocket;
}

export type ConnectionState = "connecting" | "live" | "offline" | "closed";

export interface StateChange {
  state: ConnectionState;
  /** WebSocket close code that caused an `offline` (1006 when no connection could be made). */
  code?: number;
  reason?: string;
  /** ms until the next attempt; `null` when the client gave up (the token is no good). */
  retryIn?: number | null;
  /** Failed attempts in a row. */
  attempt?: number;
}

export interface SidecarEvent<T = unknown> {
  id: string;
  topic: string;
  type: string;
  /** Per-topic, from 1. */
  offset: number;
  /** Unix seconds. */
  time: number;
  attributes: Record<string, string>;
  /** JSON data parsed, text data as a string. */
  data?: T;
  /** Any other content type, base64. */
  data_base64?: string;
}

export type ControlFrame =
  /** `offset`: the topic continues after it (a topic with no event yet resumes from it). */
  | { control: "subscribed"; topic: string; offset: number }
  | { control: "unsubscribed"; topic: string }
  | { control: "gap"; topic: string; from_offset: number; to_offset: number; reason: string }
  /** `topic`: set when a subscribe (or its replay) failed. */
  | { control: "error"; reason: string; message: string; topic?: string };

/** A subscription the server refused for good; the topic was dropped. */
export interface SubscriptionError {
  topic: string;
  /** PERMISSION_DENIED, INVALID_ARGUMENT or RESOURCE_EXHAUSTED. */
  reason: string;
  message: string;
}

export class SidecarSocket {
  constructor(url: string, options: SidecarSocketOptions);
  readonly state: ConnectionState;
  /** Last offset seen per topic (or where the server said it started): where a reconnect resumes. */
  readonly offsets: Record<string, number>;
  /** Events of one topic, or of every topic with "*". Returns a function that removes the listener. */
  on<T = unknown>(topic: string, listener: (event: SidecarEvent<T>) => void): () => void;
  /** Called at once with the current state, then on every change. */
  onState(listener: (change: StateChange) => void): () => void;
  onControl(listener: (frame: ControlFrame) => void): () => void;
  /** Subscriptions refused for good: the topic is dropped, not asked for on reconnect. */
  onError(listener: (error: SubscriptionError) => void): () => void;
  subscribe(topic: string, options?: { offset?: number }): void;
  unsubscribe(topic: string): void;
  connect(): void;
  close(code?: number, reason?: string): void;
}

export function connectSidecar(url: string, options: SidecarSocketOptions): SidecarSocket;
export function backoffDelay(
  attempt: number, backoff: Required<BackoffOptions>, random?: () => number): number;
export function tokenExpiry(token: string): number | undefined;
