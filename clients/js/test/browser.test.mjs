// The client in a real browser (headless Chromium, with the browser's own WebSocket): connect,
// subscribe, receive, reconnect after close 4010 and recover. Skipped when no Chromium is found
// ($CHROMIUM, or chromium / chromium-browser / google-chrome on the PATH).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Server, mintToken, waitFor } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

function findChromium() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  for (const name of ['chromium', 'chromium-browser', 'google-chrome']) {
    try {
      return execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim() || null;
    } catch {
      /* not found */
    }
  }
  return null;
}

const PAGE = `<!doctype html><meta charset="utf-8"><title>ferrocast browser test</title>
<script type="module">
import { Client, FerrocastError } from '/src/ferrocast.js';
const q = new URLSearchParams(location.search);
const report = (type, payload) =>
  fetch('/event', { method: 'POST', body: JSON.stringify({ type, payload }) });
const c = new Client(q.get('ws'), { token: q.get('token'), minReconnectDelay: 50, maxReconnectDelay: 300 });
c.on('connected', (i) => report('connected', i));
c.on('disconnected', (d) => report('disconnected', d));
const sub = c.subscribe('room:browser');
sub.on('subscribed', (s) => report('subscribed', s));
sub.on('publication', (p) => report('publication', p));
c.connect();
await sub.ready();
try {
  await c.publish('news:x', 1);
} catch (e) {
  report('publish-error', { isFerrocastError: e instanceof FerrocastError, code: e.code });
}
</script>`;

const chromium = findChromium();

test('works in a real browser (headless Chromium)', { skip: !chromium && 'no Chromium found' }, async () => {
  const server = await Server.start();
  const events = [];
  const web = http.createServer((req, res) => {
    if (req.method === 'POST' && req.url === '/event') {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        events.push(JSON.parse(body));
        res.end('{}');
      });
      return;
    }
    if (req.url.startsWith('/src/')) {
      res.setHeader('Content-Type', 'text/javascript');
      res.end(readFileSync(path.join(here, '..', 'src', path.basename(req.url))));
      return;
    }
    res.setHeader('Content-Type', 'text/html');
    res.end(PAGE);
  });
  await new Promise((r) => web.listen(0, '127.0.0.1', r));
  const profile = mkdtempSync(path.join(os.tmpdir(), 'ferrocast-chromium-'));
  const url = `http://127.0.0.1:${web.address().port}/?ws=${encodeURIComponent(server.wsUrl)}&token=${mintToken('browser1')}`;
  const browser = spawn(
    chromium,
    ['--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--no-zygote', `--user-data-dir=${profile}`, '--remote-debugging-port=0', url],
    { stdio: 'ignore' },
  );
  const of = (type) => events.filter((e) => e.type === type).map((e) => e.payload);
  try {
    await waitFor(() => of('subscribed').length === 1, 20000, 'the page to subscribe');
    await waitFor(() => of('publish-error').length === 1, 5000, 'the publish error');
    assert.deepEqual(of('publish-error')[0], { isFerrocastError: true, code: 103 });
    await server.publish('room:browser', { n: 1 });
    await waitFor(() => of('publication').length === 1, 5000, 'the first publication');

    // Close 4010 (shutdown); a publication made while the page reconnects is recovered.
    await server.api('disconnect', { user: 'browser1', code: 4010 });
    await server.publish('room:browser', { n: 2 });
    await waitFor(() => of('subscribed').length === 2, 5000, 'the resubscription');
    await server.publish('room:browser', { n: 3 });
    await waitFor(() => of('publication').length === 3, 5000, 'all publications');

    assert.equal(of('connected').length, 2);
    assert.equal(of('disconnected')[0].code, 4010);
    assert.equal(of('disconnected')[0].reconnect, true);
    assert.equal(of('subscribed')[1].wasRecovering, true);
    assert.deepEqual(
      of('publication').map((p) => [p.offset, p.data.n]),
      [
        [1, 1],
        [2, 2],
        [3, 3],
      ],
    );
  } finally {
    // SIGTERM lets Chromium end (and reap) its own child processes.
    const exited = new Promise((r) => browser.once('exit', r));
    browser.kill('SIGTERM');
    const t = setTimeout(() => browser.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(t);
    await new Promise((r) => web.close(r));
    await server.close();
    rmSync(profile, { recursive: true, force: true });
  }
});
