/* The consult's camera and microphone (served at /consult/media.js): the check before joining
 * with help when it fails, the local stream, the self view and the control buttons' labels.
 */
import { $ } from '/page.js';
import { PROVIDER, S, status, show, setPhase, platform, audioTrack, videoTrack } from '/consult/state.js';
import { playVideo } from '/consult/tiles.js';
import { connect } from '/consult/signaling.js';

function videoConstraints() {
  // Providers publish simulcast (their top layer is the camera's size); patients on phones
  // send one modest stream.
  return PROVIDER
    ? { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30, max: 30 } }
    : { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24, max: 30 }, facingMode: 'user' };
}

var AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

export async function precheck(kind) {
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

export function updateSelf() {
  var v = videoTrack();
  var off = !v || S.cameraOff || S.audioOnly;
  var note = $('local-off');
  note.hidden = !off;
  note.textContent = S.audioOnly ? 'Audio only' : (!v ? 'No camera' : 'Camera off');
  var a = audioTrack();
  $('local-muted').hidden = !(S.muted || !a);
  $('local-muted').textContent = a ? 'Muted' : 'No microphone';
}

export function updateButtons() {
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

export async function getCamera() {
  var s = await navigator.mediaDevices.getUserMedia({ video: videoConstraints() });
  return s.getVideoTracks()[0];
}
