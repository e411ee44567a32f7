// Server-side subscriptions and the SSE transport against scripted fakes (a fake WebSocket and a
// fake EventSource): the fallback rule, what works over SSE, re-opening the stream, the server's
// `disconnect` event, refusals (401/403), heartbeats, and the switch back to WebSocket.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';

import { Client, ErrorCodes, deriveSseUrl } from '../src/ferrocast.js';
import { waitFor, sleep } from './helpers.mjs';

class FakeWebSocket {
  static instances = [];
  static refuseAll = false;

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    FakeWebSocket.instances.push(this);
    if (FakeWebSocket.refuseAll) queueMicrotask(() => this.refuse());
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
    if (this.readyState !== 0) return;
    this.readyState = 3;
    this.onerror && this.onerror({ message: 'refused' });
    this.onclose && this.onclose({ code: 1006, reason: '' });
  }

  lastCommand(kind) {
    const all = this.sent.filter((f) => kind in f);
    return all[all.length - 1];
  }

  accept(user = 'u') {
    this.open();
    const c = this.lastCommand('connect');
    const info = { client: 'c-1', user, node: 'n', ping_interval: 25 };
    this.push({ id: c.id, result: info });
    this.push({ connected: info });
  }
}

class FakeEventSource {
  static instances = [];
  static heartbeats = false;

  constructor(url, init) {
    this.url = url;
    this.init = init;
    this.readyState = 0;
    this.lastEventId = '';
    this.heartbeats = FakeEventSource.heartbeats;
    this.closed = false;
    this.onopen = this.onmessage = this.onerror = null;
    this.listeners = {};
    FakeEventSource.instances.push(this);
  }

  static get last() {
    return FakeEventSource.instances[FakeEventSource.instances.length - 1];
  }

  addEventListener(type, fn) {
    (this.listeners[type] ||= []).push(fn);
  }

  close() {
    this.closed = true;
    this.readyState = 2;
  }

  get params() {
    return new URL(this.url).searchParams;
  }

  // -- the test's side (the server)
  open() {
    this.readyState = 1;
    this.onopen && this.onopen({});
  }

  push(obj, id) {
    if (id !== undefined) this.lastEventId = id;
    this.onmessage && this.onmessage({ data: JSON.stringify(obj), lastEventId: this.lastEventId });
  }

  accept(user = 'u', ping_interval = 25) {
    this.open();
    this.push({ connected: { client: 'c-sse', user, node: 'n', ping_interval, transport: 'sse' } });
  }

  heartbeat() {
    for (const fn of this.listeners.heartbeat || []) fn({ type: 'heartbeat' });
  }

  /** The stream broke; a real EventSource now reconnects by itself. */
  drop() {
    this.readyState = 0;
    this.onerror && this.onerror({ type: 'error' });
  }

  /** An HTTP error answer: the EventSource fails for good. */
  refuse(status, body) {
    this.readyState = 2;
    this.onerror && this.onerror({ type: 'error', status, body });
  }
}

const clients = [];
afterEach(() => {
  for (const c of clients) c.disconnect();
  clients.length = 0;
  FakeWebSocket.instances = [];
  FakeWebSocket.refuseAll = false;
  FakeEventSource.instances = [];
  FakeEventSource.heartbeats = false;
});

function client(options = {}) {
  const c = new Client('ws://fake:8000/ws', {
    WebSocket: FakeWebSocket,
    EventSource: FakeEventSource,
    token: 't',
    minReconnectDelay: 5,
    maxReconnectDelay: 20,
    timeout: 300,
    ...options,
  });
  clients.push(c);
  return c;
}

function record(emitter, events) {
  const log = [];
  for (const e of events) emitter.on(e, (arg) => log.push([e, arg]));
  return log;
}

/** Connects over SSE: the WebSocket is refused `fallbackAfter` (2) times. */
async function onSse(c, user = 'u') {
  FakeWebSocket.refuseAll = true;
  c.connect();
  await waitFor(() => FakeEventSource.instances.length === 1, 2000, 'the SSE fallback');
  const es = FakeEventSource.last;
  es.accept(user);
  return es;
}

test('deriveSseUrl: ws → http, wss → https, /ws → /sse, query kept', () => {
  assert.equal(deriveSseUrl('ws://h:8000/ws'), 'http://h:8000/sse');
  assert.equal(deriveSseUrl('wss://h/edge/ws?x=1'), 'https://h/edge/sse?x=1');
  assert.equal(deriveSseUrl('wss://h/'), 'https://h/sse');
  assert.equal(deriveSseUrl('ws://h/rt'), 'http://h/rt/sse');
});

test('server-side subscription: announced by a push, recovered through connect.subs on reconnect', async () => {
  const c = client();
  const created = [];
  c.on('subscription', ({ subscription }) => {
    created.push(subscription.channel);
    record(subscription, ['subscribed', 'publication']).forEach(() => {});
  });
  const got = [];
  const subscribedCtx = [];
  c.on('subscription', ({ subscription }) => {
    subscription.on('subscribed', (s) => subscribedCtx.push(s));
    subscription.on('publication', (p) => got.push(p.offset));
  });
  c.connect();
  const ws = FakeWebSocket.last;
  ws.accept('17');
  ws.push({ channel: 'user:17', subscribe: { offset: 20, epoch: 'k3' } });
  assert.deepEqual(created, ['user:17']);
  const sub = c.getSubscription('user:17');
  assert.equal(sub.serverSide, true);
  assert.equal(sub.state, 'subscribed');
  assert.equal(subscribedCtx[0].serverSide, true);
  assert.equal(subscribedCtx[0].recovered, false);
  assert.equal(subscribedCtx[0].wasRecovering, false);
  ws.push({ channel: 'user:17', pub: { offset: 21, data: 'a' } });
  assert.deepEqual(got, [21]);
  assert.equal(ws.sent.filter((f) => f.subscribe).length, 0, 'no subscribe command for it');

  // Reconnect: `connect` carries the position; the server recovers it with a push.
  ws.serverClose(1006);
  await waitFor(() => FakeWebSocket.instances.length === 2, 2000, 'a reconnect');
  const ws2 = FakeWebSocket.last;
  ws2.open();
  const connect = ws2.lastCommand('connect');
  assert.deepEqual(connect.connect, { token: 't', subs: { 'user:17': { offset: 21, epoch: 'k3' } } });
  ws2.push({ id: connect.id, result: { client: 'c2', user: '17', node: 'n', ping_interval: 25 } });
  assert.equal(ws2.sent.filter((f) => f.subscribe).length, 0);
  ws2.push({
    channel: 'user:17',
    subscribe: {
      offset: 23,
      epoch: 'k3',
      recovered: true,
      publications: [
        { offset: 21, data: 'a' },
        { offset: 22, data: 'b' },
        { offset: 23, data: 'c' },
      ],
    },
  });
  ws2.push({ channel: 'user:17', pub: { offset: 23, data: 'c' } }); // duplicate
  ws2.push({ channel: 'user:17', pub: { offset: 24, data: 'd' } });
  assert.deepEqual(got, [21, 22, 23, 24]);
  assert.equal(subscribedCtx[1].recovered, true);
  assert.equal(subscribedCtx[1].wasRecovering, true);
  assert.equal(created.length, 1, 'the same Subscription object');

  // Not recoverable: recovered false for a given position is the "not recovered" signal.
  ws2.serverClose(4010);
  await waitFor(() => FakeWebSocket.instances.length === 3, 2000, 'a reconnect');
  const ws3 = FakeWebSocket.last;
  ws3.accept('17');
  assert.deepEqual(ws3.lastCommand('connect').connect.subs, { 'user:17': { offset: 24, epoch: 'k3' } });
  ws3.push({ channel: 'user:17', subscribe: { offset: 3, epoch: 'new', recovered: false, publications: [] } });
  assert.equal(subscribedCtx[2].recovered, false);
  assert.equal(subscribedCtx[2].wasRecovering, true);
  assert.equal(sub.offset, 3);
  assert.equal(sub.epoch, 'new');
});

test('a server-side subscription the server does not announce again is dropped after `timeout`', async () => {
  const c = client();
  c.connect();
  const ws = FakeWebSocket.last;
  ws.accept();
  ws.push({ channel: 'room:9', subscribe: { offset: 0, epoch: 'e' } });
  const sub = c.getSubscription('room:9');
  const log = record(sub, ['unsubscribed']);
  ws.serverClose(1006);
  await waitFor(() => FakeWebSocket.instances.length === 2, 2000, 'a reconnect');
  FakeWebSocket.last.accept();
  await waitFor(() => log.length === 1, 2000, 'the drop');
  assert.equal(log[0][1].server, true);
  assert.equal(c.getSubscription('room:9'), null);
});

test('a push for a channel the client subscribed itself makes it server-side, without a second event', async () => {
  const c = client();
  c.connect();
  const sub = c.subscribe('room:1');
  const log = record(sub, ['subscribed', 'publication', 'error', 'unsubscribed']);
  const ws = FakeWebSocket.last;
  ws.accept();
  const cmd = ws.lastCommand('subscribe');
  ws.push({ id: cmd.id, result: { offset: 5, epoch: 'e' } });
  ws.push({ channel: 'room:1', subscribe: { offset: 5, epoch: 'e' } }); // POST /api/subscribe
  assert.equal(sub.serverSide, true);
  assert.deepEqual(log.map(([e]) => e), ['subscribed']);
  ws.push({ channel: 'room:1', pub: { offset: 6, data: 1 } });
  assert.deepEqual(log.map(([e]) => e), ['subscribed', 'publication']);

  // A push racing the client's own subscribe: the push wins, the 105 reply is ignored.
  const sub2 = c.subscribe('room:2');
  const log2 = record(sub2, ['subscribed', 'error']);
  const cmd2 = ws.lastCommand('subscribe');
  ws.push({ channel: 'room:2', subscribe: { offset: 1, epoch: 'e' } });
  ws.push({ id: cmd2.id, error: { code: 105, message: 'already subscribed' } });
  assert.deepEqual(log2.map(([e]) => e), ['subscribed']);
  assert.equal(ws.sent.filter((f) => f.unsubscribe).length, 0);
});

test('fallback: after 2 WebSocket failures before open the client uses SSE; commands reject with code 6', async () => {
  const c = client();
  const room = c.subscribe('room:1');
  const log = record(room, ['subscribed', 'publication']);
  const states = record(c, ['connected', 'disconnected']);
  const es = await onSse(c);
  assert.equal(FakeWebSocket.instances.length, 2);
  assert.equal(es.url.split('?')[0], 'http://fake:8000/sse');
  assert.equal(es.params.get('token'), 't');
  assert.deepEqual(es.params.getAll('channel'), ['room:1']);
  assert.equal(es.params.get('last_event_id'), null);
  assert.equal(c.state, 'connected');
  assert.equal(c.transport, 'sse');
  assert.equal(c.info.transport, 'sse');
  es.push({ channel: 'room:1', subscribe: { offset: 2, epoch: 'e' } });
  es.push({ channel: 'user:u', subscribe: { offset: 0, epoch: 'f' } }); // the token's `subs`
  es.push({ channel: 'room:1', pub: { offset: 3, data: 'x' } }, '3.e.room:1');
  assert.deepEqual(log.map(([e, a]) => [e, a.offset]), [['subscribed', 2], ['publication', 3]]);
  assert.equal(c.getSubscription('user:u').serverSide, true);
  assert.equal(room.serverSide, false);
  for (const p of [c.publish('room:1', 1), c.presence('room:1'), c.history('room:1'), c.ping()]) {
    await assert.rejects(p, (err) => err.code === ErrorCodes.TRANSPORT && /SSE/.test(err.message));
  }
  assert.deepEqual(states.map(([e]) => e), ['connected']);
});

test('transports: ["sse"] goes straight to SSE; ["websocket"] never does', async () => {
  const c = client({ transports: ['sse'] });
  c.connect();
  await waitFor(() => FakeEventSource.instances.length === 1, 1000, 'SSE');
  assert.equal(FakeWebSocket.instances.length, 0);
  c.disconnect();
  FakeWebSocket.refuseAll = true;
  const w = client({ transports: ['websocket'] });
  w.connect();
  await waitFor(() => FakeWebSocket.instances.length >= 5, 2000, 'retries');
  assert.equal(FakeEventSource.instances.length, 1);
});

test('SSE: subscribe and unsubscribe open the stream again with the last id, quietly', async () => {
  const c = client();
  const room = c.subscribe('room:1');
  const got = [];
  c.on('publication', (p) => got.push(`${p.channel}@${p.offset}`));
  const states = record(c, ['connected', 'disconnected', 'state']);
  const es = await onSse(c);
  es.push({ channel: 'room:1', subscribe: { offset: 0, epoch: 'e' } });
  es.push({ channel: 'room:1', pub: { offset: 1, data: 1 } }, 'id-1');
  const other = c.subscribe('room:2');
  c.subscribe('room:3'); // coalesced into the same re-open
  await waitFor(() => FakeEventSource.instances.length === 2, 1000, 're-open');
  assert.equal(es.closed, true);
  const es2 = FakeEventSource.last;
  assert.deepEqual(es2.params.getAll('channel'), ['room:1', 'room:2', 'room:3']);
  assert.equal(es2.params.get('last_event_id'), 'id-1');
  es2.accept();
  es2.push({ channel: 'room:1', subscribe: { offset: 2, epoch: 'e', recovered: true, publications: [{ offset: 2, data: 2 }] } });
  es2.push({ channel: 'room:2', subscribe: { offset: 7, epoch: 'e2' } });
  es2.push({ channel: 'room:3', error: { code: 103, message: 'permission denied' } });
  await assert.rejects(c.getSubscription('room:3')?.ready() ?? Promise.reject(new Error('gone')));
  assert.equal(c.getSubscription('room:3'), null);
  assert.equal(other.state, 'subscribed');
  assert.equal(room.state, 'subscribed');
  es2.push({ channel: 'room:2', pub: { offset: 8, data: 8 } }, 'id-2');
  assert.deepEqual(got, ['room:1@1', 'room:1@2', 'room:2@8']);
  assert.deepEqual(
    states.filter(([e]) => e !== 'state').map(([e]) => e),
    ['connected'],
    'no disconnected/connected for a re-open',
  );

  other.unsubscribe();
  await waitFor(() => FakeEventSource.instances.length === 3, 1000, 're-open');
  assert.deepEqual(FakeEventSource.last.params.getAll('channel'), ['room:1']);
  assert.equal(FakeEventSource.last.params.get('last_event_id'), 'id-2');
});

test('SSE: a gap opens the stream again from the id before it', async () => {
  const c = client();
  const room = c.subscribe('room:1');
  const got = [];
  room.on('publication', (p) => got.push(p.offset));
  const es = await onSse(c);
  es.push({ channel: 'room:1', subscribe: { offset: 0, epoch: 'e' } });
  es.push({ channel: 'room:1', pub: { offset: 1, data: 1 } }, 'id-1');
  es.push({ channel: 'room:1', pub: { offset: 3, data: 3 } }, 'id-3'); // 2 missing
  await waitFor(() => FakeEventSource.instances.length === 2, 1000, 're-open');
  const es2 = FakeEventSource.last;
  assert.equal(es2.params.get('last_event_id'), 'id-1');
  es2.accept();
  es2.push({
    channel: 'room:1',
    subscribe: { offset: 3, epoch: 'e', recovered: true, publications: [{ offset: 2, data: 2 }, { offset: 3, data: 3 }] },
  });
  assert.deepEqual(got, [1, 2, 3]);
});

test("SSE: the EventSource's own reconnect (stream broke) and the server's recovery", async () => {
  const c = client();
  const room = c.subscribe('room:1');
  const log = record(room, ['subscribed', 'subscribing', 'publication']);
  const clog = record(c, ['disconnected', 'connected']);
  const es = await onSse(c);
  es.push({ channel: 'room:1', subscribe: { offset: 0, epoch: 'e' } });
  es.push({ channel: 'room:1', pub: { offset: 1, data: 1 } }, 'id-1');
  es.drop();
  assert.equal(c.state, 'connecting');
  assert.deepEqual(clog.map(([e, a]) => [e, a.code]), [['connected', undefined], ['disconnected', 1006]]);
  // The same EventSource comes back (it sent Last-Event-ID itself).
  es.accept();
  es.push({ channel: 'room:1', subscribe: { offset: 2, epoch: 'e', recovered: true, publications: [{ offset: 2, data: 2 }] } });
  assert.equal(c.state, 'connected');
  assert.equal(FakeEventSource.instances.length, 1);
  const subscribed = log.filter(([e]) => e === 'subscribed').map(([, a]) => a);
  assert.equal(subscribed[1].wasRecovering, true);
  assert.equal(subscribed[1].recovered, true);
  assert.deepEqual(log.filter(([e]) => e === 'publication').map(([, a]) => a.offset), [1, 2]);

  // It does not come back within `timeout`: the client opens its own with last_event_id.
  es.push({ channel: 'room:1', pub: { offset: 3, data: 3 } }, 'id-3');
  es.drop();
  await waitFor(() => FakeEventSource.instances.length + FakeWebSocket.instances.length > 3, 3000, 'own reconnect');
  assert.equal(es.closed, true);
  await waitFor(() => FakeEventSource.instances.length === 2, 3000, 'a new EventSource');
  assert.equal(FakeEventSource.last.params.get('last_event_id'), 'id-3');
});

test('SSE: the `disconnect` event — reconnect: true reconnects, reconnect: false stops', async () => {
  const c = client();
  c.subscribe('room:1');
  const clog = record(c, ['disconnected']);
  const es = await onSse(c);
  es.push({ channel: 'room:1', subscribe: { offset: 0, epoch: 'e' } });
  es.push({ channel: 'room:1', pub: { offset: 1, data: 1 } }, 'id-1');
  es.push({ disconnect: { code: 4010, reason: 'shutdown', reconnect: true } });
  assert.equal(es.closed, true, 'no reconnect of its own');
  assert.deepEqual(clog[0][1], { code: 4010, reason: 'shutdown', reconnect: true });
  assert.equal(c.state, 'connecting');
  // The SSE stream had worked: the WebSocket is tried once more, then SSE again with the id.
  await waitFor(() => FakeEventSource.instances.length === 2, 3000, 'reconnect');
  const es2 = FakeEventSource.last;
  assert.equal(es2.params.get('last_event_id'), 'id-1');
  es2.accept();
  es2.push({ disconnect: { code: 4003, reason: 'forbidden', reconnect: false } });
  assert.equal(c.state, 'disconnected');
  assert.deepEqual(clog[1][1], { code: 4003, reason: 'forbidden', reconnect: false });
});

test('SSE refused: 401 (101) stops; 401 (109) gets a fresh token from getToken; 503 retries', async () => {
  FakeWebSocket.refuseAll = true;
  const c = client({ transports: ['sse'] });
  const clog = record(c, ['disconnected', 'error']);
  c.connect();
  await waitFor(() => FakeEventSource.instances.length === 1, 1000, 'SSE');
  FakeEventSource.last.refuse(401, { error: { code: 101, message: 'unauthorized' } });
  assert.equal(c.state, 'disconnected');
  const d = clog.find(([e]) => e === 'disconnected')[1];
  assert.equal(d.reconnect, false);
  assert.equal(d.code, 4003);
  assert.equal(clog.find(([e]) => e === 'error')[1].code, 101);
  await sleep(50);
  assert.equal(FakeEventSource.instances.length, 1, 'no loop');

  let calls = 0;
  const g = client({ transports: ['sse'], token: 'old', getToken: async () => `fresh-${++calls}` });
  g.connect();
  await waitFor(() => FakeEventSource.instances.length === 2, 1000, 'SSE');
  FakeEventSource.last.refuse(401, { error: { code: 109, message: 'token expired' } });
  await waitFor(() => FakeEventSource.instances.length === 3, 2000, 'retry');
  assert.equal(FakeEventSource.last.params.get('token'), 'fresh-1');
  FakeEventSource.last.refuse(503, { error: { code: 108, message: 'draining' } });
  await waitFor(() => FakeEventSource.instances.length === 4, 3000, 'retry after 503');
  assert.equal(g.state, 'connecting');
  FakeEventSource.last.accept();
  assert.equal(g.state, 'connected');
});

test('SSE refused with a browser-like EventSource (no status): the client asks once with fetch', async () => {
  const realFetch = globalThis.fetch;
  const asked = [];
  globalThis.fetch = async (url) => {
    asked.push(url);
    return new Response(JSON.stringify({ error: { code: 101, message: 'bad token' } }), { status: 401 });
  };
  try {
    const c = client({ transports: ['sse'] });
    c.connect();
    await waitFor(() => FakeEventSource.instances.length === 1, 1000, 'SSE');
    FakeEventSource.last.refuse(undefined, undefined);
    await waitFor(() => c.state === 'disconnected', 1000, 'stop');
    assert.equal(asked.length, 1);
    assert.match(asked[0], /\/sse\?token=t/);
  } finally {
    globalThis.fetch = realFetch;
  }
});

test('SSE liveness: no heartbeat for 2.5 × ping interval → a new stream; heartbeats keep it', async () => {
  FakeEventSource.heartbeats = true;
  const c = client({ transports: ['sse'], pingInterval: 40 });
  c.connect();
  await waitFor(() => FakeEventSource.instances.length === 1, 1000, 'SSE');
  const es = FakeEventSource.last;
  es.accept();
  for (let i = 0; i < 8; i++) {
    await sleep(30);
    es.heartbeat();
  }
  assert.equal(FakeEventSource.instances.length, 1, 'heartbeats keep it alive');
  await waitFor(() => FakeEventSource.instances.length === 2, 1000, 'replaced');
  assert.equal(es.closed, true);
});

test('SSE: the client tries WebSocket again and switches back when it opens', async () => {
  const c = client({ wsRetryInterval: 60 });
  const room = c.subscribe('room:1');
  const log = record(room, ['subscribed']);
  const clog = record(c, ['disconnected', 'connected']);
  const es = await onSse(c);
  es.push({ channel: 'room:1', subscribe: { offset: 3, epoch: 'e' } });
  es.push({ channel: 'room:1', pub: { offset: 4, data: 4 } }, 'id-4');
  FakeWebSocket.refuseAll = false;
  await waitFor(() => FakeWebSocket.instances.length === 3, 1000, 'a probe');
  FakeWebSocket.last.refuse(); // still blocked
  await waitFor(() => FakeWebSocket.instances.length === 4, 1000, 'the next probe');
  assert.equal(c.transport, 'sse');
  await sleep(100);
  assert.equal(FakeWebSocket.instances.length, 4, 'one probe at a time');
  FakeWebSocket.last.serverClose(1006); // a probe that ends without opening
  await waitFor(() => FakeWebSocket.instances.length === 5, 1000, 'the next probe');
  FakeWebSocket.last.open();
  await waitFor(() => FakeWebSocket.instances.length === 6, 1000, 'the switch');
  assert.equal(es.closed, true);
  const ws = FakeWebSocket.last;
  ws.accept();
  assert.equal(c.transport, 'websocket');
  assert.deepEqual(ws.lastCommand('subscribe').subscribe, { channel: 'room:1', recover: { offset: 4, epoch: 'e' } });
  assert.deepEqual(clog.map(([e, a]) => [e, a.code ?? a.transport]), [
    ['connected', 'sse'],
    ['disconnected', 3001],
    ['connected', 'websocket'],
  ]);
  assert.equal(log.length, 1);
});
