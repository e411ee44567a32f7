//! wsbench against a real ferrocast node, with small counts.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{n, parse, run, wsbench, Node};

/// Every subscriber gets every publication exactly once: N × M deliveries, nothing lost.
#[test]
fn clean_broadcast_delivers_everything() {
    let node = Node::start();
    let (status, v, err) = run(wsbench(&node, &["-c", "20", "-n", "50"]));
    assert!(
        status.success(),
        "exit {status}\n{v:#}\n{err}\nnode:\n{}",
        node.log()
    );
    assert_eq!(n(&v, "/connections/connected"), 20);
    assert_eq!(n(&v, "/traffic/publications"), 50);
    assert_eq!(n(&v, "/traffic/published_ok"), 50);
    assert_eq!(n(&v, "/traffic/expected_deliveries"), 1000);
    assert_eq!(n(&v, "/traffic/deliveries"), 1000);
    assert_eq!(n(&v, "/traffic/unique_deliveries"), 1000);
    assert_eq!(n(&v, "/traffic/lost"), 0);
    assert_eq!(n(&v, "/traffic/duplicated"), 0);
    assert_eq!(n(&v, "/traffic/latency_ms/count"), 1000);
    assert_eq!(v["outcome"]["passed"], true);
}

/// The node dies mid-run: wsbench notices, reports the loss and fails.
#[test]
fn killing_the_node_mid_run_is_reported_as_loss() {
    let mut node = Node::start();
    let child = wsbench(
        &node,
        &["-c", "20", "-n", "300", "--rate", "100", "--drain", "3s"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start wsbench");
    // The ramp takes well under a second; publishing takes 3 s.
    std::thread::sleep(Duration::from_millis(1200));
    node.kill9();
    let (status, v, err) = parse(child.wait_with_output().expect("wsbench finishes"));
    assert!(
        !status.success(),
        "wsbench passed a run whose node died:\n{v:#}\n{err}"
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(n(&v, "/traffic/lost") > 0, "{v:#}");
    assert!(
        n(&v, "/traffic/deliveries") > 0,
        "nothing was delivered before the kill: {v:#}"
    );
    let dropped: u64 = v["connections"]["disconnects"]
        .as_object()
        .expect("disconnects map")
        .values()
        .filter_map(|x| x.as_u64())
        .sum();
    assert_eq!(dropped, 20, "{v:#}");
    assert_eq!(v["outcome"]["passed"], false);
}

/// Two worker processes split the sockets; the parent merges counts and histograms.
#[test]
fn worker_processes_aggregate() {
    let node = Node::start();
    let (status, v, err) = run(wsbench(
        &node,
        &[
            "broadcast",
            "-c",
            "20",
            "-n",
            "30",
            "--channels",
            "2",
            "--procs",
            "2",
        ],
    ));
    assert!(
        status.success(),
        "exit {status}\n{v:#}\n{err}\nnode:\n{}",
        node.log()
    );
    assert_eq!(n(&v, "/connections/connected"), 20);
    // 30 per channel × 2 channels, each reaching 10 subscribers.
    assert_eq!(n(&v, "/traffic/deliveries"), 600);
    assert_eq!(n(&v, "/traffic/latency_ms/count"), 600);
    assert_eq!(n(&v, "/traffic/lost"), 0);
}

/// Each user on `user:<id>`; notifications to random users arrive exactly once.
#[test]
fn notify_reaches_each_user() {
    let node = Node::start();
    let (status, v, err) = run(wsbench(
        &node,
        &["notify", "-c", "20", "-n", "200", "--rate", "400"],
    ));
    assert!(
        status.success(),
        "exit {status}\n{v:#}\n{err}\nnode:\n{}",
        node.log()
    );
    assert_eq!(n(&v, "/traffic/publications"), 200);
    assert_eq!(n(&v, "/traffic/deliveries"), 200);
    assert_eq!(n(&v, "/traffic/lost"), 0);
}

/// Rooms of 5, every member publishing over its socket: everyone in the room gets everything.
#[test]
fn chat_rooms_deliver_to_every_member() {
    let node = Node::start();
    let (status, v, err) = run(wsbench(
        &node,
        &[
            "chat",
            "-c",
            "20",
            "--room-size",
            "5",
            "-n",
            "4",
            "--rate",
            "200",
        ],
    ));
    assert!(
        status.success(),
        "exit {status}\n{v:#}\n{err}\nnode:\n{}",
        node.log()
    );
    assert_eq!(n(&v, "/traffic/publications"), 80);
    assert_eq!(n(&v, "/traffic/published_ok"), 80);
    // 4 rooms × 5 members × (5 members × 4 messages).
    assert_eq!(n(&v, "/traffic/deliveries"), 400);
    assert_eq!(n(&v, "/traffic/lost"), 0);
}

/// Sockets leave and come back with `recover` while publications flow: nothing is lost and
/// nothing arrives twice (the recovered publications and the live stream meet exactly).
#[test]
fn churn_recovers_missed_publications() {
    let node = Node::start();
    let (status, v, err) = run(wsbench(
        &node,
        &[
            "churn",
            "-c",
            "50",
            "--churn-rate",
            "50",
            "--rate",
            "100",
            "-d",
            "3s",
        ],
    ));
    assert!(
        status.success(),
        "exit {status}\n{v:#}\n{err}\nnode:\n{}",
        node.log()
    );
    assert!(n(&v, "/churn/reconnects") > 0, "{v:#}");
    assert_eq!(n(&v, "/traffic/lost"), 0);
    assert_eq!(n(&v, "/churn/recover_failed"), 0);
    assert!(n(&v, "/churn/recovered_publications") > 0, "{v:#}");
    assert_eq!(n(&v, "/traffic/duplicated"), 0, "{v:#}");
    assert_eq!(
        n(&v, "/traffic/deliveries"),
        n(&v, "/traffic/expected_deliveries"),
        "{v:#}"
    );
}

/// `--user-channel`: every socket is also on its personal channel, so the node holds two
/// subscriptions per socket while they are held.
#[test]
fn connect_with_user_channel_holds_two_subscriptions() {
    let node = Node::start();
    let child = wsbench(
        &node,
        &["connect", "-c", "30", "--user-channel", "--hold", "3s"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start wsbench");
    // The node's subscription gauge is refreshed once a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut most = 0;
    while std::time::Instant::now() < deadline && most < 60 {
        std::thread::sleep(Duration::from_millis(200));
        let metrics = node.metrics();
        most = most.max(common::metric_sum(&metrics, "ferrocast_subscriptions"));
    }
    let (status, v, err) = parse(child.wait_with_output().expect("wsbench finishes"));
    assert!(
        status.success(),
        "exit {status}\n{v:#}\n{err}\nnode:\n{}",
        node.log()
    );
    assert_eq!(v["config"]["user_channel"], true);
    assert_eq!(n(&v, "/connections/connected"), 30);
    assert_eq!(
        most, 60,
        "subscriptions the node reported while the sockets were held"
    );
}

/// The connect scenario reads the node's memory and CPU from /proc.
#[test]
fn connect_reports_server_cost() {
    let node = Node::start();
    let pid = node.pid().to_string();
    let (status, v, err) = run(wsbench(
        &node,
        &[
            "connect",
            "-c",
            "50",
            "--hold",
            "0.5s",
            "--server-pid",
            &pid,
        ],
    ));
    assert!(
        status.success(),
        "exit {status}\n{v:#}\n{err}\nnode:\n{}",
        node.log()
    );
    assert_eq!(n(&v, "/connections/connected"), 50);
    assert_eq!(n(&v, "/connections/ready_ms/count"), 50);
    assert_eq!(n(&v, "/server/sockets_at_sample"), 50);
    assert!(n(&v, "/server/rss_connected_kib") > 0);
}

/// A wrong API key: every publication fails, and so does the run.
#[test]
fn rejected_publications_fail_the_run() {
    let node = Node::start();
    let mut c = std::process::Command::new(common::wsbench_bin());
    c.args(["-c", "5", "-n", "5", "--drain", "1s", "-u", &node.url()])
        .args([
            "--token-secret",
            common::SECRET,
            "--api-key",
            "wrong",
            "--json",
            "-q",
        ]);
    let (status, v, _) = run(c);
    assert_eq!(status.code(), Some(1));
    assert_eq!(v["traffic"]["publish_errors"]["api_http_401"], 5, "{v:#}");
}

/// A node that sheds upgrades (503 + Retry-After, "too many handshakes") under a burst: wsbench
/// comes back after the delay and every socket connects; the sheds are counted as retries, not
/// failures. Without retries the same burst fails with http_503.
#[test]
fn shed_upgrades_are_retried_after_the_delay() {
    let node = Node::start_with(&["limits.max_pending_handshakes=1"]);
    let args = [
        "connect",
        "-c",
        "200",
        "--connect-rate",
        "0",
        "--hold",
        "0.2s",
    ];
    let (status, v, err) = run(wsbench(&node, &args));
    assert!(
        status.success(),
        "exit {status}\n{v:#}\n{err}\nnode:\n{}",
        node.log()
    );
    assert_eq!(n(&v, "/connections/connected"), 200);
    assert_eq!(n(&v, "/connections/failed"), 0);
    assert!(n(&v, "/connections/retries") > 0, "no shed seen: {v:#}");

    let mut no_retries = args.to_vec();
    no_retries.extend(["--retries", "0"]);
    let (status, v, _) = run(wsbench(&node, &no_retries));
    assert_eq!(status.code(), Some(1));
    assert_eq!(n(&v, "/connections/retries"), 0);
    assert!(n(&v, "/connections/failures/http_503") > 0, "{v:#}");
}

/// million on a fleet of two nodes with a memory broker each (--api-fanout): every socket gets
/// the broadcast, every notification arrives, and when node 1 drains (--drain-pid) its sockets
/// come back on node 0.
#[test]
fn million_steps_on_a_two_node_fleet() {
    let nodes = Node::fleet(2, &[]);
    let pid = nodes[1].pid().to_string();
    let (status, v, err) = run(wsbench(
        &nodes[0],
        &[
            "million",
            "-c",
            "40",
            "--nodes",
            "2",
            "--procs",
            "2",
            "--api-fanout",
            "--channel",
            "room:m",
            "--hold",
            "0.2s",
            "-n",
            "30",
            "--drain-pid",
            &pid,
            "--drain",
            "15s",
        ],
    ));
    assert!(
        status.success(),
        "exit {status}\n{v:#}\n{err}\nnode 0:\n{}\nnode 1:\n{}",
        nodes[0].log(),
        nodes[1].log()
    );
    assert_eq!(n(&v, "/million/held"), 40);
    assert_eq!(n(&v, "/million/broadcast/expected"), 40);
    assert_eq!(n(&v, "/million/broadcast/delivered"), 40);
    assert_eq!(n(&v, "/million/broadcast/api_requests"), 2);
    assert_eq!(n(&v, "/million/broadcast/latency_ms/count"), 40);
    assert_eq!(n(&v, "/million/notify/publications"), 30);
    assert_eq!(n(&v, "/million/notify/delivered"), 30);
    assert_eq!(n(&v, "/million/notify/lost"), 0);
    assert_eq!(n(&v, "/million/drain/closed"), 20);
    assert_eq!(n(&v, "/million/drain/back"), 20);
    assert_eq!(v["million"]["drain"]["complete"], true);
    assert_eq!(n(&v, "/million/drain/open_after"), 40);
    assert_eq!(n(&v, "/traffic/lost"), 0);
}

/// `--pusher`: sockets on /app/KEY subscribe with pusher:subscribe, the publisher signs
/// POST /apps/ID/events; every subscriber gets every event once, and the node's cost is read.
#[test]
fn pusher_broadcast_delivers_everything() {
    let node = Node::start();
    let pid = node.pid().to_string();
    let (status, v, err) = run(common::wsbench_pusher(
        &node,
        common::PUSHER_SECRET,
        &["broadcast", "-c", "20", "-n", "30", "--server-pid", &pid],
    ));
    assert!(
        status.success(),
        "exit {status}\n{v:#}\n{err}\nnode:\n{}",
        node.log()
    );
    assert_eq!(n(&v, "/connections/connected"), 20);
    assert_eq!(n(&v, "/traffic/published_ok"), 30);
    assert_eq!(n(&v, "/traffic/expected_deliveries"), 600);
    assert_eq!(n(&v, "/traffic/unique_deliveries"), 600);
    assert_eq!(n(&v, "/traffic/lost"), 0);
    assert_eq!(n(&v, "/traffic/foreign"), 0);
    assert_eq!(n(&v, "/traffic/latency_ms/count"), 600);
    assert!(n(&v, "/server/rss_connected_kib") > 0);
}

/// A wrong secret: the node refuses every signed publication and the run fails; a wrong key:
/// no socket gets connected.
#[test]
fn pusher_bad_credentials_fail_the_run() {
    let node = Node::start();
    let (status, v, _) = run(common::wsbench_pusher(
        &node,
        "not-the-secret",
        &["broadcast", "-c", "5", "-n", "5", "--drain", "1s"],
    ));
    assert_eq!(status.code(), Some(1), "{v:#}");
    assert_eq!(n(&v, "/traffic/published_ok"), 0, "{v:#}");
    assert!(
        !v["traffic"]["publish_errors"]
            .as_object()
            .unwrap()
            .is_empty(),
        "{v:#}"
    );
    let mut c = std::process::Command::new(common::wsbench_bin());
    c.args([
        "connect",
        "-c",
        "3",
        "--hold",
        "0s",
        "--pusher",
        "-u",
        &node.url(),
    ])
    .args([
        "--pusher-key",
        "no-such-key",
        "--json",
        "-q",
        "--timeout",
        "30s",
    ]);
    let (status, v, _) = run(c);
    assert_eq!(status.code(), Some(1), "{v:#}");
    assert_eq!(n(&v, "/connections/connected"), 0, "{v:#}");
}
