//! Tests of the emulated GPU itself (emulator/README.md), through cudarc as tachyon uses it:
//! the planted-bug kernels of `emulator/tests/planted/` fail with the right report and their
//! correct twins pass, capture refuses what the real driver refuses, launches over the
//! kernel's limits are refused, fault injection works, a replayed graph gives the eager
//! result, fresh device memory reads as NaN, and a graph that outlives its buffer is
//! reported.
//!
//! Every test needs the emulated device and is ignored otherwise:
//!
//!     scripts/emulated-gpu.sh cargo test --release --test emulated_device -- --ignored
//!
//! Cases whose report goes to stderr, or that inject faults (which are process-wide and
//! sticky), run in a child process: this test binary re-run on the one test, with
//! `TACHYON_EMU_CHILD` naming it; the parent checks the child's exit status and stderr.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DriverError,
    LaunchConfig, PushKernelArg, result, sys,
};
use cudarc::nvrtc::Ptx;
use tachyon::backend::cuda::params::{ElementwiseParams, GemvParams, TACHYON_EW_ADD};
use tachyon::backend::cuda::{self, CudaDevice};

const NEEDS: &str = "needs the emulated device (scripts/emulated-gpu.sh)";

fn require_emulator() {
    if std::env::var("TACHYON_EMULATED_GPU").as_deref() != Ok("1") {
        panic!("{NEEDS}");
    }
}

fn device() -> CudaDevice {
    require_emulator();
    cuda::probe().unwrap_or_else(|e| panic!("the emulated device did not open: {e}"))
}

/// What a child process left behind.
struct Child {
    ok: bool,
    stderr: String,
    stdout: String,
}

impl Child {
    fn must_contain(&self, what: &str) {
        assert!(
            self.stderr.contains(what),
            "child stderr lacks {what:?}:\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.stderr,
            self.stdout
        );
    }
}

/// In the parent: re-runs this test binary on the test `name` alone with `env` set and
/// returns what it did. In that child (`TACHYON_EMU_CHILD=name`): runs `body` and returns
/// None, so the test passes in the child exactly when `body` does.
fn child(name: &str, env: &[(&str, &str)], body: impl FnOnce()) -> Option<Child> {
    require_emulator();
    if std::env::var("TACHYON_EMU_CHILD").as_deref() == Ok(name) {
        body();
        return None;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TACHYON_EMU_CHILD", name)
        .envs(env.iter().copied())
        .output()
        .expect("re-running the test binary");
    Some(Child {
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

fn err_code<T>(r: Result<T, DriverError>) -> sys::CUresult {
    match r {
        Ok(_) => panic!("expected a driver error, got success"),
        Err(e) => e.0,
    }
}

/// `x += y` on the device (elementwise_f32, the real kernels library).
fn add_in_place(dev: &CudaDevice, f: &CudaFunction, x: &mut CudaSlice<f32>, y: &CudaSlice<f32>) {
    let s = dev.stream();
    let n = x.len();
    let (xp, _g1) = x.device_ptr_mut(s);
    let (yp, _g2) = y.device_ptr(s);
    let p = ElementwiseParams {
        x: xp as *mut f32,
        y: yp as *const f32,
        len: n as i64,
        width: n as i32,
        op: TACHYON_EW_ADD as i32,
    };
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the params describe two live buffers of n floats on this stream.
    unsafe { s.launch_builder(f).arg(&p).launch(cfg) }.expect("launch elementwise_f32");
}

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 - 7.5) * scale).collect()
}

// ---------------------------------------------------------------------------------------
// Device, memory, graphs
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn reports_the_emulated_h200() {
    let dev = device();
    assert_eq!(dev.name(), "NVIDIA H200 (emulated)");
    assert_eq!(dev.compute_capability(), (9, 0));
    let ctx = dev.context();
    let sms = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .unwrap();
    assert_eq!(sms, 132);
    let optin = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .unwrap();
    assert_eq!(optin, 232448);
    let (free, total) = ctx.mem_get_info().unwrap();
    assert!(free <= total && total >= 100 << 30, "{free} / {total}");
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn fresh_device_memory_reads_as_nan() {
    let dev = device();
    let s = dev.stream();
    // SAFETY: the buffer is only read back, which is the point: unwritten memory.
    let fresh = unsafe { s.alloc::<f32>(1000) }.unwrap();
    let host = s.clone_dtoh(&fresh).unwrap();
    assert!(
        host.iter().all(|v| v.is_nan()),
        "fresh memory: {:?}",
        &host[..8]
    );
    let zeroed = s.alloc_zeros::<f32>(1000).unwrap();
    assert!(s.clone_dtoh(&zeroed).unwrap().iter().all(|&v| v == 0.0));
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn copies_off_the_end_of_an_allocation_are_refused() {
    let dev = device();
    let s = dev.stream();
    let buf = s.alloc_zeros::<f32>(16).unwrap();
    let (p, _g) = buf.device_ptr(s);
    let host = vec![1f32; 17];
    // SAFETY: the copy is expected to be refused before it touches anything.
    let r = unsafe { result::memcpy_htod_async(p, &host[..], s.cu_stream()) };
    assert_eq!(err_code(r), sys::CUresult::CUDA_ERROR_INVALID_VALUE);
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn graph_replay_matches_eager_launches() {
    let dev = device();
    let s = dev.stream().clone();
    let f = dev.module().load_function("elementwise_f32").unwrap();
    let n = 1000;
    let y = s.clone_htod(&ramp(n, 0.25)).unwrap();

    // Eager: x = 1 + 3y.
    let mut eager = s.clone_htod(&vec![1f32; n]).unwrap();
    for _ in 0..3 {
        add_in_place(&dev, &f, &mut eager, &y);
    }
    let want = s.clone_dtoh(&eager).unwrap();

    // Captured once (recording runs nothing), replayed three times.
    let mut x = s.clone_htod(&vec![1f32; n]).unwrap();
    s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    add_in_place(&dev, &f, &mut x, &y);
    let graph = s
        .end_capture(sys::CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("a graph");
    assert_eq!(
        s.clone_dtoh(&x).unwrap(),
        vec![1f32; n],
        "capture must not run the work"
    );
    graph.upload().unwrap();
    for _ in 0..3 {
        graph.launch().unwrap();
    }
    s.synchronize().unwrap();
    assert_eq!(s.clone_dtoh(&x).unwrap(), want);
    drop(graph);
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn graph_keeps_the_parameters_it_was_captured_with() {
    let dev = device();
    let s = dev.stream().clone();
    let f = dev.module().load_function("elementwise_f32").unwrap();
    let n = 64;
    let y1 = s.clone_htod(&vec![1f32; n]).unwrap();
    let y2 = s.clone_htod(&vec![100f32; n]).unwrap();
    let mut x = s.alloc_zeros::<f32>(n).unwrap();
    s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    // The parameter struct lives on this function's stack only for the launch call; the
    // graph must have copied it (a later launch with y2 must not leak into it).
    add_in_place(&dev, &f, &mut x, &y1);
    let graph = s
        .end_capture(sys::CUgraphInstantiate_flags(0))
        .unwrap()
        .unwrap();
    add_in_place(&dev, &f, &mut x, &y2);
    graph.launch().unwrap();
    assert_eq!(s.clone_dtoh(&x).unwrap(), vec![101f32; n]);
}

// ---------------------------------------------------------------------------------------
// Capture refusals
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn synchronizing_during_capture_is_refused_and_invalidates_it() {
    let Some(c) = child(
        "synchronizing_during_capture_is_refused_and_invalidates_it",
        &[],
        || {
            let dev = device();
            let s = dev.stream().clone();
            s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .unwrap();
            assert_eq!(
                err_code(s.synchronize()),
                sys::CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
            );
            assert_eq!(
                err_code(dev.context().synchronize()),
                sys::CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
            );
            assert_eq!(
                err_code(s.end_capture(sys::CUgraphInstantiate_flags(0))),
                sys::CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
            );
            // The stream is usable again after the capture ended.
            s.synchronize().unwrap();
        },
    ) else {
        return;
    };
    assert!(c.ok, "child failed:\n{}\n{}", c.stderr, c.stdout);
    c.must_contain("invalidated: cuStreamSynchronize on the capturing stream");
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn blocking_copy_during_capture_is_refused() {
    let Some(c) = child("blocking_copy_during_capture_is_refused", &[], || {
        let dev = device();
        let s = dev.stream().clone();
        let buf = s.alloc_zeros::<f32>(4).unwrap();
        let (p, _g) = buf.device_ptr(&s);
        s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .unwrap();
        // SAFETY: a 16-byte copy into a live 16-byte buffer (refused anyway).
        let r = unsafe { result::memcpy_htod_sync(p, &[1f32; 4][..]) };
        assert_eq!(
            err_code(r),
            sys::CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
        );
        assert_eq!(
            err_code(s.end_capture(sys::CUgraphInstantiate_flags(0))),
            sys::CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
        );
        // Nothing was copied.
        assert_eq!(s.clone_dtoh(&buf).unwrap(), vec![0f32; 4]);
    }) else {
        return;
    };
    assert!(c.ok, "child failed:\n{}\n{}", c.stderr, c.stdout);
    c.must_contain("cuMemcpyHtoD during capture");
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn capture_on_the_legacy_stream_is_refused() {
    let dev = device();
    let legacy = dev.context().default_stream();
    assert_eq!(
        err_code(legacy.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)),
        sys::CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
    );
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn graph_that_outlives_its_buffer_is_reported() {
    let Some(c) = child("graph_that_outlives_its_buffer_is_reported", &[], || {
        let dev = device();
        let s = dev.stream().clone();
        let f = dev.module().load_function("elementwise_f32").unwrap();
        let y = s.clone_htod(&vec![1f32; 32]).unwrap();
        let mut x = s.alloc_zeros::<f32>(32).unwrap();
        s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .unwrap();
        add_in_place(&dev, &f, &mut x, &y);
        let graph = s
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .unwrap()
            .unwrap();
        graph.launch().unwrap();
        drop(x);
        assert_eq!(
            err_code(graph.launch()),
            sys::CUresult::CUDA_ERROR_ILLEGAL_ADDRESS
        );
        drop(graph);
    }) else {
        return;
    };
    assert!(c.ok, "child failed:\n{}\n{}", c.stderr, c.stdout);
    c.must_contain("launched after what it points into went away: buffer 0x");
    c.must_contain("released by cuMemFreeAsync");
}

// ---------------------------------------------------------------------------------------
// Launch refusals
// ---------------------------------------------------------------------------------------

fn zero_gemv_params() -> GemvParams {
    // SAFETY: GemvParams is plain C data (pointers and ints); all-zero is a valid value, and
    // the launches below are refused before any kernel reads it.
    unsafe { std::mem::zeroed() }
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn launch_over_the_launch_bounds_is_refused() {
    let dev = device();
    let s = dev.stream();
    // gemv_f32out is __launch_bounds__(256).
    let f = dev.module().load_function("gemv_f32out").unwrap();
    assert_eq!(f.max_threads_per_block().unwrap(), 256);
    let p = zero_gemv_params();
    for block in [(257, 1, 1), (128, 2, 2), (1025, 1, 1), (1, 1, 65)] {
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: block,
            shared_mem_bytes: 0,
        };
        // SAFETY: refused before it runs.
        let r = unsafe { s.launch_builder(&f).arg(&p).launch(cfg) };
        assert_eq!(
            err_code(r),
            sys::CUresult::CUDA_ERROR_INVALID_VALUE,
            "{block:?}"
        );
    }
    for grid in [(0, 1, 1), (1, 65536, 1)] {
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: refused before it runs.
        let r = unsafe { s.launch_builder(&f).arg(&p).launch(cfg) };
        assert_eq!(
            err_code(r),
            sys::CUresult::CUDA_ERROR_INVALID_VALUE,
            "{grid:?}"
        );
    }
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn launch_over_the_shared_memory_limit_is_refused() {
    let dev = device();
    let s = dev.stream();
    let f = dev.module().load_function("gemv_f32out").unwrap();
    let p = zero_gemv_params();
    let launch = |smem: u32| {
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: every launch here is refused before it runs.
        unsafe { s.launch_builder(&f).arg(&p).launch(cfg) }
    };
    // Over 48 KiB of dynamic shared memory needs the opt-in attribute.
    assert_eq!(
        err_code(launch(48 * 1024 + 4)),
        sys::CUresult::CUDA_ERROR_INVALID_VALUE
    );
    let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    // The opt-in itself cannot pass 227 KiB per block.
    assert_eq!(
        err_code(f.set_attribute(attr, 232448 + 1)),
        sys::CUresult::CUDA_ERROR_INVALID_VALUE
    );
    f.set_attribute(attr, 64 * 1024).unwrap();
    assert_eq!(
        err_code(launch(64 * 1024 + 4)),
        sys::CUresult::CUDA_ERROR_INVALID_VALUE
    );
}

// ---------------------------------------------------------------------------------------
// Fault injection (each in its own process: injected faults are process-wide and sticky)
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn injected_allocation_failure() {
    let Some(c) = child(
        "injected_allocation_failure",
        &[("TACHYON_EMU_FAIL_ALLOC", "3")],
        || {
            let dev = device();
            let s = dev.stream();
            let _a = s.alloc_zeros::<f32>(8).unwrap();
            let _b = s.alloc_zeros::<f32>(8).unwrap();
            assert_eq!(
                err_code(s.alloc_zeros::<f32>(8)),
                sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
            );
            // Only the third fails.
            let _d = s.alloc_zeros::<f32>(8).unwrap();
        },
    ) else {
        return;
    };
    assert!(c.ok, "child failed:\n{}\n{}", c.stderr, c.stdout);
    c.must_contain("fails: TACHYON_EMU_FAIL_ALLOC=3");
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn injected_launch_failure_is_sticky() {
    let Some(c) = child(
        "injected_launch_failure_is_sticky",
        &[("TACHYON_EMU_FAIL_LAUNCH", "2")],
        || {
            let dev = device();
            let s = dev.stream().clone();
            let f = dev.module().load_function("elementwise_f32").unwrap();
            let n = 32;
            let y = s.clone_htod(&vec![1f32; n]).unwrap();
            let mut x = s.alloc_zeros::<f32>(n).unwrap();
            add_in_place(&dev, &f, &mut x, &y);
            let (xp, _g1) = x.device_ptr_mut(&s);
            let (yp, _g2) = y.device_ptr(&s);
            let p = ElementwiseParams {
                x: xp as *mut f32,
                y: yp as *const f32,
                len: n as i64,
                width: n as i32,
                op: TACHYON_EW_ADD as i32,
            };
            let cfg = LaunchConfig::for_num_elems(n as u32);
            // SAFETY: valid buffers; the launch is the injected failure.
            let r = unsafe { s.launch_builder(&f).arg(&p).launch(cfg) };
            assert_eq!(err_code(r), sys::CUresult::CUDA_ERROR_LAUNCH_FAILED);
            // Sticky, as a real fault: the context is unusable from now on.
            assert_eq!(
                err_code(s.synchronize()),
                sys::CUresult::CUDA_ERROR_LAUNCH_FAILED
            );
        },
    ) else {
        return;
    };
    assert!(c.ok, "child failed:\n{}\n{}", c.stderr, c.stdout);
    c.must_contain("kernel elementwise_f32 grid (1,1,1) block (32,1,1): launch fails");
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn injected_module_load_failure() {
    let Some(c) = child(
        "injected_module_load_failure",
        &[("TACHYON_EMU_FAIL_MODULE", "1")],
        || {
            require_emulator();
            match cuda::probe() {
                Err(cuda::CudaUnavailable::ModuleLoad { source, .. }) => {
                    assert_eq!(source.0, sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION)
                }
                other => panic!("expected a module load failure, got {other:?}"),
            }
        },
    ) else {
        return;
    };
    assert!(c.ok, "child failed:\n{}\n{}", c.stderr, c.stdout);
    c.must_contain("TACHYON_EMU_FAIL_MODULE");
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn injected_memory_size_and_driver_version() {
    let Some(c) = child(
        "injected_memory_size_and_driver_version",
        &[
            ("TACHYON_EMU_MEMORY_BYTES", "1073741824"),
            ("TACHYON_EMU_DRIVER_VERSION", "12020"),
        ],
        || {
            let dev = device();
            let ctx = dev.context();
            assert_eq!(ctx.total_mem().unwrap(), 1 << 30);
            let (free, total) = ctx.mem_get_info().unwrap();
            assert_eq!(total, 1 << 30);
            assert!(free <= total);
            let s = dev.stream();
            let most = s.alloc_zeros::<u8>(3 << 28).unwrap();
            assert_eq!(
                err_code(s.alloc_zeros::<u8>(1 << 29)),
                sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
            );
            drop(most);
            // Freed memory is available again.
            let _half = s.alloc_zeros::<u8>(1 << 29).unwrap();
            let mut v = 0i32;
            // SAFETY: writes one int.
            unsafe { sys::cuDriverGetVersion(&mut v) }.result().unwrap();
            assert_eq!(v, 12020);
        },
    ) else {
        return;
    };
    assert!(c.ok, "child failed:\n{}\n{}", c.stderr, c.stdout);
}

// ---------------------------------------------------------------------------------------
// Planted bugs (emulator/tests/planted): each fails with its report, each twin passes
// ---------------------------------------------------------------------------------------

/// Builds the planted kernels into a test library (once per test binary run) and returns
/// its path.
fn planted_library() -> PathBuf {
    static LIB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LIB.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = repo.join("target/emulated-gpu/planted");
        let status = Command::new(repo.join("emulator/build.sh"))
            .arg("--kernels")
            .arg(repo.join("emulator/tests/planted"))
            .arg(&out)
            .status()
            .expect("running emulator/build.sh");
        assert!(status.success(), "emulator/build.sh --kernels failed");
        out.join("libtachyon_emu_kernels.so")
    })
    .clone()
}

fn planted_module(ctx: &Arc<CudaContext>) -> Arc<cudarc::driver::CudaModule> {
    ctx.load_module(Ptx::from_file(planted_library()))
        .unwrap_or_else(|e| panic!("loading the planted kernels: {e}"))
}

/// Launches planted kernel `name` over `grid` x `block` with one buffer of `n` floats
/// (filled with 1.0) and `n` as arguments; returns the launch's and the sync's result.
fn run_planted(
    name: &str,
    grid: u32,
    block: u32,
    n: usize,
) -> (Result<(), DriverError>, Result<(), DriverError>) {
    let dev = device();
    let m = planted_module(dev.context());
    let f = m
        .load_function(name)
        .unwrap_or_else(|e| panic!("planted kernel {name}: {e}"));
    let s: &Arc<CudaStream> = dev.stream();
    let mut buf = s.clone_htod(&vec![1f32; n]).unwrap();
    let len = n as i32;
    let cfg = LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the planted kernels take (float*, int); a fault is the point of the test.
    let launched = unsafe { s.launch_builder(&f).arg(&mut buf).arg(&len).launch(cfg) }.map(|_| ());
    let synced = s.synchronize();
    (launched, synced)
}
