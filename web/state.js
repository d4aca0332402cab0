/* The consult pages' shared state and page helpers (served at /consult/state.js): the one state
 * object every consult module reads and writes, the page's phase and banner, messages, the saved
 * session, and the few sends that only read state. Imports nothing from the other consult modules.
 */
import { apiClient } from '/api.js';
import { $, messenger, busy as busyWith } from '/page.js';

export var PROVIDER = document.body.getAttribute('data-page') === 'provider';
var STORE_KEY = 'clinic.consult';
export var LAYER_NAMES = ['low', 'medium', 'high'];
export var ROLE_NAMES = {
  provider: 'Provider', covering_provider: 'Covering provider', patient: 'Patient',
  caregiver: 'Caregiver', interpreter: 'Interpreter'
};
// Providers publish three simulcast layers; the SFU forwards one per viewer.
export var SIMULCAST = [
  { rid: 'l', scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: 'm', scaleResolutionDownBy: 2, maxBitrate: 400000 },
  { rid: 'h', maxBitrate: 700000 }
];
export var noop = function () {};

export var S = {
  phase: 'loading',        // loading | setup | signin | checking-media | media-help | connecting | waiting | in-call | lost | ended | error
  code: null, token: null, wsPath: '/api/v1/consults/ws', consultId: null,
  participant: null, role: null, admitted: false, resumeToken: null, graceMs: 30000,
  ws: null, sentFirst: null, pc: null, audioSender: null, videoSender: null, mediaReady: false,
  local: null, hints: {},
  muted: false, cameraOff: false, lowData: false, audioOnly: false,
  roster: [], waiting: [], stats: {}, tiles: {},
  lostAt: 0, attempt: 0, retryTimer: 0, wsDown: false, iceDown: false, iceTimer: 0,
  heartbeat: 0, statsTimer: 0, lastSeen: 0, pingId: 0,
  queue: Promise.resolve(), awaitingAnswer: null, offerEpoch: 0,
  finished: false, me: null, invites: []
};

// ------------------------------------------------------------------------------------------
// Page helpers

export var say = messenger('message');

export function status(text) { $('status').textContent = text || ''; }

export function show(id, on) { var el = $(id); if (el) el.hidden = !on; }

export function setPhase(p) {
  S.phase = p;
  document.body.setAttribute('data-phase', p);
  var inCall = p === 'in-call';
  var joined = p === 'waiting' || inCall || p === 'connecting';
  show('waiting', p === 'waiting');
  show('call', joined || p === 'lost');
  show('remote', inCall);
  show('alone', inCall && !Object.keys(S.tiles).length);
  show('controls', joined);
  show('people', inCall);
  if (PROVIDER) { show('host-panel', inCall); show('end', inCall); }
  updateBanner();
}

export function state() {
  if (!S.finished && (S.wsDown || S.iceDown) && (S.phase === 'in-call' || S.phase === 'waiting' || S.phase === 'connecting')) return 'reconnecting';
  return S.phase;
}

export function updateBanner() {
  var on = state() === 'reconnecting';
  $('reconnecting').hidden = !on;
  document.body.setAttribute('data-state', state());
}

export var api = apiClient().call;

// Run fn with the button disabled; report a failure in the message area.
export function busy(button, fn) { return busyWith(button, fn, say); }

// A destructive button asks for a second tap within a few seconds.
export function confirmTap(button, prompt, fn) {
  if (button.getAttribute('data-armed') === '1') {
    button.removeAttribute('data-armed');
    button.textContent = button.getAttribute('data-label');
    clearTimeout(button._disarm);
    fn();
    return;
  }
  if (!button.getAttribute('data-label')) button.setAttribute('data-label', button.textContent);
  button.setAttribute('data-armed', '1');
  button.textContent = prompt;
  button._disarm = setTimeout(function () {
    button.removeAttribute('data-armed');
    button.textContent = button.getAttribute('data-label');
  }, 5000);
}

export function fail(text) {
  setPhase('error');
  status('');
  say(text);
}

export function platform() {
  var ua = navigator.userAgent || '';
  if (/iPhone|iPad|iPod/.test(ua) || (/Macintosh/.test(ua) && navigator.maxTouchPoints > 1)) return 'ios';
  if (/Android/.test(ua)) return 'android';
  return 'desktop';
}

// ------------------------------------------------------------------------------------------
// Saved session (so a reload of the page can come back: the link's code is spent)

export function save() {
  try {
    sessionStorage.setItem(STORE_KEY, JSON.stringify({
      page: PROVIDER ? 'provider' : 'join', code: S.code, token: S.token, wsPath: S.wsPath,
      resumeToken: S.resumeToken, consultId: S.consultId, invites: S.invites
    }));
  } catch (e) { /* private mode */ }
}

export function loadSaved() {
  try {
    var s = JSON.parse(sessionStorage.getItem(STORE_KEY) || 'null');
    return s && s.page === (PROVIDER ? 'provider' : 'join') ? s : null;
  } catch (e) { return null; }
}

export function forget() { try { sessionStorage.removeItem(STORE_KEY); } catch (e) { /* ignore */ } }

// ------------------------------------------------------------------------------------------
// Our own tracks, and messages that only read the state

export function audioTrack() { return S.local ? S.local.getAudioTracks()[0] || null : null; }
export function videoTrack() { return S.local ? S.local.getVideoTracks()[0] || null : null; }

export function wsOpen() { return !!S.ws && S.ws.readyState === 1; }

export function send(msg) {
  if (!wsOpen()) return false;
  try { S.ws.send(JSON.stringify(msg)); return true; } catch (e) { return false; }
}

export function sendMediaState() {
  if (!S.admitted) return;
  send({ type: 'media_state', audio: !!audioTrack() && !S.muted, video: !!videoTrack() && !S.cameraOff && !S.audioOnly });
}

export function sendPreference() {
  if (!S.admitted || !S.mediaReady) return;
  send({ type: 'layer_preference', preference: S.audioOnly ? 'audio_only' : (S.lowData ? 'low_data' : 'normal') });
}
