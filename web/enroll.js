// The enrollment page (/enroll#<token>): a new account's holder sets the first password with the
// one-time link the practice sent, then signs in at / (and enrolls an authenticator there). An
// ES module in plain ES2017.
import { apiClient } from '/api.js';
import { $, messenger, busy as busyWith } from '/page.js';

var VIEWS = ['view-password', 'view-done', 'view-invalid'];
var say = messenger('message');
var api = apiClient().call;

function show(id) {
  VIEWS.forEach(function (v) { $(v).hidden = v !== id; });
  var first = $(id).querySelector('input, button, a');
  if (first) { try { first.focus(); } catch (e) { /* older browsers */ } }
}

// The token, read once and taken out of the address bar (and so out of the history).
var token = (location.hash || '').replace(/^#/, '');
try { history.replaceState(null, '', location.pathname + location.search); } catch (e) { /* ignore */ }

function words(e) {
  if (e.code === 'link_used') return 'This link has already been used. Each link works only once. If it was not you, tell your practice at once.';
  if (e.code === 'link_expired') return 'This link has expired. Ask your practice for a new one.';
  if (e.code === 'invalid_link') return 'This link is not valid. Make sure you opened the whole link from your message, or ask your practice for a new one.';
  return null;
}

$('enroll-form').addEventListener('submit', function (ev) {
  ev.preventDefault();
  busyWith($('enroll-submit'), async function () {
    var password = $('password').value;
    if (password !== $('password-again').value) throw new Error('The two passwords differ.');
    var r;
    try { r = await api('POST', '/api/v1/auth/enroll', { token: token, password: password }); }
    catch (e) {
      var why = words(e);
      if (!why) throw e;
      $('invalid-why').textContent = why;
      return show('view-invalid');
    }
    $('password').value = '';
    $('password-again').value = '';
    $('done-who').textContent = 'Practice: ' + r.clinic + ' · Username: ' + r.username;
    show('view-done');
  }, say);
});

if (token) show('view-password');
else show('view-invalid');
