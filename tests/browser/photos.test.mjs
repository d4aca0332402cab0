// The patient photo page on a phone-sized screen: a patient signed in through the sign-in page
// sends a camera photo (a JPEG the browser itself encodes) over a throttled connection, watches
// the progress bar move, sees the thumbnail come back through its signed URL; a file that is not
// a photo, whatever its name, and a HEIC photo each get a clear message.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launch, until } from './harness.mjs';

const SHOTS = process.env.SCREENSHOT_DIR || '/tmp';
let server, browser;
before(async () => { server = await startServer(); browser = await launch(); });
after(async () => { await browser?.close(); server?.stop(); });

async function signedInPatient() {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const page = await context.newPage();
  await page.goto(server.base + '/');
  await page.fill('#username', 'patient.ellis');
  await page.fill('#password', server.logins['patient.ellis'].password);
  await page.click('#login-submit');
  await page.waitForSelector('#patient-links a', { state: 'visible' });
  await page.click('#patient-links a');
  await page.waitForSelector('#view-upload', { state: 'visible' });
  return { context, page };
}

// A 2400×1800 photo-like JPEG, encoded by the browser's own canvas.
async function cameraJpeg(page) {
  const b64 = await page.evaluate(async () => {
    const c = document.createElement('canvas');
    c.width = 2400; c.height = 1800;
    const g = c.getContext('2d');
    for (let i = 0; i < 4000; i++) {
      g.fillStyle = `hsl(${(i * 37) % 360},60%,${30 + (i % 40)}%)`;
      g.fillRect((i * 97) % 2400, (i * 61) % 1800, 40 + (i % 90), 30 + (i % 70));
    }
    const blob = await new Promise((ok) => c.toBlob(ok, 'image/jpeg', 0.92));
    const bytes = new Uint8Array(await blob.arrayBuffer());
    let s = '';
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  });
  return Buffer.from(b64, 'base64');
}

test('a patient sends a photo with a progress bar and sees it come back', { timeout: 90000 }, async () => {
  const { context, page } = await signedInPatient();
  const photo = await cameraJpeg(page);
  assert.ok(photo.length > 300000, `a realistic photo size: ${photo.length} bytes`);
  // A slow uplink (about 250 KB/s), so the progress is visible.
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 40, downloadThroughput: -1, uploadThroughput: 250 * 1024 });
  const seen = [];
  const sampler = setInterval(async () => {
    try { seen.push(await page.textContent('#progress-text')); } catch (e) { /* page busy */ }
  }, 100);
  await page.setInputFiles('#file', { name: 'IMG_2041.JPG', mimeType: 'image/jpeg', buffer: photo });
  await page.waitForSelector('#message.info', { timeout: 60000 });
  clearInterval(sampler);
  assert.match(await page.textContent('#message'), /sent to your care team/);
  const partial = seen.filter((t) => /Sending… (\d+)%/.test(t || '')).map((t) => Number(t.match(/(\d+)%/)[1]));
  assert.ok(partial.some((p) => p > 0 && p < 100), `the progress bar moved: ${JSON.stringify(seen.slice(0, 20))}`);
  // The thumbnail loads through its signed URL.
  const img = await until(() => page.evaluate(() => {
    const i = document.querySelector('#photos img');
    return i && i.complete ? { w: i.naturalWidth, h: i.naturalHeight, src: i.getAttribute('src') } : null;
  }), (v) => v && v.w > 0, 15000, 'the thumbnail');
  assert.deepEqual([img.w, img.h], [256, 192]);
  assert.match(img.src, /^\/api\/v1\/image-files\//);
  await page.screenshot({ path: `${SHOTS}/photos-sent.png`, fullPage: true });
  await context.close();
});

test('files that are not usable photos get a clear message', async () => {
  const { context, page } = await signedInPatient();
  await page.waitForSelector('#view-list', { state: 'visible' });
  const before = await page.locator('#photos li').count();
  await page.setInputFiles('#file', { name: 'wound.jpg', mimeType: 'image/jpeg', buffer: Buffer.from('%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>>') });
  await page.waitForSelector('#message:not([hidden]):not(.info)');
  assert.match(await page.textContent('#message'), /not a photo we can use/);
  const heic = Buffer.concat([Buffer.from([0, 0, 0, 0x18]), Buffer.from('ftypheic\0\0\0\0mif1heic'), Buffer.alloc(64)]);
  await page.setInputFiles('#file', { name: 'IMG_2042.HEIC', mimeType: 'image/heic', buffer: heic });
  await page.waitForFunction(() => /Most Compatible/.test(document.querySelector('#message').textContent));
  await page.screenshot({ path: `${SHOTS}/photos-refused.png`, fullPage: true });
  // Nothing was stored for either.
  await page.reload();
  await page.waitForSelector('#view-list', { state: 'visible' });
  assert.equal(await page.locator('#photos li').count(), before);
  await context.close();
});

test('the page asks to sign in first', async () => {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  await page.goto(server.base + '/photos');
  await page.waitForSelector('#view-signin', { state: 'visible' });
  await page.close();
});
