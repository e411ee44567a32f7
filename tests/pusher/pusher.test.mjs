// The real pusher-js (Node build) and the real `pusher` Node server library against a real
// ferrocast node: public, private, presence, cache channels, client events, sign-in and
// send-to-user, the HTTP API (events, batch, channel info, users, terminate), wrong signatures.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { APP, startNode, startAuthServer, once, sleep } from './helpers.mjs';

const require = createRequire(import.meta.url);
const Pusher = require('pusher-js');
const PusherServer = require('pusher');

let node; let auth; let server;
const clients = [];

before(async () => {
  node = await startNode();
  auth = await startAuthServer({ user: 'u1', name: 'Ada' });
  server = new PusherServer({
    appId: APP.id, key: APP.key, secret: APP.secret,
    host: '127.0.0.1', port: String(node.port), useTLS: false,
  });
});

after(async () => {
  for (const c of clients) c.disconnect();
  auth?.close();
  await node?.stop();
});

function client(authServer = auth, key = APP.key) {
  const c = new Pusher(key, {
    cluster: 'local', wsHost: '127.0.0.1', wsPort: node.port, forceTLS: false,
    enabledTransports: ['ws'], disableStats: true,
    channelAuthorization: { endpoint: `${authServer.url}/auth`, transport: 'ajax' },
    userAuthentication: { endpoint: `${authServer.url}/signin`, transport: 'ajax' },
  });
  clients.push(c);
  return c;
}

async function connected(c) {
  if (c.connection.state === 'connected') return;
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`not connected: ${c.connection.state}`)), 5000);
    c.connection.bind('connected', () => { clearTimeout(t); resolve(); });
  });
}

test('connects with a socket id of the form \\d+.\\d+', async () => {
  const c = client();
  await connected(c);
  assert.match(c.connection.socket_id, /^\d+\.\d+$/);
});

test('an unknown app key is refused with 4001', async () => {
  const c = client(auth, 'no-such-key');
  // pusher-js reports the handshake's pusher:error as a WebSocketError wrapping Pusher's.
  const err = await new Promise((resolve) => c.connection.bind('error', (e) => {
    if (e && e.error && e.error.data) resolve(e.error);
  }));
  assert.equal(err.data.code, 4001);
  // 4000-4099: "refused", pusher-js does not retry.
  await sleep(100);
  assert.equal(c.connection.state, 'disconnected');
  c.disconnect();
});

test('public channel: events from the HTTP API (pusher server library), batch too', async () => {
  const c = client();
  const ch = c.subscribe('orders');
  await once(ch, 'pusher:subscription_succeeded');
  const got = once(ch, 'created');
  await server.trigger('orders', 'created', { id: 7, text: 'hi "there"' });
  assert.deepEqual(await got, { id: 7, text: 'hi "there"' });
  const a = once(ch, 'a'); const b = once(ch, 'b');
  await server.triggerBatch([
    { channel: 'orders', name: 'a', data: { n: 1 } },
    { channel: 'orders', name: 'b', data: 'plain string' },
  ]);
  assert.deepEqual(await a, { n: 1 });
  assert.equal(await b, 'plain string');
});

test('private channel: authorized through the backend; a bad signature is refused', async () => {
  const c = client();
  const ch = c.subscribe('private-room-1');
  await once(ch, 'pusher:subscription_succeeded');
  const got = once(ch, 'msg');
  await server.trigger('private-room-1', 'msg', { ok: true });
  assert.deepEqual(await got, { ok: true });

  const bad = await startAuthServer({ deny: true });
  const c2 = client(bad);
  const ch2 = c2.subscribe('private-room-1');
  const err = await once(ch2, 'pusher:subscription_error');
  assert.equal(err.type, 'AuthError');
  assert.equal(err.status, 401);
  bad.close();
});

test('client events reach the others on a private channel, not the sender', async () => {
  const a = client(); const b = client();
  const cha = a.subscribe('private-chat'); const chb = b.subscribe('private-chat');
  await Promise.all([once(cha, 'pusher:subscription_succeeded'), once(chb, 'pusher:subscription_succeeded')]);
  let echoed = false;
  cha.bind('client-typing', () => { echoed = true; });
  const got = once(chb, 'client-typing');
  assert.ok(cha.trigger('client-typing', { who: 'a' }));
  assert.deepEqual(await got, { who: 'a' });
  await sleep(200);
  assert.equal(echoed, false, 'the sender got its own client event');
});

test('client events are refused on public channels and rate-limited past 10/s', async () => {
  const c = client();
  const pub = c.subscribe('lobby');
  await once(pub, 'pusher:subscription_succeeded');
  const errors = [];
  c.connection.bind('error', (e) => errors.push(e));
  c.send_event('client-x', { a: 1 }, 'lobby');
  const priv = c.subscribe('private-flood');
  await once(priv, 'pusher:subscription_succeeded');
  for (let i = 0; i < 15; i++) priv.trigger('client-x', { i });
  await sleep(300);
  const codes = errors.map((e) => e.data && e.data.code);
  assert.ok(codes.includes(null) || codes.includes(undefined), JSON.stringify(errors));
  assert.ok(codes.includes(4301), JSON.stringify(errors));
});

test('presence: members, member_added / member_removed, user_id on client events, HTTP users and info', async () => {
  const authA = await startAuthServer({ user: 'alice', name: 'Alice' });
  const authB = await startAuthServer({ user: 'bob', name: 'Bob' });
  const a = client(authA);
  const cha = a.subscribe('presence-room');
  const membersA = await once(cha, 'pusher:subscription_succeeded');
  assert.equal(membersA.count, 1);
  assert.equal(membersA.me.id, 'alice');

  const added = once(cha, 'pusher:member_added');
  const b = client(authB);
  const chb = b.subscribe('presence-room');
  const membersB = await once(chb, 'pusher:subscription_succeeded');
  assert.equal(membersB.count, 2);
  assert.deepEqual(membersB.get('alice').info, { name: 'Alice' });
  const m = await added;
  assert.equal(m.id, 'bob');
  assert.deepEqual(m.info, { name: 'Bob' });

  const ev = new Promise((resolve) => cha.bind('client-hello', (data, meta) => resolve({ data, meta })));
  chb.trigger('client-hello', { x: 1 });
  const { data, meta } = await ev;
  assert.deepEqual(data, { x: 1 });
  assert.equal(meta.user_id, 'bob');

  const users = await (await server.get({ path: '/channels/presence-room/users' })).json();
  assert.deepEqual(users.users.map((u) => u.id).sort(), ['alice', 'bob']);
  const info = await (await server.get({ path: '/channels/presence-room', params: { info: 'user_count,subscription_count' } })).json();
  assert.equal(info.occupied, true);
  assert.equal(info.user_count, 2);
  const list = await (await server.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } })).json();
  assert.equal(list.channels['presence-room'].user_count, 2);

  const removed = once(cha, 'pusher:member_removed');
  b.disconnect();
  assert.equal((await removed).id, 'bob');
  assert.equal(cha.members.count, 1);
  authA.close(); authB.close();
});

test('cache channel: cache_miss first, then the last event on subscribe', async () => {
  const a = client();
  const ch = a.subscribe('cache-prices');
  const miss = once(ch, 'pusher:cache_miss');
  await once(ch, 'pusher:subscription_succeeded');
  await miss;
  await server.trigger('cache-prices', 'price', { eur: 3 });
  await sleep(100);
  const b = client();
  const chb = b.subscribe('cache-prices');
  assert.deepEqual(await once(chb, 'price'), { eur: 3 });
});

test('signin, send to user, terminate the user\'s connections', async () => {
  const authU = await startAuthServer({ user: 'u-77', name: 'Zed' });
  const c = client(authU);
  await connected(c);
  c.signin();
  const got = new Promise((resolve) => c.user.bind('notice', resolve));
  await c.user.signinDonePromise;
  assert.equal(c.user.user_data.id, 'u-77');
  // The server-to-user channel is subscribed by pusher-js right after signin.
  await sleep(300);
  await server.sendToUser('u-77', 'notice', { text: 'for you' });
  assert.deepEqual(await got, { text: 'for you' });
  // Another connection may not subscribe to u-77's channel without signing in as u-77.
  const other = client();
  await connected(other);
  // (pusher-js itself refuses to subscribe to '#…' names: send the raw protocol message.)
  const refused = new Promise((resolve) => other.connection.bind('message', (m) => {
    if (m.event === 'pusher:subscription_error' && m.channel === '#server-to-user-u-77') resolve(m.data);
  }));
  other.send_event('pusher:subscribe', { channel: '#server-to-user-u-77', auth: '' });
  assert.equal((await refused).status, 403);

  const closed = new Promise((resolve) => c.connection.bind('state_change', (s) => {
    if (s.current !== 'connected') resolve(s.current);
  }));
  await server.terminateUserConnections('u-77');
  assert.ok(['unavailable', 'failed', 'disconnected', 'connecting'].includes(await closed));
  authU.close();
});

test('socket_id excludes a recipient of an HTTP API event', async () => {
  const a = client(); const b = client();
  const cha = a.subscribe('news'); const chb = b.subscribe('news');
  await Promise.all([once(cha, 'pusher:subscription_succeeded'), once(chb, 'pusher:subscription_succeeded')]);
  let aGot = false;
  cha.bind('flash', () => { aGot = true; });
  const got = once(chb, 'flash');
  await server.trigger('news', 'flash', { n: 1 }, { socket_id: a.connection.socket_id });
  await got;
  await sleep(200);
  assert.equal(aGot, false);
});

test('the HTTP API refuses a wrong secret and a stale timestamp (401)', async () => {
  const wrong = new PusherServer({
    appId: APP.id, key: APP.key, secret: 'not-the-secret',
    host: '127.0.0.1', port: String(node.port), useTLS: false,
  });
  await assert.rejects(wrong.trigger('orders', 'x', {}), (e) => e.status === 401 && /Invalid signature/.test(e.body));
  const res = await fetch(`http://127.0.0.1:${node.port}/apps/${APP.id}/channels?auth_key=${APP.key}&auth_timestamp=1&auth_version=1.0&auth_signature=00`);
  assert.equal(res.status, 401);
  assert.match(await res.text(), /Timestamp expired/);
});

test('ferrocast\'s own API reaches Pusher clients (documented mapping)', async () => {
  const c = client();
  const ch = c.subscribe('mapped');
  await once(ch, 'pusher:subscription_succeeded');
  const got = once(ch, 'from-ferrocast');
  const res = await fetch(`http://127.0.0.1:${node.port}/api/publish`, {
    method: 'POST',
    headers: { authorization: 'apikey node-test-api-key' },
    body: JSON.stringify({ channel: `pusher-${APP.id}:mapped`, data: { event: 'from-ferrocast', data: '{"k":1}' } }),
  });
  assert.equal(res.status, 200);
  assert.deepEqual(await got, { k: 1 });
});

test('pusher metrics are exported', async () => {
  const text = await (await fetch(`http://127.0.0.1:${node.admin}/metrics`)).text();
  assert.match(text, /ferrocast_pusher_connections\{app="4242"\} \d+/);
  assert.match(text, /ferrocast_pusher_events_total\{app="4242",source="api"\} \d+/);
});
