// The staff schedule (/schedule): a location's day (check-in, complete, no-show, cancel, joining
// video visits) and booking from open slots. An ES module in plain ES2017.
import { apiClient, BACKGROUND, watchIdle, signedOutForIdle } from '/api.js';
import { $, el, clear, messenger, busy as busyWith } from '/page.js';
import { clock, addDays, todayIn, validDate, randomKey, qs, friendly, showSlots,
         longDate as longDateOf, wallShift as wallShiftOf } from '/schedule/scheduling.js';

var ACTIVE = { booked: true, checked_in: true, held: true };
var STATUS = { held: 'On hold', booked: 'Booked', checked_in: 'Checked in', completed: 'Completed',
               no_show: 'No-show', cancelled: 'Cancelled', expired: 'Expired' };
// Leeway for a computer clock that runs a little behind the server's.
var JOIN_LEEWAY_MS = 30000;
var S = { me: null, locations: [], types: [], patients: [], providers: {}, chosen: null, busy: false,
          appts: [], loadSeq: 0, slotSeq: 0 };

// ------------------------------------------------------------------------------------------
// Small helpers

// The page's top message, and the booking panel's.
var say = messenger('message', ''), note = messenger('book-message', 'note');
// "Monday, November 2, 2026".
function longDate(d) { return longDateOf(d, true); }
// The location's wall time `ms` milliseconds away from a local RFC 3339 time, as "8:45 AM".
function wallShift(local, ms) { return wallShiftOf(local, ms).time; }
var server = apiClient({ signedOut: function () { signedOut(); }, word: friendly });
var api = server.call, serverNow = server.now;
// Runs fn with the button disabled; reports a failure with `report` (the top message by default).
function busy(button, fn, report) { return busyWith(button, fn, report || say); }

function signedOut() {
  if (signedOutForIdle()) $('signin-text').textContent = 'You were signed out because nothing was done on the page for a while. Sign in again to continue.';
  $('view-day').hidden = true;
  $('view-book').hidden = true;
  $('view-signin').hidden = false;
  $('whoami').textContent = '';
}

function currentLocation() {
  var id = $('location').value;
  for (var i = 0; i < S.locations.length; i++) if (S.locations[i].id === id) return S.locations[i];
  return null;
}

function typeById(id) {
  for (var i = 0; i < S.types.length; i++) if (S.types[i].id === id) return S.types[i];
  return null;
}

// ------------------------------------------------------------------------------------------
// The day's appointments

async function loadDay(background) {
  var loc = currentLocation();
  var day = $('date').value;
  if (!loc || !validDate(day)) return;
  var seq = ++S.loadSeq;
  $('day-title').textContent = longDate(day) + ' · ' + loc.name;
  var list = await api('GET', '/api/v1/appointments?' + qs({ location_id: loc.id, from: day, to: addDays(day, 1) }), undefined, background ? BACKGROUND : undefined);
  if (seq !== S.loadSeq) return; // a newer load is under way
  S.appts = list || [];
  S.appts.forEach(function (a) { S.providers[a.provider_id] = a.provider_name; });
  renderDay();
  fillProviders();
}

function renderDay() {
  var ul = $('day-list');
  clear(ul);
  $('day-empty').hidden = S.appts.length > 0;
  S.appts.forEach(function (a) { ul.appendChild(apptItem(a)); });
}

function apptItem(a) {
  var li = el('li');
  li.id = 'appt-' + a.id;
  li.setAttribute('data-status', a.status);
  if (!ACTIVE[a.status]) li.className = 'inactive';
  var when = el('div', 'when', clock(a.start.slice(11, 16)) + '–' + clock(a.end.slice(11, 16)));
  var status = el('span', 'status ' + a.status, STATUS[a.status] || a.status);
  when.appendChild(document.createTextNode(' '));
  when.appendChild(status);
  li.appendChild(when);
  li.appendChild(el('div', 'who', a.patient_name || 'Patient'));
  li.appendChild(el('div', 'what', a.type_name + (a.modality === 'telemedicine' ? ' (video)' : '') + ' · ' + a.provider_name));
  var who = (a.patient_name || 'patient') + ' at ' + clock(a.start.slice(11, 16));
  var actions = el('div', 'actions');
  var tele = a.modality === 'telemedicine' && a.consult_id;
  if (tele && S.me && a.provider_id === S.me.user_id && (a.status === 'booked' || a.status === 'checked_in') &&
      !(Date.parse(a.join_closes_at) < serverNow())) {
    var j = action(a, 'join', 'Join video visit', 'Join the video visit with ' + who, join);
    var opensMs = Date.parse(a.join_opens_at);
    if (serverNow() < opensMs - JOIN_LEEWAY_MS) {
      // Not open yet: say when (the list refreshes every minute, which enables it).
      j.disabled = true;
      j.textContent = 'Video opens ' + wallShift(a.start, opensMs - Date.parse(a.start));
      j.setAttribute('aria-label', j.textContent + ': the video visit with ' + who);
    }
    actions.appendChild(j);
  }
  if (a.status === 'booked') actions.appendChild(action(a, 'check-in', 'Check in', 'Check in ' + who));
  if (a.status === 'booked' || a.status === 'checked_in') actions.appendChild(action(a, 'complete', 'Complete', 'Complete the appointment of ' + who));
  if (a.status === 'booked') actions.appendChild(action(a, 'no-show', 'No-show', 'Mark ' + who + ' as a no-show', null, 'Confirm no-show'));
  if (a.status === 'booked' || a.status === 'held') actions.appendChild(action(a, 'cancel', 'Cancel', 'Cancel the appointment of ' + who, null, 'Confirm cancel'));
  li.appendChild(actions);
  return li;
}

// A button for one appointment. Destructive ones ask for a second press within 5 seconds.
function action(a, verb, text, label, handler, confirmText) {
  var b = el('button', 'small' + (verb === 'join' ? '' : ' secondary'), text);
  b.type = 'button';
  b.id = verb + '-' + a.id;
  b.setAttribute('aria-label', label);
  b.addEventListener('click', function () {
    if (confirmText && !b.hasAttribute('data-armed')) {
      b.setAttribute('data-armed', '');
      b.textContent = confirmText;
      b.setAttribute('aria-label', confirmText + ': ' + label);
      setTimeout(function () {
        if (!b.hasAttribute('data-armed')) return;
        b.removeAttribute('data-armed');
        b.textContent = text;
        b.setAttribute('aria-label', label);
      }, 5000);
      return;
    }
    b.removeAttribute('data-armed');
    say('');
    busy(b, function () { return (handler || change)(a, verb); });
  });
  return b;
}

async function change(a, verb) {
  var done = { 'check-in': 'Checked in', complete: 'Completed', 'no-show': 'Marked as a no-show', cancel: 'Cancelled' };
  try {
    var r = await api('POST', '/api/v1/appointments/' + encodeURIComponent(a.id) + '/' + verb);
    say(done[verb] + ': ' + (r.patient_name || 'patient') + ' at ' + clock(r.start.slice(11, 16)) + '.', 'info');
  } finally {
    await loadDay().catch(function () { /* the action's own message matters more */ });
  }
}

async function join(a) {
  var link;
  try { link = await api('POST', '/api/v1/appointments/' + encodeURIComponent(a.id) + '/join'); }
  catch (e) {
    if (e.code === 'join_not_open' && e.body && e.body.opens_at) {
      var opens = new Date(e.body.opens_at);
      throw new Error(e.message + ' It opens in about ' + Math.max(1, Math.ceil((opens.getTime() - serverNow()) / 60000)) + ' minutes.');
    }
    throw e;
  }
  // The one-time code rides in the fragment, which never reaches a server or a log.
  window.location.assign(link.url);
}

// ------------------------------------------------------------------------------------------
// Booking: type, provider, date → open slots → patient → book

function fillProviders() {
  var sel = $('provider');
  var keep = sel.value;
  var ids = Object.keys(S.providers).sort(function (x, y) { return S.providers[x] < S.providers[y] ? -1 : 1; });
  clear(sel);
  var any = el('option', null, 'Any provider');
  any.value = '';
  sel.appendChild(any);
  ids.forEach(function (id) {
    var o = el('option', null, S.providers[id]);
    o.value = id;
    sel.appendChild(o);
  });
  sel.value = S.providers[keep] ? keep : '';
}

function resetSlots() {
  S.slotSeq++;
  S.chosen = null;
  clear($('slots'));
  $('slots-empty').hidden = true;
  $('slots-next-day').hidden = true;
  $('book-form').hidden = true;
}

async function findSlots(keepMessage) {
  var loc = currentLocation();
  var ty = typeById($('type').value);
  var day = $('book-date').value;
  if (!keepMessage) note('');
  if (!loc) throw new Error('Choose a location.');
  if (!ty) throw new Error('Choose an appointment type.');
  if (!validDate(day)) { $('book-date').focus(); throw new Error('Choose a date.'); }
  resetSlots();
  var seq = S.slotSeq;
  var provider = $('provider').value;
  // Two days asked, one shown: with one, the server leaves out the day's last slots that end
  // after midnight (23:45 for a 20-minute visit), although they can be booked.
  var slots = await api('GET', '/api/v1/slots?' + qs({ location_id: loc.id, type_id: ty.id, from: day, days: 2, provider_id: provider }));
  if (seq !== S.slotSeq) return;
  slots = (slots || []).filter(function (s) { return s.start.slice(0, 10) === day; });
  slots.forEach(function (s) { S.providers[s.provider_id] = s.provider_name; });
  fillProviders();
  if (!slots.length) {
    $('slots-empty').textContent = 'No open times for ' + ty.name + ' on ' + longDate(day) + '.';
    $('slots-empty').hidden = false;
    $('slots-next-day').hidden = false;
    return;
  }
  showSlots($('slots'), slots, longDate, choose, true);
}

function choose(slot, button) {
  var pressed = document.querySelectorAll('#slots button.slot[aria-pressed="true"]');
  for (var i = 0; i < pressed.length; i++) pressed[i].setAttribute('aria-pressed', 'false');
  button.setAttribute('aria-pressed', 'true');
  S.chosen = slot;
  var ty = typeById(slot.type_id);
  $('chosen').textContent = (ty ? ty.name : 'Appointment') + ': ' + longDate(slot.start.slice(0, 10)) + ', ' +
    clock(slot.start.slice(11, 16)) + '–' + clock(slot.end.slice(11, 16)) + ' with ' + slot.provider_name;
  $('book-form').hidden = false;
  note('');
  try { $('patient-filter').focus(); } catch (e) { /* ignore */ }
}

function patientName(p) { return p.family_name + ', ' + p.given_name; }

function fillPatients() {
  var sel = $('patient');
  var keep = sel.value;
  var words = $('patient-filter').value.toLowerCase().split(/\s+/).filter(Boolean);
  clear(sel);
  var none = el('option', null, 'Choose a patient');
  none.value = '';
  sel.appendChild(none);
  var shown = 0, only = '';
  S.patients.forEach(function (p) {
    var name = (p.given_name + ' ' + p.family_name).toLowerCase();
    if (!words.every(function (w) { return name.indexOf(w) >= 0; })) return;
    var o = el('option', null, patientName(p));
    o.value = p.id;
    sel.appendChild(o);
    shown++;
    only = p.id;
  });
  if (shown === 0) none.textContent = 'No patient matches';
  sel.value = keep;
  if (!sel.value && shown === 1 && words.length) sel.value = only;
}

async function book() {
  var slot = S.chosen;
  if (!slot) throw new Error('Choose an open time first.');
  var patient = $('patient').value;
  if (!patient) { $('patient').focus(); throw new Error('Choose the patient.'); }
  var body = { type_id: slot.type_id, location_id: slot.location_id, provider_id: slot.provider_id,
               patient_id: patient, start: slot.start };
  if (slot.room_id) body.room_id = slot.room_id;
  // One key per press: a retry after a lost answer cannot book twice.
  var key = randomKey(), appt, tries = 0;
  for (;;) {
    try { appt = await api('POST', '/api/v1/appointments', body, { 'Idempotency-Key': key }); break; }
    catch (e) {
      if (e.status === 0 && ++tries < 3) { await new Promise(function (r) { setTimeout(r, 1000 * tries); }); continue; }
      if (e.code === 'slot_unavailable' || e.code === 'start_in_past' || e.code === 'outside_availability') {
        // The list was out of date: show what is open now, and keep the server's reason visible.
        await findSlots(true).catch(function () { /* keep the booking error */ });
      }
      throw e;
    }
  }
  note('Booked: ' + (appt.patient_name || 'patient') + ', ' + appt.type_name + ' on ' + longDate(appt.start.slice(0, 10)) +
       ' at ' + clock(appt.start.slice(11, 16)) + ' with ' + appt.provider_name + '.', 'info');
  $('patient-filter').value = '';
  $('patient').value = '';
  fillPatients();
  // Show the day of the booked slot (which may be tomorrow near midnight), then what is still open.
  $('date').value = appt.start.slice(0, 10);
  await loadDay();
  var li = $('appt-' + appt.id);
  if (li) try { li.scrollIntoView({ block: 'nearest' }); } catch (e) { /* ignore */ }
  await findSlots(true);
}

// ------------------------------------------------------------------------------------------
// Start-up and wiring

async function start() {
  var me;
  try { me = await api('GET', '/api/v1/auth/session'); }
  catch (e) { if (e.status === 401) return signedOut(); throw e; }
  if (me.stage !== 'full') {
    $('signin-text').textContent = 'Finish signing in (two-step verification), then come back to this page.';
    return signedOut();
  }
  if (me.role === 'patient') {
    $('view-signin').hidden = false;
    $('signin-text').textContent = 'This page is for clinic staff.';
    var p = $('view-signin').querySelector('a');
    p.href = '/appointments';
    p.textContent = 'Go to your appointments';
    return;
  }
  S.me = me;
  watchIdle(me);
  $('whoami').textContent = 'Signed in as ' + me.display_name;
  var results = await Promise.all([api('GET', '/api/v1/locations'), api('GET', '/api/v1/appointment-types')]);
  var mine = me.locations || [];
  S.locations = (results[0] || []).filter(function (l) { return !mine.length || mine.indexOf(l.id) >= 0; });
  if (!S.locations.length) throw new Error('You are not assigned to a location yet. Ask your practice administrator.');
  var sel = $('location');
  S.locations.forEach(function (l) {
    var o = el('option', null, l.name);
    o.value = l.id;
    sel.appendChild(o);
  });
  var types = results[1] || [];
  var bookable = types.filter(function (t) { return (t.bookable_by || []).indexOf(me.role) >= 0; });
  S.types = bookable.length ? bookable : types;
  var tsel = $('type');
  S.types.forEach(function (t) {
    var o = el('option', null, t.name + ' · ' + t.duration_min + ' min' + (t.modality === 'telemedicine' ? ' · video' : ''));
    o.value = t.id;
    tsel.appendChild(o);
  });
  var today = todayIn(currentLocation().time_zone);
  $('date').value = today;
  $('book-date').value = today;
  $('view-day').hidden = false;
  $('view-book').hidden = !S.types.length;
  await loadDay();
  // Patients of the caller's locations, for the booking form (not needed to see the day).
  api('GET', '/api/v1/patients?limit=200').then(function (list) {
    S.patients = list || [];
    fillPatients();
  }).catch(function (e) { if (e.status !== 403) note(e.message); });
}

function dayChanged() { say(''); loadDay().catch(function (e) { say(e.message); }); }

$('location').addEventListener('change', function () {
  var today = todayIn(currentLocation().time_zone);
  if (!validDate($('date').value)) $('date').value = today;
  S.providers = {};
  fillProviders();
  resetSlots();
  note('');
  dayChanged();
});
$('date').addEventListener('change', function () {
  if (validDate($('date').value)) { $('book-date').value = $('date').value; resetSlots(); }
  dayChanged();
});
$('prev-day').addEventListener('click', function () { $('date').value = addDays($('date').value, -1); dayChanged(); });
$('next-day').addEventListener('click', function () { $('date').value = addDays($('date').value, 1); dayChanged(); });
$('today').addEventListener('click', function () { $('date').value = todayIn(currentLocation().time_zone); dayChanged(); });
$('refresh').addEventListener('click', function () { busy($('refresh'), function () { say(''); return loadDay(); }); });
['type', 'provider', 'book-date'].forEach(function (id) {
  $(id).addEventListener('change', function () { resetSlots(); note(''); });
});
$('find-slots').addEventListener('click', function () { busy($('find-slots'), function () { return findSlots(); }, note); });
$('slots-next-day').addEventListener('click', function () {
  $('book-date').value = addDays($('book-date').value, 1);
  busy($('find-slots'), function () { return findSlots(); }, note);
});
$('patient-filter').addEventListener('input', fillPatients);
$('book').addEventListener('click', function () { note(''); busy($('book'), book, note); });

// Keep the day current while the page stays open (others book too); not while a button waits
// for its confirming second press.
setInterval(function () {
  if (document.hidden || $('view-day').hidden || document.querySelector('#day-list [data-armed]')) return;
  loadDay(true).catch(function () { /* the next refresh or action reports */ });
}, 60000);

start().catch(function (e) { say(e.message || String(e)); });
