// Reconnection and recovery: network loss (a TCP proxy cuts or freezes the connection) with
// publications made while the client is away, and real server restarts on the same port.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';

import { Client } from '../src/ferrocast.js';
import { Server, Proxy, mintToken, webSocketCtor, waitFor, nextEvent, sleep } from './helpers.mjs';

const WebSocket = await webSocketCtor();
const cleanup = [];

afterEach(async () => {
  while (cleanup.length) await cleanup.pop()();
});

async function setup({ proxy = false, extra = '' } = {}) {
  const server = await Server.start({ extra });
  cleanup.push(() => server.close());
  let p = null;
  if (proxy) {
    p = await Proxy.start(server.publicPort);
    cleanup.push(() => p.close());
  }
  return { server, proxy: p };
}

function client(url, options = {}) {
  const c = new Client(url, { WebSocket, minReconnectDelay: 50, maxReconnectDelay: 400, timeout: 3000, ...options });
  cleanup.push(async () => c.disconnect());
  return c;
}

/** Collects a subscription's publications and `subscribed` events. */
function record(sub) {
  const pubs = [];
  const subscribed = [];
  sub.on('publication', (p) => pubs.push(p));
  sub.on('subscribed', (s) => subscribed.push(s));
  return { pubs, subscribed };
}

function assertExactly(pubs, expectedData, firstOffset = 1) {
  assert.deepEqual(
    pubs.map((p) => p.offset),
    expectedData.map((_, i) => firstOffset + i),
    'offsets are consecutive, without gap or duplicate',
  );
  assert.deepEqual(
    pubs.map((p) => p.data),
    expectedData,
  );
}

test('network loss: publications made while away are recovered exactly once, in order', async () => {
  const { server, proxy } = await setup({ proxy: true });
  const c = client(proxy.wsUrl, { token: mintToken('net1') });
  c.connect();
  const sub = c.subscribe('room:net');
  const rec = record(sub);
  const clientPubs = [];
  c.on('publication', (p) => clientPubs.push(p));
  await sub.ready();

  for (let i = 0; i < 3; i++) await server.publish('room:net', { i });
  await waitFor(() => rec.pubs.length === 3, 3000, '3 live publications');

  const gone = nextEvent(c, 'disconnected');
  proxy.down();
  const d = await gone;
  assert.equal(d.code, 1006);
  assert.equal(d.reconnect, true);
  assert.equal(c.state, 'connecting');
  assert.equal(sub.state, 'subscribing');

  for (let i = 3; i < 8; i++) await server.publish('room:net', { i });
  const resubscribed = nextEvent(sub, 'subscribed');
  proxy.up();
  const s = await resubscribed;
  assert.equal(s.wasRecovering, true);
  assert.equal(s.recovered, true);
  assert.equal(s.offset, 8);
  assert.equal(s.publications, 5);
  assert.equal(c.state, 'connected');

  await server.publish('room:net', { i: 8 });
  await waitFor(() => rec.pubs.length === 9, 3000, 'all 9 publications');
  const expected = Array.from({ length: 9 }, (_, i) => ({ i }));
  assertExactly(rec.pubs, expected);
  assertExactly(clientPubs, expected);
});

test('repeated cuts while publications flow: the client misses nothing and sees no duplicate', async () => {
  const { server, proxy } = await setup({ proxy: true });
  const user = 'flow1';
  const c = client(proxy.wsUrl, { token: mintToken(user) });
  c.connect();
  const room = c.subscribe('room:flow');
  const personal = c.subscribe(`user:${user}`);
  const r1 = record(room);
  const r2 = record(personal);
  await Promise.all([room.ready(), personal.ready()]);
  let reconnects = 0;
  c.on('connected', () => reconnects++);

  const N = 300;
  const publisher = (async () => {
    for (let i = 0; i < N; i++) {
      await server.publish('room:flow', { i });
      if (i % 3 === 0) await server.publish(`user:${user}`, { i });
    }
  })();
  const cutter = (async () => {
    for (let k = 0; k < 4; k++) {
      await sleep(60);
      const before = reconnects;
      proxy.cut();
      await waitFor(() => reconnects > before, 5000, 'reconnected');
    }
  })();
  await Promise.all([publisher, cutter]);
  await waitFor(() => r1.pubs.length >= N && r2.pubs.length >= N / 3, 5000, 'every publication');
  await sleep(100); // nothing else may arrive
  assertExactly(
    r1.pubs,
    Array.from({ length: N }, (_, i) => ({ i })),
  );
  assertExactly(
    r2.pubs,
    Array.from({ length: N / 3 }, (_, k) => ({ i: 3 * k })),
  );
  assert.ok(reconnects >= 4, `reconnected ${reconnects} times`);
  assert.ok(r1.subscribed.slice(1).every((s) => s.wasRecovering && s.recovered));
});

test('a silent dead connection is detected by the ping command and replaced', async () => {
  const { server, proxy } = await setup({ proxy: true });
  const c = client(proxy.wsUrl, { token: mintToken('dead1'), pingInterval: 200, timeout: 400 });
  c.connect();
  const sub = c.subscribe('room:dead');
  const rec = record(sub);
  await sub.ready();
  await server.publish('room:dead', { i: 0 });
  await waitFor(() => rec.pubs.length === 1, 3000, 'first publication');

  const gone = nextEvent(c, 'disconnected');
  proxy.freeze(); // bytes vanish; no FIN, no RST
  await server.publish('room:dead', { i: 1 });
  const d = await gone;
  assert.equal(d.code, 3000);
  assert.equal(d.reconnect, true);
  const s = await nextEvent(sub, 'subscribed');
  assert.equal(s.recovered, true);
  await waitFor(() => rec.pubs.length === 2, 3000, 'recovered publication');
  assertExactly(rec.pubs, [{ i: 0 }, { i: 1 }]);
});

for (const signal of ['SIGTERM', 'SIGKILL']) {
  test(`server restart (${signal}): reconnects by itself, reports recovered:false, then receives new publications`, async () => {
    const { server } = await setup();
    const c = client(server.wsUrl, { token: mintToken('restart1') });
    const infos = [];
    c.on('connected', (i) => infos.push(i));
    c.connect();
    const sub = c.subscribe('room:restart');
    const rec = record(sub);
    await sub.ready();
    const epoch1 = sub.epoch;
    for (let i = 0; i < 3; i++) await server.publish('room:restart', { before: i });
    await waitFor(() => rec.pubs.length === 3, 3000, 'publications before the restart');

    const gone = nextEvent(c, 'disconnected', { timeout: 8000 });
    const stopped = server.stop(signal);
    const d = await gone;
    assert.equal(d.code, signal === 'SIGTERM' ? 4010 : 1006);
    assert.equal(d.reconnect, true);
    await stopped;
    await sleep(200); // reconnect attempts fail while the node is down
    assert.equal(c.state, 'connecting');

    const resubscribed = nextEvent(sub, 'subscribed', { timeout: 10000 });
    await server.restart();
    const s = await resubscribed;
    assert.equal(c.state, 'connected');
    assert.equal(infos.length, 2);
    assert.equal(s.wasRecovering, true);
    assert.equal(s.recovered, false, 'the memory broker lost the stream: recovery impossible');
    assert.notEqual(s.epoch, epoch1);
    assert.equal(s.offset, 0);
    assert.equal(sub.epoch, s.epoch);

    for (let i = 0; i < 3; i++) await server.publish('room:restart', { after: i });
    await waitFor(() => rec.pubs.length === 6, 3000, 'publications after the restart');
    assert.deepEqual(
      rec.pubs.map((p) => [p.offset, p.data]),
      [
        [1, { before: 0 }],
        [2, { before: 1 }],
        [3, { before: 2 }],
        [1, { after: 0 }],
        [2, { after: 1 }],
        [3, { after: 2 }],
      ],
    );
  });
}

test('a stream that restarts under a new epoch while subscribed is noticed (offset goes back)', async () => {
  // history_ttl of 1 s: the stream ends after 1 s without publication, and the next publication
  // starts a new epoch at offset 1, which the client must not drop as a duplicate.
  const { server } = await setup({ extra: '[namespaces.short]\nhistory_size = 10\nhistory_ttl = "1s"\n' });
  const c = client(server.wsUrl, { token: mintToken('epoch1') });
  c.connect();
  const sub = c.subscribe('short:x');
  const rec = record(sub);
  await sub.ready();
  for (let i = 0; i < 3; i++) await server.publish('short:x', { i });
  await waitFor(() => rec.pubs.length === 3, 3000, 'first publications');
  const epoch1 = sub.epoch;
  const renewed = nextEvent(sub, 'subscribed', { timeout: 8000 });
  // Wait for the stream to expire, then publish into a fresh epoch.
  let published;
  for (let t = 0; t < 40; t++) {
    await sleep(250);
    const h = await server.api('history', { channel: 'short:x' });
    if (h.epoch !== epoch1) {
      published = await server.publish('short:x', { i: 'new' });
      break;
    }
  }
  assert.ok(published, 'the stream expired');
  // The client resubscribed with recovery from the old epoch: recovered:false tells the
  // application to reload its state; the position continues from the new epoch.
  const s = await renewed;
  assert.equal(s.wasRecovering, true);
  assert.equal(s.recovered, false);
  assert.equal(s.epoch, published.epoch);
  assert.equal(s.offset, 1);
  assert.equal(c.state, 'connected');
  await server.publish('short:x', { i: 'next' });
  await waitFor(() => rec.pubs.length === 4, 3000, 'the next publication');
  assert.deepEqual(rec.pubs[3].data, { i: 'next' });
  assert.equal(rec.pubs[3].offset, 2);
});
