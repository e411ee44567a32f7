//! History and recovery: offsets and epochs, subscribe with `recover`, the `history` command and
//! `POST /api/history`, bounded history.

mod common;

use common::*;
use serde_json::{json, Value};

/// Publishes `n` messages `{"n": first..}` through the API; returns their (offset, epoch).
async fn publish_n(server: &Server, channel: &str, first: u64, n: u64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for i in first..first + n {
        let r = server.publish(channel, json!({"n": i})).await;
        let offset = r["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("publish answer has an offset: {r}"));
        let epoch = r["epoch"]
            .as_str()
            .unwrap_or_else(|| panic!("publish answer has an epoch: {r}"))
            .to_string();
        out.push((offset, epoch));
    }
    out
}

fn data_ns(pubs: &Value) -> Vec<u64> {
    pubs.as_array()
        .unwrap_or_else(|| panic!("publications array: {pubs}"))
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect()
}

fn offsets(pubs: &Value) -> Vec<u64> {
    pubs.as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn reconnect_with_recover_gets_exactly_the_missed_publications_in_order() {
    let server = Server::start("").await;
    let ch = "room:rec";
    let mut c = server.connect("17").await;
    let sub = c.subscribe(1, ch).await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();

    let seen = publish_n(&server, ch, 0, 2).await;
    let mut last_offset = 0;
    for (i, (offset, e)) in seen.iter().enumerate() {
        assert_eq!(e, &epoch, "epoch is stable while history lasts");
        let (p, _) = c.recv_pub(ch, SHORT).await;
        assert_eq!(p["pub"]["data"]["n"], i as u64);
        assert_eq!(p["pub"]["offset"], *offset, "pushed offset = API offset");
        last_offset = *offset;
    }
    c.close().await;

    // Away: three publications are missed.
    let missed = publish_n(&server, ch, 2, 3).await;

    let mut c = server.connect("17").await;
    let result = c
        .ok(
            1,
            json!({"subscribe": {"channel": ch, "recover": {"offset": last_offset, "epoch": epoch}}}),
        )
        .await;
    assert_eq!(result["recovered"], true, "recovery result: {result}");
    assert_eq!(result["epoch"], epoch.as_str());
    assert_eq!(
        data_ns(&result["publications"]),
        vec![2, 3, 4],
        "exactly the missed publications, in order: {result}"
    );
    assert_eq!(
        offsets(&result["publications"]),
        missed.iter().map(|(o, _)| *o).collect::<Vec<_>>()
    );
    assert_eq!(result["offset"], missed.last().unwrap().0, "current offset");

    // And live again afterwards, with nothing duplicated in between.
    publish_n(&server, ch, 5, 1).await;
    let (p, _) = c.recv_pub(ch, SHORT).await;
    assert_eq!(
        p["pub"]["data"]["n"], 5,
        "first live publication after recovery"
    );
}

#[tokio::test]
async fn recover_with_nothing_missed_is_recovered_and_empty() {
    let server = Server::start("").await;
    let ch = "room:calm";
    let published = publish_n(&server, ch, 0, 2).await;
    let (offset, epoch) = published.last().unwrap().clone();
    let mut c = server.connect("17").await;
    let result = c
        .ok(
            1,
            json!({"subscribe": {"channel": ch, "recover": {"offset": offset, "epoch": epoch}}}),
        )
        .await;
    assert_eq!(result["recovered"], true, "{result}");
    assert_eq!(result["publications"], json!([]), "{result}");
}

#[tokio::test]
async fn recover_with_wrong_epoch_is_not_recovered() {
    let server = Server::start("").await;
    let ch = "room:epoch";
    let published = publish_n(&server, ch, 0, 3).await;
    let real_epoch = published[0].1.clone();
    let mut c = server.connect("17").await;
    let result = c
        .ok(
            1,
            json!({"subscribe": {"channel": ch, "recover": {"offset": published[0].0, "epoch": "not-the-epoch"}}}),
        )
        .await;
    assert_eq!(result["recovered"], false, "wrong epoch: {result}");
    assert_eq!(
        result["epoch"],
        real_epoch.as_str(),
        "the real epoch is returned"
    );
    assert!(result["offset"].is_u64(), "{result}");
    // Subscribed anyway: live publications arrive.
    publish_n(&server, ch, 3, 1).await;
    let (p, _) = c.recv_pub(ch, SHORT).await;
    assert_eq!(p["pub"]["data"]["n"], 3);
}

#[tokio::test]
async fn recover_from_a_position_older_than_history_is_not_recovered() {
    let server =
        Server::start("[namespaces.small]\nhistory_size = 3\nhistory_ttl = \"1h\"\n").await;
    let ch = "small:x";
    let published = publish_n(&server, ch, 0, 6).await;
    let epoch = published[0].1.clone();
    let mut c = server.connect("17").await;
    let reply = c
        .command(
            1,
            json!({"subscribe": {"channel": ch, "recover": {"offset": published[0].0, "epoch": epoch}}}),
        )
        .await;
    // Either a clear "cannot recover" result or error 112 (unrecoverable position).
    if let Some(code) = reply["error"]["code"].as_i64() {
        assert_eq!(code, 112, "{reply}");
    } else {
        assert_eq!(reply["result"]["recovered"], false, "{reply}");
    }

    // History keeps only the last 3.
    let (status, h) = server
        .api("history", json!({"channel": ch, "limit": 100}))
        .await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(
        data_ns(&h["publications"]),
        vec![3, 4, 5],
        "bounded history: {h}"
    );
}

#[tokio::test]
async fn history_command_with_limit_and_since() {
    let server = Server::start("").await;
    let ch = "room:h";
    let published = publish_n(&server, ch, 0, 5).await;
    let epoch = published[0].1.clone();
    let mut c = server.connect("17").await;
    c.subscribe(1, ch).await;

    let all = c
        .ok(2, json!({"history": {"channel": ch, "limit": 50}}))
        .await;
    assert_eq!(data_ns(&all["publications"]), vec![0, 1, 2, 3, 4], "{all}");
    assert_eq!(
        offsets(&all["publications"]),
        published.iter().map(|(o, _)| *o).collect::<Vec<_>>()
    );
    assert_eq!(all["epoch"], epoch.as_str());
    assert_eq!(all["offset"], published[4].0);

    let since = c
        .ok(
            3,
            json!({"history": {"channel": ch, "limit": 50, "since": {"offset": published[1].0, "epoch": epoch}}}),
        )
        .await;
    assert_eq!(
        data_ns(&since["publications"]),
        vec![2, 3, 4],
        "after `since`: {since}"
    );

    let two = c
        .ok(4, json!({"history": {"channel": ch, "limit": 2}}))
        .await;
    assert_eq!(two["publications"].as_array().unwrap().len(), 2, "{two}");

    // The API agrees.
    let (status, api) = server
        .api(
            "history",
            json!({"channel": ch, "limit": 50, "since": {"offset": published[1].0, "epoch": epoch}}),
        )
        .await;
    assert_eq!(status, 200, "{api}");
    assert_eq!(data_ns(&api["publications"]), vec![2, 3, 4], "{api}");
    assert_eq!(api["epoch"], epoch.as_str());
}

#[tokio::test]
async fn history_errors() {
    let server = Server::start("").await;
    let mut c = server.connect("17").await;
    let cases = [
        ("news:x", 108, "namespace without history → not available"),
        ("room:bad name", 107, "bad channel name"),
        ("nope:x", 102, "unknown namespace"),
    ];
    for (i, (ch, want, why)) in cases.into_iter().enumerate() {
        let got = c
            .err_code(
                i as u64 + 1,
                json!({"history": {"channel": ch, "limit": 10}}),
            )
            .await;
        assert_eq!(got, want, "history {ch}: {why}");
    }
    let (status, body) = server
        .api("history", json!({"channel": "room:bad name"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], 107);
}
