//! The idle-socket memory budget ("The million", item 3): an idle socket that is authenticated
//! and subscribed to its personal `user:<id>` channel and one shared channel may cost the server
//! at most 2,048 bytes of heap.
//!
//! The node runs in this process through the real code paths (listener, hyper upgrade, shard,
//! connection task, client commands, memory broker), one shard, with a counting global allocator
//! wrapping mimalloc (the binary's allocator). Plain blocking sockets open `WARMUP` connections
//! first (lazy statics, metric label values, first-use buffers), then `SOCKETS` more, each doing
//! what `wsbench connect --user-channel` does: upgrade, `connect` with a token, `subscribe` to the
//! shared channel, `subscribe` to `user:<id>`, each reply awaited. The figure is the growth of
//! live heap bytes (requested sizes) divided by `SOCKETS`, plus the socket's slot in the shard's
//! connection slab, which `node.target_sockets` (set as an operator planning capacity would)
//! reserved at start, outside the measured growth. The client side keeps nothing past a
//! connection's set-up but its socket (a file descriptor in a vector sized beforehand), so the
//! growth is the server's. Counts, not timings: the figure is the same from run to run (give or
//! take a few bytes of runtime bookkeeping).
//!
//! Heap bytes are what the code decides; RSS adds the allocator's size-class rounding and
//! fragmentation (docs/benchmarks.md, "Memory budget", measures that with wsbench).
//! `MEMORY_BUDGET_REPORT=1 cargo test --test memory_budget -- --nocapture` prints the growth by
//! allocation size; `MEMORY_BUDGET_TRACE=1` also prints, for one more socket, where each
//! allocation it leaves behind was made.

use std::alloc::{GlobalAlloc, Layout};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use ferrocast::auth::{mint, Claims};
use ferrocast::config::{Config, HumanDuration, NamespaceConfig};
use ferrocast::hub::{Hub, Node};

/// Bytes of server heap one idle, authenticated socket on `user:<id>` + one shared channel may take.
const BUDGET: isize = 2048;
const WARMUP: usize = 64;
const SOCKETS: usize = 2000;
const SECRET: &str = "memory-budget-secret";

// ---------------------------------------------------------------------------------------------
// The counting allocator.

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);
/// Net allocations by requested size (exact below `EXACT`, then one bucket per power of two).
const EXACT: usize = 4096;
static BY_SIZE: [AtomicIsize; EXACT + 64] = [const { AtomicIsize::new(0) }; EXACT + 64];
static TRACK_SIZES: AtomicBool = AtomicBool::new(false);

fn size_slot(size: usize) -> usize {
    if size < EXACT {
        size
    } else {
        EXACT + (usize::BITS - size.leading_zeros()) as usize
    }
}

fn note(size: usize, n: isize) {
    LIVE.fetch_add(size as isize * n, Relaxed);
    LIVE_ALLOCS.fetch_add(n, Relaxed);
    if TRACK_SIZES.load(Relaxed) {
        BY_SIZE[size_slot(size)].fetch_add(n, Relaxed);
    }
}

/// `MEMORY_BUDGET_TRACE`: allocations made while `TRACING` is on, with a short backtrace, until
/// freed.
static TRACING: AtomicBool = AtomicBool::new(false);
static TRACED: std::sync::Mutex<Vec<(usize, usize, String)>> = std::sync::Mutex::new(Vec::new());
thread_local! { static IN_TRACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) }; }

fn trace_alloc(p: *mut u8, size: usize) {
    if !TRACING.load(Relaxed) || IN_TRACE.with(|t| t.replace(true)) {
        return;
    }
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    let short: Vec<&str> = bt
        .lines()
        .filter(|l| l.contains("ferrocast::") || l.contains("tokio::task") || l.contains("hyper::"))
        .filter(|l| !l.contains("memory_budget"))
        .take(6)
        .collect();
    TRACED
        .lock()
        .unwrap()
        .push((p as usize, size, short.join(" | ")));
    IN_TRACE.with(|t| t.set(false));
}

fn trace_free(p: *mut u8) {
    if !TRACING.load(Relaxed) || IN_TRACE.with(|t| t.replace(true)) {
        return;
    }
    TRACED.lock().unwrap().retain(|(q, _, _)| *q != p as usize);
    IN_TRACE.with(|t| t.set(false));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc(layout);
        if !p.is_null() {
            note(layout.size(), 1);
            trace_alloc(p, layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc_zeroed(layout);
        if !p.is_null() {
            note(layout.size(), 1);
            trace_alloc(p, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout);
        note(layout.size(), -1);
        trace_free(ptr);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = mimalloc::MiMalloc.realloc(ptr, layout, new_size);
        if !p.is_null() {
            note(layout.size(), -1);
            note(new_size, 1);
            trace_free(ptr);
            trace_alloc(p, new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// The node, in this process.

fn config(target_sockets: usize) -> Config {
    let mut cfg = Config::default();
    cfg.listen.public = "127.0.0.1:0".into();
    cfg.listen.shards = 1; // one shard: the kernel's spread over shards would vary per run
    cfg.auth.token_secret = SECRET.into();
    cfg.api.key = "memory-budget-api-key".into();
    cfg.node.target_sockets = target_sockets as u64;
    // As the load suite's node (loadtest/suite.sh): a shared namespace with history, personal
    // channels with a short one.
    cfg.namespaces.insert(
        "bench".into(),
        NamespaceConfig {
            publish: true,
            history_size: 1000,
            history_ttl: HumanDuration(Duration::from_secs(300)),
            ..NamespaceConfig::default()
        },
    );
    cfg.namespaces.insert(
        "user".into(),
        NamespaceConfig {
            history_size: 32,
            history_ttl: HumanDuration(Duration::from_secs(600)),
            ..NamespaceConfig::default()
        },
    );
    cfg.validate().expect("valid config");
    cfg
}

/// Starts a node (memory broker, one shard) on a loopback port; its threads live until the
/// test process exits.
fn start_node(cfg: Config) -> SocketAddr {
    let addr: SocketAddr = cfg.listen.public.parse().unwrap();
    let listener = ferrocast::server::bind_reuseport(addr, cfg.listen.backlog).expect("bind");
    let addr = listener.local_addr().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (hub, mut inboxes) = Hub::new(1);
            let broker = ferrocast::broker::build(&cfg.broker, hub.clone())
                .await
                .expect("memory broker");
            let node: Arc<Node> = Node::new(cfg, broker, hub).expect("node");
            let inbox = inboxes.pop().unwrap();
            std::thread::spawn(move || {
                ferrocast::server::run_shard(0, node, listener, inbox, None, None)
            });
            ready_tx.send(()).unwrap();
            std::future::pending::<()>().await
        });
    });
    ready_rx.recv().unwrap();
    addr
}

// ---------------------------------------------------------------------------------------------
// A minimal blocking client.

/// A masked text frame (mask key 0: the payload goes as is).
fn frame(text: &str, out: &mut Vec<u8>) {
    out.clear();
    out.push(0x81);
    let n = text.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(text.as_bytes());
}

/// Reads server frames into `buf` until a text frame containing `needle` arrived.
fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, needle: &str) {
    let mut filled = 0;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        // Whole frames at the front of buf[..filled].
        let mut at = 0;
        while filled - at >= 2 {
            let b1 = buf[at + 1] as usize & 0x7f;
            let (len, head) = match b1 {
                126 if filled - at >= 4 => {
                    (u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize, 4)
                }
                126 => break,
                127 => panic!("unexpected huge frame"),
                n => (n, 2),
            };
            if filled - at < head + len {
                break;
            }
            let payload = &buf[at + head..at + head + len];
            assert_eq!(
                buf[at] & 0x0f,
                1,
                "text frame expected, got {:?}",
                String::from_utf8_lossy(payload)
            );
            let text = std::str::from_utf8(payload).unwrap();
            assert!(
                !text.contains("\"error\""),
                "server answered an error: {text}"
            );
            if text.contains(needle) {
                return;
            }
            at += head + len;
        }
        buf.drain(..at);
        filled -= at;
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        filled += n;
    }
}

/// One idle socket as `wsbench connect --user-channel` makes it.
fn open_socket(addr: SocketAddr, i: usize, scratch: &mut Vec<u8>, out: &mut Vec<u8>) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    // The 101 response head, byte by byte so that nothing past it is consumed.
    let mut head = [0u8; 1024];
    let mut n = 0;
    while !head[..n].ends_with(b"\r\n\r\n") {
        assert!(
            s.read(&mut head[n..n + 1]).expect("read") == 1,
            "closed during upgrade"
        );
        n += 1;
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    let user = format!("u{i}");
    let exp = ferrocast::auth::now_unix() + 3600;
    let token = mint(
        SECRET,
        &Claims {
            sub: user.clone(),
            exp: Some(exp),
            ..Claims::default()
        },
    );
    let commands = [
        (
            format!("{{\"id\":1,\"connect\":{{\"token\":\"{token}\"}}}}"),
            "\"connected\":{",
        ),
        (
            "{\"id\":2,\"subscribe\":{\"channel\":\"bench:load\"}}".to_string(),
            "\"id\":2",
        ),
        (
            format!("{{\"id\":3,\"subscribe\":{{\"channel\":\"user:{user}\"}}}}"),
            "\"id\":3",
        ),
    ];
    for (cmd, answer) in &commands {
        frame(cmd, out);
        s.write_all(out).unwrap();
        read_until(&mut s, scratch, answer);
    }
    s
}

// ---------------------------------------------------------------------------------------------

fn report_sizes() {
    let mut rows: Vec<(isize, usize, isize)> = BY_SIZE
        .iter()
        .enumerate()
        .filter_map(|(slot, n)| {
            let n = n.load(Relaxed);
            let size = if slot < EXACT {
                slot
            } else {
                1 << (slot - EXACT).saturating_sub(1)
            };
            (n != 0).then_some((size as isize * n, size, n))
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.0.abs()));
    eprintln!("heap growth by allocation size (≥ 2^k for sizes ≥ {EXACT}):");
    for (bytes, size, n) in rows.iter().take(25) {
        eprintln!(
            "  {size:>7} B × {n:>7}  = {bytes:>9} B  ({:.1} B per socket)",
            *bytes as f64 / SOCKETS as f64
        );
    }
}

/// Bytes a connection's slot takes in the shard's slab (measured, not computed: the slab's entry
/// type is private).
fn slab_slot_bytes() -> isize {
    const N: usize = 1024;
    let before = LIVE.load(Relaxed);
    let slab = slab::Slab::<ferrocast::hub::connection::Connection>::with_capacity(N);
    let bytes = LIVE.load(Relaxed) - before;
    drop(slab);
    bytes / N as isize
}

#[test]
fn idle_subscribed_socket_fits_the_budget() {
    let capacity = ferrocast::server::raise_fd_limit() as usize;
    assert!(
        capacity >= 2 * (WARMUP + SOCKETS) + 64,
        "this test needs {} file descriptors (the open-file limit allows {capacity})",
        2 * (WARMUP + SOCKETS) + 64
    );
    // Before the node's threads allocate anything.
    let slot = slab_slot_bytes();
    // One more than the sockets opened: MEMORY_BUDGET_TRACE opens another.
    let addr = start_node(config(WARMUP + SOCKETS + 1));
    let mut held: Vec<TcpStream> = Vec::with_capacity(WARMUP + SOCKETS + 1);
    let mut scratch = Vec::with_capacity(64 * 1024);
    let mut out = Vec::with_capacity(4096);
    for i in 0..WARMUP {
        held.push(open_socket(addr, i, &mut scratch, &mut out));
    }
    std::thread::sleep(Duration::from_millis(200));
    let report = std::env::var_os("MEMORY_BUDGET_REPORT").is_some();
    TRACK_SIZES.store(report, Relaxed);
    let (bytes0, allocs0) = (LIVE.load(Relaxed), LIVE_ALLOCS.load(Relaxed));
    for i in WARMUP..WARMUP + SOCKETS {
        held.push(open_socket(addr, i, &mut scratch, &mut out));
    }
    // Let the node settle: the last reply is written before its command's state is dropped,
    // and a drained outbound queue keeps its slot array until a shard tick (1 s) without output.
    std::thread::sleep(Duration::from_millis(2500));
    let (bytes1, allocs1) = (LIVE.load(Relaxed), LIVE_ALLOCS.load(Relaxed));
    TRACK_SIZES.store(false, Relaxed);

    let heap = (bytes1 - bytes0) / SOCKETS as isize;
    let per_socket = heap + slot;
    eprintln!(
        "idle socket on user:<id> + one shared channel: {per_socket} B = {heap} B of heap growth \
         in {:.2} allocations + a {slot} B slab slot (budget {BUDGET} B; {SOCKETS} sockets)",
        (allocs1 - allocs0) as f64 / SOCKETS as f64
    );
    if report {
        report_sizes();
    }
    if std::env::var_os("MEMORY_BUDGET_TRACE").is_some() {
        TRACING.store(true, Relaxed);
        held.push(open_socket(addr, WARMUP + SOCKETS, &mut scratch, &mut out));
        std::thread::sleep(Duration::from_millis(200));
        TRACING.store(false, Relaxed);
        eprintln!("allocations one more socket left behind (its outbound queue is still in use):");
        for (_, size, bt) in TRACED.lock().unwrap().iter() {
            eprintln!("  {size:>6} B: {bt}");
        }
    }
    // The task and the socket's IO registration alone are 512 B: less means nothing was measured.
    assert!(
        heap >= 512,
        "implausible heap growth of {heap} B per socket"
    );
    assert!(
        per_socket <= BUDGET,
        "an idle subscribed socket costs {per_socket} B of heap, over the {BUDGET} B budget \
         (MEMORY_BUDGET_REPORT=1 shows what grew)"
    );
    drop(held);
}
