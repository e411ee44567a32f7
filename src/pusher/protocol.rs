//! Pusher Channels protocol 7, the pure parts: signatures (HMAC-SHA256, body MD5), channel-name
//! rules, the mapping of Pusher channels onto ferrocast channels, Pusher frames and the
//! translation of a ferrocast delivery into its Pusher frame (done once per delivery per shard
//! by `hub::shard`'s fan-out). No I/O, no hub: unit-tested here.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::protocol::{ChannelName, CloseCode};

/// Longest Pusher channel name (Pusher: 164 characters).
pub const MAX_CHANNEL_LEN: usize = 164;
/// The server-to-user channel prefix (pusher-js subscribes to `#server-to-user-<id>` after
/// `pusher:signin`).
pub const SERVER_TO_USER: &str = "#server-to-user-";

/// Pusher's close codes (https://pusher.com/docs/channels/library_auth_reference/pusher-websockets-protocol/#error-codes).
pub mod codes {
    pub const APP_DOES_NOT_EXIST: u16 = 4001;
    pub const APP_DISABLED: u16 = 4003;
    pub const OVER_CONNECTION_QUOTA: u16 = 4004;
    pub const PATH_NOT_FOUND: u16 = 4005;
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    pub const NO_PROTOCOL: u16 = 4008;
    pub const UNAUTHORIZED: u16 = 4009;
    pub const OVER_CAPACITY: u16 = 4100;
    pub const RECONNECT: u16 = 4200;
    pub const PONG_NOT_RECEIVED: u16 = 4201;
    pub const CLIENT_EVENT_RATE_LIMIT: u16 = 4301;
}

/// The close code and reason a Pusher client gets for a ferrocast close: pusher-js reconnects
/// at once on 4200–4299, backs off on 4100–4199 and gives up on 4000–4099, so a drain (4010 in
/// ferrocast, which pusher-js would read as "refused") becomes 4200.
pub fn close_code(code: CloseCode) -> (u16, &'static str) {
    match code {
        CloseCode::Shutdown => (codes::RECONNECT, "Server is restarting, reconnect"),
        CloseCode::ServerClose => (codes::PONG_NOT_RECEIVED, "Pong reply not received"),
        CloseCode::SlowConsumer | CloseCode::TooManyRequests | CloseCode::ConnectionLimit => {
            (codes::OVER_CAPACITY, "Over capacity")
        }
        other => (other.as_u16(), other.reason()),
    }
}

// ---------------------------------------------------------------------------------------------
// Signatures

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

/// hex(HMAC-SHA256(secret, message)).
pub fn hmac_hex(secret: &str, message: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    hex(ring::hmac::sign(&key, message.as_bytes()).as_ref())
}

/// Constant-time comparison of two ASCII strings.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A channel authorization: `auth` must be `key:hex(HMAC-SHA256(secret,
/// "socket_id:channel[:channel_data]"))`.
pub fn check_channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    let msg = match channel_data {
        Some(d) => format!("{socket_id}:{channel}:{d}"),
        None => format!("{socket_id}:{channel}"),
    };
    same(auth, &format!("{key}:{}", hmac_hex(secret, &msg)))
}

/// A user authentication (`pusher:signin`): `key:hex(HMAC-SHA256(secret,
/// "socket_id::user::user_data"))`.
pub fn check_signin(key: &str, secret: &str, socket_id: &str, user_data: &str, auth: &str) -> bool {
    let msg = format!("{socket_id}::user::{user_data}");
    same(auth, &format!("{key}:{}", hmac_hex(secret, &msg)))
}

/// The string an HTTP API request signs: `METHOD\nPATH\nk=v&…` with the query parameters
/// (without `auth_signature`) sorted by key, keys lower-cased, values as sent (decoded).
pub fn api_string_to_sign(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut p: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    p.sort();
    let query = p
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!("{method}\n{path}\n{query}")
}

/// MD5 (RFC 1321), for the HTTP API's `body_md5`. Not used for anything secret.
pub fn md5(input: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4294967296.0) as u32)
        .collect();
    let (mut a0, mut b0, mut c0, mut d0) =
        (0x67452301u32, 0xefcdab89u32, 0x98badcfeu32, 0x10325476u32);
    let mut msg = input.to_vec();
    let bit_len = (input.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_le_bytes());
    for chunk in msg.chunks(64) {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    let mut out = [0u8; 16];
    for (i, v) in [a0, b0, c0, d0].iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Channel names and the mapping onto ferrocast

/// What kind of Pusher channel a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Public,
    Private,
    /// `private-encrypted-`: end-to-end encrypted by the clients; the server passes it through
    /// (authorized like `private-`).
    Encrypted,
    Presence,
    /// `#server-to-user-<id>`: only the signed-in user `<id>` may subscribe.
    User,
}

impl Kind {
    pub fn of(name: &str) -> Kind {
        if name.starts_with(SERVER_TO_USER) {
            Kind::User
        } else if name.starts_with("private-encrypted-") {
            Kind::Encrypted
        } else if name.starts_with("private-") {
            Kind::Private
        } else if name.starts_with("presence-") {
            Kind::Presence
        } else {
            Kind::Public
        }
    }

    pub fn needs_auth(self) -> bool {
        matches!(self, Kind::Private | Kind::Encrypted | Kind::Presence)
    }
}

/// Whether a Pusher channel keeps its last event for new subscribers (`cache-`,
/// `private-cache-`, `private-encrypted-cache-`, `presence-cache-`).
pub fn is_cache(name: &str) -> bool {
    [
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// Why a Pusher channel name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// Empty, longer than 164, or a character outside `[A-Za-z0-9_\-=@,.;]`.
    Invalid,
    /// A valid Pusher name with `;`, which ferrocast channel names cannot hold.
    Semicolon,
}

impl NameError {
    pub fn message(self) -> &'static str {
        match self {
            NameError::Invalid => "Invalid channel name: 1 to 164 characters of [A-Za-z0-9_-=@,.;]",
            NameError::Semicolon => {
                "Channel names with ';' are not supported by this server (ferrocast)"
            }
        }
    }
}

/// The ferrocast namespaces of app `app_id`: its channels, its `cache-` channels (history 1),
/// its server-to-user channels. `@` is not allowed in app ids, so no two apps' namespaces meet.
pub fn namespace(app_id: &str) -> String {
    format!("pusher-{app_id}")
}
pub fn cache_namespace(app_id: &str) -> String {
    format!("pusher-{app_id}@cache")
}
pub fn user_namespace(app_id: &str) -> String {
    format!("pusher-{app_id}@user")
}

/// The ferrocast channel a Pusher channel of `app_id` is carried on.
pub fn to_ferrocast(app_id: &str, name: &str) -> Result<ChannelName, NameError> {
    if let Some(user) = name.strip_prefix(SERVER_TO_USER) {
        return ChannelName::parse(&format!("{}:{user}", user_namespace(app_id)))
            .map_err(|_| NameError::Invalid);
    }
    if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
        return Err(NameError::Invalid);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
    {
        return Err(NameError::Invalid);
    }
    if name.contains(';') {
        return Err(NameError::Semicolon);
    }
    let ns = if is_cache(name) {
        cache_namespace(app_id)
    } else {
        namespace(app_id)
    };
    ChannelName::parse(&format!("{ns}:{name}")).map_err(|_| NameError::Invalid)
}

/// The Pusher name of a ferrocast channel of a Pusher namespace (`pusher-1:presence-x` →
/// `presence-x`, `pusher-1@user:17` → `#server-to-user-17`); `None` for other channels.
pub fn from_ferrocast(ch: &str) -> Option<std::borrow::Cow<'_, str>> {
    let (ns, rest) = ch.split_once(':')?;
    if !ns.starts_with("pusher-") {
        return None;
    }
    if ns.ends_with("@user") {
        Some(format!("{SERVER_TO_USER}{rest}").into())
    } else {
        Some(rest.into())
    }
}

// ---------------------------------------------------------------------------------------------
// Frames

/// A socket id: `<node number>.<client number>` (Pusher: `\d+\.\d+`).
pub fn socket_id(node: u64, client: u64) -> String {
    format!("{node}.{client}")
}

pub fn parse_socket_id(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The node's number in socket ids, from its random hex id.
pub fn node_number(node_id: &str) -> u64 {
    u64::from_str_radix(node_id, 16).unwrap_or(0)
}

/// `{"event":E,"channel":C,"data":D}` with `data` a JSON value given as raw text.
pub fn event(event: &str, channel: Option<&str>, data_json: &str) -> Vec<u8> {
    let mut v = format!(
        "{{\"event\":{}",
        serde_json::to_string(event).expect("json")
    );
    if let Some(c) = channel {
        v.push_str(",\"channel\":");
        v.push_str(&serde_json::to_string(c).expect("json"));
    }
    v.push_str(",\"data\":");
    v.push_str(data_json);
    v.push('}');
    v.into_bytes()
}

/// An event whose `data` is a JSON document sent as a string (what Pusher does for its own
/// events: `"data":"{\"socket_id\":…}"`).
pub fn event_str(name: &str, channel: Option<&str>, data: &serde_json::Value) -> Vec<u8> {
    let s = serde_json::to_string(&data.to_string()).expect("json");
    event(name, channel, &s)
}

/// `pusher:error` with a code (`null` when `code` is None) and a message.
pub fn error(code: Option<u16>, message: &str) -> Vec<u8> {
    event(
        "pusher:error",
        None,
        &serde_json::json!({"code": code, "message": message}).to_string(),
    )
}

/// What a Pusher event is stored as in a ferrocast publication's `data` (so ferrocast clients
/// and its API see it too): `{"event", "data", "user_id"?, "socket_id"?}` — `socket_id` is the
/// sender, who does not get it back.
pub fn publication_data(
    event: &str,
    data: &RawValue,
    user_id: Option<&str>,
    sender: Option<&str>,
) -> Vec<u8> {
    let mut v = format!(
        "{{\"event\":{},\"data\":{}",
        serde_json::to_string(event).expect("json"),
        data.get()
    );
    if let Some(u) = user_id {
        v.push_str(",\"user_id\":");
        v.push_str(&serde_json::to_string(u).expect("json"));
    }
    if let Some(s) = sender {
        v.push_str(",\"socket_id\":");
        v.push_str(&serde_json::to_string(s).expect("json"));
    }
    v.push('}');
    v.into_bytes()
}

/// A control push with a Pusher form (member_added / member_removed), published with
/// `publish_control`: `{"channel":C,"pusher":{"event","data","socket_id"?}}`.
pub fn control_push(ch: &ChannelName, event: &str, data: &RawValue, sender: Option<&str>) -> Bytes {
    let mut v = format!("{{\"channel\":\"{}\",\"pusher\":", ch.as_str()).into_bytes();
    v.extend_from_slice(&publication_data(event, data, None, sender));
    v.push(b'}');
    Bytes::from(v)
}

#[derive(Deserialize)]
struct DeliveryJson<'a> {
    channel: &'a str,
    #[serde(borrow, default)]
    #[serde(rename = "pub")]
    publication: Option<PubJson<'a>>,
    #[serde(borrow, default)]
    pusher: Option<EventJson<'a>>,
}

#[derive(Deserialize)]
struct PubJson<'a> {
    #[serde(borrow)]
    data: EventJson<'a>,
}

#[derive(Deserialize)]
struct EventJson<'a> {
    #[serde(borrow)]
    event: &'a RawValue,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user_id: Option<&'a RawValue>,
    #[serde(default)]
    socket_id: Option<&'a str>,
}

/// A delivery's Pusher frame (framed for the socket) and its sender (node, client) to skip;
/// `None` when the delivery has no Pusher form (ferrocast join/leave, data without `event`).
pub type PusherFrame = Option<(Bytes, Option<(u64, u64)>)>;

/// Translates a ferrocast delivery (`{"channel":"pusher-1:x","pub":{"data":{"event",…}}}` or a
/// control push `{"channel":…,"pusher":{…}}`) into `{"event","channel","data"[,"user_id"]}`.
pub fn frame_for(payload: &[u8]) -> PusherFrame {
    let d: DeliveryJson = serde_json::from_slice(payload).ok()?;
    let ev = match (d.publication, d.pusher) {
        (Some(p), _) => p.data,
        (None, Some(e)) => e,
        _ => return None,
    };
    if !ev.event.get().starts_with('"') {
        return None;
    }
    let channel = from_ferrocast(d.channel)?;
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(b"{\"event\":");
    out.extend_from_slice(ev.event.get().as_bytes());
    out.extend_from_slice(b",\"channel\":\"");
    out.extend_from_slice(channel.as_bytes()); // Pusher names need no escaping
    out.extend_from_slice(b"\",\"data\":");
    out.extend_from_slice(ev.data.map_or("{}", |d| d.get()).as_bytes());
    if let Some(u) = ev.user_id {
        out.extend_from_slice(b",\"user_id\":");
        out.extend_from_slice(u.get().as_bytes());
    }
    out.push(b'}');
    let sender = ev.socket_id.and_then(parse_socket_id);
    Some((crate::ws::frame::text(&out), sender))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pusher's documented example (https://pusher.com/docs/channels/library_auth_reference/auth-signatures/).
    #[test]
    fn channel_auth_matches_pushers_example() {
        let (key, secret) = ("278d425bdf160c739803", "7ad3773142a6692b25b8");
        let sig = hmac_hex(secret, "1234.1234:private-foobar");
        assert_eq!(
            sig,
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(check_channel_auth(
            key,
            secret,
            "1234.1234",
            "private-foobar",
            None,
            &format!("{key}:{sig}")
        ));
        assert!(!check_channel_auth(
            key,
            secret,
            "1234.1235",
            "private-foobar",
            None,
            &format!("{key}:{sig}")
        ));
        // Presence: channel_data is part of the signed string.
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        // (No documented vector at hand for presence: the real pusher libraries sign it in
        // tests/pusher/.)
        let sig = hmac_hex(secret, &format!("1234.1234:presence-foobar:{data}"));
        assert!(!check_channel_auth(
            key,
            secret,
            "1234.1234",
            "presence-foobar",
            Some("{}"),
            &format!("{key}:{sig}")
        ));
        assert!(check_channel_auth(
            key,
            secret,
            "1234.1234",
            "presence-foobar",
            Some(data),
            &format!("{key}:{sig}")
        ));
    }

    /// Pusher's documented HTTP API example (https://pusher.com/docs/channels/library_auth_reference/rest-api/#worked-authentication-example).
    #[test]
    fn api_signature_matches_pushers_example() {
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(
            hex(&md5(body.as_bytes())),
            "ec365a775a4cd0599faeb73354201b6f"
        );
        let params: Vec<(String, String)> = [
            ("auth_key", "278d425bdf160c739803"),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = api_string_to_sign("POST", "/apps/3/events", &params);
        assert_eq!(
            s,
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        assert_eq!(
            hmac_hex("7ad3773142a6692b25b8", &s),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn md5_rfc1321_vectors() {
        assert_eq!(hex(&md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(&md5(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            hex(&md5(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            )),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn signin_signature() {
        let ud = r#"{"id":"17"}"#;
        let sig = hmac_hex("s", &format!("1.2::user::{ud}"));
        assert!(check_signin("k", "s", "1.2", ud, &format!("k:{sig}")));
        assert!(!check_signin("k", "s", "1.3", ud, &format!("k:{sig}")));
    }

    #[test]
    fn channel_rules_and_mapping() {
        let ok = to_ferrocast("7", "private-room_1-=@,.").unwrap();
        assert_eq!(ok.as_str(), "pusher-7:private-room_1-=@,.");
        assert_eq!(ok.namespace(), "pusher-7");
        assert_eq!(
            to_ferrocast("7", "presence-cache-x").unwrap().namespace(),
            "pusher-7@cache"
        );
        assert_eq!(
            to_ferrocast("7", "#server-to-user-17").unwrap().as_str(),
            "pusher-7@user:17"
        );
        assert_eq!(to_ferrocast("7", "a;b"), Err(NameError::Semicolon));
        assert_eq!(to_ferrocast("7", ""), Err(NameError::Invalid));
        assert_eq!(to_ferrocast("7", "a b"), Err(NameError::Invalid));
        assert_eq!(to_ferrocast("7", "a:b"), Err(NameError::Invalid));
        assert_eq!(to_ferrocast("7", "#other"), Err(NameError::Invalid));
        assert!(to_ferrocast("7", &"x".repeat(164)).is_ok());
        assert_eq!(to_ferrocast("7", &"x".repeat(165)), Err(NameError::Invalid));
        assert_eq!(Kind::of("private-encrypted-x"), Kind::Encrypted);
        assert_eq!(Kind::of("presence-x"), Kind::Presence);
        assert_eq!(Kind::of("x"), Kind::Public);
        assert!(is_cache("private-cache-x") && !is_cache("x-cache-"));
        assert_eq!(from_ferrocast("pusher-7:presence-x").unwrap(), "presence-x");
        assert_eq!(
            from_ferrocast("pusher-7@user:17").unwrap(),
            "#server-to-user-17"
        );
        assert!(from_ferrocast("room:1").is_none());
    }

    #[test]
    fn deliveries_become_pusher_frames() {
        let ch = ChannelName::parse("pusher-7:private-x").unwrap();
        let data = publication_data(
            "client-typing",
            &RawValue::from_string(r#"{"a":"\"q"}"#.into()).unwrap(),
            Some("u1"),
            Some("12.34"),
        );
        let p = crate::protocol::reply::publication(&ch, 5, &data, None);
        let (frame, sender) = frame_for(&p).unwrap();
        assert_eq!(sender, Some((12, 34)));
        let text = &frame[2..]; // a short text frame: 2 header bytes
        let v: serde_json::Value = serde_json::from_slice(text).unwrap();
        assert_eq!(v["event"], "client-typing");
        assert_eq!(v["channel"], "private-x");
        assert_eq!(v["data"]["a"], "\"q");
        assert_eq!(v["user_id"], "u1");
        // A control push.
        let c = control_push(
            &ch,
            "pusher_internal:member_removed",
            &RawValue::from_string(r#""{\"user_id\":\"1\"}""#.into()).unwrap(),
            None,
        );
        let (frame, sender) = frame_for(&c).unwrap();
        assert!(sender.is_none());
        let v: serde_json::Value = serde_json::from_slice(&frame[2..]).unwrap();
        assert_eq!(v["event"], "pusher_internal:member_removed");
        assert_eq!(v["data"], r#"{"user_id":"1"}"#);
        // No Pusher form: a ferrocast join push, a publication without an event, other channels.
        let join = crate::protocol::reply::channel_push(&ch, "join", &serde_json::json!({}));
        assert!(frame_for(&join).is_none());
        let plain = crate::protocol::reply::publication(&ch, 6, br#"{"text":"hi"}"#, None);
        assert!(frame_for(&plain).is_none());
        let other = ChannelName::parse("room:1").unwrap();
        let p = crate::protocol::reply::publication(&other, 5, &data, None);
        assert!(frame_for(&p).is_none());
    }

    #[test]
    fn socket_ids() {
        let id = socket_id(node_number("0000abcd"), 42);
        assert_eq!(id, "43981.42");
        assert_eq!(parse_socket_id(&id), Some((43981, 42)));
        assert_eq!(parse_socket_id("x.1"), None);
    }

    #[test]
    fn drain_reconnects_pusher_clients() {
        assert_eq!(close_code(CloseCode::Shutdown).0, 4200);
        assert_eq!(close_code(CloseCode::SlowConsumer).0, 4100);
    }
}
