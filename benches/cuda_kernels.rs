//! Throughput of the decode-step kernels on real shapes, timed with CUDA events, as GB/s
//! and as a percentage of the device-to-device copy bandwidth measured in the same run.
//!
//!     cargo bench --bench cuda_kernels
//!
//! Bytes are the fewest each launch must move: the weight matrix (plus activations) for
//! the GEMVs, the visible K and V rows (plus partials) for attention, the logits for argmax.
//! Without a usable GPU it prints why and exits successfully.

use criterion::{BenchmarkId, Criterion, Throughput};
use tachyon::backend::cuda::{self, CudaBackend};
use tachyon::backend::{AttnShape, Ops};

mod common;
use common::{timed, values, weight};
use tachyon::format::GgmlType;

/// Criterion timing plus one line with GB/s and % of the copy bandwidth.
fn bench(
    c: &mut Criterion,
    b: &mut CudaBackend,
    copy_gb_s: f64,
    group: &str,
    id: &str,
    bytes: u64,
    f: &mut dyn FnMut(&mut CudaBackend),
) {
    timed(b, 10, f);
    let per = timed(b, 200, f).as_secs_f64() / 200.0;
    let gb_s = bytes as f64 / per / 1e9;
    println!(
        "{group}/{id}: {:.2} us, {gb_s:.0} GB/s, {:.0}% of copy bandwidth",
        per * 1e6,
        100.0 * gb_s / copy_gb_s
    );
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::BytesDecimal(bytes));
    g.bench_function(BenchmarkId::from_parameter(id), |bench| {
        bench.iter_custom(|iters| timed(b, iters, f))
    });
    g.finish();
}

fn gemvs(c: &mut Criterion, b: &mut CudaBackend, copy: f64) {
    // (name, rows, cols, fused gate/up): Llama-3.2-1B and Llama-3.1-8B decode shapes.
    let shapes = [
        ("1b-q_o", 2048usize, 2048usize, false),
        ("1b-kv", 512, 2048, false),
        ("1b-gate_up", 8192, 2048, true),
        ("1b-down", 2048, 8192, false),
        ("1b-lm_head", 128_256, 2048, false),
        ("8b-q_o", 4096, 4096, false),
        ("8b-kv", 1024, 4096, false),
        ("8b-gate_up", 14_336, 4096, true),
        ("8b-down", 4096, 14_336, false),
    ];
    // BF16 (gemv.cu) and the block formats of Q4_K_M / Q8_0 files (gemv_qpack.cu).
    let formats = [
        ("gemv_bf16", GgmlType::BF16),
        ("gemv_q4_k", GgmlType::Q4K),
        ("gemv_q6_k", GgmlType::Q6K),
        ("gemv_q8_0", GgmlType::Q8_0),
    ];
    for (group, ty) in formats {
        for (name, rows, cols, fused) in shapes {
            gemv(c, b, copy, group, ty, (name, rows, cols, fused));
        }
    }
}

/// One GEMV shape in one format; bytes count the weights as the file stores them.
fn gemv(
    c: &mut Criterion,
    b: &mut CudaBackend,
    copy: f64,
    group: &str,
    ty: GgmlType,
    (name, rows, cols, fused): (&str, usize, usize, bool),
) {
    let w = b.upload_matrix(&weight(ty, rows, cols, 1)).expect("upload");
    let w2 = b.upload_matrix(&weight(ty, rows, cols, 2)).expect("upload");
    let x = b.act_from_host(1, cols, &values(cols, 3)).expect("upload");
    let mut out = b.alloc_act(1, rows).expect("alloc");
    let mut scratch = b.alloc_act(1, rows).expect("alloc");
    let mats = if fused { 2 } else { 1 };
    let wb = ty.bytes_for((rows * cols) as u64).expect("matrix bytes") as usize;
    let bytes = (mats * wb + cols * 4 + rows * 4) as u64;
    bench(c, b, copy, group, name, bytes, &mut |b| {
        if fused {
            b.gate_up_swiglu(&x, &w, &w2, 1, &mut out, &mut scratch)
                .expect("launch");
        } else {
            b.matmul(&x, &w, 1, &mut out).expect("launch");
        }
    });
}

fn attention(c: &mut Criterion, b: &mut CudaBackend, copy: f64) {
    for (name, heads, kv_heads, hd) in [
        ("1b", 32usize, 8usize, 64usize),
        ("8b", 32, 8, 128),
        ("qwen1.5b", 12, 2, 128),
    ] {
        for ctx in [384usize, 4096, 32_768] {
            let shape = AttnShape {
                n_heads: heads,
                n_kv_heads: kv_heads,
                head_dim: hd,
                window: None,
            };
            let kvd = kv_heads * hd;
            let mut kv = b.alloc_kv(ctx, kvd).expect("alloc");
            let q = b
                .act_from_host(1, heads * hd, &values(heads * hd, 4))
                .expect("upload");
            let k = b.act_from_host(1, kvd, &values(kvd, 5)).expect("upload");
            let v = b.act_from_host(1, kvd, &values(kvd, 6)).expect("upload");
            let mut out = b.alloc_act(1, heads * hd).expect("alloc");
            let pos = ctx - 1;
            let splits = b.attn_splits(&shape, ctx, 1);
            let bytes = (2 * ctx * kvd * 4 + heads * splits * (hd + 2) * 4 * 2) as u64;
            bench(
                c,
                b,
                copy,
                "attention_decode",
                &format!("{name}-ctx{ctx}"),
                bytes,
                &mut |b| {
                    b.attention(&q, &k, &v, &mut kv, shape, pos, 1, &mut out)
                        .expect("launch");
                },
            );
        }
    }
}

fn argmax(c: &mut Criterion, b: &mut CudaBackend, copy: f64) {
    let vocab = 151_936;
    let logits = b
        .act_from_host(1, vocab, &values(vocab, 7))
        .expect("upload");
    let s = b.device().stream().clone();
    let parts = CudaBackend::argmax_parts(vocab);
    let mut out = s.alloc_zeros::<u32>(1).expect("alloc");
    let mut pv = s.alloc_zeros::<f32>(parts).expect("alloc");
    let mut pi = s.alloc_zeros::<i32>(parts).expect("alloc");
    bench(c, b, copy, "argmax", "152k", (vocab * 4) as u64, &mut |b| {
        b.argmax(&logits, &mut out, &mut pv, &mut pi)
            .expect("launch");
    });
}

fn main() {
    let dev = match cuda::probe() {
        Ok(dev) => dev,
        Err(e) => {
            println!("cuda_kernels bench: skipping, no usable GPU: {e}");
            return;
        }
    };
    let name = dev.name().to_string();
    let copy = cuda::device_copy_bandwidth(&dev, 1 << 30, 20).expect("copy bandwidth");
    println!("cuda_kernels bench on {name}: device copy bandwidth {copy:.0} GB/s (read + written)");
    let mut b = CudaBackend::new(dev).expect("backend");
    let mut c = Criterion::default().configure_from_args();
    gemvs(&mut c, &mut b, copy);
    attention(&mut c, &mut b, copy);
    argmax(&mut c, &mut b, copy);
    c.final_summary();
}
