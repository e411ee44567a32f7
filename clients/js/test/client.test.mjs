// The client against a real ferrocast node: connect, subscribe, commands, errors, close codes.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { Client, FerrocastError, ErrorCodes } from '../src/ferrocast.js';
import { Server, mintToken, webSocketCtor, waitFor, nextEvent, sleep } from './helpers.mjs';

let server;
let WebSocket;
const clients = [];

before(async () => {
  WebSocket = await webSocketCtor();
  server = await Server.start();
});

after(async () => {
  for (const c of clients) c.disconnect();
  if (server) await server.close();
});

let userSeq = 0;
/** A fresh user id per test, so that presence and `/api/disconnect` never mix tests. */
const newUser = () => `u${process.pid}x${++userSeq}`;

function client(options = {}) {
  const c = new Client(server.wsUrl, { WebSocket, minReconnectDelay: 50, maxReconnectDelay: 500, timeout: 3000, ...options });
  clients.push(c);
  return c;
}

async function connected(c) {
  const p = nextEvent(c, 'connected');
  c.connect();
  return p;
}

test('connects with a token and reports state changes and the connected info', async () => {
  const user = newUser();
  const c = client({ token: mintToken(user) });
  const states = [];
  c.on('state', ({ state, previous }) => states.push(`${previous}->${state}`));
  const info = await connected(c);
  assert.equal(info.user, user);
  assert.equal(info.node, 'js-test-node');
  assert.equal(typeof info.client, 'string');
  assert.equal(c.state, 'connected');
  assert.deepEqual(states, ['disconnected->connecting', 'connecting->connected']);
  assert.equal(await c.ping().then(() => 'pong'), 'pong');

  const gone = nextEvent(c, 'disconnected');
  c.disconnect();
  assert.deepEqual(await gone, { code: 1000, reason: 'disconnect called', reconnect: false });
  assert.equal(c.state, 'disconnected');
  await assert.rejects(c.publish('room:x', {}), (e) => e instanceof FerrocastError && e.code === ErrorCodes.DISCONNECTED);
});

test('getToken is called for the first connection when no token is given', async () => {
  const user = newUser();
  let calls = 0;
  const c = client({
    getToken: async () => {
      calls++;
      return mintToken(user);
    },
  });
  const info = await connected(c);
  assert.equal(info.user, user);
  assert.equal(calls, 1);
});

test('connects anonymously without any token (auth.allow_anonymous)', async () => {
  const c = client();
  const info = await connected(c);
  assert.equal(info.user, '');
  const sub = c.subscribe('public:board');
  await sub.ready();
  const got = nextEvent(sub, 'publication');
  await server.publish('public:board', { score: 7 });
  assert.deepEqual((await got).data, { score: 7 });
});

test('subscribes and receives publications from the server API, in both event streams', async () => {
  const c = client({ token: mintToken(newUser()) });
  c.connect();
  const sub = c.subscribe('room:api');
  const subscribed = nextEvent(sub, 'subscribed');
  assert.equal(await sub.ready(), sub);
  const s = await subscribed;
  assert.equal(s.recovered, false);
  assert.equal(s.wasRecovering, false);
  assert.equal(typeof s.epoch, 'string');
  assert.equal(c.getSubscription('room:api'), sub);
  assert.equal(c.subscribe('room:api'), sub, 'subscribe() returns the existing subscription');

  const fromSub = [];
  const fromClient = [];
  sub.on('publication', (p) => fromSub.push(p));
  c.on('publication', (p) => fromClient.push(p));
  const r1 = await server.publish('room:api', { n: 1 });
  const r2 = await server.publish('room:api', { n: 2 });
  await waitFor(() => fromSub.length === 2 && fromClient.length === 2, 3000, 'two publications');
  assert.deepEqual(
    fromSub.map((p) => [p.channel, p.data, p.offset]),
    [
      ['room:api', { n: 1 }, r1.offset],
      ['room:api', { n: 2 }, r2.offset],
    ],
  );
  assert.deepEqual(fromClient, fromSub);
  assert.equal(sub.offset, r2.offset);
  assert.equal(sub.epoch, r1.epoch);

  // After unsubscribe nothing more arrives.
  sub.unsubscribe();
  assert.equal(c.getSubscription('room:api'), null);
  assert.equal(sub.state, 'unsubscribed');
  await c.ping(); // the unsubscribe was handled before this reply
  await server.publish('room:api', { n: 3 });
  await sleep(150);
  assert.equal(fromSub.length, 2);
  assert.equal(fromClient.length, 2);
});

test('two clients of the same user both receive user:<id> publications', async () => {
  const user = newUser();
  const a = client({ token: mintToken(user) });
  const b = client({ token: mintToken(user) });
  a.connect();
  b.connect();
  const sa = a.subscribe(`user:${user}`);
  const sb = b.subscribe(`user:${user}`);
  await Promise.all([sa.ready(), sb.ready()]);
  const ga = nextEvent(sa, 'publication');
  const gb = nextEvent(b, 'publication');
  await server.publish(`user:${user}`, { note: 'hello both' });
  const [pa, pb] = await Promise.all([ga, gb]);
  assert.deepEqual(pa.data, { note: 'hello both' });
  assert.deepEqual(pb.data, { note: 'hello both' });
  assert.equal(pb.channel, `user:${user}`);
  assert.equal(pa.offset, pb.offset);
});

test('publish, presence, presenceStats and history', async () => {
  const user = newUser();
  const c = client({ token: mintToken(user, { info: { name: 'Ada' } }) });
  const info = await connected(c);
  const sub = c.subscribe('room:cmds');
  const joined = nextEvent(c, 'join', { filter: (j) => j.channel === 'room:cmds' });
  await sub.ready();
  assert.deepEqual((await joined).info, { user, client: info.client });

  const own = nextEvent(sub, 'publication');
  const r = await c.publish('room:cmds', { text: 'hi' });
  assert.equal(r.offset, 1);
  assert.equal(typeof r.epoch, 'string');
  const p = await own;
  assert.deepEqual(p, { channel: 'room:cmds', data: { text: 'hi' }, offset: 1, info: { user } });

  const presence = await c.presence('room:cmds');
  assert.deepEqual(presence.clients, { [info.client]: { user, info: { name: 'Ada' } } });
  assert.deepEqual(await c.presenceStats('room:cmds'), { clients: 1, users: 1 });

  await c.publish('room:cmds', { text: 'two' });
  await c.publish('room:cmds', { text: 'three' });
  const all = await c.history('room:cmds');
  assert.deepEqual(all.publications.map((x) => x.data.text), ['hi', 'two', 'three']);
  assert.equal(all.offset, 3);
  const last = await c.history('room:cmds', { limit: 1 });
  assert.deepEqual(last.publications.map((x) => x.offset), [3]);
  const since = await c.history('room:cmds', { since: { offset: 1, epoch: r.epoch }, limit: 50 });
  assert.deepEqual(since.publications.map((x) => x.offset), [2, 3]);
  await assert.rejects(
    c.history('room:cmds', { since: { offset: 1, epoch: 'not-the-epoch' } }),
    (e) => e instanceof FerrocastError && e.code === 112,
  );

  // A second user sees join and leave.
  const other = newUser();
  const d = client({ token: mintToken(other) });
  d.connect();
  const dj = nextEvent(sub, 'join', { filter: (j) => j.info.user === other });
  const ds = d.subscribe('room:cmds');
  await ds.ready();
  await dj;
  const left = nextEvent(sub, 'leave', { filter: (j) => j.info.user === other });
  d.unsubscribe('room:cmds');
  assert.equal((await left).channel, 'room:cmds');
});

test('commands made while connecting are queued and sent once connected', async () => {
  const c = client({ token: mintToken(newUser()) });
  const sub = c.subscribe('room:queued');
  const got = [];
  sub.on('publication', (p) => got.push(p.data));
  c.connect();
  assert.equal(c.state, 'connecting');
  const results = await Promise.all([c.publish('room:queued', 1), c.publish('room:queued', 2), c.presenceStats('room:queued')]);
  assert.deepEqual(
    results.map((r) => r.offset ?? r.clients),
    [1, 2, 1],
  );
  await waitFor(() => got.length === 2, 3000, 'own publications');
  assert.deepEqual(got, [1, 2]);
});

test('server errors reject with FerrocastError and its code', async () => {
  const user = newUser();
  const c = client({ token: mintToken(user) });
  await connected(c);

  // Someone else's personal channel: 103, the subscription is dropped.
  const sub = c.subscribe('user:somebody-else');
  const subErr = nextEvent(sub, 'error');
  const clientErr = nextEvent(c, 'error');
  const unsubscribed = nextEvent(sub, 'unsubscribed');
  await assert.rejects(sub.ready(), (e) => e instanceof FerrocastError && e.code === 103);
  assert.equal((await subErr).code, ErrorCodes.PERMISSION_DENIED);
  assert.equal((await clientErr).code, 103);
  assert.equal((await unsubscribed).error.code, 103);
  assert.equal(c.getSubscription('user:somebody-else'), null);
  assert.equal(sub.state, 'unsubscribed');

  await assert.rejects(c.publish('news:today', { x: 1 }), (e) => {
    assert.ok(e instanceof FerrocastError);
    assert.ok(e instanceof Error);
    assert.equal(e.code, 103);
    assert.equal(e.message, 'permission denied');
    return true;
  });
  await assert.rejects(c.publish('nope:1', {}), { code: 102 });
  await assert.rejects(c.presence('news:today'), { code: 108 });
  await assert.rejects(c.publish('bad channel!', {}), { code: 107 });
  // The connection survives reply errors.
  assert.equal(c.state, 'connected');
});

test('the server-side unsubscribe push ends the subscription without resubscribing', async () => {
  const user = newUser();
  const c = client({ token: mintToken(user) });
  c.connect();
  const sub = c.subscribe('room:kick');
  await sub.ready();
  const gone = nextEvent(sub, 'unsubscribed');
  await server.api('unsubscribe', { user, channel: 'room:kick' });
  const ctx = await gone;
  assert.equal(ctx.server, true);
  assert.equal(c.getSubscription('room:kick'), null);
  const stats = await c.presenceStats('room:kick');
  assert.equal(stats.clients, 0);
});

test('fatal close codes (4003, 4004, 4009) stop reconnection', async () => {
  // 4003 through the server API.
  const user = newUser();
  const c = client({ token: mintToken(user) });
  await connected(c);
  const sub = c.subscribe('room:fatal');
  await sub.ready();
  const gone = nextEvent(c, 'disconnected');
  await server.api('disconnect', { user, code: 4003 });
  // (The reason text is not checked: the server sends the API's `reason`, see the report.)
  const g = await gone;
  assert.equal(g.code, 4003);
  assert.equal(g.reconnect, false);
  assert.equal(c.state, 'disconnected');
  await sleep(300);
  assert.equal(c.state, 'disconnected', 'no reconnect after 4003');
  assert.equal(sub.state, 'subscribing', 'kept for the next connect()');

  // An invalid token: error 101 on connect, then close 4003.
  const bad = client({ token: mintToken('x', { secret: 'wrong-secret' }) });
  const err = nextEvent(bad, 'error', { filter: (e) => e.code === 101 });
  const badGone = nextEvent(bad, 'disconnected');
  const waiting = bad.subscribe('room:never').ready();
  bad.connect();
  await err;
  assert.equal((await badGone).code, 4003);
  // A pending ready() fails when the client gives up.
  await assert.rejects(waiting, { code: ErrorCodes.DISCONNECTED });
  assert.equal(bad.state, 'disconnected');

  // 4009: a frame over limits.max_message_size (64 KiB).
  const big = client({ token: mintToken(newUser()) });
  await connected(big);
  const bigGone = nextEvent(big, 'disconnected');
  const failed = big.publish('room:fatal', 'x'.repeat(70000));
  const ctx = await bigGone;
  assert.equal(ctx.code, 4009);
  assert.equal(ctx.reconnect, false);
  await assert.rejects(failed, { code: ErrorCodes.CONNECTION_CLOSED });
  await sleep(300);
  assert.equal(big.state, 'disconnected');

  // 4004 sent by the API, like a protocol violation.
  const u4 = newUser();
  const d = client({ token: mintToken(u4) });
  await connected(d);
  const dGone = nextEvent(d, 'disconnected');
  await server.api('disconnect', { user: u4, code: 4004 });
  assert.equal((await dGone).reconnect, false);

  // connect() again after a terminal close works.
  await connected(c);
  await sub.subscribe().ready();
});

test('reconnects after a non-terminal server close (4000, 4010) and resubscribes', async () => {
  const user = newUser();
  const c = client({ token: mintToken(user) });
  await connected(c);
  const sub = c.subscribe('room:again');
  await sub.ready();
  for (const code of [4000, 4010]) {
    const gone = nextEvent(c, 'disconnected');
    const back = nextEvent(c, 'connected');
    const resub = nextEvent(sub, 'subscribed');
    await server.api('disconnect', { user, code });
    const g = await gone;
    assert.equal(g.code, code);
    assert.equal(g.reconnect, true);
    await back;
    const s = await resub;
    assert.equal(s.wasRecovering, true);
    assert.equal(s.recovered, true);
  }
});
