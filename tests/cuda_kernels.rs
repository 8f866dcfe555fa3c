//! CUDA kernel tests: the RMSNorm kernel here, every `CudaBackend` op against its CPU twin
//! in `cuda/ops.rs`, whole-model logits GPU vs CPU in `cuda/model.rs`.
//!
//! The tests that launch kernels need a GPU and are `#[ignore]`d; on a GPU machine run
//!
//!     TACHYON_REQUIRE_CUDA=1 cargo test --release --test cuda_kernels -- --ignored
//!
//! (`TACHYON_REQUIRE_CUDA=1` makes a build without nvcc fail instead of silently producing
//! a binary with no kernels.) The other tests run everywhere: the probe must fail cleanly on
//! a machine without a GPU, the embedded fatbin must hold the architectures build.rs asks
//! for, and the committed bindings snapshot must match what bindgen generates.
//!
//! Inputs come from a xorshift generator with a fresh seed per run, printed at the start of
//! each GPU test; set `TACHYON_TEST_SEED=<seed>` to replay a failure. Outputs are poisoned
//! with NaN before every launch, and NaN never passes a comparison.

#[path = "cuda/attention.rs"]
mod attention;
#[path = "cuda/attention_prefill.rs"]
mod attention_prefill;
#[path = "common/mod.rs"]
mod common;
#[path = "cuda/fused.rs"]
mod fused;
#[path = "cuda/mask.rs"]
mod mask;
#[path = "cuda/mma.rs"]
mod mma;
#[path = "cuda/model.rs"]
mod model;
#[path = "cuda/ops.rs"]
mod ops;
#[path = "cuda/pdl.rs"]
mod pdl;
#[path = "cuda/penalty.rs"]
mod penalty;
#[path = "cuda/profile.rs"]
mod profile;
#[path = "cuda/sample.rs"]
mod sample;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DriverError};
use tachyon::backend::cpu::ops::rmsnorm as cpu_rmsnorm;
use tachyon::backend::cuda::{self, CudaDevice, CudaUnavailable, KernelError};

/// Largest accepted max |gpu - ref| / max |ref|. The GPU's tree reduction is close to
/// float64 (~1e-7); the CPU twin sums sequentially in f32 and drifts up to ~2e-6 at dim 8192
/// (measured over random inputs). 1e-5 leaves that margin and still catches a dropped or
/// doubled element at dim 8192 (a 1/8192 change of the mean: ~6e-5 in the output).
const REL_TOL: f64 = 1e-5;
const DIMS: &[usize] = &[1, 3, 17, 576, 896, 1536, 4097, 8192];
const ROWS: &[usize] = &[1, 5];

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// xorshift64*: small, seedable, good enough for test data.
struct Rng(u64);

impl Rng {
    /// Seed from `TACHYON_TEST_SEED` if set, else from the clock; printed either way.
    fn from_env_or_clock(test: &str) -> Self {
        let seed = std::env::var("TACHYON_TEST_SEED")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or_else(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0x9E37_79B9_7F4A_7C15);
                nanos ^ (u64::from(std::process::id()) << 32)
            });
        println!("{test}: seed {seed} (replay with TACHYON_TEST_SEED={seed})");
        // xorshift must not start at 0.
        Rng(seed | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    fn sym(&mut self) -> f32 {
        // 24 random bits: exactly representable in f32.
        ((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.sym() * scale).collect()
    }

    /// 10^u for u uniform in [lo, hi): magnitudes far from 1 catch scaling mistakes.
    fn log_uniform(&mut self, lo: f32, hi: f32) -> f32 {
        10f32.powf(lo + (self.sym() + 1.0) * 0.5 * (hi - lo))
    }
}

/// Whether the device is the emulated GPU (scripts/emulated-gpu.sh), where a kernel runs
/// thousands of times slower: tests shrink their repeat counts there, never their shapes'
/// odd sizes, GQA ratios or split counts.
pub fn emulated() -> bool {
    std::env::var("TACHYON_EMULATED_GPU").as_deref() == Ok("1")
}

fn gpu() -> CudaDevice {
    cuda::probe().unwrap_or_else(|e| panic!("these tests need a usable CUDA GPU: {e}"))
}

fn up(stream: &std::sync::Arc<CudaStream>, host: &[f32]) -> CudaSlice<f32> {
    stream
        .clone_htod(host)
        .unwrap_or_else(|e| panic!("host-to-device copy failed: {e}"))
}

fn down<S: DevicePtr<f32>>(stream: &std::sync::Arc<CudaStream>, dev: &S) -> Vec<f32> {
    stream
        .clone_dtoh(dev)
        .unwrap_or_else(|e| panic!("device-to-host copy failed: {e}"))
}

/// max |got - want| / max |want|; infinite if any output is NaN or infinite.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want
        .iter()
        .fold(0f64, |m, v| m.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    let mut worst = 0f64;
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        worst = worst.max((f64::from(g) - w).abs());
    }
    worst / scale
}

/// float64 reference of one row, from the already-updated residual row.
fn rmsnorm_f64(x: &[f32], weight: &[f32], eps: f32) -> Vec<f64> {
    let ss: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
    let scale = 1.0 / (ss + f64::from(eps)).sqrt();
    x.iter()
        .zip(weight)
        .map(|(&v, &w)| f64::from(v) * scale * f64::from(w))
        .collect()
}

struct Case {
    n_rows: usize,
    dim: usize,
    with_add: bool,
    /// Elements to offset every buffer by: 1 makes the pointers 4 bytes off 16-byte
    /// alignment, forcing the kernel's scalar path even when dim % 4 == 0.
    misalign: usize,
}

/// Runs one case on the GPU and checks it against the CPU twin and a float64 reference.
fn check_case(dev: &CudaDevice, rng: &mut Rng, c: &Case) {
    let stream = dev.stream();
    let n = c.n_rows * c.dim;
    let x_scale = rng.log_uniform(-3.0, 3.0);
    let x_host = rng.vec(n, x_scale);
    let add_scale = x_scale * rng.log_uniform(-1.0, 1.0);
    let add_host = rng.vec(n, add_scale);
    let weight_host = rng.vec(c.dim, 2.0);
    let eps = [1e-6f32, 1e-5, 1e-2][(rng.next_u64() % 3) as usize];

    // CPU side: the residual add, then the existing CPU rmsnorm per row.
    let x_new: Vec<f32> = if c.with_add {
        x_host.iter().zip(&add_host).map(|(a, b)| a + b).collect()
    } else {
        x_host.clone()
    };
    let mut cpu_out = vec![0f32; n];
    let mut ref64 = Vec::with_capacity(n);
    for (row, out_row) in x_new.chunks(c.dim).zip(cpu_out.chunks_mut(c.dim)) {
        cpu_rmsnorm(row, &weight_host, eps, out_row);
        ref64.extend(rmsnorm_f64(row, &weight_host, eps));
    }

    // GPU side. Every buffer gets `misalign` leading padding elements and is used through
    // a view that skips them.
    let pad = |v: &[f32]| -> Vec<f32> {
        let mut p = vec![f32::NAN; c.misalign];
        p.extend_from_slice(v);
        p
    };
    let m = c.misalign;
    let mut x_dev = up(stream, &pad(&x_host));
    let add_dev = up(stream, &pad(&add_host));
    let w_dev = up(stream, &pad(&weight_host));
    let mut out_dev = up(stream, &vec![f32::NAN; n + m]); // poisoned
    let launched = if c.with_add {
        cuda::add_rmsnorm(
            dev,
            &mut x_dev.slice_mut(m..),
            &add_dev.slice(m..),
            &w_dev.slice(m..),
            eps,
            &mut out_dev.slice_mut(m..),
        )
    } else {
        cuda::rmsnorm(
            dev,
            &x_dev.slice(m..),
            &w_dev.slice(m..),
            eps,
            &mut out_dev.slice_mut(m..),
        )
    };
    launched.unwrap_or_else(|e| panic!("launch failed: {e}"));
    dev.synchronize()
        .unwrap_or_else(|e| panic!("kernel failed: {e}"));
    let gpu_out = down(stream, &out_dev.slice(m..));
    let gpu_x = down(stream, &x_dev.slice(m..));

    let what = format!(
        "n_rows={} dim={} add={} misalign={} eps={eps:e} x_scale={x_scale:e}",
        c.n_rows, c.dim, c.with_add, c.misalign
    );
    // The residual update is one f32 add per element on both sides: bit-identical. Without
    // add, x must be left untouched.
    let x_bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert!(
        x_bits(&gpu_x) == x_bits(&x_new),
        "{what}: residual x differs from the CPU's x + add"
    );

    let cpu64: Vec<f64> = cpu_out.iter().map(|&v| f64::from(v)).collect();
    let err_cpu = rel_err(&gpu_out, &cpu64);
    let err_f64 = rel_err(&gpu_out, &ref64);
    let cpu_vs_f64 = rel_err(&cpu_out, &ref64);
    assert!(
        err_cpu <= REL_TOL && err_f64 <= REL_TOL,
        "{what}: gpu vs cpu {err_cpu:e}, gpu vs f64 {err_f64:e} (cpu vs f64 {cpu_vs_f64:e}), tolerance {REL_TOL:e}"
    );
}

// ---------------------------------------------------------------------------------------
// GPU tests
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs a GPU"]
fn rmsnorm_matches_cpu() {
    let dev = gpu();
    println!(
        "device: {} (compute {:?})",
        dev.name(),
        dev.compute_capability()
    );
    let mut rng = Rng::from_env_or_clock("rmsnorm_matches_cpu");
    for &dim in DIMS {
        for &n_rows in ROWS {
            for with_add in [false, true] {
                check_case(
                    &dev,
                    &mut rng,
                    &Case {
                        n_rows,
                        dim,
                        with_add,
                        misalign: 0,
                    },
                );
            }
        }
    }
}

/// dim % 4 == 0 but pointers off 16-byte alignment: must take the scalar path, not fault or
/// read the wrong elements.
#[test]
#[ignore = "needs a GPU"]
fn rmsnorm_unaligned_views_use_scalar_path() {
    let dev = gpu();
    let mut rng = Rng::from_env_or_clock("rmsnorm_unaligned_views_use_scalar_path");
    for &dim in &[4usize, 576, 4096] {
        for with_add in [false, true] {
            check_case(
                &dev,
                &mut rng,
                &Case {
                    n_rows: 3,
                    dim,
                    with_add,
                    misalign: 1,
                },
            );
        }
    }
}

/// Many rows: one block per row must cover a grid far larger than the SM count.
#[test]
#[ignore = "needs a GPU"]
fn rmsnorm_many_rows() {
    let dev = gpu();
    let mut rng = Rng::from_env_or_clock("rmsnorm_many_rows");
    check_case(
        &dev,
        &mut rng,
        &Case {
            n_rows: 1000,
            dim: 2048,
            with_add: true,
            misalign: 0,
        },
    );
    check_case(
        &dev,
        &mut rng,
        &Case {
            n_rows: 513,
            dim: 17,
            with_add: false,
            misalign: 0,
        },
    );
}

#[test]
#[ignore = "needs a GPU"]
fn rmsnorm_rejects_bad_shapes_and_accepts_zero_rows() {
    let dev = gpu();
    let stream = dev.stream();
    let w = up(stream, &[1.0; 8]);
    let x = up(stream, &[1.0; 20]); // not a multiple of 8
    let mut out = up(stream, &[0.0; 20]);
    let err = cuda::rmsnorm(&dev, &x, &w, 1e-5, &mut out);
    assert!(matches!(err, Err(KernelError::Shape { .. })), "{err:?}");

    let x = up(stream, &[1.0; 16]);
    let mut out_short = up(stream, &[0.0; 8]);
    let err = cuda::rmsnorm(&dev, &x, &w, 1e-5, &mut out_short);
    assert!(matches!(err, Err(KernelError::Shape { .. })), "{err:?}");

    let mut x = up(stream, &[1.0; 16]);
    let add_short = up(stream, &[1.0; 8]);
    let mut out = up(stream, &[0.0; 16]);
    let err = cuda::add_rmsnorm(&dev, &mut x, &add_short, &w, 1e-5, &mut out);
    assert!(matches!(err, Err(KernelError::Shape { .. })), "{err:?}");

    // Zero rows: nothing to do, no launch (a zero-block grid would be a launch error).
    let empty = stream
        .alloc_zeros::<f32>(0)
        .unwrap_or_else(|e| panic!("alloc: {e}"));
    let mut empty_out = stream
        .alloc_zeros::<f32>(0)
        .unwrap_or_else(|e| panic!("alloc: {e}"));
    cuda::rmsnorm(&dev, &empty, &w, 1e-5, &mut empty_out).unwrap_or_else(|e| panic!("{e}"));
    dev.synchronize()
        .unwrap_or_else(|e: DriverError| panic!("{e}"));
}

// ---------------------------------------------------------------------------------------
// Tests that run everywhere
// ---------------------------------------------------------------------------------------

/// On a machine without a GPU (or without kernels), probing must return an error that says
/// why, not panic. With a GPU it must succeed.
#[test]
fn probe_fails_cleanly_or_finds_a_gpu() {
    match cuda::probe() {
        Ok(dev) => println!(
            "CUDA device: {} (compute {:?})",
            dev.name(),
            dev.compute_capability()
        ),
        Err(e) => {
            let msg = e.to_string();
            println!("CUDA unavailable: {msg}");
            assert!(!msg.is_empty());
            if !cuda::kernels_built() {
                assert!(matches!(e, CudaUnavailable::NoKernels(_)), "{e:?}");
                assert!(
                    msg.starts_with("tachyon was built without CUDA kernels ("),
                    "{msg}"
                );
            // SAFETY: only probes whether the driver library can be opened.
            } else if !unsafe { cudarc::driver::sys::is_culib_present() } {
                assert!(matches!(e, CudaUnavailable::NoDriver), "{e:?}");
                assert_eq!(msg, "libcuda not found (no NVIDIA driver)");
            }
        }
    }
}

/// The GPU is held to REL_TOL against both the CPU twin and float64, so the twin itself
/// must sit well inside it on the same inputs, or the GPU tests would flake on the CPU's
/// rounding. Also exercises the comparison helpers without a GPU.
#[test]
fn cpu_twin_is_within_tolerance_of_f64() {
    let mut rng = Rng::from_env_or_clock("cpu_twin_is_within_tolerance_of_f64");
    let mut worst = 0f64;
    for &dim in DIMS {
        for _ in 0..4 {
            let scale = rng.log_uniform(-3.0, 3.0);
            let x = rng.vec(dim, scale);
            let w = rng.vec(dim, 2.0);
            let mut out = vec![f32::NAN; dim];
            cpu_rmsnorm(&x, &w, 1e-6, &mut out);
            worst = worst.max(rel_err(&out, &rmsnorm_f64(&x, &w, 1e-6)));
        }
    }
    println!("worst cpu-vs-f64 relative error: {worst:e}");
    assert!(worst < REL_TOL / 2.0, "{worst:e}");
    // NaN never passes.
    assert_eq!(rel_err(&[f32::NAN], &[1.0]), f64::INFINITY);
}

/// One entry of a fatbin container: what it holds and for which SM.
#[derive(Debug, PartialEq)]
struct FatbinEntry {
    /// 1: PTX, 2: ELF (SASS machine code).
    kind: u16,
    /// e.g. 80 for sm_80 / compute_80, 90 for sm_90a.
    arch: u32,
}

/// Reads the entry list of a fatbin. The container format is not formally documented; the
/// layout used here is what nvcc 13 writes: a 16-byte header (u32 magic 0xBA55ED50, u16
/// version, u16 header size, u64 payload size), then entries each with a u16 kind at
/// offset 0, u32 entry-header size at 4, u64 payload size at 8 and u32 SM arch at 28.
fn fatbin_entries(bin: &[u8]) -> Result<Vec<FatbinEntry>, String> {
    let u16_at = |o: usize| bin.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        bin.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    };
    let u64_at = |o: usize| {
        bin.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    if u32_at(0) != Some(0xBA55_ED50) {
        return Err("bad fatbin magic".into());
    }
    let header = usize::from(u16_at(6).ok_or("truncated header")?);
    let total = u64_at(8).ok_or("truncated header")? as usize;
    if header + total != bin.len() {
        return Err(format!(
            "fatbin says {} bytes, has {}",
            header + total,
            bin.len()
        ));
    }
    let mut entries = Vec::new();
    let mut off = header;
    while off < bin.len() {
        let kind = u16_at(off).ok_or("truncated entry")?;
        let entry_header = u32_at(off + 4).ok_or("truncated entry")? as usize;
        let size = u64_at(off + 8).ok_or("truncated entry")? as usize;
        let arch = u32_at(off + 28).ok_or("truncated entry")?;
        if kind == 2
            && bin.get(off + entry_header..off + entry_header + 4) != Some(b"\x7fELF".as_slice())
        {
            return Err(format!("entry at {off} claims ELF but is not"));
        }
        entries.push(FatbinEntry { kind, arch });
        off += entry_header + size;
    }
    Ok(entries)
}

#[test]
fn fatbin_is_embedded_with_the_requested_architectures() {
    if !cuda::kernels_built() {
        println!(
            "skipping: built without CUDA kernels ({})",
            cuda::kernels_absent_reason()
        );
        assert!(cuda::KERNELS_FATBIN.is_empty());
        return;
    }
    let bin = cuda::KERNELS_FATBIN;
    println!(
        "fatbin: {} bytes, built by {}",
        bin.len(),
        cuda::NVCC_VERSION
    );
    assert!(!bin.is_empty());
    let entries = fatbin_entries(bin).unwrap_or_else(|e| panic!("{e}"));
    println!("entries: {entries:?}");
    for want in [
        FatbinEntry { kind: 2, arch: 80 },
        FatbinEntry { kind: 2, arch: 90 },
        FatbinEntry { kind: 1, arch: 80 },
    ] {
        assert!(entries.contains(&want), "missing {want:?} in {entries:?}");
    }
    // Built for old drivers (CUDA 12.2's ptxas, see build.rs): the PTX is stored uncompressed
    // and declares ISA 8.2, which an R535 driver JIT-compiles; nvcc 13's 9.0 it would refuse.
    if cuda::KERNELS_MIN_DRIVER_CUDA == 12020 {
        let has = |needle: &[u8]| bin.windows(needle.len()).any(|w| w == needle);
        assert!(
            has(b"\n.version 8.2\n"),
            "the PTX does not declare ISA 8.2 in the clear"
        );
        assert!(!has(b"\n.version 9."), "a PTX image still declares ISA 9.x");
    } else {
        assert_eq!(cuda::KERNELS_MIN_DRIVER_CUDA, 13000);
    }
}

/// The committed snapshot (used where libclang is missing) must equal what bindgen makes of
/// the header now, so the two can never silently disagree.
#[test]
fn bindings_snapshot_matches_bindgen() {
    if !cuda::params::BINDINGS_FROM_BINDGEN {
        println!("skipping: this build used the snapshot (no libclang), nothing to compare");
        return;
    }
    let snapshot = include_str!("../src/backend/cuda/kernel_params_snapshot.rs");
    // The snapshot is a `//` comment header followed by bindgen's output verbatim.
    let body_start = snapshot
        .lines()
        .take_while(|l| l.starts_with("//"))
        .map(|l| l.len() + 1)
        .sum::<usize>();
    assert!(
        snapshot[body_start..] == *cuda::params::GENERATED_BINDINGS,
        "src/backend/cuda/kernel_params_snapshot.rs is stale; regenerate it with \
         TACHYON_UPDATE_BINDINGS_SNAPSHOT=1 cargo build"
    );
}

/// The flash-decoding splits must tile the visible positions exactly once: the Rust mirror
/// of the kernel's chunk arithmetic, over every context up to 600, windows and split counts.
#[test]
fn attention_splits_tile_the_visible_positions() {
    use tachyon::backend::AttnShape;
    use tachyon::backend::cuda::{attn_splits, split_range};
    for qp in 0..600usize {
        for window in [None, Some(1usize), Some(7), Some(256)] {
            let first = window.map_or(0, |w| (qp + 1).saturating_sub(w));
            for splits in [1usize, 2, 3, 7, 16, 64] {
                let mut seen = vec![0u8; qp + 1];
                for s in 0..splits {
                    for t in split_range(first, qp, splits, s) {
                        seen[t] += 1;
                    }
                }
                assert!(
                    seen[..first].iter().all(|&c| c == 0),
                    "qp {qp} window {window:?} splits {splits}"
                );
                assert!(
                    seen[first..].iter().all(|&c| c == 1),
                    "qp {qp} window {window:?} splits {splits}"
                );
            }
        }
    }
    let shape = AttnShape {
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 64,
        window: None,
    };
    for (sms, visible, n) in [
        (132usize, 1usize, 1usize),
        (132, 384, 1),
        (132, 32_768, 1),
        (1, 5, 64),
        (132, 100, 64),
    ] {
        let s = attn_splits(sms, &shape, visible, n);
        assert!(
            (1..=tachyon::backend::cuda::MAX_ATTN_SPLITS).contains(&s),
            "{s}"
        );
        assert!(
            s <= visible.div_ceil(16).max(1),
            "{s} splits for {visible} positions"
        );
    }
}

/// The CUDA backend uploads `rope_angles`; the CPU backend builds its own table. Rotating
/// with either must give bit-identical results, or the GPU tests would compare against a
/// different rotation.
#[test]
fn rope_angles_are_the_cpu_backend_table() {
    use tachyon::backend::Ops;
    use tachyon::backend::cpu::ops::{rope_angles, rope_head};
    use tachyon::backend::cpu::{CpuAct, CpuBackend};
    use tachyon::format::{Rope, RopeStyle};
    let mut rng = Rng::from_env_or_clock("rope_angles_are_the_cpu_backend_table");
    let ff = tachyon::format::config::llama3_freq_factors(500_000.0, 64, 32.0, 1.0, 4.0, 8192.0);
    for (style, freq_factors, linear) in [
        (RopeStyle::Neox, Some(ff), 1.0f32),
        (RopeStyle::Interleaved, None, 4.0),
    ] {
        let rope = Rope {
            style,
            theta: 500_000.0,
            dim: 64,
            linear_factor: linear,
            freq_factors,
        };
        let ctx = 3000;
        let mut cpu = CpuBackend::new(true, false);
        let table = cpu.rope_table(&rope, ctx).unwrap_or_else(|e| panic!("{e}"));
        let (cos, sin, half) = rope_angles(&rope, ctx);
        assert_eq!(half, 32);
        for pos in [0usize, 1, 2047, 2999] {
            let x = rng.vec(4 * 64, 2.0);
            let mut a = CpuAct {
                data: x.clone(),
                width: 4 * 64,
            };
            cpu.rope(&mut a, &table, 4, pos, 1)
                .unwrap_or_else(|e| panic!("{e}"));
            let mut b = x;
            for head in b.chunks_mut(64) {
                rope_head(
                    head,
                    &cos[pos * half..(pos + 1) * half],
                    &sin[pos * half..(pos + 1) * half],
                    style == RopeStyle::Interleaved,
                );
            }
            assert!(
                a.data
                    .iter()
                    .zip(&b)
                    .all(|(p, q)| p.to_bits() == q.to_bits()),
                "{style:?} position {pos}"
            );
        }
    }
}
