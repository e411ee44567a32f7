//! The decoder against the Autobahn|Testsuite case families (1 framing, 2 ping/pong, 3 reserved
//! bits, 4 opcodes, 5 fragmentation, 6 UTF-8, 7 close, 9 limits/performance, 10 auto-
//! fragmentation), without a socket: each case's client frames are built with
//! `frame::encode_masked`, fed to a server-side [`Decoder`] whole, octet-wise, in chops and cut
//! at every position, and the items and the close code are checked.

mod common;

use common::Got;
use ferrocast_codec::decoder::Limits;
use ferrocast_codec::frame::{
    self, encode_masked, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
};
use ferrocast_codec::{DecodeError, Decoder, Flow, Role};

// ---------------------------------------------------------------------------------------------
// Harness

/// The RFC 6455 §5.3 example key.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const MAX: usize = 16 << 20;

fn text(s: &str) -> Got {
    Got::Text(s.to_owned())
}

/// A server-side decoder and everything it handed out.
struct Conn {
    dec: Decoder,
    limits: Limits,
    frames: u32,
    items: Vec<Got>,
    err: Option<DecodeError>,
    /// Index of the `feed` call that returned the error.
    err_at: Option<usize>,
    feeds: usize,
}

impl Conn {
    fn new() -> Self {
        Conn::with(MAX, u32::MAX)
    }

    fn with(max_message: usize, frames: u32) -> Self {
        Conn {
            dec: Decoder::new(),
            limits: Limits {
                role: Role::Server,
                max_message,
            },
            frames,
            items: Vec::new(),
            err: None,
            err_at: None,
            feeds: 0,
        }
    }

    /// Feeds one read; returns the items it produced, or its error.
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Got>, DecodeError> {
        let mut buf = bytes.to_vec();
        let mut out = Vec::new();
        let r = self
            .dec
            .feed(&mut buf, &self.limits, &mut self.frames, |item| {
                out.push(Got::from(item));
                Flow::Continue
            });
        self.items.extend(out.iter().cloned());
        if let Err(e) = r {
            assert!(
                self.err.is_none(),
                "a second error after {:?}: {e:?}",
                self.err
            );
            assert!(self.dec.is_done(), "not done after an error");
            assert!(!self.dec.is_mid_message(), "state kept after an error");
            self.err = Some(e);
            self.err_at = Some(self.feeds);
        }
        self.feeds += 1;
        r.map(|()| out)
    }

    fn feed_all<'a>(mut self, chunks: impl IntoIterator<Item = &'a [u8]>) -> Self {
        for c in chunks {
            let _ = self.feed(c);
        }
        self
    }

    fn code(&self) -> Option<u16> {
        self.err.map(DecodeError::close_code)
    }
}

/// A masked client frame.
fn fr(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_masked(fin, opcode, payload, MASK)
}

fn txt(s: &str) -> Vec<u8> {
    fr(true, OP_TEXT, s.as_bytes())
}

fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    fr(true, OP_CLOSE, &p)
}

fn cat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

/// Splits `stream` into reads of `size` bytes.
fn chops(stream: &[u8], size: usize) -> Vec<&[u8]> {
    stream.chunks(size.max(1)).collect()
}

fn decode(chunks: &[&[u8]]) -> Conn {
    Conn::new().feed_all(chunks.iter().copied())
}

/// Decodes `stream` whole, octet-wise, in several chop sizes and (when short) cut in two at every
/// position, and checks that each way gives `items` and then the error with close code `code`
/// (`None`: no error). After the stream, a further text frame must decode if and only if the
/// decoder is neither done nor inside a message (nothing is decoded after a close or an error).
#[track_caller]
fn check(stream: &[u8], items: &[Got], code: Option<u16>) {
    let mut ways: Vec<(String, Vec<&[u8]>)> = vec![("whole".into(), vec![stream])];
    for size in [1usize, 2, 3, 5, 7, 64, 997] {
        if size < stream.len() && (size >= 3 || stream.len() <= 1 << 16) {
            ways.push((format!("chops of {size}"), chops(stream, size)));
        }
    }
    if stream.len() <= 2048 {
        for cut in 0..=stream.len() {
            ways.push((
                format!("cut at {cut}"),
                vec![&stream[..cut], &stream[cut..]],
            ));
        }
    }
    for (how, chunks) in ways {
        let mut c = decode(&chunks);
        assert_eq!(c.items, items, "{how}: items");
        assert_eq!(c.code(), code, "{how}: error {:?}", c.err);
        let closed = items.last().is_some_and(|i| matches!(i, Got::Close(_)));
        assert_eq!(c.dec.is_done(), code.is_some() || closed, "{how}: is_done");
        if c.dec.is_done() {
            assert_eq!(
                c.feed(&txt("after")),
                Ok(vec![]),
                "{how}: decoded after the end"
            );
        } else if !c.dec.is_mid_message() {
            assert_eq!(
                c.feed(&txt("after")),
                Ok(vec![text("after")]),
                "{how}: next message"
            );
        }
    }
}

/// A deterministic generator (xorshift64*) for payloads and cut points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `len` bytes of valid UTF-8 mixing 1-, 2-, 3- and 4-byte code points.
fn utf8_text(len: usize) -> String {
    const PIECES: [&str; 6] = ["Hello-", "µ@ß", "öäüàá", "κόσμε", "€", "𤭢"];
    let mut s = String::with_capacity(len + 8);
    let mut i = 0;
    while s.len() < len {
        let p = PIECES[i % PIECES.len()];
        i += 1;
        for ch in p.chars() {
            if s.len() + ch.len_utf8() > len {
                break;
            }
            s.push(ch);
        }
        if s.len() + 1 > len || (s.len() < len && len - s.len() < 4) {
            while s.len() < len {
                s.push('*');
            }
        }
    }
    assert_eq!(s.len(), len);
    s
}

fn binary_data(len: usize) -> Vec<u8> {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15 ^ len as u64);
    (0..len).map(|_| r.next() as u8).collect()
}

/// One message as fragments of `size` payload bytes (the last may be shorter; an empty message is
/// one empty frame).
fn fragmented(opcode: u8, payload: &[u8], size: usize) -> Vec<u8> {
    if payload.is_empty() {
        return fr(true, opcode, payload);
    }
    let n = payload.len().div_ceil(size);
    let mut out = Vec::with_capacity(payload.len() + n * 14);
    for (i, piece) in payload.chunks(size).enumerate() {
        let op = if i == 0 { opcode } else { OP_CONT };
        out.extend_from_slice(&fr(i + 1 == n, op, piece));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Family 1: framing, payload lengths and the 7-, 16- and 64-bit length forms.

#[test]
fn family1_payload_lengths_text_and_binary() {
    for len in [0usize, 125, 126, 127, 128, 65535, 65536] {
        let s = "*".repeat(len);
        let b: Vec<u8> = (0..len).map(|i| 0xfe ^ i as u8).collect();
        for (opcode, want) in [
            (OP_TEXT, Got::Text(s.clone())),
            (OP_BINARY, Got::Binary(b.clone())),
        ] {
            let payload = if opcode == OP_TEXT {
                s.as_bytes()
            } else {
                &b[..]
            };
            let f = fr(true, opcode, payload);
            let h = frame::parse_header(&f, true).unwrap().unwrap();
            let (len7, head) = match len {
                0..=125 => (len as u8, 6),
                126..=65535 => (126, 8),
                _ => (127, 14),
            };
            assert_eq!(f[1] & 0x7f, len7, "len {len}: length form");
            assert_eq!(h.header_len, head);
            assert_eq!(h.payload_len, len as u64);
            check(&f, std::slice::from_ref(&want), None);
        }
    }
}

#[test]
fn family1_1_8_text_65536_in_chops_of_997() {
    let s = "*".repeat(65536);
    let f = txt(&s);
    let c = decode(&chops(&f, 997));
    assert_eq!(c.items, vec![Got::Text(s)]);
    assert_eq!(c.err, None);
    assert!(!c.dec.is_mid_message());
}

#[test]
fn family1_length_forms_hand_built() {
    // The same 5-byte payload with its length in the 7-, 16- and 64-bit forms (the wider forms
    // are not minimal, which RFC 6455 asks senders to avoid but does not ask receivers to fail).
    let payload = b"Hello";
    let mut masked = payload.to_vec();
    ferrocast_codec::mask::apply(&mut masked, MASK, 0);
    let forms: [&[u8]; 3] = [&[0x85], &[0xfe, 0, 5], &[0xff, 0, 0, 0, 0, 0, 0, 0, 5]];
    for len in forms {
        let mut f = vec![0x81];
        f.extend_from_slice(len);
        f.extend_from_slice(&MASK);
        f.extend_from_slice(&masked);
        check(&f, &[text("Hello")], None);
    }
}

#[test]
fn family1_length_2_pow_63_fails_at_the_third_header_byte() {
    for op in [OP_TEXT, OP_BINARY, OP_CONT] {
        let f = [0x80 | op, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0];
        // Octet-wise: the third byte fails it, before the rest of the length.
        let mut c = Conn::new();
        assert_eq!(c.feed(&f[..1]), Ok(vec![]));
        assert_eq!(c.feed(&f[1..2]), Ok(vec![]));
        assert!(c.dec.is_mid_message(), "a cut header is held");
        assert_eq!(c.feed(&f[2..3]).map_err(DecodeError::close_code), Err(1002));
        assert!(c.dec.is_done());
        assert_eq!(c.feed(&f[3..]), Ok(vec![]));
        // The three bytes in one read.
        let c = decode(&[&f[..3]]);
        assert_eq!(c.code(), Some(1002));
        // Any length with the high bit set.
        let c = decode(&[&[0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]]);
        assert_eq!(c.code(), Some(1002));
    }
    // A valid message before it is delivered first.
    let mut s = txt("first");
    s.extend_from_slice(&[0x82, 0xff, 0x80]);
    check(&s, &[text("first")], Some(1002));
}

#[test]
fn family1_unmasked_client_frame_fails() {
    let mut f = txt("Hello");
    f[1] &= 0x7f; // mask bit off (the key bytes then read as payload)
    check(&f, &[], Some(1002));
    // Unmasked from its second byte on: no more needed.
    assert_eq!(decode(&[&[0x81, 0x05]]).code(), Some(1002));
    // Every opcode.
    for op in [OP_TEXT, OP_BINARY, OP_CONT, OP_PING, OP_PONG, OP_CLOSE] {
        assert_eq!(decode(&[&[0x80 | op, 0x00]]).code(), Some(1002), "op {op}");
    }
    // After a valid message.
    let s = cat(&[txt("ok"), vec![0x82, 0x00]]);
    check(&s, &[text("ok")], Some(1002));
}

#[test]
fn family1_client_role_rejects_masked_server_frames() {
    // A client decodes unmasked server frames and fails masked ones.
    let limits = Limits {
        role: Role::Client,
        max_message: MAX,
    };
    let mut stream = frame::text(b"hello").to_vec();
    stream.extend_from_slice(&frame::encode(OP_PING, b"p"));
    stream.extend_from_slice(&fr(true, OP_TEXT, b"masked"));
    let mut frames = u32::MAX;
    let mut items = Vec::new();
    let r = Decoder::new().feed(&mut stream, &limits, &mut frames, |i| {
        items.push(Got::from(i));
        Flow::Continue
    });
    assert_eq!(items, vec![text("hello"), Got::Ping(b"p".to_vec())]);
    assert_eq!(r.map_err(DecodeError::close_code), Err(1002));
}

// ---------------------------------------------------------------------------------------------
// Family 2: pings and pongs.

#[test]
fn family2_pings() {
    // 2.1 empty, 2.2 text payload, 2.3 binary payload, 2.4 125 bytes, 2.6 125 bytes octet-wise
    // (check() feeds every stream octet-wise too).
    let cases: [&[u8]; 5] = [
        b"",
        b"Hello, world!",
        &[0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff],
        &[0xfe; 125],
        &[b'*'; 125],
    ];
    for p in cases {
        check(&fr(true, OP_PING, p), &[Got::Ping(p.to_vec())], None);
    }
}

#[test]
fn family2_5_ping_of_126_bytes_fails() {
    let f = fr(true, OP_PING, &[0xfe; 126]);
    check(&f, &[], Some(1002));
    // Known from the second header byte, before the payload.
    let mut c = Conn::new();
    assert_eq!(c.feed(&f[..1]), Ok(vec![]));
    assert_eq!(c.feed(&f[1..2]).map_err(DecodeError::close_code), Err(1002));
    // Pongs and closes too, also with the 64-bit form.
    assert_eq!(decode(&[&fr(true, OP_PONG, &[0; 126])]).code(), Some(1002));
    assert_eq!(
        decode(&[&fr(true, OP_CLOSE, &[0x03, 0xe8].repeat(100))]).code(),
        Some(1002)
    );
    assert_eq!(
        decode(&[&fr(true, OP_PING, &[0; 70000])[..2]]).code(),
        Some(1002)
    );
}

#[test]
fn family2_unsolicited_pongs() {
    // 2.7 empty, 2.8 with payload, 2.9 pong then ping.
    check(&fr(true, OP_PONG, b""), &[Got::Pong(vec![])], None);
    check(
        &fr(true, OP_PONG, b"unsolicited pong payload"),
        &[Got::Pong(b"unsolicited pong payload".to_vec())],
        None,
    );
    let s = cat(&[
        fr(true, OP_PONG, b"unsolicited pong payload"),
        fr(true, OP_PING, b"ping payload"),
    ]);
    check(
        &s,
        &[
            Got::Pong(b"unsolicited pong payload".to_vec()),
            Got::Ping(b"ping payload".to_vec()),
        ],
        None,
    );
}

#[test]
fn family2_ten_pings_in_one_buffer() {
    // 2.10 in one read, 2.11 octet-wise: ten items, in order.
    let payloads: Vec<Vec<u8>> = (0..10)
        .map(|i| format!("payload-{i}").into_bytes())
        .collect();
    let s: Vec<u8> = payloads.iter().flat_map(|p| fr(true, OP_PING, p)).collect();
    let want: Vec<Got> = payloads.iter().cloned().map(Got::Ping).collect();
    check(&s, &want, None);
    let mut c = Conn::new();
    assert_eq!(c.feed(&s), Ok(want));
}

#[test]
fn family2_binary_ping_payload_is_unmasked_exactly() {
    let p: Vec<u8> = (0u8..125).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    for mask in [[0, 0, 0, 0], [0xff; 4], [1, 2, 3, 4], MASK] {
        let f = encode_masked(true, OP_PING, &p, mask);
        let c = decode(&chops(&f, 3));
        assert_eq!(c.items, vec![Got::Ping(p.clone())], "mask {mask:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Family 3: reserved bits.

#[test]
fn family3_reserved_bits_after_a_valid_message() {
    // 3.1–3.7: RSV 1..7 on text, binary, ping and close frames (and a continuation), each after a
    // valid message in the same stream and followed by a ping that must not be decoded.
    for rsv in 1u8..=7 {
        for (op, payload) in [
            (OP_TEXT, &b"Hello, world!"[..]),
            (OP_BINARY, &[0xff; 10][..]),
            (OP_PING, b""),
            (OP_CLOSE, b""),
            (OP_PONG, b"x"),
        ] {
            let mut bad = fr(true, op, payload);
            bad[0] |= rsv << 4;
            let s = cat(&[txt("Hello, world!"), bad.clone(), fr(true, OP_PING, b"")]);
            check(&s, &[text("Hello, world!")], Some(1002));
            // Known from the first byte.
            let mut c = Conn::new();
            assert_eq!(
                c.feed(&bad[..1]).map_err(DecodeError::close_code),
                Err(1002),
                "rsv {rsv} op {op}"
            );
        }
        // On a continuation frame inside a fragmented message.
        let mut cont = fr(true, OP_CONT, b"b");
        cont[0] |= rsv << 4;
        let s = cat(&[fr(true, OP_PING, b"p"), fr(false, OP_TEXT, b"a"), cont]);
        check(&s, &[Got::Ping(b"p".to_vec())], Some(1002));
    }
}

// ---------------------------------------------------------------------------------------------
// Family 4: reserved opcodes.

#[test]
fn family4_reserved_opcodes() {
    // 4.1.x (3–7) and 4.2.x (B–F): alone, with a payload, after a valid message followed by a
    // ping, and octet-wise (check() does all cuts).
    for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
        check(&fr(true, op, b""), &[], Some(1002));
        check(&fr(true, op, b"reserved opcode payload"), &[], Some(1002));
        let s = cat(&[
            txt("Hello, world!"),
            fr(true, op, b""),
            fr(true, OP_PING, b""),
        ]);
        check(&s, &[text("Hello, world!")], Some(1002));
        let s = cat(&[
            fr(true, OP_BINARY, b"bin"),
            fr(true, OP_PONG, b""),
            fr(false, op, b"xx"),
            txt("never"),
        ]);
        check(
            &s,
            &[Got::Binary(b"bin".to_vec()), Got::Pong(vec![])],
            Some(1002),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Family 5: fragmentation.

#[test]
fn family5_1_2_fragmented_ping_and_pong_fail() {
    for op in [OP_PING, OP_PONG, OP_CLOSE] {
        let s = cat(&[fr(false, op, b"fragment1"), fr(true, OP_CONT, b"fragment2")]);
        check(&s, &[], Some(1002));
        let s = cat(&[txt("before"), fr(false, op, b"")]);
        check(&s, &[text("before")], Some(1002));
    }
}

#[test]
fn family5_3_to_8_text_in_two_fragments() {
    // 5.3–5.5 text, 5.6–5.8 text with a ping between the fragments; one read, frame-wise, octet-wise.
    let s = cat(&[
        fr(false, OP_TEXT, b"fragment1"),
        fr(true, OP_CONT, b"fragment2"),
    ]);
    check(&s, &[text("fragment1fragment2")], None);
    let f1 = fr(false, OP_TEXT, b"fragment1");
    let f2 = fr(true, OP_CONT, b"fragment2");
    let c = decode(&[&f1, &f2]);
    assert_eq!(c.items, vec![text("fragment1fragment2")]);
    let s = cat(&[
        fr(false, OP_TEXT, b"fragment1"),
        fr(true, OP_PING, b"ping payload"),
        fr(true, OP_CONT, b"fragment2"),
    ]);
    check(
        &s,
        &[
            Got::Ping(b"ping payload".to_vec()),
            text("fragment1fragment2"),
        ],
        None,
    );
}

#[test]
fn family5_binary_in_fragments_with_a_pong_between() {
    let s = cat(&[
        fr(false, OP_BINARY, &[1, 2]),
        fr(true, OP_PONG, b"pong"),
        fr(false, OP_CONT, &[3]),
        fr(true, OP_PING, b""),
        fr(true, OP_CONT, &[4, 5, 6]),
    ]);
    check(
        &s,
        &[
            Got::Pong(b"pong".to_vec()),
            Got::Ping(vec![]),
            Got::Binary(vec![1, 2, 3, 4, 5, 6]),
        ],
        None,
    );
}

#[test]
fn family5_one_byte_fragments() {
    let msg = "Hello, fragmented world! κόσμε 𤭢";
    for (op, want) in [
        (OP_TEXT, text(msg)),
        (OP_BINARY, Got::Binary(msg.as_bytes().to_vec())),
    ] {
        let s = fragmented(op, msg.as_bytes(), 1);
        check(&s, &[want], None);
    }
}

#[test]
fn family5_9_to_14_continuation_without_a_message() {
    // 5.9–5.11: continuation with FIN, then a text message; 5.12–5.14 the same without FIN.
    for fin in [true, false] {
        let s = cat(&[
            fr(fin, OP_CONT, b"non-continuation payload"),
            txt("Hello, world!"),
        ]);
        check(&s, &[], Some(1002));
        // Also right after a complete message and after a complete fragmented one.
        let s = cat(&[
            txt("a"),
            fr(false, OP_TEXT, b"b"),
            fr(true, OP_CONT, b"c"),
            fr(fin, OP_CONT, b""),
        ]);
        check(&s, &[text("a"), text("bc")], Some(1002));
    }
}

#[test]
fn family5_15_to_17_stray_continuations() {
    // 5.15: two fragments, a stray non-final continuation, then a text message.
    let s = cat(&[
        fr(false, OP_TEXT, b"fragment1"),
        fr(true, OP_CONT, b"fragment2"),
        fr(false, OP_CONT, b"fragment3"),
        txt("fragment4"),
    ]);
    check(&s, &[text("fragment1fragment2")], Some(1002));
    // 5.16 / 5.17: a stray continuation first.
    for fin in [false, true] {
        let s = cat(&[
            fr(fin, OP_CONT, b"fragment1"),
            fr(false, OP_TEXT, b"fragment2"),
            fr(true, OP_CONT, b"fragment3"),
        ]);
        check(&s, &[], Some(1002));
    }
}

#[test]
fn family5_18_new_message_inside_a_fragmented_message() {
    for (first, second) in [
        (OP_TEXT, OP_TEXT),
        (OP_TEXT, OP_BINARY),
        (OP_BINARY, OP_TEXT),
        (OP_BINARY, OP_BINARY),
    ] {
        for fin in [true, false] {
            let s = cat(&[
                fr(false, first, b"fragment1"),
                fr(fin, second, b"fragment2"),
            ]);
            check(&s, &[], Some(1002));
        }
    }
    // After pings in between, the pings are delivered and then it fails.
    let s = cat(&[
        fr(false, OP_TEXT, b"f1"),
        fr(true, OP_PING, b"1"),
        fr(false, OP_CONT, b"f2"),
        fr(true, OP_PING, b"2"),
        txt("x"),
    ]);
    check(
        &s,
        &[Got::Ping(b"1".to_vec()), Got::Ping(b"2".to_vec())],
        Some(1002),
    );
}

#[test]
fn family5_19_20_pings_between_fragments_across_feeds() {
    // 5.19: fragments 1, 2, ping, (wait), fragments 3, 4, ping, fragment 5; each frame its own read.
    let frames = [
        fr(false, OP_TEXT, b"fragment1"),
        fr(false, OP_CONT, b"fragment2"),
        fr(true, OP_PING, b"pongme 1!"),
        fr(false, OP_CONT, b"fragment3"),
        fr(false, OP_CONT, b"fragment4"),
        fr(true, OP_PING, b"pongme 2!"),
        fr(true, OP_CONT, b"fragment5"),
    ];
    let mut c = Conn::new();
    let mut per_feed = Vec::new();
    for f in &frames {
        per_feed.push(c.feed(f).unwrap());
        if f != frames.last().unwrap() {
            assert!(c.dec.is_mid_message(), "between fragments");
        }
    }
    assert_eq!(
        per_feed[2],
        vec![Got::Ping(b"pongme 1!".to_vec())],
        "ping delivered at once"
    );
    assert_eq!(per_feed[5], vec![Got::Ping(b"pongme 2!".to_vec())]);
    assert_eq!(
        per_feed[6],
        vec![text("fragment1fragment2fragment3fragment4fragment5")]
    );
    assert!(!c.dec.is_mid_message());
    // 5.20: the same stream cut every way.
    check(
        &cat(&frames),
        &[
            Got::Ping(b"pongme 1!".to_vec()),
            Got::Ping(b"pongme 2!".to_vec()),
            text("fragment1fragment2fragment3fragment4fragment5"),
        ],
        None,
    );
}

#[test]
fn family5_fragments_across_several_feeds() {
    let mut c = Conn::new();
    assert_eq!(c.feed(&fr(false, OP_TEXT, b"He")), Ok(vec![]));
    assert!(c.dec.is_mid_message());
    assert_eq!(c.dec.buffered(), 2);
    let f2 = fr(false, OP_CONT, b"llo, ");
    assert_eq!(c.feed(&f2[..4]), Ok(vec![]));
    assert_eq!(c.feed(&f2[4..]), Ok(vec![]));
    assert_eq!(c.dec.buffered(), 7);
    let f3 = fr(true, OP_CONT, b"world");
    assert_eq!(c.feed(&f3[..f3.len() - 1]), Ok(vec![]));
    assert_eq!(c.feed(&f3[f3.len() - 1..]), Ok(vec![text("Hello, world")]));
    assert!(!c.dec.is_mid_message());
    assert_eq!(c.dec.buffered(), 0);
}

#[test]
fn family5_empty_fragments() {
    // 6.1.1–6.1.3 and their binary twins.
    check(&txt(""), &[text("")], None);
    check(&fr(true, OP_BINARY, b""), &[Got::Binary(vec![])], None);
    let s = cat(&[
        fr(false, OP_TEXT, b""),
        fr(false, OP_CONT, b""),
        fr(true, OP_CONT, b""),
    ]);
    check(&s, &[text("")], None);
    let s = cat(&[
        fr(false, OP_TEXT, b""),
        fr(false, OP_CONT, b"middle frame payload"),
        fr(true, OP_CONT, b""),
    ]);
    check(&s, &[text("middle frame payload")], None);
    let s = cat(&[
        fr(false, OP_BINARY, b""),
        fr(true, OP_PING, b""),
        fr(true, OP_CONT, b""),
    ]);
    check(&s, &[Got::Ping(vec![]), Got::Binary(vec![])], None);
    // Many messages of empty frames in one read.
    let s: Vec<u8> = (0..20)
        .flat_map(|_| cat(&[fr(false, OP_TEXT, b""), fr(true, OP_CONT, b"")]))
        .collect();
    check(&s, &vec![text(""); 20], None);
}

// ---------------------------------------------------------------------------------------------
// Family 6: UTF-8 handling.

/// Autobahn's UTF-8 test sequences (case6_x_x.py, after Markus Kuhn's UTF-8-test.txt):
/// `(valid, bytes)`.
fn autobahn_utf8_sequences() -> Vec<(bool, Vec<u8>)> {
    let mut v: Vec<(bool, Vec<u8>)> = Vec::new();
    let vss: &[u8] = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";
    for s in [
        &b"hello\x24world"[..],
        b"hello\xC2\xA2world",
        b"hello\xE2\x82\xACworld",
        b"hello\xF0\xA4\xAD\xA2world",
        vss,
    ] {
        v.push((true, s.to_vec()));
    }
    // All prefixes of vss (valid exactly where a code point ends).
    for i in 1..=vss.len() {
        v.push(([2, 5, 7, 9, 11].contains(&i), vss[..i].to_vec()));
    }
    let mut add = |ok: bool, list: &[&[u8]]| {
        for s in list {
            v.push((ok, s.to_vec()));
        }
    };
    // 2.1, 2.2, 2.3 boundaries.
    add(
        true,
        &[b"\x00", b"\xc2\x80", b"\xe0\xa0\x80", b"\xf0\x90\x80\x80"],
    );
    add(
        false,
        &[b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80"],
    );
    add(
        true,
        &[b"\x7f", b"\xdf\xbf", b"\xef\xbf\xbf", b"\xf4\x8f\xbf\xbf"],
    );
    add(
        false,
        &[
            b"\xf7\xbf\xbf\xbf",
            b"\xfb\xbf\xbf\xbf\xbf",
            b"\xfd\xbf\xbf\xbf\xbf\xbf",
        ],
    );
    add(
        true,
        &[
            b"\xed\x9f\xbf",
            b"\xee\x80\x80",
            b"\xef\xbf\xbd",
            b"\xf4\x8f\xbf\xbf",
        ],
    );
    add(false, &[b"\xf4\x90\x80\x80"]);
    // 3.1 unexpected continuation bytes.
    add(
        false,
        &[
            b"\x80",
            b"\xbf",
            b"\x80\xbf",
            b"\x80\xbf\x80",
            b"\x80\xbf\x80\xbf",
            b"\x80\xbf\x80\xbf\x80",
            b"\x80\xbf\x80\xbf\x80\xbf",
        ],
    );
    v.push((false, (0x80u8..0xbf).collect()));
    // 3.2 lonely start characters, each followed by a space.
    for (lo, hi) in [
        (0xc0u8, 0xdfu8),
        (0xe0, 0xef),
        (0xf0, 0xf7),
        (0xf8, 0xfb),
        (0xfc, 0xfd),
    ] {
        v.push((false, (lo..hi).flat_map(|b| [b, 0x20]).collect()));
    }
    // 3.3 last continuation byte missing, 3.4 all of them concatenated.
    let k: [&[u8]; 10] = [
        b"\xc0",
        b"\xe0\x80",
        b"\xf0\x80\x80",
        b"\xf8\x80\x80\x80",
        b"\xfc\x80\x80\x80\x80",
        b"\xdf",
        b"\xef\xbf",
        b"\xf7\xbf\xbf",
        b"\xfb\xbf\xbf\xbf",
        b"\xfd\xbf\xbf\xbf\xbf",
    ];
    for s in k {
        v.push((false, s.to_vec()));
    }
    v.push((false, k.concat()));
    let mut add = |ok: bool, list: &[&[u8]]| {
        for s in list {
            v.push((ok, s.to_vec()));
        }
    };
    // 3.5 impossible bytes.
    add(false, &[b"\xfe", b"\xff", b"\xfe\xfe\xff\xff"]);
    // 4.1–4.3 overlongs.
    add(
        false,
        &[
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf0\x80\x80\xaf",
            b"\xf8\x80\x80\x80\xaf",
            b"\xfc\x80\x80\x80\x80\xaf",
        ],
    );
    add(
        false,
        &[
            b"\xc1\xbf",
            b"\xe0\x9f\xbf",
            b"\xf0\x8f\xbf\xbf",
            b"\xf8\x87\xbf\xbf\xbf",
            b"\xfc\x83\xbf\xbf\xbf\xbf",
        ],
    );
    add(
        false,
        &[
            b"\xc0\x80",
            b"\xe0\x80\x80",
            b"\xf0\x80\x80\x80",
            b"\xf8\x80\x80\x80\x80",
            b"\xfc\x80\x80\x80\x80\x80",
        ],
    );
    // 5.1 single and 5.2 paired UTF-16 surrogates.
    add(
        false,
        &[
            b"\xed\xa0\x80",
            b"\xed\xad\xbf",
            b"\xed\xae\x80",
            b"\xed\xaf\xbf",
            b"\xed\xb0\x80",
            b"\xed\xbe\x80",
            b"\xed\xbf\xbf",
        ],
    );
    add(
        false,
        &[
            b"\xed\xa0\x80\xed\xb0\x80",
            b"\xed\xa0\x80\xed\xbf\xbf",
            b"\xed\xad\xbf\xed\xb0\x80",
            b"\xed\xad\xbf\xed\xbf\xbf",
            b"\xed\xae\x80\xed\xb0\x80",
            b"\xed\xae\x80\xed\xbf\xbf",
            b"\xed\xaf\xbf\xed\xb0\x80",
            b"\xed\xaf\xbf\xed\xbf\xbf",
        ],
    );
    // 5.3 non-characters (valid UTF-8).
    add(true, &[b"\xef\xbf\xbe", b"\xef\xbf\xbf"]);
    for z1 in [0xf0u8, 0xf1, 0xf2, 0xf3, 0xf4] {
        for z2 in [0x8fu8, 0x9f, 0xaf, 0xbf] {
            if z1 == 0xf4 && z2 != 0x8f {
                continue;
            }
            for z3 in [0xbeu8, 0xbf] {
                let zz = vec![z1, z2, 0xbf, z3];
                if z1 == 0xf0 && z2 == 0x8f {
                    continue; // overlong
                }
                v.push((true, zz));
            }
        }
    }
    // Specials.
    for last in 0xb9u8..=0xbf {
        v.push((true, vec![0xef, 0xbf, last]));
    }
    v
}

/// The length of the shortest prefix of `s` that cannot begin valid UTF-8 (`None`: every prefix
/// can; `s` is then valid or merely truncated).
fn fail_point(s: &[u8]) -> Option<usize> {
    (1..=s.len()).find(|&k| std::str::from_utf8(&s[..k]).is_err_and(|e| e.error_len().is_some()))
}

#[test]
fn family6_autobahn_sequences_agree_with_std() {
    let seqs = autobahn_utf8_sequences();
    assert!(seqs.len() > 130, "{} sequences", seqs.len());
    for (ok, s) in &seqs {
        assert_eq!(std::str::from_utf8(s).is_ok(), *ok, "table entry {s:02x?}");
    }
}

#[test]
fn family6_autobahn_sequences_whole_fragmented_and_chopped() {
    // 6.3.x–6.22.x: each sequence as one frame (whole and cut every way) and as 1-byte
    // fragments (6.2.3-style), with a message before it; invalid ones fail with 1007.
    for (ok, s) in autobahn_utf8_sequences() {
        let want_text = ok.then(|| text(std::str::from_utf8(&s).unwrap()));
        let mut items = vec![text("before")];
        items.extend(want_text.clone());
        let code = (!ok).then_some(1007);
        let stream = cat(&[txt("before"), fr(true, OP_TEXT, &s)]);
        check(&stream, &items, code);
        let stream = cat(&[txt("before"), fragmented(OP_TEXT, &s, 1)]);
        check(&stream, &items, code);
    }
}

#[test]
fn family6_fail_fast_on_the_read_with_the_bad_byte() {
    // For every invalid sequence, fed octet-wise inside one frame: no error before the byte that
    // makes it invalid arrives, the error on exactly that read. Truncated sequences fail at the
    // end of the message.
    for (ok, s) in autobahn_utf8_sequences() {
        if ok {
            continue;
        }
        let payload = cat(&[
            b"\xce\xba\xe1\xbd\xb9".to_vec(),
            s.clone(),
            b"edited".to_vec(),
        ]);
        let f = fr(true, OP_TEXT, &payload);
        let head = f.len() - payload.len();
        let mut c = Conn::new();
        c.feed(&f[..head]).unwrap();
        for &b in &f[head..] {
            let _ = c.feed(&[b]);
        }
        let want = match fail_point(&payload) {
            Some(k) => k, // feed index: header is 0, payload byte i is i + 1
            None => payload.len(),
        };
        assert_eq!((c.err_at, c.code()), (Some(want), Some(1007)), "{s:02x?}");
        // As fragments: the fragment holding the bad byte fails on its own read, before the
        // final fragment.
        if let Some(k) = fail_point(&payload) {
            let mut c = Conn::new();
            assert_eq!(c.feed(&fr(false, OP_TEXT, &payload[..k - 1])), Ok(vec![]));
            let r = c.feed(&fr(false, OP_CONT, &payload[k - 1..k]));
            assert_eq!(r.map_err(DecodeError::close_code), Err(1007), "{s:02x?}");
        }
    }
}

#[test]
fn family6_4_fail_fast_cases() {
    // 6.4.1/6.4.2: three fragments, the second makes it invalid (U+110000, and a surrogate).
    for part2 in [&b"\xf4\x90\x80\x80"[..], b"\xed\xa0\x80"] {
        let part1 = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";
        let mut c = Conn::new();
        assert_eq!(c.feed(&fr(false, OP_TEXT, part1)), Ok(vec![]));
        let r = c.feed(&fr(false, OP_CONT, part2));
        assert_eq!(r.map_err(DecodeError::close_code), Err(1007));
        assert_eq!(c.feed(&fr(true, OP_CONT, b"edited")), Ok(vec![]));
        // 6.4.3/6.4.4: one frame in three chops: bytes 0..12, byte 12, the rest.
        let payload = cat(&[part1.to_vec(), part2.to_vec(), b"edited".to_vec()]);
        let f = fr(true, OP_TEXT, &payload);
        let head = f.len() - payload.len();
        let mut c = Conn::new();
        assert_eq!(c.feed(&f[..head + 12]), Ok(vec![]));
        assert_eq!(
            c.feed(&f[head + 12..head + 13])
                .map_err(DecodeError::close_code),
            Err(1007)
        );
        assert_eq!(c.feed(&f[head + 13..]), Ok(vec![]));
        // The bad byte in the middle of the first of two reads.
        let mut c = Conn::new();
        assert_eq!(
            c.feed(&f[..head + 14]).map_err(DecodeError::close_code),
            Err(1007)
        );
    }
    // A first fragment with an invalid byte fails on its own read.
    let mut c = Conn::new();
    assert_eq!(
        c.feed(&fr(false, OP_TEXT, b"ok\xffmore"))
            .map_err(DecodeError::close_code),
        Err(1007)
    );
    assert!(c.dec.is_done());
}

#[test]
fn family6_invalid_examples() {
    let cases: [&[u8]; 8] = [
        b"\xed\xa0\x80",     // surrogate
        b"\xc0\xaf",         // overlong
        b"\xe0\x80\xaf",     // overlong
        b"\xf4\x90\x80\x80", // > U+10FFFF
        b"\x80",             // lone continuation
        b"abc\xbfdef",       // lone continuation inside
        b"\xce\xba\xe1",     // truncated at message end
        b"\xce\xba\xe1\xbd", // truncated at message end
    ];
    for s in cases {
        check(&fr(true, OP_TEXT, s), &[], Some(1007));
        for cut in 0..=s.len() {
            let st = cat(&[fr(false, OP_TEXT, &s[..cut]), fr(true, OP_CONT, &s[cut..])]);
            check(&st, &[], Some(1007));
        }
    }
    // Binary messages are not checked.
    check(
        &fr(true, OP_BINARY, b"\xed\xa0\x80"),
        &[Got::Binary(b"\xed\xa0\x80".to_vec())],
        None,
    );
}

#[test]
fn family6_valid_text_split_at_every_byte() {
    let samples = [
        "Hello-µ@ßöäüàá-UTF-8!!",
        "κόσμε",
        "\u{10FFFF}\u{FFFF}\u{800}\u{80}\u{7f}",
        "𤭢𤭢€€ßß",
        "\u{feff}\u{fffd}\u{1F600}",
    ];
    for s in samples {
        let b = s.as_bytes();
        // One frame cut in two reads at every byte (check() does the cuts).
        check(&txt(s), &[text(s)], None);
        for cut in 0..=b.len() {
            // Two fragments split at every byte, each stream cut every way.
            let st = cat(&[fr(false, OP_TEXT, &b[..cut]), fr(true, OP_CONT, &b[cut..])]);
            check(&st, &[text(s)], None);
            // Three fragments.
            for cut2 in cut..=b.len() {
                let st = cat(&[
                    fr(false, OP_TEXT, &b[..cut]),
                    fr(false, OP_CONT, &b[cut..cut2]),
                    fr(true, OP_CONT, &b[cut2..]),
                ]);
                let c = decode(&[&st]);
                assert_eq!((c.items, c.err), (vec![text(s)], None), "{s} {cut}/{cut2}");
            }
        }
        // 1-byte fragments (6.2.3/6.2.4).
        check(&fragmented(OP_TEXT, b, 1), &[text(s)], None);
    }
}

// ---------------------------------------------------------------------------------------------
// Family 7: close handling.

#[test]
fn family7_1_nothing_after_a_close() {
    let close = close_frame(1000, b"");
    let ok = || Got::Close(Some((1000, String::new())));
    // 7.1.1 message then close.
    check(
        &cat(&[txt("Hello World!"), close.clone()]),
        &[text("Hello World!"), ok()],
        None,
    );
    // 7.1.2 close, close. 7.1.3 close, ping. 7.1.4 close, text.
    check(
        &cat(&[close.clone(), close_frame(1001, b"")]),
        &[ok()],
        None,
    );
    check(
        &cat(&[close.clone(), fr(true, OP_PING, b"")]),
        &[ok()],
        None,
    );
    check(&cat(&[close.clone(), txt("Hello World!")]), &[ok()], None);
    // 7.1.5 fragment, close, last fragment: the close ends it.
    let s = cat(&[
        fr(false, OP_TEXT, b"fragment1"),
        close.clone(),
        fr(true, OP_CONT, b"fragment2"),
    ]);
    check(&s, &[ok()], None);
    // 7.1.6 a 256 KiB message, a text, close, then a ping.
    let big = utf8_text(256 << 10);
    let s = cat(&[
        txt(&big),
        txt("Hello World!"),
        close.clone(),
        fr(true, OP_PING, b""),
    ]);
    check(&s, &[text(&big), text("Hello World!"), ok()], None);
    // Garbage after a close is not even looked at.
    let mut s = close.clone();
    s.extend_from_slice(&[0xff, 0xff, 0x00, 0x01, 0x02]);
    check(&s, &[ok()], None);
    // Nor is anything fed later.
    let mut c = Conn::new();
    assert_eq!(c.feed(&close), Ok(vec![ok()]));
    assert!(c.dec.is_done() && !c.dec.is_mid_message());
    assert_eq!(c.feed(&txt("later")), Ok(vec![]));
    assert_eq!(c.feed(&[0xff; 20]), Ok(vec![]));
}

#[test]
fn family7_3_close_payloads() {
    // 7.3.1 empty, 7.3.2 one byte, 7.3.3 code only, 7.3.4 code and reason, 7.3.5 123-byte reason,
    // 7.3.6 124-byte reason (126 in all).
    check(&fr(true, OP_CLOSE, b""), &[Got::Close(None)], None);
    check(&fr(true, OP_CLOSE, b"\x03"), &[], Some(1002));
    check(
        &close_frame(1000, b""),
        &[Got::Close(Some((1000, String::new())))],
        None,
    );
    check(
        &close_frame(1000, b"Hello World!"),
        &[Got::Close(Some((1000, "Hello World!".into())))],
        None,
    );
    let r123 = "*".repeat(123);
    check(
        &close_frame(1000, r123.as_bytes()),
        &[Got::Close(Some((1000, r123.clone())))],
        None,
    );
    check(
        &close_frame(1000, "*".repeat(124).as_bytes()),
        &[],
        Some(1002),
    );
    // A multi-byte reason, and one cut across reads.
    let r = "κόσμε 𤭢 bye";
    check(
        &close_frame(4000, r.as_bytes()),
        &[Got::Close(Some((4000, r.into())))],
        None,
    );
    // frame::close builds what the decoder accepts.
    check(
        &frame_close_masked(3000, "shutdown"),
        &[Got::Close(Some((3000, "shutdown".into())))],
        None,
    );
}

/// `frame::close` (a server frame) re-encoded as a client frame.
fn frame_close_masked(code: u16, reason: &str) -> Vec<u8> {
    let server = frame::close(code, reason);
    let h = frame::parse_header(&server, false).unwrap().unwrap();
    fr(true, OP_CLOSE, &server[h.header_len..])
}

#[test]
fn family7_5_invalid_utf8_close_reason() {
    let reason =
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64";
    check(&close_frame(1000, reason), &[], Some(1007));
    check(&close_frame(1000, b"\xc0\xaf"), &[], Some(1007));
    check(&close_frame(1000, b"\xce"), &[], Some(1007));
    // After a message, the message first.
    check(
        &cat(&[txt("x"), close_frame(1000, b"\xff")]),
        &[text("x")],
        Some(1007),
    );
}

#[test]
fn family7_7_and_7_9_close_codes() {
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
        4000, 4999,
    ] {
        check(
            &close_frame(code, b""),
            &[Got::Close(Some((code, String::new())))],
            None,
        );
        check(
            &close_frame(code, b"reason"),
            &[Got::Close(Some((code, "reason".into())))],
            None,
        );
    }
    // 7.9.x and 7.13.x: codes that may not be sent.
    for code in [
        0u16, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        check(&close_frame(code, b""), &[], Some(1002));
        check(
            &close_frame(
                code,
                b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
            ),
            &[],
            Some(1002),
        );
    }
}

#[test]
fn family7_close_between_fragments_and_flow_stop() {
    // A close interleaved in a fragmented message is delivered; the message is dropped.
    let s = cat(&[
        fr(false, OP_BINARY, &[1; 10]),
        fr(true, OP_PING, b"p"),
        close_frame(1001, b"going"),
        fr(true, OP_CONT, &[2]),
    ]);
    check(
        &s,
        &[
            Got::Ping(b"p".to_vec()),
            Got::Close(Some((1001, "going".into()))),
        ],
        None,
    );
    // Flow::Stop from the receiver ends decoding at once.
    let mut stream = cat(&[txt("one"), txt("two"), txt("three")]);
    let mut dec = Decoder::new();
    let limits = Limits {
        role: Role::Server,
        max_message: MAX,
    };
    let mut frames = u32::MAX;
    let mut seen = Vec::new();
    let r = dec.feed(&mut stream, &limits, &mut frames, |i| {
        seen.push(Got::from(i));
        if seen.len() == 2 {
            Flow::Stop
        } else {
            Flow::Continue
        }
    });
    assert_eq!(r, Ok(()));
    assert_eq!(seen, vec![text("one"), text("two")]);
    assert!(dec.is_done());
    let mut more = txt("four");
    assert_eq!(
        dec.feed(&mut more, &limits, &mut frames, |_| panic!(
            "decoded after Stop"
        )),
        Ok(())
    );
}

// ---------------------------------------------------------------------------------------------
// Family 9: large messages, many fragments, many reads; the message size limit.

fn check_large(opcode: u8, payload: &[u8], stream: &[u8], reads: usize) {
    let want = if opcode == OP_TEXT {
        Got::Text(
            std::str::from_utf8(payload)
                .expect("test payloads are UTF-8")
                .to_owned(),
        )
    } else {
        Got::Binary(payload.to_vec())
    };
    let size = stream.len().div_ceil(reads.max(1)).max(1);
    let c = decode(&chops(stream, size));
    assert_eq!(c.err, None);
    assert_eq!(c.items.len(), 1);
    assert!(c.items[0] == want, "{:?} != {:?}", c.items[0], want);
    assert!(!c.dec.is_mid_message());
    assert_eq!(c.dec.buffered(), 0);
}

#[test]
fn family9_1_2_one_frame_1mib_and_16mib() {
    for len in [64 << 10, 1 << 20, 16 << 20] {
        let t = utf8_text(len);
        let b = binary_data(len);
        for (op, p) in [(OP_TEXT, t.as_bytes()), (OP_BINARY, &b[..])] {
            let f = fr(true, op, p);
            check_large(op, p, &f, 1);
            check_large(op, p, &f, 7);
        }
    }
}

#[test]
fn family9_3_4_fragmented_1mib() {
    let t = utf8_text(1 << 20);
    let b = binary_data(1 << 20);
    for size in [
        64usize,
        256,
        1 << 10,
        4 << 10,
        16 << 10,
        64 << 10,
        256 << 10,
        1 << 20,
    ] {
        for (op, p) in [(OP_TEXT, t.as_bytes()), (OP_BINARY, &b[..])] {
            let s = fragmented(op, p, size);
            check_large(op, p, &s, 1);
            check_large(op, p, &s, 13);
        }
    }
}

#[test]
fn family9_3_4_fragmented_16mib() {
    let t = utf8_text(16 << 20);
    let b = binary_data(16 << 20);
    for size in [64 << 10, 1 << 20, 4 << 20] {
        for (op, p) in [(OP_TEXT, t.as_bytes()), (OP_BINARY, &b[..])] {
            let s = fragmented(op, p, size);
            check_large(op, p, &s, 1);
        }
    }
    // 9.3.1-style: 4 MiB in 64-byte fragments, in 64 KiB reads.
    let t4 = utf8_text(4 << 20);
    let p = t4.as_bytes();
    let s = fragmented(OP_TEXT, p, 64);
    check_large(OP_TEXT, p, &s, s.len() / (64 << 10));
}

#[test]
fn family9_5_6_1mib_in_small_chops() {
    // 9.5.x/9.6.x: one frame sent in chops of 64..4096 octets.
    let t = utf8_text(1 << 20);
    let b = binary_data(1 << 20);
    for chop in [64usize, 128, 256, 512, 1024, 2048, 4096] {
        for (op, p) in [(OP_TEXT, t.as_bytes()), (OP_BINARY, &b[..])] {
            let f = fr(true, op, p);
            let c = decode(&chops(&f, chop));
            assert_eq!(c.err, None);
            assert_eq!(c.items.len(), 1, "chop {chop}");
            match &c.items[0] {
                Got::Text(s) => assert!(s.as_bytes() == p),
                Got::Binary(x) => assert!(x[..] == p[..]),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn family9_split_at_every_byte_300() {
    let t = utf8_text(300);
    let b = binary_data(300);
    for (op, p, want) in [
        (OP_TEXT, t.as_bytes(), text(&t)),
        (OP_BINARY, &b[..], Got::Binary(b.clone())),
    ] {
        let f = fr(true, op, p);
        assert_eq!(f.len(), 308);
        for cut in 0..=f.len() {
            let mut c = Conn::new();
            let first = c.feed(&f[..cut]).unwrap();
            assert_eq!(
                c.dec.is_mid_message(),
                cut > 0 && cut < f.len(),
                "cut {cut}"
            );
            let second = c.feed(&f[cut..]).unwrap();
            let all: Vec<Got> = first.into_iter().chain(second).collect();
            assert_eq!(all, vec![want.clone()], "cut {cut}");
            assert!(!c.dec.is_mid_message());
        }
    }
}

#[test]
fn family9_random_cuts_1mib() {
    let t = utf8_text(1 << 20);
    let b = binary_data(1 << 20);
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for (op, p) in [(OP_TEXT, t.as_bytes()), (OP_BINARY, &b[..])] {
        for frag in [None, Some(1000usize), Some(65536)] {
            let s = match frag {
                None => fr(true, op, p),
                Some(n) => fragmented(op, p, n),
            };
            for _ in 0..4 {
                let mut cuts: Vec<usize> = (0..rng.below(200) + 1)
                    .map(|_| rng.below(s.len() + 1))
                    .collect();
                // Some cuts right at the start of the stream and inside the first header.
                cuts.extend([0, 1, 2, rng.below(14)]);
                cuts.sort_unstable();
                let mut chunks = Vec::new();
                let mut at = 0;
                for c in cuts {
                    chunks.push(&s[at..c]);
                    at = c;
                }
                chunks.push(&s[at..]);
                let c = decode(&chunks);
                assert_eq!(c.err, None);
                assert_eq!(c.items.len(), 1);
                match &c.items[0] {
                    Got::Text(x) => assert!(x.as_bytes() == p),
                    Got::Binary(x) => assert!(x[..] == p[..]),
                    other => panic!("{other:?}"),
                }
            }
        }
    }
}

#[test]
fn family9_too_big_from_the_header_alone() {
    let max = 1000;
    for op in [OP_TEXT, OP_BINARY] {
        // Exactly the limit is fine, one more fails.
        let c = Conn::with(max, u32::MAX).feed_all([&fr(true, op, &vec![b'a'; max])[..]]);
        assert_eq!((c.items.len(), c.err), (1, None));
        let f = fr(true, op, &vec![b'a'; max + 1]);
        let mut c = Conn::with(max, u32::MAX);
        // The header only (8 bytes: 16-bit length and the key): TooBig before the payload.
        assert_eq!(c.feed(&f[..8]).map_err(DecodeError::close_code), Err(1009));
        assert!(c.dec.is_done());
        // A 64-bit length far past the limit, with a valid message before it.
        let mut s = txt("fine");
        s.extend_from_slice(&[
            0x80 | op,
            0xff,
            0x00,
            0x00,
            0x01,
            0x00,
            0x00,
            0x00,
            0x00,
            0x00,
        ]);
        s.extend_from_slice(&MASK);
        let c = Conn::with(max, u32::MAX).feed_all(chops(&s, 1));
        assert_eq!(c.items, vec![text("fine")]);
        assert_eq!((c.code(), c.err_at), (Some(1009), Some(s.len() - 1)));
    }
    // The largest 64-bit length allowed (2^63 - 1) against the default limit.
    let mut s = vec![0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    s.extend_from_slice(&MASK);
    assert_eq!(decode(&[&s]).code(), Some(1009));
    // max_message 0: only empty messages.
    let c = Conn::with(0, u32::MAX).feed_all([&cat(&[
        txt(""),
        fr(true, OP_PING, b"ping ok"),
        txt("x"),
    ])[..]]);
    assert_eq!(c.items, vec![text(""), Got::Ping(b"ping ok".to_vec())]);
    assert_eq!(c.code(), Some(1009));
}

#[test]
fn family9_too_big_when_fragments_add_up() {
    let max = 1000;
    let mut c = Conn::with(max, u32::MAX);
    assert_eq!(c.feed(&fr(false, OP_TEXT, &[b'a'; 400])), Ok(vec![]));
    assert_eq!(c.feed(&fr(false, OP_CONT, &[b'b'; 400])), Ok(vec![]));
    // Control frames do not count.
    assert_eq!(
        c.feed(&fr(true, OP_PING, &[0; 125])),
        Ok(vec![Got::Ping(vec![0; 125])])
    );
    // 800 + 201 > 1000: known from the header.
    let f = fr(true, OP_CONT, &[b'c'; 201]);
    assert_eq!(c.feed(&f[..8]).map_err(DecodeError::close_code), Err(1009));
    // 800 + 200 = 1000 is fine.
    let s = cat(&[
        fr(false, OP_BINARY, &[1; 400]),
        fr(false, OP_CONT, &[2; 400]),
        fr(true, OP_CONT, &[3; 200]),
    ]);
    let c = Conn::with(max, u32::MAX).feed_all(chops(&s, 77));
    assert_eq!((c.items.len(), c.err), (1, None));
    // Many empty-ish fragments past the limit.
    let mut s = fr(false, OP_BINARY, b"");
    for _ in 0..1001 {
        s.extend_from_slice(&fr(false, OP_CONT, b"x"));
    }
    let c = Conn::with(max, u32::MAX).feed_all([&s[..]]);
    assert_eq!(c.code(), Some(1009));
}

// ---------------------------------------------------------------------------------------------
// Family 10: automatic fragmentation.

#[test]
fn family10_1_1_65536_in_1300_byte_fragments() {
    let s = "*".repeat(65536);
    let st = fragmented(OP_TEXT, s.as_bytes(), 1300);
    // 50 full fragments and one of 536.
    let mut frames = 0;
    let mut at = 0;
    while at < st.len() {
        let h = frame::parse_header(&st[at..], true).unwrap().unwrap();
        at += h.header_len + h.payload_len as usize;
        frames += 1;
    }
    assert_eq!(frames, 65536 / 1300 + 1);
    let mut c = Conn::with(MAX, frames);
    assert_eq!(c.feed(&st), Ok(vec![text(&s)]));
    assert_eq!(c.frames, 0, "one allowance per frame");
    let c = decode(&chops(&st, 1300));
    assert_eq!(c.items, vec![text(&s)]);
    let c = decode(&chops(&st, 1));
    assert_eq!(c.items, vec![text(&s)]);
}

// ---------------------------------------------------------------------------------------------
// The frame allowance and the decoder's memory between messages.

#[test]
fn frame_budget_stops_before_the_frame_past_it() {
    let s: Vec<u8> = (0..5).flat_map(|i| txt(&format!("m{i}"))).collect();
    let c = Conn::with(MAX, 3).feed_all([&s[..]]);
    assert_eq!(c.items, vec![text("m0"), text("m1"), text("m2")]);
    assert_eq!(c.err, Some(DecodeError::FrameBudget));
    assert_eq!(c.code(), Some(1008));
    assert_eq!(c.frames, 0);
    // The same octet-wise.
    let c = Conn::with(MAX, 3).feed_all(chops(&s, 1));
    assert_eq!(c.items.len(), 3);
    assert_eq!(c.err, Some(DecodeError::FrameBudget));
    // Every fragment and control frame costs one.
    let s = cat(&[
        fr(false, OP_TEXT, b"a"),
        fr(true, OP_PING, b""),
        fr(true, OP_CONT, b"b"),
    ]);
    let c = Conn::with(MAX, 2).feed_all([&s[..]]);
    assert_eq!(
        (c.items, c.err),
        (vec![Got::Ping(vec![])], Some(DecodeError::FrameBudget))
    );
    // A caller may top the allowance up between reads.
    let mut c = Conn::with(MAX, 1);
    assert_eq!(c.feed(&txt("a")), Ok(vec![text("a")]));
    c.frames = 1;
    assert_eq!(c.feed(&txt("b")), Ok(vec![text("b")]));
    // Zero: nothing is decoded, not even a header's worth.
    let c = Conn::with(MAX, 0).feed_all([&txt("a")[..]]);
    assert_eq!((c.items.len(), c.err), (0, Some(DecodeError::FrameBudget)));
}

#[test]
fn no_state_between_messages() {
    let mut c = Conn::new();
    assert!(!c.dec.is_mid_message());
    // Whole messages in one read.
    c.feed(&cat(&[
        txt("a"),
        fr(true, OP_BINARY, b"b"),
        fr(true, OP_PING, b""),
    ]))
    .unwrap();
    assert!(!c.dec.is_mid_message());
    // A message that went through the gathering path (cut, then fragmented).
    let f = txt("hello there");
    c.feed(&f[..1]).unwrap();
    assert!(c.dec.is_mid_message(), "cut header");
    c.feed(&f[1..9]).unwrap();
    assert!(c.dec.is_mid_message(), "cut payload");
    assert_eq!(c.feed(&f[9..]), Ok(vec![text("hello there")]));
    assert!(!c.dec.is_mid_message());
    assert_eq!(c.dec.buffered(), 0);
    c.feed(&fr(false, OP_BINARY, b"12")).unwrap();
    assert!(c.dec.is_mid_message(), "between fragments");
    assert_eq!(c.dec.buffered(), 2);
    c.feed(&fr(true, OP_CONT, b"3")).unwrap();
    assert!(!c.dec.is_mid_message());
    // A control frame cut across reads.
    let p = fr(true, OP_PING, &[7; 100]);
    c.feed(&p[..50]).unwrap();
    assert!(c.dec.is_mid_message());
    assert_eq!(c.feed(&p[50..]), Ok(vec![Got::Ping(vec![7; 100])]));
    assert!(!c.dec.is_mid_message());
    // A message completed and the next header cut in the same read.
    let s = cat(&[txt("x"), txt("y")]);
    assert_eq!(c.feed(&s[..s.len() - 2]), Ok(vec![text("x")]));
    assert!(c.dec.is_mid_message());
    assert_eq!(c.feed(&s[s.len() - 2..]), Ok(vec![text("y")]));
    assert!(!c.dec.is_mid_message());
    // The decoder is two words: a pointer and a flag.
    assert!(std::mem::size_of::<Decoder>() <= 2 * std::mem::size_of::<usize>());
}
