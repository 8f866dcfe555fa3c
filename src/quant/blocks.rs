//! Byte layouts of GGML's block formats, shared by the dequantizers, the quantizers and
//! the dot kernels so that every offset is written down once.
//!
//! All blocks are packed little-endian structs without padding; the offsets below are
//! in bytes from the start of a block.

/// Elements per block of the "simple" formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and per
/// block of the Q8_0-style activations.
pub(super) const QK: usize = 32;

pub(super) mod q4_0 {
    pub const D: usize = 0;
    pub const QS: usize = 2;
    pub const BYTES: usize = 18;
}

pub(super) mod q4_1 {
    pub const D: usize = 0;
    pub const M: usize = 2;
    pub const QS: usize = 4;
    pub const BYTES: usize = 20;
}

pub(super) mod q5_0 {
    pub const D: usize = 0;
    pub const QH: usize = 2;
    pub const QS: usize = 6;
    pub const BYTES: usize = 22;
}

pub(super) mod q5_1 {
    pub const D: usize = 0;
    pub const M: usize = 2;
    pub const QH: usize = 4;
    pub const QS: usize = 8;
    pub const BYTES: usize = 24;
}

pub(super) mod q8_0 {
    pub const D: usize = 0;
    pub const QS: usize = 2;
    pub const BYTES: usize = 34;
}

pub(super) mod q4_k {
    pub const D: usize = 0;
    pub const DMIN: usize = 2;
    pub const SCALES: usize = 4;
    pub const QS: usize = 16;
    pub const BYTES: usize = 144;
}

pub(super) mod q5_k {
    pub const D: usize = 0;
    pub const DMIN: usize = 2;
    pub const SCALES: usize = 4;
    pub const QH: usize = 16;
    pub const QS: usize = 48;
    pub const BYTES: usize = 176;
}

// Q4_K and Q5_K share their header, so code reading it may use either module's names.
const _: () =
    assert!(q4_k::D == q5_k::D && q4_k::DMIN == q5_k::DMIN && q4_k::SCALES == q5_k::SCALES);

pub(super) mod q6_k {
    pub const QL: usize = 0;
    pub const QH: usize = 128;
    pub const SCALES: usize = 192;
    pub const D: usize = 208;
    pub const BYTES: usize = 210;
}

/// The f16 stored at `b[off..off + 2]`, widened exactly.
#[inline]
pub(super) fn f16_at(b: &[u8], off: usize) -> f32 {
    half::f16::from_le_bytes([b[off], b[off + 1]]).to_f32()
}

/// The raw bits of the f16 at `b[off..off + 2]` (the SIMD kernels widen it themselves).
#[inline]
pub(super) fn f16_bits_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

/// The little-endian u32 at `b[off..off + 4]` (the Q5 high-bit masks).
#[inline]
pub(super) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Unpacks the 12 scale bytes of a Q4_K / Q5_K super-block into its eight 6-bit
/// sub-block scales and eight 6-bit mins, each as one little-endian u64 of 8 bytes
/// (byte j = sub-block j) so the SIMD kernels can move them into a register at once.
///
/// Packing: bytes 0..4 hold scales 0..3 in their low 6 bits, bytes 4..8 mins 0..3;
/// bytes 8..12 hold the low 4 bits of scales 4..7 (low nibble) and mins 4..7 (high
/// nibble), whose top 2 bits are the top 2 bits of bytes 0..4 (scales) and 4..8 (mins).
/// Working on 32-bit words does the four sub-blocks of each half at once.
#[inline]
pub(super) fn k4_scales_mins(s: &[u8]) -> (u64, u64) {
    let w0 = u32_at(s, 0);
    let w1 = u32_at(s, 4);
    let w2 = u32_at(s, 8);
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let sc_lo = w0 & LOW6;
    let sc_hi = (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4);
    let mn_lo = w1 & LOW6;
    let mn_hi = ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4);
    (
        u64::from(sc_lo) | (u64::from(sc_hi) << 32),
        u64::from(mn_lo) | (u64::from(mn_hi) << 32),
    )
}

/// Inverse of [`k4_scales_mins`]: packs eight 6-bit scales and mins into 12 bytes.
pub(super) fn pack_k4_scales_mins(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for j in 0..4 {
        debug_assert!(sc[j] < 64 && mn[j] < 64 && sc[j + 4] < 64 && mn[j + 4] < 64);
        out[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 0xf) | ((mn[j + 4] & 0xf) << 4);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-byte reading of the packing, as the format describes it, for one index.
    fn scale_min_naive(j: usize, q: &[u8]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }

    #[test]
    fn k4_scale_unpack_matches_the_bytewise_definition_and_packs_back() {
        let mut state = 0x1234_5678_u32;
        for _ in 0..200 {
            let mut q = [0u8; 12];
            for b in &mut q {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (state >> 24) as u8;
            }
            let (sc, mn) = k4_scales_mins(&q);
            let (sc, mn) = (sc.to_le_bytes(), mn.to_le_bytes());
            for j in 0..8 {
                assert_eq!((sc[j], mn[j]), scale_min_naive(j, &q), "j={j} q={q:?}");
            }
            assert_eq!(pack_k4_scales_mins(&sc, &mn), q);
        }
    }
}
