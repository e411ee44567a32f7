// Starts a real ferrocast node with a Pusher app, and a tiny auth backend that signs channel
// authorizations and sign-ins with the app secret (what a Laravel/Rails backend does).
import { spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { createRequire } from 'node:module';

export const APP = { id: '4242', key: 'test-key', secret: 'test-secret' };

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

async function waitPort(port, ms = 10000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const ok = await new Promise((r) => {
      const c = net.connect(port, '127.0.0.1', () => { c.end(); r(true); });
      c.on('error', () => r(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`port ${port} never opened`);
}

export async function startNode(extra = '') {
  const bin = process.env.FERROCAST_BIN;
  const port = await freePort();
  const admin = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-pusher-'));
  const cfg = path.join(dir, 'node.toml');
  fs.writeFileSync(cfg, `
[listen]
public = "127.0.0.1:${port}"
admin = "127.0.0.1:${admin}"
shards = 2
[auth]
token_secret = "node-test-secret"
[api]
key = "node-test-api-key"
[[pusher.apps]]
app_id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"
enable_client_messages = true
${extra}
`);
  const proc = spawn(bin, ['serve', '--config', cfg], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; });
  await waitPort(port);
  return {
    port, admin, proc,
    stderr: () => stderr,
    stop: () => new Promise((r) => { proc.once('exit', r); proc.kill('SIGKILL'); }),
  };
}

const sign = (s) => crypto.createHmac('sha256', APP.secret).update(s).digest('hex');

/** POST /auth (socket_id, channel_name) and /signin (socket_id): form bodies as pusher-js sends. */
export async function startAuthServer({ user = 'u1', name = 'Ada', deny = false } = {}) {
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      const q = new URLSearchParams(body);
      const socketId = q.get('socket_id');
      res.setHeader('content-type', 'application/json');
      if (req.url.startsWith('/auth')) {
        const channel = q.get('channel_name');
        let out;
        if (channel.startsWith('presence-')) {
          const channelData = JSON.stringify({ user_id: user, user_info: { name } });
          out = { auth: `${APP.key}:${sign(`${socketId}:${channel}:${channelData}`)}`, channel_data: channelData };
        } else {
          out = { auth: `${APP.key}:${sign(`${socketId}:${channel}`)}` };
        }
        if (deny) out.auth = `${APP.key}:${'0'.repeat(64)}`;
        res.end(JSON.stringify(out));
      } else if (req.url.startsWith('/signin')) {
        const userData = JSON.stringify({ id: user, name });
        res.end(JSON.stringify({ auth: `${APP.key}:${sign(`${socketId}::user::${userData}`)}`, user_data: userData }));
      } else {
        res.statusCode = 404;
        res.end('{}');
      }
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

export function once(emitter, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timeout waiting for ${event}`)), ms);
    emitter.bind(event, (data, meta) => { clearTimeout(t); resolve(data === undefined ? meta : data); });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns something truthy (that value), or fails after `ms`. */
export async function waitFor(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timeout waiting for ${what}`);
    await sleep(50);
  }
}

/** A pusher-js (Node build) client of `port`, authorized by `authServer`. */
export function pusherClient(port, authServer, key = APP.key) {
  const require = createRequire(import.meta.url);
  const Pusher = require('pusher-js');
  return new Pusher(key, {
    cluster: 'local', wsHost: '127.0.0.1', wsPort: port, forceTLS: false,
    enabledTransports: ['ws'], disableStats: true,
    channelAuthorization: { endpoint: `${authServer.url}/auth`, transport: 'ajax' },
    userAuthentication: { endpoint: `${authServer.url}/signin`, transport: 'ajax' },
  });
}

/** Collects webhook requests (raw body kept for signature checks); answers 200. */
export async function startWebhookReceiver() {
  const requests = [];
  const events = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (d) => chunks.push(d));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      requests.push({ url: req.url, headers: req.headers, body });
      try { events.push(...JSON.parse(body).events); } catch { /* counted as a request anyway */ }
      res.end('ok');
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests, events,
    find: (name, channel, userId) => events.find((e) => e.name === name && e.channel === channel
      && (userId === undefined || e.user_id === userId)),
    close: () => server.close(),
  };
}
