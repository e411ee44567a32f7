// End-to-end test of the Django library demo in real headless Chromium (Debian's /usr/bin/chromium
// driven by playwright-core). It starts its own ferrocast node and Django server on free loopback
// ports with a fresh SQLite database, then plays four browsers:
//   alice's phone + alice's laptop (two separate logins of one user), the librarian, and a
//   logged-out visitor.
// Screenshots go to e2e/artifacts/ (with the node's and Django's logs).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const E2E = path.dirname(fileURLToPath(import.meta.url));
const EXAMPLE = path.dirname(E2E);
const REPO = path.resolve(EXAMPLE, '..', '..');
const ARTIFACTS = path.join(E2E, 'artifacts');
const PY = path.join(EXAMPLE, '.venv', 'bin', 'python');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const LOAN_SECONDS = 5;

const procs = [];
const contexts = [];
let tmp;
let base;
let djangoEnv;
let adminPort;

// ------------------------------------------------------------------------------------ helpers

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function ferrocastBinary() {
  if (process.env.FERROCAST_BIN) return process.env.FERROCAST_BIN;
  const found = ['release', 'debug']
    .map((p) => path.join(REPO, 'target', p, 'ferrocast'))
    .filter((p) => fs.existsSync(p));
  assert.ok(found.length, 'no target/{debug,release}/ferrocast: run `cargo build` (e2e/run.sh does)');
  return found.sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)[0];
}

function start(name, cmd, args, env) {
  const out = fs.openSync(path.join(ARTIFACTS, `${name}.log`), 'w');
  const p = spawn(cmd, args, { cwd: EXAMPLE, env: { ...process.env, ...env }, stdio: ['ignore', out, out] });
  p.name = name;
  procs.push(p);
  p.on('exit', (code, sig) => {
    if (!p.stopping) console.error(`${name} exited early (${code ?? sig}); see e2e/artifacts/${name}.log`);
  });
  return p;
}

async function waitHttp(url, what, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch {}
    if (Date.now() > deadline) throw new Error(`${what} not up at ${url} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

let shots = 0;
async function shot(page, name) {
  shots += 1;
  await page.screenshot({ path: path.join(ARTIFACTS, `${String(shots).padStart(2, '0')}-${name}.png`), fullPage: true });
}

/** One browser with its own fresh profile (user-data-dir), logged in as `user` (or not at all). */
async function browserAs(user, label) {
  const profile = fs.mkdtempSync(path.join(tmp, `profile-${label}-`));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 760 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  contexts.push(ctx);
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.label = label;
  page.on('pageerror', (e) => console.error(`[${label}] page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.error(`[${label}] console ${m.type()}: ${m.text()}`);
  });
  if (user) {
    await page.goto(`${base}/accounts/login/`);
    await page.fill('input[name=username]', user);
    await page.fill('input[name=password]', user);
    await Promise.all([page.waitForURL((u) => !u.pathname.startsWith('/accounts/login')), page.click('button[type=submit]')]);
  } else {
    await page.goto(`${base}/`);
  }
  await page.waitForSelector('#conn-state[data-state=connected]', { timeout: 10000 });
  return { ctx, page };
}

const noticeSel = (type, text) => `#notices li.notice[data-type="${type}"]:has-text("${text}")`;

async function onlineIs(page, users, clients, timeout = 8000) {
  await page.waitForFunction(
    ([u, c]) => {
      const el = document.querySelector('#online-count');
      return el && el.dataset.users === String(u) && el.dataset.clients === String(c);
    },
    [users, clients],
    { timeout },
  );
}

async function chatLines(panel) {
  return panel.locator('.chat-log li.msg').allInnerTexts();
}

// ------------------------------------------------------------------------------------ setup

let alicePhone, aliceLaptop, librarian, visitor;

before(async () => {
  fs.rmSync(ARTIFACTS, { recursive: true, force: true });
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'library-e2e-'));
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install -y chromium (e2e/run.sh does)`);
  assert.ok(fs.existsSync(PY), 'no examples/django-library/.venv: run e2e/run.sh');

  const [djangoPort, publicPort, admin] = [await freePort(), await freePort(), await freePort()];
  adminPort = admin;
  base = `http://127.0.0.1:${djangoPort}`;
  const env = {
    DJANGO_DB: path.join(tmp, 'db.sqlite3'),
    LOAN_SECONDS: String(LOAN_SECONDS),
    FERROCAST_API_URL: `http://127.0.0.1:${publicPort}`,
    FERROCAST_LISTEN__PUBLIC: `127.0.0.1:${publicPort}`,
    FERROCAST_LISTEN__ADMIN: `127.0.0.1:${admin}`,
    // the node's webhooks go to this Django; a reader is offline 500 ms after their last page
    FERROCAST_WEBHOOKS__URL: `${base}/ferrocast/webhook/`,
    FERROCAST_WEBHOOKS__OFFLINE_DELAY: '500ms',
    DIGEST_DELAY_SECONDS: '0',
    SITE_URL: base,
    DJANGO_EMAIL_BACKEND: 'django.core.mail.backends.console.EmailBackend',
    PYTHONUNBUFFERED: '1',
  };
  djangoEnv = env;
  for (const cmd of [['migrate', '--noinput', '-v0'], ['seed_library']]) {
    const r = spawnSync(PY, ['manage.py', ...cmd], { cwd: EXAMPLE, env: { ...process.env, ...env }, encoding: 'utf8' });
    assert.equal(r.status, 0, `manage.py ${cmd[0]}: ${r.stdout}${r.stderr}`);
  }
  start('ferrocast', ferrocastBinary(), ['serve', '--config', 'ferrocast.toml'], { ...env, RUST_LOG: 'info' });
  start('django', PY, ['manage.py', 'runserver', '--noreload', `127.0.0.1:${djangoPort}`], env);
  await waitHttp(`http://127.0.0.1:${admin}/health/ready`, 'ferrocast');
  await waitHttp(`${base}/`, 'django');

  [alicePhone, aliceLaptop, librarian, visitor] = await Promise.all([
    browserAs('alice', 'alice-phone'),
    browserAs('alice', 'alice-laptop'),
    browserAs('librarian', 'librarian'),
    browserAs(null, 'visitor'), // logged out: an anonymous token, leaderboard only
  ]);
});

after(async () => {
  for (const ctx of contexts) await ctx.close().catch(() => {});
  for (const p of procs) {
    p.stopping = true;
    p.kill('SIGTERM');
  }
  await Promise.all(procs.map((p) => (p.exitCode !== null ? null : new Promise((r) => p.once('exit', r)))));
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

// ------------------------------------------------------------------------------------ the story

test('every page is live: connected, and the online counter counts 2 people on 3 connections', async () => {
  for (const { page } of [alicePhone, aliceLaptop, librarian]) await onlineIs(page, 2, 3);
  assert.match(await librarian.page.textContent('#online-count'), /2 online · 3 connections/);
  // the logged-out visitor is connected (anonymous token) but not counted
  assert.equal(await visitor.page.textContent('#online-count'), '');
  await shot(librarian.page, 'librarian-start');
});

let dueAt;

test('borrowing on one device shows the notice on both devices, and the leaderboard changes everywhere', async () => {
  const phone = alicePhone.page;
  const laptop = aliceLaptop.page;
  const [resp] = await Promise.all([
    phone.waitForResponse((r) => r.url().endsWith('/borrow')),
    phone.click('#books tr[data-title="Dune"] button.borrow'),
  ]);
  const body = await resp.json();
  assert.equal(body.ok, true, JSON.stringify(body));
  dueAt = Date.parse(body.loan.due_at);

  for (const page of [phone, laptop]) {
    await page.waitForSelector(noticeSel('borrowed', 'borrowed《Dune》'), { timeout: 5000 });
    // the other device's list of loans follows too (it refreshes on the notice)
    await page.waitForSelector('#loans li[data-loan-id]:has-text("Dune")', { timeout: 5000 });
    await page.waitForSelector('#books tr[data-title="Dune"] td.available:has-text("0/1")', { timeout: 5000 });
  }
  for (const page of [phone, laptop, librarian.page, visitor.page]) {
    await page.waitForSelector('#leaderboard li[data-book-id]:has-text("Dune")', { timeout: 5000 });
  }
  // the visitor's catalog follows the broadcast shelf counts too
  await visitor.page.waitForSelector('#books tr[data-title="Dune"] td.available:has-text("0/1")', { timeout: 5000 });
  await shot(visitor.page, 'visitor-leaderboard');
  // Early return of another book: its reminder was scheduled too, and must not be shown.
  const [r2] = await Promise.all([
    phone.waitForResponse((r) => r.url().endsWith('/borrow')),
    phone.click('#books tr[data-title="Solaris"] button.borrow'),
  ]);
  const solaris = (await r2.json()).loan;
  await phone.waitForSelector(`#loans li[data-loan-id="${solaris.id}"] button.return`);
  await Promise.all([
    phone.waitForResponse((r) => r.url().endsWith('/return')),
    phone.click(`#loans li[data-loan-id="${solaris.id}"] button.return`),
  ]);
  await laptop.waitForSelector(noticeSel('returned', 'returned《Solaris》'), { timeout: 5000 });
  await shot(phone, 'alice-phone-borrowed');
  await shot(laptop, 'alice-laptop-borrowed');
  assert.equal(await phone.locator(noticeSel('overdue', 'Dune')).count(), 0, 'reminder came before the due time');
});

test('the overdue reminder scheduled with publish_at arrives at the due time, on both devices', async () => {
  const phone = alicePhone.page;
  const laptop = aliceLaptop.page;
  const wait = dueAt + 5000 - Date.now();
  for (const page of [phone, laptop]) {
    const item = page.locator(noticeSel('overdue', 'Dune'));
    await item.waitFor({ timeout: Math.max(wait, 1000) });
    const at = Number(await item.getAttribute('data-at'));
    assert.ok(at >= dueAt - 250, `${page.label}: reminder at ${at}, ${dueAt - at} ms before the due time ${dueAt}`);
    assert.ok(at <= dueAt + 3000, `${page.label}: reminder ${at - dueAt} ms late`);
  }
  await phone.waitForSelector('#loans li.overdue:has-text("Dune")', { timeout: 5000 });
  // Solaris came back before its due time: its reminder was delivered but not shown.
  await phone.waitForTimeout(800);
  assert.equal(await phone.locator(noticeSel('overdue', 'Solaris')).count(), 0);
  await shot(laptop, 'alice-laptop-overdue');
});

test('the reader and the librarian chat both ways (and both devices of the reader see it)', async () => {
  const phone = alicePhone.page;
  const laptop = aliceLaptop.page;
  const lib = librarian.page;
  const panel = lib.locator('#chats .chat-panel[data-username="alice"]');
  await lib.waitForSelector('#chats .chat-panel[data-username="alice"][data-ready="1"]', { timeout: 5000 });
  await phone.waitForSelector('#chat[data-ready="1"]');

  await phone.fill('#chat-input', 'Hello! Is Hyperion in?');
  await phone.press('#chat-input', 'Enter');
  await panel.locator('.chat-log li.msg.theirs:has-text("Hello! Is Hyperion in?")').waitFor({ timeout: 5000 });
  await laptop.waitForSelector('#chat .chat-log li.msg.mine:has-text("Hello! Is Hyperion in?")', { timeout: 5000 });
  assert.match((await chatLines(panel))[0], /^alice: Hello! Is Hyperion in\?/);

  await panel.locator('input').fill('Yes, shelf 3. Shall I keep it for you?');
  await panel.locator('input').press('Enter');
  for (const page of [phone, laptop]) {
    await page.waitForSelector('#chat .chat-log li.msg.theirs:has-text("Yes, shelf 3.")', { timeout: 5000 });
    const lines = await page.locator('#chat .chat-log li.msg').allInnerTexts();
    assert.deepEqual(lines.map((l) => l.split(':')[0]), ['me', 'librarian']);
  }
  // Other readers' rooms stay empty (private namespace, one room per reader).
  assert.equal(await lib.locator('#chats .chat-panel[data-username="bob"] li.msg').count(), 0);
  await shot(lib, 'librarian-chat');
  await shot(phone, 'alice-phone-chat');
});

test('the online counter drops when a page closes', async () => {
  await aliceLaptop.ctx.close(); // alice still has her phone: same people, one connection less
  await onlineIs(librarian.page, 2, 2);
  await onlineIs(alicePhone.page, 2, 2);
  await shot(librarian.page, 'librarian-laptop-closed');
  await librarian.ctx.close(); // the librarian leaves: one person left
  await onlineIs(alicePhone.page, 1, 1);
  assert.match(await alicePhone.page.textContent('#online-count'), /1 online · 1 connection$/);
  // the server API agrees (Django's /online.json calls presence_stats)
  const r = await fetch(`${base}/online.json`);
  assert.deepEqual(await r.json(), { clients: 1, users: 1 });
  await shot(alicePhone.page, 'alice-phone-alone');
});

/** Runs a manage.py command with the test's environment (same database); its stdout. */
function manage(...args) {
  const r = spawnSync(PY, ['manage.py', ...args], { cwd: EXAMPLE, env: { ...process.env, ...djangoEnv }, encoding: 'utf8' });
  assert.equal(r.status, 0, `manage.py ${args[0]}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

test('a reader who goes offline gets a digest e-mail of the notices she missed', async () => {
  const phone = alicePhone.page;
  const bob = await browserAs('bob', 'bob');
  // bob takes Hyperion (one copy); alice, on her phone, reserves it
  await Promise.all([
    bob.page.waitForResponse((r) => r.url().endsWith('/borrow')),
    bob.page.click('#books tr[data-title="Hyperion"] button.borrow'),
  ]);
  await phone.waitForSelector('#books tr[data-title="Hyperion"] button.reserve', { timeout: 5000 });
  await Promise.all([
    phone.waitForResponse((r) => r.url().endsWith('/reserve')),
    phone.click('#books tr[data-title="Hyperion"] button.reserve'),
  ]);
  await phone.waitForSelector(noticeSel('reserved', 'reserved《Hyperion》'), { timeout: 5000 });
  // her last page closes: the node's user_offline webhook reaches Django (after offline_delay)
  await alicePhone.ctx.close();
  const isOffline = () =>
    manage('shell', '-v', '0', '-c', "from library.models import PendingDigest as P; print(P.objects.filter(user__username='alice').exists())")
      .trim()
      .split('\n')
      .pop();
  const deadline = Date.now() + 10000;
  while (isOffline() !== 'True') {
    assert.ok(Date.now() < deadline, 'no user_offline webhook for alice within 10 s');
    await new Promise((r) => setTimeout(r, 200));
  }
  // bob brings Hyperion back while she is away: "ready for you" goes to her channel
  await bob.page.waitForSelector('#loans li[data-loan-id]:has-text("Hyperion") button.return');
  await Promise.all([
    bob.page.waitForResponse((r) => r.url().endsWith('/return')),
    bob.page.click('#loans li[data-loan-id]:has-text("Hyperion") button.return'),
  ]);
  const mailOut = manage('send_digests'); // the console e-mail backend prints it
  fs.writeFileSync(path.join(ARTIFACTS, 'digest-email.txt'), mailOut);
  assert.match(mailOut, /To: alice@library\.example/);
  assert.match(mailOut, /Subject: You missed 1 notice at the library/);
  assert.match(mailOut, /《Hyperion》 is ready for you/);
  assert.doesNotMatch(mailOut, /reserved《Hyperion》|borrowed《Dune》/, 'she saw those on her pages');
  assert.doesNotMatch(manage('send_digests'), /Subject:/, 'mailed once');
});
