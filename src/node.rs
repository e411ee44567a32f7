//! The wiring: a node from a config. Binds the listeners (so a taken port fails the start, not a
//! shard thread later), builds the hub, the broker and the shared `Node` state, starts one shard
//! thread per listener and the admin listener, and drains on SIGTERM/SIGINT.
//!
//! Layers, each using only those below it (docs/design.md): `protocol/` ← `ws/` ← `broker/` ←
//! `hub/` ← `server/` + `api/` ← this file; `config`, `clock`, `metrics` and `http` serve all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::hub::{Hub, Node};
use crate::metrics::metrics;
use crate::server::{admin, bind_reuseport, per_ip, raise_fd_limit, run_shard};

/// Runs a node until SIGTERM/SIGINT has drained it.
/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0} {1}: {2}")]
    Bind(&'static str, SocketAddr, std::io::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Broker(#[from] crate::broker::StartError),
    #[error(transparent)]
    Auth(#[from] crate::auth::KeyError),
}

pub fn run(config: Config) -> Result<(), NodeError> {
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
    // Both parse: `Config::load` validated them.
    let public: SocketAddr = config.listen.public.parse().expect("validated");
    let admin: SocketAddr = config.listen.admin.parse().expect("validated");
    // Bind everything up front so a taken port fails the start, not a shard thread later.
    let first = bind_reuseport(public, config.listen.backlog)
        .map_err(|e| NodeError::Bind("listen.public", public, e))?;
    let public = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..shards {
        listeners.push(bind_reuseport(public, config.listen.backlog)?);
    }
    let admin_listener = std::net::TcpListener::bind(admin)
        .map_err(|e| NodeError::Bind("listen.admin", admin, e))?;
    admin_listener.set_nonblocking(true)?;
    let admin = admin_listener.local_addr()?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (hub, inboxes) = Hub::new(shards);
        hub.set_max_backlog(config.limits.max_inbox_backlog);
        let broker = crate::broker::build(&config.broker, hub.clone()).await?;
        let mut node = Node::new(config, broker, hub.clone())?;
        // Each Pusher app's series exist from the first scrape (0), not from its first event.
        for app in &node.config.pusher.apps {
            let m = crate::metrics::metrics();
            m.pusher_connections
                .with_label_values(&[&app.app_id])
                .set(0);
            for source in ["api", "client"] {
                m.pusher_events.with_label_values(&[&app.app_id, source]);
            }
        }
        let events = crate::events::Events::start(&node.config, node.broker.clone(), &node.id, &node.name);
        Arc::get_mut(&mut node).expect("not shared yet").events = events;
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
        if let Some(events) = &node.events {
            // The drained connections' leaves reach the broker, queued webhooks go out.
            events.flush(Duration::from_secs(5)).await;
        }
        admin_task.abort();
        scheduled.abort();
        tracing::info!("drained; bye");
        Ok::<(), NodeError>(())
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
