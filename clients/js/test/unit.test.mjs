// Client logic against a scripted fake WebSocket: cases a real server produces only rarely
// (duplicate offsets after a subscribe reply, gaps, odd orderings) and timing rules (backoff).

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';

import { Client, FerrocastError, ErrorCodes } from '../src/ferrocast.js';
import { waitFor, sleep } from './helpers.mjs';

/** A WebSocket double: records what the client sends; the test plays the server. */
class FakeWebSocket {
  static instances = [];

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    FakeWebSocket.instances.push(this);
  }

  static get last() {
    return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
  }

  send(text) {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push(JSON.parse(text));
  }

  close(code = 1000, reason = '') {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  // -- the test's side
  open() {
    this.readyState = 1;
    this.onopen && this.onopen({});
  }

  push(obj) {
    this.onmessage && this.onmessage({ data: JSON.stringify(obj) });
  }

  serverClose(code, reason = '') {
    this.readyState = 3;
    this.onclose && this.onclose({ code, reason });
  }

  refuse() {
    this.onerror && this.onerror({ message: 'refused' });
  }

  /** The last command of kind `kind` the client sent. */
  lastCommand(kind) {
    const all = this.sent.filter((f) => kind in f);
    return all[all.length - 1];
  }

  /** Opens, answers `connect`, pushes `connected`. */
  accept(user = 'u') {
    this.open();
    const c = this.lastCommand('connect');
    const info = { client: 'c-1', user, node: 'n', ping_interval: 25 };
    this.push({ id: c.id, result: info });
    this.push({ connected: info });
  }
}

const clients = [];
afterEach(() => {
  for (const c of clients) c.disconnect();
  clients.length = 0;
  FakeWebSocket.instances = [];
});

function client(options = {}) {
  const c = new Client('ws://fake/ws', { WebSocket: FakeWebSocket, token: 't', minReconnectDelay: 5, maxReconnectDelay: 20, timeout: 500, ...options });
  clients.push(c);
  return c;
}

function subscribed(ws, channel, result) {
  const cmd = ws.sent.filter((f) => f.subscribe && f.subscribe.channel === channel).pop();
  ws.push({ id: cmd.id, result });
  return cmd;
}

test('duplicates right after a subscribe reply are dropped; recovered publications fill the gap once', async () => {
  const c = client();
  c.connect();
  const sub = c.subscribe('room:1');
  const got = [];
  sub.on('publication', (p) => got.push(p.offset));
  const ws = FakeWebSocket.last;
  ws.accept();
  subscribed(ws, 'room:1', { offset: 5, epoch: 'e1' });
  ws.push({ channel: 'room:1', pub: { offset: 4, data: 'old' } }); // in flight during subscribe
  ws.push({ channel: 'room:1', pub: { offset: 5, data: 'old' } });
  ws.push({ channel: 'room:1', pub: { offset: 6, data: 'x' } });
  ws.push({ channel: 'room:1', pub: { offset: 7, data: 'y' } });
  assert.deepEqual(got, [6, 7]);

  // Reconnect: recovery from offset 7 in epoch e1; the reply repeats 7 (a server may) and adds 8, 9.
  ws.serverClose(1006);
  await waitFor(() => FakeWebSocket.instances.length === 2, 2000, 'a reconnect');
  const ws2 = FakeWebSocket.last;
  ws2.accept();
  const cmd = subscribed(ws2, 'room:1', {
    offset: 9,
    epoch: 'e1',
    recovered: true,
    publications: [
      { offset: 7, data: 'y' },
      { offset: 8, data: 'z' },
      { offset: 9, data: 'w' },
    ],
  });
  assert.deepEqual(cmd.subscribe.recover, { offset: 7, epoch: 'e1' });
  ws2.push({ channel: 'room:1', pub: { offset: 9, data: 'w' } }); // duplicate of a recovered one
  ws2.push({ channel: 'room:1', pub: { offset: 10, data: 'v' } });
  assert.deepEqual(got, [6, 7, 8, 9, 10]);
  assert.equal(sub.offset, 10);
});

test('a gap or an offset going back makes the client resubscribe with recovery', async () => {
  const c = client();
  c.connect();
  const sub = c.subscribe('room:2');
  const got = [];
  const states = [];
  sub.on('publication', (p) => got.push(p.offset));
  sub.on('subscribing', (s) => states.push(s.reason));
  const ws = FakeWebSocket.last;
  ws.accept();
  subscribed(ws, 'room:2', { offset: 0, epoch: 'e1' });
  ws.push({ channel: 'room:2', pub: { offset: 1, data: 1 } });
  ws.push({ channel: 'room:2', pub: { offset: 3, data: 3 } }); // 2 is missing
  assert.deepEqual(got, [1]);
  assert.deepEqual(states, ['offset gap']);
  const unsub = ws.lastCommand('unsubscribe');
  assert.equal(unsub.unsubscribe.channel, 'room:2');
  const resub = ws.lastCommand('subscribe');
  assert.ok(resub.id > unsub.id, 'unsubscribe first');
  assert.deepEqual(resub.subscribe.recover, { offset: 1, epoch: 'e1' });
  ws.push({ id: unsub.id, result: {} });
  ws.push({
    id: resub.id,
    result: { offset: 3, epoch: 'e1', recovered: true, publications: [{ offset: 2, data: 2 }, { offset: 3, data: 3 }] },
  });
  assert.deepEqual(got, [1, 2, 3]);

  // Offset going back after live flow (the stream restarted under a new epoch).
  ws.push({ channel: 'room:2', pub: { offset: 4, data: 4 } });
  ws.push({ channel: 'room:2', pub: { offset: 1, data: 'new epoch' } });
  const again = ws.lastCommand('subscribe');
  assert.deepEqual(again.subscribe.recover, { offset: 4, epoch: 'e1' });
  const events = [];
  sub.on('subscribed', (s) => events.push(s));
  ws.push({ id: again.id, result: { offset: 1, epoch: 'e2', recovered: false, publications: [] } });
  assert.equal(events[0].recovered, false);
  assert.equal(events[0].wasRecovering, true);
  assert.equal(sub.epoch, 'e2');
  assert.equal(sub.offset, 1);
  ws.push({ channel: 'room:2', pub: { offset: 2, data: 'next' } });
  assert.deepEqual(got, [1, 2, 3, 4, 2]);
});

test('commands queue while connecting; replies resolve or reject with FerrocastError', async () => {
  const c = client();
  c.connect();
  const p1 = c.publish('room:q', { a: 1 });
  const p2 = c.history('room:q', { limit: 2 });
  const ws = FakeWebSocket.last;
  ws.open();
  assert.equal(ws.sent.length, 1, 'only connect before the connect reply');
  ws.accept();
  const pub = ws.lastCommand('publish');
  const hist = ws.lastCommand('history');
  assert.deepEqual(pub.publish, { channel: 'room:q', data: { a: 1 } });
  assert.deepEqual(hist.history, { channel: 'room:q', limit: 2 });
  ws.push({ id: hist.id, error: { code: 108, message: 'not available' } });
  ws.push({ id: pub.id, result: { offset: 1, epoch: 'e' } });
  assert.deepEqual(await p1, { offset: 1, epoch: 'e' });
  await assert.rejects(p2, (e) => e instanceof FerrocastError && e.code === 108 && e.message === 'not available');

  // No reply: TIMEOUT. Connection lost after sending: CONNECTION_CLOSED.
  await assert.rejects(c.presence('room:q'), { code: ErrorCodes.TIMEOUT });
  const lost = c.presenceStats('room:q');
  ws.serverClose(1006);
  await assert.rejects(lost, { code: ErrorCodes.CONNECTION_CLOSED });
});

test('backoff uses full jitter within exponentially growing bounds', async () => {
  const realRandom = Math.random;
  const c = client({ minReconnectDelay: 40, maxReconnectDelay: 250 });
  const times = [];
  try {
    Math.random = () => 0.999; // the top of each window
    c.connect();
    let t = Date.now();
    for (let i = 0; i < 4; i++) {
      const n = FakeWebSocket.instances.length;
      FakeWebSocket.last.refuse();
      await waitFor(() => FakeWebSocket.instances.length === n + 1, 3000, 'next attempt');
      times.push(Date.now() - t);
      t = Date.now();
    }
  } finally {
    Math.random = realRandom;
  }
  // Windows: 40, 80, 160, 250 (capped). Timers never fire early.
  const caps = [40, 80, 160, 250];
  times.forEach((ms, i) => {
    assert.ok(ms >= caps[i] * 0.999 - 2, `attempt ${i}: ${ms} ms >= ${caps[i]}`);
    assert.ok(ms < caps[i] + 500, `attempt ${i}: ${ms} ms not far above ${caps[i]}`);
  });
  // Connected resets the backoff: the next window is 40 ms again, not 250.
  Math.random = () => 0.999;
  try {
    FakeWebSocket.last.accept();
    const n = FakeWebSocket.instances.length;
    const t0 = Date.now();
    FakeWebSocket.last.serverClose(4010);
    await waitFor(() => FakeWebSocket.instances.length === n + 1, 3000, 'a reconnect');
    const ms = Date.now() - t0;
    assert.ok(ms >= 38 && ms < 240, `reconnect after ${ms} ms`);
  } finally {
    Math.random = realRandom;
  }
});

test('a terminal close stops the client: no reconnect attempt', async () => {
  const c = client();
  const seen = [];
  c.on('state', ({ state }) => seen.push(state));
  const gone = [];
  c.on('disconnected', (d) => gone.push(d));
  c.connect();
  FakeWebSocket.last.accept();
  FakeWebSocket.last.serverClose(4004, 'bad request');
  await sleep(50);
  assert.deepEqual(seen, ['connecting', 'connected', 'disconnected']);
  assert.deepEqual(gone, [{ code: 4004, reason: 'bad request', reconnect: false }]);
  assert.equal(FakeWebSocket.instances.length, 1);
});

test('the connected push alone (connect proxy) connects; unknown pushes and fields are ignored', async () => {
  const c = client({ token: undefined, connectProxy: true });
  c.connect();
  const ws = FakeWebSocket.last;
  ws.open();
  assert.equal(ws.sent.length, 0, 'no connect command: the proxy authenticates');
  ws.push({ connected: { client: 'c', user: '17', node: 'n', ping_interval: 25, extra: true } });
  assert.equal(c.state, 'connected');
  assert.equal(c.info.user, '17');
  ws.push({ channel: 'room:x', somethingNew: {} });
  ws.push({ future: 1 });
  assert.equal(c.state, 'connected');
});

test('an unsubscribe push with resubscribe: true makes the client recover; without it, the subscription ends', async () => {
  const c = client();
  c.connect();
  const sub = c.subscribe('room:3');
  const got = [];
  const reasons = [];
  sub.on('publication', (p) => got.push(p.offset));
  sub.on('subscribing', (s) => reasons.push(s.reason));
  const ws = FakeWebSocket.last;
  ws.accept();
  subscribed(ws, 'room:3', { offset: 0, epoch: 'e1' });
  ws.push({ channel: 'room:3', pub: { offset: 1, data: 1 } });
  ws.push({ channel: 'room:3', unsubscribe: { resubscribe: true, reason: 'insufficient state' } });
  assert.deepEqual(reasons, ['insufficient state']);
  const resub = ws.lastCommand('subscribe');
  assert.deepEqual(resub.subscribe.recover, { offset: 1, epoch: 'e1' });
  ws.push({ id: resub.id, result: { offset: 2, epoch: 'e1', recovered: true, publications: [{ offset: 2, data: 2 }] } });
  assert.deepEqual(got, [1, 2]);
  assert.equal(sub.state, 'subscribed');

  const ended = [];
  sub.on('unsubscribed', (e) => ended.push(e));
  ws.push({ channel: 'room:3', unsubscribe: {} });
  assert.equal(sub.state, 'unsubscribed');
  assert.equal(ended.length, 1);
});
