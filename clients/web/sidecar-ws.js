// sidecar-ws.js: a dependency-free browser client for the integration sidecar's
// WebSocket edge (GET /ws). It reconnects with capped exponential backoff and full
// jitter, resumes every topic after the last offset it saw, re-sends runtime
// subscriptions after a reconnect, and reports connecting / live / offline states.
//
// The protocol (see sidecar/edge/websocket.py):
//   auth     the JWT travels in the `token` query parameter (browsers cannot set
//            headers on a WebSocket); a refused token never opens the socket.
//   resume   ?offsets={"user:alice": 12} replays what came after offset 12.
//   client   {"type": "subscribe", "topic", "offset"?} / {"type": "unsubscribe", "topic"}
//   server   events {id, topic, type, data | data_base64, offset, time, attributes};
//            control frames {control: subscribed | unsubscribed | gap | error, ...};
//            subscribed carries the offset the topic continues after (a topic with
//            no event yet resumes from it), error names the topic of a refused
//            subscribe
//   liveness the server sends WebSocket pings; the browser answers them itself, so
//            the client sends no heartbeat frames of its own.
//   close    4001 token expired, 4008 slow consumer, 1001 server shutting down.

export const CLOSE_TOKEN_EXPIRED = 4001;
export const CLOSE_SLOW_CONSUMER = 4008;
export const CLOSE_GOING_AWAY = 1001;

// Why these defaults: a first retry within half a second hides a sidecar restart;
// the 30 s cap keeps a fleet of tabs from hammering an edge that is down; a
// connection that stayed up 10 s is healthy again, so the next outage starts over.
// Refusals that a reconnect would only earn again: the topic is dropped.
const FINAL_REASONS = new Set(["PERMISSION_DENIED", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"]);

const DEFAULTS = Object.freeze({
  backoff: Object.freeze({ initial: 500, max: 30000, factor: 2 }),
  stableAfter: 10000,
  connectTimeout: 10000,
});

/** Seconds-since-epoch `exp` of a JWT, or undefined when it has none or is not a JWT. */
export function tokenExpiry(token) {
  const part = String(token).split(".")[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64 + "===".slice((b64.length + 3) % 4)));
    return typeof claims.exp === "number" ? claims.exp : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Full-jitter backoff: a uniform delay in [0, min(max, initial * factor^attempt)).
 * Spreads reconnecting clients out instead of having them all retry at once.
 */
export function backoffDelay(attempt, { initial, max, factor }, random = Math.random) {
  const ceiling = Math.min(max, initial * Math.pow(factor, attempt));
  return Math.floor(random() * ceiling);
}

function emit(listeners, value) {
  for (const fn of [...listeners]) {
    try {
      fn(value);
    } catch (err) {
      // One broken listener must not stop the others or the connection.
      setTimeout(() => { throw err; });
    }
  }
}

function addTo(set, fn) {
  set.add(fn);
  return () => set.delete(fn);
}

export class SidecarSocket {
  /**
   * @param {string} url  the edge's WebSocket URL, e.g. "wss://app.example/ws"
   * @param {object} options see sidecar-ws.d.ts
   */
  constructor(url, options = {}) {
    if (!options.token) throw new TypeError("options.token is required (a string or a function)");
    this._url = url;
    this._token = options.token;
    this._backoff = { ...DEFAULTS.backoff, ...(options.backoff || {}) };
    this._stableAfter = options.stableAfter ?? DEFAULTS.stableAfter;
    this._connectTimeout = options.connectTimeout ?? DEFAULTS.connectTimeout;
    this._random = options.random || Math.random;
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    /** topic -> last offset delivered to listeners */
    this._offsets = new Map(Object.entries(options.offsets || {}).map(([t, o]) => [t, Number(o)]));
    /** topics asked for beyond the rooms the token joins */
    this._topics = new Set(options.topics || []);
    /** topics explicitly left (rooms are joined again on every connect) */
    this._left = new Set();
    this._listeners = new Map(); // topic or "*" -> Set<fn>
    this._stateListeners = new Set();
    this._controlListeners = new Set();
    this._errorListeners = new Set();
    this._state = "offline";
    this._attempt = 0;
    this._ws = null;
    this._timers = { retry: null, stable: null, open: null };
    this._lastToken = undefined;
    this._resumedByUrl = new Set();
    this._stopped = true;
    this._generation = 0;
    this._onOnline = () => { if (!this._stopped && this._state === "offline") this._reconnectNow(); };
    // Connect on the next microtask, so listeners added right after construction
    // see every state from the first "connecting" on.
    this._autostart = options.connect !== false;
    queueMicrotask(() => { if (this._autostart) this.connect(); });
  }

  /** "connecting" | "live" | "offline" | "closed" */
  get state() { return this._state; }

  /** A copy of the last offset seen per topic (what a reconnect resumes from). */
  get offsets() { return Object.fromEntries(this._offsets); }

  /** Listen to events of one topic, or of every topic with "*". Returns an unsubscribe function. */
  on(topic, listener) {
    if (!this._listeners.has(topic)) this._listeners.set(topic, new Set());
    return addTo(this._listeners.get(topic), listener);
  }

  /** State changes: {state, code?, reason?, retryIn?, attempt?}. Called at once with the current state. */
  onState(listener) {
    const off = addTo(this._stateListeners, listener);
    listener({ state: this._state });
    return off;
  }

  /** Control frames from the server: subscribed, unsubscribed, gap, error. */
  onControl(listener) {
    return addTo(this._controlListeners, listener);
  }

  /**
   * Subscriptions the server refused for good (PERMISSION_DENIED, INVALID_ARGUMENT,
   * RESOURCE_EXHAUSTED): {topic, reason, message}. The topic is dropped, not asked
   * for again on reconnect.
   */
  onError(listener) {
    return addTo(this._errorListeners, listener);
  }

  /** Subscribe to a topic the token allows; kept across reconnects. */
  subscribe(topic, { offset } = {}) {
    this._left.delete(topic);
    this._topics.add(topic);
    if (offset !== undefined) this._offsets.set(topic, Number(offset));
    const frame = { type: "subscribe", topic };
    if (this._offsets.has(topic)) frame.offset = this._offsets.get(topic);
    this._send(frame);
  }

  /** Stop receiving a topic (a room too, until subscribe is called again). */
  unsubscribe(topic) {
    this._topics.delete(topic);
    this._offsets.delete(topic);
    this._left.add(topic);
    this._send({ type: "unsubscribe", topic });
  }

  /** Start (or restart after close()). Safe to call while already running. */
  connect() {
    this._autostart = false;
    if (!this._stopped) return;
    this._stopped = false;
    globalThis.addEventListener?.("online", this._onOnline);
    this._open();
  }

  /** Close for good: no reconnect until connect() is called again. */
  close(code = 1000, reason = "client closed") {
    this._autostart = false;
    this._stopped = true;
    globalThis.removeEventListener?.("online", this._onOnline);
    this._clearTimers();
    this._generation++;
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(code, reason);
    this._setState({ state: "closed", code, reason });
  }

  // ------------------------------------------------------------------ internals

  _setState(change) {
    this._state = change.state;
    emit(this._stateListeners, change);
  }

  _clearTimers() {
    for (const key of Object.keys(this._timers)) {
      clearTimeout(this._timers[key]);
      this._timers[key] = null;
    }
  }

  _send(frame) {
    if (this._ws && this._ws.readyState === 1 && this._state === "live") {
      this._ws.send(JSON.stringify(frame));
    }
  }

  async _fetchToken() {
    if (typeof this._token === "function") return String(await this._token());
    return String(this._token);
  }

  _buildUrl(token) {
    const url = new URL(this._url, globalThis.location?.href);
    url.searchParams.set("token", token);
    const offsets = {};
    for (const [topic, offset] of this._offsets) {
      if (!this._left.has(topic)) offsets[topic] = offset;
    }
    if (Object.keys(offsets).length) url.searchParams.set("offsets", JSON.stringify(offsets));
    this._resumedByUrl = new Set(Object.keys(offsets));
    return url.toString();
  }

  async _open(freshToken) {
    const generation = ++this._generation;
    this._setState({ state: "connecting", attempt: this._attempt });
    let token = freshToken;
    try {
      token ??= await this._fetchToken();
    } catch (err) {
      if (generation !== this._generation) return;
      this._retry({ code: 0, reason: `token provider failed: ${err && err.message || err}` });
      return;
    }
    if (generation !== this._generation) return;
    const exp = tokenExpiry(token);
    if (exp !== undefined && exp * 1000 <= Date.now()) {
      // Connecting would only earn a 401; wait for a fresh token instead.
      this._giveUp({ code: CLOSE_TOKEN_EXPIRED, reason: "token expired" });
      return;
    }
    this._lastToken = token;
    let ws;
    try {
      ws = new this._WebSocket(this._buildUrl(token));
    } catch (err) {
      this._retry({ code: 0, reason: String(err && err.message || err) });
      return;
    }
    this._ws = ws;
    this._timers.open = setTimeout(() => ws.close(), this._connectTimeout);
    ws.onopen = () => {
      if (ws !== this._ws) return;
      clearTimeout(this._timers.open);
      this._timers.stable = setTimeout(() => { this._attempt = 0; }, this._stableAfter);
      this._setState({ state: "live" });
      for (const topic of this._topics) {
        // Topics resumed through the URL are subscribed already; the rest (new, or
        // added while this connection was opening) are asked for now.
        if (this._resumedByUrl.has(topic)) continue;
        const frame = { type: "subscribe", topic };
        if (this._offsets.has(topic)) frame.offset = this._offsets.get(topic);
        this._send(frame);
      }
      for (const topic of this._left) this._send({ type: "unsubscribe", topic });
    };
    ws.onmessage = (msg) => {
      if (ws === this._ws) this._receive(msg.data);
    };
    ws.onclose = (ev) => {
      if (ws !== this._ws) return;
      this._ws = null;
      clearTimeout(this._timers.open);
      clearTimeout(this._timers.stable);
      this._closed(ev.code, ev.reason);
    };
    // onerror is always followed by onclose, which does the work.
  }

  _receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.control) {
      const topic = frame.topic;
      if (frame.control === "gap" && frame.to_offset > (this._offsets.get(topic) ?? 0)) {
        this._offsets.set(topic, frame.to_offset);
      } else if (frame.control === "subscribed" && typeof frame.offset === "number" &&
                 !this._offsets.has(topic) && !this._left.has(topic)) {
        // Nothing seen on this topic yet: a reconnect resumes where the server said
        // it started, so events published while offline are not lost.
        this._offsets.set(topic, frame.offset);
      }
      emit(this._controlListeners, frame);
      if (frame.control === "error" && topic && FINAL_REASONS.has(frame.reason)) {
        this._topics.delete(topic);
        this._offsets.delete(topic);
        emit(this._errorListeners, { topic, reason: frame.reason, message: frame.message });
      }
      return;
    }
    const { topic, offset } = frame;
    if (this._left.has(topic)) return;
    // At-most-once per offset: a replay overlapping what was already seen is dropped.
    if (offset <= (this._offsets.get(topic) ?? 0)) return;
    this._offsets.set(topic, offset);
    const own = this._listeners.get(topic);
    if (own) emit(own, frame);
    const all = this._listeners.get("*");
    if (all) emit(all, frame);
  }

  async _closed(code, reason) {
    if (this._stopped) return;
    if (code === CLOSE_TOKEN_EXPIRED) {
      // Only a different token is worth a reconnect; the same one would be refused.
      const generation = this._generation;
      let fresh;
      try {
        fresh = typeof this._token === "function" ? await this._fetchToken() : undefined;
      } catch {
        fresh = undefined;
      }
      if (generation !== this._generation || this._stopped) return;
      if (fresh === undefined || fresh === this._lastToken) {
        this._giveUp({ code, reason: reason || "token expired" });
        return;
      }
      this._setState({ state: "offline", code, reason, retryIn: 0 });
      this._open(fresh);
      return;
    }
    this._retry({ code, reason });
  }

  _retry({ code, reason }) {
    if (this._stopped) return;
    const retryIn = backoffDelay(this._attempt, this._backoff, this._random);
    this._attempt++;
    this._setState({ state: "offline", code, reason, retryIn, attempt: this._attempt });
    clearTimeout(this._timers.retry);
    this._timers.retry = setTimeout(() => {
      this._timers.retry = null;
      if (!this._stopped) this._open();
    }, retryIn);
  }

  _reconnectNow() {
    if (this._timers.retry === null) return;
    clearTimeout(this._timers.retry);
    this._timers.retry = null;
    this._open();
  }

  _giveUp({ code, reason }) {
    this._stopped = true;
    globalThis.removeEventListener?.("online", this._onOnline);
    this._clearTimers();
    this._setState({ state: "offline", code, reason, retryIn: null });
  }
}

/** Shorthand for `new SidecarSocket(url, options)`. */
export function connectSidecar(url, options) {
  return new SidecarSocket(url, options);
}
