//! The broker suite: one set of behaviours run against every broker — `memory`, a standalone
//! Redis and a 6-node Redis Cluster (real `redis-server` processes on loopback) — then the fleet
//! cases only Redis has: two nodes sharing channels, one user's devices on both, presence across
//! nodes, a master failover under a steady publication stream, and Redis going away entirely.

mod common;

use std::time::{Duration, SystemTime};

use common::redis::{cli, standalone, Cluster, RedisProc};
use common::*;
use serde_json::{json, Value};

const MEMORY: &str = "[broker]\nkind = \"memory\"\n";

fn urls(u: Vec<String>) -> String {
    u.iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn redis_toml(r: &RedisProc) -> String {
    format!(
        "[broker]\nkind = \"redis\"\nurls = [{}]\nposition_check_interval = \"500ms\"\n",
        urls(vec![r.url()])
    )
}

fn cluster_toml(c: &Cluster) -> String {
    format!(
        "[broker]\nkind = \"redis-cluster\"\nurls = [{}]\nposition_check_interval = \"500ms\"\n",
        urls(c.urls())
    )
}

fn pub_n(v: &Value) -> u64 {
    v["pub"]["data"]["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("publication with data.n: {v}"))
}

/// Every behaviour the node relies on from its broker, on one node.
async fn suite(broker: &str) {
    let server = Server::start(broker).await;

    // Publish → subscriber, offsets grow from 1, the API answers the position.
    let mut a = server.connect("17").await;
    let sub = a.subscribe(1, "room:s").await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    assert_eq!(sub["offset"], 0, "fresh stream: {sub}");
    for n in 1..=3u64 {
        let r = server.publish("room:s", json!({"n": n})).await;
        assert_eq!(r["offset"], n, "{r}");
        assert_eq!(r["epoch"], epoch.as_str(), "{r}");
        let (p, _) = a.recv_pub("room:s", SHORT).await;
        assert_eq!(pub_n(&p), n);
        assert_eq!(p["pub"]["offset"], n);
    }

    // History: all of it, a limit, since a position; a wrong epoch is unrecoverable.
    let (st, h) = server
        .api("history", json!({"channel": "room:s", "limit": 2}))
        .await;
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["offset"], 3);
    let offs: Vec<u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offs, vec![2, 3], "the most recent two: {h}");
    let (st, h) = server
        .api(
            "history",
            json!({"channel": "room:s", "since": {"offset": 1, "epoch": epoch}}),
        )
        .await;
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["publications"].as_array().unwrap().len(), 2, "{h}");
    let (st, h) = server
        .api(
            "history",
            json!({"channel": "room:s", "since": {"offset": 1, "epoch": "other"}}),
        )
        .await;
    assert_eq!((st, h["error"]["code"].as_i64()), (409, Some(112)), "{h}");

    // Recovery after a disconnect: exactly the missed ones, in order; wrong epoch → false.
    a.close().await;
    for n in 4..=6u64 {
        server.publish("room:s", json!({"n": n})).await;
    }
    let mut a = server.connect("17").await;
    let r = a
        .ok(
            2,
            json!({"subscribe": {"channel": "room:s", "recover": {"offset": 3, "epoch": epoch}}}),
        )
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    let got: Vec<u64> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![4, 5, 6], "{r}");
    a.assert_no_pub(QUIET, "nothing live after recovery").await;
    let r = a
        .ok(
            3,
            json!({"subscribe": {"channel": "room:s2", "recover": {"offset": 3, "epoch": "nope"}}}),
        )
        .await;
    assert_eq!(r["recovered"], false, "{r}");

    // Idempotency: the same key twice is one publication.
    let r1 = server
        .api(
            "publish",
            json!({"channel": "room:s", "data": {"n": 7}, "idempotency_key": "k-7"}),
        )
        .await
        .1;
    let r2 = server
        .api(
            "publish",
            json!({"channel": "room:s", "data": {"n": 7}, "idempotency_key": "k-7"}),
        )
        .await
        .1;
    assert_eq!(r1["offset"], r2["offset"], "{r1} {r2}");
    let (p, _) = a.recv_pub("room:s", SHORT).await;
    assert_eq!(pub_n(&p), 7);
    a.assert_no_pub(QUIET, "one delivery for one idempotency key")
        .await;

    // Presence and join/leave, client publish.
    let mut b = server.connect("18").await;
    b.subscribe(1, "room:s").await;
    let j = a.recv_matching(SHORT, |v| v.get("join").is_some()).await.0;
    assert_eq!(j["join"]["user"], "18", "{j}");
    let (st, pr) = server.api("presence", json!({"channel": "room:s"})).await;
    assert_eq!(st, 200, "{pr}");
    let users: Vec<String> = pr["clients"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["user"].as_str().unwrap().to_string())
        .collect();
    assert!(
        users.contains(&"17".into()) && users.contains(&"18".into()),
        "{pr}"
    );
    let (_, stats) = server
        .api("presence_stats", json!({"channel": "room:s"}))
        .await;
    assert_eq!(stats, json!({"clients": 2, "users": 2}));
    b.ok(
        5,
        json!({"publish": {"channel": "room:s", "data": {"n": 8}}}),
    )
    .await;
    let (p, _) = a.recv_pub("room:s", SHORT).await;
    assert_eq!(pub_n(&p), 8);
    assert_eq!(p["pub"]["info"]["user"], "18", "{p}");
    b.close().await;
    let l = a.recv_matching(SHORT, |v| v.get("leave").is_some()).await.0;
    assert_eq!(l["leave"]["user"], "18", "{l}");
    assert!(
        eventually(SHORT, || async {
            server
                .api("presence_stats", json!({"channel": "room:s"}))
                .await
                .1
                == json!({"clients": 1, "users": 1})
        })
        .await,
        "presence drops the one who left"
    );

    // Scheduled publication: once, close to its time.
    let due = SystemTime::now() + Duration::from_millis(600);
    let at = time_rfc3339(due);
    let (st, r) = server
        .api(
            "publish",
            json!({"channel": "room:s", "data": {"n": 9}, "deliver_at": at}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let (p, _) = a.recv_pub("room:s", Duration::from_secs(5)).await;
    let late = SystemTime::now().duration_since(due).unwrap_or_default();
    assert_eq!(pub_n(&p), 9);
    assert!(late <= Duration::from_millis(150), "late by {late:?}");
    a.assert_no_pub(Duration::from_millis(500), "delivered once")
        .await;

    // A scheduled publication can be cancelled while it waits, once.
    let at = time_rfc3339(SystemTime::now() + Duration::from_millis(700));
    let (_, r) = server
        .api(
            "publish",
            json!({"channel": "room:s", "data": {"n": 99}, "deliver_at": at}),
        )
        .await;
    let id = r["scheduled"].as_str().unwrap().to_string();
    let (st, _) = server.api("cancel", json!({"id": id})).await;
    assert_eq!(st, 200);
    let (st, body) = server.api("cancel", json!({"id": id})).await;
    assert_eq!(
        (st, body["error"]["code"].as_i64()),
        (404, Some(107)),
        "{body}"
    );
    a.assert_no_pub(
        Duration::from_millis(1200),
        "a cancelled publication never arrives",
    )
    .await;

    // Fleet commands: disconnect a user.
    let (st, _) = server
        .api("disconnect", json!({"user": "17", "code": 4000}))
        .await;
    assert_eq!(st, 200);
    let (code, _) = a.expect_close(SHORT).await;
    assert_eq!(code, 4000);

    // The node lists itself in /api/info.
    let (st, info) = server.api("info", json!({})).await;
    assert_eq!(st, 200, "{info}");
    assert!(info.to_string().contains(NODE_NAME), "{info}");
}

fn time_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let dt = time::OffsetDateTime::from_unix_timestamp_nanos(d.as_nanos() as i128).unwrap();
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn suite_memory() {
    suite(MEMORY).await;
}

#[tokio::test]
async fn suite_standalone_redis() {
    let redis = standalone();
    suite(&redis_toml(&redis)).await;
}

#[tokio::test]
async fn suite_redis_cluster() {
    let cluster = Cluster::start();
    suite(&cluster_toml(&cluster)).await;
}

// ---- the fleet: two nodes on one Redis Cluster ------------------------------------------------------

#[tokio::test]
async fn two_nodes_share_channels_users_and_presence_through_the_cluster() {
    let cluster = Cluster::start();
    let toml = cluster_toml(&cluster);
    let a = Server::start(&toml).await;
    let b = Server::start(&toml).await;

    // A publication through node A reaches a subscriber on node B, and the other way round.
    let mut on_b = b.connect("1").await;
    on_b.subscribe(1, "room:f").await;
    let mut on_a = a.connect("2").await;
    on_a.subscribe(1, "room:f").await;
    let j = on_b
        .recv_matching(SHORT, |v| v["join"]["user"] == "2")
        .await
        .0;
    assert_eq!(j["channel"], "room:f", "join crosses nodes: {j}");
    a.publish("room:f", json!({"n": 1})).await;
    b.publish("room:f", json!({"n": 2})).await;
    for c in [&mut on_a, &mut on_b] {
        let got: Vec<u64> = vec![
            pub_n(&c.recv_pub("room:f", SHORT).await.0),
            pub_n(&c.recv_pub("room:f", SHORT).await.0),
        ];
        assert_eq!(got, vec![1, 2], "same order on both nodes");
    }

    // One user, a device on each node: both get every `user:` publication; others are refused.
    let mut phone = a.connect("ada").await;
    let mut laptop = b.connect("ada").await;
    phone.subscribe(1, "user:ada").await;
    laptop.subscribe(1, "user:ada").await;
    let mut eve = b.connect("eve").await;
    assert_eq!(
        eve.err_code(1, json!({"subscribe": {"channel": "user:ada"}}))
            .await,
        103
    );
    for n in 1..=5u64 {
        let via = if n % 2 == 0 { &a } else { &b };
        via.publish("user:ada", json!({"n": n})).await;
    }
    for dev in [&mut phone, &mut laptop] {
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(pub_n(&dev.recv_pub("user:ada", SHORT).await.0));
        }
        assert_eq!(got, vec![1, 2, 3, 4, 5]);
    }

    // Presence sees members of both nodes, from either node's API.
    for server in [&a, &b] {
        let (_, stats) = server
            .api("presence_stats", json!({"channel": "room:f"}))
            .await;
        assert_eq!(stats, json!({"clients": 2, "users": 2}), "{stats}");
    }
    // A fleet command reaches the other node's sockets.
    a.api("disconnect", json!({"user": "1", "code": 4000}))
        .await;
    assert_eq!(on_b.expect_close(SHORT).await.0, 4000);
    // Both nodes are listed.
    let (_, info) = a.api("info", json!({})).await;
    assert!(
        eventually(Duration::from_secs(8), || async {
            let (_, info) = b.api("info", json!({})).await;
            info.to_string().matches(NODE_NAME).count() >= 2
        })
        .await,
        "both nodes in /api/info: {info}"
    );
}

/// A subscriber that follows a channel like a robust client: tracks (offset, epoch), and
/// resubscribes with `recover` when told to or when it sees a gap.
struct Follower {
    c: Client,
    channel: String,
    epoch: String,
    last: u64,
    seen: Vec<u64>,
    id: u64,
    epoch_changes: u32,
    /// The offset of the last subscribe reply, until a live publication after it arrived.
    fresh: Option<u64>,
}

impl Follower {
    async fn new(server: &Server, user: &str, channel: &str) -> Follower {
        let mut c = server.connect(user).await;
        let r = c.subscribe(1, channel).await;
        Follower {
            c,
            channel: channel.into(),
            epoch: r["epoch"].as_str().unwrap().into(),
            last: r["offset"].as_u64().unwrap(),
            seen: Vec::new(),
            id: 10,
            epoch_changes: 0,
            fresh: r["offset"].as_u64(),
        }
    }

    /// Unsubscribes and subscribes again with recovery. A failover changes the stream's epoch
    /// (protocol §11.4): recovery from the old epoch fails, and the follower goes on from the
    /// start of the new one (where every publication after the failover is).
    async fn resubscribe(&mut self) {
        let r = loop {
            self.id += 2;
            let _ = self
                .c
                .command(self.id, json!({"unsubscribe": {"channel": self.channel}}))
                .await;
            let r = loop {
                self.id += 1;
                let r = self
                    .c
                    .command(
                        self.id,
                        json!({"subscribe": {"channel": self.channel,
                            "recover": {"offset": self.last, "epoch": self.epoch}}}),
                    )
                    .await;
                if r.get("result").is_some() {
                    break r["result"].clone();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            if r["recovered"] == true {
                break r;
            }
            let epoch = r["epoch"].as_str().unwrap().to_string();
            assert_ne!(
                epoch, self.epoch,
                "recovery fails only across an epoch change: {r}"
            );
            self.epoch = epoch;
            self.last = 0;
            self.epoch_changes += 1;
        };
        for p in r["publications"].as_array().unwrap() {
            self.take(
                p["offset"].as_u64().unwrap(),
                p["data"]["n"].as_u64().unwrap(),
            );
        }
        self.last = self.last.max(r["offset"].as_u64().unwrap());
        self.fresh = Some(self.last);
    }

    fn take(&mut self, offset: u64, n: u64) {
        if offset > self.last {
            self.last = offset;
            self.seen.push(n);
        }
    }

    /// Reads whatever arrives for `d`.
    async fn pump(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(v) = self.c.try_recv_json(left).await else {
                return;
            };
            if v.get("pub").is_some() {
                let off = v["pub"]["offset"].as_u64().unwrap();
                if self.fresh.is_some_and(|r| off <= r) {
                    continue; // on its way while the subscribe was handled (§11.3)
                }
                self.fresh = None;
                // A gap, or a lower offset: the stream restarted under a new epoch (§11.3, §11.4).
                if off > self.last + 1 || off < self.last {
                    self.resubscribe().await;
                    continue;
                }
                self.take(off, v["pub"]["data"]["n"].as_u64().unwrap());
            } else if v["unsubscribe"]["resubscribe"] == true {
                self.resubscribe().await;
            }
        }
    }
}

#[tokio::test]
async fn failover_loses_nothing_and_nodes_resubscribe() {
    let mut cluster = Cluster::start();
    let toml = cluster_toml(&cluster);
    let a = Server::start(&toml).await;
    let b = Server::start(&toml).await;
    let channel = "room:busy";
    let mut fa = Follower::new(&a, "1", channel).await;
    let mut fb = Follower::new(&b, "2", channel).await;
    let master = cluster.master_of(&format!("ferrocast:{{{channel}}}"));

    // Steady stream through node A's API; a publish refused during the failover (503) is
    // retried with its idempotency key, so each n is accepted exactly once.
    let api = a.public_url();
    let publisher = tokio::spawn(async move {
        let http = http();
        let mut n = 0u64;
        let start = std::time::Instant::now();
        let mut refused = 0;
        while start.elapsed() < Duration::from_secs(9) {
            n += 1;
            loop {
                let r = http
                    .post(format!("{api}/api/publish"))
                    .header("Authorization", format!("apikey {API_KEY}"))
                    .json(&json!({"channel": "room:busy", "data": {"n": n},
                                  "idempotency_key": format!("n-{n}")}))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 200 => break,
                    Ok(r) => {
                        assert_eq!(r.status().as_u16(), 503, "only 503 while failing over");
                        let body: Value = r.json().await.unwrap();
                        assert_eq!(body["error"]["code"], 108, "{body}");
                        refused += 1;
                    }
                    Err(_) => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (n, refused)
    });

    fa.pump(Duration::from_millis(1500)).await;
    fb.pump(Duration::from_millis(10)).await;
    cluster.node_mut(master).kill();
    let killed = std::time::Instant::now();
    // Until the replica is promoted and the cluster heals.
    let mut promoted = None;
    while killed.elapsed() < Duration::from_secs(20) {
        fa.pump(Duration::from_millis(100)).await;
        fb.pump(Duration::from_millis(100)).await;
        let live = cluster.nodes.iter().find(|n| n.port != master).unwrap();
        let info = cli(live.port, &["CLUSTER", "INFO"]);
        let owner = cluster.try_master_of(&format!("ferrocast:{{{channel}}}"));
        if info.contains("cluster_state:ok") && owner.is_some_and(|p| p != master) {
            promoted = Some(std::time::Instant::now());
            break;
        }
    }
    let promoted = promoted.unwrap_or_else(|| {
        let live = cluster.nodes.iter().find(|n| n.port != master).unwrap();
        panic!(
            "no replica promoted {:?} after killing {master}:\n{}\n{}",
            killed.elapsed(),
            cli(live.port, &["CLUSTER", "INFO"]),
            cli(live.port, &["CLUSTER", "NODES"])
        )
    });
    // Keep reading while the stream goes on.
    while !publisher.is_finished() {
        fa.pump(Duration::from_millis(100)).await;
        fb.pump(Duration::from_millis(100)).await;
    }
    let (total, refused) = publisher.await.unwrap();
    // Live delivery resumed within 5 s of the promotion: a marker published now arrives live.
    let since = promoted.elapsed();
    let marker = total + 1;
    let r = a
        .api(
            "publish",
            json!({"channel": channel, "data": {"n": marker}}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    for f in [&mut fa, &mut fb] {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while f.seen.last() != Some(&marker) && std::time::Instant::now() < deadline {
            f.pump(Duration::from_millis(100)).await;
        }
        assert_eq!(
            f.seen.last(),
            Some(&marker),
            "live again within 5 s, {since:?} after promotion"
        );
    }
    // Catch up with recovery from the last offset each holds, then compare.
    for f in [&mut fa, &mut fb] {
        f.resubscribe().await;
        let want: Vec<u64> = (1..=marker).collect();
        assert_eq!(
            f.seen, want,
            "every publication exactly once, in order ({refused} publishes refused during failover)"
        );
        assert!(
            f.epoch_changes >= 1,
            "the failover changed the stream's epoch (protocol §11.4)"
        );
    }
    assert!(
        a.metric_value("ferrocast_broker_reconnects_total").await
            + b.metric_value("ferrocast_broker_reconnects_total").await
            >= 1.0,
        "reconnects counted"
    );
}

#[tokio::test]
async fn redis_down_fails_publishes_keeps_sockets_and_recovers_by_itself() {
    let mut redis = standalone();
    let toml = format!("{}command_timeout = \"500ms\"\n", redis_toml(&redis));
    let server = Server::start(&toml).await;
    let mut c = server.connect("1").await;
    c.subscribe(1, "room:d").await;
    let first = server.publish("room:d", json!({"n": 1})).await;
    assert_eq!(pub_n(&c.recv_pub("room:d", SHORT).await.0), 1);

    redis.kill();
    let (st, body) = server
        .api("publish", json!({"channel": "room:d", "data": {"n": 2}}))
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_i64()),
        (503, Some(108)),
        "{body}"
    );
    assert!(
        eventually(SHORT, || async {
            server.try_admin_status("/health/ready").await == Some(503)
        })
        .await,
        "not ready while Redis is down"
    );
    // Sockets stay, and local commands answer.
    c.ok(5, json!({"ping": {}})).await;
    assert!(server.metric_value("ferrocast_broker_errors_total").await >= 1.0);

    redis.start();
    assert!(
        eventually(Duration::from_secs(10), || async {
            server.try_admin_status("/health/ready").await == Some(200)
        })
        .await,
        "ready again once Redis is back"
    );
    // Service resumes: the node re-subscribed by itself (the new Redis starts a new epoch).
    assert!(
        eventually(Duration::from_secs(5), || async {
            server
                .api("publish", json!({"channel": "room:d", "data": {"n": 3}}))
                .await
                .0
                == 200
        })
        .await
    );
    // The new stream's first publication goes out live, unless the node can't tell it from the
    // next one of the old stream (an attempt that timed out got offset 1, the retry offset 2):
    // then the subscribers are told to resubscribe and recover (protocol §11.4).
    let (p, _) = c
        .recv_matching(Duration::from_secs(5), |v| {
            v["channel"] == "room:d"
                && (v.get("pub").is_some() || v["unsubscribe"]["resubscribe"] == json!(true))
        })
        .await;
    if p.get("pub").is_some() {
        assert_eq!(pub_n(&p), 3);
    } else {
        let r = c
            .ok(
                6,
                json!({"subscribe": {"channel": "room:d",
                    "recover": {"offset": 1, "epoch": first["epoch"]}}}),
            )
            .await;
        assert_eq!(r["recovered"], false, "{r}");
        let h = c.ok(7, json!({"history": {"channel": "room:d"}})).await;
        assert!(
            h["publications"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["data"]["n"] == 3),
            "{h}"
        );
    }
    assert!(
        server
            .metric_value("ferrocast_broker_reconnects_total")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_burst_of_subscriptions_is_batched_and_unsubscribed_when_the_last_leaves() {
    let redis = standalone();
    let server = Server::start(&redis_toml(&redis)).await;
    let n = 300;
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(server.connect(&format!("u{i}")).await);
    }
    // Everyone subscribes at once; replies are collected afterwards.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send_json(json!({"id": 1, "subscribe": {"channel": format!("user:u{i}")}}))
            .await;
    }
    for c in clients.iter_mut() {
        let r = c.recv_matching(SHORT, |v| v["id"] == 1).await.0;
        assert!(r.get("result").is_some(), "{r}");
    }
    let shard_channels = || {
        cli(redis.port, &["PUBSUB", "SHARDCHANNELS", "ferrocast:*"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    };
    assert_eq!(
        shard_channels(),
        n + 1,
        "one per user channel, plus fleet commands"
    );
    let stats = cli(redis.port, &["INFO", "commandstats"]);
    let calls: usize = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_ssubscribe:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no ssubscribe stats: {stats}"));
    assert!(
        calls < n / 2,
        "{n} subscriptions arriving at once went out in batches, not {calls} commands"
    );
    for c in clients {
        c.close().await;
    }
    assert!(
        eventually(SHORT, || async { shard_channels() == 1 }).await,
        "unsubscribed when the last subscriber left: {} left",
        shard_channels()
    );
}

#[tokio::test]
async fn scheduled_publications_are_delivered_once_by_a_fleet() {
    let cluster = Cluster::start();
    let toml = cluster_toml(&cluster);
    let a = Server::start(&toml).await;
    let b = Server::start(&toml).await;
    let mut c = b.connect("1").await;
    c.subscribe(1, "room:sched").await;
    let base = SystemTime::now() + Duration::from_millis(500);
    let n = 40u64;
    for i in 1..=n {
        let at = time_rfc3339(base + Duration::from_millis(i * 10));
        let via = if i % 2 == 0 { &a } else { &b };
        let (st, r) = via
            .api(
                "publish",
                json!({"channel": "room:sched", "data": {"n": i}, "deliver_at": at}),
            )
            .await;
        assert_eq!(st, 200, "{r}");
    }
    let mut got = Vec::new();
    while let Some(v) = c.try_recv_json(Duration::from_secs(2)).await {
        if v.get("pub").is_some() {
            got.push(pub_n(&v));
        }
    }
    got.sort_unstable();
    assert_eq!(got, (1..=n).collect::<Vec<_>>(), "each exactly once");
}
