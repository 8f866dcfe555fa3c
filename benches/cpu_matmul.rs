//! CPU matrix products for prefill, at the shapes of Qwen2.5-0.5B: `896x896` (q and o
//! projections), `4864x896` (gate/up: 4864 rows of 896), `896x4864` (down), for one
//! token (decode) and 64 (a prefill chunk), in the formats its Q4_K_M file stores them
//! in: 896 columns are no whole number of 256-element k-quant blocks, so those matrices
//! are Q5_0 (a few Q8_0), and only the down projections are Q4_K or Q6_K.
//!
//! - `matmul`: the CPU backend's threaded `matmul`, as the model runs it;
//! - `1t-tiled` / `1t-per-token`: one thread, the same band-of-rows loop, with the
//!   tokens going through `matmul_rows` in tiles of `TILE` or through `matvec_rows` one
//!   at a time (the path before tiling). Both in one binary, so they are compared in the
//!   same minutes on a machine whose speed drifts.
//!
//! Throughput is in elements (weights x tokens, i.e. multiply-adds) per second.
//!
//! Run: `cargo bench --bench cpu_matmul` (filter: `-- Q4_K`, `-- n64`, ...).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use tachyon::backend::cpu::matmul::{MatmulScratch, matmul};
use tachyon::format::{GgmlType, Weight};
use tachyon::quant::{QuantizedActs, TILE, matmul_rows, matvec_rows, quantize, quantize_acts};

const CASES: [(GgmlType, usize, usize); 6] = [
    (GgmlType::Q5_0, 896, 896),
    (GgmlType::Q5_0, 4864, 896),
    (GgmlType::Q8_0, 896, 896),
    (GgmlType::Q5_0, 896, 4864),
    (GgmlType::Q4K, 896, 4864),
    (GgmlType::Q6K, 896, 4864),
];
const TOKENS: [usize; 2] = [1, 64];
/// Rows per band in the one-thread variants: a band of the widest shape (896 x 4864
/// Q6_K, about 4 KB a row) stays near 256 KB, inside L2.
const BAND: usize = 64;

/// Deterministic pseudo-random values with a rough normal shape.
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

fn main() {
    let mut c = Criterion::default().configure_from_args();
    eprintln!("dot kernels: {}", tachyon::quant::kernel_isa());
    let mut group = c.benchmark_group("cpu_matmul");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for (ty, rows, cols) in CASES {
        let bytes = quantize(ty, &values(rows * cols, 1));
        let len = bytes.len();
        let w = Weight::new("w", ty, rows, cols, Arc::new(bytes), 0, len).expect("a whole matrix");
        let rb = w.row_bytes();
        for n in TOKENS {
            let x = values(n * cols, 2);
            let mut out = vec![0f32; n * rows];
            let mut scratch = MatmulScratch::default();
            group.throughput(Throughput::Elements((rows * cols * n) as u64));
            group.bench_function(format!("{}/{rows}x{cols}/n{n}/matmul", ty.name()), |b| {
                b.iter(|| matmul(&w, black_box(&x), n, &mut out, false, &mut scratch))
            });
            if n == 1 {
                continue;
            }
            let acts: Vec<QuantizedActs> = x
                .chunks_exact(cols)
                .map(|xt| {
                    let mut a = QuantizedActs::new();
                    quantize_acts(ty, xt, &mut a);
                    a
                })
                .collect();
            let mut tmp = vec![0f32; TILE * BAND];
            group.bench_function(format!("{}/{rows}x{cols}/n{n}/1t-tiled", ty.name()), |b| {
                b.iter(|| {
                    for band in w.bytes().chunks(BAND * rb) {
                        let m = band.len() / rb;
                        for tile in acts.chunks(TILE) {
                            let dst = &mut tmp[..tile.len() * m];
                            matmul_rows(ty, black_box(band), rb, tile, dst);
                        }
                    }
                })
            });
            group.bench_function(
                format!("{}/{rows}x{cols}/n{n}/1t-per-token", ty.name()),
                |b| {
                    b.iter(|| {
                        for band in w.bytes().chunks(BAND * rb) {
                            let m = band.len() / rb;
                            for a in &acts {
                                matvec_rows(ty, black_box(band), rb, a, &mut tmp[..m]);
                            }
                        }
                    })
                },
            );
        }
    }
    group.finish();
    c.final_summary();
}
