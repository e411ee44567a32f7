//! Presence: per channel a hash (client → entry JSON) and a sorted set (client → expiry, unix
//! ms), refreshed by the node holding the connection. Expired entries are dropped on read, so a
//! dead node's members disappear by themselves.

use std::time::Duration;

use bytes::Bytes;
use fred::prelude::Value;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::connection::{value_array, value_bytes};
use super::{json_str, raw_or_null, unix_ms, Inner};
use crate::broker::{BrokerError, PresenceEntry};
use crate::protocol::ChannelName;

/// An entry as stored: `{"c": client, "u": user, "i": info or null}`.
#[derive(Deserialize)]
struct PresenceRaw<'a> {
    c: String,
    u: String,
    #[serde(borrow)]
    i: Option<&'a RawValue>,
}

fn encode(entry: &PresenceEntry) -> String {
    format!(
        "{{\"c\":{},\"u\":{},\"i\":{}}}",
        json_str(&entry.client),
        json_str(&entry.user),
        raw_or_null(entry.info.as_ref())
    )
}

fn decode(b: &[u8]) -> Option<PresenceEntry> {
    let p = serde_json::from_slice::<PresenceRaw>(b).ok()?;
    Some(PresenceEntry {
        client: p.c,
        user: p.u,
        info: p
            .i
            .filter(|r| r.get() != "null")
            .map(|r| Bytes::copy_from_slice(r.get().as_bytes())),
    })
}

fn keys(inner: &Inner, channel: &ChannelName) -> Vec<String> {
    let ch = channel.as_str();
    vec![inner.key(ch, "p"), inner.key(ch, "z")]
}

/// Adds or refreshes `entry`; it expires `ttl` from now unless refreshed.
pub(super) async fn add(
    inner: &Inner,
    channel: &ChannelName,
    entry: PresenceEntry,
    ttl: Duration,
) -> Result<(), BrokerError> {
    let ttl_ms = ttl.as_millis().max(1) as i64;
    let args: Vec<Value> = vec![
        Value::from(entry.client.as_str()),
        Value::from(encode(&entry)),
        Value::Integer(unix_ms() as i64 + ttl_ms),
        Value::Integer(ttl_ms),
    ];
    inner
        .eval(&inner.scripts.presence_add, keys(inner, channel), args)
        .await
        .map(|_| ())
}

pub(super) async fn remove(
    inner: &Inner,
    channel: &ChannelName,
    client: &str,
) -> Result<(), BrokerError> {
    inner
        .eval(
            &inner.scripts.presence_remove,
            keys(inner, channel),
            vec![Value::from(client)],
        )
        .await
        .map(|_| ())
}

/// The live entries (expired ones are dropped on the way).
pub(super) async fn get(
    inner: &Inner,
    channel: &ChannelName,
) -> Result<Vec<PresenceEntry>, BrokerError> {
    let v = inner
        .eval(
            &inner.scripts.presence_get,
            keys(inner, channel),
            vec![Value::Integer(unix_ms() as i64)],
        )
        .await?;
    Ok(value_array(v)
        .iter()
        .filter_map(value_bytes)
        .filter_map(|b| decode(&b))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let e = PresenceEntry {
            client: "c\"1".into(),
            user: "ada".into(),
            info: Some(Bytes::from_static(br#"{"name":"Ada"}"#)),
        };
        assert_eq!(decode(encode(&e).as_bytes()), Some(e));
        let e = PresenceEntry {
            client: "c2".into(),
            user: "".into(),
            info: None,
        };
        assert_eq!(encode(&e), r#"{"c":"c2","u":"","i":null}"#);
        assert_eq!(decode(encode(&e).as_bytes()), Some(e));
        assert_eq!(decode(b"not json"), None);
    }
}
