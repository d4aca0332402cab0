// Shared by the scheduling pages (/schedule for staff, /appointments for patients): wall times and
// dates as the location shows them, and the server's messages read that way. An ES module in
// plain ES2017, no build step: it runs on older phones and tablets.
import { el } from '/page.js';

export function pad(n) { return (n < 10 ? '0' : '') + n; }

// "14:05" → "2:05 PM": the location's wall time, read from the string itself.
export function clock(hhmm) {
  var h = parseInt(hhmm.slice(0, 2), 10), m = hhmm.slice(3, 5);
  return (h % 12 === 0 ? 12 : h % 12) + ':' + m + (h < 12 ? ' AM' : ' PM');
}

// "YYYY-MM-DD" formatted as the date itself, whatever the browser's zone.
function formatDate(d, options) {
  var p = d.split('-');
  var dt = new Date(Date.UTC(+p[0], +p[1] - 1, +p[2], 12));
  options.timeZone = 'UTC';
  try { return dt.toLocaleDateString(undefined, options); }
  catch (e) { return d; }
}

// "Monday, November 2" (with the year: "Monday, November 2, 2026").
export function longDate(d, withYear) {
  var o = { weekday: 'long', month: 'long', day: 'numeric' };
  if (withYear) o.year = 'numeric';
  return formatDate(d, o);
}

export function shortDate(d) { return formatDate(d, { weekday: 'short', month: 'short', day: 'numeric' }); }

export function addDays(d, n) {
  var p = d.split('-');
  var dt = new Date(Date.UTC(+p[0], +p[1] - 1, +p[2] + n, 12));
  return dt.getUTCFullYear() + '-' + pad(dt.getUTCMonth() + 1) + '-' + pad(dt.getUTCDate());
}

// Today's date in an IANA zone (the location's), falling back to the browser's own date.
export function todayIn(tz) {
  var now = new Date();
  if (tz) {
    try {
      var f = new Intl.DateTimeFormat('en-US', { timeZone: tz, year: 'numeric', month: '2-digit', day: '2-digit' });
      var m = f.format(now).match(/(\d{2})\/(\d{2})\/(\d{4})/);
      if (m) return m[3] + '-' + m[1] + '-' + m[2];
    } catch (e) { /* unknown zone or old browser */ }
  }
  return now.getFullYear() + '-' + pad(now.getMonth() + 1) + '-' + pad(now.getDate());
}

export function validDate(d) { return /^\d{4}-\d{2}-\d{2}$/.test(d || ''); }

// The wall date and time `ms` milliseconds away from a local RFC 3339 time: { date, time }.
export function wallShift(local, ms) {
  var d = local.slice(0, 10).split('-'), t = local.slice(11, 16).split(':');
  var w = new Date(Date.UTC(+d[0], +d[1] - 1, +d[2], +t[0], +t[1]) + ms);
  var s = w.getUTCFullYear() + '-' + pad(w.getUTCMonth() + 1) + '-' + pad(w.getUTCDate());
  return { date: s, time: clock(pad(w.getUTCHours()) + ':' + pad(w.getUTCMinutes())) };
}

// Times in the server's messages ("…from 2026-11-02T09:00:00-05:00 to …") read as wall times.
export function friendly(text) {
  text = String(text || '');
  text = text.replace(/(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})(?::\d{2}(?:\.\d+)?)?[+-]\d{2}:\d{2}/g, function (_, d, t) {
    return shortDate(d) + ' ' + clock(t);
  });
  return text.charAt(0).toUpperCase() + text.slice(1);
}

// An Idempotency-Key: 128 random bits as hex.
export function randomKey() {
  var b = new Uint8Array(16), s = '';
  (window.crypto || window.msCrypto).getRandomValues(b);
  for (var i = 0; i < b.length; i++) s += (b[i] < 16 ? '0' : '') + b[i].toString(16);
  return s;
}

export function qs(params) {
  return Object.keys(params).filter(function (k) { return params[k] !== undefined && params[k] !== ''; })
    .map(function (k) { return encodeURIComponent(k) + '=' + encodeURIComponent(params[k]); }).join('&');
}

// Shows open slots in `area` as the booking panels do: a heading per provider (in the order the
// server lists them) and a button per start time, labelled with the date as `longDate` words it.
// A press calls `pick(slot, button)`; `pressable` buttons say whether they are the one chosen.
export function showSlots(area, slots, longDate, pick, pressable) {
  var groups = {}, order = [];
  slots.forEach(function (s) {
    if (!groups[s.provider_id]) { groups[s.provider_id] = []; order.push(s.provider_id); }
    groups[s.provider_id].push(s);
  });
  order.forEach(function (pid) {
    var group = el('div', 'provider-slots');
    group.setAttribute('data-provider-id', pid);
    var h = el('h3', null, groups[pid][0].provider_name);
    h.id = 'slots-h-' + pid;
    group.appendChild(h);
    var box = el('div', 'slots');
    box.setAttribute('role', 'group');
    box.setAttribute('aria-labelledby', h.id);
    groups[pid].forEach(function (s) {
      var b = el('button', 'slot', clock(s.start.slice(11, 16)));
      b.type = 'button';
      if (pressable) b.setAttribute('aria-pressed', 'false');
      b.setAttribute('aria-label', clock(s.start.slice(11, 16)) + ' on ' + longDate(s.start.slice(0, 10)) + ' with ' + s.provider_name);
      b.setAttribute('data-start', s.start);
      b.addEventListener('click', function () { pick(s, b); });
      box.appendChild(b);
    });
    group.appendChild(box);
    area.appendChild(group);
  });
}
