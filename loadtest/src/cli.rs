//! Command line: familiar flags for the common case, one subcommand per scenario.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "wsbench",
    version,
    about = "Load generator for ferrocast (protocol v1) and, with --raw, any WebSocket server",
    long_about = "Load generator for ferrocast (protocol v1) and, with --raw, any WebSocket server.\n\n\
        Without a subcommand it runs `broadcast`: `wsbench -c 1000 -n 10000 -u ws://localhost:8080/ws` \
        subscribes 1000 sockets to one channel and publishes 10000 messages through the server API.\n\n\
        Exit status: 0 pass; 1 a check failed (lost deliveries, failed connects, unexpected \
        disconnects, --max-p99/--max-lost/--max-failures missed); 2 bad usage or setup; 3 --timeout hit.",
    after_help = "Examples:\n  \
        wsbench -c 1000 -n 10000 -u ws://127.0.0.1:8080/ws\n  \
        wsbench connect -c 19000 --connect-rate 2000 --hold 30s --server-pid $(pgrep ferrocast)\n  \
        wsbench broadcast -c 10000 --rate 10 --duration 60s --max-p99 5\n  \
        wsbench broadcast -c 10000 -n 2000 --flood --report flood.html\n  \
        wsbench notify -c 5000 -n 20000 --rate 2000\n  \
        wsbench chat -c 1000 --room-size 10 -n 20 --rate 500\n  \
        wsbench churn -c 2000 --churn-rate 50 --rate 100 --duration 30s\n  \
        wsbench million -c 50000 --nodes 3 --procs 3 --hold 60s -n 10000 --drain-pid PID\n  \
        wsbench broadcast --pusher --pusher-key KEY -c 5000 --rate 20 -d 30s -u ws://127.0.0.1:6001\n  \
        wsbench --raw -c 100 -n 1000 --echo -u ws://127.0.0.1:9001/"
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Option<Scenario>,
    #[command(flatten)]
    pub opts: Opts,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Ramp to -c sockets at --connect-rate, hold --hold; handshake latency, failures, server
    /// memory per socket (--server-pid)
    Connect,
    /// -c subscribers over --channels channels; the API publishes -n messages per channel at
    /// --rate (or --flood); latency, deliveries/s, lost and duplicated
    Broadcast,
    /// -c users each subscribed to `user:<id>`; the API publishes -n notifications to random users
    Notify,
    /// Rooms of --room-size members; every member publishes -n messages over the socket
    Chat,
    /// Broadcast traffic while --churn-rate sockets/s disconnect and reconnect with recovery
    Churn,
    /// One population through every phase: ramp -c sockets (own token, `user:<id>` + one shared
    /// channel) over --nodes, hold --hold, one broadcast to all, -n notifications to random
    /// users, then SIGTERM --drain-pid and wait until its sockets are back on the other nodes
    Million,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::Broadcast => "broadcast",
            Scenario::Notify => "notify",
            Scenario::Chat => "chat",
            Scenario::Churn => "churn",
            Scenario::Million => "million",
        }
    }
}

/// Every flag is global so it reads the same before or after the subcommand.
#[derive(Args, Debug, Clone)]
pub struct Opts {
    // ---- target ----
    /// WebSocket URL of the node
    #[arg(
        short = 'u',
        long,
        global = true,
        env = "WSBENCH_URL",
        default_value = "ws://127.0.0.1:8080/ws",
        help_heading = "Target"
    )]
    pub url: String,
    /// Server API base URL [default: http://HOST:PORT of --url]
    #[arg(long, global = true, env = "WSBENCH_API_URL", help_heading = "Target")]
    pub api_url: Option<String>,
    /// Server API key (`Authorization: apikey KEY`) for publications
    #[arg(
        long,
        global = true,
        env = "WSBENCH_API_KEY",
        default_value = "change-me",
        hide_env_values = true,
        help_heading = "Target"
    )]
    pub api_key: String,
    /// HS256 secret to mint client JWTs with (the node's auth.token_secret)
    #[arg(
        long,
        global = true,
        env = "WSBENCH_TOKEN_SECRET",
        default_value = "change-me",
        hide_env_values = true,
        help_heading = "Target"
    )]
    pub token_secret: String,
    /// Pass the token as ?token= on the upgrade URL instead of a connect command
    #[arg(long, global = true, help_heading = "Target")]
    pub token_in_url: bool,
    /// Connect without a token (the node must allow anonymous connections)
    #[arg(long, global = true, help_heading = "Target")]
    pub anonymous: bool,
    /// One user id shared by every socket [default: one user per socket, id = PREFIX + index]
    #[arg(long, global = true, help_heading = "Target")]
    pub user: Option<String>,
    /// Prefix of generated user ids
    #[arg(long, global = true, default_value = "", help_heading = "Target")]
    pub user_prefix: String,
    /// Channel name prefix: channel i is PREFIX-i (its namespace must exist on the node)
    #[arg(
        long,
        global = true,
        default_value = "room:wsbench",
        help_heading = "Target"
    )]
    pub channel: String,
    /// Also subscribe every socket to its personal channel `user:<id>` (connect, broadcast, chat,
    /// churn): the realistic idle client, one personal and one shared subscription
    #[arg(long, global = true, help_heading = "Target")]
    pub user_channel: bool,
    /// A fleet of N nodes on consecutive ports from --url's port: socket s goes to node s mod N,
    /// and the API of node k (when no --api-url) is http://HOST:PORT+k
    #[arg(long, global = true, default_value_t = 1, help_heading = "Target")]
    pub nodes: u16,
    /// The nodes share no broker (memory broker each; million): publish a shared-channel
    /// publication through every node's API and a notification through its user's node
    #[arg(long, global = true, help_heading = "Target")]
    pub api_fanout: bool,
    /// Speak Pusher Channels protocol 7 instead of ferrocast's (connect, broadcast): sockets
    /// connect to /app/KEY, subscribe with pusher:subscribe and answer pusher:ping; the
    /// publisher signs POST /apps/ID/events. Works against any Pusher-compatible server
    #[arg(long, global = true, help_heading = "Target")]
    pub pusher: bool,
    /// Pusher app id (POST /apps/ID/events)
    #[arg(
        long,
        global = true,
        env = "WSBENCH_PUSHER_APP_ID",
        default_value = "wsbench",
        help_heading = "Target"
    )]
    pub pusher_app_id: String,
    /// Pusher app key (ws://HOST:PORT/app/KEY, auth_key of API requests)
    #[arg(
        long,
        global = true,
        env = "WSBENCH_PUSHER_KEY",
        default_value = "wsbench-key",
        help_heading = "Target"
    )]
    pub pusher_key: String,
    /// Pusher app secret (signs API requests)
    #[arg(
        long,
        global = true,
        env = "WSBENCH_PUSHER_SECRET",
        default_value = "wsbench-secret",
        hide_env_values = true,
        help_heading = "Target"
    )]
    pub pusher_secret: String,
    /// Allow a target outside loopback (only servers you operate)
    #[arg(long, global = true, help_heading = "Target")]
    pub allow_remote: bool,

    // ---- load ----
    /// Sockets (subscribers, users, chat members)
    #[arg(
        short = 'c',
        long,
        global = true,
        default_value_t = 100,
        help_heading = "Load"
    )]
    pub connections: u64,
    /// Messages: per channel (broadcast, churn), in all (notify), per member (chat), per socket (--raw)
    #[arg(
        short = 'n',
        long,
        global = true,
        default_value_t = 100,
        help_heading = "Load"
    )]
    pub messages: u64,
    /// Publications per second, all publishers together [default: --flood; chat: 1 per member per second]
    #[arg(short = 'r', long, global = true, help_heading = "Load")]
    pub rate: Option<f64>,
    /// Publish as fast as the node delivers, at most --inflight publications ahead of delivery
    #[arg(long, global = true, help_heading = "Load")]
    pub flood: bool,
    /// Bound on undelivered publications in flood mode (and on concurrent API requests)
    #[arg(long, global = true, default_value_t = 64, help_heading = "Load")]
    pub inflight: u64,
    /// Run the traffic this long (with --rate: messages = rate × duration); also churn's length
    #[arg(short = 'd', long, global = true, value_parser = parse_duration, help_heading = "Load")]
    pub duration: Option<Duration>,
    /// Channels to spread subscribers over (socket i subscribes to channel i mod N)
    #[arg(long, global = true, default_value_t = 1, help_heading = "Load")]
    pub channels: u64,
    /// Approximate size of each publication's data, bytes
    #[arg(long, global = true, default_value_t = 64, help_heading = "Load")]
    pub size: usize,
    /// New connections per second during the ramp (0 = as fast as possible)
    #[arg(long, global = true, default_value_t = 1000.0, help_heading = "Load")]
    pub connect_rate: f64,
    /// Hold the connections this long after the ramp (connect) [default: connect 10s, others 0]
    #[arg(long, global = true, value_parser = parse_duration, help_heading = "Load")]
    pub hold: Option<Duration>,
    /// Members per chat room
    #[arg(long, global = true, default_value_t = 10, help_heading = "Load")]
    pub room_size: u64,
    /// Disconnect/reconnect cycles per second (churn)
    #[arg(long, global = true, default_value_t = 10.0, help_heading = "Load")]
    pub churn_rate: f64,
    /// After the last publication, wait at most this long for deliveries to arrive
    #[arg(long, global = true, value_parser = parse_duration, default_value = "10s", help_heading = "Load")]
    pub drain: Duration,
    /// Deadline for one socket's upgrade + connect + subscribe
    #[arg(long, global = true, value_parser = parse_duration, default_value = "10s", help_heading = "Load")]
    pub handshake_timeout: Duration,
    /// An upgrade answered 503 with Retry-After is retried up to N times, after the delay it asks
    /// for (times 1–2 for jitter, at most 30 s); retries are counted apart from failures
    #[arg(long, global = true, default_value_t = 5, help_heading = "Load")]
    pub retries: u32,
    /// million: after the notifications, SIGTERM this node and wait (at most --drain) until the
    /// sockets it closes are back on the other nodes
    #[arg(long, global = true, value_name = "PID", help_heading = "Load")]
    pub drain_pid: Option<u32>,
    /// Abort the whole run after this long (exit 3) [default: none]
    #[arg(long, global = true, value_parser = parse_duration, help_heading = "Load")]
    pub timeout: Option<Duration>,

    // ---- raw mode ----
    /// No protocol: send --template frames and count whatever comes back (any WebSocket server)
    #[arg(long, global = true, help_heading = "Raw mode")]
    pub raw: bool,
    /// Text frame to send in raw mode; {conn} {seq} {ts} {run} are substituted
    #[arg(
        long,
        global = true,
        default_value = "{\"conn\":{conn},\"seq\":{seq},\"ts\":{ts}}",
        help_heading = "Raw mode"
    )]
    pub template: String,
    /// Raw mode: the server echoes; match replies to sends for latency and count the missing as lost
    #[arg(long, global = true, help_heading = "Raw mode")]
    pub echo: bool,

    // ---- scale ----
    /// Split the sockets over this many worker processes (past one process's fd limit)
    #[arg(
        short = 'p',
        long,
        global = true,
        default_value_t = 1,
        help_heading = "Scale"
    )]
    pub procs: u32,
    /// Runtime threads per process (0 = one per CPU)
    #[arg(long, global = true, default_value_t = 0, help_heading = "Scale")]
    pub threads: usize,
    /// Source addresses for client sockets, round-robin: 127.0.0.2-127.0.0.50[,ADDR...]
    #[arg(long, global = true, help_heading = "Scale")]
    pub src: Option<String>,

    // ---- output and checks ----
    /// Print every figure as one JSON object on stdout (no table)
    #[arg(long, global = true, help_heading = "Output")]
    pub json: bool,
    /// Write a self-contained HTML report with plots
    #[arg(long, global = true, value_name = "FILE.html", help_heading = "Output")]
    pub report: Option<PathBuf>,
    /// No progress output
    #[arg(short = 'q', long, global = true, help_heading = "Output")]
    pub quiet: bool,
    /// PID of the node: report its RSS growth per socket and CPU time (Linux /proc)
    #[arg(long, global = true, help_heading = "Output")]
    pub server_pid: Option<u32>,
    /// Fail (exit 1) when the delivery latency p99 exceeds this many milliseconds
    #[arg(long, global = true, value_name = "MS", help_heading = "Checks")]
    pub max_p99: Option<f64>,
    /// Fail when more than N deliveries are lost [default: 0]
    #[arg(long, global = true, value_name = "N", help_heading = "Checks")]
    pub max_lost: Option<u64>,
    /// Fail when more than N sockets fail to connect or drop unexpectedly
    #[arg(
        long,
        global = true,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Checks"
    )]
    pub max_failures: u64,

    // ---- internal: worker processes ----
    #[arg(long, global = true, hide = true)]
    pub worker_index: Option<u32>,
    #[arg(long, global = true, hide = true)]
    pub run_id: Option<u64>,
}

/// `10s`, `1m30s`, `250ms`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs >= 0.0 && secs.is_finite() {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(s).map_err(|e| format!("{s}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn common_case_and_subcommands_parse() {
        let c = Cli::parse_from([
            "wsbench",
            "-c",
            "1000",
            "-n",
            "10000",
            "-u",
            "ws://localhost:8080/ws",
        ]);
        assert_eq!(c.scenario, None);
        assert_eq!((c.opts.connections, c.opts.messages), (1000, 10000));
        let c = Cli::parse_from([
            "wsbench",
            "connect",
            "-c",
            "5",
            "--hold",
            "2s",
            "--server-pid",
            "1",
        ]);
        assert_eq!(c.scenario, Some(Scenario::Connect));
        assert_eq!(c.opts.hold, Some(Duration::from_secs(2)));
        let c = Cli::parse_from(["wsbench", "--json", "churn", "--churn-rate", "5"]);
        assert!(c.opts.json);
        assert_eq!(c.scenario, Some(Scenario::Churn));
        assert_eq!((c.opts.retries, c.opts.nodes), (5, 1));
        let c = Cli::parse_from([
            "wsbench",
            "million",
            "--nodes",
            "55",
            "--api-fanout",
            "--drain-pid",
            "42",
            "--retries",
            "0",
        ]);
        assert_eq!(c.scenario, Some(Scenario::Million));
        assert_eq!(c.opts.nodes, 55);
        assert!(c.opts.api_fanout);
        assert_eq!((c.opts.drain_pid, c.opts.retries), (Some(42), 0));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }
}
