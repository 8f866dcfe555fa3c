//! The kernel launchers: one file per kernel family of `kernels/`, each holding all that
//! launching that family takes and nothing else: the shape checks (a refused call launches
//! nothing and says why), the params struct (`params.rs`, generated from
//! `kernels/tachyon_kernels.h`) filled from live buffers of the device, the grid and block,
//! and the launch on the device's one stream. [`super::CudaBackend`] owns the buffers and
//! scratch and only dispatches each `backend::Ops` call to one of these; a new kernel family
//! is a new file here, its `KernelFns` entry below, and one case in `tests/cuda/ops.rs`.
//!
//! - [`norm`] runs `rmsnorm.cu` (RMSNorm, the residual add fused in front of it, per head)
//! - [`matmul`] runs `gemv.cu`, `gemv_quant.cu`, `gemm.cu`, chosen by weight format and row
//!   count (the RMSNorm prologue, the bias, the gate/up SwiGLU, the residual add and the
//!   stacked q/k/v split fused in)
//! - [`attention`] runs `attention.cu` (KV append, flash-decoding splits, their reduction)
//! - [`rope_attention`] runs `rope_attention.cu` (a decode row's norms, rope, KV append and
//!   attention in one kernel)
//! - [`rope`], [`embed`] and [`elementwise`] run `rope.cu`, `embed.cu`, `elementwise.cu`
//! - [`sample`] runs `sample.cu` (argmax) and `sample_passes.cu` + `sample_logits.cu`
//!   (sampling on the device)
//! - [`penalty`] runs `penalty.cu` (the penalties' token history, the step's inputs advanced)
//!
//! Launches are asynchronous: a launcher returns once the kernel is queued; an error the
//! kernel itself hits surfaces at the next synchronization. Every launch goes through
//! [`queue`], which sends the decode step's kernels as programmatic dependent launches where
//! the device allows it ([`super::device::Pdl`]; kernels/README.md).

pub mod attention;
pub mod elementwise;
pub mod embed;
pub mod matmul;
pub mod norm;
pub mod penalty;
pub mod rope;
pub mod rope_attention;
pub mod sample;

use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaModule, DevicePtr, DevicePtrMut, DeviceRepr, DriverError, LaunchConfig,
    PushKernelArg, sys,
};

use super::device::CudaDevice;
use crate::backend::BackendError;

/// Every kernel function of the module, looked up once when the device is probed.
#[derive(Debug)]
pub(crate) struct KernelFns {
    pub(crate) rmsnorm_residual_f32: CudaFunction,
    pub(crate) embed_gather: CudaFunction,
    pub(crate) gemv_f32out: CudaFunction,
    pub(crate) gemv_quant_f32out: CudaFunction,
    /// `gemv_qpack_<format>` (repacked block matrices): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
    /// Q5_K, Q6_K, in `TACHYON_DTYPE_*` order.
    pub(crate) gemv_qpack: [CudaFunction; 8],
    /// `gemv_qpack_<format>_q8`: the same over int8 activations (`__dp4a`), same order.
    pub(crate) gemv_qpack_q8: [CudaFunction; 8],
    /// `quantize_act_q8` (kernels/quantize_act.cu): the activations of the `_q8` kernels.
    pub(crate) quantize_act_q8: CudaFunction,
    pub(crate) gemm_f32out: CudaFunction,
    pub(crate) gemm_mma_bf16: CudaFunction,
    /// `gemm_tile_bf16`: the BF16 product for prefill chunks, 64 x 64 tiles.
    pub(crate) gemm_tile_bf16: CudaFunction,
    /// `gemm_mma_qpack_<format>`: the same over repacked block matrices, in
    /// `TACHYON_DTYPE_*` order from Q4_0.
    pub(crate) gemm_mma_qpack: [CudaFunction; 8],
    /// `gemm_mma_qpack_wide_<format>`: those with 64 tokens a block (prefill), same order.
    pub(crate) gemm_mma_qpack_wide: [CudaFunction; 8],
    pub(crate) rope_f32: CudaFunction,
    pub(crate) attn_kv_append: CudaFunction,
    pub(crate) attn_decode_split: CudaFunction,
    pub(crate) attn_decode_reduce: CudaFunction,
    /// `attn_prefill_mma_h64`, `_h128` (kernels/attention_prefill.cu), by
    /// [`attention::PREFILL_HEAD_DIMS`].
    pub(crate) attn_prefill_mma: [CudaFunction; 2],
    pub(crate) elementwise_f32: CudaFunction,
    pub(crate) argmax_partial: CudaFunction,
    pub(crate) argmax_final: CudaFunction,
    /// The draw's vocabulary passes: `sample_scan`, `sample_refine`, `sample_compact`.
    pub(crate) sample_passes: [CudaFunction; 3],
    pub(crate) sample_logits: CudaFunction,
    pub(crate) argmax_partial_masked: CudaFunction,
    pub(crate) sample_passes_masked: [CudaFunction; 3],
    pub(crate) sample_logits_masked: CudaFunction,
    pub(crate) penalty_seed: CudaFunction,
    pub(crate) penalty_apply: CudaFunction,
    /// `rope_attn_decode_h<HD>_<type>`: by head size ([`rope_attention::FUSED_HEAD_DIMS`]),
    /// then cache type (f32, bf16, f16).
    pub(crate) rope_attn_decode: Vec<[CudaFunction; 3]>,
    /// The kernels written for programmatic dependent launch, by raw handle
    /// ([`KernelFns::pdl_kernels`]): only these may be launched programmatically.
    pdl: Vec<usize>,
}

impl KernelFns {
    pub(crate) fn load(module: &Arc<CudaModule>) -> Result<Self, DriverError> {
        let mut fns = Self {
            pdl: Vec::new(),
            rmsnorm_residual_f32: module.load_function("rmsnorm_residual_f32")?,
            embed_gather: module.load_function("embed_gather")?,
            gemv_f32out: module.load_function("gemv_f32out")?,
            gemv_quant_f32out: module.load_function("gemv_quant_f32out")?,
            gemv_qpack: [
                module.load_function("gemv_qpack_q4_0")?,
                module.load_function("gemv_qpack_q4_1")?,
                module.load_function("gemv_qpack_q5_0")?,
                module.load_function("gemv_qpack_q5_1")?,
                module.load_function("gemv_qpack_q8_0")?,
                module.load_function("gemv_qpack_q4_k")?,
                module.load_function("gemv_qpack_q5_k")?,
                module.load_function("gemv_qpack_q6_k")?,
            ],
            gemv_qpack_q8: [
                module.load_function("gemv_qpack_q4_0_q8")?,
                module.load_function("gemv_qpack_q4_1_q8")?,
                module.load_function("gemv_qpack_q5_0_q8")?,
                module.load_function("gemv_qpack_q5_1_q8")?,
                module.load_function("gemv_qpack_q8_0_q8")?,
                module.load_function("gemv_qpack_q4_k_q8")?,
                module.load_function("gemv_qpack_q5_k_q8")?,
                module.load_function("gemv_qpack_q6_k_q8")?,
            ],
            quantize_act_q8: module.load_function("quantize_act_q8")?,
            gemm_f32out: module.load_function("gemm_f32out")?,
            gemm_mma_bf16: module.load_function("gemm_mma_bf16")?,
            gemm_tile_bf16: module.load_function("gemm_tile_bf16")?,
            gemm_mma_qpack: [
                module.load_function("gemm_mma_qpack_q4_0")?,
                module.load_function("gemm_mma_qpack_q4_1")?,
                module.load_function("gemm_mma_qpack_q5_0")?,
                module.load_function("gemm_mma_qpack_q5_1")?,
                module.load_function("gemm_mma_qpack_q8_0")?,
                module.load_function("gemm_mma_qpack_q4_k")?,
                module.load_function("gemm_mma_qpack_q5_k")?,
                module.load_function("gemm_mma_qpack_q6_k")?,
            ],
            gemm_mma_qpack_wide: [
                module.load_function("gemm_mma_qpack_wide_q4_0")?,
                module.load_function("gemm_mma_qpack_wide_q4_1")?,
                module.load_function("gemm_mma_qpack_wide_q5_0")?,
                module.load_function("gemm_mma_qpack_wide_q5_1")?,
                module.load_function("gemm_mma_qpack_wide_q8_0")?,
                module.load_function("gemm_mma_qpack_wide_q4_k")?,
                module.load_function("gemm_mma_qpack_wide_q5_k")?,
                module.load_function("gemm_mma_qpack_wide_q6_k")?,
            ],
            rope_f32: module.load_function("rope_f32")?,
            attn_kv_append: module.load_function("attn_kv_append")?,
            attn_decode_split: module.load_function("attn_decode_split")?,
            attn_decode_reduce: module.load_function("attn_decode_reduce")?,
            attn_prefill_mma: [
                module.load_function("attn_prefill_mma_h64")?,
                module.load_function("attn_prefill_mma_h128")?,
            ],
            elementwise_f32: module.load_function("elementwise_f32")?,
            argmax_partial: module.load_function("argmax_partial")?,
            argmax_final: module.load_function("argmax_final")?,
            sample_passes: [
                module.load_function("sample_scan")?,
                module.load_function("sample_refine")?,
                module.load_function("sample_compact")?,
            ],
            sample_logits: module.load_function("sample_logits")?,
            argmax_partial_masked: module.load_function("argmax_partial_masked")?,
            sample_passes_masked: [
                module.load_function("sample_scan_masked")?,
                module.load_function("sample_refine_masked")?,
                module.load_function("sample_compact_masked")?,
            ],
            sample_logits_masked: module.load_function("sample_logits_masked")?,
            penalty_seed: module.load_function("penalty_seed")?,
            penalty_apply: module.load_function("penalty_apply")?,
            rope_attn_decode: rope_attention::kernel_names()
                .iter()
                .map(|[a, b, c]| {
                    Ok([
                        module.load_function(a)?,
                        module.load_function(b)?,
                        module.load_function(c)?,
                    ])
                })
                .collect::<Result<_, DriverError>>()?,
        };
        fns.pdl = fns
            .pdl_kernels()
            .map(|f| f.cu_function() as usize)
            .collect();
        Ok(fns)
    }

    /// The kernels of a decode step written for programmatic dependent launch
    /// (kernels/README.md): each calls `tachyon::pdl_trigger_then_wait` before its first
    /// access of activations, caches or scratch and before any write, and reads only weights
    /// before it. Every other kernel (the prefill GEMM, the split attention, rope,
    /// elementwise) is launched plainly: launched programmatically without that wait it
    /// would race the kernel before it.
    fn pdl_kernels(&self) -> impl Iterator<Item = &CudaFunction> {
        [
            &self.embed_gather,
            &self.rmsnorm_residual_f32,
            &self.gemv_f32out,
            &self.gemv_quant_f32out,
            &self.argmax_partial,
            &self.argmax_partial_masked,
            &self.argmax_final,
            &self.sample_logits,
            &self.sample_logits_masked,
            &self.penalty_seed,
            &self.penalty_apply,
            &self.quantize_act_q8,
        ]
        .into_iter()
        .chain(&self.gemv_qpack)
        .chain(&self.gemv_qpack_q8)
        .chain(&self.sample_passes)
        .chain(&self.sample_passes_masked)
        .chain(self.rope_attn_decode.iter().flatten())
    }

    /// Whether `f` is one of the kernels written for programmatic dependent launch.
    pub(crate) fn is_pdl(&self, f: &CudaFunction) -> bool {
        self.pdl.contains(&(f.cu_function() as usize))
    }
}

/// Maps a driver error to the backend's error, naming what was being done.
pub(crate) fn dev_err(what: &'static str) -> impl Fn(DriverError) -> BackendError {
    move |e| {
        if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            BackendError::OutOfMemory {
                what: format!("{what} on the GPU"),
            }
        } else if is_sticky(e.0) {
            BackendError::DeviceFault(format!("CUDA: {what}: {e}"))
        } else {
            BackendError::Device(format!("CUDA: {what}: {e}"))
        }
    }
}

/// The errors after which the driver fails every call in the context ("sticky" errors:
/// the CUDA documentation says the process is left in an inconsistent state). The only way
/// on is a fresh context, which the driver makes once every reference to the faulted
/// primary context is released.
pub(crate) fn is_sticky(code: sys::CUresult) -> bool {
    use sys::CUresult as R;
    matches!(
        code,
        R::CUDA_ERROR_ILLEGAL_ADDRESS
            | R::CUDA_ERROR_LAUNCH_TIMEOUT
            | R::CUDA_ERROR_ASSERT
            | R::CUDA_ERROR_HARDWARE_STACK_ERROR
            | R::CUDA_ERROR_ILLEGAL_INSTRUCTION
            | R::CUDA_ERROR_MISALIGNED_ADDRESS
            | R::CUDA_ERROR_INVALID_ADDRESS_SPACE
            | R::CUDA_ERROR_INVALID_PC
            | R::CUDA_ERROR_LAUNCH_FAILED
            | R::CUDA_ERROR_ECC_UNCORRECTABLE
            | R::CUDA_ERROR_CONTEXT_IS_DESTROYED
    )
}

/// A refused call: the shapes or arguments do not fit the kernel; nothing was launched.
pub(crate) fn shape_err(msg: String) -> BackendError {
    BackendError::Device(format!("CUDA backend: {msg}"))
}

/// A value that must fit the kernels' 32-bit ints.
pub(crate) fn i32_of(v: usize, what: &str) -> Result<i32, BackendError> {
    i32::try_from(v).map_err(|_| shape_err(format!("{what} = {v} does not fit a 32-bit int")))
}

/// A grid extent, which must fit the driver's `u32`.
pub(crate) fn u32_of(v: usize, what: &str) -> Result<u32, BackendError> {
    u32::try_from(v).map_err(|_| shape_err(format!("{what} = {v} does not fit a grid extent")))
}

/// The raw device address of a buffer. Event tracking is off on a `CudaDevice`, so the
/// guard cudarc returns records nothing and may be dropped at once.
pub(crate) fn ptr<T, S: DevicePtr<T>>(s: &S, dev: &CudaDevice) -> u64 {
    let (p, _guard) = s.device_ptr(dev.stream());
    p
}

pub(crate) fn ptr_mut<T, S: DevicePtrMut<T>>(s: &mut S, dev: &CudaDevice) -> u64 {
    let (p, _guard) = s.device_ptr_mut(dev.stream());
    p
}

/// Queues kernel `f` taking one params struct by value, on a grid of `grid` blocks of
/// `block` threads (an extent of 0 is raised to 1; callers return before launching nothing).
pub(crate) fn launch<P: DeviceRepr>(
    dev: &CudaDevice,
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    p: &P,
    name: &'static str,
) -> Result<(), BackendError> {
    launch_smem(dev, f, grid, block, 0, p, name)
}

/// [`launch`] with `smem` bytes of dynamic shared memory (at most 48 KiB: no opt-in).
pub(crate) fn launch_smem<P: DeviceRepr>(
    dev: &CudaDevice,
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    smem: u32,
    p: &P,
    name: &'static str,
) -> Result<(), BackendError> {
    let cfg = LaunchConfig {
        grid_dim: (grid.0.max(1), grid.1.max(1), grid.2.max(1)),
        block_dim: block,
        shared_mem_bytes: smem,
    };
    // SAFETY: every kernel of kernels/ takes exactly one params struct by value, the one
    // generated from the same header (bindgen's layout assertions check it); each launcher
    // fills its pointers from live buffers of this device, allocated on its one stream
    // (so no free can overtake the kernel), whose sizes it checked against the params'
    // shape fields. The launch copies the params at enqueue time.
    unsafe { queue(dev, f, cfg, p, name) }.map_err(dev_err(name))
}

/// Queues `f` with `p` as its one parameter on the device's stream, noted by the tally.
/// Kernels written for it ([`KernelFns::is_pdl`]) go through `cuLaunchKernelEx` with the
/// programmatic stream serialization attribute when the device runs PDL
/// ([`CudaDevice::pdl`]): the kernel may then be scheduled while the one before it ends,
/// and waits for it in its own code. Everything else is a plain `cuLaunchKernel`.
///
/// # Safety
/// `P` must be exactly the kernel's parameter (one struct by value), its pointers valid
/// device memory of this context for the kernel's accesses, freed only stream-ordered.
pub(crate) unsafe fn queue<P: DeviceRepr>(
    dev: &CudaDevice,
    f: &CudaFunction,
    cfg: LaunchConfig,
    p: &P,
    name: &'static str,
) -> Result<(), DriverError> {
    let programmatic = dev.pdl() == super::device::Pdl::On && dev.kernels.is_pdl(f);
    dev.tally.launched(dev.stream(), name, programmatic, || {
        if programmatic {
            // SAFETY: forwarded from the caller; the driver has cuLaunchKernelEx (PDL is on
            // only for drivers of CUDA 12.3 and newer, which cudarc resolves it from).
            unsafe { launch_programmatic(dev, f, cfg, p) }
        } else {
            let mut b = dev.stream().launch_builder(f);
            b.arg(p);
            // SAFETY: forwarded from the caller.
            unsafe { b.launch(cfg) }.map(|_| ())
        }
    })
}

/// `cuLaunchKernelEx` with `CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 1`.
///
/// # Safety
/// As [`queue`]; and the driver must have `cuLaunchKernelEx` (CUDA 11.8 and newer).
unsafe fn launch_programmatic<P: DeviceRepr>(
    dev: &CudaDevice,
    f: &CudaFunction,
    cfg: LaunchConfig,
    p: &P,
) -> Result<(), DriverError> {
    dev.context().bind_to_thread()?;
    // SAFETY: CUlaunchAttribute is plain data (an id and a union of integers and structs of
    // integers); all-zero is a valid value of it.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: dev.stream().cu_stream(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    // The one parameter, as cudarc's launch builder passes it: a pointer to the struct,
    // which the driver copies before cuLaunchKernelEx returns.
    let mut args = [std::ptr::from_ref(p).cast_mut().cast::<std::ffi::c_void>()];
    // SAFETY: config and attr outlive the call; args holds one pointer to a live P, the
    // kernel's only parameter (the caller's contract); extra is null.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            f.cu_function(),
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
}
