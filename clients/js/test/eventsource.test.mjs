// FetchEventSource (the client's EventSource over fetch) against a scripted local HTTP server:
// the event-stream parsing rules, reconnection with the last id, and refusals with their status.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';

import { FetchEventSource } from '../src/ferrocast.js';
import { waitFor } from './helpers.mjs';

/** A server whose handler gets each request; returns {url, requests, close}. */
async function serve(handler) {
  const requests = [];
  const sockets = new Set();
  const srv = http.createServer((req, res) => {
    requests.push(req);
    handler(req, res, requests.length);
  });
  srv.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${srv.address().port}/sse?token=x`,
    requests,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((r) => srv.close(r));
    },
  };
}

test('parses events split anywhere, with CR/LF/CRLF, comments, ids, retry; reconnects from the last id', async () => {
  const server = await serve((req, res, n) => {
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8' });
    if (n === 1) {
      const stream = '\ufeffretry: 20\r\n: hello\r\n\r\ndata: {"a":1}\r\nid: 7\r\n\r\ndata:x\rdata: y\r\rid: 8\nevent: other\ndata: z\n\n: hb\n\ndata: no id\n\n';
      // One byte at a time: every split point, a CR/LF pair across chunks included.
      let i = 0;
      const t = setInterval(() => {
        if (i >= stream.length) {
          clearInterval(t);
          res.end(); // the stream ends: the EventSource reconnects after `retry` ms
          return;
        }
        res.write(stream[i++]);
      }, 1);
    } else {
      res.end('data: second\n\n');
    }
  });
  const es = new FetchEventSource(server.url);
  const got = [];
  const beats = [];
  let opens = 0;
  es.onopen = () => opens++;
  es.onmessage = (e) => got.push([e.data, e.lastEventId]);
  es.addEventListener('other', (e) => got.push(['other:' + e.data, e.lastEventId]));
  es.addEventListener('heartbeat', (e) => beats.push(e.comment));
  try {
    await waitFor(() => got.length === 5, 5000, 'all events');
    assert.deepEqual(got, [
      ['{"a":1}', '7'],
      ['x\ny', '7'],
      ['other:z', '8'],
      ['no id', '8'],
      ['second', '8'],
    ]);
    assert.deepEqual(beats, [' hello', ' hb']);
    assert.equal(opens, 2);
    assert.equal(server.requests.length, 2);
    assert.equal(server.requests[0].url, '/sse?token=x');
    assert.equal(server.requests[1].url, '/sse?token=x&last_event_id=8');
    assert.equal(server.requests[0].headers.accept, 'text/event-stream');
  } finally {
    es.close();
    await server.close();
  }
  assert.equal(es.readyState, FetchEventSource.CLOSED);
});

test('an HTTP error fails the EventSource for good, with status and JSON body on the error event', async () => {
  const server = await serve((req, res) => {
    res.writeHead(401, { 'content-type': 'application/json' });
    res.end('{"error":{"code":109,"message":"token expired"}}');
  });
  const es = new FetchEventSource(server.url);
  const errors = [];
  es.onerror = (e) => errors.push(e);
  try {
    await waitFor(() => errors.length === 1, 3000, 'the error');
    assert.equal(es.readyState, FetchEventSource.CLOSED);
    assert.equal(errors[0].status, 401);
    assert.deepEqual(errors[0].body, { error: { code: 109, message: 'token expired' } });
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(server.requests.length, 1, 'no reconnection');
  } finally {
    es.close();
    await server.close();
  }
});

test('a 200 that is not text/event-stream fails too; a refused connection is retried', async () => {
  const server = await serve((req, res) => res.end('<html>'));
  const es = new FetchEventSource(server.url);
  const errors = [];
  es.onerror = (e) => errors.push(e);
  await waitFor(() => errors.length === 1, 3000, 'the error');
  assert.equal(es.readyState, FetchEventSource.CLOSED);
  assert.equal(errors[0].status, 200);
  await server.close();

  const dead = new FetchEventSource(server.url); // nothing listens there now
  const errs = [];
  dead.onerror = (e) => errs.push(dead.readyState);
  await waitFor(() => errs.length === 1, 3000, 'the error');
  assert.equal(errs[0], FetchEventSource.CONNECTING, 'it will reconnect');
  dead.close();
});
