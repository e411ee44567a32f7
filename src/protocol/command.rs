//! Client → server commands. Parsing is pure: bytes in, an owned [`Command`] or a
//! [`ClientError`] out, so it is unit-tested and benchmarked without sockets.
//!
//! Commands are owned (not borrowed from the read buffer) because the read buffer is shared by
//! every connection of a shard and is released before a command's (possibly async) handling.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::ClientError;

/// A stream position: the offset of the last publication seen and the stream's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Echoed in the reply; absent ids are answered without one.
    pub id: Option<u64>,
    pub kind: CommandKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommandKind {
    Connect {
        token: Option<String>,
        /// Positions of server-side subscriptions to recover (`connect.subs`), by channel.
        subs: Vec<(String, Position)>,
    },
    Refresh {
        token: String,
    },
    Subscribe {
        channel: String,
        recover: Option<Position>,
    },
    Unsubscribe {
        channel: String,
    },
    /// `data` is the raw JSON text, passed through to subscribers without re-encoding.
    Publish {
        channel: String,
        data: Bytes,
    },
    Presence {
        channel: String,
    },
    PresenceStats {
        channel: String,
    },
    History {
        channel: String,
        limit: Option<usize>,
        since: Option<Position>,
    },
    Ping,
    /// A message of a Pusher connection (`/app/{key}`), handled by `crate::pusher`; never
    /// produced by `parse`.
    Pusher(Bytes),
}

impl CommandKind {
    /// A short static name for metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            CommandKind::Connect { .. } => "connect",
            CommandKind::Refresh { .. } => "refresh",
            CommandKind::Subscribe { .. } => "subscribe",
            CommandKind::Unsubscribe { .. } => "unsubscribe",
            CommandKind::Publish { .. } => "publish",
            CommandKind::Presence { .. } => "presence",
            CommandKind::PresenceStats { .. } => "presence_stats",
            CommandKind::History { .. } => "history",
            CommandKind::Ping => "ping",
            CommandKind::Pusher(_) => "pusher",
        }
    }
}

/// The envelope: `id` plus exactly one command field. Unknown fields are ignored, so a newer
/// client's extra fields never break an older server.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(borrow, default)]
    connect: Option<&'a RawValue>,
    #[serde(borrow, default)]
    refresh: Option<&'a RawValue>,
    #[serde(borrow, default)]
    subscribe: Option<&'a RawValue>,
    #[serde(borrow, default)]
    unsubscribe: Option<&'a RawValue>,
    #[serde(borrow, default)]
    publish: Option<&'a RawValue>,
    #[serde(borrow, default)]
    presence: Option<&'a RawValue>,
    #[serde(borrow, default)]
    presence_stats: Option<&'a RawValue>,
    #[serde(borrow, default)]
    history: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ping: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ConnectBody {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    subs: std::collections::BTreeMap<String, Position>,
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
}

#[derive(Deserialize)]
struct SubscribeBody {
    channel: String,
    #[serde(default)]
    recover: Option<Position>,
}

#[derive(Deserialize)]
struct ChannelBody {
    channel: String,
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct HistoryBody {
    channel: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    since: Option<Position>,
}

fn body<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Result<T, ClientError> {
    serde_json::from_str(raw.get()).map_err(|_| ClientError::BadRequest("malformed command body"))
}

/// Why a frame could not be turned into a command.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// The id, when the envelope was readable enough to find one (the reply carries it).
    pub id: Option<u64>,
    pub error: ClientError,
}

/// Deepest nesting of arrays and objects a publication's `data` may have. Data is passed on
/// unparsed (`RawValue`), so without this a client could publish a 100,000-deep value that every
/// subscriber's JSON parser (serde_json's limit is 128) would choke on.
pub const MAX_DATA_DEPTH: usize = 64;

/// Whether the JSON text `json` nests arrays/objects deeper than `max` (a byte scan that skips
/// strings; the text is already known to be valid JSON).
pub fn nested_deeper_than(json: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses one text frame into a command.
pub fn parse(frame: &[u8]) -> Result<Command, ParseError> {
    let env: Envelope = serde_json::from_slice(frame).map_err(|_| ParseError {
        id: None,
        error: ClientError::BadRequest("malformed JSON"),
    })?;
    let id = env.id;
    let err = |error| ParseError { id, error };
    let present = [
        env.connect.is_some(),
        env.refresh.is_some(),
        env.subscribe.is_some(),
        env.unsubscribe.is_some(),
        env.publish.is_some(),
        env.presence.is_some(),
        env.presence_stats.is_some(),
        env.history.is_some(),
        env.ping.is_some(),
    ]
    .iter()
    .filter(|p| **p)
    .count();
    if present == 0 {
        return Err(err(ClientError::MethodNotFound));
    }
    if present > 1 {
        return Err(err(ClientError::BadRequest("one command per frame")));
    }
    let kind = if let Some(raw) = env.connect {
        let b: ConnectBody = body(raw).map_err(err)?;
        CommandKind::Connect {
            token: b.token.filter(|t| !t.is_empty()),
            subs: b.subs.into_iter().collect(),
        }
    } else if let Some(raw) = env.refresh {
        let b: TokenBody = body(raw).map_err(err)?;
        CommandKind::Refresh { token: b.token }
    } else if let Some(raw) = env.subscribe {
        let b: SubscribeBody = body(raw).map_err(err)?;
        CommandKind::Subscribe {
            channel: b.channel,
            recover: b.recover,
        }
    } else if let Some(raw) = env.unsubscribe {
        let b: ChannelBody = body(raw).map_err(err)?;
        CommandKind::Unsubscribe { channel: b.channel }
    } else if let Some(raw) = env.publish {
        let b: PublishBody = body(raw).map_err(err)?;
        if nested_deeper_than(b.data.get().as_bytes(), MAX_DATA_DEPTH) {
            return Err(err(ClientError::BadRequest("data nested too deeply")));
        }
        CommandKind::Publish {
            channel: b.channel,
            data: Bytes::copy_from_slice(b.data.get().as_bytes()),
        }
    } else if let Some(raw) = env.presence {
        let b: ChannelBody = body(raw).map_err(err)?;
        CommandKind::Presence { channel: b.channel }
    } else if let Some(raw) = env.presence_stats {
        let b: ChannelBody = body(raw).map_err(err)?;
        CommandKind::PresenceStats { channel: b.channel }
    } else if let Some(raw) = env.history {
        let b: HistoryBody = body(raw).map_err(err)?;
        CommandKind::History {
            channel: b.channel,
            limit: b.limit,
            since: b.since,
        }
    } else {
        CommandKind::Ping
    };
    Ok(Command { id, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        let c = parse(br#"{"id":1,"connect":{"token":"abc"}}"#).unwrap();
        assert_eq!(c.id, Some(1));
        assert_eq!(
            c.kind,
            CommandKind::Connect {
                token: Some("abc".into()),
                subs: Vec::new(),
            }
        );
        let c = parse(
            br#"{"id":1,"connect":{"token":"t","subs":{"user:1":{"offset":3,"epoch":"e"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.kind,
            CommandKind::Connect {
                token: Some("t".into()),
                subs: vec![(
                    "user:1".into(),
                    Position {
                        offset: 3,
                        epoch: "e".into()
                    }
                )],
            }
        );
        let c = parse(
            br#"{"id":2,"subscribe":{"channel":"room:42","recover":{"offset":17,"epoch":"k3x9"}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.kind,
            CommandKind::Subscribe {
                channel: "room:42".into(),
                recover: Some(Position {
                    offset: 17,
                    epoch: "k3x9".into()
                })
            }
        );
        let c = parse(br#"{"id":4,"publish":{"channel":"room:42","data":{"text":"hi"}}}"#).unwrap();
        match c.kind {
            CommandKind::Publish { data, .. } => assert_eq!(&data[..], br#"{"text":"hi"}"#),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(br#"{"id":8,"ping":{}}"#).unwrap().kind,
            CommandKind::Ping
        );
        assert!(matches!(
            parse(br#"{"id":7,"history":{"channel":"a","limit":50,"since":{"offset":10,"epoch":"e"}}}"#).unwrap().kind,
            CommandKind::History { limit: Some(50), .. }
        ));
        assert!(matches!(
            parse(br#"{"id":6,"presence_stats":{"channel":"a"}}"#)
                .unwrap()
                .kind,
            CommandKind::PresenceStats { .. }
        ));
    }

    #[test]
    fn errors_carry_codes_and_ids() {
        let e = parse(b"{nope").unwrap_err();
        assert_eq!((e.id, e.error.code()), (None, 107));
        let e = parse(br#"{"id":3,"frobnicate":{}}"#).unwrap_err();
        assert_eq!((e.id, e.error.code()), (Some(3), 104));
        let e = parse(br#"{"id":3,"subscribe":{"chan":"x"}}"#).unwrap_err();
        assert_eq!((e.id, e.error.code()), (Some(3), 107));
        let e = parse(br#"{"id":3,"ping":{},"subscribe":{"channel":"x"}}"#).unwrap_err();
        assert_eq!(e.error.code(), 107);
        let e = parse(br#"[1,2]"#).unwrap_err();
        assert_eq!(e.error.code(), 107);
    }

    #[test]
    fn deeply_nested_data_is_refused() {
        assert!(!nested_deeper_than(br#"{"a":[1,{"b":"[[[[["}]}"#, 3));
        assert!(nested_deeper_than(br#"[[[[1]]]]"#, 3));
        assert!(!nested_deeper_than(br#"["\"[[[["]"#, 1));
        let deep = format!(
            r#"{{"id":4,"publish":{{"channel":"room:1","data":{{"x":{}1{}}}}}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        let e = parse(deep.as_bytes()).unwrap_err();
        assert_eq!(e.error, ClientError::BadRequest("data nested too deeply"));
        let ok = format!(
            r#"{{"id":4,"publish":{{"channel":"room:1","data":{}1{}}}}}"#,
            "[".repeat(MAX_DATA_DEPTH),
            "]".repeat(MAX_DATA_DEPTH)
        );
        assert!(parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn empty_token_is_no_token() {
        let c = parse(br#"{"id":1,"connect":{"token":""}}"#).unwrap();
        assert_eq!(
            c.kind,
            CommandKind::Connect {
                token: None,
                subs: Vec::new()
            }
        );
    }

    mod props {
        use super::super::parse;
        use proptest::prelude::*;

        /// JSON-shaped text built from the protocol's own words, nested and mangled, so the
        /// parser's paths past the first `{` are reached, not only its "malformed" answer.
        fn commandish() -> impl Strategy<Value = String> {
            let word = prop_oneof![
                Just("\"id\"".to_string()),
                Just("\"connect\"".to_string()),
                Just("\"subscribe\"".to_string()),
                Just("\"publish\"".to_string()),
                Just("\"history\"".to_string()),
                Just("\"channel\"".to_string()),
                Just("\"recover\"".to_string()),
                Just("\"offset\"".to_string()),
                Just("\"data\"".to_string()),
                Just("\"since\"".to_string()),
                Just("\"limit\"".to_string()),
                "\"[a-z:]{0,12}\"",
                "-?[0-9]{1,22}(\\.[0-9]+)?(e[0-9]{1,4})?",
                Just("null".to_string()),
                Just("true".to_string()),
                Just("{".to_string()),
                Just("}".to_string()),
                Just("[".to_string()),
                Just("]".to_string()),
                Just(":".to_string()),
                Just(",".to_string()),
                Just("\"\\ud800\"".to_string()),
            ];
            proptest::collection::vec(word, 0..40).prop_map(|w| w.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse(&bytes);
            }

            #[test]
            fn arbitrary_command_text_never_panics(text in commandish()) {
                let _ = parse(text.as_bytes());
                let wrapped = format!("{{\"id\":1,\"subscribe\":{text}}}");
                let _ = parse(wrapped.as_bytes());
            }

            #[test]
            fn deep_nesting_is_an_error_not_a_crash(depth in 1usize..20_000) {
                let text = format!("{{\"id\":1,\"publish\":{{\"channel\":\"a\",\"data\":{}}}}}", "[".repeat(depth));
                prop_assert!(parse(text.as_bytes()).is_err());
            }
        }
    }
}
