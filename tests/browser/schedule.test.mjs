// Scheduling pages in a real browser, the demo story end to end: the front desk (phone-sized
// screen) signs in with a new authenticator, opens /schedule, books the first open telemedicine
// slot of Dr. Hartwell for Robin Ellis and sees it in the day's list; a second clerk's page with
// the same, now stale, slot list tries to book it for another patient and shows the server's
// 409. Dr. Hartwell signs in, opens /schedule and joins the visit from his day list; Robin Ellis
// signs in, opens /appointments (where a later visit shows when it opens), joins from there and
// is admitted; both pages decode the other's video through the SFU. A second test: a patient
// books for themselves through a hold with a countdown, and confirms. Signed out, both pages
// send you to sign in.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launch, until, signInPage } from './harness.mjs';

const SHOTS = process.env.SCREENSHOT_DIR || '/tmp';
const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 900 };
const TYPE = 'Telemedicine wound check';
let server, browser;
const logs = [];

before(async () => { server = await startServer(); browser = await launch(); });
after(async () => { await browser?.close(); server?.stop(); });

async function report(err) {
  // A picture of every open page, for the failure report.
  let n = 0;
  for (const context of browser.contexts()) {
    for (const page of context.pages()) {
      await page.screenshot({ path: `${SHOTS}/schedule-failure-${n++}.png`, fullPage: true }).catch(() => {});
    }
  }
  console.error('--- page console ---\n' + logs.slice(-200).join('\n'));
  console.error('--- server log (tail) ---\n' + server.log().split('\n').slice(-150).join('\n'));
  throw err;
}

function watch(page, name) {
  page.on('console', (m) => logs.push(`[${name}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[${name}] pageerror: ${e.message}`));
  return page;
}

// Signs in through the sign-in page in a new browser context (staff enroll an authenticator,
// the test computing codes from the key the page shows) and follows the page's link to `path`.
async function signInAndOpen(name, username, path, viewport) {
  const context = await browser.newContext({ viewport });
  const page = watch(await context.newPage(), name);
  await signInPage(page, server.base, username, server.logins[username].password);
  await page.click(`#view-signed-in a[href="${path}"]`);
  await page.waitForURL(server.base + path);
  return { context, page };
}

// "14:05" → "2:05 PM", as the pages show wall times.
const clock = (hhmm) => {
  const h = Number(hhmm.slice(0, 2));
  return `${h % 12 === 0 ? 12 : h % 12}:${hhmm.slice(3, 5)} ${h < 12 ? 'AM' : 'PM'}`;
};

// The wall time at which an appointment's join window opens, as the pages show it.
const opensAt = (a) => {
  const early = (Date.parse(a.start) - Date.parse(a.join_opens_at)) / 60000;
  const [h, m] = a.start.slice(11, 16).split(':').map(Number);
  const min = (h * 60 + m - early + 1440) % 1440;
  return clock(`${String(Math.floor(min / 60)).padStart(2, '0')}:${String(min % 60).padStart(2, '0')}`);
};

const hartwellSlots = (page, start) => page.locator('.provider-slots')
  .filter({ has: page.locator('h3', { hasText: 'Dr. James Hartwell' }) })
  .locator(start ? `button.slot[data-start="${start}"]` : 'button.slot');

// On the staff page: Main Street, the telemedicine type, open times from today (or, late in the
// evening when today has none left, the next day). Returns the first slot's start.
async function staffSearch(page) {
  await page.waitForSelector('#view-book', { state: 'visible' });
  await page.selectOption('#location', { label: 'Main Street (Columbus)' });
  const type = await page.locator('#type option', { hasText: TYPE }).getAttribute('value');
  await page.selectOption('#type', type);
  await page.click('#find-slots');
  for (let tries = 0; ; tries++) {
    await page.waitForSelector('#slots .provider-slots, #slots-empty:not([hidden])', { timeout: 10000 });
    if (await hartwellSlots(page).count() > 0) break;
    assert.ok(tries < 1, 'Dr. Hartwell has open telemedicine times today or tomorrow');
    await page.click('#slots-next-day');
    await page.waitForSelector('#slots-next-day', { state: 'hidden' });
  }
  return hartwellSlots(page).first().getAttribute('data-start');
}

// Books the chosen patient into the first open slot of Dr. Hartwell; returns the 201 body.
// (A slot that starts while the test presses Book is refused as past: the page shows the
// fresh list, and the test takes the new first slot.)
async function bookFirst(page, patientLabel) {
  for (let attempt = 0; ; attempt++) {
    const slot = hartwellSlots(page).first();
    await slot.click();
    assert.equal(await slot.getAttribute('aria-pressed'), 'true');
    await page.waitForSelector(`#patient option:text-is("${patientLabel}")`, { state: 'attached' });
    await page.selectOption('#patient', { label: patientLabel });
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith('/api/v1/appointments') && r.request().method() === 'POST'),
      page.click('#book'),
    ]);
    if (resp.status() === 422 && attempt < 2 && (await resp.json()).code === 'start_in_past') {
      await page.waitForSelector('#slots .provider-slots');
      continue;
    }
    assert.equal(resp.status(), 201, await resp.text());
    assert.match(resp.request().headers()['idempotency-key'] || '', /^[0-9a-f]{32}$/, 'an Idempotency-Key per press');
    return resp.json();
  }
}

// The inbound-rtp stats of the video a consult page receives from participant `pid`.
function inboundVideo(page, pid) {
  return page.evaluate(async (pid) => {
    const c = window.consult;
    const stream = c && c.pc && c.remote[pid];
    if (!stream) return null;
    const ids = new Set(stream.getVideoTracks().map((t) => t.id));
    let found = null;
    (await c.pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video' && ids.has(s.trackIdentifier)) {
        if (!found || (s.packetsReceived || 0) > (found.packetsReceived || 0)) {
          found = { packetsReceived: s.packetsReceived, framesDecoded: s.framesDecoded, frameWidth: s.frameWidth };
        }
      }
    });
    return found;
  }, pid);
}
const decoded = (n) => (s) => s && s.framesDecoded >= n;

// If the slot starts more than 15 minutes from now (late evening: the next open time is after
// midnight), waits for its join window to open.
async function untilJoinOpens(appt) {
  const wait = Date.parse(appt.join_opens_at) - Date.now();
  if (wait > 0) {
    console.log(`the first open slot starts at ${appt.start}: waiting ${Math.ceil(wait / 1000)} s for its join window`);
    await new Promise((r) => setTimeout(r, wait + 1500));
  }
}

test('front desk books a video visit; provider and patient join it from their pages', { timeout: 30 * 60000 }, async () => {
  const t0 = Date.now();
  try {
    // --- The front desk, on a phone-sized screen.
    const { context: deskContext, page: desk } = await signInAndOpen('desk', 'frontdesk', '/schedule', PHONE);
    assert.match(await desk.textContent('#whoami'), /Pat Kowalski/);
    // A second clerk's page (same sign-in) lists the same open times before the booking.
    const stale = watch(await deskContext.newPage(), 'stale');
    await stale.goto(server.base + '/schedule');
    await staffSearch(stale);

    await staffSearch(desk);
    const appt = await bookFirst(desk, 'Ellis, Robin');
    assert.equal(appt.status, 'booked');
    assert.equal(appt.modality, 'telemedicine');
    assert.equal(appt.provider_name, 'Dr. James Hartwell');
    assert.ok(appt.consult_id && appt.join_opens_at, 'a telemedicine appointment has a consult and a join window');
    const time = clock(appt.start.slice(11, 16));
    await desk.waitForSelector('#book-message.info', { state: 'visible' });
    assert.match(await desk.textContent('#book-message'), new RegExp(`Booked: Robin Ellis, ${TYPE} .* at ${time} with Dr. James Hartwell`));
    // The day's list shows it (the day of the slot, even when that is tomorrow).
    const row = desk.locator(`#appt-${appt.id}`);
    await row.waitFor({ state: 'visible' });
    assert.equal(await desk.inputValue('#date'), appt.start.slice(0, 10));
    const text = await row.textContent();
    for (const want of [time, 'Robin Ellis', TYPE, 'Dr. James Hartwell', 'Booked']) assert.ok(text.includes(want), `${want} in "${text}"`);
    assert.equal(await desk.locator(`#join-${appt.id}`).count(), 0, 'the front desk does not join visits');
    assert.equal(await desk.locator(`#check-in-${appt.id}`).count(), 1);
    // The booked time is no longer offered.
    await until(() => hartwellSlots(desk, appt.start).count(), (n) => n === 0, 5000, 'the booked slot gone from the list');
    await desk.screenshot({ path: `${SHOTS}/schedule-desk-booked.png`, fullPage: true });

    // --- The stale page books the same slot for another patient: the server's 409 detail shows.
    const taken = hartwellSlots(stale, appt.start);
    await taken.click();
    await stale.waitForSelector('#patient option:text-is("Moreau, Alex")', { state: 'attached' });
    await stale.selectOption('#patient', { label: 'Moreau, Alex' });
    const [refused] = await Promise.all([
      stale.waitForResponse((r) => r.url().endsWith('/api/v1/appointments') && r.request().method() === 'POST'),
      stale.click('#book'),
    ]);
    assert.equal(refused.status(), 409);
    const problem = await refused.json();
    assert.equal(problem.code, 'slot_unavailable');
    await stale.waitForSelector('#book-message:not([hidden]):not(.info)');
    const shown = await stale.textContent('#book-message');
    assert.match(shown, /^The provider already has an appointment from /);
    assert.ok(shown.includes(time), `the wall time ${time} in "${shown}" (server: "${problem.detail}")`);
    // …and the page lists what is open now, without the taken time.
    await until(() => taken.count(), (n) => n === 0, 5000, 'the taken slot gone from the stale page');
    await stale.screenshot({ path: `${SHOTS}/schedule-desk-conflict.png`, fullPage: true });
    await stale.close();

    // A later video visit for the same patient (booked over the API from the page), to show a
    // join button that is not open yet.
    const later = await desk.evaluate(async ({ first }) => {
      const q = new URLSearchParams({ location_id: first.location_id, type_id: first.type_id, provider_id: first.provider_id, from: first.start.slice(0, 10), days: '2' });
      const slots = await (await fetch('/api/v1/slots?' + q)).json();
      const slot = slots.find((s) => Date.parse(s.start) >= Date.parse(first.start) + 3 * 3600 * 1000);
      const res = await fetch('/api/v1/appointments', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Idempotency-Key': 'later-' + Date.now() },
        body: JSON.stringify({ type_id: slot.type_id, location_id: slot.location_id, provider_id: slot.provider_id, patient_id: first.patient_id, start: slot.start }),
      });
      return { status: res.status, body: await res.json() };
    }, { first: appt });
    assert.equal(later.status, 201, JSON.stringify(later.body));

    await untilJoinOpens(appt);

    // --- Dr. Hartwell joins from his schedule.
    const { page: provider } = await signInAndOpen('provider', 'dr.hartwell', '/schedule', DESKTOP);
    await provider.waitForSelector('#view-day', { state: 'visible' });
    assert.equal(await provider.locator('#location option:checked').textContent(), 'Main Street (Columbus)');
    if (await provider.inputValue('#date') !== appt.start.slice(0, 10)) await provider.fill('#date', appt.start.slice(0, 10));
    await provider.waitForSelector(`#join-${appt.id}`, { state: 'visible' });
    assert.match(await provider.textContent(`#appt-${appt.id}`), /Robin Ellis/);
    // The later visit (when it is on the same day) waits for its window, and says when it opens.
    if (later.body.start.slice(0, 10) === appt.start.slice(0, 10)) {
      const laterJoin = provider.locator(`#join-${later.body.id}`);
      assert.ok(await laterJoin.isDisabled());
      assert.equal(await laterJoin.textContent(), `Video opens ${opensAt(later.body)}`);
    }
    await provider.screenshot({ path: `${SHOTS}/schedule-provider.png`, fullPage: true });
    await provider.click(`#join-${appt.id}`);
    await provider.waitForURL(/\/consult\/provider$/);
    await provider.waitForFunction(() => window.consult && window.consult.state === 'in-call', null, { timeout: 20000 });

    // --- Robin Ellis joins from her appointments page (patients sign in without MFA).
    const { page: patient } = await signInAndOpen('patient', 'patient.ellis', '/appointments', PHONE);
    const mine = patient.locator(`#upcoming #appt-${appt.id}`);
    await mine.waitFor({ state: 'visible' });
    const mineText = await mine.textContent();
    for (const want of [time, TYPE, 'Dr. James Hartwell', 'Video visit']) assert.ok(mineText.includes(want), `${want} in "${mineText}"`);
    // The later visit's button waits for its window, and says when it opens.
    const laterJoin = patient.locator(`#join-${later.body.id}`);
    assert.ok(await laterJoin.isDisabled(), 'the later visit cannot be joined yet');
    assert.match(await patient.textContent(`#opens-${later.body.id}`), new RegExp(`You can join from .*${opensAt(later.body)}\\.`));
    await patient.waitForSelector('#view-messages', { state: 'visible' });
    await patient.screenshot({ path: `${SHOTS}/appointments-patient.png`, fullPage: true });
    assert.ok(await patient.isEnabled(`#join-${appt.id}`));
    await patient.click(`#join-${appt.id}`);
    await patient.waitForURL(/\/consult\/join$/);
    await patient.waitForSelector('#waiting', { state: 'visible', timeout: 20000 });
    const patientId = await patient.evaluate(() => window.consult.participant);
    const providerId = await provider.evaluate(() => window.consult.participant);
    assert.ok(patientId && providerId);

    // The provider admits the patient; both decode the other's video.
    await provider.click(`#admit-${patientId}`, { timeout: 10000 });
    await patient.waitForFunction(() => window.consult.state === 'in-call', null, { timeout: 10000 });
    await until(() => inboundVideo(patient, providerId), decoded(30), 20000, "the provider's video on the patient page");
    await until(() => inboundVideo(provider, patientId), decoded(30), 20000, "the patient's video on the provider page");
    await provider.screenshot({ path: `${SHOTS}/schedule-consult-provider.png`, fullPage: true });
    await patient.screenshot({ path: `${SHOTS}/schedule-consult-patient.png`, fullPage: true });
    for (const page of [desk, provider, patient]) await page.context().close();
    console.log(`demo story took ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  } catch (err) { await report(err); }
});

test('a patient books a visit for themselves: hold with a countdown, then confirm', { timeout: 120000 }, async () => {
  try {
    const { page } = await signInAndOpen('moreau', 'patient.moreau', '/appointments', PHONE);
    await page.waitForSelector('#view-book', { state: 'visible' });
    const type = await page.locator('#type option', { hasText: TYPE }).getAttribute('value');
    await page.selectOption('#type', type);
    await page.click('#find-slots');
    for (let tries = 0; ; tries++) {
      await page.waitForSelector('#slots .provider-slots, #slots-empty:not([hidden])', { timeout: 10000 });
      if (await page.locator('#slots button.slot').count() > 0) break;
      assert.ok(tries < 1, 'open times today or tomorrow');
      await page.click('#slots-next-day');
      await page.waitForSelector('#slots-next-day', { state: 'hidden' });
    }
    // Lakeside is Alex Moreau's clinic: Dr. Nguyen's times.
    assert.match(await page.textContent('#slots .provider-slots h3'), /Dr\. Linh Nguyen/);
    const slot = page.locator('#slots button.slot').nth(1);
    const start = await slot.getAttribute('data-start');
    const [held] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith('/api/v1/me/holds')),
      slot.click(),
    ]);
    assert.equal(held.status(), 201, await held.text());
    const hold = await held.json();
    assert.equal(hold.status, 'held');
    await page.waitForSelector('#hold', { state: 'visible' });
    assert.ok((await page.textContent('#hold-text')).includes(clock(start.slice(11, 16))));
    const first = await page.textContent('#countdown');
    assert.match(first, /^[45]:\d\d$/, `about five minutes to confirm: ${first}`);
    await until(() => page.textContent('#countdown'), (t) => t !== first, 3000, 'the countdown to move');
    await page.screenshot({ path: `${SHOTS}/appointments-hold.png`, fullPage: true });
    const [confirmed] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith('/api/v1/me/appointments') && r.request().method() === 'POST'),
      page.click('#confirm'),
    ]);
    assert.equal(confirmed.status(), 201, await confirmed.text());
    assert.deepEqual(confirmed.request().postDataJSON(), { hold_id: hold.id });
    await page.waitForSelector('#book-message.info', { state: 'visible' });
    assert.match(await page.textContent('#book-message'), /Your visit is booked/);
    await page.waitForSelector(`#upcoming #appt-${hold.id}`, { state: 'visible' });
    assert.ok(await page.isHidden('#hold'));
    await page.screenshot({ path: `${SHOTS}/appointments-booked.png`, fullPage: true });
    await page.context().close();
  } catch (err) { await report(err); }
});

test('both pages ask to sign in first', async () => {
  const page = await browser.newPage({ viewport: PHONE });
  for (const path of ['/schedule', '/appointments']) {
    await page.goto(server.base + path);
    await page.waitForSelector('#view-signin', { state: 'visible' });
    assert.equal(await page.getAttribute('#view-signin a', 'href'), '/');
  }
  await page.close();
});
