//! Multithreaded matrix products with weights kept in their file format: the activations
//! are quantized once per row (to the weight type's companion 8-bit format), then each
//! thread streams a band of weight rows against every activation row, so a weight row is
//! read from memory once per call however many tokens the batch has. The tokens go
//! through in tiles of `quant::TILE`, whose kernels decode each weight block once for
//! the whole tile; the results are bit-for-bit those of one token at a time.

use crate::format::Weight;
use crate::quant::{self, QuantizedActs};

use super::pool;

/// Reusable per-call buffers.
#[derive(Default)]
pub struct MatmulScratch {
    acts: Vec<QuantizedActs>,
}

/// Raw output pointer shared by the row bands. Each band writes only its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the bands write disjoint elements (see `matmul`), and the buffer outlives the
// parallel section.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `out[t * w.rows + r] = dot(w row r, x[t])` for `t < n`. `x` is `n` rows of `w.cols`.
/// `precise`: dequantize weights to f32 and dot in f32 (the exact reference path) instead
/// of the 8-bit activation integer kernels.
pub fn matmul(
    w: &Weight,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    precise: bool,
    scratch: &mut MatmulScratch,
) {
    let (rows, cols) = (w.rows, w.cols);
    assert!(x.len() >= n * cols && out.len() >= n * rows);
    if !precise {
        if scratch.acts.len() < n {
            scratch.acts.resize_with(n, QuantizedActs::new);
        }
        quantize_all(w, x, n, &mut scratch.acts[..n]);
    }
    let acts = &scratch.acts;
    let row_bytes = w.row_bytes();
    let bytes = w.bytes();
    // Bands small enough to balance across threads, big enough to amortise scheduling.
    let pool = pool::global();
    let threads = pool.threads();
    let band = rows.div_ceil(threads * 8).clamp(16, 512);
    let out_ptr = OutPtr(out.as_mut_ptr());
    pool.run(rows.div_ceil(band), &|b| {
        let r0 = b * band;
        let r1 = (r0 + band).min(rows);
        let wband = &bytes[r0 * row_bytes..r1 * row_bytes];
        // The band (at most 512 rows) stays in L1/L2 while the token tiles stream past
        // it. Each tile's kernels decode a weight block once for all its tokens; with more
        // than one tile, the band is decoded once for all of them where the kernels can
        // (the simple formats, Q4_K and Q6_K on AVX-512 VNNI; bit for bit the same
        // products).
        let m = r1 - r0;
        let mut tmp = [0.0f32; quant::TILE * 512];
        DECODED.with_borrow_mut(|decoded| {
            let use_decoded = !precise && n > quant::TILE && decoded.decode(w.ty, wband, row_bytes);
            for t0 in (0..n).step_by(quant::TILE) {
                let k = (n - t0).min(quant::TILE);
                let dst = &mut tmp[..k * m];
                if use_decoded {
                    decoded.matmul_rows(&acts[t0..t0 + k], dst);
                } else if precise {
                    exact_tile(w, wband, &x[t0 * cols..(t0 + k) * cols], dst);
                } else {
                    quant::matmul_rows(w.ty, wband, row_bytes, &acts[t0..t0 + k], dst);
                }
                let p = out_ptr;
                for (j, dj) in dst.chunks_exact(m).enumerate() {
                    for (i, v) in dj.iter().enumerate() {
                        // SAFETY: element (t0 + j, r0 + i) belongs to this band alone; in
                        // bounds by the assert above (t0 + j < n, r0 + i < rows).
                        unsafe { *p.0.add((t0 + j) * rows + r0 + i) = *v };
                    }
                }
            }
        });
    });
}

/// The precise path's tile: `dst[j * m + i]` = the exact dot of band row i with token j
/// of `xs` (the band's `m` rows against `dst.len() / m` tokens of `w.cols`).
fn exact_tile(w: &Weight, wband: &[u8], xs: &[f32], dst: &mut [f32]) {
    let row_bytes = w.row_bytes();
    let m = wband.len() / row_bytes;
    for (dj, xt) in dst.chunks_exact_mut(m).zip(xs.chunks_exact(w.cols)) {
        for (d, row) in dj.iter_mut().zip(wband.chunks_exact(row_bytes)) {
            *d = quant::dot_row_exact(w.ty, row, xt);
        }
    }
}

thread_local! {
    /// Each pool thread's decoded band, its buffer reused from call to call.
    static DECODED: std::cell::RefCell<quant::DecodedRows> =
        std::cell::RefCell::new(quant::DecodedRows::new());
}

/// Tokens per task when a prompt's activations are quantized across the pool.
const QUANT_CHUNK: usize = 16;

/// `acts[t]` = row `t` of `x` quantized for `w`. Serial for a few tokens (a decode step);
/// across the pool for a prompt, whose quantization would otherwise run on the calling
/// thread alone while the others wait for the product.
fn quantize_all(w: &Weight, x: &[f32], n: usize, acts: &mut [QuantizedActs]) {
    let cols = w.cols;
    if n <= QUANT_CHUNK {
        for (t, a) in acts.iter_mut().enumerate() {
            quant::quantize_acts(w.ty, &x[t * cols..(t + 1) * cols], a);
        }
        return;
    }
    let ptr = ActsPtr(acts.as_mut_ptr());
    pool::global().run(n.div_ceil(QUANT_CHUNK), &|c| {
        let p = ptr;
        for t in c * QUANT_CHUNK..((c + 1) * QUANT_CHUNK).min(n) {
            // SAFETY: task c alone touches tokens c * QUANT_CHUNK.., below n = acts.len(),
            // and `acts` outlives the job.
            let a = unsafe { &mut *p.0.add(t) };
            quant::quantize_acts(w.ty, &x[t * cols..(t + 1) * cols], a);
        }
    });
}

/// The activation buffers shared by the quantizing tasks, each of which takes its own.
#[derive(Clone, Copy)]
struct ActsPtr(*mut QuantizedActs);
// SAFETY: the tasks touch disjoint elements (see `quantize_all`), and the buffers outlive
// the parallel section.
unsafe impl Send for ActsPtr {}
unsafe impl Sync for ActsPtr {}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::format::GgmlType;

    /// Small deterministic values with a rough normal shape.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = |k: u32| ((s >> k) & 0xffff) as f32 / 65536.0;
                (u(16) + u(32) + u(48) - 1.5) * 2.0
            })
            .collect()
    }

    /// Token counts around the tile size: every remainder, and more than one tile.
    #[test]
    fn tiled_matmul_matches_one_token_at_a_time_bit_for_bit() {
        for ty in [
            GgmlType::Q4K,
            GgmlType::Q6K,
            GgmlType::Q8_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5K,
            GgmlType::F16,
        ] {
            // 37 rows: bands of uneven length; 512 columns: two k-quant super-blocks.
            let (rows, cols) = (37, 512);
            let bytes = quant::quantize(ty, &values(rows * cols, 3));
            let len = bytes.len();
            let w = Weight::new("w", ty, rows, cols, Arc::new(bytes), 0, len)
                .unwrap_or_else(|e| panic!("{e}"));
            for n in [1, 2, 3, 4, 5, 7, 9, 16, 17, 38] {
                let x = values(n * cols, 5 + n as u64);
                let mut out = vec![f32::NAN; n * rows];
                matmul(&w, &x, n, &mut out, false, &mut MatmulScratch::default());
                let mut acts = QuantizedActs::new();
                for t in 0..n {
                    quant::quantize_acts(ty, &x[t * cols..(t + 1) * cols], &mut acts);
                    let mut want = vec![f32::NAN; rows];
                    quant::matvec_rows(ty, w.bytes(), w.row_bytes(), &acts, &mut want);
                    for r in 0..rows {
                        let got = out[t * rows + r];
                        assert!(!got.is_nan(), "{ty} n={n} token {t} row {r}: NaN");
                        assert_eq!(
                            got.to_bits(),
                            want[r].to_bits(),
                            "{ty} n={n} token {t} row {r}: {got} vs {}",
                            want[r]
                        );
                    }
                }
                // The precise path goes through the same tiles.
                let mut exact = vec![f32::NAN; n * rows];
                matmul(&w, &x, n, &mut exact, true, &mut MatmulScratch::default());
                for t in 0..n {
                    for r in 0..rows {
                        let row = &w.bytes()[r * w.row_bytes()..(r + 1) * w.row_bytes()];
                        let want = quant::dot_row_exact(ty, row, &x[t * cols..(t + 1) * cols]);
                        assert_eq!(exact[t * rows + r].to_bits(), want.to_bits());
                    }
                }
            }
        }
    }
}
