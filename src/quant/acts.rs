//! Activations quantized into the companion format of a weight type, so the dot
//! products can run on 8-bit integers (the same split as GGML's `vec_dot_type`).
//!
//! - simple formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): blocks of 32 int8 with an f32
//!   scale, plus `d * sum(q)` per block, which Q4_1 / Q5_1 need for their offset `m`;
//! - k-quants (Q4_K, Q5_K, Q6_K): blocks of 256 int8 with an f32 scale, plus the sum of
//!   every 16 codes, which carries the k-quant mins (and Q6_K's -32 bias) in integers;
//! - float formats: the f32 activations themselves.
//!
//! Codes are symmetric in -127..=127 (never -128) so that the kernels may negate them.

use super::blocks::QK;
use crate::format::ggml_type::{GgmlType, QK_K};

/// The in-memory layout of one [`QuantizedActs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ActLayout {
    /// Plain f32 in `f`.
    F32,
    /// 32-element blocks: `qs`, `d`, `s`.
    Q8x32,
    /// 256-element blocks: `qs`, `d`, `bsums`.
    Q8K,
}

impl ActLayout {
    pub(super) fn for_weights(wty: GgmlType) -> ActLayout {
        match wty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => ActLayout::F32,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                ActLayout::Q8x32
            }
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => ActLayout::Q8K,
        }
    }
}

/// Activations of one row quantized into the companion format of a weight type, for
/// the fast integer dot products. Made by [`quantize_acts`]; its buffers are reused
/// from call to call.
#[derive(Clone, Debug)]
pub struct QuantizedActs {
    pub(super) layout: ActLayout,
    pub(super) n: usize,
    /// int8 codes, one per element (quantized layouts).
    pub(super) qs: Vec<i8>,
    /// Scale of each block (quantized layouts): x ≈ d * q.
    pub(super) d: Vec<f32>,
    /// `d * sum(q)` of each 32-block (Q8x32).
    pub(super) s: Vec<f32>,
    /// `-sum(q)` of every 4 codes (Q8x32): the AVX-512 VNNI kernels take the offset of
    /// unsigned-shifted weight codes back out with these (see `dot_avx2::vnni`).
    pub(super) nsum4: Vec<i32>,
    /// Sum of the codes of each 16 elements (Q8K).
    pub(super) bsums: Vec<i16>,
    /// The activations themselves (F32).
    pub(super) f: Vec<f32>,
}

impl Default for QuantizedActs {
    fn default() -> Self {
        Self::new()
    }
}

impl QuantizedActs {
    /// Empty activations; the first [`quantize_acts`] sizes the buffers.
    pub fn new() -> Self {
        QuantizedActs {
            layout: ActLayout::F32,
            n: 0,
            qs: Vec::new(),
            d: Vec::new(),
            s: Vec::new(),
            nsum4: Vec::new(),
            bsums: Vec::new(),
            f: Vec::new(),
        }
    }

    /// Number of activations held.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Whether these activations were quantized for weights of type `wty`.
    pub fn fits(&self, wty: GgmlType) -> bool {
        self.layout == ActLayout::for_weights(wty)
    }
}

/// Quantize `x` (len a multiple of `wty.block_len()`; panics otherwise) for dot products
/// against rows of type `wty`. Reuses `out`'s buffers (no allocation once warm).
///
/// A NaN anywhere in a block makes that block's scale NaN, so it poisons every dot
/// product instead of being silently rounded to zero; an infinity does the same through
/// `inf * 0`.
pub fn quantize_acts(wty: GgmlType, x: &[f32], out: &mut QuantizedActs) {
    let bl = wty.block_len();
    assert!(
        x.len().is_multiple_of(bl),
        "quantize_acts: {} activations are not a whole number of {bl}-element {wty} blocks",
        x.len()
    );
    let layout = ActLayout::for_weights(wty);
    out.layout = layout;
    out.n = x.len();
    match layout {
        ActLayout::F32 => {
            out.f.clear();
            out.f.extend_from_slice(x);
        }
        ActLayout::Q8x32 => {
            let nb = x.len() / QK;
            resize(&mut out.qs, x.len(), 0);
            resize(&mut out.d, nb, 0.0);
            resize(&mut out.s, nb, 0.0);
            let blocks = x.chunks_exact(QK).zip(out.qs.chunks_exact_mut(QK));
            for ((xb, qb), (d, s)) in blocks.zip(out.d.iter_mut().zip(out.s.iter_mut())) {
                *d = quantize_block(xb, qb);
                let sum: i32 = qb.iter().map(|&q| i32::from(q)).sum();
                *s = *d * sum as f32;
            }
            resize(&mut out.nsum4, x.len() / 4, 0);
            for (n4, q4) in out.nsum4.iter_mut().zip(out.qs.chunks_exact(4)) {
                *n4 = -q4.iter().map(|&q| i32::from(q)).sum::<i32>();
            }
        }
        ActLayout::Q8K => {
            let nb = x.len() / QK_K;
            resize(&mut out.qs, x.len(), 0);
            resize(&mut out.d, nb, 0.0);
            resize(&mut out.bsums, x.len() / 16, 0);
            let blocks = x.chunks_exact(QK_K).zip(out.qs.chunks_exact_mut(QK_K));
            for ((xb, qb), d) in blocks.zip(out.d.iter_mut()) {
                *d = quantize_block(xb, qb);
            }
            for (bs, q16) in out.bsums.iter_mut().zip(out.qs.chunks_exact(16)) {
                // |sum| <= 16 * 127, well inside i16.
                *bs = q16.iter().map(|&q| i16::from(q)).sum();
            }
        }
    }
}

/// Most activation rows a product takes on int8 activations (the CUDA backend's GEMV
/// batch); products of more rows (verify steps past 4 rows, prefill) keep f32 activations
/// and run on the tensor cores.
pub const INT8_ACT_MAX_ROWS: usize = 4;

/// `x` as the CUDA backend's int8-activation products see it (`kernels/quantize_act.cu`):
/// each 32 values quantized as [`quantize_acts`] does for the 32-element formats, then
/// widened back to `d * q` (a block holding a NaN or an infinity becomes NaN). The CPU twin
/// of that path: the precise product over these values is what the GPU's integer sums
/// compute, up to the order of the f32 roundings. `x.len()` must be a multiple of 32
/// (panics otherwise).
pub fn round_trip_int8(x: &mut [f32]) {
    assert!(
        x.len().is_multiple_of(QK),
        "round_trip_int8: {} values are not a whole number of {QK}-value blocks",
        x.len()
    );
    let mut q = [0i8; QK];
    for block in x.chunks_exact_mut(QK) {
        let d = quantize_block(block, &mut q);
        for (v, &c) in block.iter_mut().zip(&q) {
            *v = d * f32::from(c);
        }
    }
}

/// Sets `v.len()` to `n` without giving back capacity (and so without allocating once
/// the buffers have seen the largest row).
fn resize<T: Copy>(v: &mut Vec<T>, n: usize, fill: T) {
    v.clear();
    v.resize(n, fill);
}

/// Quantizes one block symmetrically to -127..=127 by round-to-nearest-even; returns
/// its scale. Lane-wise accumulators keep the reductions vectorizable.
fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    const LANES: usize = 8;
    let mut amax = [0f32; LANES];
    let mut poison = [0f32; LANES];
    for c in x.chunks_exact(LANES) {
        for k in 0..LANES {
            amax[k] = amax[k].max(c[k].abs());
            // Stays 0 unless some element is NaN or infinite.
            poison[k] += c[k] * 0.0;
        }
    }
    let amax = amax.iter().copied().fold(0.0f32, f32::max);
    if poison.iter().any(|p| p.is_nan()) {
        q.fill(0);
        return f32::NAN;
    }
    let (d, id) = if amax > 0.0 {
        (amax / 127.0, 127.0 / amax)
    } else {
        (0.0, 0.0)
    };
    // Adding and subtracting 1.5 * 2^23 rounds any |v| < 2^22 to the nearest integer
    // (ties to even) in plain f32 arithmetic, which vectorizes where `round` does not.
    const ROUND: f32 = 12_582_912.0;
    for (q, &v) in q.iter_mut().zip(x) {
        let r = (v * id + ROUND) - ROUND;
        *q = r.clamp(-127.0, 127.0) as i8;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_int8_rounds_each_block_to_its_own_grid() {
        // A deterministic spread of magnitudes per block (one block all zero).
        let mut x: Vec<f32> = (0..4096u32)
            .map(|i| {
                let h = i.wrapping_mul(2_654_435_761) >> 8;
                let scale = [0.01f32, 1.0, 37.0, 0.3][(i as usize / QK) % 4];
                ((h % 2001) as f32 / 1000.0 - 1.0) * scale
            })
            .collect();
        x[64..96].fill(0.0);
        let mut r = x.clone();
        round_trip_int8(&mut r);
        for (b, (xb, rb)) in x.chunks(QK).zip(r.chunks(QK)).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            for (v, w) in xb.iter().zip(rb) {
                assert!((v - w).abs() <= 0.5 * d * 1.0001, "block {b}: {v} -> {w}");
                // On the block's grid: d times an integer in -127..=127.
                let k = if d > 0.0 { w / d } else { 0.0 };
                assert!((k - k.round()).abs() < 1e-3 && k.abs() <= 127.0 + 1e-3);
            }
        }
        assert!(r[64..96].iter().all(|&v| v == 0.0));
        // Rounding again changes nothing.
        let mut again = r.clone();
        round_trip_int8(&mut again);
        assert_eq!(again, r);
        // A NaN or an infinity poisons its block, and only its block.
        for bad in [f32::NAN, f32::INFINITY] {
            let mut y = x.clone();
            y[100] = bad;
            round_trip_int8(&mut y);
            assert!(y[96..128].iter().all(|v| v.is_nan()));
            assert!(y[..96].iter().chain(&y[128..]).all(|v| v.is_finite()));
        }
    }

    #[test]
    fn codes_are_symmetric_and_sums_match() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
            .collect();
        let mut a = QuantizedActs::new();
        quantize_acts(GgmlType::Q4K, &x, &mut a);
        assert_eq!(
            (a.n, a.qs.len(), a.d.len(), a.bsums.len()),
            (512, 512, 2, 32)
        );
        assert!(a.qs.iter().all(|&q| q != -128));
        assert!(a.qs.iter().any(|&q| q.unsigned_abs() == 127));
        for (i, bs) in a.bsums.iter().enumerate() {
            let s: i32 = a.qs[16 * i..16 * i + 16]
                .iter()
                .map(|&q| i32::from(q))
                .sum();
            assert_eq!(i32::from(*bs), s);
        }
        for (i, v) in x.iter().enumerate() {
            let d = a.d[i / QK_K];
            assert!(
                (d * f32::from(a.qs[i]) - v).abs() <= 0.5 * d * 1.0001,
                "i={i}"
            );
        }
        quantize_acts(GgmlType::Q4_1, &x, &mut a);
        assert_eq!((a.qs.len(), a.d.len(), a.s.len()), (512, 16, 16));
        for i in 0..16 {
            let s: i32 = a.qs[32 * i..32 * i + 32]
                .iter()
                .map(|&q| i32::from(q))
                .sum();
            assert_eq!(a.s[i], a.d[i] * s as f32);
        }
        assert_eq!(a.nsum4.len(), 128);
        for (i, n4) in a.nsum4.iter().enumerate() {
            let s: i32 = a.qs[4 * i..4 * i + 4].iter().map(|&q| i32::from(q)).sum();
            assert_eq!(*n4, -s);
        }
    }

    #[test]
    fn nan_or_inf_poisons_its_block_and_zeros_quantize_to_zero() {
        let mut x = vec![0.0f32; 64];
        let mut a = QuantizedActs::new();
        quantize_acts(GgmlType::Q8_0, &x, &mut a);
        assert!(a.qs.iter().all(|&q| q == 0) && a.d.iter().all(|&d| d == 0.0));
        x[40] = f32::NAN;
        quantize_acts(GgmlType::Q8_0, &x, &mut a);
        assert!(a.d[0] == 0.0 && a.d[1].is_nan());
        x[40] = f32::INFINITY;
        quantize_acts(GgmlType::Q8_0, &x, &mut a);
        assert!(a.d[1].is_nan());
    }

    #[test]
    fn buffers_are_reused_once_warm() {
        let x = vec![1.0f32; 1024];
        let mut a = QuantizedActs::new();
        quantize_acts(GgmlType::Q6K, &x, &mut a);
        quantize_acts(GgmlType::Q8_0, &x, &mut a);
        let ptrs = (a.qs.as_ptr(), a.d.as_ptr(), a.s.as_ptr(), a.bsums.as_ptr());
        let n4 = a.nsum4.as_ptr();
        quantize_acts(GgmlType::Q6K, &x[..512], &mut a);
        quantize_acts(GgmlType::Q8_0, &x, &mut a);
        assert_eq!(
            ptrs,
            (a.qs.as_ptr(), a.d.as_ptr(), a.s.as_ptr(), a.bsums.as_ptr())
        );
        assert_eq!(n4, a.nsum4.as_ptr());
    }
}
