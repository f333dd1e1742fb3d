// Stands in for Prebid.js's src/utils.js for the one file the harness loads
// (libraries/uid2IdSystemShared/uid2IdSystem_shared.js), which imports cyrb53Hash and logError.
// cyrb53Hash is copied from prebid.js 11.36.0 (Apache-2.0, dist/src/src/utils.js), Math.imul
// being always there in Node. logError prints to stderr as Prebid's does to the console, and
// tells the runner: Uid2GetId reports a failed token generation only through logError.

const errorListeners = [];

export function onLogError(listener) {
  errorListeners.push(listener);
}

export function logError(...args) {
  console.error('ERROR:', ...args);
  for (const listener of errorListeners) listener(...args);
}

export function cyrb53Hash(str, seed = 0) {
  let h1 = 0xdeadbeef ^ seed;
  let h2 = 0x41c6ce57 ^ seed;
  for (let i = 0, ch; i < str.length; i++) {
    ch = str.charCodeAt(i);
    h1 = Math.imul(h1 ^ ch, 2654435761);
    h2 = Math.imul(h2 ^ ch, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return (4294967296 * (2097151 & h2) + (h1 >>> 0)).toString();
}
