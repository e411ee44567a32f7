//! Real Redis for the broker tests: a standalone server or a 6-node cluster (3 masters, 3
//! replicas) of Debian's `redis-server` on loopback ports, torn down when dropped. `make test`
//! installs `redis-server` when it is missing.

use std::net::TcpListener as StdTcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn redis_bin(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!(
        "{name} not found: `make test` installs it (apt-get install -y redis-server redis-tools)"
    );
}

/// A port that is free now, with its cluster bus port (+10000) free too. Both lie below the
/// kernel's ephemeral range (32768…), so a client socket can't take one while a node is down
/// (the chaos tests restart nodes on their ports while thousands of sockets come and go).
fn free_redis_port() -> u16 {
    use rand_port::next;
    loop {
        let p = next();
        if p + 10000 < 32768
            && StdTcpListener::bind(("127.0.0.1", p)).is_ok()
            && StdTcpListener::bind(("127.0.0.1", p + 10000)).is_ok()
        {
            return p;
        }
    }
}

mod rand_port {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    /// Ports in 20000..22767, spread by a per-process seed so parallel test binaries differ.
    pub fn next() -> u16 {
        let mut s = STATE.load(Ordering::Relaxed);
        if s == 0 {
            s = (std::process::id() as u64) << 20
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64;
        }
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        STATE.store(s, Ordering::Relaxed);
        20000 + (s % 2768) as u16
    }
}

pub struct RedisProc {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    cluster: bool,
}

impl RedisProc {
    fn spawn(cluster: bool) -> RedisProc {
        let mut p = RedisProc::allocate(cluster);
        p.start();
        p
    }

    /// A port and a directory, no process yet (`start` runs it).
    fn allocate(cluster: bool) -> RedisProc {
        let port = free_redis_port();
        let dir = super::temp_path(&format!("redis-{port}"), "d");
        std::fs::create_dir_all(&dir).unwrap();
        RedisProc {
            port,
            child: None,
            dir,
            cluster,
        }
    }

    /// (Re)starts the server on its port, with an empty data set (a cluster node forgets the
    /// cluster too).
    pub fn start(&mut self) {
        self.start_inner(true);
    }

    /// Restarts a cluster node on its port with an empty data set but its `nodes.conf`: it
    /// rejoins the cluster as the node it was (and learns whether it was demoted meanwhile).
    pub fn restart_keeping_identity(&mut self) {
        self.start_inner(false);
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends `sig` (SIGSTOP, SIGCONT, …) to the running server.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    fn start_inner(&mut self, wipe: bool) {
        let mut cmd = Command::new(redis_bin("redis-server"));
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            // Replicas sync at once (the default waits 5 s for more replicas to batch).
            .args(["--repl-diskless-sync-delay", "0"]);
        if self.cluster {
            if wipe {
                let _ = std::fs::remove_file(self.dir.join("nodes.conf"));
            }
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                // Promote a replica whatever its link history (tests kill masters on purpose).
                "--cluster-replica-validity-factor",
                "0",
            ]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while cli(self.port, &["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A stopped process dies of SIGKILL all the same; continue it for a clean reap.
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p PORT args…` → stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(redis_bin("redis-cli"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A standalone Redis.
pub fn standalone() -> RedisProc {
    RedisProc::spawn(false)
}

pub struct Cluster {
    pub nodes: Vec<RedisProc>,
}

impl Cluster {
    /// Six nodes, `--cluster-replicas 1`, waiting until every node reports `cluster_state:ok`.
    pub fn start() -> Cluster {
        let mut c = Cluster::allocate();
        c.launch();
        c
    }

    /// Six ports and directories, no process yet: `launch` starts and creates the cluster (a
    /// test can start ferrocast nodes on these URLs before Redis exists).
    pub fn allocate() -> Cluster {
        let mut nodes: Vec<RedisProc> = Vec::new();
        while nodes.len() < 6 {
            let n = RedisProc::allocate(true);
            if nodes.iter().all(|m| m.port != n.port) {
                nodes.push(n);
            }
        }
        Cluster { nodes }
    }

    /// Starts the six servers (allocated by `allocate`) and creates the cluster, as `start`.
    pub fn launch(&mut self) {
        for n in &mut self.nodes {
            n.start();
        }
        let nodes = &self.nodes;
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(|s| s.as_str()));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = Command::new(redis_bin("redis-cli"))
            .args(&args)
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = &*self;
        c.wait_ok(Duration::from_secs(20));
        // Every replica has finished its first sync (else it can't take over).
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &c.nodes {
            loop {
                let info = cli(n.port, &["INFO", "replication"]);
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "replica {} did not sync", n.port);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for n in &self.nodes {
            if n.child.is_none() {
                continue;
            }
            while !cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "cluster not ok on {}", n.port);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// The port of the master serving `key`'s slot, asked of a live node.
    pub fn master_of(&self, key: &str) -> u16 {
        self.try_master_of(key)
            .expect("a master for the key's slot")
    }

    /// Like `master_of`, None while no healthy master serves the slot (during a failover).
    pub fn try_master_of(&self, key: &str) -> Option<u16> {
        let live = self.nodes.iter().find(|n| n.child.is_some()).unwrap();
        let slot: u16 = cli(live.port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .ok()?;
        // CLUSTER NODES lines: "id addr@bus flags master ping pong epoch state slots…".
        for line in cli(live.port, &["CLUSTER", "NODES"]).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for range in &f[8..] {
                let (a, b) = match range.split_once('-') {
                    Some((a, b)) => (a.parse::<u16>().ok(), b.parse::<u16>().ok()),
                    None => (range.parse().ok(), range.parse().ok()),
                };
                if let (Some(a), Some(b)) = (a, b) {
                    if a <= slot && slot <= b {
                        return f[1].split(['@', ':']).nth(1)?.parse().ok();
                    }
                }
            }
        }
        None
    }

    pub fn node_mut(&mut self, port: u16) -> &mut RedisProc {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap()
    }
}
