//! Everything that comes in through the subscriber connection:
//!
//! - the subscription task, which applies subscription changes in the order they were asked
//!   for and batches whatever is queued;
//! - the sequencer task, which drives the pure [`Sequencer`] with every publication, baseline and
//!   position read, and does what it says (deliver to the hub, read history, reset a channel,
//!   re-subscribe);
//! - the position check, which reads every subscribed channel's stream top periodically and right
//!   after reconnects.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::PubsubInterface;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::connection::{value_array, value_bytes, value_str, value_u64};
use super::sequencer::{Checked, Repair, Sequencer, Start, Step};
use super::{decode_control, unix_us, Inner};
use crate::broker::{BrokerError, ChannelOptions, Control, HistoryItem};
use crate::metrics::metrics;
use crate::protocol::{reply, ChannelName};

/// At most this many subscription changes go to Redis in one batch.
const MAX_BATCH: usize = 4096;

/// A change for the subscription task (channels are shard channels, `P:{C}`).
pub(super) enum SubReq {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
    /// Subscribe again (the live stream of the channel looks broken).
    Refresh(String),
    /// Subscribe every channel again (after a reconnect or a topology change).
    RefreshAll,
}

/// Events for the sequencer task (which owns every channel's delivery state); channels are
/// shard channels.
pub(super) enum SeqEvent {
    /// The node is about to `SSUBSCRIBE`: hold the channel's publications until its baseline.
    Subscribing(String),
    /// The subscription is in effect and the stream was read after that.
    Baseline {
        channel: String,
        start: Start,
    },
    Forget(String),
    /// The position check read the channel's stream top.
    Check {
        channel: String,
        epoch: Arc<str>,
        top: u64,
        /// `Inner::generation` before the read was issued.
        read_at: u64,
    },
    /// A repair's history read is done (None: history can't fill the gap).
    Repaired {
        repair: Repair,
        items: Option<Vec<HistoryItem>>,
    },
}

/// Subscribes the node to `channel` (its first local subscriber arrived); answers once the
/// subscription is in place.
pub(super) async fn subscribe(inner: &Inner, channel: &ChannelName) -> Result<(), BrokerError> {
    let (tx, rx) = oneshot::channel();
    let _ = inner
        .sub_tx
        .send(SubReq::Subscribe(inner.shard_channel(channel.as_str()), tx));
    rx.await
        .unwrap_or_else(|_| Err(BrokerError::Unavailable("broker stopped".into())))
}

/// Unsubscribes the node from `channel` (its last local subscriber left).
pub(super) fn unsubscribe(inner: &Inner, channel: &ChannelName) {
    let _ = inner
        .sub_tx
        .send(SubReq::Unsubscribe(inner.shard_channel(channel.as_str())));
}

// ---- subscriptions: batched, in order -------------------------------------------------------------

/// Applies subscription changes in the order they were asked for, batching everything queued
/// (thousands of sockets arriving at once become a few `SSUBSCRIBE`s, one per hash slot).
pub(super) async fn run_subscriptions(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<SubReq>) {
    let inner = &*inner;
    let sub = &inner.conn.sub;
    let control = inner.control_channel();
    // Subscribes answered Ok minus unsubscribes, per channel. The hub's shards subscribe and
    // unsubscribe a channel from different threads: a shard's first subscriber can ask for the
    // subscription before the shard that lost the channel's last subscriber a moment earlier
    // asks to drop it (every subscriber of a reset channel leaves and comes back at once). Only
    // the count reaching 0 unsubscribes, whatever the order the requests came in.
    let mut counts: HashMap<String, u32> = HashMap::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // Every waiter is answered with the outcome; the count decides what is wanted.
        let mut touched: HashSet<String> = HashSet::new();
        let mut waiters: HashMap<String, Vec<oneshot::Sender<Result<(), BrokerError>>>> =
            HashMap::new();
        let mut refresh = Vec::new();
        let mut refresh_all = false;
        for r in batch {
            match r {
                SubReq::Subscribe(c, tx) => {
                    *counts.entry(c.clone()).or_default() += 1;
                    waiters.entry(c.clone()).or_default().push(tx);
                    touched.insert(c);
                }
                SubReq::Unsubscribe(c) => {
                    if let Some(n) = counts.get_mut(&c) {
                        *n = n.saturating_sub(1);
                    }
                    touched.insert(c);
                }
                SubReq::Refresh(c) => refresh.push(c),
                SubReq::RefreshAll => refresh_all = true,
            }
        }
        let (mut subs, mut unsubs) = (Vec::new(), Vec::new());
        {
            let set = inner.subscribed.lock();
            for c in touched {
                let wanted = counts.get(&c).is_some_and(|n| *n > 0);
                if !wanted {
                    counts.remove(&c);
                }
                match (wanted, set.contains(&c)) {
                    (true, false) => subs.push(c),
                    (false, true) => unsubs.push(c),
                    // Already subscribed: its waiters are answered Ok below.
                    _ => {}
                }
            }
        }

        tracing::debug!(
            ?subs,
            ?unsubs,
            waiting = waiters.len(),
            "subscription batch"
        );
        if !unsubs.is_empty() {
            {
                let mut set = inner.subscribed.lock();
                for c in &unsubs {
                    set.remove(c);
                }
            }
            for c in &unsubs {
                let _ = inner.seq_tx.send(SeqEvent::Forget(c.clone()));
            }
            for group in by_slot(inner.conn.cluster, unsubs) {
                if let Err(e) = sub.sunsubscribe(group).await {
                    tracing::warn!(error = %e, "SUNSUBSCRIBE failed");
                }
            }
        }

        let mut failed: HashSet<String> = HashSet::new();
        if !subs.is_empty() {
            // Sent before the SSUBSCRIBE goes out, so the sequencer holds the channel's first
            // publications until its baseline (read once the subscription is in effect) is in.
            for c in &subs {
                let _ = inner.seq_tx.send(SeqEvent::Subscribing(c.clone()));
            }
            let groups = by_slot(inner.conn.cluster, subs.clone());
            let results = futures_util::future::join_all(
                groups
                    .iter()
                    .map(|g| async move { (g, sub.ssubscribe(g.clone()).await) }),
            )
            .await;
            let mut again: Vec<Vec<String>> = Vec::new();
            for (group, r) in results {
                if let Err(e) = inner.conn.ok(r) {
                    if inner.conn.cluster {
                        again.push(group.clone());
                    } else {
                        tracing::warn!(error = %e, channels = group.len(), "SSUBSCRIBE failed");
                        failed.extend(group.iter().cloned());
                    }
                }
            }
            if !again.is_empty() {
                // The subscriber's slot map may be stale (after a failover it still sends to
                // the old master, which may hang stopped or answer as a replica): refresh it
                // and try once more before the subscribers are told 108.
                inner.conn.sync_subscriber_topology().await;
                for group in again {
                    if let Err(e) = inner.conn.ok(sub.ssubscribe(group.clone()).await) {
                        tracing::warn!(error = %e, channels = group.len(), "SSUBSCRIBE failed");
                        failed.extend(group);
                    }
                }
            }
            for c in &failed {
                let _ = inner.seq_tx.send(SeqEvent::Forget(c.clone()));
            }
            let ok: Vec<&String> = subs.iter().filter(|c| !failed.contains(*c)).collect();
            inner
                .subscribed
                .lock()
                .extend(ok.iter().map(|c| (*c).clone()));
            // Where each stream stands now that the subscriptions are in effect (the SSUBSCRIBE
            // replies are in), so the sequencer can tell a gap from a start. Publications that
            // arrive before this answer are held by the sequencer, never taken as the start.
            let control = inner.control_channel();
            let ok: Vec<&String> = ok.into_iter().filter(|c| **c != control).collect();
            let positions =
                futures_util::future::join_all(ok.iter().map(|c| read_start(inner, c.as_str())))
                    .await;
            // A subscription whose position can't be read fails (the shard answers its
            // clients 108 and they retry): following it from its first publication instead
            // could skip what came between the client's read and that publication.
            let mut unread = Vec::new();
            for (c, start) in ok.iter().zip(positions) {
                match start {
                    Some(start) => {
                        let _ = inner.seq_tx.send(SeqEvent::Baseline {
                            channel: (*c).clone(),
                            start,
                        });
                    }
                    None => unread.push((*c).clone()),
                }
            }
            if !unread.is_empty() {
                tracing::warn!(
                    channels = unread.len(),
                    "position read after SSUBSCRIBE failed"
                );
                {
                    let mut set = inner.subscribed.lock();
                    for c in &unread {
                        set.remove(c);
                    }
                }
                for c in &unread {
                    let _ = inner.seq_tx.send(SeqEvent::Forget(c.clone()));
                    failed.insert(c.clone());
                }
                for group in by_slot(inner.conn.cluster, unread) {
                    if let Err(e) = sub.sunsubscribe(group).await {
                        tracing::warn!(error = %e, "SUNSUBSCRIBE failed");
                    }
                }
            }
        }
        if !failed.is_empty() {
            tracing::debug!(?failed, "subscriptions failed");
        }
        for (c, txs) in waiters {
            let r = if failed.contains(&c) {
                Err(BrokerError::Unavailable("subscribe failed".into()))
            } else {
                Ok(())
            };
            // A failed subscribe is never unsubscribed, nor is one whose asker is gone.
            let mut unpaired = 0;
            for tx in txs {
                if tx.send(r.clone()).is_err() && r.is_ok() && c != control {
                    unpaired += 1;
                }
            }
            if r.is_err() {
                counts.remove(&c);
            } else if unpaired > 0 {
                if let Some(n) = counts.get_mut(&c) {
                    *n = n.saturating_sub(unpaired);
                    if *n == 0 {
                        // Nobody wants it any more: leave it the usual way.
                        counts.remove(&c);
                        let _ = inner.sub_tx.send(SubReq::Unsubscribe(c.clone()));
                        *counts.entry(c).or_default() += 1;
                    }
                }
            }
        }
        // Applied after this batch's changes and only to channels still wanted, so a
        // resubscription can't revive a channel the node just left.
        let refresh: Vec<String> = {
            let set = inner.subscribed.lock();
            if refresh_all {
                set.iter().cloned().collect()
            } else {
                refresh.into_iter().filter(|c| set.contains(c)).collect()
            }
        };
        if !refresh.is_empty() {
            // Re-subscribing where the old map says would only reach the old node again.
            inner.conn.sync_subscriber_topology().await;
        }
        for group in by_slot(inner.conn.cluster, refresh) {
            let n = group.len() as u64;
            match inner.conn.ok(sub.ssubscribe(group).await) {
                Ok(()) => metrics().broker_resubscribes.inc_by(n),
                Err(e) => {
                    tracing::warn!(error = %e, "resubscribe failed; the position check will retry")
                }
            }
        }
    }
}

/// Groups channels for `SSUBSCRIBE`/`SUNSUBSCRIBE`: a cluster takes one hash slot per command
/// (the groups then go out pipelined, concurrently); a single server takes any channels, in
/// chunks of 1,000.
fn by_slot(cluster: bool, channels: Vec<String>) -> Vec<Vec<String>> {
    if !cluster {
        return channels.chunks(1000).map(|c| c.to_vec()).collect();
    }
    let mut groups: HashMap<u16, Vec<String>> = HashMap::new();
    for c in channels {
        groups
            .entry(fred::util::redis_keyslot(c.as_bytes()))
            .or_default()
            .push(c);
    }
    groups.into_values().collect()
}

/// (epoch, top offset) of a channel's stream: Ok(None) when it has none, Err when Redis can't
/// say.
async fn read_meta(inner: &Inner, shard_channel: &str) -> Result<Option<(Arc<str>, u64)>, ()> {
    let channel = inner.channel_of(shard_channel).ok_or(())?;
    // A script rather than HMGET: a stream written by another master (failover) reads as none,
    // since it restarts under a new epoch at its next publication or read.
    let v = inner
        .eval(
            &inner.scripts.position,
            vec![inner.key(channel, "m")],
            vec![],
        )
        .await
        .map_err(|_| ())?;
    let v = value_array(v);
    let epoch = v.first().and_then(value_str).ok_or(())?;
    if epoch.is_empty() {
        return Ok(None);
    }
    let top = v.get(1).and_then(value_u64).unwrap_or(0);
    Ok(Some((epoch, top)))
}

/// (epoch, top offset) of a channel's stream, or None when it has none or Redis can't say.
async fn read_position(inner: &Inner, shard_channel: &str) -> Option<(Arc<str>, u64)> {
    read_meta(inner, shard_channel).await.ok().flatten()
}

/// The subscribe-time baseline of a channel; None when Redis can't say.
async fn read_start(inner: &Inner, shard_channel: &str) -> Option<Start> {
    match read_meta(inner, shard_channel).await {
        Ok(Some((epoch, top))) => Some(Start::At(epoch, top)),
        Ok(None) => Some(Start::Empty),
        Err(()) => None,
    }
}

// ---- position checks ------------------------------------------------------------------------------

/// Every `position_check_interval` (and at once after reconnects), reads each subscribed
/// channel's stream top and hands it to the sequencer, which repairs gaps. Also keeps `healthy`
/// current while the node is idle.
pub(super) async fn run_position_checks(inner: Arc<Inner>) {
    use fred::prelude::ClientLike;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.check_interval) => {}
            _ = inner.check_now.notified() => {
                // Let resubscriptions land first.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let ping: Result<(), _> = inner.conn.client.ping(None).await;
        if inner.conn.ok(ping).is_err() {
            continue;
        }
        let control = inner.control_channel();
        let channels: Vec<String> = inner
            .subscribed
            .lock()
            .iter()
            .filter(|c| **c != control)
            .cloned()
            .collect();
        for chunk in channels.chunks(512) {
            let read_at = inner.generation.load(Ordering::Relaxed);
            let positions =
                futures_util::future::join_all(chunk.iter().map(|c| read_position(&inner, c)))
                    .await;
            for (c, pos) in chunk.iter().zip(positions) {
                if let Some((epoch, top)) = pos {
                    let _ = inner.seq_tx.send(SeqEvent::Check {
                        channel: c.clone(),
                        epoch,
                        top,
                        read_at,
                    });
                }
            }
        }
    }
}

// ---- the sequencer task: every publication reaching this node passes here ------------------------

/// Feeds the [`Sequencer`] with every message and event, one at a time, and does what it says. A
/// repair's history read runs in a task of its own and comes back as [`SeqEvent::Repaired`]:
/// meanwhile only the repairing channel's publications wait (held by the sequencer).
pub(super) async fn run_sequencer(
    inner: Arc<Inner>,
    mut messages: broadcast::Receiver<fred::types::Message>,
    mut events: mpsc::UnboundedReceiver<SeqEvent>,
) {
    let mut seq: Sequencer<Bytes> = Sequencer::new();
    let control = inner.control_channel();
    loop {
        tokio::select! {
            // Events first: a `Subscribing` sent before an SSUBSCRIBE is applied before any
            // publication that subscription brings.
            biased;
            e = events.recv() => match e {
                Some(SeqEvent::Subscribing(channel)) => {
                    if let Some(name) = inner.channel_of(&channel).and_then(|n| ChannelName::parse(n).ok()) {
                        seq.subscribing(&name);
                    }
                }
                Some(SeqEvent::Baseline { channel, start }) => {
                    if let Some(name) = inner.channel_of(&channel) {
                        let steps = seq.baseline(name, start);
                        run_steps(&inner, steps, None);
                    }
                }
                Some(SeqEvent::Forget(channel)) => {
                    if let Some(name) = inner.channel_of(&channel) {
                        seq.forget(name);
                    }
                }
                Some(SeqEvent::Check { channel, epoch, top, read_at }) => {
                    on_check(&inner, &mut seq, &channel, epoch, top, read_at);
                }
                Some(SeqEvent::Repaired { repair, items }) => {
                    on_repaired(&inner, &mut seq, repair, items);
                }
                None => return,
            },
            m = messages.recv() => match m {
                Ok(m) => {
                    let Some(payload) = value_bytes(&m.value) else { continue };
                    if *m.channel == *control {
                        apply_control(&inner, &payload);
                    } else {
                        on_message(&inner, &mut seq, &m.channel, payload);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "pub/sub receiver lagged; repairing from history");
                    inner.check_now.notify_one();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
        publish_generation(&inner, &seq);
    }
}

/// Lets the position check see how far the sequencer's state has moved.
fn publish_generation(inner: &Inner, seq: &Sequencer<Bytes>) {
    inner.generation.store(seq.generation(), Ordering::Relaxed);
}

fn apply_control(inner: &Inner, payload: &[u8]) {
    match decode_control(payload) {
        Ok(Some(msg)) => inner.hub.control(msg),
        Ok(None) => {}
        Err(_) => tracing::warn!("undecodable fleet command"),
    }
}

struct Wire<'a> {
    offset: u64,
    epoch: &'a str,
    published_at_us: u64,
    info: Option<&'a [u8]>,
    data: &'a [u8],
}

/// `p <offset> <epoch> <published_at_us> <info_len>\n<info><data>` (written by `publish.lua`).
fn parse_wire(payload: &[u8]) -> Option<Wire<'_>> {
    let nl = payload.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&payload[..nl]).ok()?;
    let mut parts = header.split(' ');
    if parts.next()? != "p" {
        return None;
    }
    let offset = parts.next()?.parse().ok()?;
    let epoch = parts.next()?;
    let published_at_us = parts.next()?.parse().ok()?;
    let info_len: usize = parts.next()?.parse().ok()?;
    let body = &payload[nl + 1..];
    if body.len() < info_len {
        return None;
    }
    let (info, data) = body.split_at(info_len);
    Some(Wire {
        offset,
        epoch,
        published_at_us,
        info: (!info.is_empty()).then_some(info),
        data,
    })
}

fn on_message(inner: &Arc<Inner>, seq: &mut Sequencer<Bytes>, shard_channel: &str, payload: Bytes) {
    let Some(name) = inner.channel_of(shard_channel) else {
        return;
    };
    if payload.first() == Some(&b'c') {
        // Join/leave: `c <published_at_us>\n<frame>`, no offset; only for channels followed.
        let Some(channel) = seq.channel(name) else {
            return;
        };
        let Some(nl) = payload.iter().position(|b| *b == b'\n') else {
            return;
        };
        let at = std::str::from_utf8(payload.get(2..nl).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(unix_us);
        inner.hub.deliver(channel, 0, payload.slice(nl + 1..), at);
        return;
    }
    let Some((epoch, offset)) = parse_wire(&payload).map(|w| (w.epoch.to_string(), w.offset))
    else {
        tracing::warn!(channel = name, "undecodable publication from Redis");
        return;
    };
    let steps = seq.publication(name, &epoch, offset, payload);
    run_steps(inner, steps, None);
}

fn deliver_live(inner: &Inner, channel: &ChannelName, payload: &[u8]) {
    let Some(w) = parse_wire(payload) else { return };
    inner.broker_publications.inc();
    let frame = reply::publication(channel, w.offset, w.data, w.info);
    inner
        .hub
        .deliver(channel, w.offset, Bytes::from(frame), w.published_at_us);
}

fn on_check(
    inner: &Arc<Inner>,
    seq: &mut Sequencer<Bytes>,
    shard_channel: &str,
    epoch: Arc<str>,
    top: u64,
    read_at: u64,
) {
    let Some(name) = inner.channel_of(shard_channel) else {
        return;
    };
    let checked = seq.check(name, epoch.clone(), top, read_at);
    tracing::debug!(channel = name, %epoch, top, ?checked, "position check");
    match checked {
        Checked::InStep => {}
        Checked::Reset => {
            let Some(channel) = seq.channel(name).cloned() else {
                return;
            };
            // The stream we were following is gone (lost in a failover, or expired and restarted
            // with publications we never saw): subscribers must recover from the new state.
            tracing::warn!(%channel, "stream changed under us; asking subscribers to resubscribe");
            inner.hub.control(Control::ResetChannel { channel });
        }
        Checked::Repair(r) => start_repair(inner, r),
    }
}

/// Reads the history `r` asks for in a task of its own and hands the result back to the
/// sequencer task ([`SeqEvent::Repaired`]).
fn start_repair(inner: &Arc<Inner>, r: Repair) {
    let inner2 = inner.clone();
    tokio::spawn(async move {
        let options = ChannelOptions {
            history_size: 0,
            history_ttl: Duration::ZERO,
        };
        let read = inner2
            .read_history(r.channel.as_str(), options, Some((r.after, &r.epoch)), None)
            .await;
        let items = match read {
            Ok(h) => Some(h.publications),
            Err(e) => {
                tracing::warn!(channel = %r.channel, missing = r.upto - r.after, error = %e, "gap not recoverable; asking subscribers to resubscribe");
                None
            }
        };
        let _ = inner2.seq_tx.send(SeqEvent::Repaired { repair: r, items });
    });
}

/// A repair's history read is in: the sequencer says what to deliver (history items, then the
/// publications held meanwhile), reset or re-subscribe.
fn on_repaired(
    inner: &Arc<Inner>,
    seq: &mut Sequencer<Bytes>,
    r: Repair,
    items: Option<Vec<HistoryItem>>,
) {
    let missing = r.upto - r.after;
    let channel = r.channel.clone();
    let offsets: Option<Vec<u64>> = items.as_ref().map(|h| h.iter().map(|p| p.offset).collect());
    let steps = seq.repaired(r, offsets.as_deref(), unix_us());
    if items.is_some() && !steps.is_empty() {
        let repaired = steps
            .iter()
            .filter(|s| matches!(s, Step::DeliverHistory { .. }))
            .count();
        tracing::info!(%channel, missing, repaired, "filled a gap from history");
    }
    run_steps(
        inner,
        steps,
        Some((&channel, items.as_deref().unwrap_or(&[]))),
    );
}

/// Does what the sequencer said, in order. `history`: the channel and items of the repair the
/// steps answer.
fn run_steps(
    inner: &Arc<Inner>,
    steps: Vec<Step<Bytes>>,
    history: Option<(&ChannelName, &[HistoryItem])>,
) {
    for step in steps {
        match step {
            Step::Deliver {
                channel, payload, ..
            } => deliver_live(inner, &channel, &payload),
            Step::Repair(r) => start_repair(inner, r),
            Step::DeliverHistory {
                index,
                offset,
                published_at_us,
            } => {
                let Some((channel, items)) = history else {
                    continue;
                };
                let Some(p) = items.get(index) else { continue };
                let frame = reply::publication(channel, offset, &p.data, p.info.as_deref());
                inner
                    .hub
                    .deliver(channel, offset, Bytes::from(frame), published_at_us);
            }
            Step::Reset(channel) => inner.hub.control(Control::ResetChannel { channel }),
            Step::Resubscribe(channel) => {
                // Two checks in a row saw publications that never came live: re-subscribe.
                let _ = inner
                    .sub_tx
                    .send(SubReq::Refresh(inner.shard_channel(channel.as_str())));
            }
        }
    }
}

// The sequencer's wire format is part of the fleet contract: test it without Redis.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        let w = parse_wire(b"p 17 abc 123 10\n{\"user\":1}{\"x\":2}").unwrap();
        assert_eq!(w.offset, 17);
        assert_eq!(w.epoch, "abc");
        assert_eq!(w.published_at_us, 123);
        assert_eq!(w.info, Some(&b"{\"user\":1}"[..]));
        assert_eq!(w.data, b"{\"x\":2}");
        let w = parse_wire(b"p 1 e 5 0\n{}").unwrap();
        assert_eq!(w.info, None);
        assert!(parse_wire(b"p 1 e 5 9\n{}").is_none());
        assert!(parse_wire(b"c 1\n{}").is_none());
    }

    #[test]
    fn a_cluster_subscribes_per_slot_a_server_in_chunks() {
        let channels: Vec<String> = (0..2500).map(|i| format!("P:{{room:{i}}}")).collect();
        let groups = by_slot(false, channels.clone());
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        let groups = by_slot(true, channels);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 2500);
        for g in &groups {
            let slot = fred::util::redis_keyslot(g[0].as_bytes());
            assert!(g
                .iter()
                .all(|c| fred::util::redis_keyslot(c.as_bytes()) == slot));
        }
    }
}
