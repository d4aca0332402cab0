// Shared by the browser tests: start `clinic serve --demo` on a free loopback port in a fresh data
// directory, read the printed logins, and launch Debian's chromium (never a downloaded browser).
import { spawn } from 'node:child_process';
import { mkdtempSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createHmac } from 'node:crypto';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const root = resolve(import.meta.dirname, '..', '..');
export const CLINIC_BIN = process.env.CLINIC_BIN || join(root, 'target', 'debug', 'clinic');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// `config`: more CLINIC_* settings for this server (e.g. a short idle timeout).
export async function startServer(config = {}) {
  if (!existsSync(CLINIC_BIN)) throw new Error(`no clinic binary at ${CLINIC_BIN}: cargo build -p clinic-api first`);
  const dir = mkdtempSync(join(tmpdir(), 'clinic-browser-'));
  const env = { ...process.env, CLINIC_DATA_DIR: join(dir, 'data'), CLINIC_LISTEN: '127.0.0.1:0', ...config };
  delete env.DATABASE_URL;
  // The server reads every CLINIC_* variable as configuration and refuses unknown ones.
  delete env.CLINIC_BIN;
  const child = spawn(CLINIC_BIN, ['serve', '--demo'], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  // Keep the server's recent log lines for failure reports (CLINIC_LOG__FILTER=debug for more).
  const stderr = [];
  createInterface({ input: child.stderr }).on('line', (line) => {
    stderr.push(line);
    if (stderr.length > 2000) stderr.splice(0, stderr.length - 2000);
  });
  const logins = {};
  const base = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error('server did not start in 30 s')), 30000);
    child.on('exit', (code) => fail(new Error(`server exited with ${code}`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      const cols = line.trim().split(/\s+/);
      if (line.startsWith('clinic listening on ')) { clearTimeout(timer); ok(line.slice('clinic listening on '.length).trim()); }
      else if (cols.length >= 3 && cols[0] !== 'username') logins[cols[0]] = { role: cols[1], password: cols[2] };
    });
  });
  return { base, logins, log: () => stderr.join('\n'), stop: () => child.kill('SIGTERM') };
}

export async function launch() {
  if (!existsSync(CHROMIUM)) throw new Error(`no chromium at ${CHROMIUM} (apt-get install chromium)`);
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream'],
  });
}

// RFC 6238 TOTP (SHA-1, 6 digits, 30 s) from a base32 secret, as an authenticator app computes it.
export function totp(base32, unixSeconds = Date.now() / 1000) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of base32.replace(/[\s=]/g, '').toUpperCase()) bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(unixSeconds / 30)));
  const mac = createHmac('sha1', key).update(counter).digest();
  const off = mac[mac.length - 1] & 15;
  const n = (mac.readUInt32BE(off) & 0x7fffffff) % 1000000;
  return String(n).padStart(6, '0');
}

// Signs a demo staff member in over the API (enrolling an authenticator on first sign-in) and
// returns a JSON client that carries the session cookie.
export async function signIn(base, username, password) {
  let cookie = '';
  async function call(method, path, body) {
    const headers = { accept: 'application/json' };
    if (cookie) headers.cookie = cookie;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const set = res.headers.getSetCookie();
    if (set.length) cookie = set.map((c) => c.split(';')[0]).join('; ');
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }
  const login = await call('POST', '/api/v1/auth/login', { clinic: 'demo', username, password });
  if (login.stage === 'enroll_only') {
    const { secret } = await call('POST', '/api/v1/auth/mfa/enroll');
    await call('POST', '/api/v1/auth/mfa/enroll/confirm', { code: totp(secret) });
  }
  return { call, cookie: () => cookie };
}

// Polls probe() (async) every 250 ms until ok(value); fails after ms, reporting the last value.
export async function until(probe, ok, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (ok(value)) return value;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}; last: ${JSON.stringify(value)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

// Signs `username` in through the sign-in page on `page` (staff enroll an authenticator, the
// test computing codes from the key the page shows) and waits for the signed-in view.
export async function signInPage(page, base, username, password) {
  await page.goto(base + '/');
  await page.fill('#username', username);
  await page.fill('#password', password);
  await page.click('#login-submit');
  await page.waitForSelector('#enroll-secret:not(:empty), #whoami:not(:empty)', { state: 'visible' });
  if (await page.isVisible('#enroll-secret')) {
    const secret = (await page.textContent('#enroll-secret')).replace(/\s+/g, '');
    await page.fill('#enroll-code', totp(secret));
    await page.click('#enroll-submit');
    await page.waitForSelector('#recovery-codes li', { state: 'visible' });
    await page.click('#recovery-continue');
    await page.waitForSelector('#whoami:not(:empty)', { state: 'visible' });
  }
}
