//! Where `generate` and `bench` run: the `--backend` choice, the CUDA probe, and building
//! the session there.

use anyhow::Result;
use clap::ValueEnum;

use tachyon::backend::cuda;
use tachyon::engine::{Session, SessionOptions, cpu_session, cuda_session};
use tachyon::format::{ModelConfig, ModelWeights};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// CUDA when a GPU and the kernels are there, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// A session on the chosen backend, with what `bench` needs to know about it.
pub struct Placed {
    pub session: Box<dyn Session>,
    /// The CPU thread count or the GPU's name.
    pub device: String,
    /// Measures the memory copy bandwidth of that device in GB/s (read + written).
    pub copy_bandwidth: Box<dyn Fn() -> Result<f64>>,
}

/// Decide where to run and build the session there. `auto` takes the GPU when the probe
/// succeeds, else the CPU with a one-line notice why.
pub fn make_session(
    choice: BackendChoice,
    config: &ModelConfig,
    weights: &ModelWeights,
    opts: &SessionOptions,
) -> Result<Placed> {
    let gpu = match choice {
        BackendChoice::Cpu => None,
        BackendChoice::Cuda => {
            Some(cuda::probe().map_err(|why| anyhow::anyhow!("--backend cuda: {why}"))?)
        }
        BackendChoice::Auto => match cuda::probe() {
            Ok(dev) => Some(dev),
            Err(why) => {
                eprintln!("notice: using the CPU backend ({why})");
                None
            }
        },
    };
    match gpu {
        None => Ok(Placed {
            session: cpu_session(config, weights, opts)?,
            device: format!("{} threads", rayon::current_num_threads()),
            copy_bandwidth: Box::new(|| {
                Ok(tachyon::engine::bench::host_copy_bandwidth(256 << 20, 5))
            }),
        }),
        Some(dev) => {
            let name = dev.name().to_string();
            // The bandwidth probe opens its own handle on the device (same primary context).
            let session = cuda_session(config, weights, opts, dev, true)?;
            Ok(Placed {
                session,
                device: name,
                copy_bandwidth: Box::new(|| {
                    let dev = cuda::probe()?;
                    Ok(cuda::device_copy_bandwidth(&dev, 1 << 30, 10)?)
                }),
            })
        }
    }
}
