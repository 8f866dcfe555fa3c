//! Programmatic dependent launch through the driver: `cuLaunchKernelEx` with the
//! programmatic stream serialization attribute, kept by the node a capture records, and the
//! emulated device's pre-wait rule applied when the graph replays (emulator/README.md).

use std::ffi::c_void;

use cudarc::driver::{
    CudaFunction, CudaStream, DevicePtr, DriverError, LaunchConfig, PushKernelArg, sys,
};

use super::{ILLEGAL, child, device, planted_module};

/// Queues `f` over one block of `threads` with the attribute set.
///
/// # Safety
/// `args` must be the kernel's parameters.
unsafe fn launch_programmatic(
    s: &CudaStream,
    f: &CudaFunction,
    threads: u32,
    args: &mut [*mut c_void],
) -> Result<(), DriverError> {
    // SAFETY: plain data; all-zero is a valid value.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let cfg = sys::CUlaunchConfig {
        gridDimX: 1,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: threads,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: 0,
        hStream: s.cu_stream(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    // SAFETY: cfg and attr outlive the call; the caller vouches for args.
    unsafe {
        sys::cuLaunchKernelEx(
            &cfg,
            f.cu_function(),
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
}

/// Captures the planted `ok_pdl_produce` (a plain launch writing `in`) and then `consumer`
/// (programmatic, reading weights and `in`), replays the graph and returns `out`.
fn replay(consumer: &str) -> Result<Vec<f32>, DriverError> {
    let dev = device();
    let s = dev.stream().clone();
    let m = planted_module(dev.context());
    let produce = m.load_function("ok_pdl_produce")?;
    let consume = m.load_function(consumer)?;
    let n = 64;
    let w = s.clone_htod(&vec![100f32; n])?;
    let input = s.alloc_zeros::<f32>(n)?;
    let out = s.alloc_zeros::<f32>(n)?;
    let (mut wp, mut ip, mut op) = (
        w.device_ptr(&s).0,
        input.device_ptr(&s).0,
        out.device_ptr(&s).0,
    );
    let count = n as i32;
    s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    let mut b = s.launch_builder(&produce);
    b.arg(&ip).arg(&count);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: ok_pdl_produce(float* out, int n) over a live buffer of n floats.
    unsafe { b.launch(cfg) }?;
    let mut args = [&mut wp, &mut ip, &mut op].map(|p| std::ptr::from_mut(p).cast::<c_void>());
    // SAFETY: the consumers take (const float* w, const float* in, float* out), n each.
    unsafe { launch_programmatic(&s, &consume, n as u32, &mut args) }?;
    let graph = s
        .end_capture(sys::CUgraphInstantiate_flags(0))?
        .expect("a graph");
    graph.launch()?;
    s.synchronize()?;
    let got = s.clone_dtoh(&out)?;
    drop(graph);
    Ok(got)
}

#[test]
#[ignore = "needs the emulated device (scripts/emulated-gpu.sh)"]
fn a_replayed_programmatic_launch_that_reads_before_its_wait_fails() {
    let Some(c) = child(
        "pdl::a_replayed_programmatic_launch_that_reads_before_its_wait_fails",
        &[],
        || {
            let r = replay("planted_pdl_read_before_wait");
            assert_eq!(r.err().map(|e| e.0), ILLEGAL, "the replay faults");
        },
    ) else {
        return;
    };
    assert!(c.ok, "child failed:\n{}\n{}", c.stderr, c.stdout);
    c.must_contain("planted_pdl_read_before_wait");
    c.must_contain("before griddepcontrol.wait in a programmatic dependent launch");
    c.must_contain("that kernel ok_pdl_produce (launch 1 before this one) wrote");
    // Reading after the wait is the same graph, and fine.
    let got = replay("ok_pdl_read_after_wait").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got[5], 105.0, "the consumer saw the producer's output");
}
