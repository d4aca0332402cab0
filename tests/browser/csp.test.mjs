// The pages' Content-Security-Policy in a real browser: every page loads and runs its own
// modules without a single violation, while a script, an event handler or a style written into
// the page itself (as an injection would) does not run, and the page cannot reach another host.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launch } from './harness.mjs';

let server, browser;
before(async () => { server = await startServer(); browser = await launch(); });
after(async () => { await browser?.close(); server?.stop(); });

const PAGES = ['/', '/photos', '/schedule', '/appointments', '/consult/join', '/consult/provider'];

// A page that records every CSP violation in window.violations (an init script is the browser's
// own, which the policy does not govern).
async function watchedPage() {
  const page = await browser.newPage();
  await page.addInitScript(() => {
    window.violations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.violations.push({ directive: e.effectiveDirective, blocked: e.blockedURI, sample: e.sample });
    });
  });
  return page;
}

const violations = (page) => page.evaluate(() => window.violations);

// What an injection would write into the sign-in page: an inline script, an inline handler, an
// inline style.
const INJECTED = '<script>window.inlineRan = true;</script>' +
  '<button id="injected-button" type="button" onclick="window.handlerRan = true">x</button>' +
  '<p id="injected-style" style="color: rgb(255, 0, 0)">x</p>';

// Serves the sign-in page from its own URL with INJECTED added, with the server's headers
// (so its CSP) or, for the control, without the CSP.
async function injectedSignIn(page, { keepCsp }) {
  await page.route(server.base + '/', async (route) => {
    const response = await route.fetch();
    const headers = { ...response.headers() };
    if (!keepCsp) delete headers['content-security-policy'];
    const body = (await response.text()).replace('</main>', INJECTED + '</main>');
    await route.fulfill({ response, headers, body });
  });
  await page.goto(server.base + '/');
  await page.waitForSelector('#view-login', { state: 'visible' });
  await page.click('#injected-button');
  return page.evaluate(() => ({
    inline: window.inlineRan === true,
    handler: window.handlerRan === true,
    red: getComputedStyle(document.getElementById('injected-style')).color === 'rgb(255, 0, 0)',
  }));
}

test('every page loads its own scripts and stylesheet with no violation', async () => {
  for (const path of PAGES) {
    const page = await watchedPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    const response = await page.goto(server.base + path);
    assert.match(response.headers()['content-security-policy'], /script-src 'self'; style-src 'self'/, path);
    await page.waitForLoadState('networkidle');
    // The stylesheet applies (body font size) and the page's module ran (it showed a view or
    // its status, which the HTML hides until a script decides).
    assert.equal(await page.evaluate(() => getComputedStyle(document.body).fontSize), '18px', path);
    assert.ok(await page.evaluate(() => [...document.querySelectorAll('section, #status, #message')]
      .some((e) => !e.hidden && e.textContent.trim() && e.textContent.trim() !== 'Loading…')), `${path}: a script ran`);
    assert.deepEqual(await violations(page), [], path);
    assert.deepEqual(errors, [], path);
    await page.close();
  }
});

test('an inline script, handler or style in a page does not run', async () => {
  // Control: the same page without the policy runs all three, so the probe can see them.
  const open = await watchedPage();
  assert.deepEqual(await injectedSignIn(open, { keepCsp: false }), { inline: true, handler: true, red: true });
  await open.close();

  const page = await watchedPage();
  assert.deepEqual(await injectedSignIn(page, { keepCsp: true }), { inline: false, handler: false, red: false });
  // Violation reports are queued as tasks, so the click's one can come a moment after it: wait
  // (up to 5 s) for three kinds, then check which.
  await page.waitForFunction(() => new Set(window.violations.map((v) => v.directive)).size >= 3, null, { timeout: 5000 })
    .catch(() => {});
  const seen = [...new Set((await violations(page)).map((v) => v.directive))].sort();
  assert.deepEqual(seen, ['script-src-attr', 'script-src-elem', 'style-src-attr']);
  // A script element added later (as a DOM injection would) is refused too.
  const added = await page.evaluate(() => new Promise((resolve) => {
    document.addEventListener('securitypolicyviolation', (e) => resolve({ directive: e.effectiveDirective, ran: window.addedRan === true }), { once: true });
    const s = document.createElement('script');
    s.textContent = 'window.addedRan = true;';
    document.body.appendChild(s);
  }));
  assert.deepEqual(added, { directive: 'script-src-elem', ran: false });
  // The page itself still works: its own module handles the form.
  await page.fill('#username', 'dr.nguyen');
  await page.fill('#password', 'not the password');
  await page.click('#login-submit');
  await page.waitForSelector('#message:not([hidden])');
  assert.match(await page.textContent('#message'), /username or password is wrong/);
  await page.close();
});

test('a page reaches only its own origin: fetch and WebSocket elsewhere are refused', async () => {
  const page = await watchedPage();
  await page.goto(server.base + '/');
  await page.waitForSelector('#view-login', { state: 'visible' });
  const origin = new URL(server.base);
  // Another origin: this very server under another host name.
  const elsewhere = `${origin.protocol}//localhost:${origin.port}`;
  const outcome = await page.evaluate(async ({ elsewhere, own }) => {
    const directives = [];
    document.addEventListener('securitypolicyviolation', (e) => directives.push(e.effectiveDirective + ' ' + e.blockedURI));
    const fetched = await fetch(elsewhere + '/').then(() => 'answered', () => 'refused');
    const socket = (url) => new Promise((resolve) => {
      let ws;
      try { ws = new WebSocket(url); } catch (e) { return resolve('threw ' + e.name); }
      ws.onopen = () => { ws.close(); resolve('open'); };
      ws.onerror = () => resolve('error');
    });
    const foreignSocket = await socket(elsewhere.replace(/^http/, 'ws') + '/');
    // Our own signaling endpoint: 'self' covers ws: of this host (the consult tests run whole
    // visits over it); whatever the server answers, the browser does not refuse it.
    const before = directives.length;
    await socket(own.replace(/^http/, 'ws') + '/api/v1/consults/ws');
    await new Promise((r) => setTimeout(r, 200));
    return { fetched, foreignSocket, directives, ownRefused: directives.length > before };
  }, { elsewhere, own: server.base });
  assert.equal(outcome.fetched, 'refused');
  assert.notEqual(outcome.foreignSocket, 'open');
  assert.equal(outcome.ownRefused, false, JSON.stringify(outcome.directives));
  assert.ok(outcome.directives.some((d) => d.startsWith('connect-src ' + elsewhere)), JSON.stringify(outcome.directives));
  assert.ok(outcome.directives.some((d) => d.startsWith('connect-src ' + elsewhere.replace(/^http/, 'ws'))), JSON.stringify(outcome.directives));
  await page.close();
});
