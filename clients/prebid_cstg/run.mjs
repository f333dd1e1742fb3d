// Runs the official Prebid.js UID2 client-side token generation (CSTG) against an operator, as a
// wire-compatibility oracle for POST /v2/token/client-generate.
//
// Usage: node run.mjs --prebid FILE --base-url URL --server-public-key KEY --subscription-id ID
//          [--origin ORIGIN] (--email E | --phone P | --email-hash H | --phone-hash H)
//          [--timeout-ms N] [--verbose]
// FILE is libraries/uid2IdSystemShared/uid2IdSystem_shared.js from the prebid.js npm package
// (tests/support/prebid_cstg.py downloads and caches it). ORIGIN (else $PREBID_CSTG_ORIGIN) is
// sent as the Origin header, as the publisher's page would. --timeout-ms is the request timeout
// (Prebid's own is 3000 ms).
//
// Prebid's own code does the work: Uid2GetId, the entry point of Prebid's uid2IdSystem module,
// given the configuration that module maps from its params, with empty storage, so it always
// generates a token. Only src/ajax.js and src/utils.js are replaced (shims/).
//
// Prints one JSON line: the identity on success, {"status":"optout"}, or {"error": "..."}.
// Exit 0: success or opt-out; 1: Prebid reported an error (the API's or its own);
// 2: the harness was misused or Prebid did not run CSTG (e.g. an identity it refuses; its
// warnings are in the error).
import { registerHooks } from 'node:module';
import { resolve as resolvePath } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

// Also what Prebid's uid2IdSystem module sets (modules/uid2IdSystem.js, 11.36.0).
const PREBID_VERSION = '11.36.0';
const UID2_CLIENT_ID = `PrebidJS-${PREBID_VERSION}-UID2Module-1.1`;
const ADVERTISING_COOKIE = '__uid2_advertising_token';

let reported = false;

function report(result, code) {
  if (reported) return;
  reported = true;
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exitCode = code;
}

function misuse(message) {
  report({ error: message }, 2);
}

function memoryStorage() {
  // The part of Prebid's StorageManager that Uid2StorageManager uses.
  const cookies = new Map();
  const local = new Map();
  return {
    cookiesAreEnabled: () => true,
    getCookie: (name) => cookies.get(name) ?? null,
    setCookie: (name, value) => cookies.set(name, value),
    localStorageIsEnabled: () => true,
    getDataFromLocalStorage: (key) => local.get(key) ?? null,
    setDataInLocalStorage: (key, value) => local.set(key, value),
  };
}

async function main() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        prebid: { type: 'string' },
        'base-url': { type: 'string' },
        'server-public-key': { type: 'string' },
        'subscription-id': { type: 'string' },
        origin: { type: 'string' },
        email: { type: 'string' },
        phone: { type: 'string' },
        'email-hash': { type: 'string' },
        'phone-hash': { type: 'string' },
        'timeout-ms': { type: 'string', default: '3000' },
        verbose: { type: 'boolean', default: false },
      },
      strict: true,
    }));
  } catch (e) {
    return misuse(e.message);
  }
  const required = ['prebid', 'base-url', 'server-public-key', 'subscription-id'];
  const missing = required.filter((name) => values[name] === undefined);
  if (missing.length) return misuse(`missing --${missing.join(', --')}`);
  const identities = ['email', 'phone', 'email-hash', 'phone-hash'].filter(
    (name) => values[name] !== undefined,
  );
  if (identities.length !== 1) {
    return misuse('exactly one of --email, --phone, --email-hash, --phone-hash is needed');
  }
  const origin = values.origin ?? process.env.PREBID_CSTG_ORIGIN;
  const timeoutMs = Number(values['timeout-ms']);
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) return misuse('--timeout-ms: not a number');

  // Prebid's code is browser code: window.crypto.subtle, atob, btoa and fetch are Node globals.
  globalThis.window = globalThis;

  // The Prebid file's two imports go to the shims; anything else it imports is a surprise (a new
  // Prebid version) and fails loudly.
  const prebidUrl = pathToFileURL(resolvePath(values.prebid)).href;
  const shims = {
    '../../src/ajax.js': new URL('./shims/ajax.mjs', import.meta.url).href,
    '../../src/utils.js': new URL('./shims/utils.mjs', import.meta.url).href,
  };
  registerHooks({
    resolve(specifier, context, nextResolve) {
      if (context.parentURL === prebidUrl) {
        if (!(specifier in shims)) {
          throw new Error(`the Prebid file imports ${specifier}, which the harness has no shim for`);
        }
        return { url: shims[specifier], format: 'module', shortCircuit: true };
      }
      const resolved = nextResolve(specifier, context);
      // The cached file is an ES module whatever package.json lies above it.
      return resolved.url === prebidUrl ? { ...resolved, format: 'module' } : resolved;
    },
  });

  const ajax = await import(shims['../../src/ajax.js']);
  const utils = await import(shims['../../src/utils.js']);
  ajax.settings.origin = origin;
  ajax.settings.timeoutMs = timeoutMs;
  const { Uid2GetId, extractIdentityFromParams } = await import(prebidUrl);

  const log = (level) => (...args) => {
    if (values.verbose) console.error(level, ...args);
  };
  const warnings = [];
  const logWarn = (...args) => {
    warnings.push(args.map(String).join(' '));
    log('WARN:')(...args);
  };

  // What Prebid's uid2IdSystem module builds from its params (getId in modules/uid2IdSystem.js).
  const params = {
    uid2ApiBase: values['base-url'],
    serverPublicKey: values['server-public-key'],
    subscriptionId: values['subscription-id'],
    email: values.email,
    phone: values.phone,
    emailHash: values['email-hash'],
    phoneHash: values['phone-hash'],
  };
  for (const key of Object.keys(params)) if (params[key] === undefined) delete params[key];
  const config = {
    apiBaseUrl: params.uid2ApiBase,
    storage: 'localStorage',
    clientId: UID2_CLIENT_ID,
    internalStorage: ADVERTISING_COOKIE,
    cstg: {
      serverPublicKey: params.serverPublicKey,
      subscriptionId: params.subscriptionId,
      ...extractIdentityFromParams(params),
    },
  };

  const tokens = await new Promise((resolve, reject) => {
    // Uid2GetId reports a failed generation only through logError('error generating token: ', e).
    utils.onLogError((...args) => reject(new PrebidError(args.slice(1).map(String).join(' '))));
    const result = Uid2GetId(config, memoryStorage(), log('INFO:'), logWarn);
    if (typeof result?.callback !== 'function') {
      reject(new NotRun(`Prebid did not run CSTG: ${warnings.join('; ') || JSON.stringify(result)}`));
      return;
    }
    result.callback(resolve);
  }).catch((e) => {
    if (e instanceof PrebidError || e instanceof NotRun) return e;
    throw e; // the harness's own failure (main's catch)
  });

  if (tokens instanceof PrebidError) return report({ error: tokens.message }, 1);
  if (tokens instanceof NotRun) return misuse(tokens.message);
  if (tokens.latestToken === 'optout') return report({ status: 'optout' }, 0);
  return report(tokens.latestToken, 0);
}

class PrebidError extends Error {}
class NotRun extends Error {}

process.on('unhandledRejection', (reason) => misuse(`harness: unhandled rejection: ${reason}`));
process.on('exit', () => {
  if (!reported) misuse('harness: Prebid neither resolved nor reported an error');
});

main().catch((e) => misuse(`harness: ${e?.stack ?? e}`));
