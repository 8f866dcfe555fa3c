//! Reference quantizers: f32 to GGML blocks by plain round-to-nearest.
//!
//! These make test data and back `tachyon quantize`; they are simple rather than
//! optimal (no error-minimizing scale search, no importance weights). Scales are
//! rounded to f16 *before* the codes are chosen, so the codes are nearest for the scale
//! that is actually stored.

use half::f16;

use super::blocks::{QK, pack_k4_scales_mins};
use crate::format::ggml_type::{GgmlType, QK_K};

/// Reference quantizers (round-to-nearest, simple): `x.len()` must be a multiple of
/// `ty.block_len()`; panics otherwise.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let bl = ty.block_len();
    assert!(
        x.len().is_multiple_of(bl),
        "quantize: {} {ty} elements are not a whole number of {bl}-element blocks",
        x.len()
    );
    let mut out = Vec::with_capacity(x.len() / bl * ty.block_bytes());
    match ty {
        GgmlType::F32 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::BF16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        GgmlType::Q4_0 => x.chunks_exact(QK).for_each(|b| q4_0(b, &mut out)),
        GgmlType::Q4_1 => x.chunks_exact(QK).for_each(|b| q_affine(b, 4, &mut out)),
        GgmlType::Q5_0 => x.chunks_exact(QK).for_each(|b| q5_0(b, &mut out)),
        GgmlType::Q5_1 => x.chunks_exact(QK).for_each(|b| q_affine(b, 5, &mut out)),
        GgmlType::Q8_0 => x.chunks_exact(QK).for_each(|b| q8_0(b, &mut out)),
        GgmlType::Q4K => x.chunks_exact(QK_K).for_each(|b| q_k45(b, 4, &mut out)),
        GgmlType::Q5K => x.chunks_exact(QK_K).for_each(|b| q_k45(b, 5, &mut out)),
        GgmlType::Q6K => x.chunks_exact(QK_K).for_each(|b| q6_k(b, &mut out)),
    }
    debug_assert_eq!(out.len(), x.len() / bl * ty.block_bytes());
    out
}

/// The element of largest magnitude, with its sign (0 for an all-zero block).
fn signed_absmax(x: &[f32]) -> f32 {
    x.iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

/// `v` stored as f16, and the f32 the decoder will read back.
fn to_f16(v: f32) -> (f16, f32) {
    let h = f16::from_f32(v);
    (h, h.to_f32())
}

/// Round-to-nearest code `x / d + offset`, clamped to `0..=max` (0 when `d` is 0).
fn code(x: f32, d: f32, offset: f32, max: i32) -> u8 {
    let v = if d != 0.0 { x / d + offset } else { offset };
    (v.round() as i32).clamp(0, max) as u8
}

/// Packs 32 codes into 16 bytes: element j in the low nibble of byte j, j + 16 high.
fn pack_nibbles(q: &[u8; QK], out: &mut Vec<u8>) {
    out.extend((0..QK / 2).map(|j| (q[j] & 0xf) | ((q[j + QK / 2] & 0xf) << 4)));
}

/// Bit 4 of each of 32 codes, as the little-endian u32 of the Q5 formats.
fn high_bits(q: &[u8; QK]) -> [u8; 4] {
    let qh = q
        .iter()
        .enumerate()
        .fold(0u32, |h, (j, &v)| h | (u32::from(v >> 4) << j));
    qh.to_le_bytes()
}

/// Symmetric 2^bits-level block (Q4_0 / Q5_0): the largest-magnitude element maps to
/// the most negative code exactly, as in GGML, which spends the extra negative level on
/// the dominant side of the block.
fn q_sym(x: &[f32], bits: u32) -> (f16, [u8; QK]) {
    let half_levels = (1 << (bits - 1)) as f32;
    let (dh, d) = to_f16(signed_absmax(x) / -half_levels);
    let max = (1 << bits) - 1;
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = code(v, d, half_levels, max);
    }
    (dh, q)
}

fn q4_0(x: &[f32], out: &mut Vec<u8>) {
    let (d, q) = q_sym(x, 4);
    out.extend_from_slice(&d.to_le_bytes());
    pack_nibbles(&q, out);
}

fn q5_0(x: &[f32], out: &mut Vec<u8>) {
    let (d, q) = q_sym(x, 5);
    out.extend_from_slice(&d.to_le_bytes());
    out.extend_from_slice(&high_bits(&q));
    pack_nibbles(&q, out);
}

/// Min/scale block (Q4_1 / Q5_1): x = q * d + m with m the block minimum.
fn q_affine(x: &[f32], bits: u32, out: &mut Vec<u8>) {
    let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let max = (1 << bits) - 1;
    let (dh, d) = to_f16((hi - lo) / max as f32);
    let (mh, m) = to_f16(lo);
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = code(v - m, d, 0.0, max);
    }
    out.extend_from_slice(&dh.to_le_bytes());
    out.extend_from_slice(&mh.to_le_bytes());
    if bits == 5 {
        out.extend_from_slice(&high_bits(&q));
    }
    pack_nibbles(&q, out);
}

fn q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (dh, d) = to_f16(amax / 127.0);
    out.extend_from_slice(&dh.to_le_bytes());
    out.extend(
        x.iter()
            .map(|&v| (code(v, d, 127.0, 254) as i32 - 127) as i8 as u8),
    );
}

/// Q4_K / Q5_K: eight sub-blocks of 32, each x = d*sc*q - dmin*m with 6-bit sc and m.
/// Each sub-block's own range [min(0, lo), hi] sets its ideal scale and offset; the
/// super-block's d and dmin map the largest of those onto 63.
fn q_k45(x: &[f32], bits: u32, out: &mut Vec<u8>) {
    let max = (1 << bits) - 1;
    let mut scale = [0f32; 8];
    let mut offset = [0f32; 8];
    for (s, sub) in x.chunks_exact(32).enumerate() {
        let lo = sub.iter().copied().fold(0.0f32, f32::min);
        let hi = sub.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        scale[s] = (hi - lo) / max as f32;
        offset[s] = -lo;
    }
    let (dh, d) = to_f16(scale.iter().copied().fold(0.0, f32::max) / 63.0);
    let (mh, dmin) = to_f16(offset.iter().copied().fold(0.0, f32::max) / 63.0);
    let sc: [u8; 8] = std::array::from_fn(|s| code(scale[s], d, 0.0, 63));
    let mn: [u8; 8] = std::array::from_fn(|s| code(offset[s], dmin, 0.0, 63));
    let mut q = [0u8; QK_K];
    for (s, sub) in x.chunks_exact(32).enumerate() {
        let (ds, ms) = (d * f32::from(sc[s]), dmin * f32::from(mn[s]));
        for (l, &v) in sub.iter().enumerate() {
            q[32 * s + l] = code(v + ms, ds, 0.0, max);
        }
    }
    out.extend_from_slice(&dh.to_le_bytes());
    out.extend_from_slice(&mh.to_le_bytes());
    out.extend_from_slice(&pack_k4_scales_mins(&sc, &mn));
    if bits == 5 {
        // Sub-block s keeps its 5th bits in bit s of qh[l].
        out.extend((0..32).map(|l| (0..8).fold(0u8, |h, s| h | ((q[32 * s + l] >> 4) << s))));
    }
    // Chunk c: sub-block 2c in the low nibbles, 2c + 1 in the high nibbles.
    for c in 0..4 {
        out.extend((0..32).map(|l| (q[64 * c + l] & 0xf) | ((q[64 * c + 32 + l] & 0xf) << 4)));
    }
}

/// Q6_K: sixteen sub-blocks of 16, x = d * sc * (q - 32) with signed 8-bit sc. As in
/// Q4_0, each sub-block's largest-magnitude element maps onto code -32 exactly.
fn q6_k(x: &[f32], out: &mut Vec<u8>) {
    let ideal: [f32; 16] = std::array::from_fn(|s| signed_absmax(&x[16 * s..16 * s + 16]) / -32.0);
    let (dh, d) = to_f16(ideal.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0);
    let sc: [i8; 16] = std::array::from_fn(|s| {
        let v = if d != 0.0 { ideal[s] / d } else { 0.0 };
        v.round().clamp(-128.0, 127.0) as i8
    });
    let mut q = [0u8; QK_K];
    for (e, (q, &v)) in q.iter_mut().zip(x).enumerate() {
        *q = code(v, d * f32::from(sc[e / 16]), 32.0, 63);
    }
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for h in 0..2 {
        for l in 0..32 {
            let at = |k: usize| q[128 * h + 32 * k + l];
            ql[64 * h + l] = (at(0) & 0xf) | ((at(2) & 0xf) << 4);
            ql[64 * h + 32 + l] = (at(1) & 0xf) | ((at(3) & 0xf) << 4);
            qh[32 * h + l] = (0..4).fold(0u8, |b, k| b | ((at(k) >> 4) << (2 * k)));
        }
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(sc.iter().map(|&s| s as u8));
    out.extend_from_slice(&dh.to_le_bytes());
}
