// Laravel Echo (the real `laravel-echo` package, pusher broadcaster, the real pusher-js browser
// build) in headless Chromium (Debian's /usr/bin/chromium driven by playwright-core) against a
// ferrocast node: a public channel, a private channel and a presence channel
// (`Echo.join().here/joining/leaving`), authorized by an endpoint served by the test that signs
// like Laravel's PusherBroadcaster (numeric user ids, as Laravel's auth identifiers are), events
// triggered through the HTTP API by the `pusher` Node library; the page records what Echo
// delivered, the test asserts on it. Skipped when no Chromium is found.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import crypto from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { APP, startNode, once, waitFor } from './helpers.mjs';

const require = createRequire(import.meta.url);
const PusherServer = require('pusher');
const PusherJs = require('pusher-js');
const here = path.dirname(fileURLToPath(import.meta.url));

function findChromium() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  if (existsSync('/usr/bin/chromium')) return '/usr/bin/chromium';
  for (const name of ['chromium', 'chromium-browser', 'google-chrome']) {
    try {
      return execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim() || null;
    } catch { /* not found */ }
  }
  return null;
}
let playwright = null;
try { playwright = await import('playwright-core'); } catch { /* not installed */ }
const CHROMIUM = findChromium();
const skip = (!CHROMIUM && 'no Chromium found') || (!playwright && 'playwright-core not installed (npm ci)');

const USERS = { 1: { id: 1, name: 'Taylor' }, 2: { id: 2, name: 'Abigail' } };
const sign = (s) => crypto.createHmac('sha256', APP.secret).update(s).digest('hex');

/** What Laravel's /broadcasting/auth answers (Illuminate\Broadcasting\Broadcasters\PusherBroadcaster). */
function laravelAuth(socketId, channel, userId) {
  if (channel.startsWith('presence-')) {
    const channelData = JSON.stringify({ user_id: userId, user_info: USERS[userId] });
    return { auth: `${APP.key}:${sign(`${socketId}:${channel}:${channelData}`)}`, channel_data: channelData };
  }
  return { auth: `${APP.key}:${sign(`${socketId}:${channel}`)}` };
}

const PAGE = (port) => `<!doctype html><meta charset="utf-8"><meta name="csrf-token" content="csrf-123">
<title>Laravel Echo on ferrocast</title>
<script src="/pusher.js"></script>
<script src="/echo.js"></script>
<script>
window.log = [];
const log = (type, payload) => window.log.push({ type, payload: JSON.parse(JSON.stringify(payload ?? null)) });
window.Echo = new Echo.default({
  broadcaster: 'pusher', key: '${APP.key}', cluster: 'mt1',
  wsHost: '127.0.0.1', wsPort: ${port}, forceTLS: false, enabledTransports: ['ws'],
  authEndpoint: '/broadcasting/auth',
  auth: { headers: { 'X-Test-User': '1' } },
});
window.Echo.channel('orders')
  .subscribed(() => log('subscribed', 'orders'))
  .listen('OrderShipped', (e) => log('public', e));
window.Echo.private('orders.1')
  .subscribed(() => log('subscribed', 'private-orders.1'))
  .listen('.status.updated', (e) => log('private', e))
  .error((e) => log('private-error', e));
window.Echo.join('chat.1')
  .here((users) => log('here', users))
  .joining((user) => log('joining', user))
  .leaving((user) => log('leaving', user))
  .listen('MessageSent', (e) => log('presence', e))
  .listenForWhisper('typing', (e) => log('whisper', e));
</script>`;

let node; let web; let context; let profile; let server;
const authRequests = [];

before(async () => {
  if (skip) return;
  node = await startNode();
  const files = {
    '/pusher.js': readFileSync(path.join(here, 'node_modules/pusher-js/dist/web/pusher.js')),
    '/echo.js': readFileSync(path.join(here, 'node_modules/laravel-echo/dist/echo.iife.js')),
  };
  web = http.createServer((req, res) => {
    if (req.url === '/') {
      res.setHeader('content-type', 'text/html');
      return res.end(PAGE(node.port));
    }
    if (files[req.url]) {
      res.setHeader('content-type', 'text/javascript');
      return res.end(files[req.url]);
    }
    if (req.url === '/broadcasting/auth' && req.method === 'POST') {
      let body = '';
      req.on('data', (d) => { body += d; });
      req.on('end', () => {
        const q = new URLSearchParams(body);
        const user = Number(req.headers['x-test-user']);
        authRequests.push({ channel: q.get('channel_name'), csrf: req.headers['x-csrf-token'], user });
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify(laravelAuth(q.get('socket_id'), q.get('channel_name'), user)));
      });
      return undefined;
    }
    res.statusCode = 404;
    return res.end();
  });
  await new Promise((r) => web.listen(0, '127.0.0.1', r));
  server = new PusherServer({
    appId: APP.id, key: APP.key, secret: APP.secret, host: '127.0.0.1', port: String(node.port), useTLS: false,
  });
  profile = mkdtempSync(path.join(os.tmpdir(), 'ferrocast-chromium-echo-'));
  context = await playwright.chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (context) await context.close();
  web?.close();
  await node?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

test('Laravel Echo in headless Chromium: public, private, presence (here/joining/leaving), whispers', { skip, timeout: 30000 }, async () => {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`http://127.0.0.1:${web.address().port}/`);
  const log = async (type) => (await page.evaluate(() => window.log)).filter((e) => e.type === type).map((e) => e.payload);

  await waitFor(async () => (await log('subscribed')).length === 2 && (await log('here')).length === 1, 10000, 'Echo subscribed');
  assert.deepEqual(await log('here'), [[USERS[1]]]);
  // Echo sent Laravel's CSRF header, and the private/presence names with their prefixes.
  assert.deepEqual(authRequests.map((r) => r.channel).sort(), ['presence-chat.1', 'private-orders.1']);
  assert.ok(authRequests.every((r) => r.csrf === 'csrf-123'));

  // Events from the backend, as Laravel broadcasts them (App\Events\… names; broadcastAs names with '.').
  await server.trigger('orders', 'App\\Events\\OrderShipped', { order: { id: 7 } });
  await server.trigger('private-orders.1', 'status.updated', { status: 'shipped' });
  await server.trigger('presence-chat.1', 'App\\Events\\MessageSent', { text: 'hello' });
  await waitFor(async () => (await log('presence')).length === 1 && (await log('private')).length === 1
    && (await log('public')).length === 1, 5000, 'the three events in the page');
  assert.deepEqual(await log('public'), [{ order: { id: 7 } }]);
  assert.deepEqual(await log('private'), [{ status: 'shipped' }]);
  assert.deepEqual(await log('presence'), [{ text: 'hello' }]);

  // A second member (pusher-js in Node, user 2) joins, whispers, and leaves.
  const other = new PusherJs(APP.key, {
    cluster: 'mt1', wsHost: '127.0.0.1', wsPort: node.port, forceTLS: false, enabledTransports: ['ws'],
    channelAuthorization: {
      endpoint: `http://127.0.0.1:${web.address().port}/broadcasting/auth`, transport: 'ajax', headers: { 'X-Test-User': '2' },
    },
  });
  try {
    const ch = other.subscribe('presence-chat.1');
    const members = await once(ch, 'pusher:subscription_succeeded');
    assert.equal(members.count, 2);
    await waitFor(async () => (await log('joining')).length === 1, 5000, 'joining');
    assert.deepEqual(await log('joining'), [USERS[2]]);
    ch.trigger('client-typing', { typing: true });
    await waitFor(async () => (await log('whisper')).length === 1, 5000, 'whisper');
    assert.deepEqual(await log('whisper'), [{ typing: true }]);
  } finally {
    other.disconnect();
  }
  await waitFor(async () => (await log('leaving')).length === 1, 5000, 'leaving');
  assert.deepEqual(await log('leaving'), [USERS[2]]);
  assert.deepEqual(await log('private-error'), []);
  assert.deepEqual(errors, []);
  await page.close();
});
