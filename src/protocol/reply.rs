//! Server → client JSON payloads (the WebSocket framing is added by `ws::frame`).
//!
//! Publications are built by hand from already-valid JSON pieces (`data` is passed through as
//! the publisher sent it) so a publication is serialized exactly once per node, and its bytes
//! are identical for every subscriber.

use serde::Serialize;
use serde_json::Value;

use super::error::ClientError;
use super::ChannelName;

/// One stored or live publication as the client sees it inside `pub` or a `publications` list.
pub fn publication_body(out: &mut Vec<u8>, offset: u64, data: &[u8], info: Option<&[u8]>) {
    out.extend_from_slice(b"{\"offset\":");
    out.extend_from_slice(itoa(offset).as_bytes());
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    if let Some(info) = info {
        out.extend_from_slice(b",\"info\":");
        out.extend_from_slice(info);
    }
    out.push(b'}');
}

/// `{"channel":"room:42","pub":{"offset":22,"data":{…},"info":{…}}}`
pub fn publication(
    channel: &ChannelName,
    offset: u64,
    data: &[u8],
    info: Option<&[u8]>,
) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(40 + channel.as_str().len() + data.len() + info.map_or(0, |i| i.len()));
    // Channel names are restricted to characters that need no JSON escaping.
    out.extend_from_slice(b"{\"channel\":\"");
    out.extend_from_slice(channel.as_str().as_bytes());
    out.extend_from_slice(b"\",\"pub\":");
    publication_body(&mut out, offset, data, info);
    out.push(b'}');
    out
}

/// Bytes `publication_body` writes for one publication.
pub fn publication_body_len(offset: u64, data_len: usize, info_len: Option<usize>) -> usize {
    // {"offset":N,"data":D[,"info":I]}
    10 + itoa(offset).len() + 8 + data_len + info_len.map_or(0, |i| 8 + i) + 1
}

/// Fixed bytes counted on top of channel, data and info by [`publication_frame_bound`]: the JSON
/// around them (`{"channel":"…","pub":{"offset":…,"data":…,"info":…}}` is 68 bytes with a
/// 20-digit offset) plus a WebSocket frame header (at most 10 bytes), rounded up to leave room.
pub const PUBLICATION_FRAME_OVERHEAD: usize = 128;

/// An upper bound of the WebSocket frame a publication becomes on a subscriber's queue:
/// `channel + data + info + PUBLICATION_FRAME_OVERHEAD` bytes. Known before publishing (the
/// offset is not yet assigned, so the bound allows for the longest one).
pub fn publication_frame_bound(channel: &ChannelName, data_len: usize, info_len: usize) -> usize {
    channel.as_str().len() + data_len + info_len + PUBLICATION_FRAME_OVERHEAD
}

/// Refuses (106, HTTP 413) a publication whose frame could exceed `outbound_queue_bytes`: it
/// could never be queued on any subscriber, and would close every one of them with 4005.
pub fn check_publication_size(
    channel: &ChannelName,
    data_len: usize,
    info_len: usize,
    outbound_queue_bytes: usize,
) -> Result<(), ClientError> {
    if publication_frame_bound(channel, data_len, info_len) > outbound_queue_bytes {
        Err(ClientError::PublicationTooLarge)
    } else {
        Ok(())
    }
}

/// How many of `sizes` (the bytes of each publication in a history or recovery reply, in the
/// order they are taken) fit in one reply of at most `max_count` publications and `max_bytes`
/// bytes. At least one is taken when there is any and `max_count > 0`, so that a single
/// publication larger than `max_bytes` is still served (alone) and paging always advances.
pub fn fitting<I: IntoIterator<Item = usize>>(
    sizes: I,
    max_count: usize,
    max_bytes: usize,
) -> usize {
    let mut n = 0;
    let mut bytes = 0usize;
    for size in sizes.into_iter().take(max_count) {
        bytes = bytes.saturating_add(size);
        if n > 0 && bytes > max_bytes {
            break;
        }
        n += 1;
    }
    n
}

fn itoa(n: u64) -> String {
    n.to_string()
}

/// A push about a channel: `{"channel":"room:42","<kind>":<body>}` (join, leave, unsubscribe).
pub fn channel_push(channel: &ChannelName, kind: &str, body: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"channel\":\"");
    out.extend_from_slice(channel.as_str().as_bytes());
    out.extend_from_slice(b"\",\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\":");
    serde_json::to_writer(&mut out, body).expect("serialize push");
    out.push(b'}');
    out
}

/// `{"id":N,"result":…}`; `result` is anything serializable.
pub fn result<T: Serialize + ?Sized>(id: Option<u64>, result: &T) -> Vec<u8> {
    #[derive(Serialize)]
    struct Reply<'a, T: ?Sized> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        result: &'a T,
    }
    serde_json::to_vec(&Reply { id, result }).expect("serialize reply")
}

/// `{"id":N,"error":{"code":C,"message":"…"}}`
pub fn error(id: Option<u64>, err: &ClientError) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body {
        code: u16,
        message: String,
    }
    #[derive(Serialize)]
    struct Reply {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        error: Body,
    }
    serde_json::to_vec(&Reply {
        id,
        error: Body {
            code: err.code(),
            message: err.to_string(),
        },
    })
    .expect("serialize error")
}

/// The raw JSON of a stored publication list: `[{"offset":…,"data":…}, …]`.
pub fn publications_array<'a, I>(items: I) -> Box<serde_json::value::RawValue>
where
    I: IntoIterator<Item = (u64, &'a [u8], Option<&'a [u8]>)>,
{
    let mut out = Vec::with_capacity(256);
    out.push(b'[');
    for (i, (offset, data, info)) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        publication_body(&mut out, offset, data, info);
    }
    out.push(b']');
    let s = String::from_utf8(out).expect("publications are UTF-8 JSON");
    serde_json::value::RawValue::from_string(s).expect("publications are valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_is_valid_json() {
        let ch = ChannelName::parse("room:42").unwrap();
        let p = publication(&ch, 22, br#"{"text":"hi"}"#, Some(br#"{"user":"17"}"#));
        let v: Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["channel"], "room:42");
        assert_eq!(v["pub"]["offset"], 22);
        assert_eq!(v["pub"]["data"]["text"], "hi");
        assert_eq!(v["pub"]["info"]["user"], "17");
        assert!(v.get("id").is_none());
    }

    #[test]
    fn replies() {
        let v: Value = serde_json::from_slice(&result(Some(4), &serde_json::json!({}))).unwrap();
        assert_eq!(v["id"], 4);
        let v: Value =
            serde_json::from_slice(&error(Some(4), &ClientError::PermissionDenied)).unwrap();
        assert_eq!(v["error"]["code"], 103);
        assert_eq!(v["error"]["message"], "permission denied");
        let v: Value =
            serde_json::from_slice(&error(None, &ClientError::BadRequest("malformed JSON")))
                .unwrap();
        assert!(v.get("id").is_none());
        assert_eq!(v["error"]["code"], 107);
    }

    #[test]
    fn body_len_is_exact() {
        for (offset, data, info) in [
            (1u64, &b"1"[..], None),
            (
                u64::MAX,
                &b"{\"a\":[1,2]}"[..],
                Some(&b"{\"user\":\"17\"}"[..]),
            ),
        ] {
            let mut out = Vec::new();
            publication_body(&mut out, offset, data, info);
            assert_eq!(
                out.len(),
                publication_body_len(offset, data.len(), info.map(<[u8]>::len))
            );
        }
    }

    #[test]
    fn frame_bound_covers_the_real_frame() {
        let ch = ChannelName::parse(&"c".repeat(255)).unwrap();
        let info = br#"{"user":"someone"}"#;
        for data_len in [0usize, 100, 125, 126, 65535, 65536, 200_000] {
            let data = vec![b'1'; data_len.max(1)];
            let json = publication(&ch, u64::MAX, &data, Some(info));
            // A server frame header: 2 bytes, +2 past 125 bytes, +8 past 65535.
            let header = match json.len() {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            };
            assert!(
                json.len() + header <= publication_frame_bound(&ch, data.len(), info.len()),
                "{data_len}"
            );
        }
        assert!(check_publication_size(&ch, 1000, 0, 1000).is_err());
        assert_eq!(
            check_publication_size(&ch, 1000, 0, 1000 + 255 + PUBLICATION_FRAME_OVERHEAD),
            Ok(())
        );
        let e = check_publication_size(&ch, 1000, 0, 1000).unwrap_err();
        assert_eq!((e.code(), e.http_status()), (106, 413));
        assert_eq!(
            e.to_string(),
            "publication larger than limits.outbound_queue_bytes"
        );
    }

    #[test]
    fn fitting_counts_and_bytes() {
        assert_eq!(fitting([10, 10, 10], 5, 100), 3);
        assert_eq!(fitting([10, 10, 10], 2, 100), 2);
        assert_eq!(fitting([10, 10, 10], 5, 20), 2);
        assert_eq!(fitting([10, 10, 10], 5, 19), 1);
        // One oversized publication still goes alone.
        assert_eq!(fitting([500, 10], 5, 100), 1);
        assert_eq!(fitting([], 5, 100), 0);
        assert_eq!(fitting([10], 0, 100), 0);
    }

    #[test]
    fn publications_list() {
        let raw = publications_array(vec![
            (1, &b"1"[..], None),
            (2, &b"{\"a\":2}"[..], Some(&b"{}"[..])),
        ]);
        let v: Value = serde_json::from_str(raw.get()).unwrap();
        assert_eq!(v[1]["offset"], 2);
        assert_eq!(v[1]["data"]["a"], 2);
    }
}
