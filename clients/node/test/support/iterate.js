'use strict';
/** Reading async iterators in tests with a bound, so a missing event fails instead of hanging. */

/** The next `count` items of `iterator`; rejects if they do not all arrive within `timeoutMs`. */
async function take(iterator, count, timeoutMs = 10000) {
  const items = [];
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(
      `only ${items.length} of ${count} items within ${timeoutMs} ms: ${JSON.stringify(items.map(brief))}`)),
    timeoutMs);
  });
  try {
    while (items.length < count) {
      const step = await Promise.race([iterator.next(), expired]);
      if (step.done) throw new Error(`iterator ended after ${items.length} of ${count} items`);
      items.push(step.value);
    }
    return items;
  } finally {
    clearTimeout(timer);
  }
}

function brief(item) {
  return item.kind === 'event' ? `${item.topic}#${item.offset}` : `${item.kind}:${item.topic}`;
}

module.exports = { take, brief };
