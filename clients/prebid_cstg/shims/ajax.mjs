// Stands in for Prebid.js's src/ajax.js (noCredsAjax) with Node's fetch, keeping the contract of
// prebid.js 11.36.0 (dist/src/src/ajax.js: toFetchRequest, attachCallbacks, toXHR):
// - the method is options.method, else POST with data and GET without; data is the body as given;
// - Content-Type is options.contentType, else text/plain; options.customHeaders are added;
// - no credentials; the request is aborted after a timeout (Prebid's default is 3000 ms);
// - a 2xx (or 304) calls callbacks.success(responseText, xhr), any other status
//   callbacks.error(statusText, xhr), a network failure or timeout callbacks.error('', xhr) with
//   xhr.status 0; xhr carries status, statusText, responseText, response, responseURL and
//   getResponseHeader.
// What a browser adds on its own and Node's fetch does not, the harness adds: the page's Origin
// (settings.origin), which the operator checks against the publisher's domains.
// (GET with data, which Prebid folds into the query string, is not needed by the UID2 library.)

export const settings = { origin: undefined, timeoutMs: 3000 };

function toXHR({ status, statusText = '', headers, url }, responseText) {
  return {
    readyState: 4,
    status,
    statusText,
    responseText,
    response: responseText,
    responseType: '',
    responseURL: url,
    getResponseHeader: (header) => (headers?.has(header) ? headers.get(header) : null),
    timedOut: false,
  };
}

export function noCredsAjax(url, callbacks, data, options = {}) {
  const method = options.method || (data ? 'POST' : 'GET');
  if (method === 'GET' && data) throw new Error('ajax shim: GET with data is not supported');
  const headers = new Headers(options.customHeaders);
  headers.set('Content-Type', options.contentType || 'text/plain');
  if (settings.origin !== undefined) headers.set('Origin', settings.origin);
  const init = { method, headers, signal: AbortSignal.timeout(settings.timeoutMs) };
  if (method !== 'GET' && data) init.body = data;
  fetch(url, init)
    .then((response) => response.text().then((text) => [response, text]))
    .then(
      ([response, text]) => {
        const xhr = toXHR(response, text);
        if (response.ok || response.status === 304) callbacks.success(text, xhr);
        else callbacks.error(response.statusText, xhr);
      },
      (reason) => {
        // Prebid passes no reason on; stderr keeps it for whoever debugs a status 0.
        console.error('ajax shim: request failed:', reason?.cause ?? reason);
        const timedOut = reason?.name === 'TimeoutError' || reason?.name === 'AbortError';
        callbacks.error('', Object.assign(toXHR({ status: 0 }, ''), { reason, timedOut }));
      },
    );
}

export const ajax = noCredsAjax;
