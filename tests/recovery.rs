//! History and recovery: offsets and epochs, subscribe with `recover`, the `history` command and
//! `POST /api/history`, bounded history, and the reply caps (`limits.max_history_reply`,
//! `limits.max_history_reply_bytes`).

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

/// Subscribes to `ch` to learn its epoch (offset 0), then leaves.
async fn epoch_of(server: &Server, ch: &str) -> String {
    let mut c = server.connect("17").await;
    let sub = c.subscribe(1, ch).await;
    assert_eq!(sub["offset"], 0, "{sub}");
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    c.close().await;
    epoch
}

#[tokio::test]
async fn recover_beyond_max_history_reply_gets_the_newest_and_truncated() {
    let server = Server::start("[limits]\nmax_history_reply = 5\n").await;
    let ch = "room:far";
    let epoch = epoch_of(&server, ch).await;
    let published = publish_n(&server, ch, 0, 20).await;
    assert_eq!(published.last().unwrap().0, 20);

    let mut c = server.connect("17").await;
    let result = c
        .ok(
            1,
            json!({"subscribe": {"channel": ch, "recover": {"offset": 0, "epoch": epoch}}}),
        )
        .await;
    assert_eq!(result["recovered"], false, "{result}");
    assert_eq!(result["truncated"], true, "{result}");
    assert_eq!(result["epoch"], epoch.as_str());
    assert_eq!(result["offset"], 20);
    assert_eq!(
        offsets(&result["publications"]),
        vec![16, 17, 18, 19, 20],
        "the newest ones: {result}"
    );
    assert_eq!(data_ns(&result["publications"]), vec![15, 16, 17, 18, 19]);

    // Live from there, nothing duplicated.
    publish_n(&server, ch, 20, 1).await;
    let (p, _) = c.recv_pub(ch, SHORT).await;
    assert_eq!(p["pub"]["offset"], 21, "{p}");

    // Within the cap: recovered, no truncated field.
    let mut d = server.connect("18").await;
    let result = d
        .ok(
            1,
            json!({"subscribe": {"channel": ch, "recover": {"offset": 16, "epoch": epoch}}}),
        )
        .await;
    assert_eq!(result["recovered"], true, "{result}");
    assert!(result.get("truncated").is_none(), "{result}");
    assert_eq!(offsets(&result["publications"]), vec![17, 18, 19, 20, 21]);
}

#[tokio::test]
async fn recover_beyond_max_history_reply_bytes_gets_the_newest_that_fit() {
    let server = Server::start("[limits]\nmax_history_reply_bytes = 4096\n").await;
    let ch = "room:wide";
    let epoch = epoch_of(&server, ch).await;
    let pad = "p".repeat(1000);
    for n in 0..10 {
        server.publish(ch, json!({"n": n, "pad": pad})).await;
    }
    let mut c = server.connect("17").await;
    let (reply, raw) = {
        c.send_json(
            json!({"id": 1, "subscribe": {"channel": ch, "recover": {"offset": 0, "epoch": epoch}}}),
        )
        .await;
        c.recv_matching(SHORT, |v| v["id"] == 1).await
    };
    let result = &reply["result"];
    assert_eq!(result["recovered"], false, "{result}");
    assert_eq!(result["truncated"], true, "{result}");
    let got = offsets(&result["publications"]);
    assert!((1..10).contains(&got.len()), "some, not all: {got:?}");
    assert_eq!(*got.last().unwrap(), 10, "ends with the newest");
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");
    let list = serde_json::to_string(&result["publications"]).unwrap();
    assert!(list.len() <= 4096, "{} bytes of publications", list.len());
    assert!(raw.len() < 4096 + 200, "reply of {} bytes", raw.len());
}

#[tokio::test]
async fn history_beyond_max_history_reply_pages_with_truncated() {
    let server = Server::start("[limits]\nmax_history_reply = 5\n").await;
    let ch = "room:pages";
    let published = publish_n(&server, ch, 0, 20).await;
    let epoch = published[0].1.clone();
    let mut c = server.connect("17").await;

    // `since` with a limit over the cap: the 5 oldest after it, truncated.
    let first = c
        .ok(
            1,
            json!({"history": {"channel": ch, "limit": 50, "since": {"offset": 0, "epoch": epoch}}}),
        )
        .await;
    assert_eq!(
        offsets(&first["publications"]),
        vec![1, 2, 3, 4, 5],
        "{first}"
    );
    assert_eq!(first["truncated"], true, "{first}");
    assert_eq!(first["offset"], 20);

    // Paging on with `since` = the last offset reaches everything, in order; the last page
    // is not truncated.
    let mut all: Vec<u64> = Vec::new();
    let mut since = 0u64;
    let mut pages = 0;
    loop {
        let page = c
            .ok(
                2 + pages,
                json!({"history": {"channel": ch, "limit": 50, "since": {"offset": since, "epoch": epoch}}}),
            )
            .await;
        pages += 1;
        let got = offsets(&page["publications"]);
        all.extend(&got);
        if page.get("truncated").is_none() {
            break;
        }
        assert_eq!(page["truncated"], true, "{page}");
        since = *got.last().expect("a truncated page is not empty");
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(all, (1..=20).collect::<Vec<u64>>());
    assert_eq!(pages, 4, "5 + 5 + 5 + 5");

    // Without `since`: the oldest of the window that fit, truncated.
    let latest = c
        .ok(20, json!({"history": {"channel": ch, "limit": 8}}))
        .await;
    assert_eq!(
        offsets(&latest["publications"]),
        vec![13, 14, 15, 16, 17],
        "{latest}"
    );
    assert_eq!(latest["truncated"], true);
    // Within the cap: no truncated field.
    let three = c
        .ok(21, json!({"history": {"channel": ch, "limit": 3}}))
        .await;
    assert_eq!(offsets(&three["publications"]), vec![18, 19, 20], "{three}");
    assert!(three.get("truncated").is_none(), "{three}");

    // The API applies the same caps.
    let (status, api) = server
        .api(
            "history",
            json!({"channel": ch, "limit": 50, "since": {"offset": 0, "epoch": epoch}}),
        )
        .await;
    assert_eq!(status, 200, "{api}");
    assert_eq!(offsets(&api["publications"]), vec![1, 2, 3, 4, 5], "{api}");
    assert_eq!(api["truncated"], true, "{api}");
    let (status, api) = server
        .api(
            "history",
            json!({"channel": ch, "since": {"offset": 17, "epoch": epoch}}),
        )
        .await;
    assert_eq!(status, 200, "{api}");
    assert_eq!(offsets(&api["publications"]), vec![18, 19, 20], "{api}");
    assert!(api.get("truncated").is_none(), "{api}");
}

#[tokio::test]
async fn history_beyond_max_history_reply_bytes_is_truncated() {
    let server = Server::start("[limits]\nmax_history_reply_bytes = 4096\n").await;
    let ch = "room:heavy";
    let pad = "p".repeat(1000);
    for n in 0..10 {
        server.publish(ch, json!({"n": n, "pad": pad})).await;
    }
    let (status, h) = server
        .api("history", json!({"channel": ch, "limit": 100}))
        .await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["truncated"], true, "{h}");
    let got = offsets(&h["publications"]);
    assert!((1..10).contains(&got.len()), "{got:?}");
    assert_eq!(got[0], 1, "the oldest first");
    let list = serde_json::to_string(&h["publications"]).unwrap();
    assert!(list.len() <= 4096, "{} bytes of publications", list.len());

    // A single publication larger than the byte cap still comes, alone (paging advances).
    let big = server.publish(ch, json!({"pad": "q".repeat(6000)})).await;
    let epoch = big["epoch"].as_str().unwrap();
    let (status, h) = server
        .api(
            "history",
            json!({"channel": ch, "since": {"offset": 10, "epoch": epoch}}),
        )
        .await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(offsets(&h["publications"]), vec![11], "{h}");
    assert!(h.get("truncated").is_none(), "{h}");
}
