//! Client-to-server masking (RFC 6455 §5.3): payload byte `i` is XORed with `mask[i % 4]`.

/// XORs `data` with `mask`, starting at mask position `phase` (0..4): a payload that arrives in
/// pieces is unmasked piece by piece with the phase carried over. Eight bytes at a time; the
/// compiler vectorizes the loop.
#[inline]
pub fn apply(data: &mut [u8], mask: [u8; 4], phase: usize) {
    let m = rotate(mask, phase);
    let word = u32::from_ne_bytes(m);
    let wide = (u64::from(word) << 32 | u64::from(word)).to_ne_bytes();
    let wide = u64::from_ne_bytes(wide);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

/// The mask as seen from position `phase`.
#[inline]
fn rotate(mask: [u8; 4], phase: usize) -> [u8; 4] {
    let p = phase % 4;
    [
        mask[p],
        mask[(p + 1) % 4],
        mask[(p + 2) % 4],
        mask[(p + 3) % 4],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(data: &mut [u8], mask: [u8; 4], phase: usize) {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= mask[(i + phase) % 4];
        }
    }

    #[test]
    fn matches_the_definition_at_every_length_and_phase() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            for phase in 0..4 {
                let orig: Vec<u8> = (0..len as u8).collect();
                let mut a = orig.clone();
                let mut b = orig.clone();
                apply(&mut a, mask, phase);
                naive(&mut b, mask, phase);
                assert_eq!(a, b, "len {len} phase {phase}");
            }
        }
    }

    #[test]
    fn piecewise_equals_whole() {
        let mask = [1, 2, 3, 4];
        let orig: Vec<u8> = (0..=255).collect();
        let mut whole = orig.clone();
        apply(&mut whole, mask, 0);
        for cut in 0..orig.len() {
            let mut p = orig.clone();
            let (a, b) = p.split_at_mut(cut);
            apply(a, mask, 0);
            apply(b, mask, cut);
            assert_eq!(p, whole);
        }
    }
}
