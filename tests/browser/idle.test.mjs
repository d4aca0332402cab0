// Idle sign-out in a real browser, on a tablet-sized screen: with a 20-second idle timeout, the
// front desk's open /schedule page keeps refreshing itself in the background, yet warns before
// the timeout, stays signed in when asked to (and while someone types on the page), and
// otherwise signs out and reloads to the sign-in prompt; the server has ended the session.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launch, signInPage } from './harness.mjs';

const TABLET = { width: 820, height: 1180 };
const IDLE_SECS = 20;
let server, browser;
const logs = [];

before(async () => {
  server = await startServer({ CLINIC_SESSIONS__IDLE_TIMEOUT_SECS: String(IDLE_SECS) });
  browser = await launch();
});
after(async () => { await browser?.close(); server?.stop(); });

test('an open page warns, can stay signed in, and signs out when idle', async () => {
  const context = await browser.newContext({ viewport: TABLET });
  const page = await context.newPage();
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  const background = [];
  try {
    await signInPage(page, server.base, 'frontdesk', server.logins.frontdesk.password);
    await page.goto(server.base + '/schedule');
    await page.waitForSelector('#view-day:not([hidden])');
    const session = async () => (await context.request.get(server.base + '/api/v1/auth/session')).status();
    assert.equal(await session(), 200);

    // Nothing done: the warning comes before the timeout, with a way to stay.
    await page.waitForSelector('.idle-warning', { state: 'visible', timeout: IDLE_SECS * 1000 });
    assert.match(await page.textContent('.idle-warning'), /signed out in \d+ seconds?/);
    await page.click('.idle-warning button');
    await page.waitForSelector('.idle-warning', { state: 'detached' });

    // Typing on the page is activity: past a whole idle timeout of it, still signed in.
    const typingUntil = Date.now() + (IDLE_SECS + 6) * 1000;
    while (Date.now() < typingUntil) {
      await page.keyboard.press('Shift');
      await page.waitForTimeout(1000);
    }
    assert.equal(await page.isVisible('#view-day'), true, 'still on the schedule');
    assert.equal(await page.locator('.idle-warning').count(), 0, 'no warning while working');

    // Left alone again, with background refreshes going on (as the page's own timer sends
    // them, every 2 s here): warned, then signed out, the page reloaded to its sign-in prompt.
    const refresh = setInterval(() => {
      page.evaluate(() => fetch('/api/v1/auth/session', { headers: { 'X-Clinic-Background': '1' } }).then((r) => r.status))
        .then((status) => background.push(status)).catch(() => {});
    }, 2000);
    try {
      await page.waitForSelector('.idle-warning', { state: 'visible', timeout: IDLE_SECS * 1000 });
      await page.waitForSelector('#view-signin:not([hidden])', { timeout: IDLE_SECS * 1000 });
    } finally { clearInterval(refresh); }
    assert.match(await page.textContent('#signin-text'), /signed out because nothing was done/);
    assert.equal(await page.isVisible('#view-day'), false);
    assert.equal(await session(), 401, 'the server ended the session');
    // Background refreshes were answered (200) while signed in, and kept nothing alive.
    assert.ok(background.filter((s) => s === 200).length >= 3, `background refreshes: ${background}`);
  } catch (err) {
    await page.screenshot({ path: '/tmp/idle-failure.png', fullPage: true }).catch(() => {});
    console.error('--- page console ---\n' + logs.slice(-100).join('\n'));
    console.error('--- server log (tail) ---\n' + server.log().split('\n').slice(-80).join('\n'));
    throw err;
  } finally {
    await context.close();
  }
});
