// Server-side subscriptions and the SSE transport against the real binary: token `subs`,
// POST /api/subscribe, recovery through connect.subs; the fallback to SSE behind a proxy that
// refuses WebSocket upgrades, re-opening the stream, resuming a cut stream from its last id
// without loss, the `disconnect` event, 401, and the switch back to WebSocket.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { Client, ErrorCodes } from '../src/ferrocast.js';
import { Server, Proxy, HttpProxy, mintToken, webSocketCtor, waitFor, nextEvent, sleep } from './helpers.mjs';

let server;
let WebSocket;
const clients = [];

before(async () => {
  WebSocket = await webSocketCtor();
  server = await Server.start();
});

after(async () => {
  for (const c of clients) c.disconnect();
  await server.close();
});

function client(url, options = {}) {
  const c = new Client(url, { WebSocket, minReconnectDelay: 20, maxReconnectDelay: 200, timeout: 3000, ...options });
  clients.push(c);
  return c;
}

/** Every publication the client sees, as `channel@offset:data.n`. */
function collect(c) {
  const got = [];
  c.on('publication', (p) => got.push(`${p.channel}@${p.offset}:${p.data && p.data.n}`));
  return got;
}

test('server-side subscriptions: token `subs`, POST /api/subscribe, recovered through connect.subs', async () => {
  const proxy = await Proxy.start(server.publicPort);
  try {
    const c = client(proxy.wsUrl, { token: mintToken('ss1', { subs: ['user:ss1'] }), transports: ['websocket'] });
    const got = collect(c);
    const created = [];
    const subscribed = [];
    c.on('subscription', ({ subscription }) => {
      created.push(subscription.channel);
      subscription.on('subscribed', (s) => subscribed.push(s));
    });
    c.connect();
    await waitFor(() => subscribed.length === 1, 5000, 'the token subs announced');
    assert.deepEqual(created, ['user:ss1']);
    assert.equal(c.getSubscription('user:ss1').serverSide, true);
    assert.equal(subscribed[0].serverSide, true);

    await server.api('subscribe', { user: 'ss1', channel: 'room:ss' });
    await waitFor(() => subscribed.length === 2, 5000, 'POST /api/subscribe announced');
    assert.equal(subscribed[1].channel, 'room:ss');

    await server.publish('user:ss1', { n: 1 });
    await server.publish('room:ss', { n: 1 });
    await waitFor(() => got.length === 2, 5000, 'live publications');

    // Network loss; publications while away are recovered by the server from connect.subs.
    proxy.down();
    await server.publish('user:ss1', { n: 2 });
    await server.publish('user:ss1', { n: 3 });
    await server.publish('room:ss', { n: 2 });
    proxy.up();
    await waitFor(() => subscribed.length === 4, 10000, 'both recovered');
    for (const s of subscribed.slice(2)) {
      assert.equal(s.wasRecovering, true, s.channel);
      assert.equal(s.recovered, true, s.channel);
    }
    await server.publish('user:ss1', { n: 4 });
    await waitFor(() => got.length === 6, 5000, 'all publications');
    assert.deepEqual(got.filter((g) => g.startsWith('user:')), ['user:ss1@1:1', 'user:ss1@2:2', 'user:ss1@3:3', 'user:ss1@4:4']);
    assert.deepEqual(got.filter((g) => g.startsWith('room:')), ['room:ss@1:1', 'room:ss@2:2']);
    assert.equal(created.length, 2, 'the same Subscription objects across the reconnect');
  } finally {
    await proxy.close();
  }
});

test('SSE fallback behind a proxy that refuses WebSocket: receive, re-open, resume a cut stream without loss, switch back', async () => {
  const proxy = await HttpProxy.start(server.publicPort, { blockWebSocket: true });
  try {
    const c = client(proxy.wsUrl, { token: mintToken('sse1', { subs: ['user:sse1'] }), wsRetryInterval: 400 });
    const got = collect(c);
    const states = [];
    c.on('connected', (i) => states.push(`connected:${i.transport}`));
    c.on('disconnected', (d) => states.push(`disconnected:${d.code}`));
    const room = c.subscribe('room:sse-a');
    const roomEvents = [];
    room.on('subscribed', (s) => roomEvents.push(s));
    c.connect();
    await room.ready(10000);
    assert.equal(c.transport, 'sse');
    assert.equal(proxy.upgrades, 2, 'two WebSocket attempts, then SSE');
    await waitFor(() => c.getSubscription('user:sse1'), 5000, 'the token subs over SSE');
    assert.equal(c.getSubscription('user:sse1').serverSide, true);

    await assert.rejects(c.publish('room:sse-a', { n: 0 }), (e) => e.code === ErrorCodes.TRANSPORT);
    await assert.rejects(c.history('room:sse-a'), (e) => e.code === ErrorCodes.TRANSPORT);

    await server.publish('room:sse-a', { n: 1 });
    await server.publish('user:sse1', { n: 1 });
    await waitFor(() => got.length === 2, 5000, 'publications over SSE');

    // A new channel: the stream is opened again with it, from the last id; nothing is lost.
    const b = c.subscribe('room:sse-b');
    await server.publish('room:sse-a', { n: 2 }); // while the stream is being re-opened
    await b.ready(5000);
    await server.publish('room:sse-b', { n: 1 });
    await waitFor(() => got.length === 4, 5000, 'after the re-open');
    const reopen = proxy.requests.filter((r) => r.url.startsWith('/sse')).pop();
    assert.match(reopen.url, /last_event_id=/);
    // Every subscription held is named, server-side ones included (the server dedupes them with
    // the token's `subs`; one added by POST /api/subscribe survives a stream without an id).
    assert.deepEqual(new URLSearchParams(reopen.url.split('?')[1]).getAll('channel').sort(), ['room:sse-a', 'room:sse-b', 'user:sse1']);

    // The stream breaks; publications meanwhile come back through the last id.
    proxy.cutStreams();
    await server.publish('room:sse-a', { n: 3 });
    await server.publish('room:sse-b', { n: 2 });
    await server.publish('user:sse1', { n: 2 });
    await waitFor(() => got.length === 7, 10000, 'the resumed stream');
    assert.equal(c.transport, 'sse');
    const resumed = roomEvents[roomEvents.length - 1];
    assert.equal(resumed.wasRecovering, true);
    assert.equal(resumed.recovered, true);

    // WebSocket allowed again: the client switches back, positions carried over.
    proxy.blockWebSocket = false;
    await waitFor(() => c.transport === 'websocket' && c.state === 'connected', 10000, 'the switch to WebSocket');
    await room.ready(5000);
    await server.publish('room:sse-a', { n: 4 });
    await waitFor(() => got.length === 8, 5000, 'a publication over WebSocket');
    const byChannel = (ch) => got.filter((g) => g.startsWith(ch + '@'));
    assert.deepEqual(byChannel('room:sse-a'), ['room:sse-a@1:1', 'room:sse-a@2:2', 'room:sse-a@3:3', 'room:sse-a@4:4']);
    assert.deepEqual(byChannel('room:sse-b'), ['room:sse-b@1:1', 'room:sse-b@2:2']);
    assert.deepEqual(byChannel('user:sse1'), ['user:sse1@1:1', 'user:sse1@2:2']);
    assert.equal(states[0], 'connected:sse');
    assert.equal(states[states.length - 1], 'connected:websocket');
    assert.ok(states.includes('disconnected:3001'), states.join());
    await c.publish('room:sse-a', { n: 5 });
  } finally {
    await proxy.close();
  }
});

test('WebSocket blocked mid-session: the first SSE stream resumes from the WebSocket positions, nothing lost', async () => {
  const proxy = await HttpProxy.start(server.publicPort, { blockWebSocket: false });
  try {
    const c = client(proxy.wsUrl, { token: mintToken('sse-mid'), wsRetryInterval: 60000 });
    const got = collect(c);
    const room = c.subscribe('room:sse-mid');
    const events = [];
    room.on('subscribed', (s) => events.push(s));
    c.connect();
    await room.ready(5000);
    assert.equal(c.transport, 'websocket');
    await server.publish('room:sse-mid', { n: 1 });
    await waitFor(() => got.length === 1, 5000, 'a publication over WebSocket');

    // The network starts refusing WebSocket and the open one is cut; publications meanwhile.
    proxy.blockWebSocket = true;
    proxy.cutStreams();
    await server.publish('room:sse-mid', { n: 2 });
    await server.publish('room:sse-mid', { n: 3 });
    await waitFor(() => c.transport === 'sse' && got.length === 3, 10000, 'the fallback recovers 2 and 3');
    const first = proxy.requests.filter((r) => r.url.startsWith('/sse'))[0];
    assert.match(first.url, /last_event_id=1\.[^&]*room%3Asse-mid/, first.url);
    const resumed = events[events.length - 1];
    assert.equal(resumed.wasRecovering, true);
    assert.equal(resumed.recovered, true);
    assert.deepEqual(got, ['room:sse-mid@1:1', 'room:sse-mid@2:2', 'room:sse-mid@3:3']);
  } finally {
    await proxy.close();
  }
});

test('SSE: the server ends the stream with a `disconnect` event (POST /api/disconnect), the client resumes', async () => {
  const c = client(server.wsUrl, { token: mintToken('sse2'), transports: ['sse'] });
  const got = collect(c);
  const sub = c.subscribe('room:sse-d');
  c.connect();
  await sub.ready(5000);
  await server.publish('room:sse-d', { n: 1 });
  await waitFor(() => got.length === 1, 5000, 'a publication');
  const disconnected = nextEvent(c, 'disconnected', { timeout: 5000 });
  await server.api('disconnect', { user: 'sse2', code: 4010 });
  const d = await disconnected;
  assert.equal(d.code, 4010);
  assert.equal(d.reconnect, true);
  await server.publish('room:sse-d', { n: 2 });
  await waitFor(() => got.length === 2 && c.state === 'connected', 5000, 'resumed');
  assert.deepEqual(got, ['room:sse-d@1:1', 'room:sse-d@2:2']);

  const terminal = nextEvent(c, 'disconnected', { timeout: 5000 });
  await server.api('disconnect', { user: 'sse2', code: 4003 });
  const t = await terminal;
  assert.equal(t.code, 4003);
  assert.equal(t.reconnect, false);
  assert.equal(c.state, 'disconnected');
});

test('SSE: 401 — a bad token stops the client, an expired one is replaced through getToken', async () => {
  const bad = client(server.wsUrl, { token: mintToken('sse3', { secret: 'wrong' }), transports: ['sse'] });
  const errors = [];
  bad.on('error', (e) => errors.push(e));
  const d = nextEvent(bad, 'disconnected', { timeout: 5000 });
  bad.connect();
  const ev = await d;
  assert.equal(ev.reconnect, false);
  assert.equal(bad.state, 'disconnected');
  assert.ok(errors.some((e) => e.code === ErrorCodes.UNAUTHORIZED), errors.map((e) => e.code).join());

  let calls = 0;
  const good = client(server.wsUrl, {
    token: mintToken('sse3', { ttl: -10 }),
    getToken: async () => (calls++, mintToken('sse3')),
    transports: ['sse'],
  });
  good.connect();
  await nextEvent(good, 'connected', { timeout: 5000 });
  assert.equal(calls, 1);
  assert.equal(good.transport, 'sse');
});
