// ferrocast-client: the JavaScript client of the ferrocast WebSocket protocol v1, for browsers and
// Node. One ES module, no runtime dependencies. The wire protocol is documented in
// docs/protocol.md; section numbers (§) below refer to it.

/** Client-side error codes. Server error codes (100..199) come from replies; these are below 100. */
export const ErrorCodes = Object.freeze({
  /** No reply within `timeout` (a queued command also times out while waiting for a connection). */
  TIMEOUT: 1,
  /** The client is disconnected (never connected, `disconnect()` called, or a terminal close). */
  DISCONNECTED: 2,
  /** The connection closed after the command was sent and before its reply arrived. */
  CONNECTION_CLOSED: 3,
  /** The subscription was removed (by `unsubscribe()` or by the server) before it was subscribed. */
  UNSUBSCRIBED: 4,
  /** getToken() failed or returned something that is not a string. */
  TOKEN: 5,
  /** The command needs the WebSocket transport: the client is on SSE (receive only). */
  TRANSPORT: 6,
  // Server codes (§8), for convenience.
  INTERNAL: 100,
  UNAUTHORIZED: 101,
  UNKNOWN_CHANNEL: 102,
  PERMISSION_DENIED: 103,
  METHOD_NOT_FOUND: 104,
  ALREADY_SUBSCRIBED: 105,
  LIMIT_EXCEEDED: 106,
  BAD_REQUEST: 107,
  NOT_AVAILABLE: 108,
  TOKEN_EXPIRED: 109,
  TOO_MANY_REQUESTS: 110,
  UNRECOVERABLE_POSITION: 112,
});

/** Close codes (§9) after which the client does not reconnect by itself. */
const TERMINAL_CLOSE_CODES = new Set([
  4003, // forbidden: credentials are wrong, retrying will not help
  4004, // bad request: a client bug, do not loop
  4009, // message too big
]);
const CLOSE_TOKEN_EXPIRED = 4011;
/** slow consumer, too many requests, connection limit: reconnect, but not at once. */
const BACK_OFF_CLOSE_CODES = new Set([4005, 4006, 4008]);

/** Close code the client reports (in `disconnected`) for a connection it gave up on itself. */
const CLOSE_CLIENT_TIMEOUT = 3000;
/** Close code the client reports for `disconnect()`. */
const CLOSE_NORMAL = 1000;
/** Close code the client reports when it leaves SSE for WebSocket (a WebSocket probe worked). */
const CLOSE_TRANSPORT_SWITCH = 3001;

/** Subscribe errors after which retrying is pointless: the subscription is dropped. */
const TERMINAL_SUBSCRIBE_ERRORS = new Set([101, 102, 103, 104, 106, 107]);

/** An error answered by the server (`code` >= 100) or raised by the client (`code` < 100). */
export class FerrocastError extends Error {
  constructor(code, message, extra) {
    super(message);
    this.name = 'FerrocastError';
    this.code = code;
    if (extra) Object.assign(this, extra);
  }
}

/** A tiny event emitter: listener exceptions are rethrown asynchronously so that they never break
 * the client's state machine. */
class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  on(event, fn) {
    if (typeof fn !== 'function') throw new TypeError('listener must be a function');
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return this;
  }

  once(event, fn) {
    const wrapper = (arg) => {
      this.off(event, wrapper);
      fn(arg);
    };
    wrapper._orig = fn;
    return this.on(event, wrapper);
  }

  off(event, fn) {
    if (event === undefined) {
      this._listeners.clear();
      return this;
    }
    const set = this._listeners.get(event);
    if (!set) return this;
    if (fn === undefined) {
      set.clear();
      return this;
    }
    if (!set.delete(fn)) {
      for (const l of set) {
        if (l._orig === fn) {
          set.delete(l);
          break;
        }
      }
    }
    return this;
  }

  listenerCount(event) {
    const set = this._listeners.get(event);
    return set ? set.size : 0;
  }

  _emit(event, arg) {
    const set = this._listeners.get(event);
    if (!set || set.size === 0) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (err) {
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }
}

/** Seconds-since-epoch `exp` claim of a JWT, or null (no claim, or not a decodable JWT). */
function jwtExpiry(token) {
  try {
    const part = token.split('.')[1];
    let b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    while (b64.length % 4) b64 += '=';
    const bin = atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return typeof claims.exp === 'number' ? claims.exp : null;
  } catch {
    return null;
  }
}

function decodeData(data) {
  if (typeof data === 'string') return data;
  if (data instanceof ArrayBuffer) return new TextDecoder().decode(data);
  if (ArrayBuffer.isView(data)) return new TextDecoder().decode(data);
  return String(data);
}

/** The SSE URL that goes with a WebSocket URL: ws → http, wss → https, a path ending in `/ws`
 * ends in `/sse` instead (any other path gets `/sse` appended); the query string is kept. */
export function deriveSseUrl(wsUrl) {
  const u = new URL(wsUrl);
  if (u.protocol === 'ws:') u.protocol = 'http:';
  else if (u.protocol === 'wss:') u.protocol = 'https:';
  if (/\/ws$/.test(u.pathname)) u.pathname = u.pathname.replace(/\/ws$/, '/sse');
  else u.pathname = u.pathname.replace(/\/?$/, '/sse');
  return u.toString();
}

/**
 * An EventSource (WHATWG HTML §9.2) over `fetch` with a streamed body, used by default for the
 * SSE transport. Same interface as the browser's EventSource (readyState, url, withCredentials,
 * lastEventId, onopen/onmessage/onerror, addEventListener, close), same parsing (data/id/event/
 * retry fields, comments, CR/LF/CRLF line ends, a BOM), same reconnection (after `retry:` ms,
 * resuming from the last event id), with three additions the browser's cannot offer:
 * - an `error` event of a failed connection carries the HTTP `status` and the parsed JSON
 *   `body` (the browser's EventSource hides them: a 401 is indistinguishable from a 503);
 * - comment lines (the server's heartbeats) are dispatched as `heartbeat` events, so a stream
 *   that went silent can be noticed (`heartbeats` is true);
 * - the last event id is resent as the `last_event_id` query parameter, not the `Last-Event-ID`
 *   header, which a cross-origin fetch could only send after a CORS preflight.
 */
export class FetchEventSource {
  constructor(url, init = {}) {
    this.url = String(url);
    this.withCredentials = !!init.withCredentials;
    this.readyState = FetchEventSource.CONNECTING;
    this.lastEventId = '';
    this.heartbeats = true;
    this.onopen = this.onmessage = this.onerror = null;
    // Called as a plain function: a browser's fetch throws "Illegal invocation" as a method.
    const f = init.fetch || globalThis.fetch;
    this._fetch = typeof f === 'function' ? (input, options) => f(input, options) : null;
    this._listeners = new Map();
    this._retry = 3000;
    this._abort = null;
    this._timer = null;
    if (typeof this._fetch !== 'function') throw new TypeError('FetchEventSource needs fetch');
    Promise.resolve().then(() => this._connect());
  }

  addEventListener(type, fn) {
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(fn);
  }

  removeEventListener(type, fn) {
    const set = this._listeners.get(type);
    if (set) set.delete(fn);
  }

  close() {
    this.readyState = FetchEventSource.CLOSED;
    if (this._timer) clearTimeout(this._timer);
    this._timer = null;
    if (this._abort) this._abort.abort();
    this._abort = null;
  }

  _dispatch(event) {
    const handler = this['on' + event.type];
    if (typeof handler === 'function') handler.call(this, event);
    const set = this._listeners.get(event.type);
    if (set) for (const fn of [...set]) fn.call(this, event);
  }

  _requestUrl() {
    if (!this.lastEventId) return this.url;
    const u = new URL(this.url, globalThis.location ? globalThis.location.href : undefined);
    u.searchParams.set('last_event_id', this.lastEventId);
    return u.toString();
  }

  async _connect() {
    if (this.readyState === FetchEventSource.CLOSED) return;
    const abort = new AbortController();
    this._abort = abort;
    let res;
    try {
      res = await this._fetch(this._requestUrl(), {
        headers: { Accept: 'text/event-stream' },
        credentials: this.withCredentials ? 'include' : 'same-origin',
        cache: 'no-store',
        signal: abort.signal,
      });
    } catch (err) {
      this._lost(err);
      return;
    }
    if (this._abort !== abort) return;
    const type = (res.headers.get('content-type') || '').split(';')[0].trim().toLowerCase();
    if (res.status !== 200 || type !== 'text/event-stream' || !res.body) {
      // Fail the connection (no reconnection), like the browser's EventSource.
      let body = null;
      try {
        const text = await res.text();
        try {
          body = JSON.parse(text);
        } catch {
          body = text;
        }
      } catch {
        /* no body */
      }
      if (this._abort !== abort) return;
      this.readyState = FetchEventSource.CLOSED;
      this._abort = null;
      this._dispatch({ type: 'error', status: res.status, body });
      return;
    }
    this.readyState = FetchEventSource.OPEN;
    this._dispatch({ type: 'open', status: 200 });
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    const parser = { buf: '', data: '', event: '', id: null, first: true };
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (this._abort !== abort) return;
        if (done) break;
        this._parse(parser, decoder.decode(value, { stream: true }));
        if (this._abort !== abort) return;
      }
    } catch (err) {
      if (this._abort !== abort) return;
      this._lost(err);
      return;
    }
    this._lost(null);
  }

  /** The stream ended or the request failed: reconnect after `retry` ms (§9.2.3). */
  _lost(err) {
    if (this.readyState === FetchEventSource.CLOSED) return;
    this._abort = null;
    this.readyState = FetchEventSource.CONNECTING;
    this._dispatch({ type: 'error', status: 0, error: err });
    if (this.readyState !== FetchEventSource.CONNECTING) return; // closed by a listener
    this._timer = setTimeout(() => {
      this._timer = null;
      this._connect();
    }, this._retry);
  }

  _parse(p, chunk) {
    p.buf += chunk;
    if (p.first && p.buf.length > 0) {
      if (p.buf.charCodeAt(0) === 0xfeff) p.buf = p.buf.slice(1);
      p.first = false;
    }
    for (;;) {
      const m = /\r\n|\r|\n/.exec(p.buf);
      if (!m) return;
      // A CR at the very end may be the first half of a CRLF split across chunks.
      if (m[0] === '\r' && m.index === p.buf.length - 1) return;
      const line = p.buf.slice(0, m.index);
      p.buf = p.buf.slice(m.index + m[0].length);
      this._line(p, line);
      if (this.readyState === FetchEventSource.CLOSED) return;
    }
  }

  _line(p, line) {
    if (line === '') {
      if (p.id !== null) this.lastEventId = p.id;
      const data = p.data;
      const type = p.event || 'message';
      p.data = '';
      p.event = '';
      if (data === '') return;
      this._dispatch({ type, data: data.slice(0, -1), lastEventId: this.lastEventId, origin: this.url });
      return;
    }
    if (line[0] === ':') {
      this._dispatch({ type: 'heartbeat', comment: line.slice(1) });
      return;
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (field === 'data') p.data += value + '\n';
    else if (field === 'event') p.event = value;
    else if (field === 'id') {
      if (!value.includes('\0')) p.id = value;
    } else if (field === 'retry') {
      if (/^\d+$/.test(value)) this._retry = parseInt(value, 10);
    }
  }
}
FetchEventSource.CONNECTING = 0;
FetchEventSource.OPEN = 1;
FetchEventSource.CLOSED = 2;

/** An SSE event id (protocol.md §16: `offset.epoch.channel` joined by `;`, an epoch's characters
 * other than [A-Za-z0-9_-] %-escaped) for the positions of `subs`; '' when none has one. */
function positionsEventId(subs) {
  const parts = [];
  for (const sub of subs) {
    const pos = sub._position();
    if (!pos) continue;
    const epoch = String(pos.epoch).replace(/[^A-Za-z0-9_-]/g, (c) =>
      Array.from(new TextEncoder().encode(c), (b) => '%' + b.toString(16).toUpperCase().padStart(2, '0')).join(''));
    parts.push(`${pos.offset}.${epoch}.${sub.channel}`);
  }
  return parts.join(';');
}

/** A subscription to one channel. Created by `Client#subscribe`; survives reconnects. */
export class Subscription extends Emitter {
  constructor(client, channel, options = {}) {
    super();
    this.channel = channel;
    /** 'unsubscribed' | 'subscribing' | 'subscribed' */
    this.state = 'unsubscribed';
    /** Offset of the last publication processed (or of the subscribe reply if none since). */
    this.offset = null;
    /** The channel stream's epoch from the last subscribe reply. */
    this.epoch = null;
    /** true: the server subscribed this connection (token `subs`, `POST /api/subscribe`); the
     * client recovers it on reconnect through `connect.subs`, not with a `subscribe` command. */
    this.serverSide = !!options.serverSide;
    this._client = client;
    this._recover = options.recover !== false;
    if (options.since && typeof options.since.offset === 'number' && options.since.epoch) {
      this.offset = options.since.offset;
      this.epoch = String(options.since.epoch);
    }
    this._readyWaiters = [];
    // Set while a subscribe command is in flight on the current transport.
    this._pendingId = null;
    // true from a subscribe reply until the first live publication past its offset: duplicates
    // with offset <= reply offset may still arrive in that window (§11.3) and are dropped.
    this._justSubscribed = false;
    this._retryTimer = null;
    this._retryAttempt = 0;
  }

  /** Resolves when the subscription is subscribed (at once when it already is). Rejects with a
   * FerrocastError when the server refuses it for good, when it is (or gets) unsubscribed, or
   * when the client reaches the `disconnected` state (terminal close or `disconnect()`); while
   * the client has not been started yet, it waits for `connect()`. */
  ready(timeoutMs) {
    if (this.state === 'subscribed') return Promise.resolve(this);
    if (this.state === 'unsubscribed') {
      return Promise.reject(new FerrocastError(ErrorCodes.UNSUBSCRIBED, `not subscribing to ${this.channel}`));
    }
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: null };
      if (timeoutMs > 0) {
        waiter.timer = setTimeout(() => {
          this._readyWaiters = this._readyWaiters.filter((w) => w !== waiter);
          reject(new FerrocastError(ErrorCodes.TIMEOUT, 'subscription not ready in time'));
        }, timeoutMs);
      }
      this._readyWaiters.push(waiter);
    });
  }

  /** Subscribes again after `unsubscribe()` (or after the server removed the subscription). */
  subscribe() {
    this._client._addSubscription(this);
    return this;
  }

  /** Removes the subscription: no more events, and the server is told when connected. */
  unsubscribe() {
    this._client._removeSubscription(this, 'unsubscribe called');
  }

  _settleReady(err) {
    const waiters = this._readyWaiters;
    this._readyWaiters = [];
    for (const w of waiters) {
      if (w.timer) clearTimeout(w.timer);
      if (err) w.reject(err);
      else w.resolve(this);
    }
  }

  _setState(state) {
    if (this.state === state) return false;
    this.state = state;
    return true;
  }

  _clearRetry() {
    if (this._retryTimer) clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }

  _position() {
    if (!this._recover || this.offset === null || this.epoch === null) return null;
    return { offset: this.offset, epoch: this.epoch };
  }
}

const DEFAULTS = {
  minReconnectDelay: 200,
  maxReconnectDelay: 20000,
  timeout: 5000,
  transports: ['websocket', 'sse'],
  fallbackAfter: 2,
  wsRetryInterval: 60000,
};

/** A connection to a ferrocast node, reconnecting by itself, with subscriptions that recover
 * what they missed. */
export class Client extends Emitter {
  constructor(url, options = {}) {
    super();
    if (typeof url !== 'string' || !url) throw new TypeError('url must be a non-empty string');
    this.url = url;
    this._opts = { ...DEFAULTS, ...options };
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    const transports = Array.isArray(this._opts.transports) ? this._opts.transports : DEFAULTS.transports;
    if (transports.some((t) => t !== 'websocket' && t !== 'sse') || transports.length === 0) {
      throw new TypeError("transports: a non-empty list of 'websocket' and 'sse'");
    }
    this._EventSource =
      options.EventSource ||
      (typeof globalThis.fetch === 'function' && typeof globalThis.ReadableStream === 'function'
        ? FetchEventSource
        : globalThis.EventSource);
    this._canWs = transports.includes('websocket');
    this._canSse = transports.includes('sse') && typeof this._EventSource === 'function';
    // A missing WebSocket is a setup mistake (Node 20 without `ws`), not a reason to use SSE.
    if (this._canWs && typeof this._WebSocket !== 'function') {
      throw new TypeError("no WebSocket: pass the constructor as options.WebSocket (or transports: ['sse'])");
    }
    if (!this._canWs && !this._canSse) {
      throw new TypeError('no EventSource: pass the constructor as options.EventSource');
    }
    this._sseUrl = this._opts.sseUrl || (this._canSse ? deriveSseUrl(url) : null);
    /** 'websocket' | 'sse' | null: the transport of the current (or last attempted) connection. */
    this.transport = null;
    this._es = null; // the EventSource while on SSE
    this._sseLastId = ''; // the last event id seen on an SSE stream
    this._sseHoldId = false; // a gap is being repaired: keep the last id from before it
    this._sseReopenTimer = null;
    this._livenessTimer = null;
    this._announceTimer = null;
    this._wsFailures = 0; // consecutive WebSocket attempts that failed before `open`
    this._transportOpened = false; // the WebSocket opened / the SSE stream sent `connected`
    this._awaitingConnected = false;
    this._wsProbe = null;
    this._wsProbeTimer = null;
    this._token = options.token || null;
    this._getToken = typeof options.getToken === 'function' ? options.getToken : null;
    /** 'disconnected' | 'connecting' | 'connected' */
    this.state = 'disconnected';
    /** The `connected` push of the current connection ({client, user, node, ping_interval}). */
    this.info = null;
    this._subs = new Map();
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject, timer}: commands awaiting their reply
    this._queue = []; // frames waiting for the connection: {frame, entry}
    this._attempt = 0;
    this._reconnectTimer = null;
    this._connectTimer = null;
    this._pingTimer = null;
    this._refreshTimer = null;
    this._lastReceived = 0;
    this._epochOfTransport = 0; // increments per transport; stale async work checks it
    this._needFreshToken = false;
    this._onOnline = null;
  }

  // ---------------------------------------------------------------- public API

  /** Starts connecting (no-op unless disconnected). */
  connect() {
    if (this.state !== 'disconnected') return this;
    this._attempt = 0;
    this._setState('connecting');
    this._watchOnline(true);
    this._openTransport();
    return this;
  }

  /** Closes the connection and stops reconnecting. Subscriptions are kept and resubscribe (with
   * recovery) on the next `connect()`. */
  disconnect() {
    if (this.state === 'disconnected') return this;
    const wasConnected = this.state === 'connected';
    this._teardownTransport(CLOSE_NORMAL, 'disconnect called');
    this._goDisconnected({ code: CLOSE_NORMAL, reason: 'disconnect called', reconnect: false }, wasConnected);
    return this;
  }

  /** Creates (or returns the existing) subscription to `channel`; it subscribes as soon as the
   * client is connected. Options: `recover` (default true), `since` ({offset, epoch}: start by
   * recovering from this position). */
  subscribe(channel, options = {}) {
    const existing = this._subs.get(channel);
    if (existing) return existing;
    const sub = new Subscription(this, channel, options);
    this._addSubscription(sub);
    return sub;
  }

  getSubscription(channel) {
    return this._subs.get(channel) || null;
  }

  subscriptions() {
    return new Map(this._subs);
  }

  unsubscribe(channel) {
    const sub = this._subs.get(channel);
    if (sub) sub.unsubscribe();
  }

  publish(channel, data) {
    return this._call('publish', { channel, data });
  }

  presence(channel) {
    return this._call('presence', { channel });
  }

  presenceStats(channel) {
    return this._call('presence_stats', { channel });
  }

  history(channel, options = {}) {
    const body = { channel };
    if (options.limit !== undefined && options.limit !== null) body.limit = options.limit;
    if (options.since) body.since = { offset: options.since.offset, epoch: options.since.epoch };
    return this._call('history', body);
  }

  /** Application-level round trip (§4.9). */
  ping() {
    return this._call('ping', {});
  }

  /** Replaces the token used for the next connections; when connected, also sends it with the
   * `refresh` command ([ext] §3.3) so the open connection does not expire. */
  async setToken(token) {
    this._token = token;
    this._needFreshToken = false;
    if (this._es) {
      // SSE: no commands; the stream is opened again with the new token (resuming from its id).
      this._scheduleSseReopen();
      return null;
    }
    if (this.state === 'connected') {
      const result = await this._call('refresh', { token });
      this._scheduleRefresh();
      return result;
    }
    return null;
  }

  // ---------------------------------------------------------------- state

  _setState(state) {
    const previous = this.state;
    if (previous === state) return;
    this.state = state;
    this._emit('state', { state, previous });
  }

  _goDisconnected(ctx, emitDisconnected) {
    this._clearReconnect();
    this._watchOnline(false);
    this.info = null;
    this._setState('disconnected');
    if (emitDisconnected || ctx.reconnect === false) this._emit('disconnected', ctx);
    const err = new FerrocastError(ErrorCodes.DISCONNECTED, `client disconnected: ${ctx.reason || ctx.code}`, {
      closeCode: ctx.code,
    });
    this._rejectQueue(err);
    for (const sub of this._subs.values()) {
      sub._clearRetry();
      if (sub.state === 'subscribed') {
        sub._setState('subscribing');
        sub._emit('subscribing', { channel: sub.channel, reason: 'disconnected' });
      }
      sub._settleReady(err);
    }
  }

  // ---------------------------------------------------------------- transport

  async _openTransport() {
    const gen = ++this._epochOfTransport;
    if (!this._token && this._getToken && !this._opts.connectProxy) this._needFreshToken = true;
    if (this._needFreshToken && this._getToken) {
      let token;
      try {
        token = await this._getToken();
      } catch (err) {
        if (gen !== this._epochOfTransport || this.state !== 'connecting') return;
        this._emit('error', new FerrocastError(ErrorCodes.TOKEN, `getToken failed: ${err && err.message}`, { cause: err }));
        this._scheduleReconnect();
        return;
      }
      if (gen !== this._epochOfTransport || this.state !== 'connecting') return;
      if (typeof token !== 'string') {
        this._emit('error', new FerrocastError(ErrorCodes.TOKEN, 'getToken did not return a string'));
        this._scheduleReconnect();
        return;
      }
      this._token = token;
      this._needFreshToken = false;
    }

    if (this._nextIsSse()) {
      this._openSse();
      return;
    }
    let ws;
    this.transport = 'websocket';
    this._transportOpened = false;
    this._awaitingConnected = true;
    try {
      ws = new this._WebSocket(this.url);
    } catch (err) {
      this._emit('error', err);
      this._wsFailures++;
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    this._lastReceived = Date.now();
    // A connection attempt that neither connects nor fails within the timeout is abandoned.
    this._connectTimer = setTimeout(() => {
      if (this._ws === ws) this._abortTransport(CLOSE_CLIENT_TIMEOUT, 'connect timeout');
    }, Math.max(this._opts.timeout, 1000));

    ws.onopen = () => {
      if (this._ws !== ws) return;
      this._transportOpened = true;
      this._wsFailures = 0;
      if (this._opts.connectProxy && !this._token) return; // the server authenticates by cookie
      const body = this._token ? { token: this._token } : {};
      // Server-side subscriptions are recovered by the server from these positions.
      const subs = {};
      let any = false;
      for (const sub of this._subs.values()) {
        const pos = sub.serverSide && sub._position();
        if (pos) {
          subs[sub.channel] = pos;
          any = true;
        }
      }
      if (any) body.subs = subs;
      const id = this._nextId++;
      // The connect reply is handled like any other; success moves to `connected`.
      this._pending.set(id, {
        timer: null,
        resolve: (result) => {
          if (result && result.client) this._onConnected(result);
        },
        reject: (err, fromTeardown) => {
          if (!fromTeardown) this._emit('error', err); // a close (4003 / 4011) follows
        },
      });
      this._sendRaw({ id, connect: body });
    };
    ws.onmessage = (event) => {
      if (this._ws !== ws) return;
      this._lastReceived = Date.now();
      let msg;
      try {
        msg = JSON.parse(decodeData(event.data));
      } catch (err) {
        this._emit('error', new FerrocastError(ErrorCodes.BAD_REQUEST, 'unparseable frame from server'));
        return;
      }
      this._handleMessage(msg);
    };
    ws.onerror = (event) => {
      if (this._ws !== ws) return;
      const err = (event && event.error) || new Error((event && event.message) || 'WebSocket error');
      this._emit('error', err);
      // A close event should follow, but some implementations (Node 20's experimental
      // WebSocket after a refused connection) never send it: do not wait for it forever.
      if (ws.readyState === 0) {
        this._handleClose(1006, 'connection failed');
      } else {
        setTimeout(() => {
          if (this._ws === ws) this._handleClose(1006, 'connection error');
        }, 1000);
      }
    };
    ws.onclose = (event) => {
      if (this._ws !== ws) return;
      this._handleClose(event.code || 1006, event.reason || '');
    };
  }

  /** Forgets the current socket (its late events are ignored) and closes it. */
  _teardownTransport(code, reason) {
    const ws = this._ws;
    this._ws = null;
    this._epochOfTransport++;
    this._clearTransportTimers();
    this._closeEventSource();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      // The `ws` package (Node) emits 'error' when a connecting socket is closed; an EventEmitter
      // 'error' without listener would throw.
      if (typeof ws.on === 'function') ws.on('error', () => {});
      if (ws.readyState === 0 || ws.readyState === 1) {
        // Browsers accept only 1000 and 3000..4999 from scripts; a reason of at most 123 bytes.
        const sendCode = code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000;
        try {
          ws.close(sendCode, String(reason).slice(0, 100));
        } catch {
          try {
            ws.close();
          } catch {
            /* already closed */
          }
        }
      }
    }
    const err = new FerrocastError(ErrorCodes.CONNECTION_CLOSED, `connection closed: ${reason}`, { closeCode: code });
    for (const [id, entry] of this._pending) {
      this._pending.delete(id);
      if (entry.timer) clearTimeout(entry.timer);
      entry.reject(err, true);
    }
    for (const sub of this._subs.values()) sub._pendingId = null;
  }

  /** Gives up on a socket that stopped answering and handles it like a close from the network. */
  _abortTransport(code, reason) {
    this._handleClose(code, reason);
  }

  _clearTransportTimers() {
    if (this._connectTimer) clearTimeout(this._connectTimer);
    if (this._pingTimer) clearInterval(this._pingTimer);
    if (this._refreshTimer) clearTimeout(this._refreshTimer);
    if (this._livenessTimer) clearInterval(this._livenessTimer);
    if (this._announceTimer) clearTimeout(this._announceTimer);
    if (this._sseReopenTimer) clearTimeout(this._sseReopenTimer);
    this._connectTimer = this._pingTimer = this._refreshTimer = null;
    this._livenessTimer = this._announceTimer = this._sseReopenTimer = null;
    this._stopWsProbe();
  }

  _closeEventSource() {
    const es = this._es;
    this._es = null;
    if (!es) return;
    es.onopen = es.onmessage = es.onerror = null;
    try {
      es.close();
    } catch {
      /* already closed */
    }
  }

  /** `terminal`: the server said not to reconnect (SSE `disconnect` with `reconnect: false`). */
  _handleClose(code, reason, terminal = false) {
    const wasConnected = this.state === 'connected';
    // The fallback rule (README, "Transports"): count WebSocket attempts that never opened; an
    // SSE stream that failed before `connected` sends the next attempt to WebSocket again.
    if (this.transport === 'websocket' && !this._transportOpened) this._wsFailures++;
    if (this.transport === 'sse' && !this._transportOpened && this._canWs) {
      this._wsFailures = Math.min(this._wsFailures, Math.max(0, this._opts.fallbackAfter - 1));
    }
    this._teardownTransport(code, reason);
    let reconnect = !TERMINAL_CLOSE_CODES.has(code) && !(terminal && code !== CLOSE_TOKEN_EXPIRED);
    if (code === CLOSE_TOKEN_EXPIRED) {
      // Without getToken there is no way to a valid token: stop (setToken + connect() resumes).
      if (this._getToken) this._needFreshToken = true;
      else reconnect = false;
    }
    // Closes that ask the client to back off: start the backoff a few steps up.
    if (BACK_OFF_CLOSE_CODES.has(code)) this._attempt = Math.max(this._attempt, 3);
    if (!reconnect) {
      this._goDisconnected({ code, reason, reconnect: false }, wasConnected);
      return;
    }
    for (const sub of this._subs.values()) {
      sub._clearRetry();
      if (sub._setState('subscribing')) {
        sub._emit('subscribing', { channel: sub.channel, reason: 'connection lost' });
      }
    }
    if (wasConnected) {
      this.info = null;
      this._setState('connecting');
      this._emit('disconnected', { code, reason, reconnect: true });
    }
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    this._clearReconnect();
    const { minReconnectDelay, maxReconnectDelay } = this._opts;
    // Exponential backoff with full jitter: uniform in [0, min(max, min * 2^attempt)].
    const cap = Math.min(maxReconnectDelay, minReconnectDelay * 2 ** Math.min(this._attempt, 30));
    // A fall back from a WebSocket that cannot open to SSE is part of the same attempt: no wait.
    const delay = this.transport === 'websocket' && this._nextIsSse() ? 0 : Math.floor(Math.random() * cap);
    this._attempt++;
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      if (this.state === 'connecting' && !this._ws && !this._es) this._openTransport();
    }, delay);
  }

  _clearReconnect() {
    if (this._reconnectTimer) clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
  }

  /** Browsers: retry at once when the network comes back instead of waiting out the backoff. */
  _watchOnline(on) {
    const target = globalThis.window;
    if (!target || typeof target.addEventListener !== 'function') return;
    if (on && !this._onOnline) {
      this._onOnline = () => {
        if (this.state === 'connecting' && this._reconnectTimer) {
          this._clearReconnect();
          this._openTransport();
        }
      };
      target.addEventListener('online', this._onOnline);
    } else if (!on && this._onOnline) {
      target.removeEventListener('online', this._onOnline);
      this._onOnline = null;
    }
  }

  _sendRaw(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch (err) {
      this._emit('error', err);
      return false;
    }
  }

  // ---------------------------------------------------------------- connected

  _onConnected(info) {
    // Over WebSocket both the connect reply and the `connected` push get here: the first counts.
    if (!this._awaitingConnected) return;
    this._awaitingConnected = false;
    this._transportOpened = true;
    if (this._connectTimer) clearTimeout(this._connectTimer);
    this._connectTimer = null;
    this._attempt = 0;
    info = { ...info, transport: info.transport || this.transport };
    this.info = info;
    const quiet = this.state === 'connected'; // an SSE stream opened again (new channel, token)
    this._setState('connected');
    if (!quiet) this._emit('connected', info);
    this._scheduleRefresh();
    this._watchAnnouncements();
    if (this._es) {
      this._startLiveness(info.ping_interval);
      this._rejectQueue(this._sseError('command'));
      // The first try soon: the WebSocket attempts may have failed only because the node was
      // down (a restart) rather than blocked, and then the client should not stay on SSE.
      this._scheduleWsProbe(quiet ? undefined : 1000);
      return;
    }
    this._startPing(info.ping_interval);
    // Subscriptions first (their recovery keeps offsets in order), then queued commands.
    // Server-side subscriptions are the server's to announce (recovered from `connect.subs`).
    for (const sub of this._subs.values()) if (!sub.serverSide) this._sendSubscribe(sub);
    const queue = this._queue;
    this._queue = [];
    for (const item of queue) {
      if (item.entry.done) continue;
      this._sendCommand(item.frame, item.entry);
    }
  }

  /** Subscriptions the server should announce on this connection (server-side ones on
   * WebSocket; all of them on SSE) and did not within `timeout`: a server-side one is dropped
   * (`unsubscribed`, `server: true`: the server no longer subscribes this client to it), a
   * client-side one on SSE reports a TIMEOUT error and waits for the next stream. */
  _watchAnnouncements() {
    if (this._announceTimer) clearTimeout(this._announceTimer);
    const transport = this._ws || this._es;
    this._announceTimer = setTimeout(() => {
      this._announceTimer = null;
      if ((this._ws || this._es) !== transport || this.state !== 'connected') return;
      for (const sub of [...this._subs.values()]) {
        if (sub.state !== 'subscribing' || sub._retryTimer) continue;
        if (sub.serverSide) {
          this._dropSubscription(sub, { channel: sub.channel, server: true, reason: 'not subscribed by the server any more' }, null);
        } else if (this._es) {
          const err = new FerrocastError(ErrorCodes.TIMEOUT, `subscribe ${sub.channel}: not announced on the SSE stream`);
          sub._emit('error', err);
          this._emit('error', err);
        }
      }
    }, this._opts.timeout);
  }

  _sseError(method) {
    return new FerrocastError(
      ErrorCodes.TRANSPORT,
      `${method} is not available over the SSE transport (receive only); it works again once the client is back on WebSocket`,
    );
  }

  // ---------------------------------------------------------------- SSE transport

  /** Whether the next connection attempt uses SSE (the fallback rule, README "Transports"). */
  _nextIsSse() {
    if (!this._canSse) return false;
    if (!this._canWs) return true;
    return this._wsFailures >= Math.max(1, this._opts.fallbackAfter);
  }

  _sseRequestUrl() {
    const u = new URL(this._sseUrl, globalThis.location ? globalThis.location.href : undefined);
    if (this._token) u.searchParams.set('token', this._token);
    u.searchParams.delete('channel');
    for (const channel of this._subs.keys()) u.searchParams.append('channel', channel);
    // The last stream's id; on a first SSE stream after WebSocket, the positions the client
    // holds, in the id format the server documents (protocol.md §16), so nothing is lost.
    const id = this._sseLastId || positionsEventId(this._subs.values());
    if (id) u.searchParams.set('last_event_id', id);
    else u.searchParams.delete('last_event_id');
    return u.toString();
  }

  _openSse() {
    this.transport = 'sse';
    this._transportOpened = false;
    this._awaitingConnected = true;
    this._sseHoldId = false;
    const url = this._sseRequestUrl();
    let es;
    try {
      es = new this._EventSource(url, { withCredentials: !!this._opts.connectProxy });
    } catch (err) {
      this._emit('error', err);
      this._scheduleReconnect();
      return;
    }
    this._es = es;
    this._lastReceived = Date.now();
    this._connectTimer = setTimeout(() => {
      if (this._es === es) this._abortTransport(CLOSE_CLIENT_TIMEOUT, 'connect timeout');
    }, Math.max(this._opts.timeout, 1000));
    es.onopen = () => {
      if (this._es === es) this._lastReceived = Date.now();
    };
    if (typeof es.addEventListener === 'function') {
      es.addEventListener('heartbeat', () => {
        if (this._es === es) this._lastReceived = Date.now();
      });
    }
    es.onmessage = (event) => {
      if (this._es !== es) return;
      this._lastReceived = Date.now();
      let msg;
      try {
        msg = JSON.parse(decodeData(event.data));
      } catch {
        this._emit('error', new FerrocastError(ErrorCodes.BAD_REQUEST, 'unparseable event from server'));
        return;
      }
      if (msg && msg.disconnect) {
        const d = msg.disconnect;
        this._handleClose(d.code || 4000, d.reason || '', d.reconnect === false);
        return;
      }
      this._handleMessage(msg);
      // The id covers every channel: it moves on only once the event was handled, and not
      // while a gap waits for its repair (the re-opened stream recovers from before the gap).
      if (this._es === es && event.lastEventId && !this._sseHoldId) this._sseLastId = event.lastEventId;
    };
    es.onerror = (event) => {
      if (this._es !== es) return;
      if (es.readyState === 2) {
        // Failed for good (an HTTP error status): find out which, then act as for a close code.
        if (event && typeof event.status === 'number') this._onSseRefused(es, event.status, event.body);
        else this._diagnoseSse(es, url);
        return;
      }
      // The stream broke; EventSource reconnects by itself, sending the last id.
      if (!this._transportOpened || this.state !== 'connected') {
        // Never connected: this is a failed attempt (the fallback rule decides what comes next).
        this._handleClose(1006, 'SSE connection failed');
        return;
      }
      this._onSseInterrupted(es);
    };
  }

  /** The connected stream broke and the EventSource reconnects by itself with the last event
   * id: the client is `connecting` meanwhile; no `connected` within `timeout` → it gives up on
   * that EventSource and reconnects with its own backoff. */
  _onSseInterrupted(es) {
    if (this._livenessTimer) clearInterval(this._livenessTimer);
    if (this._announceTimer) clearTimeout(this._announceTimer);
    if (this._refreshTimer) clearTimeout(this._refreshTimer);
    this._livenessTimer = this._announceTimer = this._refreshTimer = null;
    this._stopWsProbe();
    this._awaitingConnected = true;
    for (const sub of this._subs.values()) {
      sub._clearRetry();
      if (sub._setState('subscribing')) sub._emit('subscribing', { channel: sub.channel, reason: 'connection lost' });
    }
    this.info = null;
    this._setState('connecting');
    this._emit('disconnected', { code: 1006, reason: 'SSE stream interrupted', reconnect: true });
    if (this._connectTimer) clearTimeout(this._connectTimer);
    this._connectTimer = setTimeout(() => {
      if (this._es === es) this._abortTransport(CLOSE_CLIENT_TIMEOUT, 'SSE reconnect timeout');
    }, Math.max(this._opts.timeout, 1000));
  }

  /** The browser's EventSource hides the status of a refused stream: ask once with fetch. */
  async _diagnoseSse(es, url) {
    let status = 0;
    let body = null;
    const f = globalThis.fetch;
    if (typeof f === 'function') {
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), this._opts.timeout);
      try {
        const res = await f(url, {
          credentials: this._opts.connectProxy ? 'include' : 'same-origin',
          cache: 'no-store',
          signal: abort.signal,
        });
        status = res.status;
        if (status !== 200) {
          try {
            body = await res.json();
          } catch {
            /* not JSON */
          }
        }
      } catch {
        /* network */
      } finally {
        clearTimeout(timer);
        abort.abort();
      }
    }
    if (this._es === es) this._onSseRefused(es, status, body);
  }

  /** /sse answered with an error status (docs: 401 + 101|109, 403, 503): as the close codes. */
  _onSseRefused(es, status, body) {
    const code = body && body.error && body.error.code;
    let close = 1006;
    let reason = `SSE refused: HTTP ${status}`;
    if (status === 401 && code === ErrorCodes.TOKEN_EXPIRED) close = CLOSE_TOKEN_EXPIRED;
    else if (status === 401 || status === 403) close = 4003;
    else if (status === 503) close = 4008;
    if (code) {
      this._emit('error', new FerrocastError(code, (body.error && body.error.message) || reason, { status }));
      reason = `${reason} (${code})`;
    }
    this._handleClose(close, reason);
  }

  /** Opens the stream again (coalesced) with the current channels, token and last id: SSE
   * carries no commands, so subscribe / unsubscribe / a new token work this way. */
  _scheduleSseReopen() {
    if (!this._es || this._sseReopenTimer) return;
    this._sseReopenTimer = setTimeout(() => {
      this._sseReopenTimer = null;
      if (!this._es) return;
      const wasConnected = this.state === 'connected';
      this._epochOfTransport++;
      if (this._livenessTimer) clearInterval(this._livenessTimer);
      if (this._announceTimer) clearTimeout(this._announceTimer);
      if (this._connectTimer) clearTimeout(this._connectTimer);
      this._livenessTimer = this._announceTimer = this._connectTimer = null;
      this._stopWsProbe();
      this._closeEventSource();
      this._openSse();
      // Still `connected` (the subscriptions keep their state); a failure of the new stream
      // is a disconnect as usual.
      if (wasConnected) this._transportOpened = true;
    }, 0);
  }

  /** SSE: the server's heartbeats (comment lines, every `ping_interval`) keep the stream alive;
   * nothing for 2.5 × `ping_interval` → the stream is treated as dead (3000) and replaced. Only
   * with an EventSource that reports comments (`heartbeats: true`, the built-in one). */
  _startLiveness(intervalSeconds) {
    const es = this._es;
    if (!es || !es.heartbeats || this._opts.ping === false) return;
    const timeout = this._opts.sseLivenessTimeout ?? (this._opts.pingInterval ?? (intervalSeconds ?? 25) * 1000) * 2.5;
    if (!(timeout > 0)) return;
    this._livenessTimer = setInterval(() => {
      if (this._es !== es) return;
      if (Date.now() - this._lastReceived > timeout) this._abortTransport(CLOSE_CLIENT_TIMEOUT, 'no heartbeat on the SSE stream');
    }, Math.max(50, Math.floor(timeout / 5)));
  }

  /** On SSE, try WebSocket again every `wsRetryInterval` ms; once one opens, switch to it (the
   * subscriptions recover their positions over WebSocket). */
  _scheduleWsProbe(first) {
    this._stopWsProbe();
    const every = this._opts.wsRetryInterval;
    if (!this._canWs || !(every > 0)) return;
    this._wsProbeTimer = setTimeout(() => {
      this._wsProbeTimer = null;
      this._probeWs();
    }, first === undefined ? every : Math.min(first, every));
  }

  _stopWsProbe() {
    if (this._wsProbeTimer) clearTimeout(this._wsProbeTimer);
    this._wsProbeTimer = null;
    const probe = this._wsProbe;
    this._wsProbe = null;
    if (probe) {
      if (probe.timer) clearTimeout(probe.timer);
      const ws = probe.ws;
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      if (typeof ws.on === 'function') ws.on('error', () => {});
      try {
        ws.close(1000);
      } catch {
        /* closed */
      }
    }
  }

  _probeWs() {
    const es = this._es;
    if (!es || this.state !== 'connected') return;
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch {
      this._scheduleWsProbe();
      return;
    }
    const probe = { ws, timer: null };
    this._wsProbe = probe;
    const failed = () => {
      if (this._wsProbe !== probe) return;
      this._scheduleWsProbe(); // stops this probe, plans the next
    };
    probe.timer = setTimeout(failed, Math.max(this._opts.timeout, 1000));
    ws.onerror = failed;
    ws.onclose = failed;
    ws.onopen = () => {
      if (this._wsProbe !== probe || this._es !== es) return;
      this._stopWsProbe();
      this._wsFailures = 0;
      this._attempt = 0;
      this._handleClose(CLOSE_TRANSPORT_SWITCH, 'switching to WebSocket');
    };
  }

  /** §6: the server Pings an idle connection (answered by the WebSocket stack). To notice a dead
   * server, the client sends a `ping` command when nothing arrived for `ping_interval` and drops
   * the connection when its reply does not come within `timeout`. */
  _startPing(intervalSeconds) {
    const interval = this._opts.pingInterval ?? (intervalSeconds ?? 25) * 1000;
    if (!(interval > 0) || this._opts.ping === false) return;
    const ws = this._ws;
    if (!ws) return;
    this._pingTimer = setInterval(() => {
      if (this._ws !== ws || this.state !== 'connected') return;
      if (Date.now() - this._lastReceived < interval) return;
      this._call('ping', {}).catch((err) => {
        if (this._ws === ws && err.code === ErrorCodes.TIMEOUT) {
          this._abortTransport(CLOSE_CLIENT_TIMEOUT, 'no reply to ping');
        }
      });
    }, interval);
  }

  /** When the token has an `exp` and getToken is given, fetch a fresh one some seconds before the
   * expiry and send it with `refresh` ([ext] §3.3), so the server never closes with 4011. */
  _scheduleRefresh() {
    if (this._refreshTimer) clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this._getToken || !this._token || this._opts.refreshToken === false) return;
    const exp = jwtExpiry(this._token);
    if (exp === null) return;
    const remaining = exp * 1000 - Date.now();
    const delay = Math.max(0, remaining - Math.min(30000, remaining / 3));
    const ws = this._ws || this._es;
    this._refreshTimer = setTimeout(async () => {
      this._refreshTimer = null;
      if ((this._ws || this._es) !== ws || this.state !== 'connected') return;
      let token;
      try {
        token = await this._getToken();
      } catch (err) {
        this._emit('error', new FerrocastError(ErrorCodes.TOKEN, `getToken failed: ${err && err.message}`, { cause: err }));
        return; // the server will close with 4011; getToken is tried again then
      }
      if ((this._ws || this._es) !== ws || this.state !== 'connected' || typeof token !== 'string') return;
      this._token = token;
      if (this._es) {
        // SSE: the stream is opened again with the fresh token, resuming from its last id.
        this._scheduleSseReopen();
        return;
      }
      try {
        await this._call('refresh', { token });
        this._scheduleRefresh();
      } catch (err) {
        // 104: a server without `refresh`; otherwise the connection will end with 4011 and the
        // reconnect fetches yet another token.
        if (err.code !== ErrorCodes.METHOD_NOT_FOUND && err.code !== ErrorCodes.CONNECTION_CLOSED) {
          this._emit('error', err);
        }
      }
    }, delay);
  }

  // ---------------------------------------------------------------- commands

  _call(method, body) {
    return new Promise((resolve, reject) => {
      if (this.state === 'disconnected') {
        reject(new FerrocastError(ErrorCodes.DISCONNECTED, 'client is disconnected'));
        return;
      }
      if (this._es) {
        reject(this._sseError(method));
        return;
      }
      const entry = { resolve, reject, timer: null, done: false };
      const finish = (fn) => (value) => {
        if (entry.done) return;
        entry.done = true;
        if (entry.timer) clearTimeout(entry.timer);
        fn(value);
      };
      entry.resolve = finish(resolve);
      entry.reject = finish(reject);
      entry.timer = setTimeout(() => {
        if (entry.id !== undefined) this._pending.delete(entry.id);
        entry.reject(new FerrocastError(ErrorCodes.TIMEOUT, `${method}: no reply within ${this._opts.timeout} ms`));
      }, this._opts.timeout);
      const frame = { [method]: body };
      if (this.state === 'connected') this._sendCommand(frame, entry);
      else this._queue.push({ frame, entry });
    });
  }

  _sendCommand(frame, entry) {
    const id = this._nextId++;
    entry.id = id;
    this._pending.set(id, entry);
    if (!this._sendRaw({ id, ...frame })) {
      this._pending.delete(id);
      entry.reject(new FerrocastError(ErrorCodes.CONNECTION_CLOSED, 'connection closed'));
    }
  }

  _rejectQueue(err) {
    const queue = this._queue;
    this._queue = [];
    for (const item of queue) item.entry.reject(err);
  }

  // ---------------------------------------------------------------- incoming frames

  _handleMessage(msg) {
    if (msg === null || typeof msg !== 'object') return;
    if (msg.subscribe && typeof msg.channel === 'string' && !('id' in msg)) {
      this._onSubscribePush(msg.channel, msg.subscribe);
      return;
    }
    if (msg.error && typeof msg.channel === 'string' && !('id' in msg)) {
      // SSE: the server refused one of the stream's channels.
      const sub = this._subs.get(msg.channel);
      const err = new FerrocastError(msg.error.code, msg.error.message || 'subscribe refused');
      if (sub && sub.serverSide && TERMINAL_SUBSCRIBE_ERRORS.has(err.code)) {
        // Not the client's own: the server no longer subscribes it (as over WebSocket, where
        // connect.subs skips it quietly).
        const ctx = { channel: sub.channel, server: true, reason: 'not subscribed by the server any more', error: err };
        this._dropSubscription(sub, ctx, err);
      } else if (sub && sub.state !== 'subscribed') this._onSubscribeError(sub, err);
      else this._emit('error', err);
      return;
    }
    if ('id' in msg || 'result' in msg || 'error' in msg) {
      this._handleReply(msg);
      return;
    }
    if (msg.pub) {
      const sub = this._subs.get(msg.channel);
      if (sub) this._handlePublication(sub, msg.pub);
      return;
    }
    if (msg.connected) {
      this._onConnected(msg.connected);
      return;
    }
    const channel = msg.channel;
    if (msg.join || msg.leave) {
      const kind = msg.join ? 'join' : 'leave';
      const sub = this._subs.get(channel);
      if (!sub || sub.state !== 'subscribed') return;
      const ctx = { channel, info: msg[kind] };
      sub._emit(kind, ctx);
      this._emit(kind, ctx);
      return;
    }
    if (msg.unsubscribe && channel) {
      const sub = this._subs.get(channel);
      if (!sub) return;
      if (msg.unsubscribe.resubscribe === true) {
        // [ext] §5.4: the node lost track of the stream; subscribe again with recovery, which
        // returns what we missed or reports recovered: false.
        if (this.state !== 'connected') return;
        sub._setState('subscribing');
        sub._justSubscribed = false;
        sub._emit('subscribing', { channel, reason: msg.unsubscribe.reason || 'resubscribe requested' });
        if (this._es) {
          this._sseHoldId = true;
          this._scheduleSseReopen();
        } else {
          this._sendSubscribe(sub);
        }
        return;
      }
      // [ext] §5.4: the backend removed us; do not resubscribe.
      this._dropSubscription(sub, { channel, server: true, reason: 'unsubscribed by server' }, null);
    }
    // Unknown push kinds are ignored (§12).
  }

  _handleReply(msg) {
    if (msg.id === undefined || msg.id === null) {
      if (msg.error) {
        this._emit('error', new FerrocastError(msg.error.code, msg.error.message));
      }
      return;
    }
    const entry = this._pending.get(msg.id);
    if (!entry) return; // timed out earlier
    this._pending.delete(msg.id);
    if (msg.error) entry.reject(new FerrocastError(msg.error.code, msg.error.message));
    else entry.resolve(msg.result === undefined ? {} : msg.result);
  }

  // ---------------------------------------------------------------- subscriptions

  _addSubscription(sub) {
    const existing = this._subs.get(sub.channel);
    if (existing === sub) return;
    if (existing) throw new Error(`already subscribed to ${sub.channel}`);
    this._subs.set(sub.channel, sub);
    sub._setState('subscribing');
    sub._retryAttempt = 0;
    if (this._es) this._scheduleSseReopen(); // SSE: the stream is opened again with the channel
    else if (this.state === 'connected') this._sendSubscribe(sub);
  }

  _removeSubscription(sub, reason) {
    if (this._subs.get(sub.channel) !== sub) return;
    const wasActive = sub._pendingId !== null || sub.state === 'subscribed';
    if (this._es) {
      // SSE: the stream is opened again without the channel. A server-side subscription of the
      // token (`subs`) comes back then: the server subscribes every stream to those.
      this._dropSubscription(sub, { channel: sub.channel, server: false, reason }, null);
      this._scheduleSseReopen();
      return;
    }
    if (this.state === 'connected' && wasActive) {
      this._call('unsubscribe', { channel: sub.channel }).catch(() => {});
    }
    this._dropSubscription(sub, { channel: sub.channel, server: false, reason }, null);
  }

  /** Takes `sub` out of the registry, with its `unsubscribed` event. */
  _dropSubscription(sub, ctx, err) {
    if (this._subs.get(sub.channel) === sub) this._subs.delete(sub.channel);
    sub._clearRetry();
    sub._pendingId = null;
    sub._justSubscribed = false;
    sub._setState('unsubscribed');
    sub._settleReady(err || new FerrocastError(ErrorCodes.UNSUBSCRIBED, `unsubscribed from ${sub.channel}`));
    sub._emit('unsubscribed', ctx);
  }

  _sendSubscribe(sub) {
    if (this.state !== 'connected' || this._subs.get(sub.channel) !== sub) return;
    sub._clearRetry();
    const body = { channel: sub.channel };
    const recover = sub._position();
    if (recover) body.recover = recover;
    const ws = this._ws;
    const entry = {
      timer: null,
      done: false,
      resolve: (result) => {
        if (entry.done) return;
        entry.done = true;
        clearTimeout(entry.timer);
        // A reply to a subscribe that was superseded (unsubscribe, resubscribe) is stale.
        if (sub._pendingId !== entry.id) return;
        sub._pendingId = null;
        if (this._ws !== ws || this._subs.get(sub.channel) !== sub) return;
        this._onSubscribed(sub, result, !!recover);
      },
      reject: (err, fromTeardown) => {
        if (entry.done) return;
        entry.done = true;
        clearTimeout(entry.timer);
        if (sub._pendingId !== entry.id) return;
        sub._pendingId = null;
        if (fromTeardown || this._ws !== ws || this._subs.get(sub.channel) !== sub) return;
        this._onSubscribeError(sub, err);
      },
    };
    entry.timer = setTimeout(() => {
      this._pending.delete(entry.id);
      entry.reject(new FerrocastError(ErrorCodes.TIMEOUT, `subscribe ${sub.channel}: no reply`));
    }, this._opts.timeout);
    const id = this._nextId++;
    entry.id = id;
    sub._pendingId = id;
    sub._justSubscribed = false;
    sub._setState('subscribing');
    this._pending.set(id, entry);
    this._sendRaw({ id, subscribe: body });
  }

  /** A `subscribe` push: the server subscribed this connection (token `subs`, `POST
   * /api/subscribe`, recovery of `connect.subs`), or, on SSE, any channel of the stream. */
  _onSubscribePush(channel, body) {
    if (!body || typeof body !== 'object') return;
    let sub = this._subs.get(channel);
    if (!sub) {
      sub = new Subscription(this, channel, { serverSide: true });
      this._subs.set(channel, sub);
      sub._setState('subscribing');
      // Listeners attached now see the `subscribed` event and the recovered publications.
      this._emit('subscription', { channel, subscription: sub });
    } else if (this._ws && !sub.serverSide) {
      // Over WebSocket the client's own subscribes get replies, never pushes: the server has
      // taken this channel over (POST /api/subscribe); it is recovered through connect.subs now.
      sub.serverSide = true;
    }
    sub._pendingId = null; // a subscribe command in flight for it is superseded (105 ignored)
    sub._clearRetry();
    const epoch = body.epoch === undefined ? null : String(body.epoch);
    const offset = typeof body.offset === 'number' ? body.offset : 0;
    if (sub.state === 'subscribed' && sub.offset !== null && epoch === sub.epoch && (body.recovered === true || offset <= sub.offset)) {
      // Already subscribed at this position (the backend subscribed us again, or an SSE stream
      // was opened again from its last id): only what is new is delivered.
      const pubs = Array.isArray(body.publications) ? body.publications : [];
      for (const pub of pubs) {
        if (this._subs.get(channel) !== sub || sub.state !== 'subscribed') return;
        if (typeof pub.offset === 'number' && pub.offset <= sub.offset) continue;
        this._deliver(sub, pub);
      }
      if (body.recovered === true && sub.offset < offset) sub.offset = offset;
      return;
    }
    // With a position, recovery was asked for (connect.subs, the SSE last id): a push without
    // `recovered: true` is the "not recovered" signal, as for a subscribe reply.
    this._onSubscribed(sub, body, sub._position() !== null);
  }

  _onSubscribed(sub, result, wasRecovering) {
    const offset = typeof result.offset === 'number' ? result.offset : 0;
    const epoch = result.epoch === undefined ? null : String(result.epoch);
    const recovered = wasRecovering && result.recovered === true;
    sub.epoch = epoch;
    sub._retryAttempt = 0;
    sub._setState('subscribed');
    const pubs = recovered && Array.isArray(result.publications) ? result.publications : [];
    if (!recovered) sub.offset = offset;
    sub._justSubscribed = true;
    sub._emit('subscribed', {
      channel: sub.channel,
      recovered,
      wasRecovering,
      offset,
      epoch,
      publications: pubs.length,
      serverSide: sub.serverSide,
    });
    sub._settleReady(null);
    if (recovered) {
      // §11.2: exactly the offsets recover.offset+1 … result.offset, in order.
      for (const pub of pubs) {
        if (this._subs.get(sub.channel) !== sub || sub.state !== 'subscribed') return;
        if (typeof pub.offset === 'number' && pub.offset <= sub.offset) continue;
        this._deliver(sub, pub);
      }
      if (sub.offset === null || sub.offset < offset) sub.offset = offset;
    }
  }

  _onSubscribeError(sub, err) {
    if (err.code === ErrorCodes.TIMEOUT) {
      // Every command gets exactly one reply (§2.1): a missing one means a dead connection.
      this._emit('error', err);
      sub._emit('error', err);
      this._abortTransport(CLOSE_CLIENT_TIMEOUT, `no reply to subscribe ${sub.channel}`);
      return;
    }
    sub._emit('error', err);
    this._emit('error', err);
    if (TERMINAL_SUBSCRIBE_ERRORS.has(err.code)) {
      this._dropSubscription(sub, { channel: sub.channel, server: false, reason: err.message, error: err }, err);
      return;
    }
    if (err.code === ErrorCodes.ALREADY_SUBSCRIBED) {
      // The server holds a subscription we do not track: drop it and subscribe afresh.
      this._call('unsubscribe', { channel: sub.channel }).catch(() => {});
    }
    // Temporary (108 broker unavailable, 110, 100, 105 …): retry with backoff on this connection.
    const { minReconnectDelay, maxReconnectDelay } = this._opts;
    const cap = Math.min(maxReconnectDelay, minReconnectDelay * 2 ** Math.min(sub._retryAttempt, 30));
    sub._retryAttempt++;
    const ws = this._ws || this._es;
    sub._retryTimer = setTimeout(() => {
      sub._retryTimer = null;
      if ((this._ws || this._es) !== ws) return;
      if (this._es) this._scheduleSseReopen();
      else this._sendSubscribe(sub);
    }, Math.floor(Math.random() * cap));
  }

  _handlePublication(sub, pub) {
    if (sub.state !== 'subscribed') return; // recovery of the coming subscribe reply covers it
    const offset = pub.offset;
    if (typeof offset !== 'number' || sub.offset === null) {
      this._deliver(sub, pub);
      return;
    }
    if (offset === sub.offset + 1) {
      sub._justSubscribed = false;
      this._deliver(sub, pub);
      return;
    }
    if (offset <= sub.offset && sub._justSubscribed) return; // duplicate right after a reply
    // A gap (offset > last + 1) or a stream restarted under a new epoch (offset lower than
    // expected): resubscribe with recovery, which fills the gap or reports recovered: false.
    this._resync(sub);
  }

  _resync(sub) {
    if (this.state !== 'connected') return;
    sub._setState('subscribing');
    sub._justSubscribed = false;
    sub._emit('subscribing', { channel: sub.channel, reason: 'offset gap' });
    if (this._es) {
      // SSE: open the stream again from the last id before the gap, which recovers it.
      this._sseHoldId = true;
      this._scheduleSseReopen();
      return;
    }
    // Commands run in order: the unsubscribe is done before the subscribe is handled.
    this._call('unsubscribe', { channel: sub.channel }).catch(() => {});
    this._sendSubscribe(sub);
  }

  _deliver(sub, pub) {
    if (typeof pub.offset === 'number') sub.offset = pub.offset;
    const ctx = { channel: sub.channel, data: pub.data, offset: pub.offset, info: pub.info };
    sub._emit('publication', ctx);
    this._emit('publication', ctx);
  }
}

export default Client;
