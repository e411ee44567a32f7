// Token expiry: getToken on 109 / close 4011, proactive `refresh` before `exp`.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { Client, ErrorCodes } from '../src/ferrocast.js';
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

function client(options = {}) {
  const c = new Client(server.wsUrl, { WebSocket, minReconnectDelay: 50, maxReconnectDelay: 400, timeout: 3000, ...options });
  clients.push(c);
  return c;
}

test('an expired token: error 109, close 4011, then getToken and a successful reconnect', async () => {
  const tokens = [];
  const c = client({
    token: mintToken('exp1', { ttl: -10 }),
    getToken: async () => {
      const t = mintToken('exp1', { ttl: 3600 });
      tokens.push(t);
      return t;
    },
  });
  const errors = [];
  c.on('error', (e) => errors.push(e));
  const info = await new Promise((resolve) => {
    c.on('connected', resolve);
    c.connect();
  });
  assert.equal(info.user, 'exp1');
  assert.equal(tokens.length, 1);
  assert.ok(errors.some((e) => e.code === ErrorCodes.TOKEN_EXPIRED), 'the 109 reply is reported');
});

test('getToken is used before the token expires (refresh command): the connection stays open', async () => {
  let calls = 0;
  const c = client({
    token: mintToken('ref1', { ttl: 2 }),
    getToken: async () => {
      calls++;
      return mintToken('ref1', { ttl: 2 });
    },
  });
  let disconnects = 0;
  c.on('disconnected', () => disconnects++);
  await new Promise((resolve) => {
    c.on('connected', resolve);
    c.connect();
  });
  const sub = c.subscribe('room:refresh');
  await sub.ready();
  await sleep(3500); // past the first token's expiry (the server checks once a second)
  assert.equal(disconnects, 0, 'no 4011');
  assert.ok(calls >= 2, `getToken called ${calls} times`);
  assert.equal(c.state, 'connected');
  const got = nextEvent(sub, 'publication');
  await server.publish('room:refresh', { still: 'here' });
  assert.deepEqual((await got).data, { still: 'here' });
});

test('close 4011 on an open connection: fresh token from getToken, reconnect and recover', async () => {
  let calls = 0;
  const c = client({
    token: mintToken('exp2', { ttl: 1 }),
    refreshToken: false, // let the server expire the connection
    getToken: async () => {
      calls++;
      return mintToken('exp2', { ttl: 3600 });
    },
  });
  c.connect();
  const sub = c.subscribe('room:expire');
  const pubs = [];
  sub.on('publication', (p) => pubs.push(p.data));
  await sub.ready();
  const gone = nextEvent(c, 'disconnected', { timeout: 5000 });
  await server.publish('room:expire', 1);
  const d = await gone;
  assert.equal(d.code, 4011);
  assert.equal(d.reconnect, true);
  await server.publish('room:expire', 2);
  const s = await nextEvent(sub, 'subscribed');
  assert.equal(s.recovered, true);
  assert.equal(calls, 1);
  await waitFor(() => pubs.length === 2, 3000, 'both publications');
  assert.deepEqual(pubs, [1, 2]);
});

test('close 4011 without getToken is terminal', async () => {
  const c = client({ token: mintToken('exp3', { ttl: -5 }) });
  const gone = nextEvent(c, 'disconnected');
  c.connect();
  const d = await gone;
  assert.equal(d.code, 4011);
  assert.equal(d.reconnect, false);
  assert.equal(c.state, 'disconnected');
});

test('a failing getToken is reported and retried with backoff', async () => {
  let calls = 0;
  const c = client({
    getToken: async () => {
      calls++;
      if (calls < 3) throw new Error('backend down');
      return mintToken('flaky1');
    },
  });
  const errors = [];
  c.on('error', (e) => errors.push(e));
  const info = await new Promise((resolve) => {
    c.on('connected', resolve);
    c.connect();
  });
  assert.equal(info.user, 'flaky1');
  assert.equal(calls, 3);
  assert.equal(errors.filter((e) => e.code === ErrorCodes.TOKEN).length, 2);
});
