// Shared by the scheduling pages (/schedule for staff, /appointments for patients): wall times and
// dates as the location shows them, the JSON API client that follows the server's clock, and
// small DOM helpers. Plain ES2017, no build step: it runs on older phones and tablets.
(function () {
  'use strict';

  function pad(n) { return (n < 10 ? '0' : '') + n; }

  // "14:05" → "2:05 PM": the location's wall time, read from the string itself.
  function clock(hhmm) {
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
  function longDate(d, withYear) {
    var o = { weekday: 'long', month: 'long', day: 'numeric' };
    if (withYear) o.year = 'numeric';
    return formatDate(d, o);
  }

  function shortDate(d) { return formatDate(d, { weekday: 'short', month: 'short', day: 'numeric' }); }

  function addDays(d, n) {
    var p = d.split('-');
    var dt = new Date(Date.UTC(+p[0], +p[1] - 1, +p[2] + n, 12));
    return dt.getUTCFullYear() + '-' + pad(dt.getUTCMonth() + 1) + '-' + pad(dt.getUTCDate());
  }

  // Today's date in an IANA zone (the location's), falling back to the browser's own date.
  function todayIn(tz) {
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

  function validDate(d) { return /^\d{4}-\d{2}-\d{2}$/.test(d || ''); }

  // The wall date and time `ms` milliseconds away from a local RFC 3339 time: { date, time }.
  function wallShift(local, ms) {
    var d = local.slice(0, 10).split('-'), t = local.slice(11, 16).split(':');
    var w = new Date(Date.UTC(+d[0], +d[1] - 1, +d[2], +t[0], +t[1]) + ms);
    var s = w.getUTCFullYear() + '-' + pad(w.getUTCMonth() + 1) + '-' + pad(w.getUTCDate());
    return { date: s, time: clock(pad(w.getUTCHours()) + ':' + pad(w.getUTCMinutes())) };
  }

  // Times in the server's messages ("…from 2026-11-02T09:00:00-05:00 to …") read as wall times.
  function friendly(text) {
    text = String(text || '');
    text = text.replace(/(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})(?::\d{2}(?:\.\d+)?)?[+-]\d{2}:\d{2}/g, function (_, d, t) {
      return shortDate(d) + ' ' + clock(t);
    });
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  // An Idempotency-Key: 128 random bits as hex.
  function randomKey() {
    var b = new Uint8Array(16), s = '';
    (window.crypto || window.msCrypto).getRandomValues(b);
    for (var i = 0; i < b.length; i++) s += (b[i] < 16 ? '0' : '') + b[i].toString(16);
    return s;
  }

  function qs(params) {
    return Object.keys(params).filter(function (k) { return params[k] !== undefined && params[k] !== ''; })
      .map(function (k) { return encodeURIComponent(k) + '=' + encodeURIComponent(params[k]); }).join('&');
  }

  // The JSON API. `call` throws an Error carrying the problem+json detail (and status, code, body)
  // on failure, and calls `signedOut` on a 401; `failed(status)` words a failure without a body.
  // `now()` is the server's clock (to the second), so countdowns and join buttons follow it, not
  // the device's.
  function client(signedOut, failed) {
    var skew = 0;
    async function call(method, url, body, headers) {
      var opts = { method: method, credentials: 'same-origin', headers: { 'Accept': 'application/json' } };
      if (headers) Object.keys(headers).forEach(function (k) { opts.headers[k] = headers[k]; });
      if (body !== undefined) {
        opts.headers['Content-Type'] = 'application/json';
        opts.body = JSON.stringify(body);
      }
      var res;
      try { res = await fetch(url, opts); }
      catch (e) { throw Object.assign(new Error('Cannot reach the server. Check your connection and try again.'), { status: 0 }); }
      var date = Date.parse(res.headers.get('Date') || '');
      if (!isNaN(date)) skew = date + 500 - Date.now();
      var text = await res.text();
      var data = null;
      if (text) { try { data = JSON.parse(text); } catch (e) { data = null; } }
      if (!res.ok) {
        var err = new Error(friendly((data && (data.detail || data.title)) || failed(res.status)));
        err.status = res.status;
        err.code = data && data.code;
        err.body = data;
        if (res.status === 401) signedOut();
        throw err;
      }
      return data;
    }
    return { call: call, now: function () { return Date.now() + skew; } };
  }

  // Runs fn with the button disabled; a failure's message goes to `report`.
  async function busy(button, fn, report) {
    if (button.disabled) return;
    button.disabled = true;
    try { await fn(); }
    catch (e) { report(e.message || String(e)); }
    finally { button.disabled = false; }
  }

  // A function showing a message in element `id` (hidden when empty, scrolled into view when
  // not): its class is `base`, plus `info` for the calm style; anything else reads as an alert.
  function messenger(id, base) {
    return function (text, kind) {
      var m = document.getElementById(id);
      var info = kind === 'info' ? 'info' : '';
      m.textContent = text || '';
      m.className = base && info ? base + ' ' + info : base || info;
      m.hidden = !text;
      if (text) try { m.scrollIntoView({ block: 'nearest' }); } catch (e) { /* old browsers */ }
    };
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  window.Scheduling = {
    pad: pad, clock: clock, longDate: longDate, shortDate: shortDate, addDays: addDays, todayIn: todayIn,
    validDate: validDate, wallShift: wallShift, friendly: friendly, randomKey: randomKey, qs: qs,
    client: client, busy: busy, messenger: messenger, el: el, clear: clear
  };
})();
