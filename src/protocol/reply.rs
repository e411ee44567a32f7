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
