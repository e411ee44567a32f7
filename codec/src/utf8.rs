//! Incremental UTF-8 validation for text messages that arrive in fragments and partial reads.
//! RFC 6455 §8.1 asks an endpoint to fail the connection as soon as the bytes so far cannot be
//! the start of valid UTF-8 — not only when the message is complete — so each piece is checked as
//! it arrives and only an unfinished sequence (at most 3 bytes) is carried to the next piece.

/// Validation state between pieces: the bytes of a code point cut at the end of the last piece.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Utf8State {
    pending: [u8; 4],
    len: u8,
}

/// The bytes so far are not the start of valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8State {
    /// Checks the next piece. Overlongs, surrogates and code points past U+10FFFF are rejected
    /// by the first byte that makes them so.
    pub fn feed(&mut self, mut piece: &[u8]) -> Result<(), InvalidUtf8> {
        if self.len > 0 {
            // Complete the carried code point one byte at a time.
            while self.len > 0 {
                let Some((&b, rest)) = piece.split_first() else {
                    return Ok(());
                };
                self.pending[self.len as usize] = b;
                self.len += 1;
                piece = rest;
                match std::str::from_utf8(&self.pending[..self.len as usize]) {
                    Ok(_) => self.len = 0,
                    Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                    Err(_) => {} // still a valid prefix
                }
            }
        }
        match std::str::from_utf8(piece) {
            Ok(_) => Ok(()),
            Err(e) => match e.error_len() {
                Some(_) => Err(InvalidUtf8),
                None => {
                    // A valid prefix of a code point at the very end.
                    let tail = &piece[e.valid_up_to()..];
                    self.pending[..tail.len()].copy_from_slice(tail);
                    self.len = tail.len() as u8;
                    Ok(())
                }
            },
        }
    }

    /// The message ended: no code point may be left unfinished.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let unfinished = self.len > 0;
        *self = Utf8State::default();
        if unfinished {
            Err(InvalidUtf8)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> bool {
        let mut s = Utf8State::default();
        s.feed(bytes).is_ok() && s.finish().is_ok()
    }

    #[test]
    fn agrees_with_std_at_every_cut() {
        let samples: Vec<Vec<u8>> = vec![
            "Hello-µ@ßöäüàá-UTF-8!!".as_bytes().to_vec(),
            "κόσμε".as_bytes().to_vec(),
            "\u{10FFFF}\u{FFFF}\u{800}\u{80}".as_bytes().to_vec(),
            vec![0xf4, 0x90, 0x80, 0x80], // > U+10FFFF
            vec![0xed, 0xa0, 0x80],       // surrogate
            vec![0xc0, 0xaf],             // overlong
            vec![0xe0, 0x80, 0xaf],       // overlong
            vec![0xce, 0xba, 0xe1],       // truncated at the end
            vec![
                0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
                0x65, 0x64, 0x69, 0x74, 0x65, 0x64,
            ],
            vec![0xfe],
            vec![0x80],
        ];
        for s in samples {
            let expected = std::str::from_utf8(&s).is_ok();
            assert_eq!(whole(&s), expected, "{s:x?}");
            for cut in 0..=s.len() {
                for cut2 in cut..=s.len() {
                    let mut st = Utf8State::default();
                    let ok = st.feed(&s[..cut]).is_ok()
                        && st.feed(&s[cut..cut2]).is_ok()
                        && st.feed(&s[cut2..]).is_ok()
                        && st.finish().is_ok();
                    assert_eq!(ok, expected, "{s:x?} cut {cut}/{cut2}");
                }
            }
        }
    }

    #[test]
    fn fails_on_the_first_invalid_byte() {
        // "κόσμε" then a surrogate: the error shows at 0xa0, before the message ends.
        let mut st = Utf8State::default();
        assert!(st.feed(&[0xce, 0xba, 0xed]).is_ok());
        assert_eq!(st.feed(&[0xa0]), Err(InvalidUtf8));
        // Past U+10FFFF is known at the second byte.
        let mut st = Utf8State::default();
        assert_eq!(st.feed(&[0xf4, 0x90]), Err(InvalidUtf8));
        // Carried one byte at a time.
        let mut st = Utf8State::default();
        assert!(st.feed(&[0xf0]).is_ok());
        assert!(st.feed(&[0x90]).is_ok());
        assert!(st.feed(&[0x80]).is_ok());
        assert!(st.feed(&[0x80]).is_ok());
        assert!(st.finish().is_ok());
    }
}
