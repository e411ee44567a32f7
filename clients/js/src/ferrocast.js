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
    if (typeof this._WebSocket !== 'function') {
      throw new TypeError('no WebSocket: pass the constructor as options.WebSocket');
    }
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

    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (err) {
      this._emit('error', err);
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
      if (this._opts.connectProxy && !this._token) return; // the server authenticates by cookie
      const body = this._token ? { token: this._token } : {};
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
    this._connectTimer = this._pingTimer = this._refreshTimer = null;
  }

  _handleClose(code, reason) {
    const wasConnected = this.state === 'connected';
    this._teardownTransport(code, reason);
    let reconnect = !TERMINAL_CLOSE_CODES.has(code);
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
    const delay = Math.floor(Math.random() * cap);
    this._attempt++;
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      if (this.state === 'connecting' && !this._ws) this._openTransport();
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
    if (this.state === 'connected') return;
    if (this._connectTimer) clearTimeout(this._connectTimer);
    this._connectTimer = null;
    this._attempt = 0;
    this.info = info;
    this._setState('connected');
    this._emit('connected', info);
    this._startPing(info.ping_interval);
    this._scheduleRefresh();
    // Subscriptions first (their recovery keeps offsets in order), then queued commands.
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    const queue = this._queue;
    this._queue = [];
    for (const item of queue) {
      if (item.entry.done) continue;
      this._sendCommand(item.frame, item.entry);
    }
  }

  /** §6: the server Pings an idle connection (answered by the WebSocket stack). To notice a dead
   * server, the client sends a `ping` command when nothing arrived for `ping_interval` and drops
   * the connection when its reply does not come within `timeout`. */
  _startPing(intervalSeconds) {
    const interval = this._opts.pingInterval ?? (intervalSeconds ?? 25) * 1000;
    if (!(interval > 0) || this._opts.ping === false) return;
    const ws = this._ws;
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
    const ws = this._ws;
    this._refreshTimer = setTimeout(async () => {
      this._refreshTimer = null;
      if (this._ws !== ws || this.state !== 'connected') return;
      let token;
      try {
        token = await this._getToken();
      } catch (err) {
        this._emit('error', new FerrocastError(ErrorCodes.TOKEN, `getToken failed: ${err && err.message}`, { cause: err }));
        return; // the server will close with 4011; getToken is tried again then
      }
      if (this._ws !== ws || this.state !== 'connected' || typeof token !== 'string') return;
      this._token = token;
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
        this._sendSubscribe(sub);
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
    if (this.state === 'connected') this._sendSubscribe(sub);
  }

  _removeSubscription(sub, reason) {
    if (this._subs.get(sub.channel) !== sub) return;
    const wasActive = sub._pendingId !== null || sub.state === 'subscribed';
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
    const ws = this._ws;
    sub._retryTimer = setTimeout(() => {
      sub._retryTimer = null;
      if (this._ws === ws) this._sendSubscribe(sub);
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
