//! Listeners: binding (SO_REUSEPORT, one per shard), the accept loop with its admission checks,
//! the HTTP/WebSocket upgrade path, the admin listener. Started by `crate::node` (the wiring).

pub mod admin;
pub mod per_ip;
pub mod sse;
pub mod upgrade;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::hub::shard::Shard;
use crate::hub::Node;
use crate::metrics::metrics;

/// One listening socket per shard on the same address (`SO_REUSEPORT`): the kernel spreads new
/// connections over the shards with no shared accept lock.
pub fn bind_reuseport(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Raises the soft file limit to the hard one; returns the socket capacity that allows.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid, initialized struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        // Keep a reserve for listeners, the broker, logs and API connections.
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
        (lim.rlim_cur as u64).saturating_sub(100)
    }
}

pub fn run_shard(
    index: usize,
    node: Arc<Node>,
    listener: std::net::TcpListener,
    inbox: tokio::sync::mpsc::UnboundedReceiver<crate::hub::ShardMsg>,
    core: Option<core_affinity::CoreId>,
    per_ip: Option<Arc<per_ip::PerIp>>,
) {
    // The shard's socket gauge exists from the first scrape (0), not from its first socket.
    metrics()
        .sockets
        .with_label_values(&[&index.to_string()])
        .set(0);
    if let Some(core) = core {
        // Pinning is best-effort: containers may forbid it.
        core_affinity::set_for_current(core);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("shard runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let shard = Shard::new(index, node);
        let listener = TcpListener::from_std(listener).expect("listener");
        tokio::task::spawn_local(shard.clone().run_inbox(inbox));
        tokio::task::spawn_local(shard.clone().run_ticker());
        if !shard.node.config.pusher.apps.is_empty() {
            tokio::task::spawn_local(crate::pusher::conn::run_ticker(shard.clone()));
        }
        accept_loop(shard, listener, per_ip).await;
        // Keep serving the drain until the process exits.
        std::future::pending::<()>().await;
    });
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, per_ip: Option<Arc<per_ip::PerIp>>) {
    let pending = Rc::new(std::cell::Cell::new(0usize));
    let max_pending = shard.node.config.limits.max_pending_handshakes;
    loop {
        if shard.draining.get() {
            return;
        }
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shard.drain_started.notified() => return,
        };
        if pending.get() >= max_pending {
            metrics()
                .handshake_failures
                .with_label_values(&["throttled"])
                .inc();
            const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 66\r\nconnection: close\r\nretry-after: 1\r\n\r\n{\"error\":{\"code\":110,\"message\":\"too many handshakes in progress\"}}";
            let _ = stream.try_write(BUSY);
            continue;
        }
        let slot = match per_ip.as_ref().map(|t| t.admit(peer.ip())) {
            None => None,
            Some(Ok(slot)) => Some(slot),
            Some(Err(refused)) => {
                metrics()
                    .handshake_failures
                    .with_label_values(&["per_ip"])
                    .inc();
                let body = format!(
                    "{{\"error\":{{\"code\":110,\"message\":\"{}\"}}}}",
                    refused.message()
                );
                let head = format!(
                    "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n",
                    body.len()
                );
                let _ = stream.try_write(format!("{head}{body}").as_bytes());
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        pending.set(pending.get() + 1);
        let pending = pending.clone();
        let shard = shard.clone();
        tokio::task::spawn_local(async move {
            upgrade::serve_http(shard, stream, peer, slot).await;
            pending.set(pending.get() - 1);
        });
    }
}
