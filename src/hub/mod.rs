//! The hub: the node's shards and the hand-off of publications to them.
//!
//! A publication is serialized once per node; the hub gives each shard a reference to it through
//! the shard's inbox (tokio's unbounded MPSC: a lock-free linked list of slot blocks, so producers
//! on any thread never take a lock). Each shard then frames it once into its own buffer and fans
//! it out to its local subscribers — see `shard.rs`.

pub mod client;
pub mod connection;
pub mod node;
pub mod shard;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

pub use node::Node;

use crate::broker::{Control, DeliverySink};
use crate::protocol::ChannelName;

/// One publication (or join/leave push) as it crosses from the broker to the shards.
#[derive(Debug)]
pub struct Delivery {
    pub channel: ChannelName,
    /// Stream offset; 0 for pushes that are not part of the stream (join/leave).
    pub offset: u64,
    /// The JSON text of the server frame.
    pub payload: Bytes,
    /// When the publication was accepted (unix µs), for the delivery latency histogram.
    pub published_at_us: u64,
}

pub enum ShardMsg {
    Deliver(Arc<Delivery>),
    Control(Control),
    /// Stop accepting and close every socket with 4010, spread over `drain_seconds`; answer when
    /// the shard is empty.
    Drain(oneshot::Sender<()>),
}

pub struct Hub {
    shards: Vec<mpsc::UnboundedSender<ShardMsg>>,
    /// Deliveries handed to shard inboxes and not yet fanned out (all shards together).
    backlog: AtomicUsize,
    /// Past this backlog new publications are refused (`limits.max_inbox_backlog`): the inboxes
    /// stay bounded by refusing at the door instead of dropping what was accepted.
    max_backlog: AtomicUsize,
}

impl Hub {
    /// A hub for `n` shards, and the inbox each shard thread will drain.
    pub fn new(n: usize) -> (Arc<Hub>, Vec<mpsc::UnboundedReceiver<ShardMsg>>) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        let hub = Hub {
            shards: txs,
            backlog: AtomicUsize::new(0),
            max_backlog: AtomicUsize::new(usize::MAX),
        };
        (Arc::new(hub), rxs)
    }

    pub fn set_max_backlog(&self, max: usize) {
        self.max_backlog.store(max, Ordering::Relaxed);
    }

    /// Deliveries waiting in shard inboxes.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Whether the shards are so far behind that new publications should be refused.
    pub fn overloaded(&self) -> bool {
        self.backlog() >= self.max_backlog.load(Ordering::Relaxed)
    }

    /// A shard took `n` deliveries out of its inbox.
    pub fn taken(&self, n: usize) {
        self.backlog.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Hands a publication to every shard; each shard ignores channels it has no subscriber for.
    pub fn deliver(
        &self,
        channel: &ChannelName,
        offset: u64,
        payload: Bytes,
        published_at_us: u64,
    ) {
        let d = Arc::new(Delivery {
            channel: channel.clone(),
            offset,
            payload,
            published_at_us,
        });
        for tx in &self.shards {
            // Count before sending: the shard may take it (and count it down) before `send`
            // returns, and a count that dipped below zero would read as an overloaded node.
            self.backlog.fetch_add(1, Ordering::Relaxed);
            if tx.send(ShardMsg::Deliver(d.clone())).is_err() {
                self.backlog.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    pub fn control(&self, msg: Control) {
        for tx in &self.shards {
            let _ = tx.send(ShardMsg::Control(msg.clone()));
        }
    }

    /// Starts the drain on every shard; resolves when all are empty.
    pub async fn drain(&self) {
        let mut waits = Vec::new();
        for tx in &self.shards {
            let (done, wait) = oneshot::channel();
            if tx.send(ShardMsg::Drain(done)).is_ok() {
                waits.push(wait);
            }
        }
        for w in waits {
            let _ = w.await;
        }
    }
}

impl DeliverySink for Hub {
    fn deliver(&self, channel: &ChannelName, offset: u64, payload: Bytes, published_at_us: u64) {
        Hub::deliver(self, channel, offset, payload, published_at_us)
    }

    fn control(&self, msg: Control) {
        Hub::control(self, msg)
    }

    fn overloaded(&self) -> bool {
        Hub::overloaded(self)
    }
}
