//! Property tests of the decoder and the UTF-8 validator:
//!
//! (a) any byte stream — random frames with arbitrary first bytes, length forms, lying lengths and
//!     masks, mixed with valid frames and raw noise — cut anywhere decodes to exactly what the
//!     stream decodes to in one piece (items, error, final state), never panics, and agrees with
//!     a plain whole-buffer reference model written from RFC 6455 here;
//! (b) valid messages (random unicode text, binary, pings and pongs interleaved between
//!     fragments, an optional close) with random fragmentation, masks and cuts decode to exactly
//!     the messages sent;
//! (c) `Utf8State` agrees with `std::str::from_utf8` at arbitrary cut points and fails on the
//!     piece holding the first byte that makes the input invalid.
//!
//! Sizes stay at a few KB and cases at 256 or fewer so the suite runs in about a second.

mod common;

use common::Got;
use ferrocast_codec::decoder::Limits;
use ferrocast_codec::frame::{
    encode_masked, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
};
use ferrocast_codec::utf8::Utf8State;
use ferrocast_codec::{DecodeError, Decoder, Flow, Role};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------------------------
// Harness

/// What decoding a stream came to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    items: Vec<Got>,
    err: Option<DecodeError>,
    done: bool,
    mid_message: bool,
    buffered: usize,
    frames_left: u32,
}

#[derive(Debug, Clone, Copy)]
struct Setup {
    role: Role,
    max_message: usize,
    frames: u32,
    /// The receiver answers `Flow::Stop` to this item (1-based).
    stop_after: Option<usize>,
}

/// Feeds `chunks` in order, as separate reads.
fn run(chunks: &[&[u8]], setup: Setup) -> Outcome {
    let limits = Limits {
        role: setup.role,
        max_message: setup.max_message,
    };
    let mut dec = Decoder::new();
    let mut frames = setup.frames;
    let mut items: Vec<Got> = Vec::new();
    let mut err = None;
    for chunk in chunks {
        let mut buf = chunk.to_vec();
        let was_done = dec.is_done();
        let before = items.len();
        let r = dec.feed(&mut buf, &limits, &mut frames, |item| {
            items.push(Got::from(item));
            if setup.stop_after == Some(items.len()) {
                Flow::Stop
            } else {
                Flow::Continue
            }
        });
        if was_done {
            assert_eq!(r, Ok(()), "an error after the end");
            assert_eq!(items.len(), before, "items after the end");
        }
        if let Err(e) = r {
            assert!(err.is_none());
            err = Some(e);
        }
        if dec.is_done() {
            assert!(!dec.is_mid_message(), "state kept after the end");
        }
    }
    Outcome {
        items,
        err,
        done: dec.is_done(),
        mid_message: dec.is_mid_message(),
        buffered: dec.buffered(),
        frames_left: frames,
    }
}

/// `stream` cut at the given points (any order, repeats allowed).
fn cut<'a>(stream: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::with_capacity(at.len() + 1);
    let mut prev = 0;
    for c in at {
        out.push(&stream[prev..c]);
        prev = c;
    }
    out.push(&stream[prev..]);
    out
}

/// A frame with every header field chosen: `b0` is the first byte as is (FIN, RSV, opcode);
/// `form` 0/1/2 = 7/16/64-bit length (a 7-bit form that cannot hold the length uses the 16-bit
/// one); `claim` = a length field other than the payload's; `key` = masked with this key.
fn raw_frame(
    b0: u8,
    form: u8,
    claim: Option<u64>,
    key: Option<[u8; 4]>,
    payload: &[u8],
) -> Vec<u8> {
    let len = claim.unwrap_or(payload.len() as u64);
    let mut out = vec![b0];
    let mbit = if key.is_some() { 0x80 } else { 0 };
    match form {
        0 if len <= 125 => out.push(mbit | len as u8),
        0 | 1 if len <= 0xffff => {
            out.push(mbit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mbit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    let start = out.len() + key.map_or(0, |_| 4);
    if let Some(k) = key {
        out.extend_from_slice(&k);
    }
    out.extend_from_slice(payload);
    if let Some(k) = key {
        for (i, b) in out[start..].iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// A reference model: the whole stream at once, RFC 6455 read plainly.

#[derive(Debug, PartialEq, Eq)]
struct Model {
    items: Vec<Got>,
    code: Option<u16>,
    done: bool,
    frames_left: u32,
}

fn close_code_ok(code: u16) -> bool {
    // RFC 6455 §7.4.1/§7.4.2 and the IANA registry: 1004–1006 and 1015 never appear on the wire;
    // 1016–2999 are unassigned, 0–999 unused; 3000–4999 are for libraries and applications.
    (1000..=1003).contains(&code) || (1007..=1014).contains(&code) || (3000..=4999).contains(&code)
}

fn model(s: &[u8], setup: Setup) -> Model {
    let masked = setup.role == Role::Server;
    let mut frames = setup.frames;
    let mut items = Vec::new();
    let mut msg: Option<(bool, Vec<u8>)> = None;
    let mut i = 0usize;
    macro_rules! end {
        ($code:expr, $done:expr) => {
            return Model {
                items,
                code: $code,
                done: $done,
                frames_left: frames,
            }
        };
    }
    macro_rules! emit {
        ($g:expr) => {{
            items.push($g);
            if setup.stop_after == Some(items.len()) {
                end!(None, true);
            }
        }};
    }
    loop {
        let Some(&b0) = s.get(i) else {
            end!(None, false)
        };
        if b0 & 0x70 != 0 {
            end!(Some(1002), true);
        }
        let op = b0 & 0x0f;
        if !matches!(op, 0 | 1 | 2 | 8 | 9 | 10) {
            end!(Some(1002), true);
        }
        let fin = b0 & 0x80 != 0;
        let Some(&b1) = s.get(i + 1) else {
            end!(None, false)
        };
        if (b1 & 0x80 != 0) != masked {
            end!(Some(1002), true);
        }
        let control = op >= 8;
        let l7 = b1 & 0x7f;
        if control && (!fin || l7 > 125) {
            end!(Some(1002), true);
        }
        let mut j = i + 2;
        let len: u64 = match l7 {
            126 => {
                if s.len() < j + 2 {
                    end!(None, false);
                }
                j += 2;
                u64::from(u16::from_be_bytes([s[j - 2], s[j - 1]]))
            }
            127 => {
                if s.len() < j + 1 {
                    end!(None, false);
                }
                if s[j] & 0x80 != 0 {
                    end!(Some(1002), true);
                }
                if s.len() < j + 8 {
                    end!(None, false);
                }
                j += 8;
                u64::from_be_bytes(s[j - 8..j].try_into().unwrap())
            }
            n => u64::from(n),
        };
        let key = if masked {
            if s.len() < j + 4 {
                end!(None, false);
            }
            j += 4;
            Some([s[j - 4], s[j - 3], s[j - 2], s[j - 1]])
        } else {
            None
        };
        if frames == 0 {
            end!(Some(1008), true);
        }
        frames -= 1;
        if !control {
            match (op, &msg) {
                (0, None) | (1 | 2, Some(_)) => end!(Some(1002), true),
                _ => {}
            }
            let so_far = msg.as_ref().map_or(0, |m| m.1.len()) as u64;
            if so_far + len > setup.max_message as u64 {
                end!(Some(1009), true);
            }
        }
        let avail = ((s.len() - j) as u64).min(len) as usize;
        let mut payload = s[j..j + avail].to_vec();
        if let Some(k) = key {
            for (n, b) in payload.iter_mut().enumerate() {
                *b ^= k[n % 4];
            }
        }
        let complete = avail as u64 == len;
        if control {
            if !complete {
                end!(None, false);
            }
            match op {
                9 => emit!(Got::Ping(payload)),
                10 => emit!(Got::Pong(payload)),
                _ => {
                    let close = match payload.len() {
                        0 => None,
                        1 => end!(Some(1002), true),
                        _ => {
                            let code = u16::from_be_bytes([payload[0], payload[1]]);
                            if !close_code_ok(code) {
                                end!(Some(1002), true);
                            }
                            match String::from_utf8(payload[2..].to_vec()) {
                                Ok(r) => Some((code, r)),
                                Err(_) => end!(Some(1007), true),
                            }
                        }
                    };
                    items.push(Got::Close(close));
                    end!(None, true);
                }
            }
        } else {
            let m = msg.get_or_insert_with(|| (op == OP_TEXT, Vec::new()));
            m.1.extend_from_slice(&payload);
            // Fail fast: bytes that cannot begin valid UTF-8 fail at once.
            if m.0 && std::str::from_utf8(&m.1).is_err_and(|e| e.error_len().is_some()) {
                end!(Some(1007), true);
            }
            if !complete {
                end!(None, false);
            }
            if fin {
                let (is_text, data) = msg.take().unwrap();
                if is_text {
                    match String::from_utf8(data) {
                        Ok(t) => emit!(Got::Text(t)),
                        Err(_) => end!(Some(1007), true),
                    }
                } else {
                    emit!(Got::Binary(data));
                }
            }
        }
        i = j + len as usize;
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies

#[derive(Debug, Clone)]
enum Piece {
    /// Bytes as they are.
    Raw(Vec<u8>),
    /// A frame with an arbitrary first byte, length form, maybe a lying length or the wrong mask
    /// bit.
    Wild {
        b0: u8,
        form: u8,
        claim: Option<u64>,
        flip_mask: bool,
        key: [u8; 4],
        payload: Vec<u8>,
    },
    /// A well-formed frame (it may still break the message rules).
    Valid {
        fin: bool,
        op: u8,
        key: [u8; 4],
        payload: Vec<u8>,
    },
    /// A whole message in well-formed fragments cut at `splits` (its text may be invalid UTF-8).
    Message {
        op: u8,
        key: [u8; 4],
        data: Vec<u8>,
        splits: Vec<Index>,
    },
}

fn text_bytes(max_chars: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<char>(), 0..max_chars).prop_map(|c| c.into_iter().collect::<String>().into_bytes())
}

fn close_payload() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        4 => prop::sample::select(vec![1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999]),
        1 => prop::sample::select(vec![0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]),
        1 => any::<u16>(),
    ];
    let reason = prop_oneof![3 => text_bytes(20), 1 => vec(any::<u8>(), 0..8)];
    prop_oneof![
        1 => Just(vec![]),
        1 => any::<u8>().prop_map(|b| vec![b]),
        6 => (code, reason).prop_map(|(c, r)| {
            let mut p = c.to_be_bytes().to_vec();
            p.extend_from_slice(&r);
            p
        }),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => text_bytes(40),
        3 => vec(any::<u8>(), 0..40),
        1 => vec(any::<u8>(), 100..400),
        1 => text_bytes(200),
    ]
}

/// Text, now and then with a byte changed (often making it invalid UTF-8).
fn message_data() -> impl Strategy<Value = Vec<u8>> {
    (
        text_bytes(80),
        proptest::option::weighted(0.15, (any::<Index>(), any::<u8>())),
    )
        .prop_map(|(mut b, edit)| {
            if let (Some((i, v)), false) = (edit, b.is_empty()) {
                let at = i.index(b.len());
                b[at] = v;
            }
            b
        })
}

fn piece() -> impl Strategy<Value = Piece> {
    let op = prop_oneof![
        4 => Just(OP_TEXT),
        3 => Just(OP_BINARY),
        4 => Just(OP_CONT),
        2 => Just(OP_PING),
        1 => Just(OP_PONG),
        1 => Just(OP_CLOSE),
    ];
    let valid = (
        prop::bool::weighted(0.6),
        op,
        any::<[u8; 4]>(),
        payload(),
        close_payload(),
    )
        .prop_map(|(fin, op, key, mut payload, close)| {
            if op == OP_CLOSE {
                payload = close;
            }
            if op >= 8 {
                payload.truncate(125);
            }
            Piece::Valid {
                fin: fin || op >= 8,
                op,
                key,
                payload,
            }
        });
    let control = (
        prop_oneof![Just(OP_PING), Just(OP_PONG)],
        any::<[u8; 4]>(),
        vec(any::<u8>(), 0..=125),
    )
        .prop_map(|(op, key, payload)| Piece::Valid {
            fin: true,
            op,
            key,
            payload,
        });
    let message = (
        prop_oneof![Just(OP_TEXT), Just(OP_BINARY)],
        any::<[u8; 4]>(),
        prop_oneof![3 => message_data(), 1 => vec(any::<u8>(), 0..300)],
        vec(any::<Index>(), 0..4),
    )
        .prop_map(|(op, key, data, splits)| Piece::Message {
            op,
            key,
            data,
            splits,
        });
    let claim = prop_oneof![
        6 => Just(None),
        1 => (0u64..600).prop_map(Some),
        1 => any::<u64>().prop_map(Some),
    ];
    // Mostly without RSV bits, so that the frame gets further than its first byte.
    let b0 = prop_oneof![3 => any::<u8>().prop_map(|b| b & 0x8f), 1 => any::<u8>()];
    let wild = (
        b0,
        0u8..3,
        claim,
        prop::bool::weighted(0.1),
        any::<[u8; 4]>(),
        payload(),
    )
        .prop_map(|(b0, form, claim, flip_mask, key, payload)| Piece::Wild {
            b0,
            form,
            claim,
            flip_mask,
            key,
            payload,
        });
    prop_oneof![
        8 => message,
        3 => control,
        3 => valid,
        1 => wild,
        1 => vec(any::<u8>(), 0..12).prop_map(Piece::Raw),
    ]
}

fn encode_piece(p: &Piece, role: Role) -> Vec<u8> {
    let masked = role == Role::Server;
    let frame = |fin: bool, op: u8, key: [u8; 4], payload: &[u8]| {
        if masked {
            encode_masked(fin, op, payload, key)
        } else {
            raw_frame(if fin { 0x80 } else { 0 } | op, 0, None, None, payload)
        }
    };
    match p {
        Piece::Raw(b) => b.clone(),
        Piece::Wild {
            b0,
            form,
            claim,
            flip_mask,
            key,
            payload,
        } => {
            let key = (masked != *flip_mask).then_some(*key);
            raw_frame(*b0, *form, *claim, key, payload)
        }
        Piece::Valid {
            fin,
            op,
            key,
            payload,
        } => frame(*fin, *op, *key, payload),
        Piece::Message {
            op,
            key,
            data,
            splits,
        } => {
            let mut bounds: Vec<usize> = splits.iter().map(|i| i.index(data.len() + 1)).collect();
            bounds.sort_unstable();
            bounds.push(data.len());
            let mut out = Vec::new();
            let mut prev = 0;
            for (f, &b) in bounds.iter().enumerate() {
                let fop = if f == 0 { *op } else { OP_CONT };
                out.extend_from_slice(&frame(f + 1 == bounds.len(), fop, *key, &data[prev..b]));
                prev = b;
            }
            out
        }
    }
}

fn setup() -> impl Strategy<Value = Setup> {
    let role = prop_oneof![7 => Just(Role::Server), 1 => Just(Role::Client)];
    let max = prop_oneof![3 => Just(1usize << 20), 1 => 0usize..600];
    let frames = prop_oneof![3 => Just(u32::MAX), 1 => 0u32..12];
    let stop = prop_oneof![4 => Just(None), 1 => (1usize..6).prop_map(Some)];
    (role, max, frames, stop).prop_map(|(role, max_message, frames, stop_after)| Setup {
        role,
        max_message,
        frames,
        stop_after,
    })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// (a) Any bytes, cut anywhere: the same as in one piece, and as the model says.

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_stream_cut_anywhere_decodes_as_in_one_piece(
        pieces in vec(piece(), 0..16),
        cuts in vec(any::<Index>(), 0..10),
        setup in setup(),
    ) {
        let stream: Vec<u8> = pieces.iter().flat_map(|p| encode_piece(p, setup.role)).collect();
        let whole = run(&[&stream], setup);
        let pieces_out = run(&cut(&stream, &cuts), setup);
        prop_assert_eq!(&pieces_out, &whole, "cut at {:?}", cuts.iter().map(|i| i.index(stream.len() + 1)).collect::<Vec<_>>());
        if stream.len() <= 2048 {
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(&run(&bytes, setup), &whole, "octet-wise");
        }
        let m = model(&stream, setup);
        prop_assert_eq!(&whole.items, &m.items, "items against the model");
        prop_assert_eq!(whole.err.map(DecodeError::close_code), m.code, "error against the model: {:?}", whole.err);
        prop_assert_eq!(whole.done, m.done);
        prop_assert_eq!(whole.frames_left, m.frames_left);
    }

    #[test]
    fn noise_never_panics_and_cuts_do_not_matter(
        stream in vec(any::<u8>(), 0..300),
        cuts in vec(any::<Index>(), 0..6),
        setup in setup(),
    ) {
        let whole = run(&[&stream], setup);
        prop_assert_eq!(&run(&cut(&stream, &cuts), setup), &whole);
        let m = model(&stream, setup);
        prop_assert_eq!(&whole.items, &m.items);
        prop_assert_eq!(whole.err.map(DecodeError::close_code), m.code);
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Valid messages, fragmented and cut at random: exactly the messages sent.

#[derive(Debug, Clone)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

impl Msg {
    fn got(&self) -> Got {
        match self {
            Msg::Text(s) => Got::Text(s.clone()),
            Msg::Binary(b) => Got::Binary(b.clone()),
            Msg::Ping(b) => Got::Ping(b.clone()),
            Msg::Pong(b) => Got::Pong(b.clone()),
        }
    }

    fn data_len(&self) -> usize {
        match self {
            Msg::Text(s) => s.len(),
            Msg::Binary(b) => b.len(),
            _ => 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Sent {
    msg: Msg,
    /// Fragment boundaries (any byte, also inside a UTF-8 sequence; repeats = empty fragments).
    splits: Vec<Index>,
    /// Control frames sent between the fragments: (after which boundary, what).
    between: Vec<(Index, Msg)>,
}

fn control_msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        vec(any::<u8>(), 0..=125).prop_map(Msg::Ping),
        vec(any::<u8>(), 0..=125).prop_map(Msg::Pong),
    ]
}

fn sent() -> impl Strategy<Value = Sent> {
    let msg = prop_oneof![
        4 => vec(any::<char>(), 0..120).prop_map(|c| Msg::Text(c.into_iter().collect())),
        3 => vec(any::<u8>(), 0..600).prop_map(Msg::Binary),
        1 => control_msg(),
    ];
    (
        msg,
        vec(any::<Index>(), 0..6),
        vec((any::<Index>(), control_msg()), 0..3),
    )
        .prop_map(|(msg, splits, between)| Sent {
            msg,
            splits,
            between,
        })
}

/// Frames for one message with fresh masks; returns the items it must give, in order.
fn encode_sent(s: &Sent, key: &mut u64, out: &mut Vec<u8>) -> Vec<Got> {
    let mut next_key = || {
        *key ^= *key << 13;
        *key ^= *key >> 7;
        *key ^= *key << 17;
        (*key as u32).to_le_bytes()
    };
    let (op, data): (u8, &[u8]) = match &s.msg {
        Msg::Text(t) => (OP_TEXT, t.as_bytes()),
        Msg::Binary(b) => (OP_BINARY, b),
        Msg::Ping(b) => {
            out.extend_from_slice(&encode_masked(true, OP_PING, b, next_key()));
            return vec![s.msg.got()];
        }
        Msg::Pong(b) => {
            out.extend_from_slice(&encode_masked(true, OP_PONG, b, next_key()));
            return vec![s.msg.got()];
        }
    };
    let mut bounds: Vec<usize> = s.splits.iter().map(|i| i.index(data.len() + 1)).collect();
    bounds.sort_unstable();
    bounds.push(data.len());
    let n = bounds.len();
    // Controls go after fragment `k` for k in 0..n-1 (between fragments); with one fragment,
    // before the message.
    let mut controls: Vec<(usize, &Msg)> = s
        .between
        .iter()
        .map(|(i, m)| (if n > 1 { i.index(n - 1) } else { usize::MAX }, m))
        .collect();
    controls.sort_by_key(|c| c.0);
    let mut expected = Vec::new();
    let control_frame = |m: &Msg, key: [u8; 4]| match m {
        Msg::Ping(b) => encode_masked(true, OP_PING, b, key),
        Msg::Pong(b) => encode_masked(true, OP_PONG, b, key),
        _ => unreachable!(),
    };
    for &(k, m) in &controls {
        if k == usize::MAX {
            out.extend_from_slice(&control_frame(m, next_key()));
            expected.push(m.got());
        }
    }
    let mut prev = 0;
    for (f, &b) in bounds.iter().enumerate() {
        let fop = if f == 0 { op } else { OP_CONT };
        out.extend_from_slice(&encode_masked(f + 1 == n, fop, &data[prev..b], next_key()));
        prev = b;
        for &(k, m) in &controls {
            if k == f {
                out.extend_from_slice(&control_frame(m, next_key()));
                expected.push(m.got());
            }
        }
    }
    expected.push(s.msg.got());
    expected
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn valid_messages_fragmented_and_cut_decode_exactly(
        msgs in vec(sent(), 0..8),
        close in proptest::option::of((prop::sample::select(vec![1000u16, 1001, 1008, 3000, 4999]), vec(any::<char>(), 0..20))),
        cuts in vec(any::<Index>(), 0..12),
        seed in any::<u64>(),
        exact_limit in any::<bool>(),
    ) {
        let mut key = seed | 1;
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for m in &msgs {
            expected.extend(encode_sent(m, &mut key, &mut stream));
        }
        if let Some((code, reason)) = &close {
            let reason: String = reason.iter().collect();
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice(reason.as_bytes());
            p.truncate(125);
            let reason = String::from_utf8_lossy(&p[2..]).into_owned();
            if std::str::from_utf8(&p[2..]).is_ok() {
                stream.extend_from_slice(&encode_masked(true, OP_CLOSE, &p, [1, 2, 3, 4]));
                expected.push(Got::Close(Some((*code, reason))));
                // Anything after the close is ignored.
                stream.extend_from_slice(&encode_masked(true, OP_TEXT, b"after close", [5, 6, 7, 8]));
            }
        }
        let largest = msgs.iter().map(|m| m.msg.data_len()).max().unwrap_or(0);
        let setup = Setup {
            role: Role::Server,
            max_message: if exact_limit { largest } else { usize::MAX },
            frames: u32::MAX,
            stop_after: None,
        };
        let closed = matches!(expected.last(), Some(Got::Close(_)));
        for chunks in [vec![&stream[..]], cut(&stream, &cuts)] {
            let out = run(&chunks, setup);
            prop_assert_eq!(&out.items, &expected);
            prop_assert_eq!(out.err, None);
            prop_assert_eq!(out.done, closed);
            prop_assert!(!out.mid_message, "state left after complete messages");
            prop_assert_eq!(out.buffered, 0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (c) The incremental UTF-8 check against std.

fn utf8ish() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        text_bytes(30),
        vec((any::<Index>(), any::<u8>()), 0..3),
        any::<Option<Index>>(),
    )
        .prop_map(|(mut b, edits, trunc)| {
            if !b.is_empty() {
                for (i, v) in edits {
                    let at = i.index(b.len());
                    b[at] = v;
                }
            }
            if let Some(t) = trunc {
                let n = t.index(b.len() + 1);
                b.truncate(n);
            }
            b
        });
    // Bytes drawn from the interesting ranges: ASCII, continuations, every kind of lead byte.
    let edgy = vec(
        prop_oneof![
            Just(0x00u8),
            Just(0x7f),
            0x80u8..0xc0,
            Just(0xc0),
            Just(0xc1),
            0xc2u8..0xe0,
            Just(0xe0),
            Just(0xed),
            0xe1u8..0xf0,
            Just(0xf0),
            Just(0xf4),
            Just(0xf5),
            0xf8u8..=0xff
        ],
        0..12,
    );
    prop_oneof![2 => text_bytes(30), 3 => mutated, 2 => edgy, 1 => vec(any::<u8>(), 0..40)]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn utf8_state_agrees_with_std_at_any_cuts(bytes in utf8ish(), cuts in vec(any::<Index>(), 0..6)) {
        let pieces = cut(&bytes, &cuts);
        let std_ok = std::str::from_utf8(&bytes).is_ok();
        // The first prefix that cannot begin valid UTF-8.
        let fail_at = (1..=bytes.len()).find(|&k| std::str::from_utf8(&bytes[..k]).is_err_and(|e| e.error_len().is_some()));
        let mut st = Utf8State::default();
        let mut fed = 0;
        let mut failed_on = None;
        for (n, p) in pieces.iter().enumerate() {
            fed += p.len();
            if st.feed(p).is_err() {
                failed_on = Some((n, fed));
                break;
            }
        }
        match fail_at {
            Some(k) => {
                // Fails on the piece that holds byte k - 1: after it, not before.
                let (_, fed_then) = failed_on.expect("invalid bytes accepted");
                let start = fed_then - pieces[failed_on.unwrap().0].len();
                prop_assert!(start < k && k <= fed_then, "failed on bytes {}..{}, first bad byte {}", start, fed_then, k - 1);
            }
            None => {
                prop_assert_eq!(failed_on, None);
                prop_assert_eq!(st.finish().is_ok(), std_ok);
                // finish() resets: the state is reusable.
                prop_assert_eq!(st, Utf8State::default());
            }
        }
    }
}
