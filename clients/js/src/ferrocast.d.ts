// Type declarations of ferrocast-client (src/ferrocast.js).

/** Client-side codes (< 100) and the server's reply error codes (>= 100, docs/protocol.md §8). */
export declare const ErrorCodes: {
  readonly TIMEOUT: 1;
  readonly DISCONNECTED: 2;
  readonly CONNECTION_CLOSED: 3;
  readonly UNSUBSCRIBED: 4;
  readonly TOKEN: 5;
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
}

export type ClientState = 'disconnected' | 'connecting' | 'connected';
export type SubscriptionState = 'unsubscribed' | 'subscribing' | 'subscribed';

export interface ConnectedContext {
  client: string;
  user: string;
  node: string;
  ping_interval: number;
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

export interface ClientEvents {
  state: { state: ClientState; previous: ClientState };
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

export default Client;
