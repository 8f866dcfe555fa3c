//! Tiled AVX2 kernels: one weight row against a tile of up to `SMALL_TILE` (4) activation rows.
//!
//! A prefill dots every weight row against many tokens. The one-token kernels of the
//! parent module would unpack a block's nibbles, high bits and sub-block scales once per
//! token; here each block is unpacked once into registers (spilled to the stack where
//! they run out, which is still L1) and then multiplied against every activation row of
//! the tile.
//!
//! Results are bit-for-bit those of the one-token kernels, for every (row, token): the
//! integer block sums are exact (no lane can overflow, see the parent module), so their
//! order does not matter, and every float operation (block scale `d * dx`, the FMA into
//! the token's accumulator, the two-accumulator split of the simple formats, the final
//! horizontal sums) is the same operation in the same order as in the one-token kernel,
//! kept in accumulators of its own per token.

use std::arch::x86_64::*;

use super::super::acts::QuantizedActs;
use super::super::blocks::{self, QK, f16_bits_at, k4_scales_mins, u32_at};
use super::super::dot::TileFn;
use super::{
    arr, bit_mask, dot_u8_i8, f16_to_f32, hsum_epi32, hsum_ps, k_block_sum, k6_block_sum, k45_mins,
    load_i8x32, load_i16x16, load_u8x8, load_u8x16, load_u8x32, nibbles, pick_i16, pick_i16_pair,
    prefetch_ahead,
};
use crate::format::ggml_type::{GgmlType, QK_K};

impl super::Avx2 {
    /// The tiled kernel for weights of type `wty`, where there is one (the float
    /// formats have none: their one-token kernels decode next to nothing).
    pub(in crate::quant) fn tile_kernel(self, wty: GgmlType) -> Option<TileFn> {
        Some(match wty {
            GgmlType::Q4_0 => entry::q4_0,
            GgmlType::Q4_1 => entry::q4_1,
            GgmlType::Q5_0 => entry::q5_0,
            GgmlType::Q5_1 => entry::q5_1,
            GgmlType::Q8_0 => entry::q8_0,
            GgmlType::Q4K => entry::q4_k,
            GgmlType::Q5K => entry::q5_k,
            GgmlType::Q6K => entry::q6_k,
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => return None,
        })
    }
}

/// Plain-fn wrappers: pick the tile size, as a const generic so that the per-token
/// accumulators are fixed-size arrays the compiler keeps in registers.
macro_rules! entries {
    ($($name:ident),*) => {
        mod entry {
            use super::QuantizedActs;
            $(
                pub(super) fn $name(row: &[u8], xs: &[QuantizedActs], out: &mut [f32]) {
                    assert_eq!(xs.len(), out.len(), "one output per activation row");
                    // SAFETY (every arm): these wrappers are private to this file and only
                    // handed out by `Avx2::tile_kernel`, which needs an `Avx2` token, and
                    // tokens exist only once the CPU was seen to support avx2, fma and f16c.
                    match xs.len() {
                        1 => unsafe { super::$name::<1>(row, fixed(xs), fixed_mut(out)) },
                        2 => unsafe { super::$name::<2>(row, fixed(xs), fixed_mut(out)) },
                        3 => unsafe { super::$name::<3>(row, fixed(xs), fixed_mut(out)) },
                        4 => unsafe { super::$name::<4>(row, fixed(xs), fixed_mut(out)) },
                        n => panic!("a tile holds 1 to {} activation rows, not {n}", crate::quant::dot::SMALL_TILE),
                    }
                }
            )*

            fn fixed<const T: usize>(xs: &[QuantizedActs]) -> &[QuantizedActs; T] {
                xs.try_into().expect("length matched above")
            }

            fn fixed_mut<const T: usize>(out: &mut [f32]) -> &mut [f32; T] {
                out.try_into().expect("length matched above")
            }
        }
    };
}
entries!(q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k);

// ---------------------------------------------------------------------------------
// Simple formats.

/// One unpacked simple block: the codes as `vpmaddubsw` wants them (signed ones get
/// their sign moved onto the activations per token, as `dot_i8_i8` does), the f16 scale
/// and offset widened once.
struct Simple {
    w: __m256i,
    d: f32,
    m: f32,
}

/// The tile loop shared by the simple formats: `SIGNED` codes go through
/// |w| and sign(a, w); `OFFSET` formats add `m * s` per block, the others add 0.0 as the
/// one-token kernel does (and never `0.0 * s`, which would differ for a NaN `s`).
macro_rules! simple_tile {
    ($name:ident, $bytes:expr, $decode:ident, $signed:expr, $offset:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name<const T: usize>(row: &[u8], xs: &[QuantizedActs; T], out: &mut [f32; T]) {
            // Accumulator 0 takes the even blocks, 1 the odd ones, like the one-token
            // kernel's pair loop.
            let mut acc = [[_mm256_setzero_ps(); T]; 2];
            let mut extra = [[0f32; T]; 2];
            for (bi, b) in row.chunks_exact($bytes).enumerate() {
                let p = bi % 2;
                if p == 0 {
                    prefetch_ahead(b.as_ptr(), 0);
                }
                let blk = $decode(arr(b, 0));
                let abs_w = if $signed {
                    _mm256_abs_epi8(blk.w)
                } else {
                    blk.w
                };
                for j in 0..T {
                    let x = &xs[j];
                    let a = load_i8x32(arr(&x.qs, QK * bi));
                    let (dx, s) = (x.d[bi], x.s[bi]);
                    let a = if $signed {
                        _mm256_sign_epi8(a, blk.w)
                    } else {
                        a
                    };
                    let lanes = dot_u8_i8(abs_w, a);
                    acc[p][j] = _mm256_fmadd_ps(
                        _mm256_set1_ps(blk.d * dx),
                        _mm256_cvtepi32_ps(lanes),
                        acc[p][j],
                    );
                    extra[p][j] += if $offset { blk.m * s } else { 0.0 };
                }
            }
            for j in 0..T {
                out[j] = hsum_ps(_mm256_add_ps(acc[0][j], acc[1][j])) + (extra[0][j] + extra[1][j]);
            }
        }
    };
}

simple_tile!(q4_0, blocks::q4_0::BYTES, q4_0_block, true, false);
simple_tile!(q4_1, blocks::q4_1::BYTES, q4_1_block, false, true);
simple_tile!(q5_0, blocks::q5_0::BYTES, q5_0_block, true, false);
simple_tile!(q5_1, blocks::q5_1::BYTES, q5_1_block, false, true);
simple_tile!(q8_0, blocks::q8_0::BYTES, q8_0_block, true, false);

// The decoders below unpack exactly as the parent module's `q*_block` functions do.

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_block(b: &[u8; blocks::q4_0::BYTES]) -> Simple {
    use blocks::q4_0::*;
    Simple {
        w: _mm256_sub_epi8(nibbles(arr(b, QS)), _mm256_set1_epi8(8)),
        d: f16_to_f32(f16_bits_at(b, D)),
        m: 0.0,
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_block(b: &[u8; blocks::q4_1::BYTES]) -> Simple {
    use blocks::q4_1::*;
    Simple {
        w: nibbles(arr(b, QS)),
        d: f16_to_f32(f16_bits_at(b, D)),
        m: f16_to_f32(f16_bits_at(b, M)),
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0_block(b: &[u8; blocks::q5_0::BYTES]) -> Simple {
    use blocks::q5_0::*;
    let minus16 = _mm256_andnot_si256(bit_mask(u32_at(b, QH)), _mm256_set1_epi8(0xf0u8 as i8));
    Simple {
        w: _mm256_or_si256(nibbles(arr(b, QS)), minus16),
        d: f16_to_f32(f16_bits_at(b, D)),
        m: 0.0,
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_1_block(b: &[u8; blocks::q5_1::BYTES]) -> Simple {
    use blocks::q5_1::*;
    let fifth = _mm256_and_si256(bit_mask(u32_at(b, QH)), _mm256_set1_epi8(0x10));
    Simple {
        w: _mm256_or_si256(nibbles(arr(b, QS)), fifth),
        d: f16_to_f32(f16_bits_at(b, D)),
        m: f16_to_f32(f16_bits_at(b, M)),
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_block(b: &[u8; blocks::q8_0::BYTES]) -> Simple {
    use blocks::q8_0::*;
    Simple {
        w: load_u8x32(arr(b, QS)),
        d: f16_to_f32(f16_bits_at(b, D)),
        m: 0.0,
    }
}

// ---------------------------------------------------------------------------------
// k-quants.

/// Q4_K / Q5_K: each pair of 32-element sub-blocks unpacked to bytes with their scales
/// broadcast as i16, then dotted against every token; per token the one-token kernel's
/// integer sums and `k_block_sum`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k45<const FIVE: bool, const T: usize>(row: &[u8], xs: &[QuantizedActs; T], out: &mut [f32; T]) {
    use blocks::q4_k::{D, DMIN, SCALES};
    let (bytes, qs_at, qh_at) = if FIVE {
        (blocks::q5_k::BYTES, blocks::q5_k::QS, blocks::q5_k::QH)
    } else {
        (blocks::q4_k::BYTES, blocks::q4_k::QS, blocks::q4_k::QS)
    };
    let low4 = _mm256_set1_epi8(0x0f);
    let mut acc = [0.0f32; T];
    for (bi, b) in row.chunks_exact(bytes).enumerate() {
        for l in 0..3 {
            prefetch_ahead(b.as_ptr(), 64 * l);
        }
        let (scales, mins) = k4_scales_mins(&b[SCALES..SCALES + 12]);
        let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(scales as i64)));
        let qs: &[u8; 128] = arr(b, qs_at);
        let mut high = if FIVE {
            load_u8x32(arr(b, qh_at))
        } else {
            _mm256_setzero_si256()
        };
        // Sub-block pair by pair, each decoded once and then dotted against every token,
        // so that only the pair and the tile's integer sums need registers.
        let a: [&[i8; QK_K]; T] = std::array::from_fn(|j| arr(&xs[j].qs, QK_K * bi));
        let mut sum = [_mm256_setzero_si256(); T];
        for c in 0..4 {
            let v = load_u8x32(arr(qs, 32 * c));
            let mut lo = _mm256_and_si256(v, low4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4);
            if FIVE {
                // As in `k45_dot`: bits 2c and 2c + 1 of qh become bit 4 of the codes.
                lo = _mm256_or_si256(
                    lo,
                    _mm256_slli_epi16::<4>(_mm256_and_si256(high, _mm256_set1_epi8(1))),
                );
                hi = _mm256_or_si256(
                    hi,
                    _mm256_slli_epi16::<3>(_mm256_and_si256(high, _mm256_set1_epi8(2))),
                );
                high = _mm256_srli_epi16::<2>(high);
            }
            let s_lo = _mm256_shuffle_epi8(sc, pick_i16(2 * c as i16));
            let s_hi = _mm256_shuffle_epi8(sc, pick_i16(2 * c as i16 + 1));
            for j in 0..T {
                let p_lo = _mm256_maddubs_epi16(lo, load_i8x32(arr(a[j], 64 * c)));
                let p_hi = _mm256_maddubs_epi16(hi, load_i8x32(arr(a[j], 64 * c + 32)));
                let p =
                    _mm256_add_epi32(_mm256_madd_epi16(p_lo, s_lo), _mm256_madd_epi16(p_hi, s_hi));
                sum[j] = _mm256_add_epi32(sum[j], p);
            }
        }
        let dw = f16_to_f32(f16_bits_at(b, D));
        let dminw = f16_to_f32(f16_bits_at(b, DMIN));
        for j in 0..T {
            let x = &xs[j];
            let dx = x.d[bi];
            let sum = sum[j];
            let min = k45_mins(mins, arr(&x.bsums, QK_K / 16 * bi));
            acc[j] = k_block_sum(
                acc[j],
                dw * dx,
                hsum_epi32(sum),
                dminw * dx,
                hsum_epi32(min),
            );
        }
    }
    *out = acc;
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k<const T: usize>(row: &[u8], xs: &[QuantizedActs; T], out: &mut [f32; T]) {
    k45::<false, T>(row, xs, out)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_k<const T: usize>(row: &[u8], xs: &[QuantizedActs; T], out: &mut [f32; T]) {
    k45::<true, T>(row, xs, out)
}

/// Q6_K: the codes unpacked 32 at a time (elements 128h + 32k..+32) with their pair of
/// 16-element scales, each dotted against every token; per token the same unsigned dot
/// minus 32 * the scaled activation sums as the one-token kernel, and `k6_block_sum`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k<const T: usize>(row: &[u8], xs: &[QuantizedActs; T], out: &mut [f32; T]) {
    use blocks::q6_k::*;
    let low4 = _mm256_set1_epi8(0x0f);
    let mut acc = [0.0f32; T];
    for (bi, b) in row.chunks_exact(BYTES).enumerate() {
        for l in 0..4 {
            prefetch_ahead(b.as_ptr(), 64 * l);
        }
        let a: [&[i8; QK_K]; T] = std::array::from_fn(|j| arr(&xs[j].qs, QK_K * bi));
        let mut sum = [_mm256_setzero_si256(); T];
        for h in 0..2 {
            let sc =
                _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(load_u8x8(arr(b, SCALES + 8 * h))));
            let ql0 = load_u8x32(arr(b, QL + 64 * h));
            let ql1 = load_u8x32(arr(b, QL + 64 * h + 32));
            let qh = load_u8x32(arr(b, QH + 32 * h));
            let bits = |m: u8| _mm256_and_si256(qh, _mm256_set1_epi8(m as i8));
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(ql0, low4),
                    _mm256_slli_epi16::<4>(bits(0x03)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql1, low4),
                    _mm256_slli_epi16::<2>(bits(0x0c)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low4),
                    bits(0x30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low4),
                    _mm256_srli_epi16::<2>(bits(0xc0)),
                ),
            ];
            for (k, q) in q.into_iter().enumerate() {
                let s = _mm256_shuffle_epi8(sc, pick_i16_pair(2 * k as i16, 2 * k as i16 + 1));
                for j in 0..T {
                    let p = _mm256_maddubs_epi16(q, load_i8x32(arr(a[j], 128 * h + 32 * k)));
                    sum[j] = _mm256_add_epi32(sum[j], _mm256_madd_epi16(p, s));
                }
            }
        }
        let scales = _mm256_cvtepi8_epi16(load_u8x16(arr(b, SCALES)));
        let dw = f16_to_f32(f16_bits_at(b, D));
        for j in 0..T {
            let x = &xs[j];
            let bias = _mm256_madd_epi16(load_i16x16(arr(&x.bsums, QK_K / 16 * bi)), scales);
            let sum = _mm256_sub_epi32(sum[j], _mm256_slli_epi32::<5>(bias));
            acc[j] = k6_block_sum(acc[j], dw * x.d[bi], hsum_epi32(sum));
        }
    }
    *out = acc;
}
