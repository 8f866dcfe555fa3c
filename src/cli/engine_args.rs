//! The command-line arguments every engine-building command shares (`--backend`,
//! `--quant`, `--kv-dtype`, the speculation flags), and their conversion into the library's plain
//! option structs: clap types stay here.

use std::path::PathBuf;

use clap::ValueEnum;

use tachyon::backend::KvDtype;
use tachyon::engine::{BackendChoice, ModelSpec, SpeculationOptions};
use tachyon::quant::at_load::LoadQuant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// CUDA when a GPU and the kernels are there, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl From<BackendArg> for BackendChoice {
    fn from(b: BackendArg) -> BackendChoice {
        match b {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Cpu => BackendChoice::Cpu,
            BackendArg::Cuda => BackendChoice::Cuda,
        }
    }
}

/// `--kv-dtype`: the KV cache's element type on the GPU (the CPU keeps f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum KvDtypeArg {
    #[default]
    Bf16,
    F16,
    /// Full precision (for checks against the CPU backend; twice the memory and bytes read).
    F32,
}

impl From<KvDtypeArg> for KvDtype {
    fn from(d: KvDtypeArg) -> KvDtype {
        match d {
            KvDtypeArg::Bf16 => KvDtype::Bf16,
            KvDtypeArg::F16 => KvDtype::F16,
            KvDtypeArg::F32 => KvDtype::F32,
        }
    }
}

/// `--quant`: int8 (Q8_0) or int4 (Q4_K, Q4_0 where rows are not whole 256-blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QuantArg {
    Int8,
    Int4,
}

impl From<QuantArg> for LoadQuant {
    fn from(q: QuantArg) -> LoadQuant {
        match q {
            QuantArg::Int8 => LoadQuant::Int8,
            QuantArg::Int4 => LoadQuant::Int4,
        }
    }
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct SpeculationArgs {
    /// A smaller model with the same tokenizer that proposes tokens for the target to
    /// verify in one pass (speculative decoding; the output is unchanged).
    #[arg(long)]
    pub draft_model: Option<PathBuf>,
    /// Most tokens proposed per step (1 to 15).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=15))]
    pub draft_max: u8,
    /// Propose tokens by matching the last few tokens against the prompt and the text so
    /// far (prompt lookup; no draft model needed, combines with one).
    #[arg(long)]
    pub lookup: bool,
    /// Always propose --draft-max tokens instead of following the acceptance rate.
    #[arg(long)]
    pub draft_fixed: bool,
    /// Propose what followed the last few tokens in earlier requests' prompts and outputs
    /// (a keystroke request gets the previous completion as its draft): an index of the
    /// most recent TOKENS tokens (default 262144, about 32 MiB). Lossless.
    #[arg(long, value_name = "TOKENS", num_args = 0..=1, default_missing_value = "262144")]
    pub suffix_cache: Option<usize>,
}

impl SpeculationArgs {
    pub fn enabled(&self) -> bool {
        self.draft_model.is_some() || self.lookup || self.suffix_cache.is_some()
    }

    /// The library's options, with `draft` as the draft model (from `--draft-model`, or
    /// the bench's random draft).
    pub fn options_with(&self, draft: Option<ModelSpec>) -> SpeculationOptions {
        SpeculationOptions {
            draft,
            draft_max: usize::from(self.draft_max),
            lookup: self.lookup,
            draft_fixed: self.draft_fixed,
            suffix_cache: self.suffix_cache,
        }
    }

    pub fn options(&self) -> SpeculationOptions {
        self.options_with(self.draft_model.clone().map(ModelSpec::File))
    }
}

/// `--prefill-chunk`: prompt tokens per forward call during prefill, 1 to 65536.
pub fn prefill_chunk(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=65536).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: give 1 to 65536 tokens")),
    }
}
