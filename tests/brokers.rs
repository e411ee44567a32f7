//! The broker suite: one set of behaviours run against every broker — `memory`, a standalone
//! Redis and a 6-node Redis Cluster (real `redis-server` processes on loopback) — then the fleet
//! cases only Redis has: two nodes sharing channels, one user's devices on both, presence across
//! nodes, a master failover under a steady publication stream, and Redis going away entirely.

mod common;

use std::time::{Duration, SystemTime};

use common::redis::{cli, standalone, Cluster, RedisProc};

#[allow(unused_imports)]
use common::redis as _r;
use common::*;
use serde_json::{json, Value};

enum Backing {
    Memory,
    Redis(RedisProc),
    Cluster(Cluster),
}

impl Backing {
    fn toml(&self) -> String {
        let urls = |u: Vec<String>| {
            u.iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Backing::Memory => "[broker]\nkind = \"memory\"\n".into(),
            Backing::Redis(r) => format!(
                "[broker]\nkind = \"redis\"\nurls = [{}]\nposition_check_interval = \"500ms\"\n",
                urls(vec![r.url()])
            ),
            Backing::Cluster(c) => format!(
                "[broker]\nkind = \"redis-cluster\"\nurls = [{}]\nposition_check_interval = \"500ms\"\n",
                urls(c.urls())
            ),
        }
    }
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
    suite(&Backing::Memory.toml()).await;
}

#[tokio::test]
async fn suite_standalone_redis() {
    let redis = Backing::Redis(standalone());
    suite(&redis.toml()).await;
}

#[tokio::test]
async fn suite_redis_cluster() {
    let cluster = Backing::Cluster(Cluster::start());
    suite(&cluster.toml()).await;
}
