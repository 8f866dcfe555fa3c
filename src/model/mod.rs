//! Model files and families: the GGUF and safetensors readers, the config every family maps
//! to, the weight set, and the forward pass (`llama.rs`, shared by all supported families).

pub mod config;
pub mod gguf;
pub mod gguf_writer;
pub mod llama;
pub mod load_quant;
pub mod quantize;
pub mod random;
pub mod safetensors;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::{Family, ModelConfig, Rope, RopeStyle};
pub use weights::{ModelWeights, Weight};

use crate::quant::GgmlType;
use crate::tokenizer::{Tokenizer, TokenizerError};
use gguf::GgufFile;
use weights::{ByteSource, TensorLookup};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    #[error("invalid model file: {0}")]
    Format(String),
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("tensor {0} is missing")]
    MissingTensor(String),
    #[error("tensor {name}: {msg}")]
    Tensor { name: String, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> ModelError {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The container a model came from.
pub enum ModelSource {
    Gguf(Arc<GgufFile>),
    Safetensors(safetensors::SafetensorsDir),
}

/// A loaded model: config, weights (views into the mapped file), tokenizer.
pub struct Model {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub weights: ModelWeights,
    pub tokenizer: Tokenizer,
    pub source: ModelSource,
}

impl Model {
    /// Load a `.gguf` file or an HF directory (config.json + safetensors + tokenizer.json).
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let (config, weights, source) = load_weights(path)?;
        let tokenizer = match &source {
            ModelSource::Gguf(file) => Tokenizer::from_gguf(file)?,
            ModelSource::Safetensors(_) => Tokenizer::from_hf_dir(path)?,
        };
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(ModelError::Config(format!(
                "the tokenizer has {} tokens but the model only {} embeddings",
                tokenizer.vocab_size(),
                config.vocab_size
            )));
        }
        Ok(Model {
            path: path.to_path_buf(),
            config,
            weights,
            tokenizer,
            source,
        })
    }

    /// Bytes of weights read per decoded token (every matrix once, the embedding row aside).
    pub fn weight_bytes_per_token(&self) -> u64 {
        self.weights.bytes_per_token()
    }
}

/// Load only the config and weights of a `.gguf` file or an HF directory (no tokenizer).
pub fn load_weights(path: &Path) -> Result<(ModelConfig, ModelWeights, ModelSource), ModelError> {
    if path.is_dir() {
        let cfg_path = path.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Format(format!("{}: {e}", cfg_path.display())))?;
        let config = ModelConfig::from_hf_json(&json)?;
        let st = safetensors::SafetensorsDir::open(path)?;
        let weights = ModelWeights::load(&config, &st)?;
        Ok((config, weights, ModelSource::Safetensors(st)))
    } else {
        let file = Arc::new(GgufFile::open(path)?);
        let (config, weights) = gguf_weights(&file)?;
        Ok((config, weights, ModelSource::Gguf(file)))
    }
}

/// The config and weights of a parsed GGUF file, checked against each other.
pub fn gguf_weights(file: &Arc<GgufFile>) -> Result<(ModelConfig, ModelWeights), ModelError> {
    let mut config = ModelConfig::from_gguf(file)?;
    let lookup = GgufLookup { file: file.clone() };
    // Llama 3.1 style rope scaling is stored as a tensor of per-frequency divisors.
    if let Some(f) = weights::rope_freq_factors(&config, &lookup)? {
        config.rope.freq_factors = Some(f);
        config.validate()?;
    }
    let weights = ModelWeights::load(&config, &lookup)?;
    Ok((config, weights))
}

/// Tensor lookup in a GGUF file (names are already GGUF's).
struct GgufLookup {
    file: Arc<GgufFile>,
}

impl TensorLookup for GgufLookup {
    fn find(&self, name: &str) -> Result<Option<Weight>, ModelError> {
        let Some(t) = self.file.tensor(name) else {
            return Ok(None);
        };
        let bad = |m: String| ModelError::Tensor {
            name: name.to_string(),
            msg: m,
        };
        // Every tensor the decoder uses is a matrix or a vector; a 3-D or 4-D one would be
        // silently flattened into the wrong rows.
        if t.dims.iter().skip(2).any(|&d| d != 1) {
            return Err(bad(format!(
                "has shape {:?}; expected 1 or 2 dimensions",
                t.dims
            )));
        }
        let to_usize =
            |v: u64| usize::try_from(v).map_err(|_| bad(format!("dimension {v} too large")));
        let cols = to_usize(t.row_len())?;
        let rows = to_usize(t.n_rows())?;
        let offset = to_usize(t.offset)?;
        let len = to_usize(t.n_bytes)?;
        let src: Arc<dyn ByteSource> = self.file.clone();
        Weight::new(name, t.ty, rows, cols, src, offset, len).map(Some)
    }

    fn tensor_names(&self) -> Vec<String> {
        self.file.tensors().iter().map(|t| t.name.clone()).collect()
    }
}

/// Tensor counts per format in a GGUF file, for `tachyon info`.
pub fn gguf_type_counts(file: &GgufFile) -> Vec<(GgmlType, usize)> {
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for t in file.tensors() {
        match counts.iter_mut().find(|(ty, _)| *ty == t.ty) {
            Some((_, n)) => *n += 1,
            None => counts.push((t.ty, 1)),
        }
    }
    counts
}
