//! The precision of the tensor-core product (`kernels/gemm_mma.cu`, BF16 weights, more
//! than 4 activation rows), measured against float64. The kernel splits each f32
//! activation into bf16 hi + lo (two MMAs); this test prints the worst error of each output
//! relative to its sum of |w x| next to the CPU twin's (a plain f32 sum) and bounds it
//! tighter than a single bf16 activation could meet, so a kernel that dropped the lo half
//! fails here even where `ops`'s looser f64 bound would let it pass. The shapes are a
//! verify step (8 and 16 rows) at a 2048-column width and a partial tile; the case list of
//! `tests/cuda/ops.rs` covers the edges and the fallback.

use tachyon::backend::Ops;
use tachyon::backend::cpu::{CpuAct, CpuBackend};
use tachyon::format::GgmlType;

use super::Rng;
use super::ops::{backend, down, matvec_f64, poisoned, up, weight};

/// Worst |got - want| / sum |w x| over the outputs (infinite on a non-finite output).
fn worst_ratio(got: &[f32], want: &[f64], abs: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .zip(abs)
        .map(|((&g, &w), &a)| {
            if g.is_finite() {
                (f64::from(g) - w).abs() / a.max(1e-30)
            } else {
                f64::INFINITY
            }
        })
        .fold(0.0, f64::max)
}

#[test]
#[ignore = "needs a GPU"]
fn mma_product_keeps_f32_precision_against_f64() {
    let mut gpu = backend();
    let mut cpu = CpuBackend::new(true, false);
    let mut rng = Rng::from_env_or_clock("mma precision");
    for &(rows, cols, n) in &[(64usize, 2048usize, 8usize), (48, 2048, 16), (40, 264, 17)] {
        let (w, exact) = weight(
            &mut rng,
            GgmlType::BF16,
            rows,
            cols,
            1.0 / (cols as f32).sqrt(),
        );
        let m = gpu.upload_matrix(&w).unwrap_or_else(|e| panic!("{e}"));
        // Residual-stream-like magnitudes, one per row: the split is relative to each value.
        let mut x = Vec::with_capacity(n * cols);
        for _ in 0..n {
            let mag = rng.log_uniform(-2.0, 2.0);
            x.extend(rng.vec(cols, mag));
        }
        let gx = up(&mut gpu, n, cols, &x);
        let mut g = poisoned(&mut gpu, n, rows);
        gpu.matmul(&gx, &m, n, &mut g)
            .unwrap_or_else(|e| panic!("{e}"));
        let got = down(&mut gpu, &g);
        let cx = CpuAct {
            data: x.clone(),
            width: cols,
        };
        let mut c = CpuAct {
            data: vec![f32::NAN; n * rows],
            width: rows,
        };
        cpu.matmul(&cx, &w, n, &mut c)
            .unwrap_or_else(|e| panic!("{e}"));
        let (mut gpu_worst, mut cpu_worst) = (0f64, 0f64);
        for t in 0..n {
            let (want, abs) = matvec_f64(&exact, rows, cols, &x[t * cols..(t + 1) * cols]);
            let row = t * rows..(t + 1) * rows;
            gpu_worst = gpu_worst.max(worst_ratio(&got[row.clone()], &want, &abs));
            cpu_worst = cpu_worst.max(worst_ratio(&c.data[row], &want, &abs));
        }
        println!(
            "{rows} x {cols}, {n} rows: worst error / sum|w x|: gpu {gpu_worst:.2e}, cpu twin {cpu_worst:.2e}"
        );
        // hi + lo leaves at most 2^-16 of each activation (1.5e-5 of sum |w x| if every
        // term's error had one sign); with random signs it averages down to a few 1e-7
        // here. A bf16-only activation (2^-8 per term) measured 1.7e-4 at 2048 columns.
        assert!(
            gpu_worst <= 1e-5,
            "{rows} x {cols}, {n} rows: the tensor-core product's worst error is {gpu_worst:e} of sum |w x|"
        );
    }
}
