//! Issue 11 item 4: presence after a node crash, on a real Redis Cluster. The members a SIGKILLed
//! node held leave presence within `client.presence_ttl` (nobody refreshes their entries any
//! more), and a user with several tabs — on one node or on several — counts once in
//! `presence_stats` users.

mod common;

use std::time::{Duration, Instant};

use common::redis::Cluster;
use common::*;
use serde_json::json;

fn cluster_toml(c: &Cluster) -> String {
    let urls: Vec<String> = c.urls().iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[broker]\nkind = \"redis-cluster\"\nurls = [{}]\n\n[client]\npresence_ttl = \"3s\"\n",
        urls.join(", ")
    )
}

async fn stats(c: &mut Client, id: u64) -> (u64, u64) {
    let r = c
        .ok(id, json!({"presence_stats": {"channel": "room:crash"}}))
        .await;
    (r["clients"].as_u64().unwrap(), r["users"].as_u64().unwrap())
}

async fn members(c: &mut Client, id: u64) -> Vec<String> {
    let r = c
        .ok(id, json!({"presence": {"channel": "room:crash"}}))
        .await;
    let mut users: Vec<String> = r["clients"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v["user"].as_str().unwrap().to_string())
        .collect();
    users.sort();
    users
}

#[tokio::test]
async fn a_crashed_nodes_members_leave_presence_within_the_ttl() {
    let cluster = Cluster::start();
    let toml = cluster_toml(&cluster);
    let mut a = Server::start(&toml).await;
    let b = Server::start(&toml).await;

    // On A: "ada" in three tabs, "bob" once. On B: "ada" in a fourth tab, "cy" once.
    let mut on_a = Vec::new();
    for user in ["ada", "ada", "ada", "bob"] {
        let mut c = a.connect(user).await;
        c.subscribe(1, "room:crash").await;
        on_a.push(c);
    }
    let mut ada_b = b.connect("ada").await;
    ada_b.subscribe(1, "room:crash").await;
    let mut cy = b.connect("cy").await;
    cy.subscribe(1, "room:crash").await;

    // A user with several tabs counts once, whichever nodes hold them.
    assert_eq!(stats(&mut cy, 10).await, (6, 3), "6 clients, 3 users");
    assert_eq!(
        members(&mut cy, 11).await,
        ["ada", "ada", "ada", "ada", "bob", "cy"]
    );

    // A dies without a word: its entries stay until they expire.
    // SAFETY: kill(2) on the pid of a child the harness spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(a.pid(), libc::SIGKILL) }, 0);
    let killed = Instant::now();
    assert!(a.wait_exit(Duration::from_secs(5)).await.is_some());
    drop(on_a);

    let mut id = 100;
    let gone_after = loop {
        id += 1;
        let s = stats(&mut cy, id).await;
        if s == (2, 2) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_millis(4500),
            "the dead node's members still in presence after {:?}: {s:?}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Within presence_ttl (3 s) plus the poll's granularity.
    assert!(gone_after <= Duration::from_millis(3300), "{gone_after:?}");
    assert_eq!(members(&mut cy, 200).await, ["ada", "cy"]);
    // The survivor's entries are refreshed (every presence_ttl / 3): still there after 2 TTLs.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(stats(&mut cy, 201).await, (2, 2));
    assert_eq!(stats(&mut ada_b, 202).await, (2, 2));
    println!(
        "dead node's members gone from presence {gone_after:?} after SIGKILL (presence_ttl 3 s)"
    );
}
