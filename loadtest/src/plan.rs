//! The run plan: everything derived from the command line that every process (parent and workers)
//! must agree on — which socket is which user, on which channel, in which worker.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Result};

use crate::cli::{Opts, Scenario};
use crate::target::{parse_src, Url};
use crate::token::Minter;

/// What the sockets do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Broadcast,
    Notify,
    Chat,
    Churn,
    /// Connect, hold, one broadcast, notifications, drain one node (one population throughout).
    Million,
    /// `--raw`: no protocol, templated frames.
    Raw,
    /// `connect --raw`: upgrades only.
    RawConnect,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Broadcast => "broadcast",
            Kind::Notify => "notify",
            Kind::Chat => "chat",
            Kind::Churn => "churn",
            Kind::Million => "million",
            Kind::Raw => "raw",
            Kind::RawConnect => "connect-raw",
        }
    }

    pub fn is_raw(self) -> bool {
        matches!(self, Kind::Raw | Kind::RawConnect)
    }

    pub fn is_connect(self) -> bool {
        matches!(self, Kind::Connect | Kind::RawConnect)
    }

    /// The parent publishes through the server API.
    pub fn api_publishes(self) -> bool {
        matches!(
            self,
            Kind::Broadcast | Kind::Notify | Kind::Churn | Kind::Million
        )
    }

    /// The sockets send frames themselves.
    pub fn sockets_send(self) -> bool {
        matches!(self, Kind::Chat | Kind::Raw)
    }
}

pub struct Plan {
    pub kind: Kind,
    pub opts: Opts,
    pub url: Url,
    /// Where sockets connect: node k of the fleet is `addrs[k]` (one entry per --nodes).
    pub addrs: Vec<SocketAddr>,
    pub api: Url,
    /// `host:port` of every API publications may go through: --api-url, or node k's port.
    pub api_authorities: Vec<String>,
    pub src: Vec<IpAddr>,
    pub sockets: u64,
    pub procs: u32,
    pub run_id: u64,
    /// Channel names by index (rooms in chat, `user:<id>` in notify).
    pub channels: Vec<String>,
    pub room_size: u64,
    /// Publications the API publisher makes in all.
    pub api_publications: u64,
    /// Per-socket frames (chat publishes, raw frames).
    pub socket_messages: u64,
    /// Per-socket pause between frames; `None` = back to back (raw echo: one at a time).
    pub socket_interval: Option<Duration>,
    pub pad: usize,
    pub minter: Option<Minter>,
}

impl Plan {
    pub async fn new(scenario: Option<Scenario>, opts: Opts, run_id: u64) -> Result<Plan> {
        let kind = match (scenario, opts.raw) {
            (None | Some(Scenario::Broadcast), true) => Kind::Raw,
            (Some(Scenario::Connect), true) => Kind::RawConnect,
            (Some(s), true) => bail!(
                "--raw works with broadcast (the default) and connect, not {}",
                s.name()
            ),
            (None | Some(Scenario::Broadcast), false) => Kind::Broadcast,
            (Some(Scenario::Connect), false) => Kind::Connect,
            (Some(Scenario::Notify), false) => Kind::Notify,
            (Some(Scenario::Chat), false) => Kind::Chat,
            (Some(Scenario::Churn), false) => Kind::Churn,
            (Some(Scenario::Million), false) => Kind::Million,
        };
        if opts.connections == 0 {
            bail!("-c must be at least 1");
        }
        if opts.procs == 0 || opts.procs as u64 > opts.connections {
            bail!("--procs must be between 1 and -c");
        }
        if opts.channels == 0 || opts.room_size == 0 {
            bail!("--channels and --room-size must be at least 1");
        }
        if let Some(r) = opts.rate {
            if !(r > 0.0 && r.is_finite()) {
                bail!("--rate must be positive");
            }
        }
        if opts.flood && opts.rate.is_some() {
            bail!("--flood and --rate exclude each other");
        }
        if opts.user_channel && (opts.anonymous || kind.is_raw()) {
            bail!("--user-channel needs authenticated protocol sockets (not --anonymous or --raw)");
        }
        if kind == Kind::Million && (opts.anonymous || opts.user.is_some()) {
            bail!("million needs one authenticated user per socket (not --anonymous or --user)");
        }
        if (opts.api_fanout || opts.drain_pid.is_some()) && kind != Kind::Million {
            bail!("--api-fanout and --drain-pid belong to the million scenario");
        }
        if opts.nodes == 0 {
            bail!("--nodes must be at least 1");
        }
        if opts.pusher {
            if !matches!(kind, Kind::Connect | Kind::Broadcast) {
                bail!(
                    "--pusher works with connect and broadcast, not {}",
                    kind.name()
                );
            }
            if opts.user_channel || opts.token_in_url || opts.user.is_some() {
                bail!("--pusher sockets are anonymous public subscribers: no --user-channel, --token-in-url or --user");
            }
        }
        let mut url = Url::parse(&opts.url)?;
        if url.scheme != "ws" {
            bail!("--url must be ws://");
        }
        if opts.pusher && !url.path.starts_with("/app/") {
            // pusher-js's URL: the key in the path, protocol 7.
            url.path = format!(
                "/app/{}?protocol=7&client=wsbench&version=8.0",
                opts.pusher_key
            );
        }
        let mut addrs = url.resolve(opts.allow_remote).await?;
        if opts.nodes > 1 {
            let first = addrs[0];
            if u32::from(first.port()) + u32::from(opts.nodes) - 1 > u32::from(u16::MAX) {
                bail!("--nodes {}: ports past 65535", opts.nodes);
            }
            addrs = (0..opts.nodes)
                .map(|k| SocketAddr::new(first.ip(), first.port() + k))
                .collect();
        }
        let api = match &opts.api_url {
            Some(a) => Url::parse(a)?,
            None => Url::parse(&url.api_base())?,
        };
        let api_authorities = if opts.api_url.is_none() && opts.nodes > 1 {
            (0..opts.nodes)
                .map(|k| format!("{}:{}", url.host, url.port + k))
                .collect()
        } else {
            vec![api.authority.clone()]
        };
        if opts.api_fanout && api_authorities.len() != addrs.len() {
            bail!("--api-fanout publishes through each node's own port: leave out --api-url");
        }
        if kind.api_publishes() {
            api.resolve(opts.allow_remote).await?;
        }
        let src = match &opts.src {
            Some(s) => parse_src(s)?,
            None => Vec::new(),
        };
        let n = opts.connections;
        // Pusher channel names allow no ':' ([A-Za-z0-9_\-=@,.;]): the default prefix becomes
        // `wsbench`.
        let prefix = if opts.pusher && opts.channel == "room:wsbench" {
            "wsbench".to_string()
        } else {
            opts.channel.clone()
        };
        let channels: Vec<String> = match kind {
            // million: the one shared channel; personal channels are named on the fly (a
            // million names in every worker would cost more than the sockets).
            Kind::Million => vec![format!("{prefix}-0")],
            Kind::Connect | Kind::Broadcast | Kind::Churn => (0..opts.channels)
                .map(|i| format!("{prefix}-{i}"))
                .collect(),
            Kind::Notify => match &opts.user {
                Some(u) => vec![format!("user:{u}")],
                None => (0..n)
                    .map(|i| format!("user:{}{i}", opts.user_prefix))
                    .collect(),
            },
            Kind::Chat => (0..n.div_ceil(opts.room_size))
                .map(|r| format!("{prefix}-{r}"))
                .collect(),
            Kind::Raw | Kind::RawConnect => Vec::new(),
        };
        if kind == Kind::Chat && (channels.len() as u64) < opts.procs as u64 {
            bail!("chat: --procs must not exceed the number of rooms");
        }
        let duration = opts.duration.map(|d| d.as_secs_f64());
        let api_publications = match kind {
            Kind::Broadcast | Kind::Notify => match (opts.rate, duration) {
                (Some(r), Some(d)) => (r * d).ceil() as u64,
                _ if kind == Kind::Broadcast => opts.messages * channels.len() as u64,
                _ => opts.messages,
            },
            Kind::Churn => {
                let r = opts.rate.unwrap_or(100.0);
                (r * duration.unwrap_or(10.0)).ceil() as u64
            }
            // One broadcast, then -n notifications.
            Kind::Million => 1 + opts.messages,
            _ => 0,
        };
        let (socket_messages, socket_interval) = match kind {
            Kind::Chat => {
                let rate = opts.rate.unwrap_or(n as f64); // 1 msg/s per member
                let per_socket = rate / n as f64;
                let msgs = match duration {
                    Some(d) => (per_socket * d).ceil() as u64,
                    None => opts.messages,
                };
                (msgs, Some(Duration::from_secs_f64(1.0 / per_socket)))
            }
            Kind::Raw => {
                let interval = opts.rate.map(|r| Duration::from_secs_f64(n as f64 / r));
                let msgs = match (opts.rate, duration) {
                    (Some(r), Some(d)) => (r / n as f64 * d).ceil() as u64,
                    _ => opts.messages,
                };
                (msgs, interval)
            }
            _ => (0, None),
        };
        let minter = (!kind.is_raw() && !opts.anonymous && !opts.pusher)
            .then(|| Minter::new(&opts.token_secret, 86_400));
        Ok(Plan {
            kind,
            url,
            addrs,
            api,
            api_authorities,
            src,
            sockets: n,
            procs: opts.procs,
            run_id,
            channels,
            room_size: opts.room_size,
            api_publications,
            socket_messages,
            socket_interval,
            pad: crate::proto::pad_for_size(opts.size),
            minter,
            opts,
        })
    }

    /// The channel socket `s` subscribes to.
    pub fn channel_of(&self, s: u64) -> usize {
        match self.kind {
            Kind::Chat => (s / self.room_size) as usize,
            Kind::Notify if self.channels.len() == 1 => 0,
            Kind::Notify => s as usize,
            _ if self.channels.is_empty() => 0,
            _ => (s % self.channels.len() as u64) as usize,
        }
    }

    /// The second channel socket `s` subscribes to: its personal channel with `--user-channel`
    /// (notify's sockets are on theirs already).
    pub fn extra_channel_of(&self, s: u64) -> Option<String> {
        ((self.opts.user_channel || self.kind == Kind::Million) && self.kind != Kind::Notify)
            .then(|| self.user_channel_of(s))
    }

    /// Socket `s`'s personal channel.
    pub fn user_channel_of(&self, s: u64) -> String {
        format!("user:{}", self.user_of(s))
    }

    /// The publisher index of socket `s` within its channel (chat members), else 0.
    pub fn member_of(&self, s: u64) -> u64 {
        match self.kind {
            Kind::Chat => s % self.room_size,
            _ => 0,
        }
    }

    /// Classifies a server text frame in the run's protocol.
    pub fn parse(&self, frame: &[u8]) -> crate::proto::Incoming {
        if self.opts.pusher {
            crate::proto::parse_pusher(frame)
        } else {
            crate::proto::parse_incoming(frame)
        }
    }

    /// The body of one API publication of `data` (a marker object) to `channel`.
    pub fn publish_body(&self, channel: &str, data: &str) -> String {
        if self.opts.pusher {
            crate::proto::pusher_event_body(channel, data)
        } else {
            crate::proto::api_publish_body(channel, data)
        }
    }

    pub fn user_of(&self, s: u64) -> String {
        match &self.opts.user {
            Some(u) => u.clone(),
            None => format!("{}{s}", self.opts.user_prefix),
        }
    }

    /// Which worker drives socket `s`. Chat keeps a room in one worker so it can count its
    /// own expected deliveries.
    pub fn worker_of(&self, s: u64) -> u32 {
        let unit = match self.kind {
            Kind::Chat => s / self.room_size,
            _ => s,
        };
        (unit % self.procs as u64) as u32
    }

    pub fn sockets_of(&self, worker: u32) -> Vec<u64> {
        (0..self.sockets)
            .filter(|&s| self.worker_of(s) == worker)
            .collect()
    }

    pub fn addr_of(&self, s: u64) -> SocketAddr {
        self.addrs[self.node_of(s)]
    }

    /// The node socket `s` first connects to.
    pub fn node_of(&self, s: u64) -> usize {
        (s % self.addrs.len() as u64) as usize
    }

    pub fn src_of(&self, s: u64) -> Option<IpAddr> {
        (!self.src.is_empty()).then(|| self.src[(s % self.src.len() as u64) as usize])
    }

    /// Publications each API publication expects to reach: one channel's subscribers.
    pub fn publication_channels(&self) -> u64 {
        self.channels.len().max(1) as u64
    }

    /// Deliveries the run should produce if nothing is lost (for progress bars).
    pub fn expected_deliveries_hint(&self) -> u64 {
        match self.kind {
            Kind::Broadcast | Kind::Churn => {
                self.api_publications * self.sockets / self.publication_channels()
            }
            Kind::Notify => self.api_publications * self.sockets / self.publication_channels(),
            Kind::Million => self.sockets + self.opts.messages,
            Kind::Chat => self.sockets * self.socket_messages * self.room_size,
            Kind::Raw if self.opts.echo => self.sockets * self.socket_messages,
            _ => 0,
        }
    }

    pub fn hold(&self) -> Duration {
        self.opts
            .hold
            .unwrap_or(if self.kind.is_connect() || self.kind == Kind::Million {
                Duration::from_secs(10)
            } else {
                Duration::ZERO
            })
    }
}
