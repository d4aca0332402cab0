/* The consult provider page's setup (served at /consult/provider.js): start a consult when
 * signed in, and the invite links.
 */
import { $ } from '/page.js';
import { ROLE_NAMES, noop, S, status, show, setPhase, api, busy, fail, save } from '/consult/state.js';

export async function providerSetup() {
  setPhase('setup');
  status('Checking your sign-in…');
  var s;
  try { s = await api('GET', '/api/v1/auth/session'); }
  catch (e) {
    status('');
    if (e.status === 401) return showSignin();
    return fail(e.message);
  }
  if (!s || s.stage !== 'full') return showSignin();
  S.me = s;
  var locs;
  try { locs = await api('GET', '/api/v1/locations'); }
  catch (e) { status(''); return fail(e.message); }
  // Consults are started at one's own locations: offer those the session is assigned to.
  var mine = s.locations || [];
  if (mine.length) {
    var own = (locs || []).filter(function (l) { return mine.indexOf(l.id) >= 0; });
    if (own.length) locs = own;
  }
  var sel = $('location');
  sel.textContent = '';
  (locs || []).forEach(function (l) {
    var o = document.createElement('option');
    o.value = l.id;
    o.textContent = l.name;
    sel.appendChild(o);
  });
  status('');
  if (!locs || !locs.length) return fail('You have no practice locations to hold a video visit at.');
  $('start-who').textContent = 'Signed in as ' + s.display_name + '.';
  show('view-start', true);
}

function showSignin() {
  setPhase('signin');
  status('');
  show('view-signin', true);
}

function codeOf(url) { var i = url.indexOf('#'); return i < 0 ? '' : url.slice(i + 1); }

function absolute(url) { return new URL(url, location.origin).href; }

async function createLink(role, name) {
  var r = await api('POST', '/api/v1/consults/' + encodeURIComponent(S.consultId) + '/links', { role: role, display_name: name });
  return { role: role, name: name, url: absolute(r.url), participant: r.participant_id, expires: r.expires_at };
}

export function renderInvites() {
  var patient = null;
  var others = [];
  S.invites.forEach(function (i) { if (i.role === 'patient' && !patient) patient = i; else others.push(i); });
  if (patient) {
    $('patient-link').textContent = patient.url;
    $('patient-name-shown').textContent = patient.name;
  }
  var list = $('invite-list');
  list.textContent = '';
  others.forEach(function (i) {
    var li = document.createElement('li');
    var t = document.createElement('div');
    t.textContent = i.name + ' (' + (ROLE_NAMES[i.role] || i.role) + ')';
    var u = document.createElement('div');
    u.className = 'mono uri link-text';
    u.textContent = i.url;
    var b = document.createElement('button');
    b.type = 'button'; b.className = 'secondary small';
    b.textContent = 'Copy link';
    b.addEventListener('click', function () { copy(i.url, b, u); });
    li.appendChild(t); li.appendChild(u); li.appendChild(b);
    list.appendChild(li);
  });
  show('invite', !!patient);
}

async function copy(text, button, source) {
  var label = button.getAttribute('data-label') || button.textContent;
  button.setAttribute('data-label', label);
  var ok = false;
  try {
    if (navigator.clipboard && navigator.clipboard.writeText) { await navigator.clipboard.writeText(text); ok = true; }
  } catch (e) { ok = false; }
  if (!ok && source) {
    try {
      var range = document.createRange();
      range.selectNodeContents(source);
      var sel = window.getSelection();
      sel.removeAllRanges(); sel.addRange(range);
      ok = document.execCommand('copy');
    } catch (e) { ok = false; }
  }
  button.textContent = ok ? 'Copied' : 'Select the link and copy it';
  setTimeout(function () { button.textContent = label; }, 2500);
}

// `start(code)` joins the consult with the provider's own link (the entry's join).
export function wireProvider(start) {
  $('start-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    busy($('start'), async function () {
      var loc = $('location').value;
      var patientName = $('patient-name').value.trim() || 'Patient';
      if (!loc) throw new Error('Choose a location.');
      var c = await api('POST', '/api/v1/consults', { location_id: loc });
      S.consultId = c.id;
      var mine = await createLink('provider', S.me.display_name);
      var patient = await createLink('patient', patientName);
      S.invites = [patient];
      show('view-start', false);
      renderInvites();
      await start(codeOf(mine.url));
    });
  });
  $('copy-link').addEventListener('click', function () { copy($('patient-link').textContent, $('copy-link'), $('patient-link')); });
  if (navigator.share) {
    show('share-link', true);
    $('share-link').addEventListener('click', function () {
      navigator.share({ title: 'Video visit', url: $('patient-link').textContent }).catch(noop);
    });
  }
  $('invite-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    busy($('invite-submit'), async function () {
      if (!S.consultId || !S.me) throw new Error('Sign in to invite more people.');
      var name = $('invite-name').value.trim();
      if (!name) { $('invite-name').focus(); throw new Error('Enter the name the others will see.'); }
      var link = await createLink($('invite-role').value, name);
      S.invites.push(link);
      save();
      $('invite-name').value = '';
      renderInvites();
    });
  });
}
