//! Where `generate` and `bench` run: the `--backend` choice, the CUDA probe, and building
//! the session there.

use anyhow::{Result, bail};
use clap::ValueEnum;

use tachyon::backend::cuda;
use tachyon::engine::{Session, SessionOptions, cpu_session, cuda_session};
use tachyon::model::{ModelConfig, ModelWeights};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// CUDA when a GPU and the kernels are there and the weights are F32/F16/BF16, else the CPU.
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

/// Why these weights cannot run on the CUDA backend yet, if they cannot: it takes F32,
/// F16 and BF16 matrices; quantized formats on the GPU are a later step.
fn cuda_weights_problem(w: &ModelWeights) -> Option<String> {
    let mut mats = vec![&w.embed, &w.output];
    for l in &w.layers {
        mats.extend([&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]);
    }
    mats.iter().find(|m| m.ty.is_quantized()).map(|m| {
        format!(
            "{} is {}; the CUDA backend runs F32, F16 and BF16 weights only for now",
            m.name, m.ty
        )
    })
}

/// Decide where to run and build the session there. `auto` takes the GPU when the probe
/// succeeds and the weights are unquantized, else the CPU with a one-line notice why.
pub fn make_session(
    choice: BackendChoice,
    config: &ModelConfig,
    weights: &ModelWeights,
    opts: &SessionOptions,
) -> Result<Placed> {
    let gpu = match choice {
        BackendChoice::Cpu => None,
        BackendChoice::Cuda => {
            let dev = cuda::probe().map_err(|why| anyhow::anyhow!("--backend cuda: {why}"))?;
            if let Some(why) = cuda_weights_problem(weights) {
                bail!("--backend cuda: {why}; use --backend cpu");
            }
            Some(dev)
        }
        BackendChoice::Auto => match (cuda::probe(), cuda_weights_problem(weights)) {
            (Ok(dev), None) => Some(dev),
            (Err(why), _) => {
                eprintln!("notice: using the CPU backend ({why})");
                None
            }
            (Ok(_), Some(why)) => {
                eprintln!("notice: using the CPU backend ({why})");
                None
            }
        },
    };
    match gpu {
        None => Ok(Placed {
            session: cpu_session(config, weights, opts)?,
            device: format!("{} threads", rayon::current_num_threads()),
            copy_bandwidth: Box::new(|| Ok(tachyon::bench::host_copy_bandwidth(256 << 20, 5))),
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
