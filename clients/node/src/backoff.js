'use strict';
/** Exponential backoff with full jitter: attempt n waits random(0, min(max, initial * multiplier^n)). */

const DEFAULT_RECONNECT = Object.freeze({
  // Quick enough that a restarting sidecar is found again within a second or two.
  initialDelayMs: 100,
  multiplier: 2,
  // Caps the wait so a subscriber notices a sidecar that is back within seconds.
  maxDelayMs: 5000,
  // Reconnect for as long as the subscription is open.
  maxAttempts: Infinity,
});

class Backoff {
  constructor(options = {}, random = Math.random) {
    this.policy = { ...DEFAULT_RECONNECT, ...options };
    this.random = random;
  }

  /** Milliseconds to wait before reconnect attempt `attempt` (0-based). */
  delay(attempt) {
    const { initialDelayMs, multiplier, maxDelayMs } = this.policy;
    const ceiling = Math.min(maxDelayMs, initialDelayMs * multiplier ** attempt);
    return Math.floor(this.random() * ceiling);
  }
}

/** Resolves after `ms`, or at once when `signal` aborts (never rejects). */
function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal && signal.aborted) return resolve();
    const onAbort = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      if (signal) signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
  });
}

module.exports = { Backoff, DEFAULT_RECONNECT, sleep };
