//! Membership with expiry (webhooks' fleet-wide transitions) on Redis: the rules of
//! `broker::tracking`, one atomic Lua script per key on the key's own slot.
//!
//! | key | what |
//! | --- | --- |
//! | `P:{!u:<user>}:w` / `P:{<channel>}:w` | hash: node id → expiry (ms, Redis' `TIME`), `~v` → vacating deadline |
//! | `P:{!track:<u/c>:N}:z` | 16 index buckets per kind: tracked key → when to look at it next |
//!
//! The index is only a hint for the sweeper: a join writes its entry *before* the key's state
//! (so a key never exists without one), a leave lowers it to the vacating deadline, and the
//! sweeper claims due entries with a lease (a score with a half millisecond, which any writer
//! replaces), runs `track_sweep` on each key, then removes or moves only the entries that still
//! hold its lease. Refreshes don't touch the index: a held key is looked at about once per TTL
//! and moved to its latest expiry. Two sweepers can't both report a key: `track_sweep` deletes
//! it in the same script that decides.

use std::time::Duration;

use fred::prelude::Value;
use futures_util::future::join_all;

use super::connection::{bad_reply, value_array, value_bytes, value_u64};
use super::Inner;
use crate::broker::{BrokerError, TrackKind};

/// Index buckets per kind, spread over slots.
const BUCKETS: u32 = 16;
/// A claim keeps other sweepers off the claimed keys this long.
const LEASE_MS: i64 = 2_000;
/// Keys claimed per bucket and sweep.
const CLAIM_MAX: i64 = 500;
/// An abandoned state hash (no node left to sweep it) disappears this long after its last write.
const KEEP_MS: i64 = 24 * 3600 * 1000;
/// Scripts in flight at once (fred pipelines them on its connections).
const CONCURRENCY: usize = 64;

fn kind_tag(kind: TrackKind) -> &'static str {
    match kind {
        TrackKind::User => "u",
        TrackKind::Channel => "c",
    }
}

/// The state hash of `key`. Users get a tag of their own (`!` never starts a channel name);
/// a channel's state sits on the channel's slot.
fn state_key(inner: &Inner, kind: TrackKind, key: &str) -> String {
    match kind {
        TrackKind::User => inner.key(&format!("!u:{key}"), "w"),
        TrackKind::Channel => inner.key(key, "w"),
    }
}

/// FNV-1a: the same bucket on every node, whatever its Rust version.
fn bucket_of(key: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % BUCKETS
}

fn bucket_key(inner: &Inner, kind: TrackKind, bucket: u32) -> String {
    inner.key(&format!("!track:{}:{bucket}", kind_tag(kind)), "z")
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4).max(1)
}

pub(super) async fn join(
    inner: &Inner,
    kind: TrackKind,
    key: &str,
    member: &str,
    ttl: Duration,
) -> Result<bool, BrokerError> {
    // The hint first: a node dying between the two leaves an entry without a key (swept away),
    // never a key the sweeper can't find.
    inner
        .eval(
            &inner.scripts.track_index,
            vec![bucket_key(inner, kind, bucket_of(key))],
            vec![
                Value::from(key),
                Value::from("join"),
                Value::Integer(ms(ttl)),
            ],
        )
        .await?;
    let v = inner
        .eval(
            &inner.scripts.track_join,
            vec![state_key(inner, kind, key)],
            vec![
                Value::from(member),
                Value::Integer(ms(ttl)),
                Value::Integer(KEEP_MS),
            ],
        )
        .await?;
    Ok(value_u64(&v).ok_or_else(|| bad_reply("track_join"))? == 1)
}

pub(super) async fn leave(
    inner: &Inner,
    kind: TrackKind,
    key: &str,
    member: &str,
    delay: Duration,
) -> Result<(), BrokerError> {
    let v = inner
        .eval(
            &inner.scripts.track_leave,
            vec![state_key(inner, kind, key)],
            vec![
                Value::from(member),
                Value::Integer(delay.as_millis() as i64),
                Value::Integer(KEEP_MS),
            ],
        )
        .await?;
    let next = match v {
        Value::Integer(i) => i,
        _ => return Err(bad_reply("track_leave")),
    };
    if next >= 0 {
        inner
            .eval(
                &inner.scripts.track_index,
                vec![bucket_key(inner, kind, bucket_of(key))],
                vec![Value::from(key), Value::from("lower"), Value::Integer(next)],
            )
            .await?;
    }
    Ok(())
}

pub(super) async fn refresh(
    inner: &Inner,
    kind: TrackKind,
    keys: &[String],
    member: &str,
    ttl: Duration,
) -> Result<Vec<String>, BrokerError> {
    let mut results = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(CONCURRENCY) {
        let calls: Vec<_> = chunk
            .iter()
            .map(|key| {
                inner.eval(
                    &inner.scripts.track_refresh,
                    vec![state_key(inner, kind, key)],
                    vec![
                        Value::from(member),
                        Value::Integer(ms(ttl)),
                        Value::Integer(KEEP_MS),
                    ],
                )
            })
            .collect();
        results.extend(join_all(calls).await);
    }
    let mut lost = Vec::new();
    let mut first_error = None;
    for (i, r) in results.into_iter().enumerate() {
        match r.map(|v| value_u64(&v)) {
            Ok(Some(1)) => {}
            Ok(_) => lost.push(keys[i].clone()),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        // Entries that weren't refreshed expire and are joined again after the sweep.
        Some(e) if lost.is_empty() => Err(e),
        _ => Ok(lost),
    }
}

/// One round over every bucket of `kind`: claims due entries, sweeps their keys, settles the
/// entries. Returns the keys this call found gone for good.
pub(super) async fn sweep(inner: &Inner, kind: TrackKind) -> Result<Vec<String>, BrokerError> {
    let mut gone = Vec::new();
    let mut first_error = None;
    for bucket in 0..BUCKETS {
        if let Err(e) = sweep_bucket(inner, kind, bucket, &mut gone).await {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) if gone.is_empty() => Err(e),
        _ => Ok(gone),
    }
}

async fn sweep_bucket(
    inner: &Inner,
    kind: TrackKind,
    bucket: u32,
    gone: &mut Vec<String>,
) -> Result<(), BrokerError> {
    let index = bucket_key(inner, kind, bucket);
    let claimed = value_array(
        inner
            .eval(
                &inner.scripts.track_claim,
                vec![index.clone()],
                vec![Value::Integer(LEASE_MS), Value::Integer(CLAIM_MAX)],
            )
            .await?,
    );
    let mut claimed = claimed.iter().filter_map(value_bytes);
    let Some(lease) = claimed.next() else {
        return Ok(());
    };
    let keys: Vec<String> = claimed
        .filter_map(|b| String::from_utf8(b.to_vec()).ok())
        .collect();
    let mut outcomes = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(CONCURRENCY) {
        let calls: Vec<_> = chunk
            .iter()
            .map(|key| {
                inner.eval(
                    &inner.scripts.track_sweep,
                    vec![state_key(inner, kind, key)],
                    vec![],
                )
            })
            .collect();
        outcomes.extend(join_all(calls).await);
    }
    let mut settle: Vec<Value> = vec![Value::Bytes(lease)];
    for (i, r) in outcomes.into_iter().enumerate() {
        // A failed sweep leaves the claim to run out: the key is looked at again after the lease.
        let Ok(v) = r else { continue };
        let v = value_array(v);
        let status = match v.first() {
            Some(Value::Integer(s)) => *s,
            _ => continue,
        };
        let next = match v.get(1) {
            Some(Value::Integer(n)) => *n,
            _ => 0,
        };
        if status == 1 {
            gone.push(keys[i].clone());
        }
        settle.push(Value::from(keys[i].as_str()));
        settle.push(Value::Integer(if status == 0 { next.max(1) } else { 0 }));
    }
    if settle.len() > 1 {
        inner
            .eval(&inner.scripts.track_settle, vec![index], settle)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        // FNV-1a of "17": the same on every node and every build.
        assert_eq!(bucket_of("17"), bucket_of("17"));
        assert_eq!(bucket_of(""), 0x811c_9dc5 % BUCKETS);
        let used: std::collections::HashSet<u32> =
            (0..200).map(|i| bucket_of(&format!("user{i}"))).collect();
        assert_eq!(used.len(), BUCKETS as usize);
    }
}
