//! ferrocast protocol v1 as the load tool needs it: building commands, recognising replies, and a
//! fast path that reads the marker fields out of a publication without a full JSON parse.
//!
//! Every publication wsbench makes carries its own marker object as `data`:
//! `{"wsb":RUN,"src":S,"seq":N,"ts":UNIX_NANOS,"pad":"…"}`. `run` tells this run's publications
//! from anyone else's, `src` is the publisher within a channel (0 for the API publisher, the member
//! index in chat), `seq` numbers a source's publications from 0, and `ts` is taken just before the
//! publication is sent, so receive time minus `ts` is the end-to-end latency.

use serde::Deserialize;
use serde_json::Value;

/// Marker fields of one of our publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub run: u64,
    pub src: u64,
    pub seq: u64,
    pub ts: u64,
}

/// What a server text frame turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A publication. `marker` is `None` for publications that are not ours.
    Publication {
        offset: Option<u64>,
        marker: Option<Marker>,
    },
    /// A command reply.
    Reply {
        id: u64,
        outcome: Result<Value, i64>,
    },
    /// Anything else (`connected`, join/leave, server-side unsubscribe, ...).
    Push(PushKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushKind {
    Connected,
    Unsubscribed,
    /// Pusher: `pusher:ping`, to be answered with `pusher:pong`.
    Ping,
    /// Pusher: `pusher:error` with this code (0 when it has none).
    Error(i64),
    Other,
}

/// Builds the data object of a publication, padded with `pad` bytes.
pub fn marker_data(m: &Marker, pad: usize) -> String {
    let mut s = format!(
        "{{\"wsb\":{},\"src\":{},\"seq\":{},\"ts\":{}",
        m.run, m.src, m.seq, m.ts
    );
    if pad > 0 {
        s.push_str(",\"pad\":\"");
        s.extend(std::iter::repeat_n('x', pad));
        s.push('"');
    }
    s.push('}');
    s
}

/// Pad length that makes the publication's `data` about `size` bytes.
pub fn pad_for_size(size: usize) -> usize {
    // A marker with realistic numbers is ~75 bytes, `,"pad":""` adds 9.
    size.saturating_sub(84)
}

pub fn connect_cmd(id: u64, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("{{\"id\":{id},\"connect\":{{\"token\":{}}}}}", json_str(t)),
        None => format!("{{\"id\":{id},\"connect\":{{}}}}"),
    }
}

pub fn subscribe_cmd(id: u64, channel: &str, recover: Option<(u64, &str)>) -> String {
    match recover {
        Some((offset, epoch)) => format!(
            "{{\"id\":{id},\"subscribe\":{{\"channel\":{},\"recover\":{{\"offset\":{offset},\"epoch\":{}}}}}}}",
            json_str(channel),
            json_str(epoch)
        ),
        None => format!(
            "{{\"id\":{id},\"subscribe\":{{\"channel\":{}}}}}",
            json_str(channel)
        ),
    }
}

pub fn publish_cmd(id: u64, channel: &str, data: &str) -> String {
    format!(
        "{{\"id\":{id},\"publish\":{{\"channel\":{},\"data\":{data}}}}}",
        json_str(channel)
    )
}

/// Body of `POST /api/publish`.
pub fn api_publish_body(channel: &str, data: &str) -> String {
    format!("{{\"channel\":{},\"data\":{data}}}", json_str(channel))
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

/// A substring search built once (building a `memmem` searcher per call was a quarter of
/// wsbench's CPU per publication).
macro_rules! finder {
    ($needle:expr) => {{
        static F: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new($needle));
        &*F
    }};
}

// ---- Pusher Channels protocol 7 (`--pusher`) ----
//
// Sockets subscribe to public channels; a publication is an event named `wsb` whose `data` is the
// marker object encoded as a JSON string (the HTTP API's `data` is a string), so in the frame the
// marker's keys appear escaped: `"data":"{\"wsb\":7,\"src\":0,…}"`.

/// The id `parse_pusher` gives `pusher_internal:subscription_succeeded` and
/// `pusher:subscription_error` (a subscribe is the only request a Pusher socket makes).
pub const PUSHER_SUBSCRIBE_ID: u64 = 2;

/// The event name of wsbench's publications.
pub const PUSHER_EVENT: &str = "wsb";

pub const PUSHER_PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;

pub fn pusher_subscribe(channel: &str) -> String {
    format!(
        "{{\"event\":\"pusher:subscribe\",\"data\":{{\"channel\":{}}}}}",
        json_str(channel)
    )
}

/// Body of `POST /apps/ID/events`: one event on one channel, `data` as a string.
pub fn pusher_event_body(channel: &str, data: &str) -> String {
    format!(
        "{{\"name\":\"{PUSHER_EVENT}\",\"channel\":{},\"data\":{}}}",
        json_str(channel),
        json_str(data)
    )
}

/// Classifies a Pusher server frame. Publications take the fast path (no allocation).
pub fn parse_pusher(frame: &[u8]) -> Incoming {
    let Some(event) = string_after(frame, finder!(b"\"event\"")) else {
        return Incoming::Push(PushKind::Other);
    };
    match event {
        b"pusher:connection_established" => Incoming::Push(PushKind::Connected),
        b"pusher_internal:subscription_succeeded" => Incoming::Reply {
            id: PUSHER_SUBSCRIBE_ID,
            outcome: Ok(Value::Null),
        },
        b"pusher:subscription_error" => Incoming::Reply {
            id: PUSHER_SUBSCRIBE_ID,
            outcome: Err(pusher_code(frame).unwrap_or(0)),
        },
        b"pusher:ping" => Incoming::Push(PushKind::Ping),
        b"pusher:error" => Incoming::Push(PushKind::Error(pusher_code(frame).unwrap_or(0))),
        e if e.starts_with(b"pusher") => Incoming::Push(PushKind::Other),
        _ => Incoming::Publication {
            offset: None,
            marker: pusher_marker_in(frame),
        },
    }
}

/// Our marker inside a Pusher event: in the `data` string (escaped keys), or in a `data` object
/// should a server pass one through.
pub fn pusher_marker_in(frame: &[u8]) -> Option<Marker> {
    let escaped = || {
        Some(Marker {
            run: number_after(frame, finder!(br#"\"wsb\""#))?,
            src: number_after(frame, finder!(br#"\"src\""#))?,
            seq: number_after(frame, finder!(br#"\"seq\""#))?,
            ts: number_after(frame, finder!(br#"\"ts\""#))?,
        })
    };
    escaped().or_else(|| marker_in(frame))
}

/// The error code of a `pusher:error` / `pusher:subscription_error` (`"code":N` or `\"code\":N`).
fn pusher_code(frame: &[u8]) -> Option<i64> {
    number_after(frame, finder!(b"\"code\""))
        .or_else(|| number_after(frame, finder!(br#"\"code\""#)))
        .or_else(|| number_after(frame, finder!(br#"\"status\""#)))
        .or_else(|| number_after(frame, finder!(b"\"status\"")))
        .map(|c| c as i64)
}

/// The JSON string value (without escapes) following the first `key` in `hay`.
fn string_after<'a>(hay: &'a [u8], key: &memchr::memmem::Finder<'static>) -> Option<&'a [u8]> {
    let mut i = key.find(hay)? + key.needle().len();
    while i < hay.len() && (hay[i] == b' ' || hay[i] == b':') {
        i += 1;
    }
    if hay.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let len = memchr::memchr2(b'"', b'\\', &hay[start..])?;
    Some(&hay[start..start + len])
}

/// Classifies a server text frame. Publications take the fast path (no allocation).
pub fn parse_incoming(frame: &[u8]) -> Incoming {
    if finder!(b"\"pub\"").find(frame).is_some() && !looks_like_reply(frame) {
        return Incoming::Publication {
            offset: number_after(frame, finder!(b"\"offset\"")),
            marker: marker_in(frame),
        };
    }
    // Join/leave and other channel pushes can outnumber everything else (join_leave on a busy
    // channel is N² frames): classify them without parsing.
    if !looks_like_reply(frame) && finder!(b"\"connected\"").find(frame).is_none() {
        return if finder!(b"\"unsubscribe\"").find(frame).is_some() {
            Incoming::Push(PushKind::Unsubscribed)
        } else {
            Incoming::Push(PushKind::Other)
        };
    }
    #[derive(Deserialize)]
    struct Envelope {
        id: Option<u64>,
        result: Option<Value>,
        error: Option<ErrBody>,
        connected: Option<serde::de::IgnoredAny>,
        unsubscribe: Option<serde::de::IgnoredAny>,
    }
    #[derive(Deserialize)]
    struct ErrBody {
        code: i64,
    }
    let Ok(env) = serde_json::from_slice::<Envelope>(frame) else {
        return Incoming::Push(PushKind::Other);
    };
    match env.id {
        Some(id) if id > 0 => {
            let outcome = match (env.result, env.error) {
                (_, Some(e)) => Err(e.code),
                (Some(r), None) => Ok(r),
                (None, None) => Ok(Value::Null),
            };
            Incoming::Reply { id, outcome }
        }
        _ if env.connected.is_some() => Incoming::Push(PushKind::Connected),
        _ if env.unsubscribe.is_some() => Incoming::Push(PushKind::Unsubscribed),
        _ => Incoming::Push(PushKind::Other),
    }
}

/// A reply starts with `{"id":` followed by a non-zero id; a publication has no id.
fn looks_like_reply(frame: &[u8]) -> bool {
    let trimmed = frame
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(frame, |p| &frame[p..]);
    trimmed.starts_with(b"{\"id\"")
}

/// Reads our marker out of a publication frame. The keys are looked up anywhere in the frame:
/// only our `data` object uses them, and a server may reorder keys.
pub fn marker_in(frame: &[u8]) -> Option<Marker> {
    Some(Marker {
        run: number_after(frame, finder!(b"\"wsb\""))?,
        src: number_after(frame, finder!(b"\"src\""))?,
        seq: number_after(frame, finder!(b"\"seq\""))?,
        ts: number_after(frame, finder!(b"\"ts\""))?,
    })
}

/// The marker inside an already parsed publication object (`{"offset":…,"data":{…}}`).
pub fn marker_of(publication: &Value) -> Option<Marker> {
    let d = publication.get("data")?;
    let n = |k: &str| d.get(k).and_then(Value::as_u64);
    Some(Marker {
        run: n("wsb")?,
        src: n("src")?,
        seq: n("seq")?,
        ts: n("ts")?,
    })
}

/// The unsigned integer following the first `key` (a quoted JSON key) in `hay`.
fn number_after(hay: &[u8], key: &memchr::memmem::Finder<'static>) -> Option<u64> {
    let at = key.find(hay)? + key.needle().len();
    let mut i = at;
    while i < hay.len() && (hay[i] == b' ' || hay[i] == b':') {
        i += 1;
    }
    let start = i;
    let mut v: u64 = 0;
    while i < hay.len() && hay[i].is_ascii_digit() {
        v = v.checked_mul(10)?.checked_add((hay[i] - b'0') as u64)?;
        i += 1;
    }
    (i > start).then_some(v)
}

/// Offset, epoch and recovered publications out of a subscribe result.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SubscribeResult {
    pub offset: Option<u64>,
    pub epoch: Option<String>,
    pub recovered: Option<bool>,
    /// (offset, marker) of each publication the server replayed.
    pub publications: Vec<(Option<u64>, Option<Marker>)>,
}

pub fn subscribe_result(v: &Value) -> SubscribeResult {
    let pubs = v
        .get("publications")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| (p.get("offset").and_then(Value::as_u64), marker_of(p)))
                .collect()
        })
        .unwrap_or_default();
    SubscribeResult {
        offset: v.get("offset").and_then(Value::as_u64),
        epoch: v.get("epoch").and_then(Value::as_str).map(str::to_owned),
        recovered: v.get("recovered").and_then(Value::as_bool),
        publications: pubs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_roundtrip_through_a_publication() {
        let m = Marker {
            run: 77,
            src: 3,
            seq: 12345,
            ts: 1_700_000_000_123_456_789,
        };
        let data = marker_data(&m, 10);
        let frame = format!("{{\"channel\":\"room:1\",\"pub\":{{\"offset\":22,\"data\":{data}}}}}");
        assert_eq!(
            parse_incoming(frame.as_bytes()),
            Incoming::Publication {
                offset: Some(22),
                marker: Some(m)
            }
        );
    }

    #[test]
    fn pad_makes_data_about_the_requested_size() {
        let m = Marker {
            run: 1234567,
            src: 0,
            seq: 1000,
            ts: 1_700_000_000_123_456_789,
        };
        let d = marker_data(&m, pad_for_size(256));
        assert!((240..=272).contains(&d.len()), "{}", d.len());
        assert!(serde_json::from_str::<Value>(&d).is_ok());
    }

    #[test]
    fn foreign_publication_has_no_marker() {
        let f = br#"{"channel":"room:1","pub":{"offset":3,"data":{"text":"hi"}}}"#;
        let reordered = br#"{"channel":"c","pub":{"data":{"pad":"","seq":4,"src":0,"ts":9,"wsb":2},"offset":1}}"#;
        assert_eq!(marker_in(reordered).map(|m| (m.run, m.seq)), Some((2, 4)));
        assert_eq!(
            parse_incoming(f),
            Incoming::Publication {
                offset: Some(3),
                marker: None
            }
        );
    }

    #[test]
    fn replies_and_pushes() {
        assert_eq!(
            parse_incoming(br#"{"id":4,"error":{"code":103,"message":"permission denied"}}"#),
            Incoming::Reply {
                id: 4,
                outcome: Err(103)
            }
        );
        let r = parse_incoming(
            br#"{"id":2,"result":{"offset":21,"epoch":"k3x9","recovered":true,"publications":[{"offset":20,"data":{"wsb":1,"src":0,"seq":5,"ts":9}}]}}"#,
        );
        let Incoming::Reply {
            id: 2,
            outcome: Ok(v),
        } = r
        else {
            panic!("{r:?}")
        };
        let s = subscribe_result(&v);
        assert_eq!(s.offset, Some(21));
        assert_eq!(s.epoch.as_deref(), Some("k3x9"));
        assert_eq!(s.recovered, Some(true));
        assert_eq!(s.publications.len(), 1);
        assert_eq!(s.publications[0].1.unwrap().seq, 5);
        assert_eq!(
            parse_incoming(
                br#"{"connected":{"client":"a","user":"1","node":"n","ping_interval":25}}"#
            ),
            Incoming::Push(PushKind::Connected)
        );
        assert_eq!(
            parse_incoming(br#"{"channel":"room:1","unsubscribe":{}}"#),
            Incoming::Push(PushKind::Unsubscribed)
        );
        assert_eq!(
            parse_incoming(br#"{"channel":"room:1","join":{"user":"1","client":"x"}}"#),
            Incoming::Push(PushKind::Other)
        );
    }

    #[test]
    fn pusher_frames() {
        let m = Marker {
            run: 77,
            src: 0,
            seq: 12345,
            ts: 1_700_000_000_123_456_789,
        };
        let body = pusher_event_body("wsbench-0", &marker_data(&m, 20));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["name"], "wsb");
        assert!(v["data"].is_string());
        // What a server sends a subscriber: the same data string, keys in any order.
        let frame = format!(
            "{{\"channel\":\"wsbench-0\",\"event\":\"wsb\",\"data\":{}}}",
            v["data"]
        );
        assert_eq!(
            parse_pusher(frame.as_bytes()),
            Incoming::Publication {
                offset: None,
                marker: Some(m)
            }
        );
        let est = br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}"#;
        assert_eq!(parse_pusher(est), Incoming::Push(PushKind::Connected));
        let ok = br#"{"event":"pusher_internal:subscription_succeeded","channel":"wsbench-0","data":"{}"}"#;
        assert_eq!(
            parse_pusher(ok),
            Incoming::Reply {
                id: PUSHER_SUBSCRIBE_ID,
                outcome: Ok(Value::Null)
            }
        );
        assert_eq!(
            parse_pusher(br#"{"event":"pusher:ping","data":{}}"#),
            Incoming::Push(PushKind::Ping)
        );
        assert_eq!(
            parse_pusher(br#"{"event":"pusher:error","data":{"code":4001,"message":"no app"}}"#),
            Incoming::Push(PushKind::Error(4001))
        );
        assert_eq!(
            parse_pusher(br#"{"event":"pusher:subscription_error","channel":"x","data":{"type":"AuthError","status":403}}"#),
            Incoming::Reply {
                id: PUSHER_SUBSCRIBE_ID,
                outcome: Err(403)
            }
        );
        let foreign = br#"{"event":"other","channel":"wsbench-0","data":"{\"text\":\"hi\"}"}"#;
        assert_eq!(
            parse_pusher(foreign),
            Incoming::Publication {
                offset: None,
                marker: None
            }
        );
        for s in [pusher_subscribe("wsbench-0"), PUSHER_PONG.to_string()] {
            serde_json::from_str::<Value>(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    #[test]
    fn commands_are_valid_json() {
        for s in [
            connect_cmd(1, Some("a.b.c")),
            connect_cmd(1, None),
            subscribe_cmd(2, "room:1", None),
            subscribe_cmd(2, "room:1", Some((17, "k3x9"))),
            publish_cmd(3, "room:1", r#"{"a":1}"#),
            api_publish_body("user:9", r#"{"a":1}"#),
        ] {
            serde_json::from_str::<Value>(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }
}
