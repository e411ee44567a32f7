//! Test harness: a real ferrocast node on free loopback ports, and wsbench runs against it.
//!
//! The node binary comes from `FERROCAST_BIN`, else `$CARGO_TARGET_DIR/debug/ferrocast`, else the
//! workspace's `target/debug/ferrocast` (`cargo build -p ferrocast` makes it).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "wsbench-test-secret";
pub const API_KEY: &str = "wsbench-test-key";

pub fn ferrocast_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FERROCAST_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadtest/ has a parent")
        .to_path_buf();
    let mut candidates = Vec::new();
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        candidates.push(if t.is_absolute() { t } else { root.join(t) }.join("debug/ferrocast"));
    }
    candidates.push(root.join("target/debug/ferrocast"));
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "ferrocast binary not found (tried {candidates:?}); run `cargo build -p ferrocast` \
                 or set FERROCAST_BIN"
            )
        })
}

pub fn wsbench_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wsbench"))
}

fn rand_port_offset() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        % 30_000) as u16
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running node; killed on drop.
pub struct Node {
    pub child: Child,
    pub public: u16,
    pub admin: u16,
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn start() -> Node {
        Node::start_with(&[])
    }

    /// A node with `--set KEY=VALUE` overrides on top of the test config.
    pub fn start_with(sets: &[&str]) -> Node {
        Node::start_on(free_port(), sets)
    }

    /// `n` nodes on consecutive public ports (a fleet for `--nodes n`), each on its own broker.
    pub fn fleet(n: u16, sets: &[&str]) -> Vec<Node> {
        for _ in 0..50 {
            let base = 20_000 + rand_port_offset();
            let free: Vec<_> = (0..n)
                .map_while(|k| TcpListener::bind(("127.0.0.1", base + k)).ok())
                .collect();
            if free.len() == n as usize {
                drop(free);
                return (0..n).map(|k| Node::start_on(base + k, sets)).collect();
            }
        }
        panic!("no {n} consecutive free ports");
    }

    fn start_on(public: u16, sets: &[&str]) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let admin = free_port();
        let config = format!(
            r#"[listen]
public = "127.0.0.1:{public}"
admin = "127.0.0.1:{admin}"
shards = 2

[auth]
token_secret = "{SECRET}"

[api]
key = "{API_KEY}"

[namespaces.room]
publish = true
presence = false
join_leave = false
history_size = 1000
history_ttl = "300s"

[shutdown]
drain_seconds = 1

[[pusher.apps]]
app_id = "{PUSHER_APP_ID}"
key = "{PUSHER_KEY}"
secret = "{PUSHER_SECRET}"
"#
        );
        let path = dir.path().join("ferrocast.toml");
        std::fs::write(&path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("node.log")).expect("log file");
        let child = Command::new(ferrocast_bin())
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .args(sets.iter().flat_map(|kv| ["--set", kv]))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ferrocast");
        let mut node = Node {
            child,
            public,
            admin,
            dir,
        };
        node.wait_ready();
        node
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ferrocast exited early ({status}):\n{}", self.log());
            }
            if http_status(self.admin, "/health/ready") == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ferrocast not ready within 20 s:\n{}", self.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.public)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// The admin listener's /metrics text.
    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// GET on the admin listener; the status code.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().ok()?,
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// GET on the admin listener; the body.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().ok()?,
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// The sum of a Prometheus metric's samples over all its label sets.
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The Pusher app every test node serves (`wsbench --pusher`).
pub const PUSHER_APP_ID: &str = "wsbench";
pub const PUSHER_KEY: &str = "wsbench-key";
pub const PUSHER_SECRET: &str = "wsbench-test-pusher-secret";

/// `wsbench --pusher` against the node's Pusher app, `--json -q`, and a safety timeout.
pub fn wsbench_pusher(node: &Node, secret: &str, args: &[&str]) -> Command {
    let mut c = Command::new(wsbench_bin());
    c.args(args)
        .args(["--pusher", "-u", &node.url()])
        .args(["--pusher-app-id", PUSHER_APP_ID, "--pusher-key", PUSHER_KEY])
        .args(["--pusher-secret", secret])
        .args(["--json", "-q", "--timeout", "60s"]);
    c
}

/// wsbench with the node's URL and credentials, `--json -q`, and a safety timeout.
pub fn wsbench(node: &Node, args: &[&str]) -> Command {
    let mut c = Command::new(wsbench_bin());
    c.args(args)
        .args([
            "-u",
            &node.url(),
            "--token-secret",
            SECRET,
            "--api-key",
            API_KEY,
        ])
        .args(["--json", "-q", "--timeout", "60s"]);
    c
}

/// Runs to completion; (exit status, parsed JSON figures, stderr).
pub fn run(mut c: Command) -> (ExitStatus, serde_json::Value, String) {
    let out: Output = c.output().expect("run wsbench");
    parse(out)
}

pub fn parse(out: Output) -> (ExitStatus, serde_json::Value, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "wsbench printed no JSON ({e}); status {}\nstdout:\n{}\nstderr:\n{stderr}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status, json, stderr)
}

/// A figure by JSON pointer, as u64.
pub fn n(v: &serde_json::Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no {pointer} in {v:#}"))
}
