//! AVX-512 VNNI tiles for Q4_K and Q6_K: one weight row against a tile of up to `TILE`
//! (8) tokens, as the AVX2 tiles of `tile.rs` (4), but 64 codes per step instead of 32: a
//! 512-bit register holds two of the AVX2 kernel's 32-code pieces side by side (Q4_K:
//! a chunk's low nibbles and its high nibbles; Q6_K: two consecutive code groups), each
//! half with its own sub-block scales, and `vpdpwssd` applies the scales and adds in one
//! instruction where AVX2 needs `vpmaddwd` and `vpaddd`.
//!
//! Results are bit-for-bit those of the one-token AVX2 kernels: every i32 lane of the
//! AVX2 tile's super-block sum is the total of the same integer products, here split
//! between the two halves and added back together (`fold`) before the one conversion to
//! f32; integer sums are exact (no lane overflows, see the parent module), and the float
//! steps after it are the AVX2 tile's own (`k_block_sum`), for the tile's tokens side by
//! side: lane j of one register is token j's sum, and the super-block totals of all the
//! tokens come out of one transposing reduction (`hsum8_epi32`).

use std::arch::x86_64::*;

use super::super::acts::QuantizedActs;
use super::super::blocks::{self, f16_bits_at, k4_scales_mins};
use super::super::dot::TileFn;
use super::vnni::Vnni;
use super::{arr, f16_to_f32, hsum8_epi32, k45_mins, load_i16x16, load_u8x16, load_u8x32};
use crate::format::ggml_type::{GgmlType, QK_K};

impl Vnni {
    /// The k-quant tile for `wty` weights, where there is one (Q4_K, Q6_K).
    pub(in crate::quant) fn k_tile_kernel(self, wty: GgmlType) -> Option<TileFn> {
        Some(match wty {
            GgmlType::Q4K => entry::q4_k,
            GgmlType::Q6K => entry::q6_k,
            _ => return None,
        })
    }
}

macro_rules! entries {
    ($($name:ident),*) => {
        mod entry {
            use super::QuantizedActs;
            $(
                pub(super) fn $name(row: &[u8], xs: &[QuantizedActs], out: &mut [f32]) {
                    assert_eq!(xs.len(), out.len(), "one output per activation row");
                    // SAFETY (every arm): these wrappers are private to this file and only
                    // handed out by `Vnni::k_tile_kernel`, which needs a `Vnni` token, and
                    // tokens exist only once the CPU was seen to support avx2, fma, f16c,
                    // avx512f, avx512bw and avx512vnni.
                    match xs.len() {
                        1 => unsafe { super::$name::<1>(row, fixed(xs), fixed_mut(out)) },
                        2 => unsafe { super::$name::<2>(row, fixed(xs), fixed_mut(out)) },
                        3 => unsafe { super::$name::<3>(row, fixed(xs), fixed_mut(out)) },
                        4 => unsafe { super::$name::<4>(row, fixed(xs), fixed_mut(out)) },
                        5 => unsafe { super::$name::<5>(row, fixed(xs), fixed_mut(out)) },
                        6 => unsafe { super::$name::<6>(row, fixed(xs), fixed_mut(out)) },
                        7 => unsafe { super::$name::<7>(row, fixed(xs), fixed_mut(out)) },
                        8 => unsafe { super::$name::<8>(row, fixed(xs), fixed_mut(out)) },
                        n => panic!("a tile holds 1 to {} activation rows, not {n}", crate::quant::dot::TILE),
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
entries!(q4_k, q6_k);

/// 64 activation codes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn load_i8x64(a: &[i8; 64]) -> __m512i {
    // SAFETY: `a` refers to 64 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
}

/// `lo` in the low 256 bits, `hi` in the high.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// The two halves' i32 lanes added: the eight lanes of the AVX2 tile's sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn fold(v: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
}

/// The word-index tables of `lane_scales`: table `k`'s 128-bit lane `l` repeats word
/// `4 k + l` of the scale vector (`k` = 0, 1 serve Q6_K's four-scale groups; Q4_K's
/// chunks use [`Q4K_PICKS`]).
static Q6K_PICKS: [[i16; 32]; 2] = picks([[0, 1, 2, 3], [4, 5, 6, 7]]);
/// Q4_K chunk `c`: lanes 0-1 sub-block 2c, lanes 2-3 sub-block 2c + 1.
static Q4K_PICKS: [[i16; 32]; 4] = picks([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7]]);

const fn picks<const N: usize>(lanes: [[i16; 4]; N]) -> [[i16; 32]; N] {
    let mut t = [[0i16; 32]; N];
    let mut k = 0;
    while k < N {
        let mut i = 0;
        while i < 32 {
            t[k][i] = lanes[k][i / 8];
            i += 1;
        }
        k += 1;
    }
    t
}

/// Eight i16 sub-block scales, widened from bytes (`signed`: i8, else u8), in the low
/// words of a register for [`lane_scales`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn scale_words(bytes: u64, signed: bool) -> __m512i {
    let v = _mm_cvtsi64_si128(bytes as i64);
    let w = if signed {
        _mm_cvtepi8_epi16(v)
    } else {
        _mm_cvtepu8_epi16(v)
    };
    _mm512_castsi128_si512(w)
}

/// Four of `words`' scales, one per 128-bit lane, each repeated over its lane, as
/// `pick` says (a table of [`picks`]): one `vpermw`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn lane_scales(words: __m512i, pick: &[i16; 32]) -> __m512i {
    // SAFETY: `pick` is 64 readable bytes; `loadu` has no alignment requirement.
    let idx = unsafe { _mm512_loadu_si512(pick.as_ptr().cast()) };
    _mm512_permutexvar_epi16(idx, words)
}

/// `acc + madd(a, b)` as the one `vpdpwssd` it names: left to itself the compiler splits
/// the intrinsic into `vpmaddwd` + `vpaddd`, one more instruction per token and step.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub(super) fn dpwssd(mut acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    // SAFETY: register-only arithmetic; the caller's target features include avx512vnni.
    unsafe {
        std::arch::asm!(
            "vpdpwssd {acc}, {a}, {b}",
            acc = inout(zmm_reg) acc,
            a = in(zmm_reg) a,
            b = in(zmm_reg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Q4_K: chunk c's 32 code bytes give sub-block 2c (low nibbles) in the low half and
/// 2c + 1 (high nibbles) in the high half, against 64 consecutive activations.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn q4_k<const T: usize>(row: &[u8], xs: &[QuantizedActs; T], out: &mut [f32; T]) {
    use blocks::q4_k::*;
    let low4 = _mm512_set1_epi8(0x0f);
    // Lane j: token j's row sum (the tile's tokens side by side, at most 8).
    let mut acc = _mm256_setzero_ps();
    for (bi, b) in row.chunks_exact(BYTES).enumerate() {
        for l in 0..3 {
            super::prefetch_ahead(b.as_ptr(), 64 * l);
        }
        let (scales, mins) = k4_scales_mins(&b[SCALES..SCALES + 12]);
        let sw = scale_words(scales, false);
        let a: [&[i8; QK_K]; T] = std::array::from_fn(|j| arr(&xs[j].qs, QK_K * bi));
        let mut sum = [_mm512_setzero_si512(); T];
        for (c, picks) in Q4K_PICKS.iter().enumerate() {
            let v = load_u8x32(arr(b, QS + 32 * c));
            let q = _mm512_and_si512(join(v, _mm256_srli_epi16::<4>(v)), low4);
            let s = lane_scales(sw, picks);
            for j in 0..T {
                let p = _mm512_maddubs_epi16(q, load_i8x64(arr(a[j], 64 * c)));
                sum[j] = dpwssd(sum[j], p, s);
            }
        }
        let dw = f16_to_f32(f16_bits_at(b, D));
        let dminw = f16_to_f32(f16_bits_at(b, DMIN));
        let dots = hsum8_epi32(std::array::from_fn(|j| {
            if j < T {
                fold(sum[j])
            } else {
                _mm256_setzero_si256()
            }
        }));
        let mins = hsum8_epi32(std::array::from_fn(|j| {
            if j < T {
                k45_mins(mins, arr(&xs[j].bsums, QK_K / 16 * bi))
            } else {
                _mm256_setzero_si256()
            }
        }));
        let dx = token_scales(xs, bi);
        // Lane j: `k_block_sum` for token j, the same two fused steps.
        let d = _mm256_mul_ps(_mm256_set1_ps(dw), dx);
        let dmin = _mm256_mul_ps(_mm256_set1_ps(dminw), dx);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dots), acc);
        acc = _mm256_fnmadd_ps(dmin, _mm256_cvtepi32_ps(mins), acc);
    }
    store_tokens(acc, out);
}

/// Lane j: token j's scale of super-block `bi` (0 past the tile's tokens).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn token_scales<const T: usize>(xs: &[QuantizedActs; T], bi: usize) -> __m256 {
    let mut d = [0f32; 8];
    for (dj, x) in d.iter_mut().zip(xs) {
        *dj = x.d[bi];
    }
    // SAFETY: 8 readable f32; `loadu` needs no alignment.
    unsafe { _mm256_loadu_ps(d.as_ptr()) }
}

/// Lanes 0..T of `acc` into `out`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn store_tokens<const T: usize>(acc: __m256, out: &mut [f32; T]) {
    let mut all = [0f32; 8];
    // SAFETY: 8 writable f32; `storeu` needs no alignment.
    unsafe { _mm256_storeu_ps(all.as_mut_ptr(), acc) };
    out.copy_from_slice(&all[..T]);
}

/// Q6_K: the AVX2 tile's code groups 2m and 2m + 1 of each half h side by side, with
/// their four 16-element scales one per 128-bit lane.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn q6_k<const T: usize>(row: &[u8], xs: &[QuantizedActs; T], out: &mut [f32; T]) {
    use blocks::q6_k::*;
    let low4 = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    for (bi, b) in row.chunks_exact(BYTES).enumerate() {
        for l in 0..4 {
            super::prefetch_ahead(b.as_ptr(), 64 * l);
        }
        let a: [&[i8; QK_K]; T] = std::array::from_fn(|j| arr(&xs[j].qs, QK_K * bi));
        let mut sum = [_mm512_setzero_si512(); T];
        for h in 0..2 {
            let sb: [u8; 8] = *arr(b, SCALES + 8 * h);
            let sw = scale_words(u64::from_le_bytes(sb), true);
            let ql0 = load_u8x32(arr(b, QL + 64 * h));
            let ql1 = load_u8x32(arr(b, QL + 64 * h + 32));
            let qh = load_u8x32(arr(b, QH + 32 * h));
            let bits = |m: u8| _mm256_and_si256(qh, _mm256_set1_epi8(m as i8));
            // The same four code groups as the AVX2 tile, paired.
            let q = [
                join(
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, low4),
                        _mm256_slli_epi16::<4>(bits(0x03)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, low4),
                        _mm256_slli_epi16::<2>(bits(0x0c)),
                    ),
                ),
                join(
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low4),
                        bits(0x30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low4),
                        _mm256_srli_epi16::<2>(bits(0xc0)),
                    ),
                ),
            ];
            for (m, q) in q.into_iter().enumerate() {
                let s = lane_scales(sw, &Q6K_PICKS[m]);
                for j in 0..T {
                    let p = _mm512_maddubs_epi16(q, load_i8x64(arr(a[j], 128 * h + 64 * m)));
                    sum[j] = dpwssd(sum[j], p, s);
                }
            }
        }
        let scales = _mm256_cvtepi8_epi16(load_u8x16(arr(b, SCALES)));
        let dw = f16_to_f32(f16_bits_at(b, D));
        let dots = hsum8_epi32(std::array::from_fn(|j| {
            if j < T {
                let bs = load_i16x16(arr(&xs[j].bsums, QK_K / 16 * bi));
                let bias = _mm256_madd_epi16(bs, scales);
                _mm256_sub_epi32(fold(sum[j]), _mm256_slli_epi32::<5>(bias))
            } else {
                _mm256_setzero_si256()
            }
        }));
        // Lane j: `k6_block_sum` for token j.
        let d = _mm256_mul_ps(_mm256_set1_ps(dw), token_scales(xs, bi));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dots), acc);
    }
    store_tokens(acc, out);
}
