//! Close frames (RFC 6455 §5.5.1, §7.4).

/// Whether `code` may appear in a close frame on the wire. 1005, 1006 and 1015 are reserved for
/// reporting (never sent); 1004 and the rest of 1016–2999 are unassigned; 0–999 are not used;
/// 3000–4999 belong to libraries and applications.
pub fn is_valid_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A close frame's payload: empty, or a 2-byte code and a UTF-8 reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosePayloadError {
    /// One byte, or a code that may not be sent.
    Protocol,
    /// The reason is not UTF-8.
    InvalidUtf8,
}

/// Parses a (complete, unmasked) close payload: `None` = no code given.
pub fn parse(payload: &[u8]) -> Result<Option<(u16, &str)>, ClosePayloadError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ClosePayloadError::Protocol),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_code(code) {
                return Err(ClosePayloadError::Protocol);
            }
            let reason =
                std::str::from_utf8(&payload[2..]).map_err(|_| ClosePayloadError::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// A close payload: the code and as much of `reason` as fits the 125-byte control frame limit,
/// cut on a character boundary (the reason must stay valid UTF-8).
pub fn payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(2 + end);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_codes() {
        // Autobahn 7.7.x (valid) and 7.9.x (invalid), plus the ranges.
        for c in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            assert!(is_valid_code(c), "{c}");
        }
        for c in [
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_code(c), "{c}");
        }
    }

    #[test]
    fn parses_payloads() {
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&[3]), Err(ClosePayloadError::Protocol));
        assert_eq!(parse(&[0x03, 0xe8]), Ok(Some((1000, ""))));
        assert_eq!(parse(b"\x03\xe8bye"), Ok(Some((1000, "bye"))));
        assert_eq!(parse(&[0x03, 0xed]), Err(ClosePayloadError::Protocol)); // 1005
        assert_eq!(
            parse(&[0x03, 0xe8, 0xce, 0xba, 0xed, 0xa0, 0x80]),
            Err(ClosePayloadError::InvalidUtf8)
        );
    }

    #[test]
    fn reason_is_cut_on_a_char_boundary() {
        let long = format!("{}x", "é".repeat(62));
        let p = payload(4003, &long);
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
        assert_eq!(p.len() - 2, 122);
    }
}
