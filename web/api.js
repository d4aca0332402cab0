// The pages' one client for the JSON API (served at /api.js): requests with the session cookie,
// RFC 9457 problem+json answers turned into errors, and the server's clock. An ES module in
// plain ES2017, no build step: it runs on older phones and tablets.

// Headers for a page's own timed refresh: the server answers it but does not count it as the
// person's activity, so a page left open still signs out after the idle timeout.
export const BACKGROUND = { 'X-Clinic-Background': '1' };

const UNREACHABLE = 'Cannot reach the server. Check your connection and try again.';

// A refused or failed request: `message` is the problem's detail (or title, or the page's words
// for a failure without a body), `status` the HTTP status (0: no answer at all), `code` the
// problem's stable code, `body` the whole problem.
export class ApiError extends Error {
  constructor(message, status, body) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = (body && body.code) || undefined;
    this.body = body || null;
  }
}

function parse(text) {
  if (!text) return null;
  try { return JSON.parse(text); } catch (e) { return null; }
}

// A client for one page. Options, all optional:
// - `signedOut()`: called on every 401 (the page shows its sign-in prompt);
// - `failed(status)`: the words for a failure whose answer has no problem body;
// - `word(text)`: rewrites a problem's detail for the page (the scheduling pages read the times
//   in it as wall times).
// `call(method, url, body, headers)` sends JSON (when `body` is given) and resolves to the parsed
// answer (null when empty); `upload(method, url, blob, onProgress)` sends raw bytes and reports
// the fraction sent (fetch cannot). Both reject with an ApiError. `now()` is the server's clock
// (to the second, from the last answer's Date), so countdowns and join buttons follow it, not
// the device's.
export function apiClient(options) {
  const o = options || {};
  const failed = o.failed || function (status) { return 'Request failed (HTTP ' + status + ').'; };
  const word = o.word || function (text) { return text; };
  let skew = 0;

  function heard(dateHeader) {
    const date = Date.parse(dateHeader || '');
    // Date has whole seconds: the middle of that second is the best guess.
    if (!isNaN(date)) skew = date + 500 - Date.now();
  }

  function refusal(status, data, retryAfter) {
    let detail = word((data && (data.detail || data.title)) || failed(status));
    if (status === 429 && retryAfter && detail.indexOf(retryAfter) < 0) detail += ' Try again in ' + retryAfter + ' seconds.';
    if (status === 401 && o.signedOut) o.signedOut();
    return new ApiError(detail, status, data);
  }

  async function call(method, url, body, headers) {
    const opts = { method: method, credentials: 'same-origin', headers: { 'Accept': 'application/json' } };
    if (headers) Object.keys(headers).forEach(function (k) { opts.headers[k] = headers[k]; });
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let res;
    try { res = await fetch(url, opts); }
    catch (e) { throw new ApiError(UNREACHABLE, 0, null); }
    heard(res.headers.get('Date'));
    const data = parse(await res.text());
    if (!res.ok) throw refusal(res.status, data, res.headers.get('Retry-After'));
    return data;
  }

  function upload(method, url, blob, onProgress) {
    return new Promise(function (resolve, reject) {
      const xhr = new XMLHttpRequest();
      xhr.open(method, url);
      xhr.setRequestHeader('Accept', 'application/json');
      if (onProgress && xhr.upload) {
        xhr.upload.addEventListener('progress', function (e) { if (e.lengthComputable) onProgress(e.loaded / e.total); });
      }
      xhr.addEventListener('load', function () {
        heard(xhr.getResponseHeader('Date'));
        const data = parse(xhr.responseText);
        if (xhr.status >= 200 && xhr.status < 300) resolve(data);
        else reject(refusal(xhr.status, data, xhr.getResponseHeader('Retry-After')));
      });
      xhr.addEventListener('error', function () { reject(new ApiError(UNREACHABLE, 0, null)); });
      xhr.send(blob === undefined ? null : blob);
    });
  }

  return { call: call, upload: upload, now: function () { return Date.now() + skew; } };
}
