/* The consult's WebRTC session with the SFU (served at /consult/peer.js): the peer connection,
 * our offers and the SFU's, ICE restarts, and the video sender's parameters.
 */
import { PROVIDER, SIMULCAST, noop, S, status, updateBanner, audioTrack, videoTrack, wsOpen, send, sendMediaState, sendPreference } from '/consult/state.js';
import { reportStats } from '/consult/stats.js';
import { removeTile, onTrack } from '/consult/tiles.js';

function enqueue(fn) {
  var p = S.queue.then(fn);
  S.queue = p.catch(function (e) { console.warn('consult: negotiation', e); });
  return p;
}

export function failAnswer(err) {
  var w = S.awaitingAnswer;
  if (w) { S.awaitingAnswer = null; clearTimeout(w.timer); w.reject(err); }
}

export async function startMedia() {
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

export function addVideo(pc, track) {
  if (PROVIDER) return pc.addTransceiver(track, { direction: 'sendrecv', streams: [S.local], sendEncodings: SIMULCAST }).sender;
  return pc.addTrack(track, S.local);
}

export function teardownMedia() {
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
export function negotiate(opts) {
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

export function onAnswer(sdp) {
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
export function onServerOffer(sdp) {
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

export function restartIce() {
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

// Low data also shrinks what a patient sends (providers' simulcast already has a low layer).
export function lowDataSending(on) {
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
