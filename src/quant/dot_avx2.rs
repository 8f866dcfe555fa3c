//! AVX2 + FMA + F16C dot-product kernels (x86_64).
//!
//! The weights stay in their block format and are unpacked in registers to unsigned or
//! signed 8-bit codes, then multiplied against the int8 activations with
//! `vpmaddubsw` (u8 x i8 -> adjacent pairs summed to i16) and `vpmaddwd` (i16 x i16 ->
//! pairs summed to i32, which also applies the k-quant sub-block scales). Each block's
//! integer result is scaled once in f32 and accumulated with an FMA. Nothing saturates:
//! - `vpmaddubsw` on a 5-bit code and a code in -127..=127: |pair| <= 2 * 31 * 127;
//!   on Q6_K's 6-bit codes: 2 * 63 * 127 = 16002; on |Q8_0 code| <= 128 (the absolute
//!   value of -128) with the activation carrying the sign: 2 * 128 * 127 = 32512; all
//!   below i16::MAX = 32767.
//! - `vpmaddwd` of those with a scale of at most 128: below 2^23 per lane, summed over
//!   at most 16 products per lane per super-block.
//!
//! Only rows whose block count and activation layout the dispatcher checked reach these
//! kernels, but they rely on that for correctness only: every load reads through a
//! fixed-size array reference obtained by checked slicing.

use std::arch::x86_64::*;
use std::sync::OnceLock;

mod tile;
mod vnni;
mod vnni_k;

pub(super) use vnni::{DecodedFns, Prepared, Vnni};

use super::acts::QuantizedActs;
use super::blocks::{self, QK, f16_bits_at, k4_scales_mins, u32_at};
use super::dot_scalar::RowFn;
use crate::format::ggml_type::{GgmlType, QK_K};

/// Proof that this CPU runs AVX2, FMA and F16C: only [`Avx2::detect`] makes one.
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx2(());

impl Avx2 {
    /// The token when the CPU has the features (checked once, then cached).
    pub(super) fn detect() -> Option<Avx2> {
        static HAVE: OnceLock<bool> = OnceLock::new();
        let have = *HAVE.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        });
        have.then_some(Avx2(()))
    }

    /// The AVX2 row kernel for weights of type `wty`.
    pub(super) fn kernel(self, wty: GgmlType) -> RowFn {
        match wty {
            GgmlType::F32 => entry::f32_,
            GgmlType::F16 => entry::f16_,
            GgmlType::BF16 => entry::bf16_,
            GgmlType::Q4_0 => entry::q4_0,
            GgmlType::Q4_1 => entry::q4_1,
            GgmlType::Q5_0 => entry::q5_0,
            GgmlType::Q5_1 => entry::q5_1,
            GgmlType::Q8_0 => entry::q8_0,
            GgmlType::Q4K => entry::q4_k,
            GgmlType::Q5K => entry::q5_k,
            GgmlType::Q6K => entry::q6_k,
        }
    }
}

/// Plain-fn wrappers so the kernels fit in a [`RowFn`] table.
macro_rules! entries {
    ($($name:ident),*) => {
        mod entry {
            use super::QuantizedActs;
            $(
                pub(super) fn $name(row: &[u8], x: &QuantizedActs) -> f32 {
                    // SAFETY: these wrappers are private to this file and only handed out
                    // by `Avx2::kernel`, which needs an `Avx2` token, and tokens exist only
                    // once the CPU was seen to support avx2, fma and f16c.
                    unsafe { super::$name(row, x) }
                }
            )*
        }
    };
}
entries!(
    f32_, f16_, bf16_, q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k
);

// ---------------------------------------------------------------------------------
// Small helpers. All loads take fixed-size array references, so their bounds are
// proven by the slicing that made the reference.

/// `N` elements of `s` from `off`, as an array reference (panics if out of range).
#[inline(always)]
fn arr<T, const N: usize>(s: &[T], off: usize) -> &[T; N] {
    s[off..off + N].try_into().expect("slice of length N")
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_u8x32(b: &[u8; 32]) -> __m256i {
    // SAFETY: `b` refers to 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_i8x32(a: &[i8; 32]) -> __m256i {
    // SAFETY: as in `load_u8x32`.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_i16x16(a: &[i16; 16]) -> __m256i {
    // SAFETY: `a` refers to 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_u8x16(b: &[u8; 16]) -> __m128i {
    // SAFETY: `b` refers to 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_u8x8(b: &[u8; 8]) -> __m128i {
    _mm_cvtsi64_si128(i64::from_le_bytes(*b))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_f32x8(b: &[u8; 32]) -> __m256 {
    // SAFETY: `b` refers to 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_xf32x8(x: &[f32; 8]) -> __m256 {
    // SAFETY: `x` refers to 8 readable f32; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

/// How far ahead of the kernel the weights are prefetched. Decoding streams the whole
/// model from DRAM; the hardware prefetcher alone keeps too few lines in flight and
/// stops at 4 KB page boundaries, while a software prefetch a page ahead keeps a steady
/// stream going (1.3-1.6x on the `stream` benches; 4 to 6 KB measured alike, 1 and 2 KB
/// less, 8 KB slightly less).
const PREFETCH_BYTES: usize = 4096;

/// Prefetches the cache line `PREFETCH_BYTES + extra` past `p`. Past the end of a row
/// this reaches into the next row of the matrix, which is what `matvec_rows` reads next.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch_ahead(p: *const u8, extra: usize) {
    // A prefetch is only a hint: it never faults, so the address may lie anywhere,
    // including past the end of the weights (hence `wrapping_add`).
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES + extra).cast());
}

/// One f16 (given by its bits) widened by F16C, avoiding a runtime-dispatched call.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_to_f32(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Eight i32 lanes whose total is sum(u[i] * a[i]) for unsigned codes `u`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8_i8(u: __m256i, a: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1))
}

/// Eight i32 lanes whose total is sum(w[i] * a[i]) for signed codes `w`: `vpmaddubsw`
/// needs one unsigned operand, so it gets |w| and `a` takes over w's sign (an `a` of -128
/// would break this, which is why activation codes stop at -127).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_i8_i8(w: __m256i, a: __m256i) -> __m256i {
    dot_u8_i8(_mm256_abs_epi8(w), _mm256_sign_epi8(a, w))
}

/// The 32 four-bit codes of a simple block as bytes in element order: the low nibbles
/// of `qs` are elements 0..16, the high nibbles 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    let q = load_u8x16(qs);
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(q), q);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// Byte j is 0xff where bit j of `bits` is set, 0 elsewhere.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bit_mask(bits: u32) -> __m256i {
    // Copy byte j / 8 of `bits` into byte j, then test bit j % 8 of it.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        ),
    );
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select)
}

// ---------------------------------------------------------------------------------
// Simple formats: one 32-element block against one 32-code activation block.

/// What one simple block contributes: `scale * total(lanes) + extra`.
struct Part {
    scale: f32,
    lanes: __m256i,
    extra: f32,
}

/// Row loop shared by the simple formats. Two independent accumulators hide the FMA
/// latency that would otherwise serialize consecutive blocks.
macro_rules! simple_kernel {
    ($name:ident, $bytes:expr, $block:ident) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name(row: &[u8], x: &QuantizedActs) -> f32 {
            let acts = x.qs.chunks_exact(QK).zip(x.d.iter().zip(&x.s));
            let mut blocks = row.chunks_exact($bytes).zip(acts);
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let (mut extra0, mut extra1) = (0f32, 0f32);
            loop {
                let Some((b, (a, (&dx, &s)))) = blocks.next() else {
                    break;
                };
                // One line per pair of blocks (36 to 48 bytes each) keeps up with the
                // stream without flooding the load ports.
                prefetch_ahead(b.as_ptr(), 0);
                let p = $block(arr(b, 0), arr(a, 0), dx, s);
                acc0 = _mm256_fmadd_ps(_mm256_set1_ps(p.scale), _mm256_cvtepi32_ps(p.lanes), acc0);
                extra0 += p.extra;
                let Some((b, (a, (&dx, &s)))) = blocks.next() else {
                    break;
                };
                let p = $block(arr(b, 0), arr(a, 0), dx, s);
                acc1 = _mm256_fmadd_ps(_mm256_set1_ps(p.scale), _mm256_cvtepi32_ps(p.lanes), acc1);
                extra1 += p.extra;
            }
            hsum_ps(_mm256_add_ps(acc0, acc1)) + (extra0 + extra1)
        }
    };
}

simple_kernel!(q4_0, blocks::q4_0::BYTES, q4_0_block);
simple_kernel!(q4_1, blocks::q4_1::BYTES, q4_1_block);
simple_kernel!(q5_0, blocks::q5_0::BYTES, q5_0_block);
simple_kernel!(q5_1, blocks::q5_1::BYTES, q5_1_block);
simple_kernel!(q8_0, blocks::q8_0::BYTES, q8_0_block);

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_block(b: &[u8; blocks::q4_0::BYTES], a: &[i8; QK], dx: f32, _s: f32) -> Part {
    use blocks::q4_0::*;
    let w = _mm256_sub_epi8(nibbles(arr(b, QS)), _mm256_set1_epi8(8));
    Part {
        scale: f16_to_f32(f16_bits_at(b, D)) * dx,
        lanes: dot_i8_i8(w, load_i8x32(a)),
        extra: 0.0,
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_block(b: &[u8; blocks::q4_1::BYTES], a: &[i8; QK], dx: f32, s: f32) -> Part {
    use blocks::q4_1::*;
    // The offset m meets the activations' own sum: sum(m * dx * a) = m * s.
    Part {
        scale: f16_to_f32(f16_bits_at(b, D)) * dx,
        lanes: dot_u8_i8(nibbles(arr(b, QS)), load_i8x32(a)),
        extra: f16_to_f32(f16_bits_at(b, M)) * s,
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0_block(b: &[u8; blocks::q5_0::BYTES], a: &[i8; QK], dx: f32, _s: f32) -> Part {
    use blocks::q5_0::*;
    // q - 16 as a signed byte: with the 5th bit set it is the nibble itself, without
    // it the nibble minus 16, i.e. the nibble with the top four bits set.
    let minus16 = _mm256_andnot_si256(bit_mask(u32_at(b, QH)), _mm256_set1_epi8(0xf0u8 as i8));
    let w = _mm256_or_si256(nibbles(arr(b, QS)), minus16);
    Part {
        scale: f16_to_f32(f16_bits_at(b, D)) * dx,
        lanes: dot_i8_i8(w, load_i8x32(a)),
        extra: 0.0,
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_1_block(b: &[u8; blocks::q5_1::BYTES], a: &[i8; QK], dx: f32, s: f32) -> Part {
    use blocks::q5_1::*;
    let fifth = _mm256_and_si256(bit_mask(u32_at(b, QH)), _mm256_set1_epi8(0x10));
    let w = _mm256_or_si256(nibbles(arr(b, QS)), fifth);
    Part {
        scale: f16_to_f32(f16_bits_at(b, D)) * dx,
        lanes: dot_u8_i8(w, load_i8x32(a)),
        extra: f16_to_f32(f16_bits_at(b, M)) * s,
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_block(b: &[u8; blocks::q8_0::BYTES], a: &[i8; QK], dx: f32, _s: f32) -> Part {
    use blocks::q8_0::*;
    let w = load_u8x32(arr(b, QS));
    Part {
        scale: f16_to_f32(f16_bits_at(b, D)) * dx,
        lanes: dot_i8_i8(w, load_i8x32(a)),
        extra: 0.0,
    }
}

// ---------------------------------------------------------------------------------
// k-quants: one 256-element super-block at a time.

/// A pshufb control that copies i16 lane `j` of each 128-bit half to all of its lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pick_i16(j: i16) -> __m256i {
    _mm256_set1_epi16(((2 * j + 1) << 8) | (2 * j))
}

/// Like [`pick_i16`], but lane `lo` in the low 128 bits and lane `hi` in the high.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pick_i16_pair(lo: i16, hi: i16) -> __m256i {
    _mm256_set_m128i(
        _mm_set1_epi16(((2 * hi + 1) << 8) | (2 * hi)),
        _mm_set1_epi16(((2 * lo + 1) << 8) | (2 * lo)),
    )
}

/// Integer dot of a Q4_K / Q5_K super-block's codes with its activations, each of the
/// eight 32-element sub-blocks weighted by its 6-bit scale (`scales`, byte s = sub-block
/// s). `FIVE` adds the 5th bits of Q5_K from `qh`: sub-block s keeps them in bit s.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k45_dot<const FIVE: bool>(
    qs: &[u8; 128],
    qh: &[u8; 32],
    scales: u64,
    a: &[i8; QK_K],
) -> __m256i {
    // Both 128-bit halves hold the eight scales as i16, for `pick_i16` to broadcast.
    let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(scales as i64)));
    let low4 = _mm256_set1_epi8(0x0f);
    let mut high = if FIVE {
        load_u8x32(qh)
    } else {
        _mm256_setzero_si256()
    };
    let mut sum = _mm256_setzero_si256();
    for c in 0..4 {
        let q = load_u8x32(arr(qs, 32 * c));
        let mut lo = _mm256_and_si256(q, low4);
        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4);
        if FIVE {
            // Bits 2c and 2c + 1 of qh, brought to bit 0 and 1 by the shift below, go to
            // bit 4 of the codes. (16-bit shifts are fine: each byte is masked first.)
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
        let s = 2 * c as i16;
        let p_lo = _mm256_maddubs_epi16(lo, load_i8x32(arr(a, 64 * c)));
        let p_hi = _mm256_maddubs_epi16(hi, load_i8x32(arr(a, 64 * c + 32)));
        let p_lo = _mm256_madd_epi16(p_lo, _mm256_shuffle_epi8(sc, pick_i16(s)));
        let p_hi = _mm256_madd_epi16(p_hi, _mm256_shuffle_epi8(sc, pick_i16(s + 1)));
        sum = _mm256_add_epi32(sum, _mm256_add_epi32(p_lo, p_hi));
    }
    sum
}

/// Lanes totalling sum over sub-blocks s of mins[s] * (activation code sum of s), from
/// the 16-element sums: lane pairs (2s, 2s + 1) of `bsums` times mins[s] twice.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k45_mins(mins: u64, bsums: &[i16; 16]) -> __m256i {
    let twice = _mm_shuffle_epi8(
        _mm_cvtsi64_si128(mins as i64),
        _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7),
    );
    _mm256_madd_epi16(load_i16x16(bsums), _mm256_cvtepu8_epi16(twice))
}

/// The total of `v`'s eight i32 lanes (exact: the k-quant sums never overflow).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
}

/// Lane j: the total of `v[j]`'s eight i32 lanes (exact), for eight vectors at once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum8_epi32(v: [__m256i; 8]) -> __m256i {
    // After two rounds of pairwise sums, 128-bit half h of `b[k]` holds the sums of lanes
    // 4h..4h + 4 of v[4k..4k + 4], one per lane.
    let a = [0, 2, 4, 6].map(|i| _mm256_hadd_epi32(v[i], v[i + 1]));
    let b = [0, 2].map(|i| _mm256_hadd_epi32(a[i], a[i + 1]));
    let lo = _mm256_permute2x128_si256::<0x20>(b[0], b[1]);
    let hi = _mm256_permute2x128_si256::<0x31>(b[0], b[1]);
    _mm256_add_epi32(lo, hi)
}

/// One super-block of a k-quant row added to the row's f32 sum, the one rounding rule
/// every kernel of the K formats follows (one token or a tile, AVX2 or AVX-512, rows
/// side by side or one at a time), so that all of them agree bit for bit: the block's
/// integer dot `dot` (sub-block scales applied, exact in i32) and, for Q4_K / Q5_K, its
/// integer mins term `min`, each converted once, then `acc + d * dot` and `- dmin * min`
/// as two fused multiply-adds. `d` and `dmin` already carry the token's scale dx
/// (`f16(d) * dx`, one f32 product).
#[inline]
pub(in crate::quant) fn k_block_sum(acc: f32, d: f32, dot: i32, dmin: f32, min: i32) -> f32 {
    (-dmin).mul_add(min as f32, d.mul_add(dot as f32, acc))
}

/// [`k_block_sum`] for Q6_K, which has no mins (its -32 code bias is inside `dot`).
#[inline]
pub(in crate::quant) fn k6_block_sum(acc: f32, d: f32, dot: i32) -> f32 {
    d.mul_add(dot as f32, acc)
}

/// Row loop of Q4_K / Q5_K: x = d*sc*q - dmin*m per sub-block, so a super-block adds
/// dx * (d * dot - dmin * mins), by [`k_block_sum`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k45_row<const FIVE: bool>(row: &[u8], x: &QuantizedActs) -> f32 {
    use blocks::q4_k::{D, DMIN, SCALES};
    let (bytes, qs_at, qh_at) = if FIVE {
        (blocks::q5_k::BYTES, blocks::q5_k::QS, blocks::q5_k::QH)
    } else {
        // Q4_K has no qh: any 32 bytes will do, `k45_dot` ignores them.
        (blocks::q4_k::BYTES, blocks::q4_k::QS, blocks::q4_k::QS)
    };
    let acts =
        x.qs.chunks_exact(QK_K)
            .zip(x.bsums.chunks_exact(QK_K / 16).zip(&x.d));
    let mut acc = 0.0f32;
    for (b, (a, (bs, &dx))) in row.chunks_exact(bytes).zip(acts) {
        // A 144- or 176-byte super-block spans three cache lines.
        for l in 0..3 {
            prefetch_ahead(b.as_ptr(), 64 * l);
        }
        let (scales, mins) = k4_scales_mins(&b[SCALES..SCALES + 12]);
        let dot = k45_dot::<FIVE>(arr(b, qs_at), arr(b, qh_at), scales, arr(a, 0));
        let min = k45_mins(mins, arr(bs, 0));
        let d = f16_to_f32(f16_bits_at(b, D)) * dx;
        let dmin = f16_to_f32(f16_bits_at(b, DMIN)) * dx;
        acc = k_block_sum(acc, d, hsum_epi32(dot), dmin, hsum_epi32(min));
    }
    acc
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k(row: &[u8], x: &QuantizedActs) -> f32 {
    k45_row::<false>(row, x)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_k(row: &[u8], x: &QuantizedActs) -> f32 {
    k45_row::<true>(row, x)
}

/// Q6_K: codes 0..=63 go into `vpmaddubsw` unsigned; their -32 bias is taken off at the
/// end in integers, as 32 * sum(scale * 16-element activation sum).
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k(row: &[u8], x: &QuantizedActs) -> f32 {
    use blocks::q6_k::*;
    let acts =
        x.qs.chunks_exact(QK_K)
            .zip(x.bsums.chunks_exact(QK_K / 16).zip(&x.d));
    let low4 = _mm256_set1_epi8(0x0f);
    let mut acc = 0.0f32;
    for (b, (a, (bs, &dx))) in row.chunks_exact(BYTES).zip(acts) {
        // A 210-byte super-block spans four cache lines.
        for l in 0..4 {
            prefetch_ahead(b.as_ptr(), 64 * l);
        }
        let a: &[i8; QK_K] = arr(a, 0);
        let mut sum = _mm256_setzero_si256();
        for h in 0..2 {
            // The half's eight scales as i16 in both 128-bit lanes.
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
                // Elements 32k..32k+16 of the half use scale 2k, the next 16 scale 2k + 1.
                let p = _mm256_maddubs_epi16(q, load_i8x32(arr(a, 128 * h + 32 * k)));
                let s = _mm256_shuffle_epi8(sc, pick_i16_pair(2 * k as i16, 2 * k as i16 + 1));
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, s));
            }
        }
        let scales = _mm256_cvtepi8_epi16(load_u8x16(arr(b, SCALES)));
        let bias = _mm256_madd_epi16(load_i16x16(arr(bs, 0)), scales);
        sum = _mm256_sub_epi32(sum, _mm256_slli_epi32::<5>(bias));
        let d = f16_to_f32(f16_bits_at(b, D)) * dx;
        acc = k6_block_sum(acc, d, hsum_epi32(sum));
    }
    acc
}

// ---------------------------------------------------------------------------------
// Float formats against f32 activations: 32 elements per step in four accumulators.

macro_rules! float_kernel {
    ($name:ident, $width:expr, |$b:ident| $widen8:expr, |$t:ident| $widen1:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name(row: &[u8], x: &QuantizedActs) -> f32 {
            const W: usize = $width;
            let rows = row.chunks_exact(32 * W);
            let xs = x.f.chunks_exact(32);
            let (tail_row, tail_x) = (rows.remainder(), xs.remainder());
            let mut acc = [_mm256_setzero_ps(); 4];
            for (r, xs) in rows.zip(xs) {
                for l in 0..W / 2 {
                    prefetch_ahead(r.as_ptr(), 64 * l);
                }
                for k in 0..4 {
                    let $b: &[u8; 8 * W] = arr(r, 8 * W * k);
                    acc[k] = _mm256_fmadd_ps($widen8, load_xf32x8(arr(xs, 8 * k)), acc[k]);
                }
            }
            let tail: f32 = tail_row
                .chunks_exact(W)
                .zip(tail_x)
                .map(|($t, &x)| $widen1 * x)
                .sum();
            hsum_ps(_mm256_add_ps(
                _mm256_add_ps(acc[0], acc[1]),
                _mm256_add_ps(acc[2], acc[3]),
            )) + tail
        }
    };
}

float_kernel!(f32_, 4, |b| load_f32x8(b), |t| f32::from_le_bytes([
    t[0], t[1], t[2], t[3]
]));
float_kernel!(f16_, 2, |b| _mm256_cvtph_ps(load_u8x16(b)), |t| f16_to_f32(
    u16::from_le_bytes([t[0], t[1]])
));
float_kernel!(
    bf16_,
    2,
    |b| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(load_u8x16(
        b
    )))),
    |t| f32::from_bits(u32::from(u16::from_le_bytes([t[0], t[1]])) << 16)
);
