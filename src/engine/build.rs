//! One way to build an engine, used by every command (`generate`, `serve`, `bench` and the
//! speculative bench): check the options, size the CPU thread pool, load the model (a file
//! or random weights of a real shape), quantize it at load when asked, decide where it
//! runs, build the session there, then the draft model and the speculation.
//!
//! The options are plain structs: the command line converts its arguments into them, and
//! [`EngineOptions::validate`] refuses bad values before anything is loaded, so a bad flag
//! fails at once instead of on every request.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::Engine;
use super::cuda_session::cuda_kv_layout;
use super::recovery::{Rebuilt, Restart};
use super::session::{Session, SessionOptions, cpu_session, cuda_session};
use super::spec::{DraftModel, SpeculationError, SpeculationOptions};
use crate::backend::{BackendError, cuda};
use crate::format::GgmlType;
use crate::format::random::{Shape, random_weights};
use crate::format::{ModelConfig, ModelError, ModelWeights, load_weights};
use crate::graph::Model;
use crate::quant::at_load::{LoadQuant, quantize_weights};
use crate::tokenizer::Tokenizer;

/// Where a model's weights come from.
#[derive(Clone, Debug)]
pub enum ModelSpec {
    /// A `.gguf` file or an HF directory.
    File(PathBuf),
    /// Random weights of a real shape (no tokenizer).
    Random(RandomSpec),
}

/// Random weights: a shape name (`llama-3.2-1b`, ...) or the path of an HF `config.json`,
/// the format of the matrices and the seed.
#[derive(Clone, Debug)]
pub struct RandomSpec {
    pub shape: String,
    pub dtype: GgmlType,
    pub seed: u64,
}

/// Where the engine runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// CUDA when a GPU and the kernels are there, else the CPU (with a notice saying why).
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// How to build the engine (the speculation aside).
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    pub backend: BackendChoice,
    /// The sessions' options; their `max_batch` comes from `prefill_chunk`.
    pub session: SessionOptions,
    /// Prompt tokens per forward call (the sessions' `max_batch`); `None`: the chosen
    /// backend's default, [`CPU_PREFILL_CHUNK`] or [`CUDA_PREFILL_CHUNK`].
    pub prefill_chunk: Option<usize>,
    /// Quantize unquantized matrices at load (the draft's too).
    pub quant: Option<LoadQuant>,
    /// CPU threads (`None`: all cores). Sizes the process-wide pool, once.
    pub threads: Option<usize>,
    /// Load the model's tokenizer with its weights (a file source only; the bench of
    /// weights alone does without).
    pub tokenizer: bool,
    /// Show a progress bar on stderr while weights are uploaded to a GPU.
    pub progress: bool,
}

/// Prompt tokens per forward call on the CPU by default. A chunk streams every weight
/// once, and the simple formats' rows are decoded once per chunk (`quant::DecodedRows`):
/// a 512-token prompt of SmolLM2-135M Q4_1 or Qwen2.5-Coder-0.5B (two threads) reached
/// its first token 7-10% sooner in one chunk of 512 than in chunks of 64; the 1.5B model
/// (k-quants only) did not move. The buffers of 512 rows are a few tens of MB.
pub const CPU_PREFILL_CHUNK: usize = 512;
/// Prompt tokens per forward call on a GPU by default. Every format runs more than 4 rows
/// on the tensor cores (BF16, and the block formats through their dequantized tiles), so a
/// 512-token prompt in one call streams each weight from memory once, where 64-token chunks
/// streamed it 8 times and ran 8 LM heads and logit copies. Each slot's activations are
/// sized for it: about 57 MB on the 1B shape, 105 MB on the 8B one. Reasoned, not measured
/// yet: `scripts/gpu-check.sh` times the same prompt in 64-token chunks beside it.
pub const CUDA_PREFILL_CHUNK: usize = 512;

/// Why an engine could not be built. Each variant names what failed; the underlying error
/// is its `source` (printed once by the caller's error chain, not repeated here).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{option}: {why}")]
    Invalid { option: &'static str, why: String },
    #[error("--threads")]
    Threads(#[source] rayon::ThreadPoolBuildError),
    #[error("loading {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("random weights {shape}")]
    Random {
        shape: String,
        #[source]
        source: ModelError,
    },
    #[error("--quant")]
    Quant(#[source] ModelError),
    #[error("--backend cuda")]
    NoGpu(#[source] cuda::CudaUnavailable),
    #[error("not enough GPU memory")]
    GpuMemory(#[source] cuda::DoesNotFit),
    #[error("starting the {backend} backend")]
    Backend {
        backend: &'static str,
        #[source]
        source: BackendError,
    },
    #[error(transparent)]
    Speculation(#[from] SpeculationError),
}

fn invalid(option: &'static str, why: impl Into<String>) -> BuildError {
    BuildError::Invalid {
        option,
        why: why.into(),
    }
}

impl EngineOptions {
    /// Refuses values that could only fail later (every request failing instead of start-up).
    pub fn validate(&self) -> Result<(), BuildError> {
        if self.session.ctx == 0 {
            return Err(invalid("--ctx", "must be at least 1 token"));
        }
        if self.prefill_chunk == Some(0) {
            return Err(invalid("--prefill-chunk", "must be at least 1 token"));
        }
        if self.threads == Some(0) {
            return Err(invalid("--threads", "must be at least 1"));
        }
        Ok(())
    }
}

/// What the engine was built from, for the commands' reports.
pub struct ModelInfo {
    /// The file path, or `random:SHAPE`, with ` --quant ...` when quantized at load.
    pub label: String,
    pub config: ModelConfig,
    /// Present when [`EngineOptions::tokenizer`] was asked for (file sources only).
    pub tokenizer: Option<Tokenizer>,
    /// The format of the first layer's query matrix (the LM head's without layers).
    pub weights_type: GgmlType,
    /// Weight bytes read per decoded token.
    pub bytes_per_token: u64,
}

/// An engine ready to generate, and what it was built from.
pub struct Built {
    pub engine: Engine,
    pub model: ModelInfo,
    /// The CPU thread count or the GPU's name.
    pub device: String,
    /// Set when `auto` fell back to the CPU: one line saying why, for stderr.
    pub notice: Option<String>,
    /// Time spent loading and building everything.
    pub load_time: Duration,
}

/// Builds the engine `model` describes on the backend `opts` chooses, with the speculation
/// `spec` asks for (a draft model sharing the target's vocabulary, prompt lookup, both, or
/// neither).
pub fn build(
    model: &ModelSpec,
    opts: &EngineOptions,
    spec: &SpeculationOptions,
) -> Result<Built, BuildError> {
    opts.validate()?;
    spec.validate()?;
    let t0 = Instant::now();
    configure_threads(opts.threads)?;
    let target = load(model, opts.tokenizer, opts.quant)?;
    let draft = match &spec.draft {
        Some(d) => {
            let draft = load(d, target.tokenizer.is_some(), opts.quant).map_err(|e| match e {
                BuildError::Load { path, source } => SpeculationError::Load { path, source }.into(),
                e => e,
            })?;
            spec.check_vocabulary(d, &draft.config, draft.tokenizer.as_ref(), &target)?;
            Some(draft)
        }
        None => None,
    };
    let place = Placement::choose(opts.backend)?;
    let session = place.session(&target.config, &target.weights, opts)?;
    let mut engine = Engine::new(session);
    let draft_model = match &draft {
        Some(d) => Some(place.draft(d, opts, engine.vocab_size())?),
        None => None,
    };
    engine.set_speculation(spec.speculation(draft_model));
    if let Placement::Cuda { .. } = place {
        engine.set_restart(restart_on_the_gpu(
            &place,
            &target,
            draft.as_ref(),
            opts,
            spec,
        ));
    }
    let device = match &place {
        Placement::Cpu { .. } => format!("{} threads", rayon::current_num_threads()),
        Placement::Cuda { name } => name.clone(),
    };
    let notice = match place {
        Placement::Cpu { notice } => notice,
        Placement::Cuda { .. } => None,
    };
    let weights_type = target
        .weights
        .layers
        .first()
        .map_or(target.weights.output.ty, |l| l.wq.ty);
    Ok(Built {
        engine,
        model: ModelInfo {
            label: target.label,
            bytes_per_token: target.weights.bytes_per_token(),
            config: target.config,
            tokenizer: target.tokenizer,
            weights_type,
        },
        device,
        notice,
        load_time: t0.elapsed(),
    })
}

/// Rebuilds the GPU sessions as [`build`] made them, after a device fault (see
/// `engine::recovery`). Holds the host weights (shared with the loaded model, so a mapped
/// file costs nothing more; weights quantized at load stay in host memory).
fn restart_on_the_gpu(
    place: &Placement,
    target: &Loaded,
    draft: Option<&Loaded>,
    opts: &EngineOptions,
    spec: &SpeculationOptions,
) -> Restart {
    let place = place.clone();
    let target = (target.config.clone(), target.weights.clone());
    let draft = draft.map(Loaded::model_only);
    let opts = EngineOptions {
        progress: false,
        ..opts.clone()
    };
    let spec = spec.clone();
    Box::new(move || {
        let session = place
            .session(&target.0, &target.1, &opts)
            .map_err(|e| error_chain(&e))?;
        let vocab = session.vocab_size();
        let draft = match &draft {
            Some(d) => Some(place.draft(d, &opts, vocab).map_err(|e| error_chain(&e))?),
            None => None,
        };
        Ok(Rebuilt {
            session,
            speculation: spec.speculation(draft),
        })
    })
}

/// An error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Sizes rayon's global pool (the CPU backend's threads). Tolerates a pool already built
/// with that size (a second engine in the same process).
fn configure_threads(threads: Option<usize>) -> Result<(), BuildError> {
    let Some(n) = threads else {
        return Ok(());
    };
    match rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
    {
        Ok(()) => Ok(()),
        Err(_) if rayon::current_num_threads() == n => Ok(()),
        Err(e) => Err(BuildError::Threads(e)),
    }
}

/// A model's config, weights (quantized when asked) and maybe its tokenizer.
pub(crate) struct Loaded {
    pub label: String,
    pub config: ModelConfig,
    pub weights: ModelWeights,
    pub tokenizer: Option<Tokenizer>,
}

fn load(spec: &ModelSpec, tokenizer: bool, quant: Option<LoadQuant>) -> Result<Loaded, BuildError> {
    let mut loaded = match spec {
        ModelSpec::File(path) => {
            let failed = |source| BuildError::Load {
                path: path.clone(),
                source,
            };
            let label = path.display().to_string();
            if tokenizer {
                let m = Model::load(path).map_err(failed)?;
                Loaded {
                    label,
                    config: m.config,
                    weights: m.weights,
                    tokenizer: Some(m.tokenizer),
                }
            } else {
                let (config, weights, _source) = load_weights(path).map_err(failed)?;
                Loaded {
                    label,
                    config,
                    weights,
                    tokenizer: None,
                }
            }
        }
        ModelSpec::Random(r) => {
            let failed = |source| BuildError::Random {
                shape: r.shape.clone(),
                source,
            };
            let shape = Shape::resolve(&r.shape).map_err(failed)?;
            let weights = random_weights(&shape, r.dtype, r.seed).map_err(failed)?;
            Loaded {
                label: format!("random:{}", shape.name),
                config: shape.config,
                weights,
                tokenizer: None,
            }
        }
    };
    if let Some(q) = quant {
        loaded.weights = quantize_weights(&loaded.weights, q).map_err(BuildError::Quant)?;
        loaded.label = format!("{} --quant {q:?}", loaded.label).to_lowercase();
    }
    Ok(loaded)
}

impl Loaded {
    /// The config and weights alone (what a session is built from).
    fn model_only(&self) -> Loaded {
        Loaded {
            label: self.label.clone(),
            config: self.config.clone(),
            weights: self.weights.clone(),
            tokenizer: None,
        }
    }
}

/// The backend the sessions are built on, decided once for the target and its draft.
#[derive(Clone)]
enum Placement {
    /// `notice`: why `auto` did not take the GPU.
    Cpu {
        notice: Option<String>,
    },
    Cuda {
        name: String,
    },
}

impl Placement {
    fn choose(choice: BackendChoice) -> Result<Placement, BuildError> {
        match choice {
            BackendChoice::Cpu => Ok(Placement::Cpu { notice: None }),
            BackendChoice::Cuda => {
                let dev = cuda::probe().map_err(BuildError::NoGpu)?;
                Ok(Placement::Cuda {
                    name: dev.name().to_string(),
                })
            }
            BackendChoice::Auto => Ok(match cuda::probe() {
                Ok(dev) => Placement::Cuda {
                    name: dev.name().to_string(),
                },
                Err(why) => Placement::Cpu {
                    notice: Some(format!("notice: using the CPU backend ({why})")),
                },
            }),
        }
    }

    /// A draft model's session, checked against the target's vocabulary.
    fn draft(
        &self,
        draft: &Loaded,
        opts: &EngineOptions,
        vocab: usize,
    ) -> Result<DraftModel, BuildError> {
        let session = self.session(&draft.config, &draft.weights, opts)?;
        Ok(DraftModel::new(session, vocab).map_err(SpeculationError::from)?)
    }

    fn session(
        &self,
        config: &ModelConfig,
        weights: &ModelWeights,
        opts: &EngineOptions,
    ) -> Result<Box<dyn Session>, BuildError> {
        let session = SessionOptions {
            max_batch: opts.prefill_chunk.unwrap_or(match self {
                Placement::Cpu { .. } => CPU_PREFILL_CHUNK,
                Placement::Cuda { .. } => CUDA_PREFILL_CHUNK,
            }),
            // `--int8-acts` is the GPU's: a CPU engine keeps its own activation quantization
            // (a CPU session's rounded twin is for the tests that compare the two).
            int8_acts: opts.session.int8_acts && matches!(self, Placement::Cuda { .. }),
            ..opts.session.clone()
        };
        let (backend, made) = match self {
            Placement::Cpu { .. } => ("cpu", cpu_session(config, weights, &session)),
            Placement::Cuda { .. } => {
                // Every session opens its own handle on the device (the same primary context).
                let dev = cuda::probe().map_err(BuildError::NoGpu)?;
                // Refused before the upload, with the sizes; a failed query leaves it to
                // the allocations themselves. The KV caches are laid out as the session will
                // lay them out, from what the weights and working buffers leave free.
                if let Ok((free, total)) = dev.context().mem_get_info() {
                    let (free, total) = (free as u64, total as u64);
                    let sm_count = dev.sm_count();
                    let plan = |layout| {
                        cuda::MemoryPlan::new(
                            config,
                            weights,
                            layout,
                            session.max_batch,
                            crate::graph::llama::MAX_VERIFY_ROWS,
                            session.kv_dtype,
                            sm_count,
                        )
                    };
                    let fixed = plan((0, 0));
                    let left = free.saturating_sub(fixed.weights + fixed.working);
                    plan(cuda_kv_layout(config, &session, left))
                        .check(free, total)
                        .map_err(BuildError::GpuMemory)?;
                }
                (
                    "cuda",
                    cuda_session(config, weights, &session, dev, opts.progress),
                )
            }
        };
        made.map_err(|source| BuildError::Backend { backend, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_that_would_fail_every_request_are_refused() {
        let bad = |o: EngineOptions| o.validate().err().map(|e| e.to_string());
        let ctx0 = EngineOptions {
            session: SessionOptions {
                ctx: 0,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            bad(ctx0).as_deref(),
            Some("--ctx: must be at least 1 token")
        );
        let threads0 = EngineOptions {
            threads: Some(0),
            ..Default::default()
        };
        assert_eq!(
            bad(threads0).as_deref(),
            Some("--threads: must be at least 1")
        );
        let chunk0 = EngineOptions {
            prefill_chunk: Some(0),
            ..Default::default()
        };
        assert_eq!(
            bad(chunk0).as_deref(),
            Some("--prefill-chunk: must be at least 1 token")
        );
        assert!(EngineOptions::default().validate().is_ok());
    }

    /// The prompt tokens per forward call: the CPU's default when none is given, the
    /// given number otherwise (a longer prompt then goes in several calls, to the same
    /// tokens).
    #[test]
    fn the_prefill_chunk_is_the_backends_default_unless_given() {
        use crate::engine::{Flow, GenerateParams, SamplingParams};
        let model = ModelSpec::Random(RandomSpec {
            shape: concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/tiny-llama-config.json"
            )
            .into(),
            dtype: crate::format::GgmlType::F32,
            seed: 3,
        });
        let engine = |chunk| {
            let opts = EngineOptions {
                backend: BackendChoice::Cpu,
                session: SessionOptions {
                    ctx: 512,
                    ..Default::default()
                },
                prefill_chunk: chunk,
                ..Default::default()
            };
            build(&model, &opts, &SpeculationOptions::default())
                .unwrap_or_else(|e| panic!("{e}"))
                .engine
        };
        let prompt: Vec<u32> = (0..300).map(|i| (i * 7) % 256).collect();
        let params = GenerateParams {
            max_tokens: 2,
            sampling: SamplingParams::greedy(),
            stop_ids: vec![],
        };
        let mut outs = Vec::new();
        for chunk in [None, Some(7)] {
            let mut e = engine(chunk);
            assert_eq!(e.max_batch(), chunk.unwrap_or(CPU_PREFILL_CHUNK));
            let mut out = Vec::new();
            e.generate(&prompt, &params, &mut |t| {
                out.push(t);
                Flow::Continue
            })
            .unwrap_or_else(|err| panic!("{err}"));
            outs.push(out);
        }
        // The CPU's products are bit for bit the same in one call or in several.
        assert_eq!(outs[0], outs[1], "one chunk vs chunks of 7");
    }
}
