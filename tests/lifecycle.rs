//! The process: health endpoints, SIGTERM drain, `config check`, config overrides from the
//! environment and `--set`, the `token` subcommand, server pings.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn health_endpoints_answer_200() {
    let server = Server::start("").await;
    assert_eq!(server.admin_get("/health/live").await.0, 200);
    assert_eq!(server.admin_get("/health/ready").await.0, 200);
    let metrics = server.metrics().await;
    assert!(
        metric_in(&metrics, "ferrocast_build_info") >= 1.0,
        "build info gauge:\n{metrics}"
    );
}

#[tokio::test]
async fn sigterm_closes_clients_with_4010_and_exits_0() {
    let mut server = Server::start("").await;
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut c = server.connect(&format!("u{i}")).await;
        c.subscribe(1, "room:drain").await;
        clients.push(c);
    }
    let started = Instant::now();
    server.sigterm();

    // While draining, readiness is 503 (or the admin listener is already gone at the very end).
    let health = async {
        let mut saw_503 = false;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match server.try_admin_status("/health/ready").await {
                Some(503) => {
                    saw_503 = true;
                    break;
                }
                Some(_) => {}
                None => break,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        saw_503
    };
    let closes = async {
        let mut codes = Vec::new();
        for c in clients.iter_mut() {
            codes.push(c.expect_close(Duration::from_secs(4)).await.0);
        }
        codes
    };
    let (saw_503, codes) = tokio::join!(health, closes);
    assert!(
        codes.iter().all(|c| *c == 4010),
        "every client closed with 4010: {codes:?}"
    );
    let status = server
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("ferrocast exits after draining");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "drain_seconds = 1, took {:?}",
        started.elapsed()
    );
    assert!(saw_503, "/health/ready answered 503 while draining");
}

fn write_temp_config(text: &str) -> std::path::PathBuf {
    let path = temp_path("check", "toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn config_check_accepts_a_good_file_and_prints_the_effective_config() {
    let path = write_temp_config(&config_text(free_port(), free_port(), ""));
    let (code, stdout, stderr) = run_bin(&["config", "check", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert_eq!(code, 0, "config check of a good file: {stdout}\n{stderr}");
    assert!(
        stdout.contains(NODE_NAME),
        "prints the file's values:\n{stdout}"
    );
    assert!(
        stdout.contains("outbound_queue_bytes"),
        "prints defaults too (effective config):\n{stdout}"
    );
    let printed: Result<toml::Table, _> = stdout.parse();
    assert!(printed.is_ok(), "the effective config is TOML:\n{stdout}");
}

#[test]
fn config_check_rejects_bad_files_naming_the_key() {
    let cases = [
        ("[limits]\nmax_message_size = \"big\"\n", "max_message_size"),
        ("[broker]\nkind = \"carrier-pigeon\"\n", "kind"),
        ("[auth]\ntimeout = \"soon\"\n", "timeout"),
        ("[listen]\npublic = \"not an address\"\n", "public"),
        (
            "[namespaces.room]\nhistory_ttl = \"forever-ish\"\n",
            "history_ttl",
        ),
    ];
    for (text, key) in cases {
        let path = write_temp_config(text);
        let (code, stdout, stderr) = run_bin(&["config", "check", path.to_str().unwrap()]);
        std::fs::remove_file(&path).ok();
        assert_ne!(code, 0, "config check of {text:?} must fail");
        let out = format!("{stdout}{stderr}");
        assert!(out.contains(key), "the error names `{key}`: {out}");
    }
    // Not TOML at all.
    let path = write_temp_config("this is = = not toml [");
    let (code, _, _) = run_bin(&["config", "check", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert_ne!(code, 0);
}

#[test]
fn serve_with_an_invalid_config_fails_at_start_naming_the_key() {
    let text = config_text(
        free_port(),
        free_port(),
        "[limits]\nmax_message_size = -5\n",
    );
    let path = write_temp_config(&text);
    let (code, stdout, stderr) = run_bin(&["serve", "--config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert_ne!(code, 0, "serve with an invalid config must fail");
    let out = format!("{stdout}{stderr}");
    assert!(out.contains("max_message_size"), "names the key: {out}");
}

#[tokio::test]
async fn environment_overrides_the_config_file() {
    let mut server = Server::start_with("", &[("FERROCAST_API__KEY", "env-key")], &[]).await;
    let (status, _) = server.api("info", json!({})).await;
    assert_eq!(status, 401, "the file's key is overridden");
    server.api_key = "env-key".into();
    let (status, body) = server.api("info", json!({})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn set_flag_overrides_the_config_file() {
    let mut server = Server::start_with("", &[], &["--set", "api.key=set-key"]).await;
    let (status, _) = server.api("info", json!({})).await;
    assert_eq!(status, 401, "the file's key is overridden");
    server.api_key = "set-key".into();
    let (status, body) = server.api("info", json!({})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn token_subcommand_prints_a_token_the_server_accepts() {
    let (code, stdout, stderr) = run_bin(&[
        "token",
        "--secret",
        TOKEN_SECRET,
        "--user",
        "7",
        "--ttl",
        "1h",
        "--channels",
        "secret:a,secret:b",
        "--info",
        r#"{"name":"Seven"}"#,
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let jwt = stdout.trim();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Value>(
        jwt,
        &jsonwebtoken::DecodingKey::from_secret(TOKEN_SECRET.as_bytes()),
        &validation,
    )
    .unwrap_or_else(|e| panic!("HS256 JWT with the secret ({e}): {jwt:?}"))
    .claims;
    assert_eq!(claims["sub"], "7");
    assert_eq!(claims["channels"], json!(["secret:a", "secret:b"]));
    assert_eq!(claims["info"], json!({"name": "Seven"}));
    let exp = claims["exp"].as_i64().unwrap();
    assert!(
        (exp - now_secs() - 3600).abs() <= 5,
        "exp = now + 1h: {claims}"
    );

    let server = Server::start("[namespaces.secret]\nprivate = true\n").await;
    let mut c = server.connect_token(jwt).await;
    assert_eq!(c.connected["user"], "7");
    c.subscribe(1, "secret:a").await;
}

#[tokio::test]
async fn server_pings_an_idle_connection_every_ping_interval() {
    let server = Server::start("[client]\nping_interval = \"1s\"\npong_timeout = \"1s\"\n").await;
    let mut c = server.connect("17").await;
    assert_eq!(c.connected["ping_interval"], 1, "{}", c.connected);
    let deadline = Instant::now() + Duration::from_secs(4);
    // Pings are counted as they are read; read in short slices until two arrived.
    while c.pings < 2 && Instant::now() < deadline {
        match c.next_event(Duration::from_millis(50)).await {
            Event::Timeout => {}
            Event::Json(v, _) => panic!("unexpected message {v}"),
            other => panic!("connection ended: {other:?}"),
        }
    }
    assert!(
        c.pings >= 2,
        "two pings in ~2 s of silence, saw {}",
        c.pings
    );
    // Answering the pings (tungstenite does) keeps the connection alive past pong_timeout.
    c.ok(1, json!({"ping": {}})).await;
}

/// A ping queued behind a burst of output can't be answered before the peer has read the burst:
/// its pong is late, not missing, and the connection is kept (the pong clock waits while the
/// ping can't have left this host). Before, a reader that fell behind for longer than
/// `pong_timeout` was closed even though it was alive.
#[tokio::test]
async fn a_pong_stuck_behind_output_is_late_not_missing() {
    let server = Server::start("[client]\nping_interval = \"1s\"\npong_timeout = \"1s\"\n").await;
    let tok = token("17", 3600, &[]);
    // A small receive buffer: what the client doesn't read stays on the server's side.
    let mut c = ws_connect_with(&server.ws_url(Some(&tok)), &[], Some(4096)).await;
    let connected = c.recv_json(SHORT).await;
    assert!(connected.get("connected").is_some(), "{connected}");
    c.subscribe(1, "room:stuck").await;
    let pad = "x".repeat(8000);
    for i in 0..100 {
        server
            .publish("room:stuck", json!({"i": i, "pad": &pad}))
            .await;
    }
    // The client reads nothing for 4 s (the server's pings wait behind the publications)…
    tokio::time::sleep(Duration::from_secs(4)).await;
    // …then reads it all: every publication arrives, and no close comes.
    for i in 0..100 {
        let (p, _) = c.recv_pub("room:stuck", SHORT).await;
        assert_eq!(p["pub"]["data"]["i"], i);
    }
    c.ok(2, json!({"ping": {}})).await;
}

/// A peer that never answers is still closed: its ping reached it (nothing waits in any queue)
/// and no pong came within `pong_timeout`.
#[tokio::test]
async fn a_silent_peer_is_closed_after_pong_timeout() {
    let server = Server::start("[client]\nping_interval = \"1s\"\npong_timeout = \"1s\"\n").await;
    let mut c = server.connect("17").await;
    // Not reading means not answering (tungstenite answers pings as it reads).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (code, _) = c.expect_close(SHORT).await;
    assert_eq!(code, 4000);
}
