//! Prometheus metrics, all named `ferrocast_*` (docs/metrics.md). Label sets are bounded: shard
//! numbers, close and error codes, routes, reasons — never a channel or user name.
//!
//! Per-delivery counts are kept in shard-local plain integers and added here once per batch, so
//! the fan-out loop touches no shared cache line per subscriber.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub build_info: IntGaugeVec,
    pub sockets: IntGaugeVec,
    pub socket_capacity: IntGauge,
    pub connects: IntCounter,
    pub disconnects: IntCounterVec,
    pub handshake_failures: IntCounterVec,
    pub proxy_requests: IntCounterVec,
    pub sse_streams: IntGauge,
    pub pusher_connections: IntGaugeVec,
    pub pusher_events: IntCounterVec,
    pub subscriptions: IntGaugeVec,
    pub channels: IntGaugeVec,
    pub client_commands: IntCounterVec,
    pub client_errors: IntCounterVec,
    pub publications: IntCounterVec,
    pub deliveries: IntCounter,
    pub bytes_out: IntCounter,
    pub delivery_latency: Histogram,
    pub outbound_queue_bytes: IntGaugeVec,
    pub slow_consumer_closes: IntCounter,
    pub protocol_errors: IntCounterVec,
    pub inbox_backlog: IntGauge,
    pub connection_panics: IntCounter,
    pub broker_up: IntGauge,
    pub broker_latency: HistogramVec,
    pub broker_errors: IntCounterVec,
    pub broker_reconnects: IntCounter,
    pub broker_resubscribes: IntCounter,
    pub scheduled_pending: IntGauge,
    pub api_requests: IntCounterVec,
    pub draining: IntGauge,
    pub webhook_events: IntCounterVec,
    pub webhook_requests: IntCounterVec,
    pub webhook_retries: IntCounter,
    pub webhook_queue: IntGauge,
    pub webhook_duration: Histogram,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric");
    r.register(Box::new(c.clone())).expect("register");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
    r.register(Box::new(c.clone())).expect("register");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric");
    r.register(Box::new(g.clone())).expect("register");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric");
    r.register(Box::new(g.clone())).expect("register");
    g
}

/// Latency buckets from 50 µs to 10 s: fan-out on one node lives in the sub-millisecond range,
/// cross-node delivery through Redis in single milliseconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let build_info = gauge_vec(
            &r,
            "ferrocast_build_info",
            "Build information; always 1.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let delivery_latency = Histogram::with_opts(
            HistogramOpts::new(
                "ferrocast_delivery_latency_seconds",
                "Publication accepted by the node to the last socket write on a shard.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("metric");
        r.register(Box::new(delivery_latency.clone()))
            .expect("register");
        let broker_latency = HistogramVec::new(
            HistogramOpts::new(
                "ferrocast_broker_latency_seconds",
                "Broker operation latency.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["op"],
        )
        .expect("metric");
        r.register(Box::new(broker_latency.clone()))
            .expect("register");
        let webhook_duration = Histogram::with_opts(
            HistogramOpts::new(
                "ferrocast_webhook_request_duration_seconds",
                "Webhook requests, from sending to the receiver's answer (or the timeout).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("metric");
        r.register(Box::new(webhook_duration.clone()))
            .expect("register");
        Metrics {
            build_info,
            sockets: gauge_vec(&r, "ferrocast_sockets", "Open WebSocket connections.", &["shard"]),
            socket_capacity: gauge(
                &r,
                "ferrocast_socket_capacity",
                "Sockets this process can hold (RLIMIT_NOFILE less a reserve).",
            ),
            connects: counter(&r, "ferrocast_connects_total", "WebSocket connections accepted."),
            disconnects: counter_vec(
                &r,
                "ferrocast_disconnects_total",
                "WebSocket connections closed, by close code (1006 = closed without a close frame).",
                &["code"],
            ),
            handshake_failures: counter_vec(
                &r,
                "ferrocast_handshake_failures_total",
                "Connections that did not become WebSockets, by reason.",
                &["reason"],
            ),
            proxy_requests: counter_vec(
                &r,
                "ferrocast_proxy_requests_total",
                "Subscribe and publish proxy calls, by proxy and outcome (allowed, refused, unavailable).",
                &["proxy", "result"],
            ),
            sse_streams: gauge(
                &r,
                "ferrocast_sse_streams",
                "Open SSE streams (GET /sse); they also count in ferrocast_sockets.",
            ),
            pusher_connections: gauge_vec(
                &r,
                "ferrocast_pusher_connections",
                "Open Pusher protocol connections (/app/{key}), by app; they also count in ferrocast_sockets.",
                &["app"],
            ),
            pusher_events: counter_vec(
                &r,
                "ferrocast_pusher_events_total",
                "Pusher events published, by app and source (api = HTTP API, client = client-* events).",
                &["app", "source"],
            ),
            subscriptions: gauge_vec(&r, "ferrocast_subscriptions", "Client subscriptions.", &["shard"]),
            channels: gauge_vec(&r, "ferrocast_channels", "Channels with local subscribers.", &["shard"]),
            client_commands: counter_vec(
                &r,
                "ferrocast_client_commands_total",
                "Commands received from clients.",
                &["command"],
            ),
            client_errors: counter_vec(
                &r,
                "ferrocast_client_errors_total",
                "Error replies sent to clients, by error code.",
                &["code"],
            ),
            publications: counter_vec(
                &r,
                "ferrocast_publications_total",
                "Publications accepted, by source (api, client, broker, scheduled).",
                &["source"],
            ),
            deliveries: counter(&r, "ferrocast_deliveries_total", "Frames queued to client sockets."),
            bytes_out: counter(&r, "ferrocast_bytes_out_total", "Bytes written to client sockets."),
            delivery_latency,
            outbound_queue_bytes: gauge_vec(
                &r,
                "ferrocast_outbound_queue_bytes",
                "Bytes queued for client sockets and not yet written.",
                &["shard"],
            ),
            slow_consumer_closes: counter(
                &r,
                "ferrocast_slow_consumer_closes_total",
                "Connections closed with 4005 because their outbound queue passed its limit.",
            ),
            protocol_errors: counter_vec(
                &r,
                "ferrocast_protocol_errors_total",
                "Connections failed for breaking RFC 6455 or a frame limit, by kind.",
                &["kind"],
            ),
            inbox_backlog: gauge(
                &r,
                "ferrocast_inbox_backlog",
                "Deliveries waiting in the shards' inboxes (publications are refused past limits.max_inbox_backlog).",
            ),
            connection_panics: counter(
                &r,
                "ferrocast_connection_panics_total",
                "Connection handlers that panicked; the connection was closed and its slot freed.",
            ),
            broker_up: gauge(&r, "ferrocast_broker_up", "1 while the broker is reachable."),
            broker_latency,
            broker_errors: counter_vec(&r, "ferrocast_broker_errors_total", "Failed broker operations.", &["op"]),
            broker_reconnects: counter(&r, "ferrocast_broker_reconnects_total", "Broker reconnections."),
            broker_resubscribes: counter(
                &r,
                "ferrocast_broker_resubscribes_total",
                "Channels resubscribed at the broker after a reconnect or failover.",
            ),
            scheduled_pending: gauge(
                &r,
                "ferrocast_scheduled_pending",
                "Scheduled publications waiting for their time.",
            ),
            api_requests: counter_vec(
                &r,
                "ferrocast_api_requests_total",
                "Server API requests by route and HTTP status.",
                &["route", "status"],
            ),
            draining: gauge(&r, "ferrocast_draining", "1 while the node drains for shutdown."),
            webhook_events: counter_vec(
                &r,
                "ferrocast_webhook_events_total",
                "Webhook events by name and outcome: sent (a 2xx answer), failed (retries exhausted), dropped (queue full).",
                &["event", "result"],
            ),
            webhook_requests: counter_vec(
                &r,
                "ferrocast_webhook_requests_total",
                "Webhook requests by outcome (ok = 2xx, status = another HTTP status, timeout, error).",
                &["result"],
            ),
            webhook_retries: counter(
                &r,
                "ferrocast_webhook_retries_total",
                "Webhook requests sent again after a failed attempt.",
            ),
            webhook_queue: gauge(
                &r,
                "ferrocast_webhook_queue",
                "Webhook events waiting to be sent (bounded by webhooks.queue_size).",
            ),
            webhook_duration,
            registry: r,
        }
        .with_known_labels()
    }

    /// Creates every known label value at zero, so dashboards and alerts see a series (a rate
    /// of 0) from the first scrape instead of "no data".
    fn with_known_labels(self) -> Self {
        for reason in [
            "bad_request",
            "timeout",
            "throttled",
            "auth",
            "limit",
            "draining",
            "upgrade",
            "origin",
            "per_ip",
        ] {
            self.handshake_failures.with_label_values(&[reason]);
        }
        for proxy in ["subscribe", "publish"] {
            for result in ["allowed", "refused", "unavailable"] {
                self.proxy_requests.with_label_values(&[proxy, result]);
            }
        }
        for kind in PROTOCOL_ERROR_KINDS {
            self.protocol_errors.with_label_values(&[kind]);
        }
        for source in ["api", "client", "broker", "scheduled"] {
            self.publications.with_label_values(&[source]);
        }
        for code in [
            "1000", "1002", "1006", "1007", "1009", "4000", "4001", "4003", "4004", "4005", "4006",
            "4008", "4009", "4010", "4011",
        ] {
            self.disconnects.with_label_values(&[code]);
        }
        for code in [
            "100", "101", "102", "103", "104", "105", "106", "107", "108", "109", "110", "112",
        ] {
            self.client_errors.with_label_values(&[code]);
        }
        for op in BROKER_OPS {
            self.broker_latency.with_label_values(&[op]);
            self.broker_errors.with_label_values(&[op]);
        }
        for cmd in [
            "connect",
            "refresh",
            "subscribe",
            "unsubscribe",
            "publish",
            "presence",
            "presence_stats",
            "history",
            "ping",
            "invalid",
        ] {
            self.client_commands.with_label_values(&[cmd]);
        }
        for event in crate::config::WEBHOOK_EVENTS {
            for result in ["sent", "failed", "dropped"] {
                self.webhook_events.with_label_values(&[event, result]);
            }
        }
        for result in ["ok", "status", "timeout", "error"] {
            self.webhook_requests.with_label_values(&[result]);
        }
        for route in API_ROUTES {
            self.api_requests.with_label_values(&[&route[5..], "200"]);
        }
        self
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        out
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// Counts a close by code.
pub fn count_close(code: u16) {
    metrics()
        .disconnects
        .with_label_values(&[&code.to_string()])
        .inc();
}

/// The server API's routes (label `route` of `ferrocast_api_requests_total`, as `/api/<route>`).
pub const API_ROUTES: &[&str] = &[
    "/api/publish",
    "/api/broadcast",
    "/api/disconnect",
    "/api/unsubscribe",
    "/api/presence",
    "/api/presence_stats",
    "/api/history",
    "/api/info",
    "/api/cancel",
    "/api/subscribe",
];

/// Every operation label, created at start so dashboards see zeros rather than no series.
pub const BROKER_OPS: &[&str] = &[
    "publish",
    "schedule",
    "cancel",
    "publish_control",
    "history",
    "subscribe",
    "unsubscribe",
    "presence_add",
    "presence_remove",
    "presence",
    "presence_stats",
    "control",
    "nodes",
    "track_join",
    "track_leave",
    "track_refresh",
    "track_sweep",
];

/// The `kind` label values of `ferrocast_protocol_errors_total`.
pub const PROTOCOL_ERROR_KINDS: [&str; 4] = ["protocol", "utf8", "too_big", "frame_rate"];

/// Counts a connection failed by the frame layer.
pub fn count_protocol_error(kind: &str) {
    metrics().protocol_errors.with_label_values(&[kind]).inc();
}

/// Counts an error reply by code.
pub fn count_error(code: u16) {
    metrics()
        .client_errors
        .with_label_values(&[&code.to_string()])
        .inc();
}

/// Counts a subscribe or publish proxy call by its outcome.
pub fn count_proxy<T>(proxy: &str, outcome: &Result<T, crate::protocol::ClientError>) {
    let result = match outcome {
        Ok(_) => "allowed",
        Err(crate::protocol::ClientError::NotAvailable) => "unavailable",
        Err(_) => "refused",
    };
    metrics()
        .proxy_requests
        .with_label_values(&[proxy, result])
        .inc();
}
