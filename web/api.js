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
    const foreground = !(headers && headers['X-Clinic-Background']);
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
    if (foreground && res.ok) active();
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
        if (xhr.status >= 200 && xhr.status < 300) { active(); resolve(data); }
        else reject(refusal(xhr.status, data, xhr.getResponseHeader('Retry-After')));
      });
      xhr.addEventListener('error', function () { reject(new ApiError(UNREACHABLE, 0, null)); });
      xhr.send(blob === undefined ? null : blob);
    });
  }

  return { call: call, upload: upload, now: function () { return Date.now() + skew; } };
}

// ------------------------------------------------------------------------------------------
// Idle sign-out. The server ends a session after `idle_timeout_secs` with no request counted as
// activity (a timed refresh sent with BACKGROUND is not). So that a page left open on a shared
// front-desk screen does not sit showing patients' details until someone clicks, the page
// counts the same clock: it warns first, then signs out and reloads (which clears what it
// showed). A person working on the page without sending requests (typing a long note) is not
// idle: their key presses and taps send one counted request a resolution step.

let lastActive = Date.now();
const IDLE_FLAG = 'clinic.signed-out-idle';

function active() { lastActive = Date.now(); }

// Whether this page load follows an idle sign-out (answered once), for the sign-in prompt.
export function signedOutForIdle() {
  try {
    const was = sessionStorage.getItem(IDLE_FLAG) === '1';
    sessionStorage.removeItem(IDLE_FLAG);
    return was;
  } catch (e) { return false; }
}

// Starts counting for a signed-in page. `session` is GET /api/v1/auth/session's answer.
export function watchIdle(session) {
  const idle = (session && session.idle_timeout_secs || 0) * 1000;
  if (!idle) return;
  // The server's clock may lag this page's by up to its resolution: end that much early.
  const lag = Math.max(1000, (session.idle_resolution_secs || 60) * 1000);
  const warnFor = Math.min(120000, Math.max(5000, Math.floor(idle / 4)));
  const client = apiClient();
  let interacted = false, pinging = false, banner = null, done = false;

  function keepAlive() {
    if (pinging) return;
    pinging = true;
    client.call('GET', '/api/v1/auth/session')
      .catch(function (e) { if (e.status === 401) signOut(); })
      .then(function () { pinging = false; });
  }

  function signOut() {
    if (done) return;
    done = true;
    try { sessionStorage.setItem(IDLE_FLAG, '1'); } catch (e) { /* private mode */ }
    fetch('/api/v1/auth/logout', { method: 'POST', credentials: 'same-origin' })
      .catch(function () { /* the server ends it anyway */ })
      .then(function () { location.reload(); });
  }

  function warn(left) {
    if (!banner) {
      banner = document.createElement('div');
      banner.className = 'idle-warning';
      banner.setAttribute('role', 'alertdialog');
      banner.setAttribute('aria-live', 'assertive');
      banner.setAttribute('aria-labelledby', 'idle-warning-text');
      const text = document.createElement('p');
      text.id = 'idle-warning-text';
      const stay = document.createElement('button');
      stay.type = 'button';
      stay.textContent = 'Stay signed in';
      stay.addEventListener('click', function () { interacted = false; keepAlive(); });
      banner.appendChild(text);
      banner.appendChild(stay);
      document.body.appendChild(banner);
      try { stay.focus(); } catch (e) { /* older browsers */ }
    }
    const secs = Math.max(0, Math.ceil(left / 1000));
    banner.firstChild.textContent = 'For privacy you will be signed out in ' + secs +
      ' second' + (secs === 1 ? '' : 's') + ' because nothing has been done on this page.';
  }

  function unwarn() {
    if (banner) { banner.parentNode.removeChild(banner); banner = null; }
  }

  ['pointerdown', 'keydown', 'touchstart'].forEach(function (type) {
    document.addEventListener(type, function () { interacted = true; }, true);
  });

  function tick() {
    if (done) return;
    const now = Date.now();
    // Work on the page counts once the server would count it (a resolution step later).
    if (interacted && now - lastActive >= lag) { interacted = false; keepAlive(); }
    const left = lastActive + idle - lag - now;
    if (left <= 0) return signOut();
    if (left <= warnFor) warn(left); else unwarn();
  }
  setInterval(tick, 1000);
}
