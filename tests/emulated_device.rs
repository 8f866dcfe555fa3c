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

mod common;
#[path = "emulated/pdl.rs"]
mod pdl;
mod server_harness;

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
    child_case(name, name, env, body)
}

/// [`child`] for a test that runs several cases, each in its own child: `case` tells them
/// apart (and must start with the test's name).
fn child_named(test: &str, case: &str, body: impl FnOnce()) -> Option<Child> {
    child_case(test, case, &[], body)
}

fn child_case(test: &str, case: &str, env: &[(&str, &str)], body: impl FnOnce()) -> Option<Child> {
    require_emulator();
    match std::env::var("TACHYON_EMU_CHILD") {
        Ok(c) if c == case => {
            body();
            return None;
        }
        // A child of this test that runs another of its cases: nothing to do for this one.
        Ok(c) if c.starts_with(test) => return None,
        _ => {}
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TACHYON_EMU_CHILD", case)
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
    let host = [1f32; 17];
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
    // Needs each kernel parameter's size from the registry (KernelInfo::param_sizes) to find
    // the device addresses inside the captured parameters.
    c.must_contain("outlived the buffer/module it points into: buffer 0x");
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
    c.must_contain("kernel elementwise_f32 grid (1,1,1) block (1024,1,1): launch fails");
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

/// tachyon on a device too small for the model: `generate` and `serve` refuse before
/// uploading anything, naming what needs the memory, how much, and what to change.
#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn a_model_that_does_not_fit_is_refused_with_its_sizes() {
    require_emulator();
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        model.is_file(),
        "{} missing (scripts/fetch-models.sh)",
        model.display()
    );
    let model = model.to_string_lossy().into_owned();
    let run = |memory_mib: u64, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tachyon"))
            .args(args)
            .args(["--backend", "cuda", "--model", model.as_str()])
            .env("TACHYON_EMU_MEMORY_BYTES", (memory_mib << 20).to_string())
            .output()
            .unwrap_or_else(|e| panic!("running tachyon: {e}"));
        assert!(
            !out.status.success(),
            "tachyon {args:?} ran on {memory_mib} MiB"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Too small for the weights themselves.
    let e = run(64, &["generate", "--prompt", "Hi", "--max-tokens", "1"]);
    for want in [
        "not enough GPU memory",
        "weights 120.8 MiB",
        "KV cache 90.0 MiB for a context of 4096 tokens",
        "64.0 MiB free of 64.0 MiB",
        "more quantized model",
    ] {
        assert!(e.contains(want), "{want:?} not in:\n{e}");
    }
    assert!(!e.contains("panicked"), "{e}");
    // Room for the weights, not for a 4096-token KV cache: the context that fits is named,
    // and the server says so at start-up (before listening for requests).
    let e = run(200, &["serve", "--port", "0", "--ctx", "4096"]);
    assert!(e.contains("not enough GPU memory"), "{e}");
    assert!(e.contains("200.0 MiB free of 200.0 MiB"), "{e}");
    let fits: usize = e
        .split("a context of ")
        .nth(2)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no context that fits in:\n{e}"));
    assert!((1000..4096).contains(&fits), "{fits} tokens:\n{e}");
    // And that context does fit.
    let out = Command::new(env!("CARGO_BIN_EXE_tachyon"))
        .args(["generate", "--backend", "cuda", "--model", model.as_str()])
        .args([
            "--prompt",
            "Hi",
            "--max-tokens",
            "1",
            "--ctx",
            &fits.to_string(),
        ])
        .env("TACHYON_EMU_MEMORY_BYTES", (200u64 << 20).to_string())
        .output()
        .unwrap_or_else(|e| panic!("running tachyon: {e}"));
    assert!(
        out.status.success(),
        "--ctx {fits} on 200 MiB:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The engine of a tiny random llama on the CUDA backend, with a draft (another random
/// model of the same shape) and prompt lookup, as `engine::build` makes it for every command.
fn tiny_engine_on_the_device() -> tachyon::engine::Engine {
    use tachyon::engine::{
        BackendChoice, EngineOptions, ModelSpec, RandomSpec, SessionOptions, SpeculationOptions,
    };
    let shape = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tiny-llama-config.json")
        .to_string_lossy()
        .into_owned();
    let random = |seed| {
        ModelSpec::Random(RandomSpec {
            shape: shape.clone(),
            dtype: tachyon::format::GgmlType::BF16,
            seed,
        })
    };
    let opts = EngineOptions {
        backend: BackendChoice::Cuda,
        session: SessionOptions {
            ctx: 64,
            ..Default::default()
        },
        prefill_chunk: Some(8),
        ..Default::default()
    };
    let spec = SpeculationOptions {
        draft: Some(random(2)),
        draft_max: 3,
        lookup: true,
        ..Default::default()
    };
    tachyon::engine::build(&random(1), &opts, &spec)
        .unwrap_or_else(|e| panic!("{e}"))
        .engine
}

/// The same greedy request `n` times: the tokens, or the error's text.
fn repeated_requests(
    engine: &mut tachyon::engine::Engine,
    n: usize,
) -> Vec<Result<Vec<u32>, String>> {
    use tachyon::engine::{Flow, GenerateParams, SamplingParams};
    let params = GenerateParams {
        max_tokens: 4,
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
    };
    (0..n)
        .map(|_| {
            let mut out = Vec::new();
            engine
                .generate(&[5, 17, 3, 250, 9], &params, &mut |t| {
                    out.push(t);
                    Flow::Continue
                })
                .map(|_| out)
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// The launch the emulated device fails: past the first request (which gives the expected
/// tokens), within the few after it.
const FAULTING_LAUNCH: &str = "300";

/// A GPU fault in the middle of a request ends that request with the fault's error; the
/// engine drops every handle on the faulted context (the driver then resets it), rebuilds
/// the target and draft sessions from the host weights, and the next requests give the
/// tokens of before the fault.
#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn a_device_fault_ends_its_request_and_the_engine_rebuilds() {
    let Some(c) = child(
        "a_device_fault_ends_its_request_and_the_engine_rebuilds",
        &[("TACHYON_EMU_FAIL_LAUNCH", FAULTING_LAUNCH)],
        || {
            let mut engine = tiny_engine_on_the_device();
            let runs = repeated_requests(&mut engine, 8);
            let expected = match &runs[0] {
                Ok(t) => t.clone(),
                Err(e) => panic!("the first request failed (lower FAULTING_LAUNCH): {e}"),
            };
            let failed: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].is_err()).collect();
            assert_eq!(failed.len(), 1, "one request must fail: {runs:?}");
            let f = failed[0];
            assert!(
                f + 1 < runs.len(),
                "no request after the fault (raise the count): {runs:?}"
            );
            let err = runs[f].as_ref().err().cloned().unwrap_or_default();
            assert!(
                err.contains("the GPU faulted") && err.contains("CUDA_ERROR_LAUNCH_FAILED"),
                "{err}"
            );
            for (i, r) in runs.iter().enumerate().filter(|(i, _)| *i != f) {
                assert_eq!(r.as_ref().ok(), Some(&expected), "request {i}: {runs:?}");
            }
            assert_eq!(engine.fault_counts(), (1, 1));
            assert_eq!(engine.failure(), None);
        },
    ) else {
        return;
    };
    assert!(c.ok, "child failed:\n{}\n{}", c.stderr, c.stdout);
    c.must_contain("launch fails (TACHYON_EMU_FAIL_LAUNCH=");
    c.must_contain("primary context reset (its last reference was released)");
}

/// A fault no context reset cures: the request that hit it fails, the rebuild fails, and
/// every later request is refused at once with what happened.
#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn a_fault_that_survives_the_reset_fails_the_engine_with_its_reason() {
    let Some(c) = child(
        "a_fault_that_survives_the_reset_fails_the_engine_with_its_reason",
        &[
            ("TACHYON_EMU_FAIL_LAUNCH", FAULTING_LAUNCH),
            ("TACHYON_EMU_FAULT_IS_FATAL", "1"),
        ],
        || {
            let mut engine = tiny_engine_on_the_device();
            let runs = repeated_requests(&mut engine, 8);
            assert!(runs[0].is_ok(), "{runs:?}");
            let f = runs
                .iter()
                .position(Result::is_err)
                .expect("a request fails");
            assert!(f + 1 < runs.len(), "{runs:?}");
            let first = runs[f].as_ref().err().cloned().unwrap_or_default();
            assert!(first.contains("CUDA_ERROR_LAUNCH_FAILED"), "{first}");
            for r in &runs[f + 1..] {
                let e = r.as_ref().err().cloned().unwrap_or_default();
                assert!(
                    e.starts_with("the engine cannot run: the GPU faulted")
                        && e.contains("rebuilding the session failed"),
                    "{runs:?}"
                );
            }
            assert_eq!(engine.fault_counts(), (1, 0));
            assert!(engine.failure().is_some());
        },
    ) else {
        return;
    };
    assert!(c.ok, "child failed:\n{}\n{}", c.stderr, c.stdout);
}

/// The launch the emulated device fails while `tachyon serve` runs the tiny model: past
/// the warm-up and the first request, within the few after it.
const FAULTING_SERVER_LAUNCH: &str = "250";

/// `tachyon serve --backend cuda` (the tiny model with SmolLM2's tokenizer) with a GPU fault
/// injected part-way; `fatal`: one no context reset cures. Returns the server, the text of
/// the requests before the fault, and the fault's response.
fn serve_until_a_gpu_fault(
    fatal: bool,
) -> Option<(server_harness::Server, String, server_harness::Response)> {
    require_emulator();
    let model = server_harness::tiny_model_file()?;
    let mut env = vec![("TACHYON_EMU_FAIL_LAUNCH", FAULTING_SERVER_LAUNCH)];
    if fatal {
        env.push(("TACHYON_EMU_FAULT_IS_FATAL", "1"));
    }
    let server = server_harness::Server::start_with_env(
        &model,
        &["--backend", "cuda", "--ctx", "128"],
        &env,
    );
    let mut before: Option<String> = None;
    for i in 0..10 {
        let r = ask_the_sky(&server);
        if r.status != 200 {
            let Some(text) = before else {
                panic!(
                    "request {i} failed before any succeeded (raise FAULTING_SERVER_LAUNCH): {}",
                    r.text()
                );
            };
            return Some((server, text, r));
        }
        let text = completion_text(&r);
        if let Some(b) = &before {
            assert_eq!(&text, b, "request {i}: the same greedy request");
        }
        before = Some(text);
    }
    panic!("no request failed (lower FAULTING_SERVER_LAUNCH)");
}

fn ask_the_sky(server: &server_harness::Server) -> server_harness::Response {
    let body = serde_json::json!({"model": "m", "prompt": "The sky is", "max_tokens": 4,
        "temperature": 0});
    server.post("/v1/completions", &body.to_string())
}

fn completion_text(r: &server_harness::Response) -> String {
    r.json()["choices"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no completion text: {}", r.text()))
        .to_string()
}

/// A GPU fault while serving: that request gets a 500 naming the fault, the server rebuilds
/// its sessions on a fresh context, and the next requests answer as before the fault.
#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn a_gpu_fault_while_serving_ends_that_request_and_the_server_lives_on() {
    let Some((server, before, fault)) = serve_until_a_gpu_fault(false) else {
        return;
    };
    assert_eq!(fault.status, 500, "{}", fault.text());
    let msg = fault.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("the GPU faulted") && msg.contains("CUDA_ERROR_LAUNCH_FAILED"),
        "{msg}"
    );
    for _ in 0..2 {
        let r = ask_the_sky(&server);
        assert_eq!(r.status, 200, "after the fault: {}", r.text());
        assert_eq!(completion_text(&r), before, "after the fault");
    }
    let h = server.get("/health", &[]);
    assert_eq!(h.status, 200, "{}", h.text());
    assert_eq!(server.metric("tachyon_device_faults_total"), 1.0);
    assert_eq!(server.metric("tachyon_device_restarts_total"), 1.0);
    assert_eq!(server.metric("tachyon_engine_failed"), 0.0);
}

/// A fault no reset cures: that request gets its 500, then every request a 503 saying why,
/// and `/health` reports the failure, so an orchestrator replaces the server.
#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn a_gpu_fault_the_server_cannot_recover_from_is_reported_by_health() {
    let Some((server, _, fault)) = serve_until_a_gpu_fault(true) else {
        return;
    };
    assert_eq!(fault.status, 500, "{}", fault.text());
    let r = ask_the_sky(&server);
    assert_eq!(r.status, 503, "{}", r.text());
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.starts_with("the engine cannot run: the GPU faulted"),
        "{msg}"
    );
    let h = server.get("/health", &[]);
    assert_eq!(h.status, 503, "{}", h.text());
    let v = h.json();
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|m| m.contains("rebuilding the session failed")),
        "{v}"
    );
    assert_eq!(server.metric("tachyon_engine_failed"), 1.0);
}

// ---------------------------------------------------------------------------------------
// Planted bugs (emulator/tests/planted): each fails with its report, each twin passes
// ---------------------------------------------------------------------------------------

/// Builds the planted kernels into a test library next to the emulated runtime (once per
/// test binary run, in the parent: a child only loads it) and returns its path.
fn planted_library() -> PathBuf {
    static LIB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LIB.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let lib = repo.join("target/emulated-gpu/libplanted_kernels.so");
        if std::env::var_os("TACHYON_EMU_CHILD").is_some() {
            return lib;
        }
        let status = Command::new(repo.join("emulator/build.sh"))
            .arg("--kernels")
            .arg(repo.join("emulator/tests/planted"))
            .arg(&lib)
            .status()
            .expect("running emulator/build.sh");
        assert!(status.success(), "emulator/build.sh --kernels failed");
        lib
    })
    .clone()
}

fn planted_module(ctx: &Arc<CudaContext>) -> Arc<cudarc::driver::CudaModule> {
    ctx.load_module(Ptx::from_file(planted_library()))
        .unwrap_or_else(|e| panic!("loading the planted kernels: {e}"))
}

/// One argument of a planted kernel.
#[derive(Clone, Copy)]
enum Arg {
    /// A device buffer of n floats, all 1.0.
    Ones(usize),
    /// A device buffer of n zeroed 4-byte words.
    Zeros(usize),
    /// A device buffer of n floats never written (the 0xFF fill).
    Fresh(usize),
    Int(i32),
    /// A host buffer of n floats (not device memory).
    Host(usize),
    /// A device buffer of n floats, freed before the launch.
    Freed(usize),
}

enum Val {
    Ptr(u64),
    I(i32),
}

struct Ran {
    result: Result<(), DriverError>,
    /// Contents of each device buffer argument after the launch (None: not a live buffer,
    /// or the launch failed).
    bufs: Vec<Option<Vec<f32>>>,
}

/// Launches planted kernel `kernel` over `grid` x `block` (1-D) with `args`; prints each
/// pointer argument as `ARG<i>=0x...` on stdout for a parent process to find in the report.
fn run_planted(kernel: &str, args: &[Arg], grid: u32, block: u32, smem: u32, coop: bool) -> Ran {
    let dev = device();
    let m = planted_module(dev.context());
    let f = m
        .load_function(kernel)
        .unwrap_or_else(|e| panic!("planted kernel {kernel}: {e}"));
    let s: &Arc<CudaStream> = dev.stream();
    let mut live: Vec<Option<CudaSlice<f32>>> = Vec::new();
    let mut host: Vec<Vec<f32>> = Vec::new();
    let mut vals = Vec::new();
    for a in args {
        let buf = match *a {
            Arg::Ones(n) => Some(s.clone_htod(&vec![1f32; n]).unwrap()),
            Arg::Zeros(n) => Some(s.alloc_zeros::<f32>(n).unwrap()),
            // SAFETY: read unwritten on purpose.
            Arg::Fresh(n) => Some(unsafe { s.alloc::<f32>(n) }.unwrap()),
            Arg::Freed(n) => {
                let b = s.alloc_zeros::<f32>(n).unwrap();
                let (p, _g) = b.device_ptr(s);
                drop(_g);
                drop(b);
                vals.push(Val::Ptr(p));
                live.push(None);
                continue;
            }
            Arg::Host(n) => {
                host.push(vec![2f32; n]);
                vals.push(Val::Ptr(host.last().unwrap().as_ptr() as u64));
                live.push(None);
                continue;
            }
            Arg::Int(i) => {
                vals.push(Val::I(i));
                live.push(None);
                continue;
            }
        };
        let b = buf.unwrap();
        let p = {
            let (p, _g) = b.device_ptr(s);
            p
        };
        vals.push(Val::Ptr(p));
        live.push(Some(b));
    }
    for (i, v) in vals.iter().enumerate() {
        if let Val::Ptr(p) = v {
            println!("ARG{i}=0x{p:x}");
        }
    }
    let cfg = LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    };
    let mut b = s.launch_builder(&f);
    for v in &vals {
        match v {
            Val::Ptr(p) => b.arg(p),
            Val::I(i) => b.arg(i),
        };
    }
    // SAFETY: the arguments match the planted kernels' signatures (pointers and ints); a
    // fault is what some of these launches are for.
    let launched = unsafe {
        if coop {
            b.launch_cooperative(cfg)
        } else {
            b.launch(cfg)
        }
    };
    let result = launched.map(|_| ()).and_then(|()| s.synchronize());
    let bufs = live
        .iter()
        .map(|b| match (b, &result) {
            (Some(b), Ok(())) => Some(s.clone_dtoh(b).unwrap()),
            _ => None,
        })
        .collect();
    Ran { result, bufs }
}

/// A planted bug: in a child process the launch must fail (with `code` when given); the
/// child's stderr must hold every fragment of `expect`, and, when `addr` is (i, off), the
/// address of argument i plus off.
#[allow(clippy::too_many_arguments)]
fn planted_fails(
    test: &str,
    kernel: &str,
    args: &[Arg],
    block: (u32, u32, u32),
    code: Option<sys::CUresult>,
    expect: &[&str],
    addr: Option<(usize, u64)>,
) {
    let (grid, threads, smem) = block;
    planted_library();
    let Some(c) = child(test, &[], || {
        let ran = run_planted(kernel, args, grid, threads, smem, false);
        match (ran.result, code) {
            (Ok(()), _) => panic!("planted kernel {kernel} ran without an error"),
            (Err(e), Some(want)) => assert_eq!(e.0, want, "{kernel}"),
            (Err(_), None) => {}
        }
    }) else {
        return;
    };
    assert!(c.ok, "child failed:\n{}\n{}", c.stderr, c.stdout);
    for e in expect {
        c.must_contain(e);
    }
    if let Some((i, off)) = addr {
        let tag = format!("ARG{i}=0x");
        // The child's stdout interleaves with the harness's own lines: search anywhere.
        let line = c
            .stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&tag))
            .unwrap_or_else(|| panic!("no {tag} in the child's stdout:\n{}", c.stdout));
        let base = u64::from_str_radix(line.trim(), 16).unwrap();
        c.must_contain(&format!("0x{:x}", base + off));
    }
}

const ILLEGAL: Option<sys::CUresult> = Some(sys::CUresult::CUDA_ERROR_ILLEGAL_ADDRESS);

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn planted_out_of_bounds_write() {
    // 2 x 256 threads over 256 floats: the thread with i == 256 is block 1, thread 0.
    planted_fails(
        "planted_out_of_bounds_write",
        "planted_oob_write",
        &[Arg::Ones(256), Arg::Int(256)],
        (2, 256, 0),
        ILLEGAL,
        &["kernel planted_oob_write block (1,0,0) thread (0,0,0)"],
        Some((0, 1024)),
    );
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn planted_shared_memory_races() {
    planted_library();
    for kernel in ["planted_raw_race", "planted_war_race"] {
        let name = format!("planted_shared_memory_races_{kernel}");
        let Some(c) = child_named("planted_shared_memory_races", &name, || {
            let ran = run_planted(kernel, &[Arg::Zeros(256)], 1, 256, 0, false);
            assert!(ran.result.is_err(), "{kernel} ran without an error");
        }) else {
            continue;
        };
        assert!(c.ok, "child failed:\n{}\n{}", c.stderr, c.stdout);
        c.must_contain(&format!("kernel {kernel} block (0,0,0)"));
        c.must_contain("shared-memory race");
    }
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn planted_warp_race_without_syncwarp() {
    planted_fails(
        "planted_warp_race_without_syncwarp",
        "planted_no_syncwarp",
        &[Arg::Zeros(32)],
        (1, 32, 0),
        None,
        &[
            "kernel planted_no_syncwarp block (0,0,0)",
            "shared-memory race",
        ],
        None,
    );
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn planted_misaligned_vector_load() {
    planted_fails(
        "planted_misaligned_vector_load",
        "planted_misaligned_float4",
        &[Arg::Ones(64), Arg::Zeros(32)],
        (1, 32, 0),
        Some(sys::CUresult::CUDA_ERROR_MISALIGNED_ADDRESS),
        &[
            "kernel planted_misaligned_float4 block (0,0,0) thread (0,0,0)",
            "misaligned",
        ],
        Some((0, 4)),
    );
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn planted_divergent_barrier() {
    planted_fails(
        "planted_divergent_barrier",
        "planted_divergent_barrier",
        &[Arg::Zeros(32)],
        (1, 32, 0),
        None,
        &[
            "kernel planted_divergent_barrier block (0,0,0)",
            "divergent barrier",
        ],
        None,
    );
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn planted_barriers_at_two_sites() {
    // A barrier is its source line: the report names both, and which threads wait where.
    planted_fails(
        "planted_barriers_at_two_sites",
        "planted_barrier_sites",
        &[Arg::Zeros(32)],
        (1, 32, 0),
        None,
        &[
            "kernel planted_barrier_sites block (0,0,0)",
            "divergent barrier: the threads reach different __syncthreads",
            "planted.cu:73",
            "planted.cu:76",
        ],
        None,
    );
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn planted_shuffle_mask_errors() {
    planted_fails(
        "planted_shuffle_mask_errors",
        "planted_shfl_mask_missing",
        &[Arg::Zeros(32)],
        (1, 32, 0),
        None,
        &[
            "kernel planted_shfl_mask_missing block (0,0,0)",
            "0x7fffffff",
        ],
        None,
    );
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn planted_shuffle_lane_absent() {
    planted_fails(
        "planted_shuffle_lane_absent",
        "planted_shfl_lane_absent",
        &[Arg::Zeros(32)],
        (1, 32, 0),
        None,
        &[
            "kernel planted_shfl_lane_absent block (0,0,0)",
            "0xffffffff",
        ],
        None,
    );
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn planted_host_pointer() {
    planted_fails(
        "planted_host_pointer",
        "planted_host_pointer",
        &[Arg::Host(32), Arg::Zeros(32)],
        (1, 32, 0),
        ILLEGAL,
        &[
            "kernel planted_host_pointer block (0,0,0) thread (0,0,0)",
            "not device memory",
        ],
        Some((0, 0)),
    );
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn planted_use_after_free() {
    planted_fails(
        "planted_use_after_free",
        "planted_use_after_free",
        &[Arg::Freed(32), Arg::Zeros(32)],
        (1, 32, 0),
        ILLEGAL,
        &[
            "kernel planted_use_after_free block (0,0,0) thread (0,0,0)",
            "freed",
        ],
        Some((0, 0)),
    );
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn planted_dynamic_shared_memory_overrun() {
    // 64 floats of dynamic shared memory; thread 0 writes dyn[64].
    planted_fails(
        "planted_dynamic_shared_memory_overrun",
        "planted_dynamic_smem_oob",
        &[Arg::Zeros(32), Arg::Int(64)],
        (1, 32, 256),
        ILLEGAL,
        &["kernel planted_dynamic_smem_oob block (0,0,0) thread (0,0,0)"],
        None,
    );
}

/// Every correct twin runs clean and computes what it should.
#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn planted_twins_pass() {
    let ok = |kernel: &str, args: &[Arg], grid: u32, block: u32, smem: u32, coop: bool| {
        let ran = run_planted(kernel, args, grid, block, smem, coop);
        if let Err(e) = ran.result {
            panic!("{kernel} failed: {e}");
        }
        ran.bufs
    };
    let out = ok(
        "ok_write",
        &[Arg::Zeros(256), Arg::Int(256)],
        2,
        256,
        0,
        false,
    );
    assert_eq!(out[0].as_deref(), Some(&vec![1f32; 256][..]));

    let want: Vec<f32> = (0..256).map(|t| ((t + 255) % 256) as f32).collect();
    let out = ok("ok_raw", &[Arg::Zeros(256)], 1, 256, 0, false);
    assert_eq!(out[0].as_deref(), Some(&want[..]));

    let want: Vec<f32> = (0..256).map(|t| ((t + 1) % 256) as f32).collect();
    let out = ok("ok_war", &[Arg::Zeros(256)], 1, 256, 0, false);
    assert_eq!(out[0].as_deref(), Some(&want[..]));

    let out = ok(
        "ok_aligned_float4",
        &[Arg::Ones(64), Arg::Zeros(32)],
        1,
        32,
        0,
        false,
    );
    assert_eq!(out[1].as_deref(), Some(&vec![4f32; 32][..]));

    let want: Vec<f32> = (0..32).map(|t| if t >= 16 { 2.0 } else { 1.0 }).collect();
    let out = ok("ok_barrier", &[Arg::Zeros(32)], 1, 32, 0, false);
    assert_eq!(out[0].as_deref(), Some(&want[..]));

    let out = ok("ok_shfl", &[Arg::Zeros(64)], 1, 64, 0, false);
    assert_eq!(out[0].as_deref(), Some(&vec![496f32; 64][..]));

    let want: Vec<f32> = (0..32).map(|t| (31 - t) as f32).collect();
    let out = ok("ok_syncwarp", &[Arg::Zeros(32)], 1, 32, 0, false);
    assert_eq!(out[0].as_deref(), Some(&want[..]));

    let want: Vec<f32> = (0..32).map(|t| (63 - t) as f32).collect();
    let out = ok(
        "ok_dynamic_smem",
        &[Arg::Zeros(32), Arg::Int(64)],
        1,
        32,
        256,
        false,
    );
    assert_eq!(out[0].as_deref(), Some(&want[..]));

    let out = ok("ok_atomics", &[Arg::Zeros(5)], 1, 64, 0, false);
    let bits: Vec<u32> = out[0]
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(bits, [16, 16, 16, 16, 0x5555_5555]);

    let out = ok(
        "ok_read_fill",
        &[Arg::Fresh(1), Arg::Zeros(1)],
        1,
        1,
        0,
        false,
    );
    assert!(out[1].as_ref().unwrap()[0].is_nan());

    let out = ok(
        "ok_cross_block_flag",
        &[Arg::Zeros(1), Arg::Zeros(2)],
        2,
        32,
        0,
        true,
    );
    let bits: Vec<u32> = out[1]
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(bits, [8, 7]);
}

// ---------------------------------------------------------------------------------------
// Graph lifetimes in tachyon's own CUDA session
// ---------------------------------------------------------------------------------------

/// A decoding session captures each step into a CUDA graph whose kernel parameters point
/// into the session's buffers and whose nodes launch the module's kernels: dropping the
/// session must destroy the graph before freeing those buffers and unloading the module.
/// The emulated driver reports a graph that outlives either on stderr.
#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn cuda_session_drops_its_graph_before_what_it_points_into() {
    use tachyon::engine::{Pick, Rows, SessionOptions, StepInput, cuda_session};
    use tachyon::format::GgmlType;
    use tachyon::format::random::{Shape, random_weights};
    let Some(c) = child(
        "cuda_session_drops_its_graph_before_what_it_points_into",
        &[],
        || {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(repo.join("tests/data/tiny-llama-config.json"))
                .expect("tests/data/tiny-llama-config.json");
            let cfg: serde_json::Value = serde_json::from_str(&text).expect("tiny llama config");
            let shape = Shape::from_json("tiny-llama", &cfg).unwrap_or_else(|e| panic!("{e}"));
            let weights =
                random_weights(&shape, GgmlType::BF16, 7).unwrap_or_else(|e| panic!("{e}"));
            let opts = SessionOptions {
                ctx: 64,
                max_batch: 4,
                ..Default::default()
            };
            let mut s = cuda_session(&shape.config, &weights, &opts, device(), false)
                .unwrap_or_else(|e| panic!("{e}"));
            let mut logits = vec![0f32; shape.config.vocab_size];
            let prefill = StepInput {
                tokens: &[1, 2, 3],
                pos: 0,
            };
            s.step(prefill, Pick::Logits(&mut logits), Rows::Last)
                .unwrap_or_else(|e| panic!("{e}"));
            // Single-token steps: captured into a graph, then replayed.
            for (i, t) in [4u32, 5, 6].into_iter().enumerate() {
                let step = StepInput {
                    tokens: &[t],
                    pos: 3 + i,
                };
                s.step(step, Pick::Argmax, Rows::Last)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            drop(s);
        },
    ) else {
        return;
    };
    assert!(c.ok, "child failed:\n{}\n{}", c.stderr, c.stdout);
    assert!(
        !c.stderr.contains("outlived the buffer/module"),
        "the session's CUDA graph outlived what it points into:\n{}",
        c.stderr
    );
}
