//! The matrix products of more than 4 activation rows on BF16 weights (kernels/gemm_mma.cu,
//! tensor cores): speculative verify steps (8 and 16 rows) on the Llama-3.2-1B and
//! Llama-3.1-8B shapes as GB/s, % of the device-to-device copy bandwidth and their cost in
//! single-token GEMVs of the same matrix (the target: at most 1.3x for 8 rows), and
//! a 512-row prefill chunk as TFLOP/s (BF16, and Q4_K through the qpack kernels' wide form);
//! then the 8B verify products again with Q4_K and Q8_0 weights (gemm_mma.cu's qpack
//! kernels, against the repacked GEMV of one row); timed with CUDA events.
//!
//!     cargo bench --bench verify_gemm
//!
//! Bytes are the fewest a launch must move: the weights once, the activation rows read, the
//! output rows written. Flops are 2 * rows * cols * n (the useful ones; the kernel issues
//! twice that on the tensor cores for its hi/lo activation split). Criterion runs short
//! (0.5 s warm-up, 1.5 s measurement) so the whole bench fits its GPU-check step. Without
//! a usable GPU it prints why and exits successfully.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use tachyon::backend::Ops;
use tachyon::backend::cuda::{self, CudaBackend, CudaMat};
use tachyon::format::GgmlType;

mod common;
use common::{bf16_weight, timed, values, weight};

/// Mean device time of one call of `f`, after a warm-up.
fn per_call(b: &mut CudaBackend, f: &mut dyn FnMut(&mut CudaBackend)) -> f64 {
    timed(b, 10, f);
    timed(b, 200, f).as_secs_f64() / 200.0
}

/// Criterion's timing of `f` in `group/id` with `throughput`.
fn criterion_case(
    c: &mut Criterion,
    b: &mut CudaBackend,
    group: &str,
    id: &str,
    throughput: Throughput,
    f: &mut dyn FnMut(&mut CudaBackend),
) {
    let mut g = c.benchmark_group(group);
    g.throughput(throughput);
    g.bench_function(BenchmarkId::from_parameter(id), |bench| {
        bench.iter_custom(|iters| timed(b, iters, f))
    });
    g.finish();
}

/// `W x` for `n` rows of a fresh activation matrix.
fn product<'w>(
    b: &mut CudaBackend,
    w: &'w CudaMat,
    rows: usize,
    cols: usize,
    n: usize,
) -> impl FnMut(&mut CudaBackend) + use<'w> {
    let x = b
        .act_from_host(n, cols, &values(n * cols, 3))
        .expect("upload");
    let mut out = b.alloc_act(n, rows).expect("alloc");
    move |b: &mut CudaBackend| b.matmul(&x, w, n, &mut out).expect("launch")
}

fn main() {
    let dev = match cuda::probe() {
        Ok(dev) => dev,
        Err(e) => {
            println!("verify_gemm bench: skipping, no usable GPU: {e}");
            return;
        }
    };
    let name = dev.name().to_string();
    let copy = cuda::device_copy_bandwidth(&dev, 1 << 30, 20).expect("copy bandwidth");
    println!("verify_gemm bench on {name}: device copy bandwidth {copy:.0} GB/s (read + written)");
    let mut b = CudaBackend::new(dev).expect("backend");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args();
    // (name, rows, cols): the 1B and 8B products a verify step runs (gate and up are two
    // separate products past 4 rows).
    let shapes = [
        ("1b-q_o", 2048usize, 2048usize),
        ("1b-gate", 8192, 2048),
        ("1b-down", 2048, 8192),
        ("8b-q_o", 4096, 4096),
        ("8b-gate", 14_336, 4096),
        ("8b-down", 4096, 14_336),
    ];
    // BF16 on every shape, then the block formats of Q4_K_M and Q8_0 files on the 8B ones.
    let mut cases: Vec<_> = shapes.iter().map(|&s| (GgmlType::BF16, s)).collect();
    for ty in [GgmlType::Q4K, GgmlType::Q8_0] {
        cases.extend(shapes[3..].iter().map(|&s| (ty, s)));
    }
    for (ty, (shape, rows, cols)) in cases {
        let host = weight(ty, rows, cols, 1);
        let w = b.upload_matrix(&host).expect("upload");
        let mut single = product(&mut b, &w, rows, cols, 1);
        let one = per_call(&mut b, &mut single);
        for n in [8usize, 16] {
            let mut f = product(&mut b, &w, rows, cols, n);
            let per = per_call(&mut b, &mut f);
            let bytes = (host.byte_len() + n * cols * 4 + n * rows * 4) as u64;
            let gb_s = bytes as f64 / per / 1e9;
            let id = if ty == GgmlType::BF16 {
                format!("{shape}-n{n}")
            } else {
                format!("{shape}-{}-n{n}", ty.name())
            };
            println!(
                "verify_gemm/{id}: {:.2} us, {gb_s:.0} GB/s, {:.0}% of copy bandwidth, {:.2}x the 1-row GEMV ({:.2} us)",
                per * 1e6,
                100.0 * gb_s / copy,
                per / one,
                one * 1e6
            );
            criterion_case(
                &mut c,
                &mut b,
                "verify_gemm",
                &id,
                Throughput::BytesDecimal(bytes),
                &mut f,
            );
        }
    }
    // A 512-row prefill chunk through the 1B and 8B gate products: BF16, then Q4_K (the
    // wide form of the qpack kernels, 64 tokens a block).
    let gates = [("1b-gate", 8192usize, 2048usize), ("8b-gate", 14_336, 4096)];
    let prefill = gates.iter().map(|&s| (GgmlType::BF16, s));
    for (ty, (shape, rows, cols)) in prefill.chain(gates.iter().map(|&s| (GgmlType::Q4K, s))) {
        let n = 512;
        let host = match ty {
            GgmlType::BF16 => bf16_weight(rows, cols, 2),
            _ => weight(ty, rows, cols, 2),
        };
        let w = b.upload_matrix(&host).expect("upload");
        let mut f = product(&mut b, &w, rows, cols, n);
        let per = per_call(&mut b, &mut f);
        let flops = 2 * rows * cols * n;
        let id = match ty {
            GgmlType::BF16 => format!("{shape}-n{n}"),
            _ => format!("{shape}-{}-n{n}", ty.name()),
        };
        println!(
            "prefill_gemm/{id}: {:.1} us, {:.1} TFLOP/s",
            per * 1e6,
            flops as f64 / per / 1e12
        );
        criterion_case(
            &mut c,
            &mut b,
            "prefill_gemm",
            &id,
            Throughput::Elements(flops as u64),
            &mut f,
        );
    }
    c.final_summary();
}
