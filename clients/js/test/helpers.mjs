// Test harness: starts the real `ferrocast` binary on free loopback ports with a temporary config,
// mints tokens, calls the server API, and offers a TCP proxy whose connections a test can cut to
// simulate network loss. Every wait is a poll with a deadline, never a fixed long sleep.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, writeFileSync, readFileSync, existsSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..', '..');

export const TOKEN_SECRET = 'js-test-token-secret';
export const API_KEY = 'js-test-api-key';

/** The server binary: $FERROCAST_BIN, else target/debug/ferrocast of this repository. */
export function serverBin() {
  const bin = process.env.FERROCAST_BIN || path.join(repoRoot, 'target', 'debug', 'ferrocast');
  if (!existsSync(bin)) {
    throw new Error(`ferrocast binary not found at ${bin}: run \`cargo build\` or set FERROCAST_BIN`);
  }
  return bin;
}

/** The WebSocket constructor the tests inject: the `ws` package (devDependency), or the runtime's
 * own (`FERROCAST_TEST_WS=native`, e.g. Node 22+, or Node 20 with --experimental-websocket). */
export async function webSocketCtor() {
  if (process.env.FERROCAST_TEST_WS !== 'native') {
    try {
      const mod = await import('ws');
      return mod.WebSocket || mod.default;
    } catch {
      /* fall through */
    }
  }
  if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
  throw new Error('no WebSocket implementation: run `npm ci` in clients/js (devDependency ws)');
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value (returned), or throws after `timeout` ms. */
export async function waitFor(fn, timeout = 5000, what = 'condition') {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** The next `event` from an emitter (our Client/Subscription), optionally matching `filter`. */
export function nextEvent(emitter, event, { timeout = 5000, filter = () => true } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, fn);
      reject(new Error(`timed out after ${timeout} ms waiting for event '${event}'`));
    }, timeout);
    const fn = (arg) => {
      if (!filter(arg)) return;
      clearTimeout(timer);
      emitter.off(event, fn);
      resolve(arg);
    };
    emitter.on(event, fn);
  });
}

function b64url(buf) {
  return Buffer.from(buf).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}

/** An HS256 JWT for `sub`; `ttl` seconds (negative = already expired, null = no exp). */
export function mintToken(sub, { ttl = 3600, channels, subs, info, secret = TOKEN_SECRET } = {}) {
  const claims = { sub };
  if (ttl !== null) claims.exp = Math.floor(Date.now() / 1000) + ttl;
  if (channels) claims.channels = channels;
  if (subs) claims.subs = subs;
  if (info !== undefined) claims.info = info;
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = b64url(createHmac('sha256', secret).update(`${head}.${body}`).digest());
  return `${head}.${body}.${sig}`;
}

/** A loopback port that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** POST JSON over a fresh TCP connection (no keep-alive: the server may restart between calls). */
export function postJson(url, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const req = http.request(
      url,
      {
        method: 'POST',
        agent: false,
        headers: { 'Content-Type': 'application/json', 'Content-Length': data.length, Connection: 'close', ...headers },
        timeout: 5000,
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json = null;
          try {
            json = text ? JSON.parse(text) : null;
          } catch {
            json = text;
          }
          resolve({ status: res.statusCode, body: json });
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`POST ${url}: timeout`)));
    req.on('error', reject);
    req.end(data);
  });
}

function getStatus(url) {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false, timeout: 500 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

const BASE_CONFIG = ({ publicPort, adminPort, extra }) => `
[listen]
public = "127.0.0.1:${publicPort}"
admin = "127.0.0.1:${adminPort}"
shards = 2

[node]
name = "js-test-node"

[auth]
token_secret = "${TOKEN_SECRET}"
timeout = "5s"
allow_anonymous = true

[api]
key = "${API_KEY}"

[broker]
kind = "memory"

[shutdown]
drain_seconds = 1

[namespaces.room]
publish = true
presence = true
join_leave = true
history_size = 1000
history_ttl = "1h"

[namespaces.news]
publish = false
history_size = 0

[namespaces.public]
anonymous = true
history_size = 10
history_ttl = "1h"

[namespaces.user]
history_size = 100
history_ttl = "10m"
${extra || ''}
`;

/** A running `ferrocast serve`. `extra` is TOML appended to the base config (add new tables or
 * keys of new tables only: TOML forbids defining a table twice). */
export class Server {
  static async start({ extra = '' } = {}) {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ferrocast-js-'));
    const server = new Server(dir, extra);
    let lastErr;
    for (let attempt = 0; attempt < 3; attempt++) {
      server.publicPort = await freePort();
      server.adminPort = await freePort();
      if (server.publicPort === server.adminPort) continue;
      try {
        await server._spawn();
        return server;
      } catch (err) {
        lastErr = err;
        if (!/address.*in use|addrinuse/i.test(String(err.message))) break;
      }
    }
    throw lastErr;
  }

  constructor(dir, extra) {
    this.dir = dir;
    this.extra = extra;
    this.proc = null;
    this.generation = 0;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.publicPort}/ws`;
  }

  get sseUrl() {
    return `http://127.0.0.1:${this.publicPort}/sse`;
  }

  get apiUrl() {
    return `http://127.0.0.1:${this.publicPort}/api`;
  }

  get logPath() {
    return path.join(this.dir, `server-${this.generation}.log`);
  }

  log() {
    try {
      return readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  async _spawn() {
    this.generation++;
    const configPath = path.join(this.dir, 'config.toml');
    writeFileSync(configPath, BASE_CONFIG({ publicPort: this.publicPort, adminPort: this.adminPort, extra: this.extra }));
    const { openSync, closeSync } = await import('node:fs');
    const fd = openSync(this.logPath, 'w');
    const proc = spawn(serverBin(), ['serve', '--config', configPath], {
      stdio: ['ignore', fd, fd],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
    });
    closeSync(fd);
    this.proc = proc;
    proc.exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
    proc.exitInfo = null;
    proc.exited.then((info) => (proc.exitInfo = info));
    const deadline = Date.now() + 10000;
    for (;;) {
      if (proc.exitInfo) throw new Error(`ferrocast exited before ready (${JSON.stringify(proc.exitInfo)}):\n${this.log()}`);
      if ((await getStatus(`http://127.0.0.1:${this.adminPort}/health/ready`)) === 200) return;
      if (Date.now() > deadline) {
        proc.kill('SIGKILL');
        throw new Error(`ferrocast not ready within 10 s:\n${this.log()}`);
      }
      await sleep(25);
    }
  }

  /** Sends `signal` and waits for the process to exit. */
  async stop(signal = 'SIGKILL', timeout = 10000) {
    const proc = this.proc;
    if (!proc || proc.exitInfo) return proc && proc.exitInfo;
    proc.kill(signal);
    const t = setTimeout(() => proc.kill('SIGKILL'), timeout);
    const info = await proc.exited;
    clearTimeout(t);
    return info;
  }

  /** Starts the binary again on the same ports (the listening sockets may take a moment). */
  async restart() {
    let lastErr;
    for (let attempt = 0; attempt < 20; attempt++) {
      try {
        await this._spawn();
        return;
      } catch (err) {
        lastErr = err;
        await sleep(100);
      }
    }
    throw lastErr;
  }

  async close() {
    await this.stop('SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** POST /api/<method>; resolves to the JSON answer, throws on a non-2xx status. */
  async api(method, body = {}) {
    const res = await postJson(`${this.apiUrl}/${method}`, body, { Authorization: `apikey ${API_KEY}` });
    if (res.status < 200 || res.status >= 300) {
      const err = new Error(`POST /api/${method}: HTTP ${res.status} ${JSON.stringify(res.body)}`);
      err.status = res.status;
      err.body = res.body;
      throw err;
    }
    return res.body;
  }

  publish(channel, data) {
    return this.api('publish', { channel, data });
  }
}

/** A TCP proxy in front of `targetPort`, to cut connections (the client sees 1006) or to freeze
 * them (bytes stop flowing, nothing is closed) like a network would. */
export class Proxy {
  static start(targetPort) {
    const proxy = new Proxy(targetPort);
    return new Promise((resolve, reject) => {
      proxy.server.on('error', reject);
      proxy.server.listen(0, '127.0.0.1', () => {
        proxy.port = proxy.server.address().port;
        resolve(proxy);
      });
    });
  }

  constructor(targetPort) {
    this.targetPort = targetPort;
    this.pairs = new Set();
    this.refusing = false;
    this.accepted = 0;
    this.server = net.createServer((client) => this._accept(client));
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  _accept(client) {
    if (this.refusing) {
      client.destroy();
      return;
    }
    this.accepted++;
    const upstream = net.connect(this.targetPort, '127.0.0.1');
    const pair = { client, upstream, frozen: false };
    this.pairs.add(pair);
    const end = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
    client.on('data', (d) => {
      if (!pair.frozen) upstream.write(d);
    });
    upstream.on('data', (d) => {
      if (!pair.frozen) client.write(d);
    });
  }

  /** Destroys every open connection, in both directions. */
  cut() {
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  /** Cuts every connection and refuses new ones until `up()`. */
  down() {
    this.refusing = true;
    this.cut();
  }

  up() {
    this.refusing = false;
  }

  /** From now on, silently drops every byte of the open connections in both directions (a dead
   * peer or a broken route), without closing anything. New connections are not affected. */
  freeze() {
    for (const pair of this.pairs) pair.frozen = true;
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** An HTTP proxy in front of `targetPort` like a corporate one that breaks WebSockets: plain
 * requests (the SSE stream included, streamed) pass; an Upgrade is refused with 403 while
 * `blockWebSocket` is set (else tunnelled). `cutStreams()` ends every open proxied response
 * abruptly (the client sees the stream break); `files` ({path: {type, body}}) are served by
 * the proxy itself, so that a page and the node share one origin. `requests` logs
 * `{url, headers}` of every proxied request. */
export class HttpProxy {
  static start(targetPort, options = {}) {
    const proxy = new HttpProxy(targetPort, options);
    return new Promise((resolve, reject) => {
      proxy.server.on('error', reject);
      proxy.server.listen(0, '127.0.0.1', () => {
        proxy.port = proxy.server.address().port;
        resolve(proxy);
      });
    });
  }

  constructor(targetPort, { blockWebSocket = true, files = {} } = {}) {
    this.targetPort = targetPort;
    this.blockWebSocket = blockWebSocket;
    this.files = files;
    this.requests = [];
    this.upgrades = 0;
    this.live = new Set(); // sockets of proxied requests and tunnels
    this.server = http.createServer((req, res) => this._request(req, res));
    this.server.on('upgrade', (req, socket, head) => this._upgrade(req, socket, head));
  }

  get origin() {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  _track(socket) {
    this.live.add(socket);
    socket.on('close', () => this.live.delete(socket));
  }

  _request(req, res) {
    const path = req.url.split('?')[0];
    const file = this.files[path];
    if (file) {
      res.writeHead(200, { 'content-type': file.type, 'cache-control': 'no-store' });
      res.end(typeof file.body === 'function' ? file.body() : file.body);
      return;
    }
    this.requests.push({ url: req.url, headers: { ...req.headers } });
    const upstream = http.request(
      { host: '127.0.0.1', port: this.targetPort, method: req.method, path: req.url, headers: req.headers, agent: false },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        res.flushHeaders();
        up.on('data', (d) => res.write(d));
        up.on('end', () => res.end());
        up.on('error', () => res.destroy());
      },
    );
    upstream.on('socket', (s) => this._track(s));
    this._track(req.socket);
    upstream.on('error', () => res.destroy());
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  }

  _upgrade(req, socket, head) {
    this.upgrades++;
    if (this.blockWebSocket) {
      socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      return;
    }
    const upstream = net.connect(this.targetPort, '127.0.0.1', () => {
      let head0 = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) head0 += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      upstream.write(head0 + '\r\n');
      if (head && head.length) upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    this._track(socket);
    this._track(upstream);
    const end = () => {
      socket.destroy();
      upstream.destroy();
    };
    socket.on('error', end);
    upstream.on('error', end);
    socket.on('close', end);
    upstream.on('close', end);
  }

  /** Ends every open proxied connection (SSE streams, tunnelled WebSockets) without a goodbye. */
  cutStreams() {
    for (const s of this.live) s.destroy();
    this.live.clear();
  }

  close() {
    const closed = new Promise((resolve) => this.server.close(() => resolve()));
    this.cutStreams();
    this.server.closeAllConnections();
    return closed;
  }
}
