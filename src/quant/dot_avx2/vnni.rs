//! AVX-512 VNNI band kernels for the simple formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): a
//! group of weight rows against a tile of up to `TILE` (8) tokens per step (4 rows x up
//! to 4 tokens, or 2 rows x 5 to 8 tokens: 16 accumulators either way), on CPUs with
//! avx512f, avx512bw and avx512vnni (chosen at run time; the AVX2 tiles stay for the
//! others).
//!
//! Three things make these faster than the AVX2 tiles on prefill:
//! - `vpdpbusd` does `vpmaddubsw` + `vpmaddwd` in one instruction, and a 512-bit
//!   register holds two blocks: the low half block 2i, the high half block 2i + 1;
//! - signed codes are offset to unsigned (q + 8, q + 16, q + 128) so that no per-token
//!   `sign` is needed; the offset times the activations' sums comes back out through the
//!   accumulator `vpdpbusd` starts from (`QuantizedActs::nsum4`, the negated sums of
//!   every 4 codes, shifted by log2 of the offset: exact integers);
//! - each decoded weight pair is reused by every token of the tile, and each loaded
//!   activation pair and its correction by every row of the group.
//!
//! Results are bit-for-bit those of the one-token AVX2 kernels, for every (row, token):
//! lane k of `vpdpbusd` sums the products of bytes 4k..4k + 4, the very bytes lane k of
//! `vpmaddubsw` + `vpmaddwd` sums there, and the offset correction is exact, so each
//! block's eight i32 lanes are the same integers; the halves of one 512-bit accumulator
//! are the one-token kernel's two accumulators (even blocks, odd blocks), fed the same
//! FMAs with the same scales `d * dx` in the same order, and the offset formats' `m * s`
//! terms are summed per parity as there. An odd last block goes to the low half alone
//! through a masked FMA, so the high half never sees a product it should not.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::super::acts::QuantizedActs;
use super::super::blocks::{self, QK, f16_bits_at, u32_at};
use super::super::dot::BandFn;
use super::{Avx2, arr, bit_mask, f16_to_f32, hsum_ps, nibbles, prefetch_ahead};
use crate::format::ggml_type::GgmlType;

mod decoded;
mod interleaved;
pub(in crate::quant) use decoded::{DecodedFns, Prepared};

/// Rows per step of the band loop for a tile of `t` tokens: at most 16 accumulators, so
/// that they, the decoded rows with their scales and one token's activations fit the 32
/// registers. Decoding a block pair costs about as much as a token's products with it,
/// so eight tokens on two rows beat four on four (4 x 4 decode the rows once per 4
/// tokens, 2 x 8 once per 8, for the same 16 products per activation load pair).
const fn group_rows(t: usize) -> usize {
    if t <= 4 { 4 } else { 2 }
}

/// Proof that this CPU runs the AVX2 kernels and AVX-512 F/BW/VNNI: only
/// [`Vnni::detect`] makes one.
#[derive(Clone, Copy, Debug)]
pub(in crate::quant) struct Vnni(Avx2);

impl Vnni {
    /// The token when the CPU has the features (checked once, then cached).
    pub(in crate::quant) fn detect() -> Option<Vnni> {
        static HAVE: OnceLock<bool> = OnceLock::new();
        let avx2 = Avx2::detect()?;
        let have = *HAVE.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
        });
        have.then_some(Vnni(avx2))
    }

    /// The AVX2 proof this one contains (the VNNI family falls back to AVX2 kernels).
    pub(in crate::quant) fn avx2(self) -> Avx2 {
        self.0
    }

    /// The band kernel for `wty` weights, where there is one (the simple formats).
    pub(in crate::quant) fn band_kernel(self, wty: GgmlType) -> Option<BandFn> {
        Some(match wty {
            GgmlType::Q4_0 => entry::q4_0,
            GgmlType::Q4_1 => entry::q4_1,
            GgmlType::Q5_0 => entry::q5_0,
            GgmlType::Q5_1 => entry::q5_1,
            GgmlType::Q8_0 => entry::q8_0,
            _ => return None,
        })
    }
}

/// Plain-fn wrappers: split the band into groups of `group_rows` rows (the rest one by
/// one) and pick the tile size, both as const generics so that the accumulators are
/// fixed-size arrays the compiler keeps in registers.
macro_rules! entries {
    ($($name:ident),*) => {
        mod entry {
            use super::{QuantizedActs, group_rows};
            $(
                pub(in crate::quant) fn $name(
                    w: &[u8],
                    rb: usize,
                    xs: &[QuantizedActs],
                    out: &mut [f32],
                ) {
                    let t = xs.len();
                    assert!(rb > 0 && w.len().is_multiple_of(rb), "whole rows");
                    let rows = w.len() / rb;
                    assert_eq!(out.len(), rows * t, "one output per (row, token)");
                    match t {
                        2 => band::<2, { group_rows(2) }>(w, rb, fixed(xs), out, rows),
                        3 => band::<3, { group_rows(3) }>(w, rb, fixed(xs), out, rows),
                        4 => band::<4, { group_rows(4) }>(w, rb, fixed(xs), out, rows),
                        5 => band::<5, { group_rows(5) }>(w, rb, fixed(xs), out, rows),
                        6 => band::<6, { group_rows(6) }>(w, rb, fixed(xs), out, rows),
                        7 => band::<7, { group_rows(7) }>(w, rb, fixed(xs), out, rows),
                        8 => band::<8, { group_rows(8) }>(w, rb, fixed(xs), out, rows),
                        n => panic!("a band kernel takes 2 to {} tokens, not {n}", crate::quant::dot::TILE),
                    }

                    fn band<const T: usize, const G: usize>(
                        w: &[u8],
                        rb: usize,
                        xs: &[QuantizedActs; T],
                        out: &mut [f32],
                        rows: usize,
                    ) {
                        let mut r = 0;
                        while r < rows {
                            let take = if rows - r >= G { G } else { 1 };
                            let mut buf = [[0f32; T]; G];
                            let group = &w[r * rb..(r + take) * rb];
                            // SAFETY (both arms): these wrappers are private to this file
                            // and only handed out by `Vnni::band_kernel`, which needs a
                            // `Vnni` token, and tokens exist only once the CPU was seen to
                            // support avx2, fma, f16c, avx512f, avx512bw and avx512vnni.
                            if take == G {
                                let b: &mut [[f32; T]; G] = &mut buf;
                                unsafe { super::$name::<G, T>(group, rb, xs, b) };
                            } else {
                                let b: &mut [[f32; T]; 1] =
                                    (&mut buf[..1]).try_into().expect("one row");
                                unsafe { super::$name::<1, T>(group, rb, xs, b) };
                            }
                            for (i, o) in buf[..take].iter().enumerate() {
                                for (j, v) in o.iter().enumerate() {
                                    out[j * rows + r + i] = *v;
                                }
                            }
                            r += take;
                        }
                    }
                }
            )*

            fn fixed<const T: usize>(xs: &[QuantizedActs]) -> &[QuantizedActs; T] {
                xs.try_into().expect("length matched above")
            }
        }
    };
}
entries!(q4_0, q4_1, q5_0, q5_1, q8_0);

/// The two 256-bit halves of `v` added, then summed: `hsum_ps(acc0 + acc1)` of the
/// one-token kernels.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn hsum_halves(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    hsum_ps(_mm256_add_ps(lo, hi))
}

/// The activation arrays of one token, read unchecked in the band loop: [`TokenActs::of`]
/// checked once that they hold every block of the row.
#[derive(Clone, Copy)]
struct TokenActs {
    qs: *const i8,
    d: *const f32,
    s: *const f32,
    nsum4: *const i32,
}

impl TokenActs {
    /// Panics unless `x` has the codes, scales, sums and correction lanes of `nb` blocks.
    fn of(x: &QuantizedActs, nb: usize) -> TokenActs {
        assert!(
            x.qs.len() >= nb * QK && x.d.len() >= nb && x.s.len() >= nb && x.nsum4.len() >= 8 * nb,
            "band kernel: activations of {} blocks expected",
            nb
        );
        TokenActs {
            qs: x.qs.as_ptr(),
            d: x.d.as_ptr(),
            s: x.s.as_ptr(),
            nsum4: x.nsum4.as_ptr(),
        }
    }
}

/// `lo` in the low eight lanes, `hi` in the high eight.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn pair_from(lo: f32, hi: f32) -> __m512 {
    _mm512_mask_broadcastss_ps(_mm512_set1_ps(lo), 0xff00, _mm_set_ss(hi))
}

/// Lanes per row in the offset sums of a tile of `t` tokens: lane `lanes_per_row(t) r + j`
/// belongs to (row r, token j), so R x T <= 16 fits one register.
const fn lanes_per_row(t: usize) -> usize {
    if t <= 4 { 4 } else { 8 }
}

/// `[s_j of block bi]` and `[s_j of block bi + 1]` for tokens j < 8, one per lane (tokens
/// past T repeat the last one, in lanes nobody reads).
///
/// # Safety
/// The CPU supports the enabled features, and every token's sums hold blocks `bi` and
/// `bi + 1` (`TokenActs::of` checked `nb` blocks, and `bi + 1 < nb`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn token_sums<const T: usize>(acts: &[TokenActs; T], bi: usize) -> (__m256, __m256) {
    // SAFETY: as the caller promised.
    let pair =
        |j: usize| unsafe { _mm_castpd_ps(_mm_load_sd(acts[j.min(T - 1)].s.add(bi).cast())) };
    // [s_j(bi), s_j(bi + 1), s_k(bi), s_k(bi + 1)] for tokens (0, 1), (2, 3), ...
    let q01 = _mm_movelh_ps(pair(0), pair(1));
    let q23 = _mm_movelh_ps(pair(2), pair(3));
    let (q45, q67) = if T > 4 {
        (
            _mm_movelh_ps(pair(4), pair(5)),
            _mm_movelh_ps(pair(6), pair(7)),
        )
    } else {
        (q01, q23)
    };
    let a = _mm256_set_m128(q45, q01);
    let b = _mm256_set_m128(q67, q23);
    (
        _mm256_shuffle_ps::<0b10_00_10_00>(a, b),
        _mm256_shuffle_ps::<0b11_01_11_01>(a, b),
    )
}

/// Lane `lanes_per_row(T) r + j` of the result is `row[r] * tok[j]`: one product per
/// (row, token) of a group (R x T <= 16), in the layout of the offset sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn outer<const T: usize>(row: [f32; 4], tok: __m256) -> __m512 {
    let (rows, toks) = if lanes_per_row(T) == 4 {
        let rows = _mm512_permutexvar_ps(
            _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
            _mm512_castps128_ps512(_mm_setr_ps(row[0], row[1], row[2], row[3])),
        );
        (rows, _mm512_broadcast_f32x4(_mm256_castps256_ps128(tok)))
    } else {
        let toks = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castpd256_pd512(_mm256_castps_pd(tok)),
            _mm256_castps_pd(tok),
        ));
        (pair_from(row[0], row[1]), toks)
    };
    _mm512_mul_ps(rows, toks)
}

/// The band loop shared by the simple formats. `$shift` is log2 of the offset that made
/// the codes unsigned (0: they were unsigned already, no correction); `$offset`
/// formats add `m * s` per block, the others add 0.0 as the one-token kernel does.
///
/// Registers: the R x T (at most 16) accumulators, the R decoded rows and their scales
/// and one token's codes, correction and scales fit the 32 zmm registers. The offset
/// formats' `m * s` sums of each (row, token) are lanes of two more (even and odd
/// blocks, as the one-token kernel's two scalar sums; see [`outer`]), so they take two
/// registers and four instructions per block pair, not 4 R T scalar ones and a spill
/// each.
macro_rules! band_kernel {
    ($name:ident, $bytes:expr, $decode:ident, $shift:expr, $offset:expr) => {
        /// # Safety
        /// The CPU supports the enabled features (a `Vnni` token exists).
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
        unsafe fn $name<const R: usize, const T: usize>(
            w: &[u8],
            rb: usize,
            xs: &[QuantizedActs; T],
            out: &mut [[f32; T]; R],
        ) {
            const {
                assert!(
                    R * lanes_per_row(T) <= 16 && T <= 8 && R <= 4,
                    "one lane of the offset sums per (row, token)"
                )
            };
            let nb = rb / $bytes;
            assert!(w.len() >= R * rb, "band kernel: {R} rows of {rb} bytes");
            let rows: [*const u8; R] = std::array::from_fn(|r| w[r * rb..].as_ptr());
            let acts: [TokenActs; T] = std::array::from_fn(|j| TokenActs::of(&xs[j], nb));
            // SAFETY (every read below): block `bi < nb` of row r lies in `w` (checked
            // above: R whole rows of nb blocks), and each token's arrays hold nb blocks
            // (`TokenActs::of`).
            let block =
                |r: usize, bi: usize| unsafe { &*rows[r].add(bi * $bytes).cast::<[u8; $bytes]>() };
            let mut acc = [[_mm512_setzero_ps(); T]; R];
            let (mut extra_even, mut extra_odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut bi = 0;
            while bi + 2 <= nb {
                let mut wu = [_mm512_setzero_si512(); R];
                let mut dw = [_mm512_setzero_ps(); R];
                let (mut m_even, mut m_odd) = ([0f32; 4], [0f32; 4]);
                for r in 0..R {
                    prefetch_ahead(block(r, bi).as_ptr(), 0);
                    let (w0, d0, m0) = $decode(block(r, bi));
                    let (w1, d1, m1) = $decode(block(r, bi + 1));
                    wu[r] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(w0), w1);
                    dw[r] = pair_from(d0, d1);
                    (m_even[r], m_odd[r]) = (m0, m1);
                }
                for j in 0..T {
                    let x = acts[j];
                    // SAFETY: as above.
                    let (a, corr, dx) = unsafe {
                        let a = _mm512_loadu_si512(x.qs.add(QK * bi).cast());
                        let corr = if $shift > 0 {
                            _mm512_slli_epi32::<$shift>(_mm512_loadu_si512(
                                x.nsum4.add(8 * bi).cast(),
                            ))
                        } else {
                            _mm512_setzero_si512()
                        };
                        (a, corr, pair_from(*x.d.add(bi), *x.d.add(bi + 1)))
                    };
                    for r in 0..R {
                        let lanes = _mm512_dpbusd_epi32(corr, wu[r], a);
                        acc[r][j] = _mm512_fmadd_ps(
                            _mm512_mul_ps(dw[r], dx),
                            _mm512_cvtepi32_ps(lanes),
                            acc[r][j],
                        );
                    }
                }
                if $offset {
                    // SAFETY: bi + 1 < nb, as above.
                    let (s_even, s_odd) = unsafe { token_sums(&acts, bi) };
                    extra_even = _mm512_add_ps(extra_even, outer::<T>(m_even, s_even));
                    extra_odd = _mm512_add_ps(extra_odd, outer::<T>(m_odd, s_odd));
                }
                bi += 2;
            }
            if bi < nb {
                // The odd last block: the even accumulators (low halves) alone.
                let mut wu = [_mm512_setzero_si512(); R];
                let mut dw = [0f32; R];
                let mut m_even = [0f32; 4];
                for r in 0..R {
                    let (w0, d0, m0) = $decode(block(r, bi));
                    wu[r] = _mm512_zextsi256_si512(w0);
                    dw[r] = d0;
                    m_even[r] = m0;
                }
                for j in 0..T {
                    let x = acts[j];
                    // SAFETY: as above.
                    let (a, corr, dx) = unsafe {
                        let a =
                            _mm512_zextsi256_si512(_mm256_loadu_si256(x.qs.add(QK * bi).cast()));
                        let corr = if $shift > 0 {
                            let c = _mm256_loadu_si256(x.nsum4.add(8 * bi).cast());
                            _mm512_slli_epi32::<$shift>(_mm512_zextsi256_si512(c))
                        } else {
                            _mm512_setzero_si512()
                        };
                        (a, corr, *x.d.add(bi))
                    };
                    for r in 0..R {
                        let lanes = _mm512_dpbusd_epi32(corr, wu[r], a);
                        acc[r][j] = _mm512_mask3_fmadd_ps(
                            _mm512_set1_ps(dw[r] * dx),
                            _mm512_cvtepi32_ps(lanes),
                            acc[r][j],
                            0x00ff,
                        );
                    }
                }
                if $offset {
                    // SAFETY: bi < nb, as above.
                    let s_of = |j: usize| unsafe { *acts[j.min(T - 1)].s.add(bi) };
                    let s_even = _mm256_setr_ps(
                        s_of(0),
                        s_of(1),
                        s_of(2),
                        s_of(3),
                        s_of(4),
                        s_of(5),
                        s_of(6),
                        s_of(7),
                    );
                    extra_even = _mm512_add_ps(extra_even, outer::<T>(m_even, s_even));
                }
            }
            let (mut even, mut odd) = ([0f32; 16], [0f32; 16]);
            // SAFETY: 16 writable f32 each; `storeu` has no alignment requirement.
            unsafe {
                _mm512_storeu_ps(even.as_mut_ptr(), extra_even);
                _mm512_storeu_ps(odd.as_mut_ptr(), extra_odd);
            }
            for r in 0..R {
                for j in 0..T {
                    let l = lanes_per_row(T) * r + j;
                    out[r][j] = hsum_halves(acc[r][j]) + (even[l] + odd[l]);
                }
            }
        }
    };
}

band_kernel!(q4_0, blocks::q4_0::BYTES, q4_0_block, 3, false);
band_kernel!(q4_1, blocks::q4_1::BYTES, q4_1_block, 0, true);
band_kernel!(q5_0, blocks::q5_0::BYTES, q5_0_block, 4, false);
band_kernel!(q5_1, blocks::q5_1::BYTES, q5_1_block, 0, true);
band_kernel!(q8_0, blocks::q8_0::BYTES, q8_0_block, 7, false);

// The decoders give each block's codes as unsigned bytes (the signed formats' codes
// plus 8, 16 or 128), its scale and its offset (0.0 where the format has none).

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn q4_0_block(b: &[u8; blocks::q4_0::BYTES]) -> (__m256i, f32, f32) {
    use blocks::q4_0::*;
    (nibbles(arr(b, QS)), f16_to_f32(f16_bits_at(b, D)), 0.0)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn q4_1_block(b: &[u8; blocks::q4_1::BYTES]) -> (__m256i, f32, f32) {
    use blocks::q4_1::*;
    (
        nibbles(arr(b, QS)),
        f16_to_f32(f16_bits_at(b, D)),
        f16_to_f32(f16_bits_at(b, M)),
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn q5_0_block(b: &[u8; blocks::q5_0::BYTES]) -> (__m256i, f32, f32) {
    use blocks::q5_0::*;
    // The 5-bit code q itself is the signed code q - 16 plus 16.
    let fifth = _mm256_and_si256(bit_mask(u32_at(b, QH)), _mm256_set1_epi8(0x10));
    (
        _mm256_or_si256(nibbles(arr(b, QS)), fifth),
        f16_to_f32(f16_bits_at(b, D)),
        0.0,
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn q5_1_block(b: &[u8; blocks::q5_1::BYTES]) -> (__m256i, f32, f32) {
    use blocks::q5_1::*;
    let fifth = _mm256_and_si256(bit_mask(u32_at(b, QH)), _mm256_set1_epi8(0x10));
    (
        _mm256_or_si256(nibbles(arr(b, QS)), fifth),
        f16_to_f32(f16_bits_at(b, D)),
        f16_to_f32(f16_bits_at(b, M)),
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
fn q8_0_block(b: &[u8; blocks::q8_0::BYTES]) -> (__m256i, f32, f32) {
    use blocks::q8_0::*;
    // Flipping the top bit adds 128 to a two's-complement byte, as an unsigned byte.
    let w = _mm256_xor_si256(
        super::load_u8x32(arr(b, QS)),
        _mm256_set1_epi8(0x80u8 as i8),
    );
    (w, f16_to_f32(f16_bits_at(b, D)), 0.0)
}
