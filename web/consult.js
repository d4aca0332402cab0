/* The video consult pages' client (web/consult-join.html, web/consult-provider.html), the entry
 * both pages load: join-link exchange, then the camera and microphone check, the signaling
 * protocol of docs/signaling.md (v1), the WebRTC session with the SFU, and reconnect, each in a
 * module of its own under /consult/ that shares one state object (/consult/state.js). ES modules
 * in plain ES2017 for older phones and tablets: no build step, no optional chaining or object
 * spread.
 *
 * Tests use window.consult: { pc, ws, state, participant, remote, restartIce(), ... }.
 */
import { PROVIDER, S, say, status, setPhase, state, api, fail, save, loadSaved } from '/consult/state.js';
import { restartIce } from '/consult/peer.js';
import { collectHints } from '/consult/signaling.js';
import { precheck } from '/consult/media.js';
import { wireControls } from '/consult/controls.js';
import { providerSetup, renderInvites, wireProvider } from '/consult/provider.js';

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
  if (PROVIDER) wireProvider(start);
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
