//! Opening the GPU: driver, context, stream and the embedded kernel module.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule, CudaStream, DriverError, result, sys};
use cudarc::nvrtc::Ptx;

use super::launch::KernelFns;
use super::profile::KernelTally;
use super::{
    KERNELS_FATBIN, KERNELS_MIN_DRIVER_CUDA, NVCC_VERSION, kernels_absent_reason, kernels_built,
};

/// The oldest GPU the fatbin can run on: it carries sm_80 machine code and compute_80 PTX,
/// and PTX only JIT-compiles forward, so anything before Ampere has no code to load.
pub const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

/// The oldest driver (its CUDA version, as `cuDriverGetVersion` reports it) that keeps the
/// programmatic stream serialization attribute of a launch captured into a CUDA graph (the
/// graph's programmatic edges came with CUDA 12.3). Older drivers get plain launches.
pub const PDL_MIN_DRIVER_CUDA: i32 = 12030;

/// Whether kernel launches use programmatic dependent launch (PDL: a kernel may start while
/// the one before it finishes; see kernels/README.md), and why (or why not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pdl {
    On,
    /// `TACHYON_PDL=0`.
    OffByRequest,
    /// Only the sm_90a machine code of the fatbin has the kernels' `griddepcontrol`
    /// instructions: the sm_80 code and the compute_80 PTX (which a newer GPU compiles) have
    /// no wait, and without its wait a programmatically launched kernel would race the one
    /// before it.
    OffForGpu {
        major: i32,
        minor: i32,
    },
    /// The driver is older than [`PDL_MIN_DRIVER_CUDA`] (or did not say).
    OffForDriver {
        driver: i32,
    },
}

/// Decides [`Pdl`] from the compute capability, the driver's CUDA version and the value of
/// `TACHYON_PDL` (anything but `0` leaves it to the other two).
pub fn pdl_decision(cc: (i32, i32), driver: i32, env: Option<&str>) -> Pdl {
    if env.map(str::trim) == Some("0") {
        Pdl::OffByRequest
    } else if cc != (9, 0) {
        Pdl::OffForGpu {
            major: cc.0,
            minor: cc.1,
        }
    } else if driver < PDL_MIN_DRIVER_CUDA {
        Pdl::OffForDriver { driver }
    } else {
        Pdl::On
    }
}

impl std::fmt::Display for Pdl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Pdl::On => write!(f, "on"),
            Pdl::OffByRequest => write!(f, "off (TACHYON_PDL=0)"),
            Pdl::OffForGpu { major, minor } => write!(
                f,
                "off (compute capability {major}.{minor}: the kernels wait for their \
                 predecessor only in the sm_90a code)"
            ),
            Pdl::OffForDriver { driver } => write!(
                f,
                "off (driver for CUDA {}, PDL in graphs needs {})",
                cuda_version_text(driver),
                cuda_version_text(PDL_MIN_DRIVER_CUDA)
            ),
        }
    }
}

/// Why the CUDA backend cannot be used. Every variant's message says what is missing, so
/// the caller can print it and fall back to the CPU backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaUnavailable {
    /// The build had no nvcc (or it failed, or was disabled); the reason comes from build.rs.
    #[error("tachyon was built without CUDA kernels ({0})")]
    NoKernels(&'static str),
    /// No libcuda to open: no NVIDIA driver on this machine.
    #[error("libcuda not found (no NVIDIA driver)")]
    NoDriver,
    /// The driver is there but sees no GPU.
    #[error("no CUDA device")]
    NoDevice,
    /// The requested ordinal is past the last device.
    #[error("no CUDA device {ordinal} ({count} device(s) present)")]
    NoSuchDevice { ordinal: usize, count: usize },
    /// The GPU is older than the kernels' minimum architecture.
    #[error(
        "{name} has compute capability {major}.{minor}; tachyon's CUDA kernels need {}.{} \
         (Ampere) or newer",
        MIN_COMPUTE_CAPABILITY.0,
        MIN_COMPUTE_CAPABILITY.1
    )]
    UnsupportedGpu {
        name: String,
        major: i32,
        minor: i32,
    },
    /// The driver refused to load the embedded fatbin. An old driver is the usual cause, so
    /// the message says which driver was found and which one the kernels need.
    #[error(
        "the CUDA driver could not load tachyon's kernels: {source}. This driver supports CUDA \
         {}; the kernels (built by {nvcc}) need a driver for CUDA {} or newer{}",
        cuda_version_text(*driver),
        cuda_version_text(KERNELS_MIN_DRIVER_CUDA),
        driver_hint(*driver)
    )]
    ModuleLoad {
        nvcc: &'static str,
        /// What `cuDriverGetVersion` reported (0 if it failed).
        driver: i32,
        #[source]
        source: DriverError,
    },
    /// cudarc panicked inside the driver library (e.g. a libcuda too old to have a function
    /// it resolves); caught so that probing never takes the process down.
    #[error("the CUDA driver library could not be used: {0}")]
    DriverPanicked(String),
    /// Any other driver call that failed, and what it was for.
    #[error("CUDA driver error while {during}: {source}")]
    Driver {
        during: &'static str,
        #[source]
        source: DriverError,
    },
}

/// The CUDA version the installed driver supports, 0 if it cannot say.
fn driver_cuda_version() -> i32 {
    let mut version = 0;
    // SAFETY: cuDriverGetVersion writes one int through a valid pointer; the driver is
    // initialized (cuInit succeeded before any module load).
    let status = unsafe { sys::cuDriverGetVersion(&mut version) };
    if status == sys::CUresult::CUDA_SUCCESS {
        version
    } else {
        0
    }
}

/// 12020 -> "12.2".
fn cuda_version_text(v: i32) -> String {
    if v <= 0 {
        return "unknown".into();
    }
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// Names the driver branch to install when the found one is too old.
fn driver_hint(found: i32) -> &'static str {
    if found > 0 && found < KERNELS_MIN_DRIVER_CUDA {
        if KERNELS_MIN_DRIVER_CUDA <= 12020 {
            " (an R535 or newer NVIDIA driver)"
        } else {
            " (an R580 or newer NVIDIA driver)"
        }
    } else {
        ""
    }
}

fn driver_err(during: &'static str) -> impl FnOnce(DriverError) -> CudaUnavailable {
    move |source| CudaUnavailable::Driver { during, source }
}

/// One GPU, ready to run tachyon's kernels: its context, the stream every tachyon launch
/// and copy goes on, and the loaded kernel module.
///
/// All work is issued on [`CudaDevice::stream`], a non-default stream, and cudarc's
/// per-buffer event tracking is off: one stream orders everything by itself, the events
/// would cost time on every launch, and CUDA-graph capture fails with them on (or on the
/// legacy default stream). Buffers used with this device's kernels must be allocated on
/// this stream, so that freeing them is ordered after the kernels that use them.
#[derive(Debug)]
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    pub(crate) kernels: KernelFns,
    /// Notes launches while a profile runs (`profile`).
    pub(crate) tally: KernelTally,
    name: String,
    compute_capability: (i32, i32),
    /// Decided once at probe; [`CudaDevice::disable_pdl`] can turn it off.
    pdl: Pdl,
}

/// Opens CUDA device 0. See [`probe_device`].
pub fn probe() -> Result<CudaDevice, CudaUnavailable> {
    probe_device(0)
}

/// Opens CUDA device `ordinal`: checks that this build has kernels and this machine a
/// driver and a recent enough GPU, creates the context and stream, and loads every kernel.
/// Returns why not instead of panicking, whatever is missing.
pub fn probe_device(ordinal: usize) -> Result<CudaDevice, CudaUnavailable> {
    // cudarc resolves driver functions lazily and panics when one is missing from the
    // installed libcuda. Probing exists to decide between GPU and CPU, so turn that into an
    // error too. Nothing escapes the closure half-built, hence AssertUnwindSafe.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open_device(ordinal))).unwrap_or_else(
        |panic| {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(CudaUnavailable::DriverPanicked(msg))
        },
    )
}

fn open_device(ordinal: usize) -> Result<CudaDevice, CudaUnavailable> {
    if !kernels_built() {
        return Err(CudaUnavailable::NoKernels(kernels_absent_reason()));
    }
    // cudarc opens libcuda lazily on the first driver call and panics if it is not there,
    // so look for it first.
    // SAFETY: this only tries to dlopen the driver library by its usual names; loading the
    // real libcuda runs no initializer with preconditions on our side.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaUnavailable::NoDriver);
    }
    match result::init() {
        Ok(()) => {}
        Err(DriverError(sys::CUresult::CUDA_ERROR_NO_DEVICE)) => {
            return Err(CudaUnavailable::NoDevice);
        }
        Err(source) => {
            return Err(CudaUnavailable::Driver {
                during: "initializing the driver (cuInit)",
                source,
            });
        }
    }
    let count = CudaContext::device_count().map_err(driver_err("counting devices"))?;
    let count = usize::try_from(count).unwrap_or(0);
    if count == 0 {
        return Err(CudaUnavailable::NoDevice);
    }
    if ordinal >= count {
        return Err(CudaUnavailable::NoSuchDevice { ordinal, count });
    }

    let ctx = CudaContext::new(ordinal).map_err(driver_err("creating the context"))?;
    let name = ctx.name().map_err(driver_err("reading the device name"))?;
    let (major, minor) = ctx
        .compute_capability()
        .map_err(driver_err("reading the compute capability"))?;
    if (major, minor) < MIN_COMPUTE_CAPABILITY {
        return Err(CudaUnavailable::UnsupportedGpu { name, major, minor });
    }

    // SAFETY: turning tracking off makes the caller responsible for cross-stream ordering.
    // tachyon issues all of its device work on the one stream created below (documented on
    // CudaDevice), where stream order alone sequences allocation, use and free. No buffer
    // exists yet, so none was created with tracking on.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().map_err(driver_err("creating a stream"))?;

    // The driver picks the sm_80 or sm_90a machine code, or JIT-compiles the PTX, itself.
    let module = ctx
        .load_module(Ptx::from_binary(KERNELS_FATBIN.to_vec()))
        .map_err(|source| CudaUnavailable::ModuleLoad {
            nvcc: NVCC_VERSION,
            driver: driver_cuda_version(),
            source,
        })?;
    // Looking every kernel up now turns a fatbin/wrapper name mismatch into a probe error
    // instead of a failure in the middle of a forward pass.
    let kernels =
        KernelFns::load(&module).map_err(driver_err("looking up a kernel in the module"))?;
    // Decided before any launch: cuLaunchKernelEx is called only when this says on, so a
    // driver that lacks it (cudarc would panic resolving it) never sees the call.
    let pdl = pdl_decision(
        (major, minor),
        driver_cuda_version(),
        std::env::var("TACHYON_PDL").ok().as_deref(),
    );
    static LOGGED: std::sync::Once = std::sync::Once::new();
    LOGGED.call_once(|| tracing::info!("{name}: programmatic dependent launch {pdl}"));

    Ok(CudaDevice {
        ctx,
        stream,
        module,
        kernels,
        tally: KernelTally::default(),
        name,
        compute_capability: (major, minor),
        pdl,
    })
}

impl CudaDevice {
    /// The CUDA context (primary context of the device).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every tachyon launch and copy goes on; allocate buffers on it.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The loaded kernel module (all of `kernels/*.cu`).
    pub fn module(&self) -> &Arc<CudaModule> {
        &self.module
    }

    /// The device's streaming multiprocessors (1 if the driver will not say).
    pub fn sm_count(&self) -> usize {
        self.ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(1)
            .max(1)
    }

    /// The device's marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// (major, minor), e.g. (9, 0) for Hopper.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// Whether the decode-step kernels are launched with programmatic dependent launch, and
    /// why not when they are not.
    pub fn pdl(&self) -> Pdl {
        self.pdl
    }

    /// Turns programmatic dependent launch off for this device's later launches, as
    /// `TACHYON_PDL=0` does process-wide (for comparisons). Call before anything is captured
    /// into a graph: a captured launch keeps its attribute.
    pub fn disable_pdl(&mut self) {
        if self.pdl == Pdl::On {
            self.pdl = Pdl::OffByRequest;
        }
    }

    /// Free and total device memory in bytes, as the driver reports them now.
    pub fn memory_info(&self) -> Result<(usize, usize), DriverError> {
        self.ctx.bind_to_thread()?;
        result::mem_get_info()
    }

    /// Waits for all work queued on [`CudaDevice::stream`]; returns the first asynchronous
    /// error of that work (an out-of-bounds access in a kernel shows up here).
    pub fn synchronize(&self) -> Result<(), DriverError> {
        self.stream.synchronize()
    }
}

/// Device-to-device copy bandwidth in GB/s (bytes read + written), the median of `reps`
/// copies of `bytes` after one untimed copy, timed on the host after synchronizing: the
/// yardstick the kernel benchmarks report their bandwidth against.
pub fn device_copy_bandwidth(
    dev: &CudaDevice,
    bytes: usize,
    reps: usize,
) -> Result<f64, crate::backend::BackendError> {
    use super::launch::dev_err;
    let s = dev.stream();
    let src = s
        .alloc_zeros::<u8>(bytes.max(1))
        .map_err(dev_err("copy buffer"))?;
    let mut dst = s
        .alloc_zeros::<u8>(bytes.max(1))
        .map_err(dev_err("copy buffer"))?;
    s.memcpy_dtod(&src, &mut dst).map_err(dev_err("copy"))?;
    dev.synchronize().map_err(dev_err("copy"))?;
    let mut secs = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t = std::time::Instant::now();
        s.memcpy_dtod(&src, &mut dst).map_err(dev_err("copy"))?;
        dev.synchronize().map_err(dev_err("copy"))?;
        secs.push(t.elapsed().as_secs_f64());
    }
    secs.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    Ok(if median > 0.0 {
        2.0 * bytes as f64 / median / 1e9
    } else {
        0.0
    })
}
