//! Throughput of a decoder layer's fused products (kernels/gemv.cu through the `Ops` a
//! layer calls: norm+QKV with the stacked q/k/v matrix, o-proj with the residual add,
//! norm+gate+up+SwiGLU, down with the residual add) on the Llama-3.2-1B and Llama-3.1-8B
//! decode shapes in BF16 (kernels/gemv.cu) and in Q4_K, Q6_K and Q8_0 (the repacked
//! quantized GEMV, kernels/gemv_qpack.cu), one token, timed with CUDA events, as GB/s and
//! as a percentage of the device-to-device copy bandwidth measured in the same run; then
//! the four together (a layer's GEMV time).
//!
//!     cargo bench --bench gemv_fused
//!
//! Bytes are the fewest each launch must move: the weights (a block format's bytes as in
//! the file; the repacked layout adds under 3% for the K formats), the activation row read,
//! the output written (and read back for the residual add). Without a usable GPU it prints why
//! and exits successfully.

use criterion::{BenchmarkId, Criterion, Throughput};
use tachyon::backend::cuda::{self, CudaBackend};
use tachyon::backend::{Ops, QkvWeights};

mod common;
use common::{timed, values, weight};
use tachyon::format::GgmlType;

/// Criterion timing plus one line with GB/s and % of the copy bandwidth.
fn bench(
    c: &mut Criterion,
    b: &mut CudaBackend,
    copy_gb_s: f64,
    id: &str,
    bytes: u64,
    f: &mut dyn FnMut(&mut CudaBackend),
) {
    timed(b, 10, f);
    let per = timed(b, 200, f).as_secs_f64() / 200.0;
    let gb_s = bytes as f64 / per / 1e9;
    println!(
        "gemv_fused/{id}: {:.2} us, {gb_s:.0} GB/s, {:.0}% of copy bandwidth",
        per * 1e6,
        100.0 * gb_s / copy_gb_s
    );
    let mut g = c.benchmark_group("gemv_fused");
    g.throughput(Throughput::BytesDecimal(bytes));
    g.bench_function(BenchmarkId::from_parameter(id), |bench| {
        bench.iter_custom(|iters| timed(b, iters, f))
    });
    g.finish();
}

/// One decode shape's layer products.
struct Shape {
    name: &'static str,
    dim: usize,
    ffn: usize,
    q_dim: usize,
    kv_dim: usize,
}

fn layer(c: &mut Criterion, b: &mut CudaBackend, copy: f64, s: &Shape, ty: GgmlType) {
    let (d, f, qd, kvd) = (s.dim, s.ffn, s.q_dim, s.kv_dim);
    let up = |b: &mut CudaBackend, rows, cols, salt| {
        b.upload_matrix(&weight(ty, rows, cols, salt))
            .expect("upload")
    };
    let qkv = b
        .upload_qkv(
            &weight(ty, qd, d, 1),
            &weight(ty, kvd, d, 2),
            &weight(ty, kvd, d, 3),
            [None; 3],
        )
        .expect("upload");
    assert!(
        matches!(qkv, QkvWeights::Stacked { .. }),
        "q/k/v of one format are stacked"
    );
    let wo = up(b, d, qd, 4);
    let wg = up(b, f, d, 5);
    let wu = up(b, f, d, 6);
    let wd = up(b, d, f, 7);
    let norm = b.upload_vector(&vec![1.0; d]).expect("upload");
    let mut x = b.act_from_host(1, d, &values(d, 8)).expect("upload");
    let att = b.act_from_host(1, qd, &values(qd, 9)).expect("upload");
    let alloc = |b: &mut CudaBackend, w| b.alloc_act(1, w).expect("alloc");
    let (mut hn, mut h) = (alloc(b, d), alloc(b, d));
    let (mut q, mut k, mut v) = (alloc(b, qd), alloc(b, kvd), alloc(b, kvd));
    let (mut gate, mut upb) = (alloc(b, f), alloc(b, f));
    let eps = 1e-5;
    let bytes = |rows: usize, cols: usize, mats: usize, add: bool| {
        let w = ty.bytes_for((rows * cols) as u64).expect("matrix bytes") as usize;
        (mats * w + cols * 4 + rows * 4 * if add { 2 } else { 1 }) as u64
    };
    let (b_qkv, b_o) = (bytes(qd + 2 * kvd, d, 1, false), bytes(d, qd, 1, true));
    let (b_gu, b_down) = (bytes(f, d, 2, false), bytes(d, f, 1, true));
    let name = format!("{}-{}", s.name, ty.to_string().to_lowercase());
    bench(c, b, copy, &format!("{name}-norm_qkv"), b_qkv, &mut |b| {
        b.norm_qkv(&x, &norm, eps, &qkv, 1, &mut hn, &mut q, &mut k, &mut v)
            .expect("launch");
    });
    bench(c, b, copy, &format!("{name}-o_add"), b_o, &mut |b| {
        b.matmul_add(&att, &wo, 1, &mut x, &mut h).expect("launch");
    });
    bench(
        c,
        b,
        copy,
        &format!("{name}-norm_gate_up"),
        b_gu,
        &mut |b| {
            b.norm_gate_up_swiglu(&x, &norm, eps, &wg, &wu, 1, &mut hn, &mut gate, &mut upb)
                .expect("launch");
        },
    );
    let total = b_qkv + b_o + b_gu + b_down;
    bench(c, b, copy, &format!("{name}-down_add"), b_down, &mut |b| {
        b.matmul_add(&gate, &wd, 1, &mut x, &mut h).expect("launch");
    });
    bench(c, b, copy, &format!("{name}-layer"), total, &mut |b| {
        b.norm_qkv(&x, &norm, eps, &qkv, 1, &mut hn, &mut q, &mut k, &mut v)
            .expect("launch");
        b.matmul_add(&att, &wo, 1, &mut x, &mut h).expect("launch");
        b.norm_gate_up_swiglu(&x, &norm, eps, &wg, &wu, 1, &mut hn, &mut gate, &mut upb)
            .expect("launch");
        b.matmul_add(&gate, &wd, 1, &mut x, &mut h).expect("launch");
    });
}

fn main() {
    let dev = match cuda::probe() {
        Ok(dev) => dev,
        Err(e) => {
            println!("gemv_fused bench: skipping, no usable GPU: {e}");
            return;
        }
    };
    let name = dev.name().to_string();
    let copy = cuda::device_copy_bandwidth(&dev, 1 << 30, 20).expect("copy bandwidth");
    println!("gemv_fused bench on {name}: device copy bandwidth {copy:.0} GB/s (read + written)");
    let mut b = CudaBackend::new(dev).expect("backend");
    let mut c = Criterion::default().configure_from_args();
    for s in [
        Shape {
            name: "1b",
            dim: 2048,
            ffn: 8192,
            q_dim: 2048,
            kv_dim: 512,
        },
        Shape {
            name: "8b",
            dim: 4096,
            ffn: 14_336,
            q_dim: 4096,
            kv_dim: 1024,
        },
    ] {
        for ty in [GgmlType::BF16, GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q8_0] {
            layer(&mut c, &mut b, copy, &s, ty);
        }
    }
    c.final_summary();
}
