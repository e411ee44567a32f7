//! Scheduled publications: 16 bucket pairs (`{!sched:N}:z` by due time, `:h` payloads) spread
//! over slots. Every node polls every bucket with a claim script that moves due entries a lease
//! into the future; the claiming node publishes with the idempotency key `sched:<id>` and then
//! deletes the entry. A node dying between claim and delete lets the lease run out; the next
//! claimant's publish is deduplicated by the key: exactly once across the fleet.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fred::prelude::Value;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::connection::{bad_reply, value_array, value_bytes, value_str, value_u64};
use super::{json_str, raw_or_null, unix_ms, unix_us, Inner, IDEMPOTENCY_TTL_SECS};
use crate::broker::{BrokerError, ChannelOptions, PublishRequest, Published};
use crate::metrics::metrics;
use crate::protocol::ChannelName;

const SCHEDULE_BUCKETS: usize = 16;
/// How often each node looks for due scheduled publications.
const SCHEDULE_POLL: Duration = Duration::from_millis(25);
/// A claimed scheduled publication returns to the queue after this long unless its node
/// confirmed it (the idempotency key then stops a second delivery).
const SCHEDULE_LEASE_MS: u64 = 30_000;
/// At most this many due entries are claimed per bucket and poll.
const CLAIM_MAX: i64 = 100;

/// A scheduled publication as stored: channel, data, info, history size and TTL (ms).
#[derive(Deserialize)]
struct ScheduledRaw<'a> {
    c: String,
    #[serde(borrow)]
    d: &'a RawValue,
    #[serde(borrow)]
    i: Option<&'a RawValue>,
    hs: usize,
    ht: u64,
}

/// Why a claimed payload can't be published.
#[derive(Debug, PartialEq, Eq)]
enum Undeliverable {
    /// Not the JSON `encode` writes: dropped.
    Undecodable,
    /// A channel name the node refuses: left alone.
    BadChannel,
}

/// The bucket an idempotency key always lands in (so a repeated key finds its first id).
fn bucket_for_key(key: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SCHEDULE_BUCKETS
}

/// Ids are `<bucket>.<unix ms>-<node tag>-<seq>`: the bucket leads, so `cancel` knows where to
/// look.
fn bucket_of_id(id: &str) -> Option<usize> {
    id.split_once('.')
        .and_then(|(b, _)| b.parse::<usize>().ok())
        .filter(|b| *b < SCHEDULE_BUCKETS)
}

fn keys(inner: &Inner, bucket: usize) -> (String, String) {
    let tag = format!("!sched:{bucket}");
    (inner.key(&tag, "z"), inner.key(&tag, "h"))
}

fn encode(req: &PublishRequest) -> String {
    format!(
        "{{\"c\":{},\"d\":{},\"i\":{},\"hs\":{},\"ht\":{}}}",
        json_str(req.channel.as_str()),
        std::str::from_utf8(&req.data).unwrap_or("null"),
        raw_or_null(req.info.as_ref()),
        req.options.history_size,
        req.options.history_ttl.as_millis(),
    )
}

/// The publication a claimed payload stands for, with the idempotency key that makes its
/// delivery happen once.
fn decode(id: &str, payload: &[u8]) -> Result<PublishRequest, Undeliverable> {
    let raw =
        serde_json::from_slice::<ScheduledRaw>(payload).map_err(|_| Undeliverable::Undecodable)?;
    let channel = ChannelName::parse(&raw.c).map_err(|_| Undeliverable::BadChannel)?;
    Ok(PublishRequest {
        channel,
        data: Bytes::copy_from_slice(raw.d.get().as_bytes()),
        info: raw
            .i
            .filter(|r| r.get() != "null")
            .map(|r| Bytes::copy_from_slice(r.get().as_bytes())),
        options: ChannelOptions {
            history_size: raw.hs,
            history_ttl: if raw.ht == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(raw.ht)
            },
        },
        idempotency_key: Some(format!("sched:{id}")),
    })
}

/// Keeps `req` until `at`.
pub(super) async fn schedule(
    inner: &Inner,
    at: SystemTime,
    req: PublishRequest,
) -> Result<Published, BrokerError> {
    let seq = inner.schedule_seq.fetch_add(1, Ordering::Relaxed);
    // Idempotency keys are per channel, as for immediate publications.
    let scoped = req
        .idempotency_key
        .as_deref()
        .map(|k| format!("{}\n{k}", req.channel.as_str()));
    let bucket = match &scoped {
        Some(k) => bucket_for_key(k),
        None => (seq as usize) % SCHEDULE_BUCKETS,
    };
    let id = format!("{bucket}.{}-{}-{seq}", unix_ms(), inner.node_tag);
    let (z, h) = keys(inner, bucket);
    let idem_key = inner.key(
        &format!("!sched:{bucket}"),
        &format!("i:{}", scoped.as_deref().unwrap_or("")),
    );
    let at_ms = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let args: Vec<Value> = vec![
        Value::from(id.as_str()),
        Value::Integer(at_ms),
        Value::from(encode(&req)),
        Value::from(if req.idempotency_key.is_some() {
            "1"
        } else {
            "0"
        }),
        Value::Integer(IDEMPOTENCY_TTL_SECS as i64),
    ];
    let v = inner
        .eval(&inner.scripts.schedule_add, vec![z, h, idem_key], args)
        .await?;
    let id = value_str(&v).ok_or_else(|| bad_reply("schedule"))?;
    Ok(Published::Scheduled(id.to_string()))
}

/// Cancels a scheduled publication still waiting (`NotFound` otherwise).
pub(super) async fn cancel(inner: &Inner, id: &str) -> Result<(), BrokerError> {
    let bucket = bucket_of_id(id).ok_or(BrokerError::NotFound)?;
    let (z, h) = keys(inner, bucket);
    let v = inner
        .eval(
            &inner.scripts.schedule_cancel,
            vec![z, h],
            vec![Value::from(id)],
        )
        .await?;
    match value_u64(&v) {
        Some(1) => Ok(()),
        _ => Err(BrokerError::NotFound),
    }
}

/// Claims due scheduled publications (atomically, with a lease) from every bucket and
/// publishes them with an idempotency key derived from their id: exactly once across the fleet,
/// even when a node dies between claim and confirmation.
pub(super) async fn run_scheduler(inner: Arc<Inner>) {
    let mut ticks: u64 = 0;
    loop {
        tokio::time::sleep(SCHEDULE_POLL).await;
        ticks += 1;
        let claims = futures_util::future::join_all((0..SCHEDULE_BUCKETS).map(|b| {
            let inner = &inner;
            async move {
                let (z, h) = keys(inner, b);
                let r = inner
                    .eval(
                        &inner.scripts.schedule_claim,
                        vec![z, h],
                        vec![
                            // Unused: "now" is Redis' `TIME`, not this node's clock.
                            Value::Integer(0),
                            Value::Integer(SCHEDULE_LEASE_MS as i64),
                            Value::Integer(CLAIM_MAX),
                        ],
                    )
                    .await;
                (b, r)
            }
        }))
        .await;
        for (bucket, r) in claims {
            let Ok(v) = r else { continue };
            let mut items = value_array(v).into_iter();
            while let (Some(id), Some(payload)) = (items.next(), items.next()) {
                let (Some(id), Some(payload)) = (value_str(&id), value_bytes(&payload)) else {
                    continue;
                };
                deliver(&inner, bucket, &id, &payload).await;
            }
        }
        if ticks % 40 == 0 {
            count(&inner).await;
        }
    }
}

/// Forgets a delivered (or undecodable) entry.
async fn done(inner: &Inner, bucket: usize, id: &str) {
    let (z, h) = keys(inner, bucket);
    let _ = inner
        .eval(
            &inner.scripts.schedule_done,
            vec![z, h],
            vec![Value::from(id)],
        )
        .await;
}

async fn deliver(inner: &Inner, bucket: usize, id: &str, payload: &[u8]) {
    let req = match decode(id, payload) {
        Ok(req) => req,
        Err(Undeliverable::Undecodable) => {
            tracing::warn!(id, "undecodable scheduled publication dropped");
            done(inner, bucket, id).await;
            return;
        }
        Err(Undeliverable::BadChannel) => return,
    };
    match inner.publish_now(&req, unix_us()).await {
        Ok(position) => {
            metrics()
                .publications
                .with_label_values(&["scheduled"])
                .inc();
            tracing::debug!(id, channel = %req.channel, offset = position.offset, "scheduled publication delivered");
            done(inner, bucket, id).await;
        }
        Err(e) => {
            // The lease runs out and some node (maybe this one) tries again.
            tracing::warn!(id, error = %e, "scheduled publication failed; will retry");
        }
    }
}

/// Refreshes the gauge of scheduled publications waiting.
async fn count(inner: &Inner) {
    use fred::interfaces::SortedSetsInterface;
    let counts = futures_util::future::join_all((0..SCHEDULE_BUCKETS).map(|b| {
        let (z, _) = keys(inner, b);
        async move {
            let r: Result<u64, _> = inner.conn.client.zcard(z).await;
            r.unwrap_or(0)
        }
    }))
    .await;
    inner
        .scheduled_pending
        .store(counts.iter().sum::<u64>() as usize, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(info: Option<&'static [u8]>, ttl: Duration) -> PublishRequest {
        PublishRequest {
            channel: ChannelName::parse("room:1").unwrap(),
            data: Bytes::from_static(br#"{"n":1}"#),
            info: info.map(Bytes::from_static),
            options: ChannelOptions {
                history_size: 10,
                history_ttl: ttl,
            },
            idempotency_key: Some("client-key".into()),
        }
    }

    #[test]
    fn payloads_round_trip_with_the_id_as_idempotency_key() {
        for (info, ttl) in [
            (Some(&br#"{"user":"17"}"#[..]), Duration::from_secs(60)),
            (None, Duration::ZERO),
        ] {
            let req = request(info, ttl);
            let back = decode("3.1-n-1", encode(&req).as_bytes()).unwrap();
            assert_eq!(back.channel, req.channel);
            assert_eq!(back.data, req.data);
            assert_eq!(back.info, req.info);
            assert_eq!(back.options, req.options);
            assert_eq!(back.idempotency_key.as_deref(), Some("sched:3.1-n-1"));
        }
        assert_eq!(decode("x", b"{").err(), Some(Undeliverable::Undecodable));
        assert_eq!(
            decode("x", br#"{"c":"a b","d":1,"i":null,"hs":0,"ht":0}"#).err(),
            Some(Undeliverable::BadChannel)
        );
    }

    #[test]
    fn ids_lead_with_their_bucket() {
        assert_eq!(bucket_of_id("0.1700000000000-abc-1"), Some(0));
        assert_eq!(bucket_of_id("15.1-abc-2"), Some(15));
        assert_eq!(bucket_of_id("16.1-abc-2"), None);
        assert_eq!(bucket_of_id("x.1"), None);
        assert_eq!(bucket_of_id("nodot"), None);
        let b = bucket_for_key("room:1\nkey");
        assert!(b < SCHEDULE_BUCKETS);
        assert_eq!(b, bucket_for_key("room:1\nkey"), "stable");
    }
}
