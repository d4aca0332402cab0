// The sign-in page (/): password, then enrolling an authenticator (with recovery codes) or
// verifying with one, then links to the pages for the caller's role. An ES module in plain ES2017.
import { apiClient, watchIdle, signedOutForIdle } from '/api.js';
import { $, messenger, busy as busyWith } from '/page.js';

var VIEWS = ['view-login', 'view-enroll', 'view-recovery', 'view-verify', 'view-signed-in'];
var useRecovery = false;
// Roles that work with the schedule (the permission matrix grants them schedule access).
var SCHEDULE_ROLES = { clinic_admin: true, provider: true, medical_assistant: true, front_desk: true };

// Show one view, focus its first input (or button).
function show(id) {
  VIEWS.forEach(function (v) { $(v).hidden = v !== id; });
  var first = $(id).querySelector('input, button');
  if (first) { try { first.focus(); } catch (e) { /* older browsers */ } }
}

// Message area: errors by default, 'info' for neutral notices.
var say = messenger('message');
var api = apiClient().call;

// Run a request with the form's submit button disabled; report any failure.
function busy(button, fn) { return busyWith(button, fn, say); }

// Route to the view that matches a sign-in stage.
async function goStage(stage) {
  if (stage === 'full') return loadSession();
  if (stage === 'enroll_only') return startEnroll();
  if (stage === 'mfa_pending') { setRecovery(false); $('mfa-code').value = ''; $('recovery-code').value = ''; return show('view-verify'); }
  throw new Error('Unexpected sign-in stage: ' + stage);
}

// Fetch the current session and show the matching view (401 → login form).
async function loadSession() {
  var s;
  try { s = await api('GET', '/api/v1/auth/session'); }
  catch (e) {
    showLogin();
    if (e.status === 401) return; // not signed in: just the login form
    throw e;
  }
  if (s.stage !== 'full') return goStage(s.stage);
  $('whoami').textContent = 'Signed in as ' + s.display_name + ' (' + s.role + ')';
  watchIdle(s);
  $('patient-links').hidden = s.role !== 'patient';
  $('staff-links').hidden = !SCHEDULE_ROLES[s.role];
  show('view-signed-in');
}

function showLogin() {
  $('password').value = '';
  show('view-login');
  if (signedOutForIdle()) say('You were signed out because nothing was done on the page for a while. Sign in again to continue.', 'info');
  if ($('clinic').value && !$('username').value) { try { $('username').focus(); } catch (e) { /* ignore */ } }
}

// Begin enrollment: no request body and no Content-Type, as the server requires.
async function startEnroll() {
  var r = await api('POST', '/api/v1/auth/mfa/enroll');
  var secret = String(r.secret || '').replace(/\s+/g, '');
  $('enroll-secret').textContent = secret.replace(/(.{4})(?=.)/g, '$1 ');
  $('enroll-uri').href = r.otpauth_uri;
  $('enroll-code').value = '';
  show('view-enroll');
}

function sixDigits(input) {
  var code = input.value.replace(/\s+/g, '');
  if (!/^[0-9]{6}$/.test(code)) { input.focus(); throw new Error('Enter the 6-digit code.'); }
  return code;
}

function setRecovery(on) {
  useRecovery = on;
  $('totp-field').hidden = on;
  $('recovery-field').hidden = !on;
  $('use-recovery').textContent = on ? 'Use an authenticator code instead' : 'Use a recovery code instead';
  $('use-recovery').setAttribute('aria-expanded', on ? 'true' : 'false');
}

// --- Event wiring ---
$('login-form').addEventListener('submit', function (ev) {
  ev.preventDefault();
  busy($('login-submit'), async function () {
    var body = { clinic: $('clinic').value.trim(), username: $('username').value.trim(), password: $('password').value };
    if (!body.clinic || !body.username || !body.password) throw new Error('Enter practice, username and password.');
    var r = await api('POST', '/api/v1/auth/login', body);
    $('password').value = '';
    await goStage(r.stage);
  });
});

$('enroll-form').addEventListener('submit', function (ev) {
  ev.preventDefault();
  busy($('enroll-submit'), async function () {
    var r = await api('POST', '/api/v1/auth/mfa/enroll/confirm', { code: sixDigits($('enroll-code')) });
    var list = $('recovery-codes');
    list.textContent = '';
    (r.recovery_codes || []).forEach(function (c) {
      var li = document.createElement('li');
      li.textContent = c;
      list.appendChild(li);
    });
    $('enroll-secret').textContent = '';
    show('view-recovery');
  });
});

$('recovery-continue').addEventListener('click', function () {
  $('recovery-codes').textContent = '';
  busy($('recovery-continue'), loadSession);
});

$('verify-form').addEventListener('submit', function (ev) {
  ev.preventDefault();
  busy($('mfa-submit'), async function () {
    var body;
    if (useRecovery) {
      var rc = $('recovery-code').value.trim();
      if (!rc) { $('recovery-code').focus(); throw new Error('Enter a recovery code.'); }
      body = { recovery_code: rc };
    } else {
      body = { code: sixDigits($('mfa-code')) };
    }
    try { await api('POST', '/api/v1/auth/mfa/verify', body); }
    catch (e) {
      $('mfa-code').value = ''; $('recovery-code').value = '';
      // Locked or session gone: start over from the password step.
      if (e.status === 423 || (e.status === 401 && e.code === 'unauthenticated')) showLogin();
      throw e;
    }
    await loadSession();
  });
});

$('use-recovery').addEventListener('click', function () {
  setRecovery(!useRecovery);
  var target = useRecovery ? $('recovery-code') : $('mfa-code');
  try { target.focus(); } catch (e) { /* ignore */ }
});

$('logout').addEventListener('click', function () {
  busy($('logout'), async function () {
    await api('POST', '/api/v1/auth/logout');
    $('whoami').textContent = '';
    showLogin();
    say('You have signed out.', 'info');
  });
});

// On load: resume whatever stage the session cookie is at.
loadSession().catch(function (e) { say(e.message || String(e)); });
