/* Consult tiles and roster (served at /consult/tiles.js): one tile per remote participant (the
 * track's msid stream id is their id), the roster and the provider's waiting room.
 */
import { $ } from '/page.js';
import { PROVIDER, ROLE_NAMES, noop, S, show, confirmTap, send } from '/consult/state.js';
import { renderStats } from '/consult/stats.js';

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

export function removeTile(pid) {
  var t = S.tiles[pid];
  if (!t) return;
  t.video.srcObject = null;
  if (t.el.parentNode) t.el.parentNode.removeChild(t.el);
  delete S.tiles[pid];
  $('remote').classList.toggle('many', Object.keys(S.tiles).length > 1);
  show('alone', S.phase === 'in-call' && !Object.keys(S.tiles).length);
}

export function onTrack(e) {
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

export function playVideo(v) {
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

export function updateTile(pid) {
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

export function renderRoster() {
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

export function renderWaiting() {
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
