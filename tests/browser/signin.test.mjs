// The sign-in page in a real browser: a demo staff member signs in, enrolls an authenticator
// (the test computes the TOTP code from the key the page shows), sees the recovery codes, lands
// signed in, signs out; a wrong password shows the server's message.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launch, totp, signIn } from './harness.mjs';

let server, browser;
before(async () => { server = await startServer(); browser = await launch(); });
after(async () => { await browser?.close(); server?.stop(); });

test('staff sign in, enroll MFA, and sign out', async () => {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  await page.goto(server.base + '/');
  await page.fill('#username', 'frontdesk');
  await page.fill('#password', server.logins.frontdesk.password);
  await page.click('#login-submit');
  await page.waitForSelector('#enroll-secret:not(:empty)', { state: 'visible' });
  const secret = (await page.textContent('#enroll-secret')).replace(/\s+/g, '');
  assert.match(secret, /^[A-Z2-7]{32}$/, 'a 160-bit base32 key');
  await page.fill('#enroll-code', totp(secret));
  await page.click('#enroll-submit');
  await page.waitForSelector('#recovery-codes li', { state: 'visible' });
  assert.equal(await page.locator('#recovery-codes li').count(), 10);
  await page.click('#recovery-continue');
  await page.waitForSelector('#whoami:not(:empty)', { state: 'visible' });
  assert.match(await page.textContent('#whoami'), /Pat Kowalski/);
  await page.screenshot({ path: process.env.SCREENSHOT_DIR ? `${process.env.SCREENSHOT_DIR}/signed-in.png` : '/tmp/clinic-signed-in.png' });
  await page.click('#logout');
  await page.waitForSelector('#login-submit', { state: 'visible' });
  await page.close();
});

test('a wrong password shows the problem detail', async () => {
  const page = await browser.newPage();
  await page.goto(server.base + '/');
  await page.fill('#username', 'dr.nguyen');
  await page.fill('#password', 'not the password');
  await page.click('#login-submit');
  await page.waitForSelector('#message:not([hidden])');
  assert.match(await page.textContent('#message'), /username or password is wrong/);
  await page.close();
});

test('a new account sets its password once through its enrollment link', async () => {
  // The administrator gets a link for the new user, never a password.
  const admin = await signIn(server.base, 'admin', server.logins.admin.password);
  const created = await admin.call('POST', '/api/v1/users', { username: 'desk.browser', display_name: 'Desk Browser', role: 'front_desk' });
  assert.equal(created.initial_password, undefined);
  const url = created.enrollment.url;
  assert.match(url, /^\/enroll#/);
  const page = await browser.newPage();
  await page.goto(server.base + url);
  await page.waitForSelector('#view-password', { state: 'visible' });
  await page.fill('#password', 'browser chosen password');
  await page.fill('#password-again', 'browser chosen password');
  await page.click('#enroll-submit');
  await page.waitForSelector('#view-done', { state: 'visible' });
  assert.match(await page.textContent('#done-who'), /desk\.browser/);
  // The token left the address bar.
  assert.equal(new URL(page.url()).hash, '');
  await page.close();
  // Used again (a fresh page: the same URL with a fragment would not reload): the page says so.
  const again = await browser.newPage();
  await again.goto(server.base + url);
  await again.waitForSelector('#view-password', { state: 'visible' });
  await again.fill('#password', 'another password here');
  await again.fill('#password-again', 'another password here');
  await again.click('#enroll-submit');
  await again.waitForSelector('#view-invalid', { state: 'visible' });
  assert.match(await again.textContent('#invalid-why'), /already been used/);
  await again.close();
});
