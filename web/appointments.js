// The patient's appointments (/appointments): upcoming and past visits (joining video visits,
// cancelling), booking through a hold with a countdown, and messages from the care team. An ES
// module in plain ES2017.
import { apiClient, BACKGROUND, watchIdle, signedOutForIdle } from '/api.js';
import { $, el, clear, messenger, busy as busyWith } from '/page.js';
import { pad, clock, shortDate, addDays, todayIn, validDate, wallShift, randomKey, qs, friendly,
         showSlots, longDate as longDateOf } from '/schedule/scheduling.js';

var STATUS = { held: 'On hold', booked: 'Booked', checked_in: 'Checked in', completed: 'Completed',
               no_show: 'Missed', cancelled: 'Cancelled', expired: 'Expired' };
// Leeway for a phone clock that runs a little behind the server's.
var JOIN_LEEWAY_MS = 30000;
var S = { types: [], locations: [], appts: [], hold: null, holdTimer: null, slotSeq: 0, acting: 0 };

// ------------------------------------------------------------------------------------------
// Small helpers

// The page's top message, and the booking panel's.
var say = messenger('message', ''), note = messenger('book-message', 'note');
function longDate(d) { return longDateOf(d, false); }
var server = apiClient({
  signedOut: function () { signedOut(); },
  failed: function (status) { return 'Something went wrong (error ' + status + '). Please try again.'; },
  word: friendly
});
var api = server.call, serverNow = server.now;
function busy(button, fn, report) { return busyWith(button, fn, report || say); }

// busy() for the list's own buttons: the periodic re-render leaves the list alone meanwhile.
async function acting(button, fn) {
  S.acting++;
  try { await busy(button, fn); } finally { S.acting--; }
}

function signedOut() {
  if (signedOutForIdle()) $('signin-text').textContent = 'You were signed out because nothing was done on the page for a while. Sign in again to continue.';
  ['view-upcoming', 'view-book', 'view-past', 'view-messages'].forEach(function (id) { $(id).hidden = true; });
  stopHold();
  $('view-signin').hidden = false;
}

function locationName(id) {
  for (var i = 0; i < S.locations.length; i++) if (S.locations[i].id === id) return S.locations[i].name;
  return '';
}

function locationTz(id) {
  for (var i = 0; i < S.locations.length; i++) if (S.locations[i].id === id) return S.locations[i].time_zone;
  return '';
}

// ------------------------------------------------------------------------------------------
// My appointments

function isUpcoming(a) {
  if (a.status !== 'booked' && a.status !== 'checked_in') return false;
  var end = Date.parse(a.join_closes_at || a.end);
  return end > serverNow();
}

async function loadAppointments(background) {
  S.appts = (await api('GET', '/api/v1/me/appointments', undefined, background ? BACKGROUND : undefined)) || [];
  renderAppointments();
}

function renderAppointments() {
  var up = S.appts.filter(isUpcoming).sort(function (x, y) { return Date.parse(x.start) - Date.parse(y.start); });
  var past = S.appts.filter(function (a) { return a.status !== 'held' && !isUpcoming(a); });
  // Keep a button's focus across a re-render (screen readers lose their place otherwise).
  var focused = document.activeElement && document.activeElement.id;
  // Not while a button waits for its answer or for a confirming press: re-render later.
  if (S.acting || document.querySelector('#upcoming [data-armed]')) return;
  clear($('upcoming'));
  clear($('past'));
  up.forEach(function (a) { $('upcoming').appendChild(item(a, true)); });
  past.forEach(function (a) { $('past').appendChild(item(a, false)); });
  $('upcoming-none').hidden = up.length > 0;
  $('past-none').hidden = past.length > 0;
  $('view-upcoming').hidden = false;
  $('view-past').hidden = false;
  if (focused && $(focused)) try { $(focused).focus(); } catch (e) { /* ignore */ }
}

function item(a, upcoming) {
  var li = el('li');
  li.id = 'appt-' + a.id;
  li.setAttribute('data-status', a.status);
  var when = longDate(a.start.slice(0, 10)) + ', ' + clock(a.start.slice(11, 16)) + '–' + clock(a.end.slice(11, 16));
  li.appendChild(el('div', 'when', when));
  var place = a.modality === 'telemedicine' ? 'Video visit' : (locationName(a.location_id) || 'At the clinic');
  li.appendChild(el('div', 'what', a.type_name + ' with ' + a.provider_name + ' · ' + place));
  if (!upcoming || a.status !== 'booked') li.appendChild(el('span', 'status', STATUS[a.status] || a.status));
  if (!upcoming) return li;
  if (a.modality === 'telemedicine' && a.consult_id && a.join_opens_at) {
    var opensMs = Date.parse(a.join_opens_at);
    var b = el('button', null, 'Join video visit');
    b.type = 'button';
    b.id = 'join-' + a.id;
    b.setAttribute('aria-label', 'Join the video visit at ' + clock(a.start.slice(11, 16)));
    var hint = el('p', 'opens');
    hint.id = 'opens-' + a.id;
    if (serverNow() < opensMs - JOIN_LEEWAY_MS) {
      b.disabled = true;
      var opens = wallShift(a.start, opensMs - Date.parse(a.start));
      hint.textContent = 'You can join from ' + (opens.date === a.start.slice(0, 10) ? '' : shortDate(opens.date) + ', ') + opens.time + '.';
      b.setAttribute('aria-describedby', hint.id);
    }
    b.addEventListener('click', function () { say(''); acting(b, function () { return join(a, hint); }); });
    li.appendChild(b);
    li.appendChild(hint);
  }
  if (a.status === 'booked' && Date.parse(a.start) > serverNow()) {
    var c = el('button', 'secondary', 'Cancel this appointment');
    c.type = 'button';
    c.id = 'cancel-' + a.id;
    c.addEventListener('click', function () {
      if (!c.hasAttribute('data-armed')) {
        c.setAttribute('data-armed', '');
        c.textContent = 'Yes, cancel it';
        setTimeout(function () {
          if (!c.hasAttribute('data-armed')) return;
          c.removeAttribute('data-armed');
          c.textContent = 'Cancel this appointment';
        }, 6000);
        return;
      }
      c.removeAttribute('data-armed');
      say('');
      acting(c, async function () {
        await api('POST', '/api/v1/me/appointments/' + encodeURIComponent(a.id) + '/cancel');
        say('Your appointment on ' + longDate(a.start.slice(0, 10)) + ' was cancelled.', 'info');
        await loadAppointments();
      });
    });
    li.appendChild(c);
  }
  return li;
}

async function join(a, hint) {
  var link;
  try { link = await api('POST', '/api/v1/appointments/' + encodeURIComponent(a.id) + '/join'); }
  catch (e) {
    if (e.code === 'join_not_open') {
      var opensAt = e.body && Date.parse(e.body.opens_at);
      if (opensAt) {
        var opens = wallShift(a.start, opensAt - Date.parse(a.start));
        throw new Error('Your video visit is not open yet. You can join from ' + opens.time + ' (' +
                        Math.max(1, Math.ceil((opensAt - serverNow()) / 60000)) + ' minutes from now).');
      }
    }
    if (e.code === 'join_closed' || e.code === 'appointment_closed') await loadAppointments().catch(function () {});
    throw e;
  }
  hint.textContent = 'Opening your video visit…';
  // The one-time code rides in the fragment, which never reaches a server or a log.
  window.location.assign(link.url);
}

// ------------------------------------------------------------------------------------------
// Booking: kind of visit, place, day → open times → hold (with a countdown) → confirm

function resetSlots() {
  S.slotSeq++;
  clear($('slots'));
  $('slots-empty').hidden = true;
  $('slots-next-day').hidden = true;
}

async function findSlots(keepMessage) {
  var typeId = $('type').value, loc = $('location').value, day = $('date').value;
  if (!keepMessage) note('');
  if (!typeId) throw new Error('Choose the kind of visit.');
  if (!loc) throw new Error('Choose where.');
  if (!validDate(day)) { $('date').focus(); throw new Error('Choose a day.'); }
  resetSlots();
  var seq = S.slotSeq;
  // Two days asked, one shown: with one, the server leaves out the day's last slots that end
  // after midnight, although they can be booked.
  var slots = (await api('GET', '/api/v1/me/slots?' + qs({ location_id: loc, type_id: typeId, from: day, days: 2 }))) || [];
  if (seq !== S.slotSeq) return;
  slots = slots.filter(function (s) { return s.start.slice(0, 10) === day; });
  if (!slots.length) {
    $('slots-empty').textContent = 'No open times on ' + longDate(day) + '.';
    $('slots-empty').hidden = false;
    $('slots-next-day').hidden = false;
    return;
  }
  showSlots($('slots'), slots, longDate, function (s, b) {
    note('');
    busy(b, function () { return placeHold(s); }, note);
  });
}

async function placeHold(slot) {
  var held;
  try {
    held = await api('POST', '/api/v1/me/holds', { type_id: slot.type_id, location_id: slot.location_id,
                                                  provider_id: slot.provider_id, start: slot.start });
  } catch (e) {
    if (e.code === 'slot_unavailable' || e.code === 'start_in_past') {
      await findSlots(true).catch(function () {});
      throw new Error('Sorry, that time was just taken. Please choose another time.');
    }
    throw e;
  }
  S.hold = held;
  $('hold-text').textContent = held.type_name + ' with ' + held.provider_name + ', ' + longDate(held.start.slice(0, 10)) +
    ' at ' + clock(held.start.slice(11, 16)) + '.';
  $('hold').hidden = false;
  $('slots-area').hidden = true;
  $('confirm').disabled = false;
  tick();
  S.holdTimer = setInterval(tick, 1000);
  try { $('confirm').focus(); } catch (e) { /* ignore */ }
}

function stopHold() {
  if (S.holdTimer) clearInterval(S.holdTimer);
  S.holdTimer = null;
  S.hold = null;
  $('hold').hidden = true;
  $('slots-area').hidden = false;
  $('countdown-sr').textContent = '';
}

function tick() {
  if (!S.hold) return;
  var left = Math.max(0, Math.floor((Date.parse(S.hold.hold_expires_at) - serverNow()) / 1000));
  $('countdown').textContent = Math.floor(left / 60) + ':' + pad(left % 60);
  // Screen readers hear the time left once a minute, not every second.
  if (left % 60 === 0 && left > 0) $('countdown-sr').textContent = Math.floor(left / 60) + ' minutes left to confirm.';
  if (left === 0) {
    stopHold();
    note('We could not keep that time any longer. Please choose a time again.');
    findSlots(true).catch(function (e) { note(e.message); });
  }
}

async function confirm() {
  if (!S.hold) throw new Error('Choose a time first.');
  var key = randomKey(), appt, tries = 0;
  for (;;) {
    try { appt = await api('POST', '/api/v1/me/appointments', { hold_id: S.hold.id }, { 'Idempotency-Key': key }); break; }
    catch (e) {
      if (e.status === 0 && ++tries < 3) { await new Promise(function (r) { setTimeout(r, 1000 * tries); }); continue; }
      if (e.code === 'hold_expired' || e.status === 404) {
        stopHold();
        await findSlots(true).catch(function () {});
      }
      throw e;
    }
  }
  stopHold();
  resetSlots();
  note('Your visit is booked: ' + longDate(appt.start.slice(0, 10)) + ' at ' + clock(appt.start.slice(11, 16)) +
       ' with ' + appt.provider_name + '.', 'info');
  await loadAppointments();
}

async function release() {
  var hold = S.hold;
  stopHold();
  if (hold) {
    // Free the time for others now rather than when the hold runs out.
    await api('POST', '/api/v1/me/appointments/' + encodeURIComponent(hold.id) + '/cancel').catch(function () {});
  }
  await findSlots();
}

// ------------------------------------------------------------------------------------------
// Messages

async function loadMessages() {
  var list = (await api('GET', '/api/v1/me/messages')) || [];
  var ul = $('messages');
  clear(ul);
  list.forEach(function (m) {
    var li = el('li');
    li.appendChild(el('div', 'msg-when', new Date(m.delivered).toLocaleDateString()));
    li.appendChild(el('p', null, m.body));
    // Only links within this site.
    if (m.link && m.link.charAt(0) === '/' && m.link.charAt(1) !== '/' && m.link !== '/') {
      var a = el('a', null, m.link === '/photos' ? 'Send a photo' : 'Open');
      a.href = m.link;
      li.appendChild(a);
    }
    ul.appendChild(li);
  });
  $('messages-none').hidden = list.length > 0;
  $('view-messages').hidden = false;
}

// ------------------------------------------------------------------------------------------
// Start-up and wiring

// Patients may not list the practice's locations (that permission is staff's, and a refusal
// would be audited): they book at their own clinic, from their record.
async function loadLocations() {
  var rec = await api('GET', '/api/v1/me/record');
  S.locations = [{ id: rec.location_id, name: 'Your clinic', time_zone: '' }];
  var sel = $('location');
  clear(sel);
  S.locations.forEach(function (l) {
    var o = el('option', null, l.name);
    o.value = l.id;
    sel.appendChild(o);
  });
}

async function start() {
  var me;
  try { me = await api('GET', '/api/v1/auth/session'); }
  catch (e) { if (e.status === 401) return signedOut(); throw e; }
  if (me.stage !== 'full') {
    $('signin-text').textContent = 'Finish signing in, then come back to this page.';
    return signedOut();
  }
  if (me.role !== 'patient') {
    $('view-signin').hidden = false;
    $('signin-text').textContent = 'This page is for patients.';
    $('signin-link').href = '/schedule';
    $('signin-link').textContent = 'Go to the schedule';
    return;
  }
  watchIdle(me);
  await loadAppointments();
  loadMessages().catch(function (e) { say(e.message); });
  var types = (await api('GET', '/api/v1/me/appointment-types')) || [];
  S.types = types;
  if (!types.length) return;
  types.forEach(function (t) {
    var o = el('option', null, t.name + (t.modality === 'telemedicine' ? ' (video)' : '') + ', ' + t.duration_min + ' minutes');
    o.value = t.id;
    $('type').appendChild(o);
  });
  await loadLocations();
  var mine = S.appts.filter(isUpcoming)[0];
  if (mine && locationName(mine.location_id)) $('location').value = mine.location_id;
  $('date').value = todayIn(locationTz($('location').value));
  $('view-book').hidden = false;
}

// A new search lets go of a time still held (so it is free for others at once).
$('find-slots').addEventListener('click', function () { busy($('find-slots'), function () { return S.hold ? release() : findSlots(); }, note); });
$('slots-next-day').addEventListener('click', function () {
  $('date').value = addDays($('date').value, 1);
  busy($('find-slots'), function () { return findSlots(); }, note);
});
['type', 'location', 'date'].forEach(function (id) {
  $(id).addEventListener('change', function () { resetSlots(); note(''); });
});
$('confirm').addEventListener('click', function () { note(''); busy($('confirm'), confirm, note); });
$('release').addEventListener('click', function () { note(''); busy($('release'), release, note); });

// Join buttons open on time without a reload; the list itself is fetched again every 2 minutes.
var ticks = 0;
setInterval(function () {
  if ($('view-upcoming').hidden || document.hidden) return;
  if (++ticks % 8 === 0) loadAppointments(true).catch(function () {});
  else renderAppointments();
}, 15000);

start().catch(function (e) { say(e.message || String(e)); });
