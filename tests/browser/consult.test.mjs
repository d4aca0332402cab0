// Video consult pages in a real browser, media through the clinic's own SFU: a provider (simulcast),
// a patient and a caregiver join one consult from their links in separate browser contexts (fake
// camera and microphone). The provider admits the others from the waiting room; every page decodes
// the others' video and receives their audio; a patient asking for low data gets the provider's
// low simulcast layer while the caregiver keeps a higher one; an ICE restart, a dropped signaling
// connection and a page reload each keep video going.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launch, signIn, until } from './harness.mjs';

const SHOTS = process.env.SCREENSHOT_DIR || '/tmp';
let server, browser, api;
const logs = [];

before(async () => {
  server = await startServer();
  browser = await launch();
  api = await signIn(server.base, 'dr.hartwell', server.logins['dr.hartwell'].password);
});
after(async () => { await browser?.close(); server?.stop(); });

async function openPage(name, path, viewport, cookies) {
  const context = await browser.newContext({ viewport });
  if (cookies) await context.addCookies(cookies);
  const page = await context.newPage();
  page.on('console', (m) => logs.push(`[${name}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[${name}] pageerror: ${e.message}`));
  await page.goto(server.base + path);
  return page;
}

async function newConsult() {
  const locations = await api.call('GET', '/api/v1/locations');
  const main = locations.find((l) => l.name === 'Main Street (Columbus)');
  assert.ok(main, 'the demo location exists');
  const consult = await api.call('POST', '/api/v1/consults', { location_id: main.id });
  const link = (role, display_name) => api.call('POST', `/api/v1/consults/${consult.id}/links`, { role, display_name });
  return { consult, link };
}

// The inbound-rtp stats of the track a page receives from participant `pid` (its busiest entry),
// with the frames decoded by each SSRC it has received: a receiver whose sender changed SSRC
// (the SFU's new stream after a participant came back) starts a new entry from zero.
function inbound(page, pid, kind) {
  return page.evaluate(async ({ pid, kind }) => {
    const c = window.consult;
    const stream = c && c.pc && c.remote[pid];
    if (!stream) return null;
    const tracks = kind === 'video' ? stream.getVideoTracks() : stream.getAudioTracks();
    const ids = new Set(tracks.map((t) => t.id));
    let found = null;
    const bySsrc = {};
    (await c.pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === kind && ids.has(s.trackIdentifier)) {
        bySsrc[s.ssrc] = s.framesDecoded || 0;
        if (!found || (s.packetsReceived || 0) > (found.packetsReceived || 0)) {
          found = {
            packetsReceived: s.packetsReceived, framesDecoded: s.framesDecoded,
            frameWidth: s.frameWidth, frameHeight: s.frameHeight, bytesReceived: s.bytesReceived,
          };
        }
      }
    });
    if (found) found.bySsrc = bySsrc;
    return found;
  }, { pid, kind });
}

const decoded = (n) => (s) => s && s.framesDecoded >= n;
// At least n frames decoded since `before`, over every SSRC (old ones counted from where they were).
const decodedSince = (before, n) => (s) => s && Object.entries(s.bySsrc)
  .reduce((sum, [ssrc, frames]) => sum + frames - ((before && before.bySsrc[ssrc]) || 0), 0) >= n;
const heard = (s) => s && s.packetsReceived > 0;

// Every video receiver of a page, for a failure report: its transceiver, track and each
// inbound-rtp entry (a receiver has one per SSRC it has seen).
function videoReceivers(page) {
  return page.evaluate(async () => {
    const c = window.consult;
    const owner = {};
    for (const [pid, stream] of Object.entries(c.remote || {})) for (const t of stream.getTracks()) owner[t.id] = pid;
    const stats = [];
    const now = performance.timeOrigin + performance.now();
    (await c.pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        stats.push({ ssrc: s.ssrc, mid: s.mid, track: s.trackIdentifier, from: owner[s.trackIdentifier], packets: s.packetsReceived,
          lost: s.packetsLost, frames: s.framesDecoded, keyframes: s.keyFramesDecoded, plis: s.pliCount, nacks: s.nackCount,
          firs: s.firCount, dropped: s.framesDropped, lastPacketAgoMs: s.lastPacketReceivedTimestamp ? Math.round(now - s.lastPacketReceivedTimestamp) : null });
      }
    });
    const transceivers = c.pc.getTransceivers().map((t) => ({ mid: t.mid, direction: t.direction, current: t.currentDirection,
      kind: t.receiver.track.kind, track: t.receiver.track.id, muted: t.receiver.track.muted, state: t.receiver.track.readyState,
      from: owner[t.receiver.track.id] }));
    return { signaling: c.pc.signalingState, ice: c.pc.iceConnectionState, stats, transceivers };
  });
}

function report(err) {
  console.error('--- page console ---\n' + logs.slice(-200).join('\n'));
  console.error('--- server log (tail) ---\n' + server.log().split('\n').slice(-150).join('\n'));
  throw err;
}

test('provider, patient and caregiver: admit, media, low data, ICE restart, resume, reload', { timeout: 180000 }, async () => {
  const { link } = await newConsult();
  const prov = await link('provider', 'Dr. James Hartwell');
  const pat = await link('patient', 'Robin Ellis');
  const care = await link('caregiver', 'Jo Ellis');
  assert.match(prov.url, /^\/consult\/provider#/);
  assert.match(pat.url, /^\/consult\/join#/);

  try {
    const provider = await openPage('provider', prov.url, { width: 1280, height: 900 });
    await provider.waitForFunction(() => window.consult && window.consult.state === 'in-call', null, { timeout: 20000 });
    const patient = await openPage('patient', pat.url, { width: 390, height: 844 });
    const caregiver = await openPage('caregiver', care.url, { width: 768, height: 1024 });

    // Both wait until the provider lets them in.
    for (const page of [patient, caregiver]) {
      await page.waitForSelector('#waiting', { state: 'visible', timeout: 20000 });
      assert.match(await page.textContent('#waiting'), /provider will let you in shortly/);
    }
    await provider.click(`#admit-${pat.participant_id}`, { timeout: 10000 });
    await provider.click(`#admit-${care.participant_id}`, { timeout: 10000 });
    for (const page of [patient, caregiver]) {
      await page.waitForFunction(() => window.consult.state === 'in-call', null, { timeout: 10000 });
    }

    // (a) Everyone decodes the others' video and receives their audio.
    await until(() => inbound(patient, prov.participant_id, 'video'), decoded(60), 20000, "the provider's video on the patient page");
    await until(() => inbound(patient, prov.participant_id, 'audio'), heard, 5000, "the provider's audio on the patient page");
    await until(() => inbound(provider, pat.participant_id, 'video'), decoded(60), 20000, "the patient's video on the provider page");
    await until(() => inbound(provider, pat.participant_id, 'audio'), heard, 5000, "the patient's audio on the provider page");
    await until(() => inbound(caregiver, prov.participant_id, 'video'), decoded(60), 20000, "the provider's video on the caregiver page");

    // The provider sees both in the roster, with the SFU's stats.
    await provider.waitForSelector(`#stats-${pat.participant_id}:has-text("Connected")`, { timeout: 10000 });
    assert.equal(await provider.locator('#roster li').count(), 3);

    // (b) Low data: the patient gets the provider's low layer, the caregiver a higher one.
    await patient.click('#low-data');
    assert.equal(await patient.getAttribute('#low-data', 'aria-pressed'), 'true');
    const low = await until(() => inbound(patient, prov.participant_id, 'video'), (s) => s && s.frameWidth > 0 && s.frameWidth <= 320, 15000, 'the low layer on the patient page');
    const normal = await until(() => inbound(caregiver, prov.participant_id, 'video'), (s) => s && s.frameWidth > 320, 15000, 'a higher layer on the caregiver page');
    console.log(`low data: patient receives ${low.frameWidth}x${low.frameHeight}, caregiver ${normal.frameWidth}x${normal.frameHeight}`);

    // (c) A forced ICE restart on the patient page: new credentials, video keeps decoding.
    const before = await inbound(patient, prov.participant_id, 'video');
    const ufrag = () => patient.evaluate(() => (window.consult.pc.localDescription.sdp.match(/a=ice-ufrag:(\S+)/) || [])[1]);
    const ufragBefore = await ufrag();
    await patient.evaluate(() => window.consult.restartIce());
    assert.notEqual(await ufrag(), ufragBefore, 'the restart offered new ICE credentials');
    await until(() => inbound(patient, prov.participant_id, 'video'), decodedSince(before, 30), 15000, 'video after the ICE restart');
    assert.equal(await patient.evaluate(() => window.consult.pc.iceConnectionState), 'connected');

    // (d) The patient's signaling connection drops: a visible banner, a resume within the grace
    // period (no re-admission), an ICE restart, and video goes on.
    const beforeDrop = await inbound(patient, prov.participant_id, 'video');
    await patient.evaluate(() => window.consult.ws.close());
    await patient.waitForSelector('#reconnecting', { state: 'visible', timeout: 2000 });
    await patient.waitForFunction(() => window.consult.state === 'in-call' && window.consult.ws && window.consult.ws.readyState === 1, null, { timeout: 15000 });
    assert.ok(await patient.isHidden('#reconnecting'));
    await until(() => inbound(patient, prov.participant_id, 'video'), decodedSince(beforeDrop, 30), 15000, 'video after resuming');

    // (e) The caregiver reloads the page (the link's code is spent; the page resumes from the
    // session it kept): back in without re-admission, with a new media session both ways.
    const linesBefore = await provider.evaluate(() => window.consult.pc.remoteDescription.sdp.split('\r\n').filter((l) => l.startsWith('m=')));
    const careBefore = await inbound(provider, care.participant_id, 'video');
    await caregiver.reload();
    await caregiver.waitForFunction(() => window.consult && window.consult.state === 'in-call', null, { timeout: 15000 });
    await until(() => inbound(caregiver, prov.participant_id, 'video'), decoded(30), 15000, "the provider's video after the caregiver's reload");
    try {
      await until(() => inbound(provider, care.participant_id, 'video'), decodedSince(careBefore, 30), 15000, "the caregiver's new video on the provider page");
    } catch (e) {
      console.error(`before the reload: ${JSON.stringify(careBefore)}`);
      console.error(`provider: ${JSON.stringify(await videoReceivers(provider), null, 1)}`);
      console.error(`caregiver: ${JSON.stringify(await caregiver.evaluate(async () => {
        const out = [];
        (await window.consult.pc.getStats()).forEach((s) => { if (s.type === 'outbound-rtp' && s.kind === 'video') out.push({ rid: s.rid, ssrc: s.ssrc, packets: s.packetsSent, frames: s.framesEncoded, keyframes: s.keyFramesEncoded, plis: s.pliCount, limit: s.qualityLimitationReason, active: s.active }); });
        return out;
      }), null, 1)}`);
      throw e;
    }
    // The SFU replaced the caregiver's old media session, and the caregiver's new tracks came to
    // the provider on the m-lines that carried the old ones (paused, then sending again): the
    // provider's page keeps its transceivers and the caregiver's tile, and repeated reloads
    // neither pile up dead tracks nor grow the SDP.
    const after = await until(() => provider.evaluate(() => ({
      transceivers: window.consult.pc.getTransceivers().length,
      lines: window.consult.pc.remoteDescription.sdp.split('\r\n').filter((l) => l.startsWith('m=')),
      tiles: document.querySelectorAll('#remote .tile').length,
    })), (n) => n.transceivers === 6 && n.lines.length === linesBefore.length && n.tiles === 2, 10000, "the caregiver's m-lines taken back on the provider page");
    assert.ok(!after.lines.some((l) => l.split(' ')[1] === '0'), `no m-line stopped: ${after.lines}`);
    console.log(`after the reload the provider has ${after.transceivers} transceivers and ${after.lines.length} m-lines, as before`);

    await provider.screenshot({ path: `${SHOTS}/consult-provider.png`, fullPage: true });
    await patient.screenshot({ path: `${SHOTS}/consult-patient.png`, fullPage: true });
    await caregiver.screenshot({ path: `${SHOTS}/consult-caregiver.png`, fullPage: true });
    for (const page of [provider, patient, caregiver]) await page.context().close();
  } catch (err) { report(err); }
});

test('camera blocked: help, then audio only', async () => {
  const { link } = await newConsult();
  const pat = await link('patient', 'Robin Ellis');
  const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
  // The browser refuses the camera (as after "Block"), but allows a microphone-only request.
  await context.addInitScript(() => {
    const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
    navigator.mediaDevices.getUserMedia = (c) => (c && c.video)
      ? Promise.reject(new DOMException('Permission denied', 'NotAllowedError'))
      : real(c);
  });
  const page = await context.newPage();
  page.on('console', (m) => logs.push(`[blocked] ${m.type()}: ${m.text()}`));
  await page.goto(server.base + pat.url);
  await page.waitForSelector('#media-help', { state: 'visible' });
  assert.match(await page.textContent('#media-help'), /blocking the camera or microphone/);
  await page.screenshot({ path: `${SHOTS}/consult-camera-blocked.png`, fullPage: true });
  await page.click('#continue-audio');
  await page.waitForSelector('#waiting', { state: 'visible', timeout: 15000 });
  assert.equal(await page.evaluate(() => window.consult.local.getVideoTracks().length), 0);
  assert.equal(await page.evaluate(() => window.consult.local.getAudioTracks().length), 1);
  await context.close();
});

test('a used link shows a clear message', async () => {
  const { link } = await newConsult();
  const pat = await link('patient', 'Robin Ellis');
  // Spend the code over the API, as the first page load would.
  await api.call('POST', '/api/v1/consults/join', { code: pat.url.split('#')[1] });
  const page = await openPage('reuse', pat.url, { width: 390, height: 844 });
  await page.waitForSelector('#message:not([hidden])');
  assert.match(await page.textContent('#message'), /already been used/);
  assert.equal(await page.evaluate(() => location.hash), '', 'the code is not left in the address bar');
  await page.context().close();
});

test('a signed-in provider starts a consult from the page', { timeout: 60000 }, async () => {
  const anon = await openPage('anon', '/consult/provider', { width: 390, height: 844 });
  await anon.waitForSelector('#view-signin', { state: 'visible' });
  await anon.context().close();

  const [name, value] = api.cookie().split(';')[0].split('=');
  // The session cookie is `__Host-`: Secure, Path=/, no Domain (a url-only cookie would not be
  // Secure over http, and Chromium would refuse the name).
  const host = new URL(server.base).hostname;
  const cookie = { name, value, domain: host, path: '/', secure: true, httpOnly: true, sameSite: 'Strict' };
  const page = await openPage('start', '/consult/provider', { width: 1280, height: 900 }, [cookie]);
  try {
    await page.waitForSelector('#start', { state: 'visible' });
    assert.match(await page.textContent('#location'), /Main Street \(Columbus\)/);
    await page.fill('#patient-name', 'Alex Moreau');
    await page.click('#start');
    await page.waitForFunction(() => window.consult.state === 'in-call', null, { timeout: 20000 });
    const url = await page.textContent('#patient-link');
    assert.ok(url.startsWith(server.base + '/consult/join#'), url);
    // The patient link works: the patient lands in the waiting room, and the provider sees them.
    const patient = await openPage('started-patient', url.slice(server.base.length), { width: 390, height: 844 });
    await patient.waitForSelector('#waiting', { state: 'visible', timeout: 20000 });
    await page.waitForSelector('#waiting-list li:has-text("Alex Moreau")', { timeout: 10000 });
    await page.screenshot({ path: `${SHOTS}/consult-provider-start.png`, fullPage: true });
    await patient.context().close();
  } catch (err) { report(err); }
  await page.context().close();
});

// A network that blocks UDP: the patient page only ever learns the SFU's TCP candidates (the test
// strips every UDP candidate from what the server sends), so the SFU is reachable over ICE-TCP
// (RFC 4571) alone. The call must connect that way and both sides decode video.
test('a patient whose network blocks UDP connects over ICE-TCP', { timeout: 90000 }, async () => {
  const { link } = await newConsult();
  const prov = await link('provider', 'Dr. James Hartwell');
  const pat = await link('patient', 'Robin Ellis');
  const noUdp = (sdp) => sdp.split('\r\n').filter((l) => !(/^a=candidate:/.test(l) && / udp /i.test(l))).join('\r\n');
  let stripped = 0;
  try {
    const provider = await openPage('provider-tcp', prov.url, { width: 1280, height: 900 });
    await provider.waitForFunction(() => window.consult && window.consult.state === 'in-call', null, { timeout: 20000 });

    const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
    const patient = await context.newPage();
    patient.on('console', (m) => logs.push(`[patient-tcp] ${m.type()}: ${m.text()}`));
    await patient.routeWebSocket(/\/api\/v1\/consults\/ws/, (ws) => {
      const upstream = ws.connectToServer();
      ws.onMessage((m) => upstream.send(m));
      upstream.onMessage((m) => {
        let msg;
        try { msg = JSON.parse(m); } catch (e) { ws.send(m); return; }
        if ((msg.type === 'offer' || msg.type === 'answer') && typeof msg.sdp === 'string') {
          const before = msg.sdp;
          msg.sdp = noUdp(msg.sdp);
          if (msg.sdp !== before) stripped++;
          ws.send(JSON.stringify(msg));
        } else if (msg.type === 'candidate' && / udp /i.test(String(msg.candidate))) {
          stripped++;
        } else ws.send(m);
      });
    });
    await patient.goto(server.base + pat.url);
    await patient.waitForSelector('#waiting', { state: 'visible', timeout: 20000 });
    await provider.click(`#admit-${pat.participant_id}`, { timeout: 10000 });
    await patient.waitForFunction(() => window.consult.state === 'in-call', null, { timeout: 10000 });

    await until(() => inbound(patient, prov.participant_id, 'video'), decoded(60), 20000, "the provider's video over ICE-TCP");
    await until(() => inbound(patient, prov.participant_id, 'audio'), heard, 5000, "the provider's audio over ICE-TCP");
    await until(() => inbound(provider, pat.participant_id, 'video'), decoded(60), 20000, "the patient's video (sent over ICE-TCP) on the provider page");
    assert.ok(stripped > 0, 'the server offered UDP candidates, and the test withheld them');

    // The selected pair on the patient page is TCP, and the provider sees it in the roster.
    const pair = await patient.evaluate(async () => {
      const stats = await window.consult.pc.getStats();
      let pair = null;
      stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
      if (!pair) return null;
      const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
      return { local: local && local.protocol, remote: remote && remote.protocol, tcpType: local && local.tcpType };
    });
    assert.deepEqual(pair && [pair.local, pair.remote], ['tcp', 'tcp'], `selected pair ${JSON.stringify(pair)}`);
    await provider.waitForSelector(`#stats-${pat.participant_id}:has-text("over TCP")`, { timeout: 10000 });
    await patient.screenshot({ path: `${SHOTS}/consult-patient-tcp.png`, fullPage: true });
    await provider.context().close();
    await context.close();
  } catch (err) { report(err); }
});
