//! The model graph: a loaded model (config, weights, tokenizer) and the forward pass of the
//! decoder family every supported model belongs to (`llama.rs`), written against
//! `backend::Ops` so the same graph runs on every backend.
//!
//! The path through it: [`Model::load`] reads the file (`format`) and its tokenizer;
//! [`llama::Llama::new`] uploads the weights into a backend's form; each step embeds the
//! tokens, runs the blocks (norm, attention with rope, SwiGLU MLP) and the LM head.

pub mod llama;

use std::path::{Path, PathBuf};

use crate::format::{self, ModelConfig, ModelError, ModelSource, ModelWeights};
use crate::tokenizer::Tokenizer;

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
        let (config, weights, source) = format::load_weights(path)?;
        let tokenizer = match &source {
            ModelSource::Gguf(file) => Tokenizer::from_gguf(file),
            ModelSource::Safetensors(_) => Tokenizer::from_hf_dir(path),
        }
        .map_err(|e| ModelError::Tokenizer(Box::new(e)))?;
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
