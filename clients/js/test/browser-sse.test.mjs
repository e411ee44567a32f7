// The SSE fallback in a real browser: headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core, as examples/django-library/e2e) loads a page from an HTTP proxy in front of
// the real node that refuses every WebSocket upgrade (like a corporate proxy). The client falls
// back to SSE, a publication from the backend API reaches the page, then the proxy cuts the
// stream while the backend publishes more: the page resumes from its last event id, with every
// publication exactly once and in order. Run twice: with the client's built-in EventSource
// (fetch) and with the browser's own EventSource (which resends the id as Last-Event-ID).
// Skipped when no Chromium is found ($CHROMIUM, /usr/bin/chromium, chromium on the PATH).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Server, HttpProxy, mintToken, waitFor } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

function findChromium() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  if (existsSync('/usr/bin/chromium')) return '/usr/bin/chromium';
  for (const name of ['chromium', 'chromium-browser', 'google-chrome']) {
    try {
      return execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim() || null;
    } catch {
      /* not found */
    }
  }
  return null;
}

let playwright = null;
try {
  playwright = await import('playwright-core');
} catch {
  /* not installed */
}
const CHROMIUM = findChromium();
const skip = (!CHROMIUM && 'no Chromium found') || (!playwright && 'playwright-core not installed (npm ci)');

const PAGE = `<!doctype html><meta charset="utf-8"><title>ferrocast SSE fallback</title>
<script type="module">
import { Client } from '/src/ferrocast.js';
const q = new URLSearchParams(location.search);
window.events = [];
const log = (type, payload) => window.events.push({ type, payload: JSON.parse(JSON.stringify(payload ?? null)) });
const options = { token: q.get('token'), minReconnectDelay: 50, maxReconnectDelay: 300, wsRetryInterval: 600000 };
if (q.get('es') === 'native') options.EventSource = window.EventSource;
const c = new Client(q.get('ws'), options);
window.client = c;
c.on('connected', (i) => log('connected', i));
c.on('disconnected', (d) => log('disconnected', d));
c.on('publication', (p) => log('publication', p));
const sub = c.subscribe(q.get('channel'));
sub.on('subscribed', (s) => log('subscribed', s));
c.connect();
try {
  await c.publish(q.get('channel'), 1);
} catch (e) {
  log('publish-error', { code: e.code, message: e.message });
}
</script>`;

let server;
let proxy;
let context;
let profile;

before(async () => {
  if (skip) return;
  server = await Server.start();
  const src = path.join(here, '..', 'src', 'ferrocast.js');
  proxy = await HttpProxy.start(server.publicPort, {
    blockWebSocket: true,
    files: {
      '/': { type: 'text/html', body: PAGE },
      '/src/ferrocast.js': { type: 'text/javascript', body: () => readFileSync(src) },
    },
  });
  profile = mkdtempSync(path.join(os.tmpdir(), 'ferrocast-chromium-sse-'));
  context = await playwright.chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (context) await context.close();
  if (proxy) await proxy.close();
  if (server) await server.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

for (const es of ['fetch', 'native']) {
  test(`Chromium, WebSocket blocked: SSE fallback, resumption without loss (${es} EventSource)`, { skip, timeout: 30000 }, async () => {
    const user = `browser-${es}`;
    const channel = `room:browser-${es}`;
    const page = await context.newPage();
    page.on('pageerror', (e) => console.error(`[${es}] page error: ${e.message}`));
    const upgradesBefore = proxy.upgrades;
    const q = new URLSearchParams({ ws: proxy.wsUrl, token: mintToken(user), channel, es });
    await page.goto(`${proxy.origin}/?${q}`);
    const events = async (type) => (await page.evaluate(() => window.events)).filter((e) => e.type === type).map((e) => e.payload);

    await page.waitForFunction(() => window.events.some((e) => e.type === 'subscribed'), null, { timeout: 15000 });
    assert.equal((await events('connected'))[0].transport, 'sse');
    assert.equal(await page.evaluate(() => window.client.transport), 'sse');
    assert.ok(proxy.upgrades - upgradesBefore >= 2, 'the WebSocket was tried (and refused) first');
    const publishError = await waitFor(async () => (await events('publish-error'))[0], 5000, 'publish over SSE refused');
    assert.equal(publishError.code, 6);

    await server.publish(channel, { n: 1 });
    await waitFor(async () => (await events('publication')).length === 1, 5000, 'the first publication over SSE');

    // The stream breaks (the proxy drops it); the backend publishes meanwhile.
    const sseRequests = () => proxy.requests.filter((r) => r.url.startsWith('/sse') && r.url.includes(encodeURIComponent(channel)));
    const before = sseRequests().length;
    proxy.cutStreams();
    for (let n = 2; n <= 4; n++) await server.publish(channel, { n });
    await waitFor(async () => (await events('publication')).length >= 4, 15000, 'the resumed stream');
    await server.publish(channel, { n: 5 });
    await waitFor(async () => (await events('publication')).length >= 5, 5000, 'a live publication after it');

    const pubs = (await events('publication')).map((p) => [p.offset, p.data.n]);
    assert.deepEqual(pubs, [
      [1, 1],
      [2, 2],
      [3, 3],
      [4, 4],
      [5, 5],
    ]);
    const subscribed = await events('subscribed');
    assert.equal(subscribed.length, 2);
    assert.equal(subscribed[1].wasRecovering, true);
    assert.equal(subscribed[1].recovered, true);
    assert.equal((await events('disconnected'))[0].reconnect, true);
    // The resuming request carried the last event id: the header from the browser's own
    // EventSource, the query parameter from the client's.
    const resume = sseRequests()[before];
    assert.ok(resume, 'a second SSE request');
    if (es === 'native') assert.ok(resume.headers['last-event-id'], JSON.stringify(resume.headers));
    else assert.match(resume.url, /last_event_id=/);
    await page.close();
  });
}
