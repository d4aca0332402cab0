/* Consult signaling (served at /consult/signaling.js): the WebSocket protocol of
 * docs/signaling.md (v1), heartbeats, reconnect and resume within the grace period, and the end.
 */
import { $ } from '/page.js';
import { PROVIDER, noop, S, say, status, show, setPhase, updateBanner, save, forget, wsOpen, send, sendMediaState } from '/consult/state.js';
import { onStats } from '/consult/stats.js';
import { renderRoster, renderWaiting } from '/consult/tiles.js';
import { failAnswer, startMedia, teardownMedia, onAnswer, onServerOffer, restartIce } from '/consult/peer.js';

export function collectHints() {
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


export function connect() {
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

export function reconnectNow() {
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

export function finish(text, kind) {
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
