//! Portable dot-product kernels: the fallback where AVX2 is missing (and on non-x86),
//! and a second, independent implementation the tests hold the SIMD kernels against.
//!
//! Each block's integer dot product is exact in i32 (the largest is Q6_K's: 256 codes
//! of at most 32 * 127 times a scale of at most 128, about 1.3e8 in magnitude); only
//! the per-block scaling and the sum over blocks are in f32.
//!
//! Every kernel expects what the dispatcher checks: `row` is one whole row of its type
//! and `x` holds activations of the same length in the matching layout.

use super::acts::QuantizedActs;
use super::blocks::{self, QK, f16_at, k4_scales_mins, u32_at};
use crate::format::ggml_type::QK_K;

pub(super) type RowFn = fn(&[u8], &QuantizedActs) -> f32;

/// Dot product of 32 unsigned codes (nibble layout: byte j = elements j and j + 16)
/// with 32 activation codes, each code first offset by `-bias`.
#[inline]
fn dot_nibbles(qs: &[u8], qh: u32, bias: i32, a: &[i8]) -> i32 {
    let mut sum = 0;
    for j in 0..QK / 2 {
        let lo = i32::from(qs[j] & 0xf) | (((qh >> j) & 1) << 4) as i32;
        let hi = i32::from(qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as i32;
        sum += (lo - bias) * i32::from(a[j]) + (hi - bias) * i32::from(a[j + QK / 2]);
    }
    sum
}

/// Runs `block` over the 32-element blocks of a simple-format row, pairing each with its
/// activation block, and sums the results in f32.
#[inline]
fn simple_blocks(
    row: &[u8],
    bb: usize,
    x: &QuantizedActs,
    block: impl Fn(&[u8], &[i8], f32, f32) -> f32,
) -> f32 {
    let acts = x.qs.chunks_exact(QK).zip(x.d.iter().zip(&x.s));
    row.chunks_exact(bb)
        .zip(acts)
        .map(|(b, (a, (&d, &s)))| block(b, a, d, s))
        .sum()
}

pub(super) fn q4_0(row: &[u8], x: &QuantizedActs) -> f32 {
    use blocks::q4_0::*;
    simple_blocks(row, BYTES, x, |b, a, dx, _| {
        f16_at(b, D) * dx * dot_nibbles(&b[QS..QS + 16], 0, 8, a) as f32
    })
}

pub(super) fn q4_1(row: &[u8], x: &QuantizedActs) -> f32 {
    use blocks::q4_1::*;
    // sum((q*d + m) * dx*a) = d*dx*sum(q*a) + m * (dx*sum(a)), the last factor being `s`.
    simple_blocks(row, BYTES, x, |b, a, dx, s| {
        f16_at(b, D) * dx * dot_nibbles(&b[QS..QS + 16], 0, 0, a) as f32 + f16_at(b, M) * s
    })
}

pub(super) fn q5_0(row: &[u8], x: &QuantizedActs) -> f32 {
    use blocks::q5_0::*;
    simple_blocks(row, BYTES, x, |b, a, dx, _| {
        f16_at(b, D) * dx * dot_nibbles(&b[QS..QS + 16], u32_at(b, QH), 16, a) as f32
    })
}

pub(super) fn q5_1(row: &[u8], x: &QuantizedActs) -> f32 {
    use blocks::q5_1::*;
    simple_blocks(row, BYTES, x, |b, a, dx, s| {
        f16_at(b, D) * dx * dot_nibbles(&b[QS..QS + 16], u32_at(b, QH), 0, a) as f32
            + f16_at(b, M) * s
    })
}

pub(super) fn q8_0(row: &[u8], x: &QuantizedActs) -> f32 {
    use blocks::q8_0::*;
    simple_blocks(row, BYTES, x, |b, a, dx, _| {
        let w = &b[QS..QS + QK];
        let sum: i32 = w
            .iter()
            .zip(a)
            .map(|(&w, &a)| i32::from(w as i8) * i32::from(a))
            .sum();
        f16_at(b, D) * dx * sum as f32
    })
}

/// Runs `block` over the super-blocks of a k-quant row with their activation codes,
/// scale and 16-element code sums.
#[inline]
fn k_blocks(
    row: &[u8],
    bb: usize,
    x: &QuantizedActs,
    block: impl Fn(&[u8], &[i8], &[i16], f32) -> f32,
) -> f32 {
    let acts =
        x.qs.chunks_exact(QK_K)
            .zip(x.bsums.chunks_exact(QK_K / 16).zip(&x.d));
    row.chunks_exact(bb)
        .zip(acts)
        .map(|(b, (a, (bs, &dx)))| block(b, a, bs, dx))
        .sum()
}

/// Q4_K / Q5_K super-block: sum over sub-blocks s of d*sc[s]*sum(q*a) - dmin*m[s]*sum(a),
/// the second sum coming from the activations' 16-element sums.
#[inline]
fn k45_block(b: &[u8], qs: &[u8], qh: Option<&[u8]>, a: &[i8], bsums: &[i16], dx: f32) -> f32 {
    use blocks::q4_k::{D, DMIN, SCALES};
    let (sc, mn) = k4_scales_mins(&b[SCALES..SCALES + 12]);
    let (sc, mn) = (sc.to_le_bytes(), mn.to_le_bytes());
    let mut dot = 0i32;
    let mut mins = 0i32;
    for s in 0..8 {
        let (c, shift) = (s / 2, 4 * (s % 2));
        let mut sub = 0i32;
        for l in 0..32 {
            let mut q = (qs[32 * c + l] >> shift) & 0xf;
            if let Some(qh) = qh {
                q |= ((qh[l] >> s) & 1) << 4;
            }
            sub += i32::from(q) * i32::from(a[32 * s + l]);
        }
        dot += i32::from(sc[s]) * sub;
        mins += i32::from(mn[s]) * (i32::from(bsums[2 * s]) + i32::from(bsums[2 * s + 1]));
    }
    dx * (f16_at(b, D) * dot as f32 - f16_at(b, DMIN) * mins as f32)
}

pub(super) fn q4_k(row: &[u8], x: &QuantizedActs) -> f32 {
    use blocks::q4_k::{BYTES, QS};
    k_blocks(row, BYTES, x, |b, a, bs, dx| {
        k45_block(b, &b[QS..QS + 128], None, a, bs, dx)
    })
}

pub(super) fn q5_k(row: &[u8], x: &QuantizedActs) -> f32 {
    use blocks::q5_k::{BYTES, QH, QS};
    k_blocks(row, BYTES, x, |b, a, bs, dx| {
        k45_block(b, &b[QS..QS + 128], Some(&b[QH..QH + 32]), a, bs, dx)
    })
}

pub(super) fn q6_k(row: &[u8], x: &QuantizedActs) -> f32 {
    use blocks::q6_k::*;
    k_blocks(row, BYTES, x, |b, a, _, dx| {
        let mut dot = 0i32;
        for h in 0..2 {
            let ql = &b[QL + 64 * h..QL + 64 * h + 64];
            let qh = &b[QH + 32 * h..QH + 32 * h + 32];
            for k in 0..4 {
                // Elements 128h + 32k + (0..32) span two 16-element scale groups.
                for g in 0..2 {
                    let mut sub = 0i32;
                    for l in 16 * g..16 * g + 16 {
                        let lo = (ql[32 * (k % 2) + l] >> (4 * (k / 2))) & 0xf;
                        let hi = (qh[l] >> (2 * k)) & 3;
                        let q = i32::from(lo | (hi << 4)) - 32;
                        sub += q * i32::from(a[128 * h + 32 * k + l]);
                    }
                    dot += i32::from(b[SCALES + 8 * h + 2 * k + g] as i8) * sub;
                }
            }
        }
        dx * f16_at(b, D) * dot as f32
    })
}

/// Float rows against f32 activations, with eight independent accumulators so the
/// compiler can keep them in one vector register.
#[inline]
fn float_dot<const W: usize>(row: &[u8], x: &[f32], widen: impl Fn(&[u8]) -> f32) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let rows = row.chunks_exact(W * LANES);
    let tail_row = rows.remainder();
    let xs = x.chunks_exact(LANES);
    let tail_x = xs.remainder();
    for (r, xs) in rows.zip(xs) {
        for k in 0..LANES {
            acc[k] += widen(&r[W * k..W * k + W]) * xs[k];
        }
    }
    let tail: f32 = tail_row
        .chunks_exact(W)
        .zip(tail_x)
        .map(|(r, &x)| widen(r) * x)
        .sum();
    acc.iter().sum::<f32>() + tail
}

pub(super) fn f32_(row: &[u8], x: &QuantizedActs) -> f32 {
    float_dot::<4>(row, &x.f, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub(super) fn f16_(row: &[u8], x: &QuantizedActs) -> f32 {
    float_dot::<2>(row, &x.f, |b| f16_at(b, 0))
}

pub(super) fn bf16_(row: &[u8], x: &QuantizedActs) -> f32 {
    float_dot::<2>(row, &x.f, |b| {
        f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
    })
}
