//! Mat-vec throughput of the CPU dot kernels, single-threaded, per weight format.
//!
//! Shapes are Qwen2.5-1.5B's FFN: `8960x1536` (gate/up: 8960 rows of 1536) and
//! `1536x8960` (down: 1536 rows of 8960). Each runs twice:
//! - `hot`: one matrix, small enough to stay in a large L3 between iterations;
//! - `stream`: iterations rotate over copies totalling at least 256 MB, so weights come
//!   from DRAM as they do when decoding a whole model;
//! - `l2`: the first rows of the matrix, about 384 KB, which stay in L2: the kernels'
//!   compute ceiling;
//! - `stream-2t` (wall clock only): `stream` with the rows split between two threads,
//!   as the CPU backend runs it; its GB/s is the pair's, not one thread's.
//!
//! Throughput is in decimal GB/s of weight bytes; rows/s is the row count in the bench
//! name divided by the reported time.
//!
//! Run: `cargo bench --bench quant_dot` (filter: `-- Q4_K`, `-- stream`, ...).
//!
//! On a machine shared with other work, wall time counts the time this thread waits
//! for a core. `QUANT_BENCH_CLOCK=cpu` measures the thread's own CPU time instead (from
//! `/proc/thread-self/schedstat`, Linux only; it advances in scheduler ticks, so the
//! samples are made long enough for a tick to be noise).

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput};
use tachyon::format::GgmlType;
use tachyon::quant::{QuantizedActs, matvec_rows, quantize, quantize_acts};

const SHAPES: [(usize, usize); 2] = [(8960, 1536), (1536, 8960)];
const STREAM_BYTES: usize = 256 << 20;
const L2_BYTES: usize = 384 << 10;

const TYPES: [GgmlType; 11] = [
    GgmlType::Q4K,
    GgmlType::Q6K,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_1,
    GgmlType::Q4_0,
    GgmlType::Q5_1,
    GgmlType::Q5K,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::F32,
];

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

fn bench_matvec<M: Measurement + 'static>(
    c: &mut Criterion<M>,
    sample_time: Duration,
    two_threads: bool,
) {
    eprintln!("dot kernels: {}", tachyon::quant::kernel_isa());
    for ty in TYPES {
        let mut group = c.benchmark_group(format!("matvec/{}", ty.name()));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(sample_time * 10);
        for (rows, cols) in SHAPES {
            let w = quantize(ty, &values(rows * cols, 1));
            let row_bytes = w.len() / rows;
            let mut acts = QuantizedActs::new();
            quantize_acts(ty, &values(cols, 2), &mut acts);
            let mut out = vec![0f32; rows];
            group.throughput(Throughput::BytesDecimal(w.len() as u64));

            group.bench_function(format!("{rows}x{cols}/hot"), |b| {
                b.iter(|| matvec_rows(ty, black_box(&w), row_bytes, black_box(&acts), &mut out))
            });

            let l2_rows = (L2_BYTES / row_bytes).clamp(1, rows);
            group.throughput(Throughput::BytesDecimal((l2_rows * row_bytes) as u64));
            group.bench_function(format!("{rows}x{cols}/l2"), |b| {
                b.iter(|| {
                    let w = &w[..l2_rows * row_bytes];
                    matvec_rows(
                        ty,
                        black_box(w),
                        row_bytes,
                        black_box(&acts),
                        &mut out[..l2_rows],
                    )
                })
            });
            group.throughput(Throughput::BytesDecimal(w.len() as u64));

            let copies: Vec<Vec<u8>> = (0..STREAM_BYTES.div_ceil(w.len()))
                .map(|_| w.clone())
                .collect();
            let mut next = 0;
            group.bench_function(format!("{rows}x{cols}/stream"), |b| {
                b.iter(|| {
                    next = (next + 1) % copies.len();
                    matvec_rows(
                        ty,
                        black_box(&copies[next]),
                        row_bytes,
                        black_box(&acts),
                        &mut out,
                    )
                })
            });

            if two_threads {
                group.bench_function(format!("{rows}x{cols}/stream-2t"), |b| {
                    b.iter(|| {
                        next = (next + 1) % copies.len();
                        let (w0, w1) = copies[next].split_at(rows / 2 * row_bytes);
                        let (o0, o1) = out.split_at_mut(rows / 2);
                        rayon::join(
                            || matvec_rows(ty, black_box(w0), row_bytes, black_box(&acts), o0),
                            || matvec_rows(ty, black_box(w1), row_bytes, black_box(&acts), o1),
                        );
                    })
                });
            }
        }
        group.finish();
    }
}

/// CPU time consumed by the calling thread, in nanoseconds.
struct CpuTime;

fn thread_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("QUANT_BENCH_CLOCK=cpu needs Linux");
    stat.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat format")
}

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Nanoseconds, like wall time, so wall time's formatting applies.
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

fn main() {
    if std::env::var("QUANT_BENCH_CLOCK").is_ok_and(|v| v == "cpu") {
        let mut c = Criterion::default()
            .with_measurement(CpuTime)
            .configure_from_args();
        // The other thread's time would not be counted, so no two-thread runs here.
        bench_matvec(&mut c, Duration::from_millis(400), false);
        c.final_summary();
    } else {
        let mut c = Criterion::default().configure_from_args();
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build_global()
            .expect("rayon pool");
        bench_matvec(&mut c, Duration::from_millis(200), true);
        c.final_summary();
    }
}
