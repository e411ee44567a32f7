// Pusher presence across two ferrocast nodes on a real 6-node Redis Cluster (3 masters, 3
// replicas, started by deploy/redis-cluster.sh), with the real pusher-js: a member on each node
// sees the other, leaves reach the other node, the HTTP API's users are fleet-wide from either
// node, client events cross nodes, and the Pusher webhooks of both nodes report each channel
// transition once fleet-wide. Skipped when redis-server / redis-cli are not installed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { spawnSync, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  APP, startNode, startAuthServer, startWebhookReceiver, once, waitFor, pusherClient, sleep,
} from './helpers.mjs';

const require = createRequire(import.meta.url);
const PusherServer = require('pusher');
const here = path.dirname(fileURLToPath(import.meta.url));
const script = path.join(here, '..', '..', 'deploy', 'redis-cluster.sh');

const has = (cmd) => {
  try { execFileSync('sh', ['-c', `command -v ${cmd}`]); return true; } catch { return false; }
};
const skip = !(has('redis-server') && has('redis-cli')) && 'redis-server / redis-cli not installed';

let dir; let urls; let n1; let n2; let hooks; let authA; let authB;
const clients = [];

before(async () => {
  if (skip) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-pusher-cluster-'));
  for (let attempt = 0; attempt < 4 && !urls; attempt++) {
    const base = 20000 + Math.floor(Math.random() * 2000) * 6;
    const r = spawnSync('bash', [script, 'start', dir, String(base)], {
      encoding: 'utf8', env: { ...process.env, CLUSTER_TIMEOUT: '20' },
    });
    if (r.status === 0) urls = r.stdout.split('\n').find((l) => l.startsWith('urls = '));
    else spawnSync('bash', [script, 'stop', dir]);
  }
  assert.ok(urls, 'a Redis Cluster started');
  hooks = await startWebhookReceiver();
  const extra = `webhook_url = "${hooks.url}/hooks"
[broker]
kind = "redis-cluster"
${urls}
prefix = "fc-pusher-${process.pid}"
[client]
presence_ttl = "6s"`;
  [n1, n2] = await Promise.all([startNode(extra), startNode(extra)]);
  authA = await startAuthServer({ user: 'alice', name: 'Alice' });
  authB = await startAuthServer({ user: 'bob', name: 'Bob' });
});

after(async () => {
  for (const c of clients) c.disconnect();
  authA?.close(); authB?.close(); hooks?.close();
  await Promise.all([n1?.stop(), n2?.stop()]);
  if (dir) {
    spawnSync('bash', [script, 'stop', dir]);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

const client = (node, auth) => { const c = pusherClient(node.port, auth); clients.push(c); return c; };
const api = (node) => new PusherServer({
  appId: APP.id, key: APP.key, secret: APP.secret, host: '127.0.0.1', port: String(node.port), useTLS: false,
});

test('presence across two nodes on a Redis Cluster: members, leaves, users, client events, webhooks', { skip, timeout: 30000 }, async () => {
  const a = client(n1, authA);
  const cha = a.subscribe('presence-room');
  const first = await once(cha, 'pusher:subscription_succeeded');
  assert.equal(first.count, 1);

  const added = once(cha, 'pusher:member_added');
  const b = client(n2, authB);
  const chb = b.subscribe('presence-room');
  const second = await once(chb, 'pusher:subscription_succeeded');
  assert.equal(second.count, 2, 'bob (node 2) sees alice (node 1) in subscription_succeeded');
  assert.deepEqual(second.get('alice').info, { name: 'Alice' });
  const m = await added;
  assert.equal(m.id, 'bob', 'alice (node 1) gets member_added for bob (node 2)');
  assert.deepEqual(m.info, { name: 'Bob' });

  for (const node of [n1, n2]) {
    const users = await (await api(node).get({ path: '/channels/presence-room/users' })).json();
    assert.deepEqual(users.users.map((u) => u.id).sort(), ['alice', 'bob'], `users from node :${node.port}`);
    const info = await (await api(node).get({ path: '/channels/presence-room', params: { info: 'user_count' } })).json();
    assert.equal(info.user_count, 2);
  }

  // Client events, both ways across the nodes; the sender does not get its own.
  const toA = new Promise((r) => cha.bind('client-hello', (data, meta) => r({ data, meta })));
  const toB = new Promise((r) => chb.bind('client-hello', (data, meta) => r({ data, meta })));
  chb.trigger('client-hello', { from: 'bob' });
  cha.trigger('client-hello', { from: 'alice' });
  const [gotA, gotB] = await Promise.all([toA, toB]);
  assert.deepEqual(gotA.data, { from: 'bob' });
  assert.equal(gotA.meta.user_id, 'bob');
  assert.deepEqual(gotB.data, { from: 'alice' });
  assert.equal(gotB.meta.user_id, 'alice');

  // An HTTP API event on node 2 reaches the member on node 1.
  const viaApi = once(cha, 'news');
  await api(n2).trigger('presence-room', 'news', { n: 1 });
  assert.deepEqual(await viaApi, { n: 1 });

  const removed = once(cha, 'pusher:member_removed');
  b.disconnect();
  assert.equal((await removed).id, 'bob', 'bob left node 2: member_removed on node 1');
  assert.equal(cha.members.count, 1);
  await waitFor(async () => {
    const users = await (await api(n2).get({ path: '/channels/presence-room/users' })).json();
    return users.users.length === 1 && users.users[0].id === 'alice';
  }, 5000, 'users without bob');

  a.disconnect();
  await waitFor(() => hooks.find('channel_vacated', 'presence-room'), 6000, 'channel_vacated');
  await sleep(1200); // one more sweep on each node: nothing is reported twice
  const count = (name, userId) => hooks.events
    .filter((e) => e.name === name && e.channel === 'presence-room' && (userId === undefined || e.user_id === userId)).length;
  assert.equal(count('channel_occupied'), 1, 'occupied once fleet-wide (two nodes held it)');
  assert.equal(count('channel_vacated'), 1, 'vacated once fleet-wide');
  assert.equal(count('member_added', 'alice'), 1);
  assert.equal(count('member_added', 'bob'), 1);
  assert.equal(count('member_removed', 'bob'), 1);
  assert.equal(count('member_removed', 'alice'), 1);
});
