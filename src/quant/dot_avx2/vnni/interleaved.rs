//! Q4_K and Q6_K rows decoded once per call with 16 rows side by side (`quant::DecodedRows`),
//! for prompts of more than one tile.
//!
//! The one-row tiles (`vnni_k.rs`) give each (row, token) its own 512-bit accumulator, so
//! every super-block ends with a horizontal reduction, a conversion and two FMAs per
//! (row, token), as much work again as the dot itself, and they unpack each super-block
//! once per tile of 8 tokens. Here the 32-bit lane r of every register is row r of a
//! group of 16: one 64-byte load holds 4 consecutive codes of each of the 16 rows,
//! `vpdpbusd` takes the token's 4 activation codes broadcast from memory, and the lanes
//! come out already as the 16 rows' sums, nothing to reduce. Per (16 rows, token):
//! - Q4_K: 64 `vpdpbusd` a super-block (one per 4 codes), 8 `vpmulld` for the sub-block
//!   scales, 4 `vpdpwssd` for the mins, then 2 conversions, 2 multiplies, 2 FMAs;
//! - Q6_K: 64 `vpdpbusd`, 16 `vpmulld` (scales per 16 codes), 8 `vpdpwssd` for the -32
//!   bias.
//!
//! That is about 1.3 instructions per 64 multiply-adds where the one-row tiles spend about
//! 5. The decode is a plain copy into that order, once per call.
//!
//! Layout, per group of 16 rows (a short last group is padded with zero rows, whose
//! outputs are dropped), super-block after super-block, 64-byte aligned:
//! - Q4_K, `Q4K_BYTES` = 2560 per super-block:
//!   - 2048 B of codes: for chunk c (0..4) and group i (0..8), 64 B whose dword r is row
//!     r's code bytes 32c + 4i..+4 as stored. Their low nibbles are elements
//!     64c + 4i..+4 (sub-block 2c), their high nibbles the same 4 of sub-block 2c + 1.
//!   - 128 B: the 6-bit scale of sub-block s for row r at 16s + r (u8);
//!   - 256 B: mins pair p (sub-blocks 2p, 2p + 1) of row r as two i16 at 64p + 4r;
//!   - 64 B of d, then 64 B of dmin: f32 per row.
//! - Q6_K, `Q6K_BYTES` = 4928 per super-block:
//!   - 4096 B of codes, unsigned (0..64): group g (0..64) is 64 B whose dword r is row r's
//!     elements 4g..4g + 4;
//!   - 256 B: the i8 scale of 16-element sub-block s for row r at 16s + r;
//!   - 512 B: scale pair p (sub-blocks 2p, 2p + 1) of row r as two i16 at 64p + 4r;
//!   - 64 B of d, f32 per row.
//!
//! Bit for bit the one-token kernels (`dot_avx2`): the integer super-block sums (the dot
//! with its sub-block scales, the mins term, Q6_K's bias) are the same integers, exact in
//! i32 (Q4_K: at most 8 x 63 x 32 x 15 x 127 in magnitude; Q6_K: 16 x 128 x 16 x 63 x 127
//! plus the bias), and each lane then takes `k_block_sum`'s steps: one conversion each,
//! `d * dx` as one product, the dot's FMA, then the mins' negated FMA.

use std::arch::x86_64::*;

use super::super::super::acts::QuantizedActs;
use super::super::super::blocks::{self, f16_bits_at, k4_scales_mins};
use super::super::f16_to_f32;
use super::super::vnni_k::dpwssd;
use crate::format::ggml_type::QK_K;

/// Rows side by side: the 16 i32 lanes of a 512-bit register.
pub(in crate::quant) const GROUP: usize = 16;
/// Decoded bytes of one Q4_K super-block of a group.
pub(in crate::quant) const Q4K_BYTES: usize = 2560;
/// Decoded bytes of one Q6_K super-block of a group.
pub(in crate::quant) const Q6K_BYTES: usize = 4928;
/// Tokens per pass over a group: 2 x 8 accumulators.
const PASS: usize = 8;

/// Offsets inside a decoded Q4_K super-block.
mod q4k {
    pub const SCALES: usize = 2048;
    pub const MINS: usize = SCALES + 128;
    pub const D: usize = MINS + 256;
    pub const DMIN: usize = D + 64;
    const _: () = assert!(DMIN + 64 == super::Q4K_BYTES);
}

/// Offsets inside a decoded Q6_K super-block.
mod q6k {
    pub const SCALES: usize = 4096;
    pub const WORDS: usize = SCALES + 256;
    pub const D: usize = WORDS + 512;
    const _: () = assert!(D + 64 == super::Q6K_BYTES);
}

/// Decoded bytes of `rows` rows of `nb` super-blocks.
pub(in crate::quant) fn q4_k_len(rows: usize, nb: usize) -> usize {
    rows.div_ceil(GROUP) * nb * Q4K_BYTES
}

/// Decoded bytes of `rows` rows of `nb` super-blocks.
pub(in crate::quant) fn q6_k_len(rows: usize, nb: usize) -> usize {
    rows.div_ceil(GROUP) * nb * Q6K_BYTES
}

/// Checks a decode's sizes; returns (rows, super-blocks per row).
fn decode_shape(
    src: &[u8],
    row_bytes: usize,
    bytes: usize,
    dst: &[u8],
    len: fn(usize, usize) -> usize,
) -> (usize, usize) {
    assert!(
        row_bytes > 0 && row_bytes.is_multiple_of(bytes) && src.len().is_multiple_of(row_bytes),
        "decode: whole rows of whole super-blocks"
    );
    let (rows, nb) = (src.len() / row_bytes, row_bytes / bytes);
    assert_eq!(
        dst.len(),
        len(rows, nb),
        "decode: the decoded size of {rows} rows"
    );
    (rows, nb)
}

/// Q4_K rows (`row_bytes` each) into `dst`, `q4_k_len` bytes.
pub(in crate::quant) fn decode_q4_k(src: &[u8], row_bytes: usize, dst: &mut [u8]) {
    use blocks::q4_k::{BYTES, D, DMIN, QS, SCALES};
    let (rows, nb) = decode_shape(src, row_bytes, BYTES, dst, q4_k_len);
    dst.fill(0);
    for r in 0..rows {
        let (g, lane) = (r / GROUP, r % GROUP);
        for b in 0..nb {
            let blk = &src[r * row_bytes + b * BYTES..][..BYTES];
            let out = &mut dst[(g * nb + b) * Q4K_BYTES..][..Q4K_BYTES];
            for c in 0..4 {
                for i in 0..8 {
                    let at = (8 * c + i) * 64 + 4 * lane;
                    out[at..at + 4].copy_from_slice(&blk[QS + 32 * c + 4 * i..][..4]);
                }
            }
            let (scales, mins) = k4_scales_mins(&blk[SCALES..SCALES + 12]);
            let (scales, mins) = (scales.to_le_bytes(), mins.to_le_bytes());
            for s in 0..8 {
                out[q4k::SCALES + 16 * s + lane] = scales[s];
            }
            for p in 0..4 {
                let at = q4k::MINS + 64 * p + 4 * lane;
                out[at..at + 2].copy_from_slice(&i16::from(mins[2 * p]).to_le_bytes());
                out[at + 2..at + 4].copy_from_slice(&i16::from(mins[2 * p + 1]).to_le_bytes());
            }
            let d = half(f16_bits_at(blk, D));
            let dmin = half(f16_bits_at(blk, DMIN));
            out[q4k::D + 4 * lane..][..4].copy_from_slice(&d.to_le_bytes());
            out[q4k::DMIN + 4 * lane..][..4].copy_from_slice(&dmin.to_le_bytes());
        }
    }
}

/// Q6_K rows (`row_bytes` each) into `dst`, `q6_k_len` bytes.
pub(in crate::quant) fn decode_q6_k(src: &[u8], row_bytes: usize, dst: &mut [u8]) {
    use blocks::q6_k::{BYTES, D, QH, QL, SCALES};
    let (rows, nb) = decode_shape(src, row_bytes, BYTES, dst, q6_k_len);
    dst.fill(0);
    for r in 0..rows {
        let (g, lane) = (r / GROUP, r % GROUP);
        for b in 0..nb {
            let blk = &src[r * row_bytes + b * BYTES..][..BYTES];
            let out = &mut dst[(g * nb + b) * Q6K_BYTES..][..Q6K_BYTES];
            // Element 128h + 32k + l, as `dequant::q6_k` reads it.
            let mut codes = [0u8; QK_K];
            for h in 0..2 {
                for k in 0..4 {
                    for l in 0..32 {
                        let lo = (blk[QL + 64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0xf;
                        let hi = (blk[QH + 32 * h + l] >> (2 * k)) & 3;
                        codes[128 * h + 32 * k + l] = lo | (hi << 4);
                    }
                }
            }
            for (gi, four) in codes.chunks_exact(4).enumerate() {
                out[64 * gi + 4 * lane..][..4].copy_from_slice(four);
            }
            for s in 0..16 {
                out[q6k::SCALES + 16 * s + lane] = blk[SCALES + s];
            }
            for p in 0..8 {
                let at = q6k::WORDS + 64 * p + 4 * lane;
                let (lo, hi) = (blk[SCALES + 2 * p] as i8, blk[SCALES + 2 * p + 1] as i8);
                out[at..at + 2].copy_from_slice(&i16::from(lo).to_le_bytes());
                out[at + 2..at + 4].copy_from_slice(&i16::from(hi).to_le_bytes());
            }
            out[q6k::D + 4 * lane..][..4].copy_from_slice(&half(f16_bits_at(blk, D)).to_le_bytes());
        }
    }
}

/// An f16 scale widened as the one-token kernels widen it (F16C).
fn half(bits: u16) -> f32 {
    // SAFETY: the decoders are handed out only by `Vnni::decoded_fns`, which needs a
    // `Vnni` token: the CPU has f16c.
    unsafe { f16_to_f32(bits) }
}

/// Which of the two formats a pass runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Q4K,
    Q6K,
}

/// `out[j * rows + r]` = dot(row r, `xs[j]`) over `decode_q4_k`'s rows.
pub(in crate::quant) fn q4_k(
    dec: &[u8],
    rows: usize,
    nb: usize,
    xs: &[QuantizedActs],
    out: &mut [f32],
) {
    matmul(Kind::Q4K, dec, rows, nb, xs, out)
}

/// `out[j * rows + r]` = dot(row r, `xs[j]`) over `decode_q6_k`'s rows.
pub(in crate::quant) fn q6_k(
    dec: &[u8],
    rows: usize,
    nb: usize,
    xs: &[QuantizedActs],
    out: &mut [f32],
) {
    matmul(Kind::Q6K, dec, rows, nb, xs, out)
}

fn matmul(kind: Kind, dec: &[u8], rows: usize, nb: usize, xs: &[QuantizedActs], out: &mut [f32]) {
    let sb = match kind {
        Kind::Q4K => Q4K_BYTES,
        Kind::Q6K => Q6K_BYTES,
    };
    let groups = rows.div_ceil(GROUP);
    assert!(
        nb > 0 && dec.len() == groups * nb * sb,
        "matmul: {rows} decoded rows of {nb} super-blocks"
    );
    assert!(
        dec.as_ptr().cast::<__m512i>().is_aligned(),
        "matmul: decoded rows start 64-byte aligned"
    );
    assert_eq!(
        out.len(),
        rows * xs.len(),
        "matmul: one output per (row, token)"
    );
    for x in xs {
        assert!(
            x.qs.len() == nb * QK_K && x.d.len() == nb && x.bsums.len() == nb * QK_K / 16,
            "matmul: activations of {} super-blocks",
            nb
        );
    }
    for (c, xc) in xs.chunks(PASS).enumerate() {
        for g in 0..groups {
            let group = &dec[g * nb * sb..(g + 1) * nb * sb];
            let mut acc = [[0f32; GROUP]; PASS];
            // SAFETY (every arm): handed out only by `Vnni::decoded_fns`, which needs a
            // `Vnni` token (the CPU has avx2, fma, f16c, avx512f, avx512bw, avx512vnni);
            // the sizes were checked above.
            unsafe {
                match (kind, xc.len()) {
                    (Kind::Q4K, 8) => pass_q4k::<8>(group, nb, xc, &mut acc),
                    (Kind::Q4K, 4..=7) => pass_q4k::<4>(group, nb, &xc[..4], &mut acc),
                    (Kind::Q4K, _) => {}
                    (Kind::Q6K, 8) => pass_q6k::<8>(group, nb, xc, &mut acc),
                    (Kind::Q6K, 4..=7) => pass_q6k::<4>(group, nb, &xc[..4], &mut acc),
                    (Kind::Q6K, _) => {}
                }
                // What a pass of 8 or 4 leaves, one token at a time.
                let done = if xc.len() >= 8 {
                    8
                } else if xc.len() >= 4 {
                    4
                } else {
                    0
                };
                for j in done..xc.len() {
                    let (one, a) = (&xc[j..j + 1], &mut acc[j..j + 1]);
                    match kind {
                        Kind::Q4K => pass_q4k::<1>(group, nb, one, a),
                        Kind::Q6K => pass_q6k::<1>(group, nb, one, a),
                    }
                }
            }
            for (j, a) in acc[..xc.len()].iter().enumerate() {
                let t = c * PASS + j;
                let (r0, r1) = (g * GROUP, ((g + 1) * GROUP).min(rows));
                out[t * rows + r0..t * rows + r1].copy_from_slice(&a[..r1 - r0]);
            }
        }
    }
}

/// 64 aligned bytes of a decoded super-block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn line(p: *const u8) -> __m512i {
    // SAFETY: the caller gives 64 readable bytes at a 64-byte aligned address.
    unsafe { _mm512_load_si512(p.cast()) }
}

/// 16 bytes widened to the 16 lanes' i32 (`signed`: i8, else u8).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn widen16(p: *const u8, signed: bool) -> __m512i {
    // SAFETY: the caller gives 16 readable bytes; `loadu` needs no alignment.
    let v = unsafe { _mm_loadu_si128(p.cast()) };
    if signed {
        _mm512_cvtepi8_epi32(v)
    } else {
        _mm512_cvtepu8_epi32(v)
    }
}

/// Four activation codes (or two i16) at `p`, as one dword broadcast to every lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn bcast<T>(p: *const T) -> __m512i {
    // SAFETY: the caller gives 4 readable bytes; the read needs no alignment.
    _mm512_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
}

/// `acc[r]` (per row of the group) `+ d[r] * dx * dot[r] - dmin[r] * dx * min[r]`, lane by
/// lane `k_block_sum`. `dmin` and `min` are None for Q6_K.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn block_sum(
    acc: &mut [f32; GROUP],
    d: *const u8,
    dx: f32,
    dot: __m512i,
    mins: Option<(*const u8, __m512i)>,
) {
    let dx = _mm512_set1_ps(dx);
    // SAFETY: `acc` is 64 bytes; `d` and the mins' scales are 64 aligned bytes (caller).
    unsafe {
        let a = _mm512_loadu_ps(acc.as_ptr());
        let dd = _mm512_mul_ps(_mm512_load_ps(d.cast()), dx);
        let mut a = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(dot), a);
        if let Some((dmin, min)) = mins {
            let dm = _mm512_mul_ps(_mm512_load_ps(dmin.cast()), dx);
            a = _mm512_fnmadd_ps(dm, _mm512_cvtepi32_ps(min), a);
        }
        _mm512_storeu_ps(acc.as_mut_ptr(), a);
    }
}

/// One group of 16 rows against `T` tokens (`xs.len() == T <= acc.len()`), into
/// `acc[..T]`.
///
/// # Safety
/// The CPU has the target features; `group` is `nb` decoded Q4_K super-blocks, 64-byte
/// aligned; every token has `nb` super-blocks of activations.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn pass_q4k<const T: usize>(
    group: &[u8],
    nb: usize,
    xs: &[QuantizedActs],
    acc: &mut [[f32; GROUP]],
) {
    let low4 = _mm512_set1_epi8(0x0f);
    let qs: [*const i8; T] = std::array::from_fn(|j| xs[j].qs.as_ptr());
    for b in 0..nb {
        let sb = group[b * Q4K_BYTES..].as_ptr();
        let mut dot = [_mm512_setzero_si512(); T];
        for c in 0..4 {
            for half in 0..2 {
                // Sub-block 2c + half: the low nibbles of the chunk's bytes, or the high.
                let mut part = [_mm512_setzero_si512(); T];
                for i in 0..8 {
                    // SAFETY (this block): offsets inside the super-block (the layout
                    // above) and inside each token's activations (256 codes a block).
                    unsafe {
                        let v = line(sb.add((8 * c + i) * 64));
                        let q = if half == 0 {
                            _mm512_and_si512(v, low4)
                        } else {
                            _mm512_and_si512(_mm512_srli_epi16::<4>(v), low4)
                        };
                        let at = QK_K * b + 64 * c + 32 * half + 4 * i;
                        for j in 0..T {
                            part[j] = _mm512_dpbusd_epi32(part[j], q, bcast(qs[j].add(at)));
                        }
                    }
                }
                // SAFETY: the sub-block's 16 scales, inside the super-block.
                let sc = unsafe { widen16(sb.add(q4k::SCALES + 16 * (2 * c + half)), false) };
                for j in 0..T {
                    dot[j] = _mm512_add_epi32(dot[j], _mm512_mullo_epi32(part[j], sc));
                }
            }
        }
        for j in 0..T {
            let x = &xs[j];
            // The activation sums of each 32-element sub-block, paired as i16 for
            // `vpdpwssd` against the rows' mins pairs (|sum| <= 32 x 127 fits).
            let bs = &x.bsums[QK_K / 16 * b..][..16];
            let sums: [i16; 8] = std::array::from_fn(|s| bs[2 * s] + bs[2 * s + 1]);
            let mut min = _mm512_setzero_si512();
            for p in 0..4 {
                // SAFETY: pair p of the mins, inside the super-block; 4 bytes of `sums`.
                unsafe {
                    let m = line(sb.add(q4k::MINS + 64 * p));
                    min = dpwssd(min, m, bcast(sums.as_ptr().add(2 * p)));
                }
            }
            // SAFETY: d and dmin, 64 aligned bytes each inside the super-block.
            unsafe {
                let mins = Some((sb.add(q4k::DMIN), min));
                block_sum(&mut acc[j], sb.add(q4k::D), x.d[b], dot[j], mins);
            }
        }
    }
}

/// [`pass_q4k`] for Q6_K.
///
/// # Safety
/// As for [`pass_q4k`], with decoded Q6_K super-blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn pass_q6k<const T: usize>(
    group: &[u8],
    nb: usize,
    xs: &[QuantizedActs],
    acc: &mut [[f32; GROUP]],
) {
    let qs: [*const i8; T] = std::array::from_fn(|j| xs[j].qs.as_ptr());
    for b in 0..nb {
        let sb = group[b * Q6K_BYTES..].as_ptr();
        let mut dot = [_mm512_setzero_si512(); T];
        for s in 0..16 {
            let mut part = [_mm512_setzero_si512(); T];
            for i in 0..4 {
                // SAFETY: offsets inside the super-block and each token's activations.
                unsafe {
                    let q = line(sb.add((4 * s + i) * 64));
                    let at = QK_K * b + 16 * s + 4 * i;
                    for j in 0..T {
                        part[j] = _mm512_dpbusd_epi32(part[j], q, bcast(qs[j].add(at)));
                    }
                }
            }
            // SAFETY: the sub-block's 16 scales, inside the super-block.
            let sc = unsafe { widen16(sb.add(q6k::SCALES + 16 * s), true) };
            for j in 0..T {
                dot[j] = _mm512_add_epi32(dot[j], _mm512_mullo_epi32(part[j], sc));
            }
        }
        for j in 0..T {
            let x = &xs[j];
            let bs = x.bsums[QK_K / 16 * b..][..16].as_ptr();
            // The codes' -32 bias: 32 * sum(scale * 16-element activation sum).
            let mut bias = _mm512_setzero_si512();
            for p in 0..8 {
                // SAFETY: pair p of the scale words; 4 bytes of this block's sums.
                unsafe {
                    let w = line(sb.add(q6k::WORDS + 64 * p));
                    bias = dpwssd(bias, w, bcast(bs.add(2 * p)));
                }
            }
            let dot = _mm512_sub_epi32(dot[j], _mm512_slli_epi32::<5>(bias));
            // SAFETY: d, 64 aligned bytes inside the super-block.
            unsafe { block_sum(&mut acc[j], sb.add(q6k::D), x.d[b], dot, None) };
        }
    }
}
