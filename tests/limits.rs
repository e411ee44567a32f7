//! Limits: slow consumers (4005), frame size (4009), subscriptions per connection (106), command
//! rate (110), connections per node (4008), publications larger than a client's queue (106/413).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::sync::{mpsc, watch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_4005_while_a_normal_subscriber_gets_everything() {
    // max_message_size must stay below outbound_queue_bytes (config validation).
    let server =
        Server::start("[limits]\noutbound_queue_bytes = 65536\nmax_message_size = 16384\n").await;
    let ch = "chat:firehose";

    // The slow one: a tiny receive buffer, subscribes, then never reads again.
    let mut slow = ws_connect_with(
        &server.ws_url(Some(&token("slow", 3600, &[]))),
        &[],
        Some(4096),
    )
    .await;
    let push = slow.recv_json(SHORT).await;
    assert!(push.get("connected").is_some(), "{push}");
    slow.subscribe(1, ch).await;

    // The normal one reads everything in its own task and reports each publication's `n`, and
    // how many it has read so far (the publisher paces itself on that).
    let mut normal = server.connect("normal").await;
    normal.subscribe(1, ch).await;
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let (count_tx, mut count_rx) = watch::channel(0u64);
    let reader = tokio::spawn(async move {
        let mut received = 0u64;
        loop {
            match normal.next_event(Duration::from_secs(15)).await {
                Event::Json(v, _) => {
                    if let Some(n) = v["pub"]["data"]["n"].as_u64() {
                        received += 1;
                        count_tx.send_replace(received);
                        if tx.send(n).is_err() {
                            return normal;
                        }
                    }
                }
                other => panic!("normal subscriber after {received} publications: {other:?}"),
            }
        }
    });

    // 8 KiB publications until the server gives up on the slow one (kernel buffers on loopback
    // can hold a few MiB first). The publisher stays at most WINDOW publications ahead of the
    // normal subscriber, so that one is never slow itself, however busy the two CPUs are: the
    // server may queue at most 64 KiB for it, and the test must not outrun its own reader.
    const WINDOW: u64 = 4;
    let pad = "x".repeat(8 * 1024);
    let mut published = 0u64;
    let started = Instant::now();
    let mut closed = false;
    while published < 4000 {
        let ahead = published;
        tokio::time::timeout(
            Duration::from_secs(10),
            count_rx.wait_for(|&got| got + WINDOW > ahead),
        )
        .await
        .unwrap_or_else(|_| panic!("the normal subscriber stalled at {published}"))
        .expect("normal reader alive");
        server
            .publish(ch, json!({"n": published, "pad": pad}))
            .await;
        published += 1;
        if published % 25 == 0
            && server
                .metric_value("ferrocast_slow_consumer_closes_total")
                .await
                >= 1.0
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "no slow-consumer close after {published} publications of 8 KiB ({:?})",
        started.elapsed()
    );
    assert_eq!(
        server
            .metric_value("ferrocast_slow_consumer_closes_total")
            .await,
        1.0,
        "only the slow consumer was closed"
    );
    // Counted by close code too (when the connection is torn down).
    server
        .wait_metric(
            "ferrocast_disconnects_total{code=\"4005\"}",
            |v| v >= 1.0,
            SHORT,
        )
        .await;
    // The node keeps publishing to the normal subscriber after the close.
    for _ in 0..5 {
        server
            .publish(ch, json!({"n": published, "pad": pad}))
            .await;
        published += 1;
    }

    // The normal subscriber got every publication, in order.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while (got.len() as u64) < published {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(n)) => got.push(n),
            _ => break,
        }
    }
    assert_eq!(
        got.len() as u64,
        published,
        "normal subscriber received {} of {published}",
        got.len()
    );
    assert!(
        got.iter().enumerate().all(|(i, n)| i as u64 == *n),
        "in order"
    );
    drop(rx);
    reader.abort();

    // If the slow one reads now, what it finds after its backlog is a 4005 (or a cut connection).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match slow.next_event(left).await {
            Event::Json(..) => continue,
            Event::Close(code, _) => {
                assert_eq!(code, 4005, "slow consumer close code");
                break;
            }
            Event::Ended(_) => break,
            Event::Timeout => panic!("slow consumer still open after the close was counted"),
        }
    }
}

#[tokio::test]
async fn frame_over_max_message_size_closes_4009() {
    let server = Server::start("[limits]\nmax_message_size = 1024\n").await;
    let mut bystander = server.connect("18").await;
    let mut c = server.connect("17").await;
    // Under the limit: fine.
    let reply = c
        .command(1, json!({"ping": {}, "pad": "x".repeat(900)}))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    // Over it: closed.
    c.send_json(json!({"id": 2, "ping": {}, "pad": "x".repeat(2000)}))
        .await;
    let (code, _) = c.expect_close(SHORT).await;
    assert_eq!(code, 4009);
    bystander.ok(1, json!({"ping": {}})).await;
    server
        .wait_metric(
            "ferrocast_disconnects_total{code=\"4009\"}",
            |v| v >= 1.0,
            SHORT,
        )
        .await;
}

#[tokio::test]
async fn subscriptions_over_max_subscriptions_are_106() {
    let server = Server::start("[limits]\nmax_subscriptions = 2\n").await;
    let mut c = server.connect("17").await;
    c.subscribe(1, "room:a").await;
    c.subscribe(2, "room:b").await;
    let code = c
        .err_code(3, json!({"subscribe": {"channel": "room:c"}}))
        .await;
    assert_eq!(code, 106);
    // Freeing one makes room again.
    c.ok(4, json!({"unsubscribe": {"channel": "room:a"}})).await;
    c.subscribe(5, "room:c").await;
}

#[tokio::test]
async fn commands_over_the_rate_are_110() {
    let server = Server::start("[limits]\ncommands_per_second = 5\n").await;
    let mut c = server.connect("17").await;
    let total = 20u64;
    // At twice the rate the server closes with 4006, possibly before the whole burst is sent.
    for id in 1..=total {
        if !c.try_send_json(json!({"id": id, "ping": {}})).await {
            break;
        }
    }
    let (mut ok, mut limited) = (0, 0);
    let mut closed = None;
    for _ in 0..total {
        match c.next_event(SHORT).await {
            Event::Json(v, _) if v.get("result").is_some() => ok += 1,
            Event::Json(v, _) => {
                assert_eq!(v["error"]["code"], 110, "{v}");
                limited += 1;
            }
            Event::Close(code, _) => {
                closed = Some(code);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(ok >= 1, "the burst allowance passes some commands");
    assert!(
        limited >= 1,
        "commands over the rate get 110 (ok {ok}, closed {closed:?})"
    );
    if let Some(code) = closed {
        assert_eq!(code, 4006, "a rate-limit close is 4006");
    }
    server
        .wait_metric(
            "ferrocast_client_errors_total{code=\"110\"}",
            |v| v >= 1.0,
            SHORT,
        )
        .await;
}

/// Connects with a token and reports whether it got `connected` (else the close code).
async fn try_connect(server: &Server, user: &str) -> Result<Client, String> {
    let mut c =
        try_ws_connect_with(&server.ws_url(Some(&token(user, 3600, &[]))), &[], None).await?;
    match c.next_event(SHORT).await {
        Event::Json(v, _) if v.get("connected").is_some() => Ok(c),
        Event::Close(code, reason) => Err(format!("close {code} {reason}")),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test]
async fn connections_over_max_connections_are_closed_4008() {
    let server = Server::start("[limits]\nmax_connections = 2\n").await;
    let a = server.connect("1").await;
    let mut b = server.connect("2").await;
    match try_connect(&server, "3").await {
        Ok(_) => panic!("a third connection was accepted with max_connections = 2"),
        Err(why) => assert!(
            why.starts_with("close 4008"),
            "expected close 4008, got {why}"
        ),
    }
    b.ok(1, json!({"ping": {}})).await;
    a.close().await;
    let ok = eventually(SHORT, || async { try_connect(&server, "4").await.is_ok() }).await;
    assert!(ok, "a connection is accepted again once one left");
}

/// The error a publication too large for any subscriber's queue gets (HTTP 413 from the API).
const TOO_LARGE: &str = "publication larger than limits.outbound_queue_bytes";

#[tokio::test]
async fn api_publication_over_outbound_queue_bytes_is_413_106_and_subscribers_stay() {
    let server = Server::start(
        "[limits]\noutbound_queue_bytes = 65536\nmax_message_size = 16384\n\
         [api]\nmax_body_size = 1048576\n",
    )
    .await;
    let ch = "chat:big";
    let mut sub = server.connect("17").await;
    sub.subscribe(1, ch).await;

    // 100 KB of data: its frame could never be queued on any subscriber.
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": ch, "data": {"pad": "x".repeat(100_000)}}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        body,
        json!({"error": {"code": 106, "message": TOO_LARGE}}),
        "refused at publish time"
    );
    // Nothing was published: the stream did not move and nobody was closed.
    sub.assert_no_pub(QUIET, "a refused publication is not delivered")
        .await;
    assert_eq!(
        server
            .metric_value("ferrocast_slow_consumer_closes_total")
            .await,
        0.0
    );
    server
        .wait_metric(
            "ferrocast_client_errors_total{code=\"106\"}",
            |v| v >= 1.0,
            SHORT,
        )
        .await;

    // Still connected, and the next (small) publication arrives.
    sub.ok(2, json!({"ping": {}})).await;
    let r = server.publish(ch, json!({"small": true})).await;
    assert_eq!(r["offset"], 1, "the refused one took no offset: {r}");
    let (p, _) = sub.recv_pub(ch, SHORT).await;
    assert_eq!(p["pub"]["data"], json!({"small": true}));

    // Just under the limit (by the documented bound) is published and delivered.
    let overhead = 128 + ch.len() + r#"{"pad":""}"#.len();
    let fits = "y".repeat(65536 - overhead);
    let (status, body) = server
        .api("publish", json!({"channel": ch, "data": {"pad": fits}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (p, _) = sub.recv_pub(ch, SHORT).await;
    assert_eq!(
        p["pub"]["data"]["pad"].as_str().map(str::len),
        Some(fits.len())
    );
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": ch, "data": {"pad": format!("{fits}y")}}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (413, &json!(106)),
        "{body}"
    );
    sub.ok(3, json!({"ping": {}})).await;
}

#[tokio::test]
async fn client_publication_over_outbound_queue_bytes_is_106_and_subscribers_stay() {
    // The client's frame fits max_message_size, but with the publisher's long user id as `info`
    // the publication would not fit a subscriber's queue.
    let server =
        Server::start("[limits]\noutbound_queue_bytes = 65536\nmax_message_size = 65535\n").await;
    let ch = "chat:big";
    let user = "u".repeat(400);
    let mut publisher = server.connect(&user).await;
    publisher.subscribe(1, ch).await;
    let mut other = server.connect("18").await;
    other.subscribe(1, ch).await;

    let head = json!({"id": 2, "publish": {"channel": ch, "data": ""}}).to_string();
    let pad = "x".repeat(65_500 - head.len());
    let reply = publisher
        .command(2, json!({"publish": {"channel": ch, "data": pad}}))
        .await;
    assert_eq!(
        reply["error"],
        json!({"code": 106, "message": TOO_LARGE}),
        "{reply}"
    );
    for c in [&mut publisher, &mut other] {
        c.assert_no_pub(QUIET, "a refused publication is not delivered")
            .await;
        c.ok(3, json!({"ping": {}})).await;
    }
    publisher
        .ok(4, json!({"publish": {"channel": ch, "data": {"small": 1}}}))
        .await;
    for c in [&mut publisher, &mut other] {
        let (p, _) = c.recv_pub(ch, SHORT).await;
        assert_eq!(p["pub"]["data"], json!({"small": 1}));
    }
    assert_eq!(
        server
            .metric_value("ferrocast_slow_consumer_closes_total")
            .await,
        0.0
    );
}
