//! What the codec's test binaries share: decoded items as owned values.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::fmt;

use ferrocast_codec::Item;

/// An [`Item`] as an owned value. Debug output cuts long payloads so a failing 16 MiB comparison
/// stays readable.
#[derive(Clone, PartialEq, Eq)]
pub enum Got {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

impl From<Item<'_>> for Got {
    fn from(item: Item<'_>) -> Self {
        match item {
            Item::Text(s) => Got::Text(s.to_owned()),
            Item::Binary(b) => Got::Binary(b.to_vec()),
            Item::Ping(b) => Got::Ping(b.to_vec()),
            Item::Pong(b) => Got::Pong(b.to_vec()),
            Item::Close(c) => Got::Close(c.map(|(code, r)| (code, r.to_owned()))),
        }
    }
}

pub fn short(b: &[u8]) -> String {
    if b.len() <= 48 {
        format!("{b:02x?}")
    } else {
        let sum = b
            .iter()
            .fold(0u64, |h, &x| h.wrapping_mul(31).wrapping_add(u64::from(x)));
        format!("<{} bytes, {:02x?}.., hash {sum:x}>", b.len(), &b[..16])
    }
}

impl fmt::Debug for Got {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Got::Text(s) if s.len() <= 48 => write!(f, "Text({s:?})"),
            Got::Text(s) => write!(f, "Text({})", short(s.as_bytes())),
            Got::Binary(b) => write!(f, "Binary({})", short(b)),
            Got::Ping(b) => write!(f, "Ping({})", short(b)),
            Got::Pong(b) => write!(f, "Pong({})", short(b)),
            Got::Close(c) => write!(f, "Close({c:?})"),
        }
    }
}
