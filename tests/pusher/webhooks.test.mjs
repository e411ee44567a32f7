// Pusher-format webhooks (docs/pusher.md): a node whose app has `webhook_url` POSTs
// channel_occupied / channel_vacated / member_added / member_removed / client_event to a receiver
// that checks them with the real `pusher` Node library (`pusher.webhook(req).isValid()`:
// X-Pusher-Key and X-Pusher-Signature = hex HMAC-SHA256(secret, body)).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { APP, startNode, startAuthServer, startWebhookReceiver, once, waitFor, pusherClient } from './helpers.mjs';

const require = createRequire(import.meta.url);
const PusherServer = require('pusher');

let node; let hooks; let authA; let authB;
const clients = [];

before(async () => {
  hooks = await startWebhookReceiver();
  node = await startNode(`webhook_url = "${hooks.url}/pusher/webhooks"
webhook_events = "channel_occupied, channel_vacated, member_added, member_removed, client_event"`);
  authA = await startAuthServer({ user: 'alice', name: 'Alice' });
  authB = await startAuthServer({ user: 'bob', name: 'Bob' });
});

after(async () => {
  for (const c of clients) c.disconnect();
  authA?.close(); authB?.close(); hooks?.close();
  await node?.stop();
});

const client = (auth) => { const c = pusherClient(node.port, auth); clients.push(c); return c; };

test('webhooks: occupied, members, client events, removed, vacated — signed as Pusher signs', async () => {
  const a = client(authA);
  const cha = a.subscribe('presence-room');
  await once(cha, 'pusher:subscription_succeeded');
  await waitFor(() => hooks.find('member_added', 'presence-room', 'alice'), 5000, 'member_added alice');
  assert.ok(hooks.find('channel_occupied', 'presence-room'), 'channel_occupied presence-room');

  const b = client(authB);
  const chb = b.subscribe('presence-room');
  await once(chb, 'pusher:subscription_succeeded');
  await waitFor(() => hooks.find('member_added', 'presence-room', 'bob'), 5000, 'member_added bob');
  chb.trigger('client-hello', { x: 1 });
  const ce = await waitFor(() => hooks.find('client_event', 'presence-room'), 5000, 'client_event');
  assert.deepEqual(ce, {
    name: 'client_event', channel: 'presence-room', event: 'client-hello',
    data: '{"x":1}', socket_id: b.connection.socket_id, user_id: 'bob',
  });

  // A private channel: client_event without user_id.
  const pa = a.subscribe('private-chat');
  const pb = b.subscribe('private-chat');
  await Promise.all([once(pa, 'pusher:subscription_succeeded'), once(pb, 'pusher:subscription_succeeded')]);
  pa.trigger('client-typing', 'yes');
  const pe = await waitFor(() => hooks.find('client_event', 'private-chat'), 5000, 'private client_event');
  assert.equal(pe.user_id, undefined);
  assert.equal(pe.data, 'yes');
  assert.equal(pe.socket_id, a.connection.socket_id);

  b.disconnect();
  await waitFor(() => hooks.find('member_removed', 'presence-room', 'bob'), 5000, 'member_removed bob');
  assert.equal(hooks.find('channel_vacated', 'presence-room'), undefined, 'alice is still there');
  a.disconnect();
  await waitFor(() => hooks.find('member_removed', 'presence-room', 'alice'), 5000, 'member_removed alice');
  // webhook_vacate_delay = 0s (Pusher's behaviour): the next sweep (≤ 1 s) reports it.
  await waitFor(() => hooks.find('channel_vacated', 'presence-room'), 4000, 'channel_vacated presence-room');
  await waitFor(() => hooks.find('channel_vacated', 'private-chat'), 4000, 'channel_vacated private-chat');

  // Every request: Pusher's shape and headers, valid for the pusher library, invalid with a wrong secret.
  const server = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret });
  const wrong = new PusherServer({ appId: APP.id, key: APP.key, secret: 'not-the-secret' });
  assert.ok(hooks.requests.length >= 1);
  for (const r of hooks.requests) {
    assert.equal(r.url, '/pusher/webhooks');
    assert.equal(r.headers['x-pusher-key'], APP.key);
    assert.match(r.headers['x-pusher-signature'], /^[0-9a-f]{64}$/);
    assert.equal(r.headers['content-type'], 'application/json');
    const wh = server.webhook({ headers: r.headers, rawBody: r.body });
    assert.ok(wh.isValid(), 'the pusher library accepts the signature');
    assert.ok(!wrong.webhook({ headers: r.headers, rawBody: r.body }).isValid());
    assert.deepEqual(Object.keys(wh.getData()).sort(), ['events', 'time_ms']);
    assert.ok(Math.abs(wh.getTime().getTime() - Date.now()) < 60000);
  }
  const names = hooks.events.map((e) => `${e.name}:${e.channel}${e.user_id ? `:${e.user_id}` : ''}`);
  const count = (n) => names.filter((x) => x === n).length;
  assert.equal(count('channel_occupied:presence-room'), 1);
  assert.equal(count('channel_vacated:presence-room'), 1);
  assert.equal(count('member_added:presence-room:alice'), 1);
  assert.equal(count('member_removed:presence-room:bob'), 1);
});

test('webhook_events limits what is sent; a bad webhook config is refused', async () => {
  const { spawnSync } = await import('node:child_process');
  const fs = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-pusher-cfg-'));
  const check = (extra) => {
    const f = path.join(dir, 'c.toml');
    fs.writeFileSync(f, `[[pusher.apps]]\napp_id = "1"\nkey = "k"\nsecret = "s"\n${extra}\n`);
    return spawnSync(process.env.FERROCAST_BIN, ['config', 'check', f], { encoding: 'utf8' });
  };
  assert.equal(check('webhook_url = "http://127.0.0.1:9/h"').status, 0);
  const bad = [
    ['webhook_url = "https://example.org/h"', 'pusher.apps[0].webhook_url'],
    ['webhook_url = "http://127.0.0.1:9/h"\nwebhook_events = ["channel_occupied", "user_online"]', 'pusher.apps[0].webhook_events'],
    ['webhook_vacate_delay = "2h"', 'pusher.apps[0].webhook_vacate_delay'],
  ];
  for (const [extra, key] of bad) {
    const r = check(extra);
    assert.notEqual(r.status, 0, extra);
    assert.ok((r.stderr + r.stdout).includes(key), `${extra}: ${r.stderr}${r.stdout}`);
  }
  fs.rmSync(dir, { recursive: true, force: true });
});
