// Starts a real ferrocast node with a Pusher app, and a tiny auth backend that signs channel
// authorizations and sign-ins with the app secret (what a Laravel/Rails backend does).
import { spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';

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
