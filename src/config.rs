//! Typed configuration: defaults in one place, one TOML file, `FERROCAST_<SECTION>__<KEY>`
//! environment overrides, `--set section.key=value` CLI overrides, and a validation step whose
//! errors name the key and the reason (the pingora way: plain structs, checked once at start).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A config error that names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// A duration written the human way in TOML ("5s", "24h", "250ms").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => humantime::parse_duration(s.trim())
                .map(HumanDuration)
                .map_err(|e| serde::de::Error::custom(format!("bad duration {s:?}: {e}"))),
            Raw::Seconds(n) => Ok(HumanDuration(Duration::from_secs(n))),
        }
    }
}

fn secs(n: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(n))
}

/// The shape of a `broker.urls` entry: `redis://[user[:password]@]host[:port][/db]`. The Redis
/// broker parses it fully at start (`broker::redis::parse_url`); config stays free of the Redis
/// client so every layer can use it.
fn check_redis_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or("must start with redis://")?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || host_port.starts_with('[') => (h, Some(p)),
        _ => (host_port, None),
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if let Some(p) = port {
        p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?;
    }
    Ok(())
}

/// Secrets that appear in the defaults, the sample configs and the docs.
pub const SAMPLE_SECRETS: [&str; 5] = [
    "change-me",
    "demo-token-secret",
    "demo-api-key",
    "conformance-only-secret",
    "conformance-only-api-key",
];

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: ListenConfig,
    pub node: NodeConfig,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub broker: BrokerConfig,
    pub limits: LimitsConfig,
    pub client: ClientConfig,
    pub shutdown: ShutdownConfig,
    pub conformance: ConformanceConfig,
    pub webhooks: WebhooksConfig,
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    pub pusher: PusherConfig,
}

/// The Pusher Channels protocol 7 on `/app/{key}` and the Pusher HTTP API on `/apps/{id}/…`
/// (docs/pusher.md). Off while `apps` is empty.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PusherConfig {
    pub apps: Vec<PusherAppConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherAppConfig {
    /// `[A-Za-z0-9_.-]`, at most 64; the app's channels live in namespace `pusher-<app_id>`.
    pub app_id: String,
    /// The public key clients connect with (`/app/<key>`).
    pub key: String,
    /// Signs channel authorizations, sign-ins and HTTP API requests.
    pub secret: String,
    /// Clients may send `client-*` events on private and presence channels.
    pub enable_client_messages: bool,
    /// Connections of this app per node; 0 = no limit (past it: close 4100).
    pub max_connections: usize,
    /// Events kept per channel (ferrocast recovery for ferrocast clients); 0 = none.
    pub history_size: usize,
    /// Seconds of silence after which pusher-js pings (`activity_timeout` in
    /// `pusher:connection_established`).
    pub activity_timeout: u64,
    /// Where this app's Pusher-format webhooks are POSTed (an http:// URL); empty = none.
    pub webhook_url: String,
    /// Pusher webhook names to send (`PUSHER_WEBHOOK_EVENTS`); the four channel-existence and
    /// presence events by default, `client_event` only when listed.
    #[serde(deserialize_with = "names_or_list")]
    pub webhook_events: Vec<String>,
    /// channel_vacated waits this long after the last subscriber left, fleet-wide (a
    /// re-subscribe cancels it). Pusher sends it without delay: 0s by default.
    pub webhook_vacate_delay: HumanDuration,
}

/// Pusher webhook names (`pusher.apps[].webhook_events`).
pub const PUSHER_WEBHOOK_EVENTS: [&str; 5] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
];

impl PusherAppConfig {
    /// Whether this app sends Pusher webhooks of `name`.
    pub fn wants_webhook(&self, name: &str) -> bool {
        !self.webhook_url.is_empty() && self.webhook_events.iter().any(|e| e == name)
    }
}

impl Default for PusherAppConfig {
    fn default() -> Self {
        Self {
            app_id: String::new(),
            key: String::new(),
            secret: String::new(),
            enable_client_messages: false,
            max_connections: 0,
            history_size: 0,
            activity_timeout: 120,
            webhook_url: String::new(),
            webhook_events: PUSHER_WEBHOOK_EVENTS[..4]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            webhook_vacate_delay: secs(0),
        }
    }
}

impl Config {
    /// Checks `[[pusher.apps]]` and adds each app's namespaces (`pusher-<id>`, `pusher-<id>@cache`,
    /// `pusher-<id>@user`): ferrocast clients may reach them only through their token's
    /// `channels` (private), and ferrocast presence and join/leave are off (the Pusher adapter
    /// does Pusher presence itself).
    fn add_pusher_namespaces(&mut self) -> Result<(), ConfigError> {
        let mut ids = std::collections::BTreeSet::new();
        let mut keys = std::collections::BTreeSet::new();
        for (i, app) in self.pusher.apps.iter().enumerate() {
            let k = |f: &str| format!("pusher.apps[{i}].{f}");
            if app.app_id.is_empty()
                || app.app_id.len() > 64
                || !app
                    .app_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                return Err(invalid(
                    &k("app_id"),
                    "1 to 64 characters of [A-Za-z0-9_.-]",
                ));
            }
            if app.key.is_empty()
                || app.key.len() > 128
                || !app
                    .key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                return Err(invalid(&k("key"), "1 to 128 characters of [A-Za-z0-9_.-]"));
            }
            if app.secret.is_empty() {
                return Err(invalid(&k("secret"), "must not be empty"));
            }
            if !ids.insert(app.app_id.clone()) {
                return Err(invalid(&k("app_id"), "used by another app"));
            }
            if !keys.insert(app.key.clone()) {
                return Err(invalid(&k("key"), "used by another app"));
            }
            if app.activity_timeout == 0 || app.activity_timeout > 3600 {
                return Err(invalid(&k("activity_timeout"), "1 to 3600 seconds"));
            }
            if app.history_size > 1_000_000 {
                return Err(invalid(&k("history_size"), "at most 1000000"));
            }
            for e in &app.webhook_events {
                if !PUSHER_WEBHOOK_EVENTS.contains(&e.as_str()) {
                    return Err(invalid(
                        &k("webhook_events"),
                        format!(
                            "unknown event {e:?} (one of {})",
                            PUSHER_WEBHOOK_EVENTS.join(", ")
                        ),
                    ));
                }
            }
            if !app.webhook_url.is_empty() && !http_url(&app.webhook_url) {
                return Err(invalid(
                    &k("webhook_url"),
                    "must be an http:// URL (terminate TLS in a proxy next to the node)",
                ));
            }
            if app.webhook_vacate_delay.0 > Duration::from_secs(3600) {
                return Err(invalid(&k("webhook_vacate_delay"), "at most 1h"));
            }
            let base = NamespaceConfig {
                publish: false,
                presence: false,
                join_leave: false,
                history_size: app.history_size,
                history_ttl: secs(if app.history_size > 0 { 600 } else { 0 }),
                anonymous: false,
                private: true,
            };
            let cache = NamespaceConfig {
                history_size: app.history_size.max(1),
                // Pusher keeps a cache channel's last event for 30 minutes.
                history_ttl: secs(1800),
                ..base.clone()
            };
            for (name, ns) in [
                (format!("pusher-{}", app.app_id), base.clone()),
                (format!("pusher-{}@cache", app.app_id), cache),
                (format!("pusher-{}@user", app.app_id), base),
            ] {
                if self.namespaces.contains_key(&name) {
                    return Err(invalid(
                        &format!("namespaces.{name}"),
                        "reserved for the Pusher app of that id",
                    ));
                }
                self.namespaces.insert(name, ns);
            }
        }
        Ok(())
    }
}

/// Webhook event names (`webhooks.events`).
pub const WEBHOOK_EVENTS: [&str; 5] = [
    "channel_occupied",
    "channel_vacated",
    "user_online",
    "user_offline",
    "client_publish",
];

/// Webhooks: lifecycle events decided fleet-wide through the broker, POSTed signed and batched
/// to `url` (docs/webhooks.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where events are POSTed (an http:// URL); empty = webhooks off.
    pub url: String,
    /// HMAC-SHA256 key of `X-Ferrocast-Signature`.
    pub secret: String,
    /// Event names to send; the four lifecycle events by default, `client_publish` only when
    /// listed. A comma-separated string works too (for environment overrides).
    #[serde(deserialize_with = "names_or_list")]
    pub events: Vec<String>,
    /// channel_vacated waits this long after the last subscriber left (a re-join cancels it).
    pub vacate_delay: HumanDuration,
    /// user_offline waits this long after the user's last connection closed.
    pub offline_delay: HumanDuration,
    /// Events per request at most.
    pub batch_max: usize,
    /// How long a request waits for more events before it goes out.
    pub batch_wait: HumanDuration,
    /// Events waiting to be sent at most; past it new events are dropped (and counted).
    pub queue_size: usize,
    /// Per request.
    pub timeout: HumanDuration,
    /// Retries of a failed request (with exponential backoff) before its events are dropped.
    pub max_retries: u32,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            secret: String::new(),
            events: WEBHOOK_EVENTS[..4].iter().map(|s| s.to_string()).collect(),
            vacate_delay: secs(3),
            offline_delay: secs(3),
            batch_max: 100,
            batch_wait: HumanDuration(Duration::from_millis(100)),
            queue_size: 10_000,
            timeout: secs(5),
            max_retries: 8,
        }
    }
}

impl WebhooksConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Whether `name` is one of the events to send (and webhooks are on).
    pub fn wants(&self, name: &str) -> bool {
        self.enabled() && self.events.iter().any(|e| e == name)
    }

    /// `senders`: whether a webhook sender runs at all (this section's `url`, or a Pusher app's
    /// `webhook_url`, whose senders use this section's batching and retry settings).
    fn validate(&self, senders: bool) -> Result<(), ConfigError> {
        for e in &self.events {
            if !WEBHOOK_EVENTS.contains(&e.as_str()) {
                return Err(invalid(
                    "webhooks.events",
                    format!("unknown event {e:?} (one of {})", WEBHOOK_EVENTS.join(", ")),
                ));
            }
        }
        if self.enabled() && !http_url(&self.url) {
            return Err(invalid(
                "webhooks.url",
                "must be an http:// URL (terminate TLS in a proxy next to the node)",
            ));
        }
        if self.enabled() && self.secret.is_empty() {
            return Err(invalid(
                "webhooks.secret",
                "must not be empty when webhooks.url is set",
            ));
        }
        if !senders {
            return Ok(());
        }
        if !(1..=10_000).contains(&self.batch_max) {
            return Err(invalid("webhooks.batch_max", "1 to 10000"));
        }
        if self.queue_size < self.batch_max || self.queue_size > 10_000_000 {
            return Err(invalid(
                "webhooks.queue_size",
                "at least webhooks.batch_max and at most 10000000",
            ));
        }
        if self.batch_wait.0 > Duration::from_secs(60) {
            return Err(invalid("webhooks.batch_wait", "at most 60s"));
        }
        if self.timeout.0.is_zero() || self.timeout.0 > Duration::from_secs(300) {
            return Err(invalid("webhooks.timeout", "positive, at most 300s"));
        }
        for (key, d) in [
            ("webhooks.vacate_delay", self.vacate_delay),
            ("webhooks.offline_delay", self.offline_delay),
        ] {
            if d.0 > Duration::from_secs(3600) {
                return Err(invalid(key, "at most 1h"));
            }
        }
        if self.max_retries > 100 {
            return Err(invalid("webhooks.max_retries", "at most 100"));
        }
        Ok(())
    }
}

/// An http:// URL with a host (webhook destinations).
fn http_url(url: &str) -> bool {
    url.starts_with("http://")
        && url
            .parse::<hyper::Uri>()
            .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()))
}

/// A list of names, or one string of comma-separated names.
fn names_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::List(l) => l,
        Raw::Text(t) => t
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    })
}

/// The RFC 6455 conformance echo route (for the Autobahn|Testsuite fuzzing client).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ConformanceConfig {
    /// Path of the echo route, e.g. "/echo"; empty = off. It runs through the same accept,
    /// upgrade, codec, connection loop and outbound queue as `/ws`, needs no token, and echoes
    /// every text/binary message with its opcode.
    pub echo_path: String,
    /// Allow the echo route on a non-loopback `listen.public` (refused otherwise).
    pub allow_public: bool,
    /// Inbound frames per second per echo connection; 0 = no limit (Autobahn's case 9 sends
    /// 16,384 frames as fast as it can).
    pub frames_per_second: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// WebSocket (`/ws`) and server API (`/api/*`).
    pub public: String,
    /// Metrics and health checks; keep it off the public interface.
    pub admin: String,
    /// Shard threads; 0 = one per CPU.
    pub shards: usize,
    /// Listen backlog per shard listener (the kernel caps it at net.core.somaxconn).
    pub backlog: u32,
    /// Pin shard i to CPU i. Only for hosts dedicated to ferrocast: with other busy processes
    /// on the machine a pinned shard can't move off a contended CPU (seconds-long tail stalls
    /// were measured that way, docs/benchmarks.md).
    pub pin_shards: bool,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            public: "0.0.0.0:8080".into(),
            admin: "127.0.0.1:9090".into(),
            shards: 0,
            backlog: 4096,
            pin_shards: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name shown in `connected` and `/api/info`; empty = hostname-pid.
    pub name: String,
    /// Sockets this node is expected to hold; a warning is logged at start when the file limit
    /// allows fewer. 0 = no target.
    pub target_sockets: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub token_secret: String,
    pub timeout: HumanDuration,
    pub proxy_url: String,
    pub proxy_headers: Vec<String>,
    pub proxy_timeout: HumanDuration,
    /// Subscribe proxy: asked about channels the static rules refuse (docs/protocol.md §3.5);
    /// empty = off. Uses `proxy_timeout`.
    pub subscribe_proxy_url: String,
    /// Publish proxy: approves or rewrites every client publication; empty = off.
    pub publish_proxy_url: String,
    /// PEM file with an RSA public key: RS256 tokens are accepted too.
    pub rsa_public_key: String,
    /// PEM file with an EC public key: ES256 tokens are accepted too.
    pub ecdsa_public_key: String,
    /// Allow a `connect` without any token, as an anonymous user.
    pub allow_anonymous: bool,
    /// `Origin` values allowed to open `/ws` (e.g. "https://library.example.org"); empty = any.
    /// Must be set when browsers authenticate with cookies (`proxy_url`): otherwise any site
    /// can open a socket in a logged-in user's name (cross-site WebSocket hijacking).
    pub allowed_origins: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_secret: "change-me".into(),
            timeout: secs(5),
            proxy_url: String::new(),
            proxy_headers: Vec::new(),
            proxy_timeout: secs(5),
            subscribe_proxy_url: String::new(),
            publish_proxy_url: String::new(),
            rsa_public_key: String::new(),
            ecdsa_public_key: String::new(),
            allow_anonymous: false,
            allowed_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub key: String,
    pub max_body_size: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            key: "change-me".into(),
            max_body_size: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `memory` (one node), `redis` (one Redis server) or `redis-cluster` (seed nodes in `urls`).
    pub kind: String,
    /// `redis://[user:password@]host:port` — the server, or the cluster's seed nodes.
    pub urls: Vec<String>,
    /// Prefix of every Redis key and shard channel, so fleets can share a Redis.
    pub prefix: String,
    /// A Redis command that takes longer fails (API publishes answer 503 / error 108).
    pub command_timeout: HumanDuration,
    /// How often the node compares each subscribed channel's stream top with the last offset it
    /// delivered, to repair gaps (lost pub/sub messages, failover) from history.
    pub position_check_interval: HumanDuration,
    /// Redis brokers: a publication is acknowledged only once this many replicas of the
    /// channel's master have it (`WAIT replicas_ack <command_timeout / 2>` after the publish
    /// script); fewer in time → the publish fails (error 108 / HTTP 503), though it may still
    /// be delivered. 0 (the default): acknowledged once the master has it; a failover can then
    /// lose it, and the stream's epoch changes (protocol §11.4).
    pub replicas_ack: u32,
}

/// Most replicas `broker.replicas_ack` may ask for (Redis Cluster replicas per master in
/// practice are 1–2).
pub const MAX_REPLICAS_ACK: u32 = 16;

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: "memory".into(),
            urls: Vec::new(),
            prefix: "ferrocast".into(),
            command_timeout: secs(2),
            position_check_interval: secs(5),
            replicas_ack: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_message_size: usize,
    pub outbound_queue_bytes: usize,
    pub max_connections: usize,
    pub max_subscriptions: usize,
    pub commands_per_second: u32,
    pub handshake_timeout: HumanDuration,
    /// Handshakes in progress per shard; more are refused with 503 instead of queueing.
    pub max_pending_handshakes: usize,
    /// Inbound frames per second per connection (data, control and empty continuation frames
    /// alike); past it the connection is closed with 4006.
    pub frames_per_second: u32,
    /// Largest HTTP request head (request line + headers) accepted on the public listener.
    pub max_header_bytes: usize,
    /// Open connections per source IP (handshakes included); 0 = no limit. Behind a proxy every
    /// client shares the proxy's address: leave it 0 there.
    pub max_connections_per_ip: usize,
    /// New connections per second per source IP; 0 = no limit.
    pub handshakes_per_ip_per_second: u32,
    /// Publications one history or recovery reply may carry; a client further behind gets the
    /// newest ones with `"truncated": true` (recover) or pages with `since` (history).
    pub max_history_reply: usize,
    /// Bytes one history or recovery reply may carry (same rule as `max_history_reply`).
    pub max_history_reply_bytes: usize,
    /// Deliveries waiting in the shards' inboxes (all shards) past which new publications are
    /// refused with 503 / error 108 until the shards catch up.
    pub max_inbox_backlog: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_size: 65536,
            outbound_queue_bytes: 1 << 20,
            max_connections: 0,
            max_subscriptions: 256,
            commands_per_second: 200,
            handshake_timeout: secs(10),
            max_pending_handshakes: 4096,
            frames_per_second: 400,
            max_header_bytes: 16384,
            max_connections_per_ip: 0,
            handshakes_per_ip_per_second: 0,
            max_history_reply: 1000,
            max_history_reply_bytes: 512 * 1024,
            max_inbox_backlog: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    pub ping_interval: HumanDuration,
    pub pong_timeout: HumanDuration,
    /// How long presence entries live unless the node holding the connection refreshes them.
    pub presence_ttl: HumanDuration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            ping_interval: secs(25),
            pong_timeout: secs(10),
            presence_ttl: secs(60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Sockets are closed with 4010 in batches spread over this many seconds.
    pub drain_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_seconds: 5 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Clients may publish.
    pub publish: bool,
    pub presence: bool,
    pub join_leave: bool,
    pub history_size: usize,
    pub history_ttl: HumanDuration,
    /// Anonymous users may subscribe.
    pub anonymous: bool,
    /// Only channels listed in the token's (or connect proxy's) `channels` may be subscribed.
    pub private: bool,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        Self {
            publish: false,
            presence: false,
            join_leave: false,
            history_size: 0,
            history_ttl: secs(0),
            anonymous: false,
            private: false,
        }
    }
}

impl Config {
    /// Loads `path` (if any), applies environment and CLI overrides, and validates.
    pub fn load(path: Option<&str>, sets: &[String]) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_string(),
                source,
            })?,
            None => String::new(),
        };
        let mut value: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError::Parse(format!("{}: {e}", path.unwrap_or("config")))
        })?;
        for (k, v) in std::env::vars() {
            if let Some(rest) = k.strip_prefix("FERROCAST_") {
                let keys: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
                if keys.len() >= 2 {
                    set_path(&mut value, &keys, &v);
                }
            }
        }
        for s in sets {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| invalid(s, "expected section.key=value"))?;
            let keys: Vec<String> = k.split('.').map(|s| s.trim().to_string()).collect();
            set_path(&mut value, &keys, v);
        }
        let mut cfg: Config = Config::deserialize(toml::Value::Table(value))
            .map_err(|e| ConfigError::Parse(e.to_string().trim().to_string()))?;
        cfg.add_pusher_namespaces()?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen
            .public
            .parse::<SocketAddr>()
            .map_err(|e| invalid("listen.public", e.to_string()))?;
        self.listen
            .admin
            .parse::<SocketAddr>()
            .map_err(|e| invalid("listen.admin", e.to_string()))?;
        if self.listen.shards > 1024 {
            return Err(invalid("listen.shards", "at most 1024"));
        }
        if self.auth.token_secret.is_empty()
            && self.auth.rsa_public_key.is_empty()
            && self.auth.ecdsa_public_key.is_empty()
        {
            return Err(invalid("auth.token_secret", "must not be empty"));
        }
        if self.auth.timeout.0.is_zero() {
            return Err(invalid("auth.timeout", "must be positive"));
        }
        for (key, url) in [
            ("auth.proxy_url", &self.auth.proxy_url),
            ("auth.subscribe_proxy_url", &self.auth.subscribe_proxy_url),
            ("auth.publish_proxy_url", &self.auth.publish_proxy_url),
        ] {
            if !url.is_empty() && !url.starts_with("http://") {
                return Err(invalid(key, "must be an http:// URL"));
            }
        }
        if self.api.key.is_empty() {
            return Err(invalid("api.key", "must not be empty"));
        }
        match self.broker.kind.as_str() {
            "memory" => {}
            "redis" | "redis-cluster" => {
                if self.broker.urls.is_empty() {
                    return Err(invalid("broker.urls", "needs at least one redis:// URL"));
                }
                for url in &self.broker.urls {
                    if let Err(e) = check_redis_url(url) {
                        return Err(invalid("broker.urls", format!("{url:?}: {e}")));
                    }
                }
                if self.broker.kind == "redis" && self.broker.urls.len() != 1 {
                    return Err(invalid(
                        "broker.urls",
                        "kind \"redis\" takes exactly one URL (use \"redis-cluster\" for seeds)",
                    ));
                }
                if self.broker.prefix.is_empty()
                    || !self
                        .broker
                        .prefix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
                {
                    return Err(invalid("broker.prefix", "letters, digits, _ - . only"));
                }
                if self.broker.command_timeout.0.is_zero() {
                    return Err(invalid("broker.command_timeout", "must be positive"));
                }
                if self.broker.replicas_ack > MAX_REPLICAS_ACK {
                    return Err(invalid(
                        "broker.replicas_ack",
                        format!("at most {MAX_REPLICAS_ACK}"),
                    ));
                }
                if self.broker.replicas_ack > 0 && self.broker.command_timeout.0.as_millis() < 2 {
                    return Err(invalid(
                        "broker.command_timeout",
                        "at least 2ms with broker.replicas_ack (WAIT gets half of it)",
                    ));
                }
                if self.broker.position_check_interval.0.is_zero() {
                    return Err(invalid(
                        "broker.position_check_interval",
                        "must be positive",
                    ));
                }
            }
            other => {
                return Err(invalid(
                    "broker.kind",
                    format!("unknown broker {other:?} (memory | redis | redis-cluster)"),
                ))
            }
        }
        if self.limits.max_message_size < 128 {
            return Err(invalid("limits.max_message_size", "at least 128 bytes"));
        }
        if self.limits.max_message_size > 64 << 20 {
            return Err(invalid("limits.max_message_size", "at most 64 MiB"));
        }
        if self.limits.outbound_queue_bytes < 4096 {
            return Err(invalid(
                "limits.outbound_queue_bytes",
                "at least 4096 bytes",
            ));
        }
        if self.limits.max_message_size >= self.limits.outbound_queue_bytes {
            return Err(invalid(
                "limits.max_message_size",
                "must be smaller than limits.outbound_queue_bytes (a message echoed or published \
                 back must fit a client's queue)",
            ));
        }
        if self.limits.frames_per_second == 0 {
            return Err(invalid("limits.frames_per_second", "must be positive"));
        }
        if self.limits.max_header_bytes < 8192 {
            return Err(invalid("limits.max_header_bytes", "at least 8192"));
        }
        if self.limits.max_history_reply == 0 || self.limits.max_history_reply_bytes < 4096 {
            return Err(invalid(
                "limits.max_history_reply",
                "max_history_reply ≥ 1 and max_history_reply_bytes ≥ 4096",
            ));
        }
        if !self.conformance.echo_path.is_empty() {
            let p = &self.conformance.echo_path;
            if !p.starts_with('/') || p == "/ws" || p.starts_with("/api/") {
                return Err(invalid(
                    "conformance.echo_path",
                    "a path of its own, starting with / (not /ws or /api/…)",
                ));
            }
            let public: SocketAddr = self.listen.public.parse().expect("checked above");
            if !public.ip().is_loopback() && !self.conformance.allow_public {
                return Err(invalid(
                    "conformance.echo_path",
                    "the echo route is for conformance runs on loopback; listen.public is not a \
                     loopback address (set conformance.allow_public = true to allow it)",
                ));
            }
        }
        if self.limits.commands_per_second == 0 {
            return Err(invalid("limits.commands_per_second", "must be positive"));
        }
        if self.client.ping_interval.0 < Duration::from_secs(1) {
            return Err(invalid("client.ping_interval", "at least 1s"));
        }
        if self.client.pong_timeout.0 < Duration::from_secs(1) {
            return Err(invalid("client.pong_timeout", "at least 1s"));
        }
        if self.client.presence_ttl.0 < Duration::from_secs(3) {
            return Err(invalid("client.presence_ttl", "at least 3s"));
        }
        if self.shutdown.drain_seconds > 3600 {
            return Err(invalid("shutdown.drain_seconds", "at most 3600"));
        }
        let pusher_hooks = self.pusher.apps.iter().any(|a| !a.webhook_url.is_empty());
        self.webhooks
            .validate(self.webhooks.enabled() || pusher_hooks)?;
        for (name, ns) in &self.namespaces {
            let valid = name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.@=,".contains(&b));
            if !valid {
                return Err(invalid(
                    &format!("namespaces.{name}"),
                    "namespace names use [A-Za-z0-9_-.@=,]",
                ));
            }
            if ns.history_size > 0 && ns.history_ttl.0.is_zero() {
                return Err(invalid(
                    &format!("namespaces.{name}.history_ttl"),
                    "must be positive when history_size > 0",
                ));
            }
            if ns.history_size > 1_000_000 {
                return Err(invalid(
                    &format!("namespaces.{name}.history_size"),
                    "at most 1000000",
                ));
            }
        }
        Ok(())
    }

    /// `serve` on a non-loopback listener refuses the secrets that ship in samples and defaults:
    /// anyone who read the README could mint tokens or publish. The error names the key.
    pub fn check_serving_secrets(&self) -> Result<(), ConfigError> {
        let public: SocketAddr = self
            .listen
            .public
            .parse()
            .map_err(|e: std::net::AddrParseError| invalid("listen.public", e.to_string()))?;
        if public.ip().is_loopback() {
            return Ok(());
        }
        let mut keys = vec![
            ("auth.token_secret".to_string(), &self.auth.token_secret),
            ("api.key".to_string(), &self.api.key),
        ];
        for (i, app) in self.pusher.apps.iter().enumerate() {
            keys.push((format!("pusher.apps[{i}].secret"), &app.secret));
        }
        for (key, value) in keys {
            if SAMPLE_SECRETS.contains(&value.as_str()) {
                return Err(invalid(
                    &key,
                    format!(
                        "{value:?} is a sample secret and listen.public ({public}) is not a \
                         loopback address: set a secret of your own (e.g. FERROCAST_{}=…)",
                        key.to_uppercase().replace('.', "__")
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn shard_count(&self) -> usize {
        if self.listen.shards > 0 {
            self.listen.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }

    /// The effective config as TOML (for `config check`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// Sets `keys` (a path of table names) in `table` to `raw`, parsed as a TOML value when it is one
/// (numbers, booleans, arrays) and taken as a string otherwise.
fn set_path(table: &mut toml::Table, keys: &[String], raw: &str) {
    let (last, parents) = keys.split_last().expect("non-empty path");
    let mut t = table;
    for k in parents {
        let entry = t
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().expect("table");
    }
    let parsed = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    t.insert(last.clone(), parsed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn redis_urls_are_checked() {
        for ok in [
            "redis://127.0.0.1:7000",
            "redis://h",
            "redis://u:p@h:6379/2",
            "redis://[::1]:6379",
        ] {
            assert!(check_redis_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://h:1",
            "redis://",
            "redis://:6379",
            "redis://h:port",
            "redis://h:70000",
        ] {
            assert!(check_redis_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sample_secrets_are_refused_off_loopback() {
        let cfg = Config::default(); // 0.0.0.0 with "change-me"
        let e = cfg.check_serving_secrets().unwrap_err().to_string();
        assert!(e.contains("auth.token_secret"), "{e}");
        let cfg = Config::load(None, &["auth.token_secret=s3cret-of-our-own".into()]).unwrap();
        let e = cfg.check_serving_secrets().unwrap_err().to_string();
        assert!(e.contains("api.key"), "{e}");
        let cfg = Config::load(
            None,
            &[
                "auth.token_secret=a-real-one".into(),
                "api.key=another-real-one".into(),
            ],
        )
        .unwrap();
        cfg.check_serving_secrets().unwrap();
        let cfg = Config::load(None, &["listen.public=127.0.0.1:0".into()]).unwrap();
        cfg.check_serving_secrets().unwrap();
    }

    #[test]
    fn queue_must_hold_a_whole_message() {
        let e = Config::load(
            None,
            &[
                "limits.max_message_size=1048576".into(),
                "limits.outbound_queue_bytes=1048576".into(),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("limits.max_message_size"), "{e}");
    }

    #[test]
    fn echo_route_stays_on_loopback() {
        let e = Config::load(None, &["conformance.echo_path=/echo".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("conformance.echo_path"), "{e}");
        Config::load(
            None,
            &[
                "conformance.echo_path=/echo".into(),
                "conformance.allow_public=true".into(),
            ],
        )
        .unwrap();
        Config::load(
            None,
            &[
                "conformance.echo_path=/echo".into(),
                "listen.public=127.0.0.1:9001".into(),
            ],
        )
        .unwrap();
    }

    #[test]
    fn overrides_apply_and_parse_types() {
        let cfg = Config::load(
            None,
            &[
                "limits.max_message_size=1024".into(),
                "auth.timeout=2s".into(),
                "namespaces.room.publish=true".into(),
                "listen.public=127.0.0.1:1".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.limits.max_message_size, 1024);
        assert_eq!(cfg.auth.timeout.0, Duration::from_secs(2));
        assert!(cfg.namespaces["room"].publish);
        assert_eq!(cfg.listen.public, "127.0.0.1:1");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = Config::load(None, &["limits.max_message_size=3".into()]).unwrap_err();
        assert!(
            err.to_string().starts_with("limits.max_message_size"),
            "{err}"
        );
        let err = Config::load(None, &["listen.public=nope".into()]).unwrap_err();
        assert!(err.to_string().starts_with("listen.public"), "{err}");
        let err = Config::load(None, &["auth.timeout=\"forever\"".into()]).unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
        let err = Config::load(None, &["listen.bogus=1".into()]).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn webhooks_are_checked() {
        let cfg = Config::load(None, &[]).unwrap();
        assert!(!cfg.webhooks.enabled());
        assert!(!cfg.webhooks.wants("user_online"));
        let on = |extra: &[&str]| {
            let mut sets = vec![
                "webhooks.url=http://127.0.0.1:9/hook".to_string(),
                "webhooks.secret=s".to_string(),
            ];
            sets.extend(extra.iter().map(|s| s.to_string()));
            Config::load(None, &sets)
        };
        let cfg = on(&[]).unwrap();
        assert!(cfg.webhooks.wants("user_online") && cfg.webhooks.wants("channel_vacated"));
        assert!(!cfg.webhooks.wants("client_publish"), "only when listed");
        assert_eq!(cfg.webhooks.batch_wait.0, Duration::from_millis(100));
        let cfg = on(&["webhooks.events=user_online, client_publish"]).unwrap();
        assert_eq!(cfg.webhooks.events, vec!["user_online", "client_publish"]);
        let cfg = on(&[r#"webhooks.events=["channel_occupied"]"#]).unwrap();
        assert_eq!(cfg.webhooks.events, vec!["channel_occupied"]);
        for (set, key) in [
            ("webhooks.events=user_online,bogus", "webhooks.events"),
            ("webhooks.url=https://example.org/hook", "webhooks.url"),
            ("webhooks.url=http://", "webhooks.url"),
            ("webhooks.secret=", "webhooks.secret"),
            ("webhooks.batch_max=0", "webhooks.batch_max"),
            ("webhooks.queue_size=10", "webhooks.queue_size"),
            ("webhooks.timeout=0s", "webhooks.timeout"),
            ("webhooks.offline_delay=2h", "webhooks.offline_delay"),
            ("webhooks.max_retries=1000", "webhooks.max_retries"),
        ] {
            let e = on(&[set]).unwrap_err().to_string();
            assert!(e.starts_with(key), "{set}: {e}");
        }
    }

    #[test]
    fn pusher_webhooks_are_checked() {
        let load = |extra: &str| {
            let dir = std::env::temp_dir().join(format!(
                "fc-pusher-wh-{}-{}.toml",
                std::process::id(),
                extra.len()
            ));
            std::fs::write(
                &dir,
                format!("[[pusher.apps]]\napp_id = \"1\"\nkey = \"k\"\nsecret = \"s\"\n{extra}\n"),
            )
            .unwrap();
            let r = Config::load(dir.to_str(), &[]);
            let _ = std::fs::remove_file(&dir);
            r
        };
        let cfg = load("").unwrap();
        let app = &cfg.pusher.apps[0];
        assert!(app.webhook_url.is_empty() && !app.wants_webhook("channel_occupied"));
        assert_eq!(
            app.webhook_vacate_delay.0,
            Duration::ZERO,
            "Pusher: no delay"
        );
        let cfg = load("webhook_url = \"http://127.0.0.1:9/h\"").unwrap();
        let app = &cfg.pusher.apps[0];
        assert!(app.wants_webhook("channel_vacated") && app.wants_webhook("member_removed"));
        assert!(!app.wants_webhook("client_event"), "only when listed");
        let cfg = load(
            "webhook_url = \"http://127.0.0.1:9/h\"\nwebhook_events = \"client_event, member_added\"",
        )
        .unwrap();
        assert_eq!(
            cfg.pusher.apps[0].webhook_events,
            vec!["client_event", "member_added"]
        );
        for (extra, key) in [
            (
                "webhook_url = \"https://x.org/h\"",
                "pusher.apps[0].webhook_url",
            ),
            (
                "webhook_events = [\"user_online\"]",
                "pusher.apps[0].webhook_events",
            ),
            (
                "webhook_vacate_delay = \"2h\"",
                "pusher.apps[0].webhook_vacate_delay",
            ),
            (
                "webhook_url = \"http://127.0.0.1:9/h\"\n[webhooks]\nbatch_max = 0",
                "webhooks.batch_max",
            ),
        ] {
            let e = load(extra).unwrap_err().to_string();
            assert!(e.starts_with(key), "{extra}: {e}");
        }
        // The batching settings are only checked when a sender runs.
        load("[webhooks]\nbatch_max = 0").unwrap();
    }

    #[test]
    fn pusher_apps_get_their_namespaces() {
        let dir = std::env::temp_dir().join(format!("fc-pusher-{}.toml", std::process::id()));
        std::fs::write(
            &dir,
            "[[pusher.apps]]\napp_id = \"app-1\"\nkey = \"k1\"\nsecret = \"s1\"\nhistory_size = 5\n",
        )
        .unwrap();
        let cfg = Config::load(dir.to_str(), &[]).unwrap();
        let ns = &cfg.namespaces["pusher-app-1"];
        assert!(!ns.presence && !ns.join_leave && !ns.publish && ns.private);
        assert_eq!(ns.history_size, 5);
        assert!(cfg.namespaces["pusher-app-1@cache"].history_size >= 1);
        assert!(cfg.namespaces.contains_key("pusher-app-1@user"));
        assert_eq!(cfg.pusher.apps[0].activity_timeout, 120);
        std::fs::write(
            &dir,
            "[[pusher.apps]]\napp_id = \"a@b\"\nkey = \"k1\"\nsecret = \"s1\"\n",
        )
        .unwrap();
        let e = Config::load(dir.to_str(), &[]).unwrap_err().to_string();
        assert!(e.starts_with("pusher.apps[0].app_id"), "{e}");
        std::fs::write(
            &dir,
            "[[pusher.apps]]\napp_id = \"1\"\nkey = \"k\"\nsecret = \"\"\n",
        )
        .unwrap();
        let e = Config::load(dir.to_str(), &[]).unwrap_err().to_string();
        assert!(e.starts_with("pusher.apps[0].secret"), "{e}");
        std::fs::write(
            &dir,
            "[namespaces.pusher-1]\n[[pusher.apps]]\napp_id = \"1\"\nkey = \"k\"\nsecret = \"s\"\n",
        )
        .unwrap();
        let e = Config::load(dir.to_str(), &[]).unwrap_err().to_string();
        assert!(e.contains("namespaces.pusher-1"), "{e}");
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn history_needs_ttl() {
        let err = Config::load(None, &["namespaces.room.history_size=10".into()]).unwrap_err();
        assert!(
            err.to_string().starts_with("namespaces.room.history_ttl"),
            "{err}"
        );
    }
}
