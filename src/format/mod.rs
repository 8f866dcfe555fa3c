//! File formats and weights, the bottom layer: the GGUF reader and writer, the safetensors
//! reader, the GGUF type table, the config every family maps to (with its `Rope`), the
//! weight set (`Weight`: a view into the mapped file) and random weights of a real shape.
//!
//! The path through it: [`load_weights`] opens a `.gguf` file ([`gguf`]) or an HF directory
//! ([`safetensors`] + config.json), maps it to a [`ModelConfig`] ([`config`]) and finds every
//! tensor the config calls for ([`weights`]), checking shapes before anything is converted.
//! Nothing here knows a backend, a quantizer or the engine.

pub mod config;
pub mod ggml_type;
pub mod gguf;
pub mod random;
pub mod safetensors;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::{Family, ModelConfig, Rope, RopeStyle};
pub use ggml_type::{GgmlType, QK_K};
pub use weights::{ByteSource, HostBytes, ModelWeights, Weight};

use gguf::GgufFile;
use weights::TensorLookup;

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
    /// The tokenizer stored with the weights could not be read (the tokenizer sits above
    /// this layer, so its error travels boxed).
    #[error("tokenizer: {0}")]
    Tokenizer(#[source] Box<dyn std::error::Error + Send + Sync>),
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
