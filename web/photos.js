// The patient's wound photo page (/photos): take or choose a photo, send it with a progress bar,
// see the ones sent. An ES module in plain ES2017.
import { apiClient } from '/api.js';
import { $, el, clear, messenger } from '/page.js';

// Friendly words for the server's refusals (problem+json `code`); its `detail` otherwise.
var REFUSALS = {
  empty_upload: 'That file is empty. Please take the photo again.',
  upload_too_large: 'That photo is too large to send. Please take a new photo, or choose a smaller one.',
  unsupported_image_type: 'That file is not a photo we can use. Please send a JPEG or PNG photo.',
  heic_not_supported: 'Your phone saved the photo as HEIC, which we cannot read yet. In the camera settings choose "Most Compatible" (JPEG), then take the photo again.',
  image_too_large: 'That picture has too many pixels for us to process. Please take a normal photo.',
  image_corrupt: 'That photo seems damaged or was not saved completely. Please take it again.',
  image_too_complex: 'That picture is too large for us to process. Please take a normal photo.',
  storage_unavailable: 'We could not save your photo just now. Please try again in a minute.',
  upload_stalled: 'The connection stopped while sending. Please check your signal and try again.',
  upload_too_slow: 'The connection is too slow to send this photo right now. Please try again where the signal is better, or on Wi-Fi.',
  upload_busy: 'We are receiving many photos right now. Please try again in a minute.',
  too_many_uploads: 'Your other photos are still being sent. Please wait for them, then send this one.',
  upload_quota: 'You have sent many photos today. Please try again tomorrow, or call the office if this one is urgent.',
  session_expired: 'You were signed out. Please sign in again and resend the photo.',
  unauthenticated: 'Please sign in first.'
};

var say = messenger('message');
var server = apiClient({ failed: function (status) { return 'Sending failed (error ' + status + '). Please try again.'; } });

// The words for a failed request (an ApiError): ours for the codes we know, the server's otherwise.
function refusal(e) {
  if (e.code && REFUSALS[e.code]) return REFUSALS[e.code];
  if (e.status === 0) return 'The connection was lost while sending. Please check your signal and try again.';
  return e.message || String(e);
}

function renderList(items) {
  var ul = $('photos');
  clear(ul);
  $('none').hidden = items.length > 0;
  items.forEach(function (it) {
    var li = el('li');
    var img = el('img');
    img.src = it.thumbnail_url;
    img.alt = 'Wound photo sent ' + new Date(it.uploaded_at).toLocaleString();
    img.width = 256; img.height = Math.round(256 * it.height / Math.max(it.width, 1));
    li.appendChild(img);
    li.appendChild(el('span', null, new Date(it.uploaded_at).toLocaleDateString()));
    ul.appendChild(li);
  });
  $('view-list').hidden = false;
}

async function loadList() {
  renderList((await server.call('GET', '/api/v1/me/images')) || []);
}

async function send(file) {
  say('');
  $('uploading').hidden = false;
  $('pick-label').hidden = true;
  $('progress').value = 0;
  $('progress-text').textContent = 'Sending…';
  try {
    await server.upload('POST', '/api/v1/me/images', file, function (f) {
      var pct = Math.round(f * 100);
      $('progress').value = pct;
      $('progress-text').textContent = pct < 100 ? 'Sending… ' + pct + '%' : 'Processing…';
    });
  } catch (e) {
    say(refusal(e));
    if (e.status === 401) { $('view-upload').hidden = true; $('view-signin').hidden = false; }
    return;
  } finally {
    $('uploading').hidden = true;
    $('pick-label').hidden = false;
    $('file').value = '';
  }
  say('Thank you. Your photo was sent to your care team.', 'info');
  await loadList().catch(function () { /* the photo was sent; the list shows it next time */ });
}

$('file').addEventListener('change', function () {
  var f = this.files && this.files[0];
  if (f) send(f);
});

(async function start() {
  try { await loadList(); }
  catch (e) {
    if (e.status === 401) { $('view-signin').hidden = false; return; }
    if (e.status === 403) { say('This page is for patients sending photos to their care team.'); return; }
    say(refusal(e));
    return;
  }
  $('view-upload').hidden = false;
})();
