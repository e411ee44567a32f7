// Type declarations of ferrocast-client (src/ferrocast.js).

/** Client-side codes (< 100) and the server's reply error codes (>= 100, docs/protocol.md §8). */
export declare const ErrorCodes: {
  readonly TIMEOUT: 1;
  readonly DISCONNECTED: 2;
  readonly CONNECTION_CLOSED: 3;
  readonly UNSUBSCRIBED: 4;
  readonly TOKEN: 5;
  /** The command needs WebSocket: the client is on the SSE transport (receive only). */
  readonly TRANSPORT: 6;
  readonly INTERNAL: 100;
  readonly UNAUTHORIZED: 101;
  readonly UNKNOWN_CHANNEL: 102;
  readonly PERMISSION_DENIED: 103;
  readonly METHOD_NOT_FOUND: 104;
  readonly ALREADY_SUBSCRIBED: 105;
  readonly LIMIT_EXCEEDED: 106;
  readonly BAD_REQUEST: 107;
  readonly NOT_AVAILABLE: 108;
  readonly TOKEN_EXPIRED: 109;
  readonly TOO_MANY_REQUESTS: 110;
  readonly UNRECOVERABLE_POSITION: 112;
};

/** An error answered by the server (`code` >= 100) or raised by the client (`code` < 100). */
export declare class FerrocastError extends Error {
  constructor(code: number, message: string, extra?: Record<string, unknown>);
  readonly name: 'FerrocastError';
  readonly code: number;
  /** For DISCONNECTED / CONNECTION_CLOSED: the close code that ended the connection. */
  readonly closeCode?: number;
  readonly cause?: unknown;
  /** For errors of a refused SSE stream: the HTTP status (401, 403, 503). */
  readonly status?: number;
}

/** Anything constructible like the browser's WebSocket (the `ws` package qualifies). */
export interface WebSocketConstructor {
  new (url: string): WebSocketLike;
}

export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onerror: ((event: any) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** Anything constructible like the browser's EventSource. `heartbeats: true` on an instance
 * means it dispatches `heartbeat` events for comment lines (the built-in FetchEventSource); an
 * `error` event may carry `status` and `body` of a refused stream. */
export interface EventSourceConstructor {
  new (url: string, init?: { withCredentials?: boolean }): EventSourceLike;
}

export interface EventSourceLike {
  readonly readyState: number;
  readonly url: string;
  readonly lastEventId?: string;
  readonly heartbeats?: boolean;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  addEventListener?(type: string, listener: (event: any) => void): void;
  close(): void;
}

export type Transport = 'websocket' | 'sse';

export interface ClientOptions {
  /** A JWT; sent in the `connect` command. */
  token?: string;
  /** Gives a fresh JWT: called on the first connect when there is no token, when the server says
   * the token expired (error 109 / close 4011), and shortly before the token's `exp` (the fresh
   * token is then sent with the `refresh` command, so the connection does not drop). */
  getToken?: () => Promise<string> | string;
  /** The WebSocket constructor; defaults to globalThis.WebSocket (browsers, Node >= 22). */
  WebSocket?: WebSocketConstructor;
  /** ms; reconnect delays are uniform in [0, min(max, min * 2^attempt)] (full jitter). Default 200. */
  minReconnectDelay?: number;
  /** ms; default 20000. */
  maxReconnectDelay?: number;
  /** ms to wait for each command's reply (queued commands included), and for a connection attempt. Default 5000. */
  timeout?: number;
  /** ms of silence from the server after which a `ping` command checks the connection. Default: the
   * server's `ping_interval` from `connected` (25 s). */
  pingInterval?: number;
  /** false: never send `ping` commands. */
  ping?: boolean;
  /** false: do not refresh the token before it expires (wait for close 4011 instead). */
  refreshToken?: boolean;
  /** true: without token, send no `connect` command and let the server's connect proxy authenticate
   * the connection from its cookies (cookie sessions). Default false: without token, the client
   * connects anonymously (`connect` with no token). */
  connectProxy?: boolean;
  /** Transports the client may use, default `['websocket', 'sse']`: WebSocket first, SSE as the
   * fallback after `fallbackAfter` WebSocket attempts in a row that fail before opening.
   * `['sse']`: SSE only (receive only). `['websocket']`: never SSE. */
  transports?: Transport[];
  /** The SSE endpoint. Default: derived from the WebSocket URL (ws → http, wss → https, a path
   * ending in /ws ends in /sse instead, otherwise /sse is appended). */
  sseUrl?: string;
  /** The EventSource implementation. Default: the built-in FetchEventSource (over fetch: sees
   * heartbeats and HTTP status codes); `window.EventSource` works too (no heartbeat liveness,
   * the status of a refusal is asked once more with fetch). */
  EventSource?: EventSourceConstructor;
  /** WebSocket attempts in a row that fail before `open` (error, close or timeout) after which
   * the client uses SSE. Default 2. */
  fallbackAfter?: number;
  /** ms between WebSocket tries while on SSE (the first 1 s after the SSE stream connected);
   * once one opens the client switches back (close code 3001). 0: never. Default 60000. */
  wsRetryInterval?: number;
  /** ms without data or heartbeat after which an SSE stream is treated as dead. Default 2.5 ×
   * ping interval (only with an EventSource that reports heartbeats). */
  sseLivenessTimeout?: number;
}

export type ClientState = 'disconnected' | 'connecting' | 'connected';
export type SubscriptionState = 'unsubscribed' | 'subscribing' | 'subscribed';

export interface ConnectedContext {
  client: string;
  user: string;
  node: string;
  ping_interval: number;
  /** The transport of this connection. */
  transport: Transport;
  [key: string]: unknown;
}

export interface DisconnectedContext {
  /** The close code (docs/protocol.md §9); 1000 for disconnect(), 1006 for network loss, 3000
   * when the client gave up on an unresponsive connection. */
  code: number;
  reason: string;
  /** true: the client reconnects by itself. */
  reconnect: boolean;
}

export interface PublicationContext<T = any> {
  channel: string;
  data: T;
  offset: number;
  /** `{user}` of the publishing client; absent for publications from the server API. */
  info?: { user: string; [key: string]: unknown };
}

export interface JoinLeaveContext {
  channel: string;
  info: { user: string; client?: string; [key: string]: unknown };
}

export interface SubscribedContext {
  channel: string;
  /** true: every missed publication was recovered (and is delivered right after this event).
   * false together with wasRecovering: publications were lost; reload the state. */
  recovered: boolean;
  /** true when the subscribe asked to recover from a known position (resubscription). */
  wasRecovering: boolean;
  offset: number;
  epoch: string;
  /** How many recovered publications follow. */
  publications: number;
  /** true: a server-side subscription (announced by the server, not asked for by the client). */
  serverSide: boolean;
}

export interface UnsubscribedContext {
  channel: string;
  /** true: removed by the backend (`POST /api/unsubscribe`). */
  server: boolean;
  reason: string;
  /** Set when the server refused the subscription for good (e.g. 103). */
  error?: FerrocastError;
}

export interface SubscribingContext {
  channel: string;
  reason: string;
}

export interface StreamPosition {
  offset: number;
  epoch: string;
}

export interface HistoryPublication<T = any> {
  offset: number;
  data: T;
  info?: { user: string; [key: string]: unknown };
}

export interface SubscriptionCreatedContext {
  channel: string;
  subscription: Subscription;
}

export interface ClientEvents {
  state: { state: ClientState; previous: ClientState };
  /** A server-side subscription new to the client (token `subs`, `POST /api/subscribe`):
   * emitted before its `subscribed` event, so listeners attached here see everything. */
  subscription: SubscriptionCreatedContext;
  connected: ConnectedContext;
  disconnected: DisconnectedContext;
  publication: PublicationContext;
  join: JoinLeaveContext;
  leave: JoinLeaveContext;
  error: FerrocastError | Error;
}

export interface SubscriptionEvents {
  publication: PublicationContext;
  join: JoinLeaveContext;
  leave: JoinLeaveContext;
  subscribed: SubscribedContext;
  subscribing: SubscribingContext;
  unsubscribed: UnsubscribedContext;
  error: FerrocastError;
}

declare class Emitter<Events> {
  on<E extends keyof Events>(event: E, listener: (arg: Events[E]) => void): this;
  once<E extends keyof Events>(event: E, listener: (arg: Events[E]) => void): this;
  /** Without listener: removes every listener of the event; without arguments: all listeners. */
  off<E extends keyof Events>(event?: E, listener?: (arg: Events[E]) => void): this;
  listenerCount(event: keyof Events): number;
}

export declare class Subscription extends Emitter<SubscriptionEvents> {
  readonly channel: string;
  readonly state: SubscriptionState;
  /** Offset of the last publication processed; null before the first subscribe reply. */
  readonly offset: number | null;
  readonly epoch: string | null;
  /** true: subscribed by the server (recovered on reconnect through `connect.subs`). */
  readonly serverSide: boolean;
  /** Resolves when subscribed. Rejects (FerrocastError) when the server refuses the subscription,
   * when it is unsubscribed, when the client ends in `disconnected`, or after `timeoutMs`. */
  ready(timeoutMs?: number): Promise<this>;
  /** Subscribes again after unsubscribe() or a server-side unsubscribe. */
  subscribe(): this;
  unsubscribe(): void;
}

export interface SubscribeOptions {
  /** Resubscribe with recovery after reconnects. Default true. */
  recover?: boolean;
  /** Start by recovering from this position (e.g. one rendered by the backend with the page). */
  since?: StreamPosition;
}

export interface HistoryOptions {
  limit?: number;
  since?: StreamPosition;
}

export declare class Client extends Emitter<ClientEvents> {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  readonly state: ClientState;
  /** The transport of the current (or last attempted) connection; null before the first. */
  readonly transport: Transport | null;
  /** The `connected` push of the current connection; null when not connected. */
  readonly info: ConnectedContext | null;
  connect(): this;
  disconnect(): this;
  /** Creates the subscription, or returns the existing one for this channel. */
  subscribe(channel: string, options?: SubscribeOptions): Subscription;
  getSubscription(channel: string): Subscription | null;
  subscriptions(): Map<string, Subscription>;
  unsubscribe(channel: string): void;
  publish(channel: string, data: unknown): Promise<StreamPosition>;
  presence(channel: string): Promise<{ clients: Record<string, { user: string; info?: unknown }> }>;
  presenceStats(channel: string): Promise<{ clients: number; users: number }>;
  history<T = any>(
    channel: string,
    options?: HistoryOptions,
  ): Promise<{ publications: HistoryPublication<T>[]; offset: number; epoch: string }>;
  ping(): Promise<Record<string, never>>;
  /** Uses `token` for the next connections and, when connected, sends it with `refresh`. */
  setToken(token: string): Promise<{ expires_at: number | null } | null>;
}

/** ws → http, wss → https, /ws → /sse (else /sse appended); the query string is kept. */
export declare function deriveSseUrl(wsUrl: string): string;

/** An EventSource over fetch with a streamed body (the default for the SSE transport). */
export declare class FetchEventSource implements EventSourceLike {
  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSED: 2;
  constructor(url: string, init?: { withCredentials?: boolean; fetch?: typeof fetch });
  readonly url: string;
  readonly withCredentials: boolean;
  readonly readyState: number;
  readonly lastEventId: string;
  readonly heartbeats: true;
  onopen: ((event: { type: 'open' }) => void) | null;
  onmessage: ((event: { type: string; data: string; lastEventId: string }) => void) | null;
  /** `status` 0: the stream broke (it reconnects); otherwise the HTTP status of a refusal (closed). */
  onerror: ((event: { type: 'error'; status: number; body?: unknown }) => void) | null;
  addEventListener(type: string, listener: (event: any) => void): void;
  removeEventListener(type: string, listener: (event: any) => void): void;
  close(): void;
}

export default Client;
