//! What the GPU benches share: deterministic inputs and event timing.

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::sys::CUevent_flags;
use tachyon::backend::cuda::CudaBackend;
use tachyon::format::GgmlType;
use tachyon::format::Weight;
use tachyon::format::weights::HostBytes;

/// Deterministic small values (timing on zeros can flatter a kernel).
pub fn values(n: usize, salt: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32 ^ salt)
                .wrapping_mul(0x9E37_79B9)
                .rotate_left(13)
                .wrapping_mul(0x85EB_CA6B);
            ((h >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.05
        })
        .collect()
}

pub fn bf16_weight(rows: usize, cols: usize, salt: u32) -> Weight {
    let bytes: Vec<u8> = values(rows * cols, salt)
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let len = bytes.len();
    Weight::new(
        "bench",
        GgmlType::BF16,
        rows,
        cols,
        Arc::new(HostBytes(bytes)),
        0,
        len,
    )
    .expect("bench weight")
}

/// A `rows x cols` weight of `ty`: BF16 as [`bf16_weight`], a GGML block format the same
/// values quantized (`cols` a multiple of the block).
#[allow(dead_code)] // not every bench uses block formats
pub fn weight(ty: GgmlType, rows: usize, cols: usize, salt: u32) -> Weight {
    if ty == GgmlType::BF16 {
        return bf16_weight(rows, cols, salt);
    }
    let bytes = tachyon::quant::quantize(ty, &values(rows * cols, salt));
    let len = bytes.len();
    Weight::new("bench", ty, rows, cols, Arc::new(HostBytes(bytes)), 0, len).expect("bench weight")
}

/// Runs `f` `iters` times between two events; the elapsed device time.
pub fn timed(b: &mut CudaBackend, iters: u64, f: &mut dyn FnMut(&mut CudaBackend)) -> Duration {
    let s = b.device().stream().clone();
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let start = s.record_event(flags).expect("event");
    for _ in 0..iters {
        f(b);
    }
    let end = s.record_event(flags).expect("event");
    end.synchronize().expect("kernel failed");
    Duration::from_secs_f64(f64::from(start.elapsed_ms(&end).expect("event time")) * 1e-3)
}
