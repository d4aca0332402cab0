/* The video consult pages' client (web/consult-join.html, web/consult-provider.html): join-link
 * exchange, camera and microphone check, the signaling protocol of docs/signaling.md (v1), the
 * WebRTC session with the SFU, and reconnect. An ES module in plain ES2017 for older phones and
 * tablets: no build step, no optional chaining or object spread.
 *
 * Tests use window.consult: { pc, ws, state, participant, remote, restartIce(), ... }.
 */
import { apiClient } from '/api.js';
import { $, messenger, busy as busyWith } from '/page.js';

var PROVIDER = document.body.getAttribute('data-page') === 'provider';
var STORE_KEY = 'clinic.consult';
var LAYER_NAMES = ['low', 'medium', 'high'];
var ROLE_NAMES = {
  provider: 'Provider', covering_provider: 'Covering provider', patient: 'Patient',
  caregiver: 'Caregiver', interpreter: 'Interpreter'
};
// Providers publish three simulcast layers; the SFU forwards one per viewer.
var SIMULCAST = [
  { rid: 'l', scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: 'm', scaleResolutionDownBy: 2, maxBitrate: 400000 },
  { rid: 'h', maxBitrate: 700000 }
];
var noop = function () {};

var S = {
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

var say = messenger('message');

function status(text) { $('status').textContent = text || ''; }

function show(id, on) { var el = $(id); if (el) el.hidden = !on; }

function setPhase(p) {
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

function state() {
  if (!S.finished && (S.wsDown || S.iceDown) && (S.phase === 'in-call' || S.phase === 'waiting' || S.phase === 'connecting')) return 'reconnecting';
  return S.phase;
}

function updateBanner() {
  var on = state() === 'reconnecting';
  $('reconnecting').hidden = !on;
  document.body.setAttribute('data-state', state());
}

var api = apiClient().call;

// Run fn with the button disabled; report a failure in the message area.
function busy(button, fn) { return busyWith(button, fn, say); }

// A destructive button asks for a second tap within a few seconds.
function confirmTap(button, prompt, fn) {
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

function fail(text) {
  setPhase('error');
  status('');
  say(text);
}

function platform() {
  var ua = navigator.userAgent || '';
  if (/iPhone|iPad|iPod/.test(ua) || (/Macintosh/.test(ua) && navigator.maxTouchPoints > 1)) return 'ios';
  if (/Android/.test(ua)) return 'android';
  return 'desktop';
}

// ------------------------------------------------------------------------------------------
// Saved session (so a reload of the page can come back: the link's code is spent)

function save() {
  try {
    sessionStorage.setItem(STORE_KEY, JSON.stringify({
      page: PROVIDER ? 'provider' : 'join', code: S.code, token: S.token, wsPath: S.wsPath,
      resumeToken: S.resumeToken, consultId: S.consultId, invites: S.invites
    }));
  } catch (e) { /* private mode */ }
}

function loadSaved() {
  try {
    var s = JSON.parse(sessionStorage.getItem(STORE_KEY) || 'null');
    return s && s.page === (PROVIDER ? 'provider' : 'join') ? s : null;
  } catch (e) { return null; }
}

function forget() { try { sessionStorage.removeItem(STORE_KEY); } catch (e) { /* ignore */ } }

// ------------------------------------------------------------------------------------------
// Entry

function readCode() {
  var h = (location.hash || '').replace(/^#/, '');
  if (!h) return null;
  try { h = decodeURIComponent(h); } catch (e) { /* keep raw */ }
  h = h.trim();
  // The code is spent once exchanged; keep it out of the address bar and history.
  try { history.replaceState(null, '', location.pathname + location.search); } catch (e) { /* ignore */ }
  return h || null;
}

function linkProblem(e) {
  if (e.status === 410 && e.code === 'link_used') return 'This link has already been used. Each link works only once. Please ask the practice to send you a new link.';
  if (e.status === 410 && e.code === 'link_expired') return 'This link has expired. Please ask the practice to send you a new link.';
  if (e.status === 410 && e.code === 'consult_ended') return 'This visit has already ended.';
  if (e.status === 401) return 'This link is not valid. Make sure you opened the whole link from your message, or ask the practice for a new one.';
  return e.message || String(e);
}

async function boot() {
  expose();
  wireControls();
  if (!window.RTCPeerConnection || !window.WebSocket) {
    return fail('This browser cannot make video calls. Please use an up-to-date Safari, Chrome, Firefox, Edge or Samsung Internet.');
  }
  collectHints();
  var code = readCode();
  var saved = loadSaved();
  if (code) return start(code);
  if (saved && saved.token) return start(saved.code);
  if (PROVIDER) return providerSetup();
  fail('This page needs the link from your invitation. Please open the link exactly as you received it.');
}

async function start(code) {
  S.code = code;
  setPhase('loading');
  status('Checking your link…');
  say('');
  var saved = loadSaved();
  if (saved && saved.code === code && saved.token) {
    // A reload: the code is spent, but the join token (and resume token) still work.
    S.token = saved.token; S.wsPath = saved.wsPath || S.wsPath;
    S.resumeToken = saved.resumeToken || null; S.consultId = saved.consultId || null;
    S.invites = saved.invites || [];
    if (PROVIDER) renderInvites();
  } else {
    var r;
    try { r = await api('POST', '/api/v1/consults/join', { code: code }); }
    catch (e) { status(''); return fail(linkProblem(e)); }
    S.token = r.token; S.wsPath = r.ws_path || S.wsPath; S.consultId = S.consultId || r.consult_id; S.role = r.role;
    S.resumeToken = null;
    save();
  }
  await precheck('full');
}

// ------------------------------------------------------------------------------------------
// Camera and microphone check

function videoConstraints() {
  // Providers publish simulcast (their top layer is the camera's size); patients on phones
  // send one modest stream.
  return PROVIDER
    ? { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30, max: 30 } }
    : { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24, max: 30 }, facingMode: 'user' };
}

var AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

async function precheck(kind) {
  setPhase('checking-media');
  show('media-help', false);
  status(kind === 'audio' ? 'Checking your microphone…' : 'Checking your camera and microphone…');
  if (kind === 'none') { useLocal(new MediaStream()); return connect(); }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return mediaHelp({ name: window.isSecureContext === false ? 'Insecure' : 'Unsupported' }, kind);
  }
  var stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: AUDIO, video: kind === 'audio' ? false : videoConstraints() });
  } catch (e) {
    return mediaHelp(e, kind);
  }
  useLocal(stream);
  connect();
}

function mediaHelp(e, kind) {
  setPhase('media-help');
  status('');
  var name = (e && e.name) || '';
  var title, text;
  if (name === 'NotAllowedError' || name === 'PermissionDeniedError' || name === 'SecurityError') {
    title = kind === 'audio' ? 'Your browser is blocking the microphone' : 'Your browser is blocking the camera or microphone';
    var p = platform();
    if (p === 'ios') text = 'On iPhone or iPad: tap “aA” (or the camera icon) in the address bar, choose Website Settings, and set Camera and Microphone to Allow. You can also open Settings › Safari › Camera / Microphone. Then tap Try again.';
    else if (p === 'android') text = 'Tap the lock icon next to the web address, open Permissions (or Site settings), and allow Camera and Microphone. Then tap Try again.';
    else text = 'Click the camera or lock icon in the address bar, allow the camera and microphone for this site, then click Try again.';
  } else if (name === 'NotFoundError' || name === 'DevicesNotFoundError' || name === 'OverconstrainedError') {
    title = kind === 'audio' ? 'No microphone was found' : 'No camera or microphone was found';
    text = 'Check that your camera and microphone are connected and turned on, then try again. You can also continue without video.';
  } else if (name === 'NotReadableError' || name === 'TrackStartError' || name === 'AbortError') {
    title = 'Your camera or microphone is busy';
    text = 'Another app (for example another video call) may be using it. Close that app, then try again.';
  } else if (name === 'Insecure') {
    title = 'The camera cannot be used on this page';
    text = 'Open the link exactly as you received it (it must start with https://).';
  } else {
    title = 'The camera and microphone could not be started';
    text = 'This browser may not support them. You can still join and listen, or try an up-to-date browser.';
  }
  $('media-help-title').textContent = title;
  $('media-help-text').textContent = text;
  // Offer the next step down: audio only, then no devices at all.
  show('continue-audio', kind === 'full');
  show('continue-none', kind !== 'full');
  $('retry-media').setAttribute('data-kind', kind);
  show('media-help', true);
  try { $('retry-media').focus(); } catch (x) { /* ignore */ }
}

function audioTrack() { return S.local ? S.local.getAudioTracks()[0] || null : null; }
function videoTrack() { return S.local ? S.local.getVideoTracks()[0] || null : null; }

function useLocal(stream) {
  S.local = stream;
  var a = audioTrack();
  if (a) a.enabled = !S.muted;
  var v = videoTrack();
  if (v) v.enabled = !S.cameraOff;
  if (!v) S.cameraOff = true;
  $('local').srcObject = stream;
  playVideo($('local'));
  updateSelf();
  updateButtons();
}

function updateSelf() {
  var v = videoTrack();
  var off = !v || S.cameraOff || S.audioOnly;
  var note = $('local-off');
  note.hidden = !off;
  note.textContent = S.audioOnly ? 'Audio only' : (!v ? 'No camera' : 'Camera off');
  var a = audioTrack();
  $('local-muted').hidden = !(S.muted || !a);
  $('local-muted').textContent = a ? 'Muted' : 'No microphone';
}

// ------------------------------------------------------------------------------------------
// Signaling

function collectHints() {
  var h = {};
  var d = navigator.userAgentData;
  if (d) {
    try {
      h.brands = (d.brands || []).map(function (b) { return b.brand + ' ' + b.version; }).join(', ');
      h.mobile = String(!!d.mobile);
      h.platform = String(d.platform || '');
    } catch (e) { /* ignore */ }
    if (d.getHighEntropyValues) {
      d.getHighEntropyValues(['model', 'platformVersion', 'fullVersionList']).then(function (v) {
        if (v.model) h.model = String(v.model).slice(0, 200);
        if (v.platformVersion) h.platform_version = String(v.platformVersion).slice(0, 200);
        if (v.fullVersionList) h.full_versions = v.fullVersionList.map(function (b) { return b.brand + ' ' + b.version; }).join(', ').slice(0, 200);
      }).catch(noop);
    }
  }
  S.hints = h;
}

function joinMsg() {
  var hints = {};
  Object.keys(S.hints).slice(0, 16).forEach(function (k) { hints[k] = String(S.hints[k]).slice(0, 200); });
  return { type: 'join', v: 1, token: S.token, device: { user_agent: String(navigator.userAgent || '').slice(0, 512), client_hints: hints } };
}

function wsOpen() { return !!S.ws && S.ws.readyState === 1; }

function send(msg) {
  if (!wsOpen()) return false;
  try { S.ws.send(JSON.stringify(msg)); return true; } catch (e) { return false; }
}

function connect() {
  setPhase('connecting');
  status('Connecting…');
  if (S.resumeToken) openSocket({ type: 'resume', v: 1, resume_token: S.resumeToken });
  else openSocket(joinMsg());
}

function openSocket(first) {
  clearTimeout(S.retryTimer);
  var url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + S.wsPath;
  var ws;
  try { ws = new WebSocket(url); } catch (e) { S.ws = null; return socketLost(); }
  S.ws = ws;
  S.sentFirst = first.type;
  ws.onopen = function () {
    if (S.ws !== ws) return;
    S.lastSeen = Date.now();
    ws.send(JSON.stringify(first));
  };
  ws.onmessage = function (ev) {
    if (S.ws !== ws) return;
    S.lastSeen = Date.now();
    var m;
    try { m = JSON.parse(ev.data); } catch (e) { return; }
    try { onMessage(m); } catch (e) { console.error('consult: message', m && m.type, e); }
  };
  ws.onclose = function () {
    if (S.ws !== ws) return;
    S.ws = null;
    socketLost();
  };
  ws.onerror = noop; // close follows
}

function onMessage(m) {
  switch (m.type) {
    case 'welcome': return onWelcome(m);
    case 'admitted': S.admitted = true; return enterCall();
    case 'roster': S.roster = m.participants || []; return renderRoster();
    case 'waiting_room': S.waiting = m.waiting || []; return renderWaiting();
    case 'offer': return onServerOffer(m.sdp);
    case 'answer': return onAnswer(m.sdp);
    case 'ice':
      if (S.pc && m.candidate) S.pc.addIceCandidate({ candidate: m.candidate, sdpMLineIndex: 0 }).catch(noop);
      return;
    case 'stats': return onStats(m.participants || []);
    case 'ended': return onEnded(m.reason);
    case 'error': return onError(m);
    default: return; // pong and anything newer
  }
}

function onWelcome(m) {
  var resumed = S.sentFirst === 'resume';
  S.participant = m.participant;
  S.role = m.role;
  S.resumeToken = m.resume_token;
  S.graceMs = (m.grace_secs || 30) * 1000;
  S.admitted = !!m.admitted;
  S.wsDown = false; S.lostAt = 0; S.attempt = 0;
  show('view-lost', false);
  save();
  startHeartbeat();
  if (!S.admitted) {
    setPhase('waiting');
    status('Waiting for the provider');
    return;
  }
  if (S.pc && resumed) {
    // Back within the grace period: same media session, new ICE path.
    setPhase('in-call');
    status('Reconnected');
    setTimeout(function () { if (S.phase === 'in-call' && !S.wsDown && !S.iceDown) status('You are in the visit'); }, 3000);
    sendMediaState();
    restartIce().catch(function (e) { console.warn('consult: ICE restart', e); });
    return;
  }
  if (S.pc) teardownMedia(); // joined afresh: the SFU starts a new media session
  enterCall();
}

function enterCall() {
  if (S.finished) return;
  setPhase('in-call');
  status('You are in the visit');
  say('');
  startMedia().catch(function (e) {
    console.error('consult: media', e);
    say('The video connection could not be started: ' + (e.message || e) + '. Try leaving and opening the link again.');
  });
}

function socketLost() {
  if (S.finished) return;
  failAnswer(new Error('the connection to the server was lost'));
  clearInterval(S.heartbeat);
  S.wsDown = true;
  if (!S.lostAt) S.lostAt = Date.now();
  updateBanner();
  scheduleRetry();
}

function scheduleRetry() {
  clearTimeout(S.retryTimer);
  var left = S.lostAt + S.graceMs - Date.now();
  if (S.resumeToken && left <= 0) return giveUp();
  if (!S.resumeToken && S.attempt >= 8) return giveUp();
  var delay = Math.min(8000, 500 * Math.pow(2, S.attempt)) * (0.8 + Math.random() * 0.4);
  S.attempt++;
  // Make the last attempt just before the grace period ends.
  if (S.resumeToken) delay = Math.max(250, Math.min(delay, left - 1000));
  S.retryTimer = setTimeout(reconnectNow, delay);
}

function reconnectNow() {
  clearTimeout(S.retryTimer);
  if (S.finished || S.ws) return;
  status('Reconnecting…');
  if (S.resumeToken) openSocket({ type: 'resume', v: 1, resume_token: S.resumeToken });
  else openSocket(joinMsg());
}

function giveUp() {
  setPhase('lost');
  status('');
  show('view-lost', true);
}

function startHeartbeat() {
  clearInterval(S.heartbeat);
  S.heartbeat = setInterval(function () {
    if (!wsOpen()) return;
    if (Date.now() - S.lastSeen > 15000) {
      // No answer to our pings: treat the connection as dead.
      var ws = S.ws;
      S.ws = null;
      try { ws.close(); } catch (e) { /* ignore */ }
      socketLost();
      return;
    }
    send({ type: 'ping', id: ++S.pingId });
  }, 5000);
}

function onEnded(reason) {
  var text = {
    ended_by_provider: PROVIDER ? 'The visit has ended for everyone.' : 'The provider has ended the visit. You can close this page.',
    idle: 'The visit ended because nobody was connected.',
    cancelled: 'This visit was cancelled by the practice. You can close this page.',
    removed: 'You were removed from the visit.',
    left: 'You left the visit. You can close this page.'
  }[reason] || 'The visit has ended.';
  finish(text, 'info');
}

var FATAL = {
  token_malformed: 'This link is not valid. Please ask the practice for a new link.',
  token_invalid: 'This link is not valid. Please ask the practice for a new link.',
  token_expired: 'This link has timed out. Please ask the practice for a new link.',
  token_not_yet_valid: 'Your device clock seems to be wrong. Check the date and time, then open the link again.',
  token_spent: 'You have left this visit, so this link no longer works. Please ask the practice for a new link.',
  wrong_consult: 'This link is for a different visit.',
  consult_full: 'This visit already has the most people allowed.',
  consult_unavailable: 'This visit has ended.',
  consult_ended: 'This visit has ended.',
  replaced: 'You joined this visit from another tab or device, so this page was disconnected.'
};

function onError(m) {
  if (!m.fatal) {
    console.warn('consult: server refused a message:', m.code, m.message);
    if (S.awaitingAnswer && (m.code === 'invalid_sdp' || m.code === 'media_unavailable' || m.code === 'not_admitted')) {
      failAnswer(new Error(m.message || m.code));
    }
    return;
  }
  if (m.code === 'resume_invalid' && S.token) {
    // The server no longer knows our session (grace over, or it restarted): join again.
    S.resumeToken = null;
    S.attempt = 0;
    save();
    return; // the server closes; socketLost reconnects with join
  }
  // Reconnect: after a drop for not keeping up (resume within the grace period), or a server
  // restart (the resume is refused, then the page joins again with its token).
  if (m.code === 'join_timeout' || m.code === 'rate_limited' ||
      m.code === 'slow_consumer' || m.code === 'server_going_away') return;
  finish(FATAL[m.code] || m.message || 'The connection was refused.');
}

function finish(text, kind) {
  if (S.finished) return;
  S.finished = true;
  clearTimeout(S.retryTimer); clearTimeout(S.iceTimer);
  clearInterval(S.heartbeat); clearInterval(S.statsTimer);
  failAnswer(new Error('the visit is over'));
  var ws = S.ws;
  S.ws = null;
  if (ws) { try { ws.close(); } catch (e) { /* ignore */ } }
  teardownMedia();
  if (S.local) S.local.getTracks().forEach(function (t) { t.stop(); });
  $('local').srcObject = null;
  forget();
  S.wsDown = false; S.iceDown = false;
  setPhase('ended');
  show('call', false);
  show('view-lost', false);
  show('invite', false);
  status('');
  say(text, kind);
}

// ------------------------------------------------------------------------------------------
// Media session with the SFU

function enqueue(fn) {
  var p = S.queue.then(fn);
  S.queue = p.catch(function (e) { console.warn('consult: negotiation', e); });
  return p;
}

function failAnswer(err) {
  var w = S.awaitingAnswer;
  if (w) { S.awaitingAnswer = null; clearTimeout(w.timer); w.reject(err); }
}

async function startMedia() {
  if (S.pc || S.finished) return;
  var pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
  S.pc = pc;
  S.mediaReady = false;
  pc.ontrack = onTrack;
  pc.oniceconnectionstatechange = function () { if (S.pc === pc) onIceState(pc); };
  var a = audioTrack();
  var v = S.audioOnly ? null : videoTrack();
  if (a) S.audioSender = PROVIDER ? pc.addTransceiver(a, { direction: 'sendrecv', streams: [S.local] }).sender : pc.addTrack(a, S.local);
  if (v) S.videoSender = addVideo(pc, v);
  if (!a && !v) pc.addTransceiver('audio', { direction: 'recvonly' }); // listen only: still a session
  await negotiate({});
  S.mediaReady = true;
  if (S.lowData && !PROVIDER) lowDataSending(true);
  if (S.lowData || S.audioOnly) sendPreference();
  sendMediaState();
  clearInterval(S.statsTimer);
  S.statsTimer = setInterval(reportStats, 10000);
}

function addVideo(pc, track) {
  if (PROVIDER) return pc.addTransceiver(track, { direction: 'sendrecv', streams: [S.local], sendEncodings: SIMULCAST }).sender;
  return pc.addTrack(track, S.local);
}

function teardownMedia() {
  failAnswer(new Error('media session closed'));
  clearInterval(S.statsTimer);
  clearTimeout(S.iceTimer);
  if (S.pc) { try { S.pc.close(); } catch (e) { /* ignore */ } }
  S.pc = null; S.audioSender = null; S.videoSender = null; S.mediaReady = false; S.iceDown = false;
  Object.keys(S.tiles).forEach(removeTile);
  S.queue = Promise.resolve();
  updateBanner();
}

// Our offer (first session, renegotiation, ICE restart); resolves once the SFU's answer is applied.
function negotiate(opts) {
  return enqueue(async function () {
    var pc = S.pc;
    if (!pc || pc.signalingState === 'closed') return;
    if (!wsOpen()) throw new Error('not connected');
    var offer = await pc.createOffer(opts);
    await pc.setLocalDescription(offer);
    S.offerEpoch++;
    var answered = new Promise(function (resolve, reject) {
      S.awaitingAnswer = {
        resolve: resolve, reject: reject,
        timer: setTimeout(function () { failAnswer(new Error('the server did not answer')); }, 15000)
      };
    });
    send({ type: 'offer', sdp: pc.localDescription.sdp });
    try {
      await answered;
    } catch (e) {
      if (pc.signalingState === 'have-local-offer') await pc.setLocalDescription({ type: 'rollback' }).catch(noop);
      throw e;
    }
  });
}

function onAnswer(sdp) {
  var w = S.awaitingAnswer;
  var pc = S.pc;
  if (!w || !pc) return;
  // Settled at once: an SFU offer right behind this answer is a new one, not a crossing one
  // (it is queued behind the negotiation that applies this answer).
  S.awaitingAnswer = null;
  clearTimeout(w.timer);
  pc.setRemoteDescription({ type: 'answer', sdp: sdp }).then(w.resolve, w.reject);
}

// The SFU offers other participants' tracks. If our own offer is in flight, the SFU drops its
// offer when ours arrives (ours wins) and offers again later, so a crossing offer is ignored.
function onServerOffer(sdp) {
  if (S.awaitingAnswer) return;
  var epoch = S.offerEpoch;
  enqueue(async function () {
    var pc = S.pc;
    if (!pc || epoch !== S.offerEpoch || pc.signalingState !== 'stable') return;
    await pc.setRemoteDescription({ type: 'offer', sdp: sdp });
    var answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    send({ type: 'answer', sdp: pc.localDescription.sdp });
  });
}

function restartIce() {
  if (!S.pc) return Promise.reject(new Error('no media session'));
  return negotiate({ iceRestart: true });
}

function onIceState(pc) {
  var st = pc.iceConnectionState;
  clearTimeout(S.iceTimer);
  if (st === 'connected' || st === 'completed') {
    S.iceDown = false;
    if (S.phase === 'in-call' && !S.wsDown) status('You are in the visit');
  } else if (st === 'disconnected' || st === 'failed') {
    S.iceDown = true;
    // 'disconnected' often heals by itself; restart if it has not after a moment.
    S.iceTimer = setTimeout(function retry() {
      if (S.pc !== pc || !S.iceDown || S.finished) return;
      if (wsOpen()) restartIce().catch(noop);
      S.iceTimer = setTimeout(retry, 8000);
    }, st === 'failed' ? 0 : 2000);
  }
  updateBanner();
}

// ------------------------------------------------------------------------------------------
// Remote participants: one tile per participant (the track's msid stream id is their id)

function ensureTile(pid) {
  var t = S.tiles[pid];
  if (t) return t;
  var el = document.createElement('figure');
  el.className = 'tile';
  el.id = 'tile-' + pid;
  el.setAttribute('data-participant', pid);
  var video = document.createElement('video');
  video.autoplay = true;
  video.setAttribute('autoplay', '');
  video.setAttribute('playsinline', '');
  video.playsInline = true;
  var off = document.createElement('div');
  off.className = 'off';
  var cap = document.createElement('figcaption');
  el.appendChild(video);
  el.appendChild(off);
  el.appendChild(cap);
  $('remote').appendChild(el);
  t = S.tiles[pid] = { el: el, video: video, off: off, cap: cap, stream: null };
  $('remote').classList.toggle('many', Object.keys(S.tiles).length > 1);
  show('alone', false);
  updateTile(pid);
  return t;
}

function removeTile(pid) {
  var t = S.tiles[pid];
  if (!t) return;
  t.video.srcObject = null;
  if (t.el.parentNode) t.el.parentNode.removeChild(t.el);
  delete S.tiles[pid];
  $('remote').classList.toggle('many', Object.keys(S.tiles).length > 1);
  show('alone', S.phase === 'in-call' && !Object.keys(S.tiles).length);
}

function onTrack(e) {
  var stream = e.streams && e.streams[0];
  var pid = stream ? stream.id : ('track-' + e.track.id);
  var t = ensureTile(pid);
  // The tile keeps its own stream with the newest track of each kind: when a participant comes
  // back with a new media session (a reload), the SFU adds new tracks and stops the old ones,
  // and a <video> plays only the first video track of its stream.
  var replaced = false;
  if (!t.stream) t.stream = new MediaStream();
  t.stream.getTracks().forEach(function (old) {
    if (old.kind === e.track.kind && old !== e.track) { t.stream.removeTrack(old); replaced = true; }
  });
  if (t.stream.getTracks().indexOf(e.track) < 0) t.stream.addTrack(e.track);
  // Re-assigning makes every browser pick up the changed set of tracks.
  if (replaced || t.video.srcObject !== t.stream) { t.video.srcObject = null; t.video.srcObject = t.stream; }
  var refresh = function () { updateTile(pid); };
  e.track.onmute = refresh;
  e.track.onunmute = refresh;
  e.track.onended = refresh;
  playVideo(t.video);
  updateTile(pid);
}

function playVideo(v) {
  var p = v.play && v.play();
  if (p && p.catch) {
    p.catch(function (err) {
      if (err && err.name === 'NotAllowedError' && v.id !== 'local') {
        // Autoplay with sound was blocked: play muted and offer a button for sound.
        v.muted = true;
        v.play().catch(noop);
        show('sound', true);
      }
    });
  }
}

function who(pid) {
  for (var i = 0; i < S.roster.length; i++) if (S.roster[i].id === pid) return S.roster[i];
  return null;
}

function updateTile(pid) {
  var t = S.tiles[pid];
  if (!t) return;
  var p = who(pid);
  var vt = t.stream ? t.stream.getVideoTracks()[0] : null;
  var name = p ? p.display + (ROLE_NAMES[p.role] ? ' · ' + ROLE_NAMES[p.role] : '') : 'Connecting…';
  var note = '';
  if (p && p.state === 'reconnecting') note = 'Reconnecting…';
  else if (S.audioOnly) note = 'Audio only';
  else if (p && !p.video) note = 'Camera off';
  else if (!vt || vt.muted || vt.readyState === 'ended') note = p ? 'Video paused' : '';
  t.cap.textContent = name + (p && !p.audio ? ' · muted' : '');
  t.off.textContent = note;
  t.off.hidden = !note;
  t.el.classList.toggle('reconnecting', !!(p && p.state === 'reconnecting'));
}

// ------------------------------------------------------------------------------------------
// Roster, waiting room, stats

function renderRoster() {
  var ids = {};
  S.roster.forEach(function (p) { ids[p.id] = true; });
  Object.keys(S.tiles).forEach(function (pid) { if (!ids[pid] && pid.indexOf('track-') !== 0) removeTile(pid); });
  Object.keys(S.tiles).forEach(updateTile);
  var list = $('roster');
  list.textContent = '';
  S.roster.forEach(function (p) {
    var li = document.createElement('li');
    li.id = 'person-' + p.id;
    li.className = p.state === 'reconnecting' ? 'reconnecting' : '';
    var name = document.createElement('strong');
    name.textContent = p.display + (p.id === S.participant ? ' (you)' : '');
    li.appendChild(name);
    var info = document.createElement('span');
    var bits = [ROLE_NAMES[p.role] || p.role];
    if (p.state === 'reconnecting') bits.push('reconnecting…');
    if (!p.audio) bits.push('muted');
    if (!p.video) bits.push('camera off');
    info.textContent = ' — ' + bits.join(', ');
    li.appendChild(info);
    if (PROVIDER) {
      var st = document.createElement('div');
      st.className = 'stats';
      st.id = 'stats-' + p.id;
      li.appendChild(st);
      if (p.id !== S.participant) li.appendChild(removeButton(p));
    }
    list.appendChild(li);
  });
  if (PROVIDER) Object.keys(S.stats).forEach(function (pid) { renderStats(pid); });
}

function removeButton(p) {
  var b = document.createElement('button');
  b.type = 'button';
  b.className = 'small danger';
  b.id = 'remove-' + p.id;
  b.textContent = 'Remove';
  b.setAttribute('aria-label', 'Remove ' + p.display);
  b.addEventListener('click', function () {
    confirmTap(b, 'Tap again to remove', function () { b.disabled = true; send({ type: 'remove', participant: p.id }); });
  });
  return b;
}

function renderWaiting() {
  if (!PROVIDER) return;
  var list = $('waiting-list');
  list.textContent = '';
  if (!S.waiting.length) {
    var none = document.createElement('li');
    none.className = 'none';
    none.textContent = 'Nobody is waiting.';
    list.appendChild(none);
  }
  S.waiting.forEach(function (p) {
    var li = document.createElement('li');
    var name = document.createElement('strong');
    name.textContent = p.display;
    li.appendChild(name);
    li.appendChild(document.createTextNode(' — ' + (ROLE_NAMES[p.role] || p.role) + ', waiting'));
    var row = document.createElement('div');
    row.className = 'row';
    var admit = document.createElement('button');
    admit.type = 'button';
    admit.id = 'admit-' + p.id;
    admit.textContent = 'Admit';
    admit.setAttribute('aria-label', 'Admit ' + p.display);
    admit.addEventListener('click', function () { admit.disabled = true; send({ type: 'admit', participant: p.id }); });
    var remove = document.createElement('button');
    remove.type = 'button';
    remove.id = 'remove-' + p.id;
    remove.className = 'secondary';
    remove.textContent = 'Remove';
    remove.setAttribute('aria-label', 'Remove ' + p.display);
    remove.addEventListener('click', function () { remove.disabled = true; send({ type: 'remove', participant: p.id }); });
    row.appendChild(admit);
    row.appendChild(remove);
    li.appendChild(row);
    list.appendChild(li);
  });
  $('waiting-count').textContent = S.waiting.length ? '(' + S.waiting.length + ')' : '';
  document.title = (S.waiting.length ? '(' + S.waiting.length + ' waiting) ' : '') + 'Clinic – Video visit';
}

function onStats(list) {
  list.forEach(function (s) {
    if (!s || !s.participant) return;
    S.stats[s.participant] = s;
    renderStats(s.participant);
  });
}

function kbps(bps) { return Math.round((bps || 0) / 1000) + ' kbps'; }

function renderStats(pid) {
  var el = $('stats-' + pid);
  var s = S.stats[pid];
  if (!el || !s) return;
  // The layer is the simulcast layer of the provider's video this participant receives.
  var layer = pid === S.participant ? '' : ' · ' + (s.layer === null || s.layer === undefined ? 'no video'
    : (LAYER_NAMES[s.layer] || ('layer ' + s.layer)) + ' video');
  el.textContent = (s.connected ? 'Connected' : 'Not connected') + ' · sending ' + kbps(s.bitrate_in_bps) +
    ' · receiving ' + kbps(s.bitrate_out_bps) + layer + (s.transport === 'tcp' ? ' · over TCP (UDP blocked)' : '');
  el.className = 'stats' + (s.connected ? '' : ' bad');
}

// A small summary of this page's own numbers for the server (bounded map of numbers).
async function reportStats() {
  var pc = S.pc;
  if (!pc || !wsOpen()) return;
  var r = {};
  try {
    var stats = await pc.getStats();
    var fps = 0, lost = 0, recv = 0, decoded = 0;
    stats.forEach(function (s) {
      if (s.type === 'inbound-rtp') {
        lost += s.packetsLost || 0; recv += s.packetsReceived || 0;
        if (s.kind === 'video') { decoded += s.framesDecoded || 0; fps = Math.max(fps, s.framesPerSecond || 0); }
      } else if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
        if (typeof s.currentRoundTripTime === 'number') r.rtt_ms = Math.round(s.currentRoundTripTime * 1000);
        if (typeof s.availableOutgoingBitrate === 'number') r.available_out_bps = Math.round(s.availableOutgoingBitrate);
      }
    });
    r.packets_received = recv; r.packets_lost = lost; r.frames_decoded = decoded; r.video_fps = fps;
  } catch (e) { return; }
  send({ type: 'stats', report: r });
}

// ------------------------------------------------------------------------------------------
// Controls

function sendMediaState() {
  if (!S.admitted) return;
  send({ type: 'media_state', audio: !!audioTrack() && !S.muted, video: !!videoTrack() && !S.cameraOff && !S.audioOnly });
}

function sendPreference() {
  if (!S.admitted || !S.mediaReady) return;
  send({ type: 'layer_preference', preference: S.audioOnly ? 'audio_only' : (S.lowData ? 'low_data' : 'normal') });
}

function updateButtons() {
  var a = audioTrack();
  var v = videoTrack();
  setToggle('mute', S.muted, S.muted ? 'Unmute' : 'Mute');
  $('mute').disabled = !a;
  setToggle('camera', S.cameraOff || !v, (S.cameraOff || !v) ? 'Turn camera on' : 'Turn camera off');
  $('camera').disabled = S.audioOnly;
  setToggle('low-data', S.lowData, S.lowData ? 'Low data: on' : 'Low data: off');
  setToggle('audio-only', S.audioOnly, S.audioOnly ? 'Turn video back on' : 'Audio only');
}

function setToggle(id, pressed, label) {
  var b = $(id);
  b.setAttribute('aria-pressed', pressed ? 'true' : 'false');
  b.textContent = label;
}

async function getCamera() {
  var s = await navigator.mediaDevices.getUserMedia({ video: videoConstraints() });
  return s.getVideoTracks()[0];
}

// Put a (new) camera track on the media session.
async function attachVideo(track) {
  var old = videoTrack();
  if (old && old !== track) { S.local.removeTrack(old); old.stop(); }
  if (track && S.local.getVideoTracks().indexOf(track) < 0) S.local.addTrack(track);
  $('local').srcObject = S.local;
  playVideo($('local'));
  if (!S.pc) return;
  if (S.videoSender) await S.videoSender.replaceTrack(track);
  else if (track) { S.videoSender = addVideo(S.pc, track); await negotiate({}); }
}

async function toggleCamera() {
  var v = videoTrack();
  if (!v) {
    // Joined without a camera (or it was released): ask for it now.
    var t;
    try { t = await getCamera(); }
    catch (e) { say('The camera could not be started (' + (e.name || e) + '). Check the browser’s camera permission.'); return; }
    S.cameraOff = false;
    await attachVideo(t);
  } else {
    S.cameraOff = !S.cameraOff;
    v.enabled = !S.cameraOff;
  }
  updateSelf(); updateButtons(); sendMediaState();
}

async function toggleAudioOnly() {
  S.audioOnly = !S.audioOnly;
  sendPreference();
  if (S.audioOnly) {
    // Stop our own camera too: no upload, no battery.
    var v = videoTrack();
    if (v) { S.local.removeTrack(v); v.stop(); }
    if (S.videoSender) await S.videoSender.replaceTrack(null).catch(noop);
  } else if (!S.cameraOff || videoTrack() === null) {
    try {
      var t = await getCamera();
      t.enabled = !S.cameraOff;
      await attachVideo(t);
      if (S.lowData && !PROVIDER) lowDataSending(true);
    } catch (e) {
      say('The camera could not be started again (' + (e.name || e) + '). You can keep talking with audio.');
    }
  }
  Object.keys(S.tiles).forEach(updateTile);
  updateSelf(); updateButtons(); sendMediaState();
}

// Low data also shrinks what a patient sends (providers' simulcast already has a low layer).
function lowDataSending(on) {
  var s = S.videoSender;
  if (!s || !s.getParameters || !s.setParameters) return;
  try {
    var p = s.getParameters();
    if (!p.encodings || !p.encodings.length) p.encodings = [{}];
    if (on) { p.encodings[0].maxBitrate = 150000; p.encodings[0].scaleResolutionDownBy = 2; }
    else { delete p.encodings[0].maxBitrate; p.encodings[0].scaleResolutionDownBy = 1; }
    s.setParameters(p).catch(noop);
  } catch (e) { /* older browsers */ }
}

function wireControls() {
  $('retry-media').addEventListener('click', function () { precheck($('retry-media').getAttribute('data-kind') || 'full'); });
  $('continue-audio').addEventListener('click', function () { precheck('audio'); });
  $('continue-none').addEventListener('click', function () { precheck('none'); });
  $('reconnect-now').addEventListener('click', function () {
    show('view-lost', false);
    S.lostAt = Date.now(); S.attempt = 0;
    setPhase(S.admitted ? 'in-call' : 'connecting');
    S.wsDown = true; updateBanner();
    reconnectNow();
  });
  $('sound').addEventListener('click', function () {
    Object.keys(S.tiles).forEach(function (pid) { var v = S.tiles[pid].video; v.muted = false; v.play().catch(noop); });
    show('sound', false);
  });
  $('mute').addEventListener('click', function () {
    var a = audioTrack();
    if (!a) return;
    S.muted = !S.muted;
    a.enabled = !S.muted;
    updateSelf(); updateButtons(); sendMediaState();
  });
  $('camera').addEventListener('click', function () { toggleCamera().catch(function (e) { say(e.message || String(e)); }); });
  $('low-data').addEventListener('click', function () {
    S.lowData = !S.lowData;
    if (!S.audioOnly) sendPreference();
    if (!PROVIDER && S.mediaReady) lowDataSending(S.lowData);
    updateButtons();
  });
  $('audio-only').addEventListener('click', function () {
    var b = $('audio-only');
    busy(b, toggleAudioOnly);
  });
  $('leave').addEventListener('click', function () {
    confirmTap($('leave'), 'Tap again to leave', function () {
      if (!send({ type: 'leave' })) return finish('You left the visit. You can close this page.', 'info');
      // The server answers with `ended` (left); do not wait forever for it.
      setTimeout(function () { finish('You left the visit. You can close this page.', 'info'); }, 3000);
    });
  });
  if (PROVIDER) {
    $('end').addEventListener('click', function () {
      confirmTap($('end'), 'Tap again to end for everyone', function () {
        if (!send({ type: 'end' })) return;
        setTimeout(function () { finish('You ended the visit.', 'info'); }, 3000);
      });
    });
    wireProvider();
  }
  window.addEventListener('online', function () {
    if (S.finished) return;
    if (S.wsDown && !S.ws && S.phase !== 'lost') reconnectNow();
    else if (S.iceDown && wsOpen()) restartIce().catch(noop);
  });
  window.addEventListener('pagehide', function () {
    // Closing the tab is not leaving: the seat stays open for the grace period.
    var ws = S.ws;
    S.ws = null;
    if (ws) { try { ws.close(); } catch (e) { /* ignore */ } }
  });
}

// ------------------------------------------------------------------------------------------
// Provider: start a consult when signed in, invite links

async function providerSetup() {
  setPhase('setup');
  status('Checking your sign-in…');
  var s;
  try { s = await api('GET', '/api/v1/auth/session'); }
  catch (e) {
    status('');
    if (e.status === 401) return showSignin();
    return fail(e.message);
  }
  if (!s || s.stage !== 'full') return showSignin();
  S.me = s;
  var locs;
  try { locs = await api('GET', '/api/v1/locations'); }
  catch (e) { status(''); return fail(e.message); }
  // Consults are started at one's own locations: offer those the session is assigned to.
  var mine = s.locations || [];
  if (mine.length) {
    var own = (locs || []).filter(function (l) { return mine.indexOf(l.id) >= 0; });
    if (own.length) locs = own;
  }
  var sel = $('location');
  sel.textContent = '';
  (locs || []).forEach(function (l) {
    var o = document.createElement('option');
    o.value = l.id;
    o.textContent = l.name;
    sel.appendChild(o);
  });
  status('');
  if (!locs || !locs.length) return fail('You have no practice locations to hold a video visit at.');
  $('start-who').textContent = 'Signed in as ' + s.display_name + '.';
  show('view-start', true);
}

function showSignin() {
  setPhase('signin');
  status('');
  show('view-signin', true);
}

function codeOf(url) { var i = url.indexOf('#'); return i < 0 ? '' : url.slice(i + 1); }

function absolute(url) { return new URL(url, location.origin).href; }

async function createLink(role, name) {
  var r = await api('POST', '/api/v1/consults/' + encodeURIComponent(S.consultId) + '/links', { role: role, display_name: name });
  return { role: role, name: name, url: absolute(r.url), participant: r.participant_id, expires: r.expires_at };
}

function renderInvites() {
  var patient = null;
  var others = [];
  S.invites.forEach(function (i) { if (i.role === 'patient' && !patient) patient = i; else others.push(i); });
  if (patient) {
    $('patient-link').textContent = patient.url;
    $('patient-name-shown').textContent = patient.name;
  }
  var list = $('invite-list');
  list.textContent = '';
  others.forEach(function (i) {
    var li = document.createElement('li');
    var t = document.createElement('div');
    t.textContent = i.name + ' (' + (ROLE_NAMES[i.role] || i.role) + ')';
    var u = document.createElement('div');
    u.className = 'mono uri link-text';
    u.textContent = i.url;
    var b = document.createElement('button');
    b.type = 'button'; b.className = 'secondary small';
    b.textContent = 'Copy link';
    b.addEventListener('click', function () { copy(i.url, b, u); });
    li.appendChild(t); li.appendChild(u); li.appendChild(b);
    list.appendChild(li);
  });
  show('invite', !!patient);
}

async function copy(text, button, source) {
  var label = button.getAttribute('data-label') || button.textContent;
  button.setAttribute('data-label', label);
  var ok = false;
  try {
    if (navigator.clipboard && navigator.clipboard.writeText) { await navigator.clipboard.writeText(text); ok = true; }
  } catch (e) { ok = false; }
  if (!ok && source) {
    try {
      var range = document.createRange();
      range.selectNodeContents(source);
      var sel = window.getSelection();
      sel.removeAllRanges(); sel.addRange(range);
      ok = document.execCommand('copy');
    } catch (e) { ok = false; }
  }
  button.textContent = ok ? 'Copied' : 'Select the link and copy it';
  setTimeout(function () { button.textContent = label; }, 2500);
}

function wireProvider() {
  $('start-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    busy($('start'), async function () {
      var loc = $('location').value;
      var patientName = $('patient-name').value.trim() || 'Patient';
      if (!loc) throw new Error('Choose a location.');
      var c = await api('POST', '/api/v1/consults', { location_id: loc });
      S.consultId = c.id;
      var mine = await createLink('provider', S.me.display_name);
      var patient = await createLink('patient', patientName);
      S.invites = [patient];
      show('view-start', false);
      renderInvites();
      await start(codeOf(mine.url));
    });
  });
  $('copy-link').addEventListener('click', function () { copy($('patient-link').textContent, $('copy-link'), $('patient-link')); });
  if (navigator.share) {
    show('share-link', true);
    $('share-link').addEventListener('click', function () {
      navigator.share({ title: 'Video visit', url: $('patient-link').textContent }).catch(noop);
    });
  }
  $('invite-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    busy($('invite-submit'), async function () {
      if (!S.consultId || !S.me) throw new Error('Sign in to invite more people.');
      var name = $('invite-name').value.trim();
      if (!name) { $('invite-name').focus(); throw new Error('Enter the name the others will see.'); }
      var link = await createLink($('invite-role').value, name);
      S.invites.push(link);
      save();
      $('invite-name').value = '';
      renderInvites();
    });
  });
}

// ------------------------------------------------------------------------------------------
// Test and debugging hooks

function expose() {
  window.consult = {
    get pc() { return S.pc; },
    get ws() { return S.ws; },
    get state() { return state(); },
    get participant() { return S.participant; },
    get role() { return S.role; },
    get admitted() { return S.admitted; },
    get roster() { return S.roster.slice(); },
    get waiting() { return S.waiting.slice(); },
    get stats() { return S.stats; },
    get local() { return S.local; },
    // Remote streams by participant id.
    get remote() {
      var out = {};
      Object.keys(S.tiles).forEach(function (pid) { if (S.tiles[pid].stream) out[pid] = S.tiles[pid].stream; });
      return out;
    },
    restartIce: restartIce
  };
}

boot().catch(function (e) { fail(e.message || String(e)); });
