//! RMSNorm (+ residual add) kernel throughput on the GPU, timed with CUDA events.
//!
//!     cargo bench --bench rmsnorm
//!
//! Two shapes: 1 x 4096 (one decode step of a 4096-wide model: one block, latency-bound, so
//! read the time, not the GB/s) and 4096 x 4096 (fills the chip; 64 MiB per f32 array, past
//! the L2 of current GPUs, so this measures DRAM). Throughput counts the fewest bytes the
//! kernel must move: x read and out written (plus add read and x written back for the
//! residual form) and the weight once; compare it with the card's device-to-device copy
//! bandwidth. Without a usable GPU it prints why and exits successfully.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use cudarc::driver::{CudaSlice, sys::CUevent_flags};
use tachyon::backend::cuda::{self, CudaDevice};

/// Deterministic, non-zero inputs (timing on zeros can flatter a kernel).
fn inputs(n: usize, salt: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32 ^ salt)
                .wrapping_mul(0x9E37_79B9)
                .rotate_left(13)
                .wrapping_mul(0x85EB_CA6B);
            (h >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

struct Buffers {
    x: CudaSlice<f32>,
    add: CudaSlice<f32>,
    weight: CudaSlice<f32>,
    out: CudaSlice<f32>,
}

fn upload(dev: &CudaDevice, n_rows: usize, dim: usize) -> Result<Buffers, String> {
    let s = dev.stream();
    let up = |v: Vec<f32>| s.clone_htod(&v).map_err(|e| format!("upload: {e}"));
    Ok(Buffers {
        x: up(inputs(n_rows * dim, 1))?,
        add: up(inputs(n_rows * dim, 2).iter().map(|v| v * 1e-3).collect())?,
        weight: up(inputs(dim, 3))?,
        out: up(inputs(n_rows * dim, 4))?,
    })
}

fn launch(dev: &CudaDevice, b: &mut Buffers, with_add: bool) -> Result<(), String> {
    let r = if with_add {
        cuda::add_rmsnorm(dev, &mut b.x, &b.add, &b.weight, 1e-5, &mut b.out)
    } else {
        cuda::rmsnorm(dev, &b.x, &b.weight, 1e-5, &mut b.out)
    };
    r.map_err(|e| e.to_string())
}

/// Time `iters` back-to-back launches between two events on the device's stream.
fn time_launches(
    dev: &CudaDevice,
    b: &mut Buffers,
    with_add: bool,
    iters: u64,
) -> Result<Duration, String> {
    let s = dev.stream();
    let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let start = s.record_event(timing).map_err(|e| e.to_string())?;
    for _ in 0..iters {
        launch(dev, b, with_add)?;
    }
    let end = s.record_event(timing).map_err(|e| e.to_string())?;
    end.synchronize().map_err(|e| e.to_string())?;
    let ms = start.elapsed_ms(&end).map_err(|e| e.to_string())?;
    Ok(Duration::from_secs_f64(f64::from(ms) * 1e-3))
}

fn run(dev: &CudaDevice, c: &mut Criterion) -> Result<(), String> {
    let mut group = c.benchmark_group("rmsnorm");
    for (n_rows, dim) in [(1usize, 4096usize), (4096, 4096)] {
        let mut b = upload(dev, n_rows, dim)?;
        for with_add in [false, true] {
            let elems = (n_rows * dim) as u64;
            let bytes = 4 * (elems * if with_add { 4 } else { 2 } + dim as u64);
            group.throughput(Throughput::BytesDecimal(bytes));
            let name = if with_add { "add_rmsnorm" } else { "rmsnorm" };
            // Warm up outside the measurement: the first launch pays module and cache setup.
            time_launches(dev, &mut b, with_add, 10)?;
            let mut failure = None;
            group.bench_function(BenchmarkId::new(name, format!("{n_rows}x{dim}")), |bench| {
                bench.iter_custom(|iters| {
                    time_launches(dev, &mut b, with_add, iters).unwrap_or_else(|e| {
                        failure.get_or_insert(e);
                        Duration::ZERO
                    })
                })
            });
            if let Some(e) = failure {
                return Err(e);
            }
        }
    }
    group.finish();
    Ok(())
}

fn main() {
    let dev = match cuda::probe() {
        Ok(dev) => dev,
        Err(e) => {
            println!("rmsnorm bench: skipping, no usable GPU: {e}");
            return;
        }
    };
    println!(
        "rmsnorm bench on {} (compute {:?})",
        dev.name(),
        dev.compute_capability()
    );
    let mut c = Criterion::default().configure_from_args();
    if let Err(e) = run(&dev, &mut c) {
        eprintln!("rmsnorm bench failed: {e}");
        std::process::exit(1);
    }
    c.final_summary();
}
