//! Listeners, the accept loop and the HTTP/WebSocket upgrade path; node start-up and shutdown.

pub mod admin;
pub mod per_ip;
pub mod upgrade;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::hub::shard::Shard;
use crate::hub::Hub;
use crate::metrics::metrics;
use crate::node::Node;

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

/// Runs a node until SIGTERM/SIGINT has drained it.
pub fn run(config: Config) -> anyhow::Result<()> {
    config.check_serving_secrets()?;
    let capacity = raise_fd_limit();
    metrics().socket_capacity.set(capacity as i64);
    if config.node.target_sockets > capacity {
        tracing::warn!(
            capacity,
            target = config.node.target_sockets,
            "the file limit allows fewer sockets than node.target_sockets; see sysctl/"
        );
    } else {
        tracing::info!(capacity, "socket capacity from RLIMIT_NOFILE");
    }

    let shards = config.shard_count();
    let public: SocketAddr = config.listen.public.parse()?;
    let admin: SocketAddr = config.listen.admin.parse()?;
    // Bind everything up front so a taken port fails the start, not a shard thread later.
    let first = bind_reuseport(public, config.listen.backlog)
        .map_err(|e| anyhow::anyhow!("listen.public {public}: {e}"))?;
    let public = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..shards {
        listeners.push(bind_reuseport(public, config.listen.backlog)?);
    }
    let admin_listener = std::net::TcpListener::bind(admin)
        .map_err(|e| anyhow::anyhow!("listen.admin {admin}: {e}"))?;
    admin_listener.set_nonblocking(true)?;
    let admin = admin_listener.local_addr()?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (hub, inboxes) = Hub::new(shards);
        hub.set_max_backlog(config.limits.max_inbox_backlog);
        let broker = crate::broker::build(&config.broker, hub.clone()).await?;
        let node = Node::new(config, broker, hub.clone())?;
        let cores = if node.config.listen.pin_shards {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let per_ip = per_ip::PerIp::new(
            node.config.limits.max_connections_per_ip,
            node.config.limits.handshakes_per_ip_per_second,
        );
        let mut threads = Vec::new();
        for (i, (listener, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
            let node = node.clone();
            let per_ip = per_ip.clone();
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("shard-{i}"))
                    .spawn(move || run_shard(i, node, listener, inbox, core, per_ip))?,
            );
        }
        tracing::info!(%public, %admin, shards, node = %node.name, broker = %node.config.broker.kind, "listening public={public} admin={admin}");
        let admin_task = tokio::spawn(admin::serve(TcpListener::from_std(admin_listener)?, node.clone()));
        let scheduled = tokio::spawn(report_scheduled(node.clone()));

        wait_for_signal().await;
        tracing::info!(drain_seconds = node.config.shutdown.drain_seconds, "draining");
        node.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        metrics().draining.set(1);
        let budget = Duration::from_secs(node.config.shutdown.drain_seconds + 10);
        if tokio::time::timeout(budget, hub.drain()).await.is_err() {
            tracing::warn!("drain did not finish in time; exiting anyway");
        }
        admin_task.abort();
        scheduled.abort();
        tracing::info!("drained; bye");
        anyhow::Ok(())
    })?;
    // Shard threads hold no state worth waiting for once drained.
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn report_scheduled(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        if n % 5 == 1 {
            // Heartbeat: keeps this node listed in `/api/info` across the fleet.
            let _ = node.broker.nodes(node.info()).await;
        }
        metrics()
            .scheduled_pending
            .set(node.broker.scheduled_pending() as i64);
        metrics().broker_up.set(node.broker.is_up() as i64);
        metrics().inbox_backlog.set(node.hub.backlog() as i64);
    }
}

fn run_shard(
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
