/* The consult's call controls (served at /consult/controls.js): mute, camera, low data, audio
 * only, leave and end, and reconnecting when the network comes back.
 */
import { $ } from '/page.js';
import { PROVIDER, noop, S, say, show, setPhase, updateBanner, busy, confirmTap, audioTrack, videoTrack, wsOpen, send, sendMediaState, sendPreference } from '/consult/state.js';
import { playVideo, updateTile } from '/consult/tiles.js';
import { addVideo, negotiate, restartIce, lowDataSending } from '/consult/peer.js';
import { reconnectNow, finish } from '/consult/signaling.js';
import { precheck, updateSelf, updateButtons, getCamera } from '/consult/media.js';

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

export function wireControls() {
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
