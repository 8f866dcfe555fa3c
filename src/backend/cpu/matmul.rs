//! Multithreaded matrix products with weights kept in their file format: the activations
//! are quantized once per row (to the weight type's companion 8-bit format), then each
//! thread streams a band of weight rows against every activation row, so a weight row is
//! read from memory once per call however many tokens the batch has.

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
        for t in 0..n {
            quant::quantize_acts(w.ty, &x[t * cols..(t + 1) * cols], &mut scratch.acts[t]);
        }
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
        let mut tmp = [0.0f32; 512];
        for t in 0..n {
            let dst = &mut tmp[..r1 - r0];
            if precise {
                let xt = &x[t * cols..(t + 1) * cols];
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = quant::dot_row_exact(w.ty, &wband[i * row_bytes..(i + 1) * row_bytes], xt);
                }
            } else {
                quant::matvec_rows(w.ty, wband, row_bytes, &acts[t], dst);
            }
            let p = out_ptr;
            for (i, v) in dst.iter().enumerate() {
                // SAFETY: element (t, r0 + i) belongs to this band alone; in bounds by the
                // assert above.
                unsafe { *p.0.add(t * rows + r0 + i) = *v };
            }
        }
    });
}
