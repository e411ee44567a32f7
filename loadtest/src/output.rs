//! Turning what the run gathered into figures: the checks and exit status, the final table, and
//! the JSON document (`--json`) that carries every figure.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::plan::{Kind, Plan};
use crate::run::{Ending, Gathered, SeriesPoint};
use crate::stats::{self, merge_reasons, Summary};

#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub wsbench_version: &'static str,
    pub scenario: &'static str,
    pub url: String,
    pub api_url: String,
    pub run_id: u64,
    pub started_unix_s: f64,
    pub duration_s: f64,
    pub outcome: Outcome,
    pub config: ConfigFig,
    pub connections: ConnFig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficFig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnFig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawFig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub million: Option<MillionFig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerFig>,
    pub client: ClientFig,
    /// Latency distribution: (bucket upper bound ms, count), log-spaced.
    pub latency_histogram: Vec<Bucket>,
    pub series: Vec<SeriesPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub passed: bool,
    pub exit_code: i32,
    pub ending: &'static str,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigFig {
    pub connections: u64,
    pub procs: u32,
    pub channels: u64,
    pub messages: u64,
    pub rate: Option<f64>,
    pub flood: bool,
    pub inflight: u64,
    pub size: usize,
    pub connect_rate: f64,
    pub hold_s: f64,
    pub room_size: u64,
    pub churn_rate: f64,
    pub src_addresses: usize,
    pub token_in_url: bool,
    /// Every socket also subscribed to its `user:<id>` channel.
    pub user_channel: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnFig {
    pub target: u64,
    pub connected: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Upgrades the node shed (503 + Retry-After) that were tried again after the delay: not
    /// failures (a socket that ran out of --retries is a failure, `http_503`).
    pub retries: u64,
    /// Sockets the node (or the network) closed, by close code or error.
    pub disconnects: BTreeMap<String, u64>,
    pub ramp_s: f64,
    pub achieved_rate_per_s: f64,
    /// TCP connect → 101 Switching Protocols.
    pub upgrade_ms: Summary,
    /// TCP connect → connect reply → subscribe reply (protocol mode); = upgrade in raw mode.
    pub ready_ms: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrafficFig {
    /// Publications made: through the API, or by the sockets (chat).
    pub publications: u64,
    pub published_ok: u64,
    pub publish_errors: BTreeMap<String, u64>,
    pub publish_rate_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_latency_ms: Option<Summary>,
    pub subscribers: u64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub unique_deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Publications that were not this run's (another run, another publisher).
    pub foreign: u64,
    pub subscribers_with_loss: u64,
    pub traffic_s: f64,
    pub deliveries_per_s: f64,
    /// Publish → receive at the client, from the timestamp inside each publication.
    pub latency_ms: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChurnFig {
    pub reconnects: u64,
    pub reconnect_ms: Summary,
    pub recovered_publications: u64,
    pub recover_failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RawFig {
    pub sent: u64,
    pub received: u64,
    pub bytes_in: u64,
    pub echo: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<Summary>,
    pub received_per_s: f64,
}

/// million: one population through the steps; times are Unix seconds.
#[derive(Debug, Clone, Serialize)]
pub struct MillionFig {
    pub nodes: usize,
    pub api_fanout: bool,
    pub ramp_end_unix_s: f64,
    pub hold_end_unix_s: f64,
    /// Sockets open at the end of the hold (the broadcast's audience).
    pub held: u64,
    pub broadcast: MillionBroadcast,
    pub notify: MillionNotify,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<MillionDrain>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MillionBroadcast {
    pub published_unix_s: f64,
    /// API requests made for it (one, or one per node with --api-fanout) and their failures.
    pub api_requests: u64,
    pub errors: BTreeMap<String, u64>,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Publish → received, over every socket; `max_ms` is when the last socket had it.
    pub latency_ms: Summary,
    /// Publish → the parent saw every open socket with it (progress lines, 20 ms resolution).
    pub all_received_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MillionNotify {
    pub publications: u64,
    pub published_ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub publish_s: f64,
    /// Notifications to users whose socket is connected: expected, arrived, lost.
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Notifications to users whose socket never connected.
    pub to_unconnected: u64,
    pub latency_ms: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct MillionDrain {
    pub pid: u32,
    pub signal_unix_s: f64,
    /// Sockets the node closed with 4010, back on another node, given up.
    pub closed: u64,
    pub back: u64,
    pub gave_up: u64,
    pub open_before: u64,
    pub open_after: u64,
    pub node_exited: bool,
    /// Node exited and every closed socket came back within --drain.
    pub complete: bool,
    /// SIGTERM → the last socket subscribed again elsewhere.
    pub all_back_ms: f64,
    /// Per socket: close received → subscribed on another node.
    pub reconnect_ms: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerFig {
    pub pid: u32,
    pub rss_start_kib: u64,
    pub rss_connected_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_end_kib: u64,
    pub sockets_at_sample: u64,
    /// (RSS with the sockets open − RSS before) / sockets.
    pub rss_per_socket_bytes: f64,
    pub cpu_s: f64,
    pub cpu_ramp_s: f64,
    pub cpu_traffic_s: f64,
    pub cpu_us_per_connection: f64,
    pub cpu_us_per_delivery: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientFig {
    pub procs: u32,
    pub cpu_s: f64,
    pub worker_errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub le_ms: f64,
    pub count: u64,
}

fn merged(g: &Gathered, pick: impl Fn(&stats::WorkerReport) -> &String) -> Histogram<u64> {
    let mut h = stats::new_hist();
    for r in &g.reports {
        if let Ok(x) = stats::decode_hist(pick(r)) {
            stats::merge_into(&mut h, &x);
        }
    }
    h
}

fn secs(ns_from: u64, ns_to: u64) -> f64 {
    ns_to.saturating_sub(ns_from) as f64 / 1e9
}

fn per_s(n: u64, s: f64) -> f64 {
    if s > 0.0 {
        (n as f64 / s * 10.0).round() / 10.0
    } else {
        0.0
    }
}

/// Builds every figure and decides the exit status.
pub fn figures(plan: &Plan, g: &Gathered) -> (Figures, Histogram<u64>) {
    let o = &plan.opts;
    let sum = |f: fn(&stats::WorkerReport) -> u64| g.reports.iter().map(f).sum::<u64>();
    let mut failures = BTreeMap::new();
    let mut disconnects = BTreeMap::new();
    let mut send_errors = BTreeMap::new();
    for r in &g.reports {
        merge_reasons(&mut failures, &r.failures);
        merge_reasons(&mut disconnects, &r.disconnects);
        merge_reasons(&mut send_errors, &r.send_errors);
    }
    let connected = sum(|r| r.connected);
    let failed = plan.sockets.saturating_sub(connected);
    let first = g
        .reports
        .iter()
        .map(|r| r.first_attempt_ns)
        .filter(|&v| v > 0)
        .min()
        .unwrap_or(0);
    let last_conn = g
        .reports
        .iter()
        .map(|r| r.last_connected_ns)
        .max()
        .unwrap_or(0);
    let ramp_window = secs(first, last_conn);
    let connections = ConnFig {
        target: plan.sockets,
        connected,
        failed,
        failures: failures.clone(),
        retries: sum(|r| r.retries),
        disconnects: disconnects.clone(),
        ramp_s: g.ramp_s.unwrap_or(0.0),
        achieved_rate_per_s: per_s(connected, ramp_window),
        upgrade_ms: stats::summarize(&merged(g, |r| &r.hist_upgrade)),
        ready_ms: stats::summarize(&merged(g, |r| &r.hist_ready)),
    };
    let latency = merged(g, |r| &r.hist_latency);
    let last_delivery = g
        .reports
        .iter()
        .map(|r| r.last_delivery_ns)
        .max()
        .unwrap_or(0);
    let traffic_from = g
        .publish
        .as_ref()
        .map_or(g.marks.go_ns, |p| p.first_ns.max(g.marks.go_ns));
    let traffic_s = secs(
        traffic_from,
        last_delivery.max(g.publish.as_ref().map_or(0, |p| p.last_ns)),
    );
    let deliveries = sum(|r| r.deliveries);
    let lost = sum(|r| r.lost);

    let traffic = (!plan.kind.is_connect() && plan.kind != Kind::Raw).then(|| {
        let (publications, ok, errors, api_latency, pub_s) = match &g.publish {
            Some(p) => (
                p.attempted,
                p.ok,
                p.errors.clone(),
                Some(stats::summarize(&p.api_latency)),
                secs(p.first_ns, p.last_ns),
            ),
            None => (
                sum(|r| r.sent),
                sum(|r| r.sent_ok),
                send_errors.clone(),
                None,
                traffic_s,
            ),
        };
        TrafficFig {
            publications,
            published_ok: ok,
            publish_errors: errors,
            publish_rate_per_s: per_s(publications, pub_s),
            api_latency_ms: api_latency,
            subscribers: sum(|r| r.subscribers),
            expected_deliveries: sum(|r| r.expected),
            deliveries,
            unique_deliveries: sum(|r| r.unique),
            lost,
            duplicated: sum(|r| r.duplicates),
            foreign: sum(|r| r.foreign),
            subscribers_with_loss: sum(|r| r.subscribers_with_loss),
            traffic_s: (traffic_s * 1000.0).round() / 1000.0,
            deliveries_per_s: per_s(deliveries, traffic_s),
            latency_ms: stats::summarize(&latency),
        }
    });
    let churn = (plan.kind == Kind::Churn).then(|| ChurnFig {
        reconnects: sum(|r| r.reconnects),
        reconnect_ms: stats::summarize(&merged(g, |r| &r.hist_reconnect)),
        recovered_publications: sum(|r| r.recovered),
        recover_failed: sum(|r| r.recover_failed),
    });
    let raw = (plan.kind == Kind::Raw).then(|| RawFig {
        sent: sum(|r| r.sent),
        received: sum(|r| r.received_raw),
        bytes_in: sum(|r| r.bytes_in),
        echo: o.echo,
        lost: o.echo.then_some(lost),
        rtt_ms: o.echo.then(|| stats::summarize(&latency)),
        received_per_s: per_s(sum(|r| r.received_raw), traffic_s),
    });
    let server = o.server_pid.map(|pid| server_fig(pid, g, deliveries));
    let million = g.marks.million.as_ref().map(|m| {
        let unix = |ns: u64| (ns as f64 / 1e6).round() / 1e3;
        let ms_between = |a: u64, b: u64| {
            if a > 0 && b >= a {
                ((b - a) as f64 / 1e3).round() / 1e3
            } else {
                0.0
            }
        };
        let expected_notify = sum(|r| r.expected_notify);
        let lost_notify = sum(|r| r.lost_notify);
        let bc = m.broadcast.as_ref();
        let nt = m.notify.as_ref();
        MillionFig {
            nodes: plan.addrs.len(),
            api_fanout: o.api_fanout,
            ramp_end_unix_s: unix(m.ramp_end_ns),
            hold_end_unix_s: unix(m.hold_end_ns),
            held: m.open_at_hold,
            broadcast: MillionBroadcast {
                published_unix_s: unix(bc.map_or(0, |b| b.first_ns)),
                api_requests: bc.map_or(0, |b| b.api_latency.len()),
                errors: bc.map(|b| b.errors.clone()).unwrap_or_default(),
                expected: sum(|r| r.expected).saturating_sub(expected_notify),
                delivered: sum(|r| r.expected)
                    .saturating_sub(expected_notify)
                    .saturating_sub(lost.saturating_sub(lost_notify)),
                lost: lost.saturating_sub(lost_notify),
                latency_ms: stats::summarize(&latency),
                all_received_ms: ms_between(bc.map_or(0, |b| b.first_ns), m.broadcast_done_ns),
            },
            notify: MillionNotify {
                publications: nt.map_or(0, |n| n.attempted),
                published_ok: nt.map_or(0, |n| n.ok),
                errors: nt.map(|n| n.errors.clone()).unwrap_or_default(),
                publish_s: nt.map_or(0.0, |n| ms_between(n.first_ns, n.last_ns) / 1e3),
                expected: expected_notify,
                delivered: expected_notify - lost_notify,
                lost: lost_notify,
                to_unconnected: nt
                    .map_or(0, |n| n.attempted)
                    .saturating_sub(expected_notify),
                latency_ms: stats::summarize(&merged(g, |r| &r.hist_latency_notify)),
            },
            drain: m.drain_pid.filter(|_| m.drain_signal_ns > 0).map(|pid| {
                let last_back = g
                    .reports
                    .iter()
                    .map(|r| r.last_failover_ns)
                    .max()
                    .unwrap_or(0);
                MillionDrain {
                    pid,
                    signal_unix_s: unix(m.drain_signal_ns),
                    closed: sum(|r| r.drained),
                    back: sum(|r| r.failovers),
                    gave_up: sum(|r| r.failover_failed),
                    open_before: m.open_before_drain,
                    open_after: m.open_after_drain,
                    node_exited: m.drain_node_exited,
                    complete: m.drain_complete,
                    all_back_ms: ms_between(m.drain_signal_ns, last_back),
                    reconnect_ms: stats::summarize(&merged(g, |r| &r.hist_failover)),
                }
            }),
        }
    });

    // Checks.
    let mut problems: Vec<String> = g.worker_errors.clone();
    let disconnected: u64 = disconnects.values().sum();
    if failed + disconnected > o.max_failures {
        problems.push(format!(
            "{failed} socket(s) failed to connect and {disconnected} dropped (allowed: {})",
            o.max_failures
        ));
    }
    let max_lost = o.max_lost.unwrap_or(0);
    if lost > max_lost {
        problems.push(format!("{lost} deliveries lost (allowed: {max_lost})"));
    }
    if let Some(t) = &traffic {
        let errs: u64 = t.publish_errors.values().sum();
        if errs > 0 {
            problems.push(format!("{errs} publication(s) failed"));
        }
        if t.subscribers == 0 {
            problems.push("no subscriber connected".into());
        }
    }
    if let Some(m) = &million {
        if let Some(d) = &m.drain {
            if !d.complete {
                problems.push(format!(
                    "drain of node pid {}: {} of {} closed sockets back, node exited: {} (--drain {})",
                    d.pid,
                    d.back,
                    d.closed,
                    d.node_exited,
                    humantime::format_duration(o.drain)
                ));
            }
        }
    }
    if let Some(max) = o.max_p99 {
        if latency.is_empty() {
            problems.push(format!("--max-p99 {max}: no latency was measured"));
        } else {
            let p99 = latency.value_at_quantile(0.99) as f64 / 1000.0;
            if p99 > max {
                problems.push(format!("latency p99 {p99:.2} ms > --max-p99 {max} ms"));
            }
        }
    }
    let (ending, mut exit_code) = match g.ending {
        Ending::Completed => ("completed", 0),
        Ending::TimedOut => ("timed_out", 3),
        Ending::Interrupted => ("interrupted", 130),
    };
    match g.ending {
        Ending::TimedOut => problems.push(format!(
            "--timeout {} hit",
            humantime::format_duration(o.timeout.unwrap_or_default())
        )),
        Ending::Interrupted => problems.push("interrupted".into()),
        Ending::Completed => {}
    }
    if exit_code == 0 && !problems.is_empty() {
        exit_code = 1;
    }
    let buckets = histogram_buckets(&latency);
    let f = Figures {
        wsbench_version: env!("CARGO_PKG_VERSION"),
        scenario: plan.kind.name(),
        url: o.url.clone(),
        api_url: format!("http://{}", plan.api.authority),
        run_id: plan.run_id,
        started_unix_s: g.started_ns as f64 / 1e9,
        duration_s: (g.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        outcome: Outcome {
            passed: problems.is_empty(),
            exit_code,
            ending,
            problems,
        },
        config: ConfigFig {
            connections: plan.sockets,
            procs: plan.procs,
            channels: plan.channels.len() as u64,
            messages: o.messages,
            rate: o.rate,
            flood: plan.kind.api_publishes()
                && o.rate.is_none()
                && !matches!(plan.kind, Kind::Churn | Kind::Million),
            inflight: o.inflight,
            size: o.size,
            connect_rate: o.connect_rate,
            hold_s: plan.hold().as_secs_f64(),
            room_size: o.room_size,
            churn_rate: o.churn_rate,
            src_addresses: plan.src.len(),
            token_in_url: o.token_in_url,
            user_channel: plan.extra_channel_of(0).is_some(),
        },
        connections,
        traffic,
        churn,
        raw,
        million,
        server,
        client: ClientFig {
            procs: plan.procs,
            cpu_s: (g.client_cpu_s * 1000.0).round() / 1000.0,
            worker_errors: g.worker_errors.clone(),
        },
        latency_histogram: buckets,
        series: g.series.clone(),
    };
    (f, latency)
}

fn server_fig(pid: u32, g: &Gathered, deliveries: u64) -> ServerFig {
    let m = &g.marks;
    let z = crate::procfs::Sample::default();
    let start = m.start.unwrap_or(z);
    let ramp_end = m.ramp_end.unwrap_or(start);
    let connected = m.held.or(m.ramp_end).unwrap_or(start);
    let end = m.end.unwrap_or(connected);
    let sockets = m.sockets_at_sample;
    let growth_bytes = connected.rss_kib.saturating_sub(start.rss_kib) as f64 * 1024.0;
    let cpu_ramp = ramp_end.cpu_s - start.cpu_s;
    let cpu_traffic = end.cpu_s - ramp_end.cpu_s;
    let r1 = |v: f64| (v * 10.0).round() / 10.0;
    let r3 = |v: f64| (v * 1000.0).round() / 1000.0;
    ServerFig {
        pid,
        rss_start_kib: start.rss_kib,
        rss_connected_kib: connected.rss_kib,
        rss_peak_kib: m.peak_rss_kib.max(connected.rss_kib).max(end.rss_kib),
        rss_end_kib: end.rss_kib,
        sockets_at_sample: sockets,
        rss_per_socket_bytes: if sockets > 0 {
            r1(growth_bytes / sockets as f64)
        } else {
            0.0
        },
        cpu_s: r3(end.cpu_s - start.cpu_s),
        cpu_ramp_s: r3(cpu_ramp),
        cpu_traffic_s: r3(cpu_traffic),
        cpu_us_per_connection: if sockets > 0 {
            r3(cpu_ramp * 1e6 / sockets as f64)
        } else {
            0.0
        },
        cpu_us_per_delivery: if deliveries > 0 {
            r3(cpu_traffic * 1e6 / deliveries as f64)
        } else {
            0.0
        },
    }
}

fn histogram_buckets(h: &Histogram<u64>) -> Vec<Bucket> {
    if h.is_empty() {
        return Vec::new();
    }
    // Quarter-octave buckets from 10 µs: fine enough to see a shape, coarse enough to plot.
    h.iter_log(10, 2f64.powf(0.25))
        .map(|v| Bucket {
            le_ms: v.value_iterated_to() as f64 / 1000.0,
            count: v.count_since_last_iteration(),
        })
        .collect()
}

fn ms(s: &Summary) -> String {
    if s.count == 0 {
        return "-".into();
    }
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
        num(s.p50_ms),
        num(s.p90_ms),
        num(s.p99_ms),
        num(s.p999_ms),
        num(s.max_ms),
        s.count
    )
}

/// Milliseconds with sensible precision.
pub fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Rows of (section, label, value) shared by the text table and the HTML report.
pub fn rows(f: &Figures) -> Vec<(&'static str, String, String)> {
    let mut r: Vec<(&'static str, String, String)> = Vec::new();
    let mut add = |s: &'static str, k: &str, v: String| r.push((s, k.to_string(), v));
    let c = &f.connections;
    add(
        "connections",
        "connected",
        format!("{} of {} ({} failed)", c.connected, c.target, c.failed),
    );
    if !c.failures.is_empty() {
        add("connections", "failures by reason", map(&c.failures));
    }
    add(
        "connections",
        "retried (503 + Retry-After)",
        c.retries.to_string(),
    );
    add("connections", "disconnects", map(&c.disconnects));
    add(
        "connections",
        "achieved rate",
        format!("{:.0}/s (ramp {:.2} s)", c.achieved_rate_per_s, c.ramp_s),
    );
    add("connections", "upgrade ms", ms(&c.upgrade_ms));
    if f.scenario != "raw" && f.scenario != "connect-raw" {
        add("connections", "ready ms (auth+subscribe)", ms(&c.ready_ms));
    }
    if let Some(t) = &f.traffic {
        add(
            "traffic",
            "publications",
            format!(
                "{} ({} ok, {:.1}/s){}",
                t.publications,
                t.published_ok,
                t.publish_rate_per_s,
                if t.publish_errors.is_empty() {
                    String::new()
                } else {
                    format!(" errors: {}", map(&t.publish_errors))
                }
            ),
        );
        if let Some(a) = &t.api_latency_ms {
            add("traffic", "API publish ms", ms(a));
        }
        add("traffic", "subscribers", t.subscribers.to_string());
        add(
            "traffic",
            "deliveries",
            format!(
                "{} of {} expected ({} unique)",
                t.deliveries, t.expected_deliveries, t.unique_deliveries
            ),
        );
        add(
            "traffic",
            "lost",
            format!(
                "{} ({} subscribers affected)",
                t.lost, t.subscribers_with_loss
            ),
        );
        add("traffic", "duplicated", t.duplicated.to_string());
        if t.foreign > 0 {
            add("traffic", "foreign publications", t.foreign.to_string());
        }
        add(
            "traffic",
            "deliveries/s",
            format!("{:.0} over {:.2} s", t.deliveries_per_s, t.traffic_s),
        );
        add("traffic", "latency ms", ms(&t.latency_ms));
    }
    if let Some(ch) = &f.churn {
        add("churn", "reconnects", ch.reconnects.to_string());
        add("churn", "reconnect ms", ms(&ch.reconnect_ms));
        add(
            "churn",
            "recovered publications",
            ch.recovered_publications.to_string(),
        );
        add("churn", "recoveries refused", ch.recover_failed.to_string());
    }
    if let Some(x) = &f.raw {
        add("raw", "sent", x.sent.to_string());
        add(
            "raw",
            "received",
            format!(
                "{} ({} bytes, {:.0}/s)",
                x.received, x.bytes_in, x.received_per_s
            ),
        );
        if let Some(l) = x.lost {
            add("raw", "lost (no echo)", l.to_string());
        }
        if let Some(rtt) = &x.rtt_ms {
            add("raw", "echo rtt ms", ms(rtt));
        }
    }
    if let Some(m) = &f.million {
        add(
            "million",
            "held",
            format!("{} sockets on {} node(s)", m.held, m.nodes),
        );
        let b = &m.broadcast;
        add(
            "million",
            "broadcast",
            format!(
                "{} of {} delivered, {} lost{}; all had it after {} ms",
                b.delivered,
                b.expected,
                b.lost,
                if b.errors.is_empty() {
                    String::new()
                } else {
                    format!(" (API errors: {})", map(&b.errors))
                },
                num(b.all_received_ms)
            ),
        );
        add("million", "broadcast ms", ms(&b.latency_ms));
        let n = &m.notify;
        add(
            "million",
            "notify",
            format!(
                "{} published ({} ok), {} of {} delivered, {} lost, {} to unconnected users",
                n.publications, n.published_ok, n.delivered, n.expected, n.lost, n.to_unconnected
            ),
        );
        add("million", "notify ms", ms(&n.latency_ms));
        if let Some(d) = &m.drain {
            add(
                "million",
                "drain",
                format!(
                    "pid {}: {} closed, {} back, {} gave up; all back {} ms after SIGTERM{}",
                    d.pid,
                    d.closed,
                    d.back,
                    d.gave_up,
                    num(d.all_back_ms),
                    if d.complete { "" } else { " (INCOMPLETE)" }
                ),
            );
            add("million", "drain reconnect ms", ms(&d.reconnect_ms));
        }
    }
    if let Some(s) = &f.server {
        add("server", "pid", s.pid.to_string());
        add(
            "server",
            "RSS KiB",
            format!(
                "start {}  connected {}  peak {}  end {}",
                s.rss_start_kib, s.rss_connected_kib, s.rss_peak_kib, s.rss_end_kib
            ),
        );
        add(
            "server",
            "RSS per socket",
            format!(
                "{:.0} bytes ({} sockets)",
                s.rss_per_socket_bytes, s.sockets_at_sample
            ),
        );
        add(
            "server",
            "CPU s",
            format!(
                "{:.3} (ramp {:.3}, traffic {:.3})",
                s.cpu_s, s.cpu_ramp_s, s.cpu_traffic_s
            ),
        );
        add(
            "server",
            "CPU µs per connection",
            format!("{:.2}", s.cpu_us_per_connection),
        );
        if f.traffic.is_some() {
            add(
                "server",
                "CPU µs per delivery",
                format!("{:.3}", s.cpu_us_per_delivery),
            );
        }
    }
    add(
        "client",
        "CPU s",
        format!("{:.3} ({} process(es))", f.client.cpu_s, f.client.procs),
    );
    r
}

/// The final table (stdout).
pub fn table(f: &Figures) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "wsbench {}  {}  run {}  {:.2} s",
        f.scenario, f.url, f.run_id, f.duration_s
    );
    let rows = rows(f);
    let width = rows
        .iter()
        .map(|(_, k, _)| k.chars().count())
        .max()
        .unwrap_or(10);
    let mut section = "";
    for (s, k, v) in &rows {
        if *s != section {
            section = s;
            let _ = writeln!(out, "{s}");
        }
        let _ = writeln!(out, "  {k:<width$}  {v}");
    }
    if f.outcome.passed {
        let _ = writeln!(out, "PASS");
    } else {
        for p in &f.outcome.problems {
            let _ = writeln!(out, "FAIL: {p}");
        }
    }
    out
}
