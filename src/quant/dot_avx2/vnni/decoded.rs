//! The band kernels of the simple formats over rows decoded once per call
//! (`quant::DecodedRows`), for prompts of more than one tile.
//!
//! A decoded row of `nb` blocks is `nb * DECODED_BYTES` bytes: first the codes of every
//! block as the band kernels' unsigned bytes (block b at byte 32 b, so a block pair is
//! one 64-byte load), then the blocks' scales as f32, then their offsets as f32 (0.0
//! where the format has none). Decoding (unpacking nibbles and fifth bits, offsetting,
//! widening f16 scales) then happens once per call instead of once per tile of tokens.
//!
//! Each pass takes up to `PASS` (4) tokens on `ROWS` (4) rows a step, 16 accumulators.
//! The tokens' per-block-pair operands are laid out once per pass ([`Prepared`]: the
//! shifted correction lanes and the scale pair of every token and block pair, 128 bytes
//! each), so the loop over rows only loads them: the band kernels rebuild them (a shift,
//! two broadcasts) for every group of rows. With the decode gone, 4 rows x 4 tokens beat
//! the band kernels' 2 x 8 (each loaded activation pair serves 4 rows instead of 2).
//! Measured on a 256-token prompt of Qwen2.5-Coder-0.5B (mostly Q5_0), one thread, the
//! three alternated: 2270 ms to the first token with the band kernels, 2120 ms with the
//! decoded rows in passes of 4 (2060 ms in passes of 8), 1930 ms with the prepared
//! operands. (The same loop written as one `asm!` step per (row, token), every operand
//! from memory, measured slower, 2450 ms, and was dropped.)
//!
//! Bit for bit the band kernels of `vnni.rs`, so the one-token kernels: the same bytes
//! into the same `vpdpbusd` from the same correction, the same `d * dx` products, the
//! same FMAs into each (row, token) in the same block order, the odd last block through
//! the same masked FMA, the offset formats' `m * s` sums per parity as there.

use std::arch::x86_64::*;

use super::super::super::acts::QuantizedActs;
use super::super::super::blocks::QK;
use super::super::prefetch_ahead;
use super::{
    TokenActs, Vnni, hsum_halves, lanes_per_row, outer, pair_from, q4_0_block, q4_1_block,
    q5_0_block, q5_1_block, q8_0_block, token_sums,
};
use crate::format::ggml_type::GgmlType;

/// Bytes of a decoded block: 32 codes, a scale and an offset.
pub(in crate::quant) const DECODED_BYTES: usize = 40;

/// Tokens per pass: 4 x 4 accumulators with 4 rows a step.
const PASS: usize = 4;
/// Rows per step of a pass.
const ROWS: usize = 4;

/// `decode(src, row_bytes, dst)`: whole rows of `row_bytes` into `dst`, `len` bytes.
type Decode = fn(&[u8], usize, &mut [u8]);
/// `matmul(dec, rows, nb, xs, prepared, out)`: `out[j * rows + r]` = dot(decoded row r,
/// `xs[j]`) over `rows` rows of `nb` blocks, for any number of tokens.
type Matmul = fn(&[u8], usize, usize, &[QuantizedActs], &mut Prepared, &mut [f32]);

/// A format's decoder and its kernel over decoded rows.
#[derive(Clone, Copy)]
pub(in crate::quant) struct DecodedFns {
    /// `len(rows, nb)`: the decoded bytes of `rows` rows of `nb` blocks.
    pub len: fn(usize, usize) -> usize,
    pub decode: Decode,
    pub matmul: Matmul,
}

impl Vnni {
    /// The decoded-row kernels for `wty` weights, where there are some (the simple
    /// formats, here; Q4_K and Q6_K with rows side by side, `interleaved.rs`).
    pub(in crate::quant) fn decoded_fns(self, wty: GgmlType) -> Option<DecodedFns> {
        use super::interleaved;
        let simple = |decode: Decode, matmul: Matmul| DecodedFns {
            len: |rows, nb| rows * nb * DECODED_BYTES,
            decode,
            matmul,
        };
        Some(match wty {
            GgmlType::Q4_0 => simple(decode::q4_0, entry::q4_0),
            GgmlType::Q4_1 => simple(decode::q4_1, entry::q4_1),
            GgmlType::Q5_0 => simple(decode::q5_0, entry::q5_0),
            GgmlType::Q5_1 => simple(decode::q5_1, entry::q5_1),
            GgmlType::Q8_0 => simple(decode::q8_0, entry::q8_0),
            GgmlType::Q4K => DecodedFns {
                len: interleaved::q4_k_len,
                decode: interleaved::decode_q4_k,
                matmul: |dec, rows, nb, xs, _, out| interleaved::q4_k(dec, rows, nb, xs, out),
            },
            GgmlType::Q6K => DecodedFns {
                len: interleaved::q6_k_len,
                decode: interleaved::decode_q6_k,
                matmul: |dec, rows, nb, xs, _, out| interleaved::q6_k(dec, rows, nb, xs, out),
            },
            _ => return None,
        })
    }
}

/// 64 bytes, 64-byte aligned: one zmm operand.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Zmm([u8; 64]);

/// The per-token operands of one pass, reused from pass to pass.
#[derive(Default)]
pub(in crate::quant) struct Prepared(Vec<Zmm>);

macro_rules! decoders {
    ($($name:ident: $bytes:expr, $decode:ident);*) => {
        mod decode {
            $(
                pub(super) fn $name(src: &[u8], row_bytes: usize, dst: &mut [u8]) {
                    assert!(
                        row_bytes > 0
                            && row_bytes.is_multiple_of($bytes)
                            && src.len().is_multiple_of(row_bytes)
                            && dst.len() == src.len() / $bytes * super::DECODED_BYTES,
                        "decode: whole rows of whole blocks, a decoded block per block"
                    );
                    // SAFETY: only handed out by `Vnni::decoded_fns`, which needs a
                    // `Vnni` token: the CPU has every feature `rows` enables.
                    unsafe { rows(src, row_bytes, dst) }

                    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
                    fn rows(src: &[u8], row_bytes: usize, dst: &mut [u8]) {
                        use std::arch::x86_64::*;
                        let nb = row_bytes / $bytes;
                        let out_row = nb * super::DECODED_BYTES;
                        let rows = src.chunks_exact(row_bytes).zip(dst.chunks_exact_mut(out_row));
                        for (s, o) in rows {
                            let (codes, rest) = o.split_at_mut(32 * nb);
                            let (d, m) = rest.split_at_mut(4 * nb);
                            for (b, blk) in s.chunks_exact($bytes).enumerate() {
                                let (c, db, mb) =
                                    super::$decode(blk.try_into().expect("one block"));
                                let mut bytes = [0u8; 32];
                                // SAFETY: 32 writable bytes; `storeu` needs no alignment.
                                unsafe { _mm256_storeu_si256(bytes.as_mut_ptr().cast(), c) };
                                codes[32 * b..32 * b + 32].copy_from_slice(&bytes);
                                d[4 * b..4 * b + 4].copy_from_slice(&db.to_le_bytes());
                                m[4 * b..4 * b + 4].copy_from_slice(&mb.to_le_bytes());
                            }
                        }
                    }
                }
            )*
        }
    };
}
decoders!(
    q4_0: crate::quant::blocks::q4_0::BYTES, q4_0_block;
    q4_1: crate::quant::blocks::q4_1::BYTES, q4_1_block;
    q5_0: crate::quant::blocks::q5_0::BYTES, q5_0_block;
    q5_1: crate::quant::blocks::q5_1::BYTES, q5_1_block;
    q8_0: crate::quant::blocks::q8_0::BYTES, q8_0_block
);

/// The safe entries: passes of `PASS` tokens, `ROWS` rows a step (the rest one by one).
macro_rules! entries {
    ($($name:ident: $shift:expr, $offset:expr);*) => {
        mod entry {
            use super::{PASS, Prepared, QuantizedActs, ROWS};
            $(
                pub(super) fn $name(
                    dec: &[u8],
                    rows: usize,
                    nb: usize,
                    xs: &[QuantizedActs],
                    prep: &mut Prepared,
                    out: &mut [f32],
                ) {
                    let row = nb * super::DECODED_BYTES;
                    assert!(nb > 0 && dec.len() == rows * row, "whole decoded rows");
                    assert_eq!(out.len(), rows * xs.len(), "one output per (row, token)");
                    for (c, xc) in xs.chunks(PASS).enumerate() {
                        let o = &mut out[c * PASS * rows..(c * PASS + xc.len()) * rows];
                        match xc.len() {
                            1 => pass::<1>(dec, nb, fixed(xc), prep, o, rows),
                            2 => pass::<2>(dec, nb, fixed(xc), prep, o, rows),
                            3 => pass::<3>(dec, nb, fixed(xc), prep, o, rows),
                            _ => pass::<4>(dec, nb, fixed(xc), prep, o, rows),
                        }
                    }

                    fn pass<const T: usize>(
                        dec: &[u8],
                        nb: usize,
                        xs: &[QuantizedActs; T],
                        prep: &mut Prepared,
                        out: &mut [f32],
                        rows: usize,
                    ) {
                        let row = nb * super::DECODED_BYTES;
                        // SAFETY (every call): these wrappers are handed out only by
                        // `Vnni::decoded_fns`, which needs a `Vnni` token: the CPU has
                        // avx2, fma, f16c, avx512f, avx512bw and avx512vnni.
                        let acts = unsafe { super::prepare::<T, { $shift }>(xs, nb, prep) };
                        let mut r = 0;
                        while r < rows {
                            let take = if rows - r >= ROWS { ROWS } else { 1 };
                            let mut buf = [[0f32; T]; ROWS];
                            let group = &dec[r * row..(r + take) * row];
                            if take == ROWS {
                                let b: &mut [[f32; T]; ROWS] = &mut buf;
                                unsafe {
                                    super::band::<ROWS, T, { $offset }>(group, nb, &acts, prep, b)
                                };
                            } else {
                                let b: &mut [[f32; T]; 1] =
                                    (&mut buf[..1]).try_into().expect("one row");
                                unsafe {
                                    super::band::<1, T, { $offset }>(group, nb, &acts, prep, b)
                                };
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
entries!(q4_0: 3, false; q4_1: 0, true; q5_0: 4, false; q5_1: 0, true; q8_0: 7, false);

/// Lays out the per-token operands of a pass in `prep`: for block pair p (the odd last
/// block as a pair of its own) and token j, zmm `2 (p T + j)` is the correction lanes
/// the accumulation starts from (`nsum4 << SHIFT`; zero for the offset formats, which
/// take `m * s` apart) and zmm `2 (p T + j) + 1` the scale pair (`d` of the even block
/// in the low half, of the odd one in the high; an odd last block's `d` in every lane).
/// Returns the tokens' checked activation pointers.
///
/// # Safety
/// The CPU supports the enabled features.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn prepare<const T: usize, const SHIFT: u32>(
    xs: &[QuantizedActs; T],
    nb: usize,
    prep: &mut Prepared,
) -> [TokenActs; T] {
    let acts: [TokenActs; T] = std::array::from_fn(|j| TokenActs::of(&xs[j], nb));
    let pairs = nb.div_ceil(2);
    prep.0.resize(2 * pairs * T, Zmm([0; 64]));
    let dst = prep.0.as_mut_ptr();
    for p in 0..pairs {
        let bi = 2 * p;
        for (j, x) in acts.iter().enumerate() {
            // SAFETY: block bi (and bi + 1 when < nb) lies in each token's arrays
            // (`TokenActs::of` checked nb blocks); zmm 2 (p T + j) + 1 < 2 pairs T.
            unsafe {
                let (corr, dx) = if bi + 2 <= nb {
                    let c = _mm512_loadu_si512(x.nsum4.add(8 * bi).cast());
                    (c, pair_from(*x.d.add(bi), *x.d.add(bi + 1)))
                } else {
                    let c = _mm512_zextsi256_si512(_mm256_loadu_si256(x.nsum4.add(8 * bi).cast()));
                    (c, _mm512_set1_ps(*x.d.add(bi)))
                };
                let corr = if SHIFT > 0 {
                    _mm512_slli_epi32::<SHIFT>(corr)
                } else {
                    _mm512_setzero_si512()
                };
                let at = dst.add(2 * (p * T + j));
                _mm512_store_si512(at.cast(), corr);
                _mm512_store_ps(at.add(1).cast(), dx);
            }
        }
    }
    acts
}

/// R decoded rows of `w` against the pass's T tokens (`prepare` laid out their operands).
///
/// # Safety
/// The CPU supports the enabled features; `prep` was laid out by `prepare::<T, _>` for
/// these tokens and `nb` blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn band<const R: usize, const T: usize, const OFFSET: bool>(
    w: &[u8],
    nb: usize,
    acts: &[TokenActs; T],
    prep: &Prepared,
    out: &mut [[f32; T]; R],
) {
    const {
        assert!(
            R * lanes_per_row(T) <= 16 && T <= PASS && R <= ROWS,
            "one lane of the offset sums per (row, token)"
        )
    };
    let row = nb * DECODED_BYTES;
    assert!(w.len() >= R * row, "decoded band: {R} rows of {row} bytes");
    assert!(
        prep.0.len() >= 2 * nb.div_ceil(2) * T,
        "prepared operands of every pair"
    );
    let rows: [*const u8; R] = std::array::from_fn(|r| w[r * row..].as_ptr());
    // SAFETY (every read below): row r's codes, scales and offsets of block bi < nb lie
    // in its `row` bytes (checked above); `prep` holds every pair's operands (checked
    // above); each token's codes hold nb blocks (`TokenActs::of`).
    let codes = |r: usize, bi: usize| unsafe { rows[r].add(32 * bi) };
    // (The f32 are read unaligned: a byte buffer promises no alignment.)
    let f32_at = |r: usize, at: usize| unsafe { rows[r].add(at).cast::<f32>().read_unaligned() };
    let scale = |r: usize, bi: usize| f32_at(r, 32 * nb + 4 * bi);
    let offset = |r: usize, bi: usize| f32_at(r, 36 * nb + 4 * bi);
    let op = |i: usize| unsafe { prep.0.as_ptr().add(i) };
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let (mut extra_even, mut extra_odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut bi = 0;
    while bi + 2 <= nb {
        let p = bi / 2;
        let (mut m_even, mut m_odd) = ([0f32; 4], [0f32; 4]);
        for r in 0..R {
            prefetch_ahead(codes(r, bi), 0);
            // SAFETY: as above.
            let wu = unsafe { _mm512_loadu_si512(codes(r, bi).cast()) };
            let dw = pair_from(scale(r, bi), scale(r, bi + 1));
            if OFFSET {
                (m_even[r], m_odd[r]) = (offset(r, bi), offset(r, bi + 1));
            }
            for j in 0..T {
                // SAFETY: as above.
                let (corr, dx, a) = unsafe {
                    (
                        _mm512_load_si512(op(2 * (p * T + j)).cast()),
                        _mm512_load_ps(op(2 * (p * T + j) + 1).cast()),
                        _mm512_loadu_si512(acts[j].qs.add(QK * bi).cast()),
                    )
                };
                let lanes = _mm512_dpbusd_epi32(corr, wu, a);
                acc[r][j] =
                    _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(lanes), acc[r][j]);
            }
        }
        if OFFSET {
            // SAFETY: bi + 1 < nb, as above.
            let (s_even, s_odd) = unsafe { token_sums(acts, bi) };
            extra_even = _mm512_add_ps(extra_even, outer::<T>(m_even, s_even));
            extra_odd = _mm512_add_ps(extra_odd, outer::<T>(m_odd, s_odd));
        }
        bi += 2;
    }
    if bi < nb {
        // The odd last block: the even accumulators (low halves) alone.
        let p = bi / 2;
        let mut m_even = [0f32; 4];
        for r in 0..R {
            // SAFETY: as above.
            let wu = unsafe { _mm512_zextsi256_si512(_mm256_loadu_si256(codes(r, bi).cast())) };
            let dw = _mm512_set1_ps(scale(r, bi));
            if OFFSET {
                m_even[r] = offset(r, bi);
            }
            for j in 0..T {
                // SAFETY: as above.
                let (corr, dx, a) = unsafe {
                    (
                        _mm512_load_si512(op(2 * (p * T + j)).cast()),
                        _mm512_load_ps(op(2 * (p * T + j) + 1).cast()),
                        _mm512_zextsi256_si512(_mm256_loadu_si256(acts[j].qs.add(QK * bi).cast())),
                    )
                };
                let lanes = _mm512_dpbusd_epi32(corr, wu, a);
                acc[r][j] = _mm512_mask3_fmadd_ps(
                    _mm512_mul_ps(dw, dx),
                    _mm512_cvtepi32_ps(lanes),
                    acc[r][j],
                    0x00ff,
                );
            }
        }
        if OFFSET {
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
