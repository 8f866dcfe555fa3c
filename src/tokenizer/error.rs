//! The one error type of the tokenizer module.

use std::path::PathBuf;

/// Everything that can go wrong while building a tokenizer, encoding, decoding or rendering
/// a chat template. Messages name the offending key, file or index so a broken model file
/// can be diagnosed from the message alone.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// Vocabulary metadata is missing, malformed or inconsistent.
    #[error("tokenizer metadata: {0}")]
    Metadata(String),
    /// The vocabulary names a tokenizer model this crate does not implement.
    #[error("unsupported tokenizer model '{0}' (supported: gpt2, llama)")]
    UnsupportedModel(String),
    /// A file of a Hugging Face tokenizer directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file of a Hugging Face tokenizer directory is not what we expect.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// The `tokenizers` crate reported an error while building or encoding.
    #[error("tokenizer: {0}")]
    Backend(String),
    /// A token id outside the vocabulary was passed in.
    #[error("token id {id} is out of range (vocabulary has {vocab_size} tokens)")]
    InvalidId { id: u32, vocab_size: usize },
    /// The chat template failed to compile or render.
    #[error("chat template: {0}")]
    Template(String),
}

impl TokenizerError {
    pub(crate) fn meta(message: impl Into<String>) -> Self {
        TokenizerError::Metadata(message.into())
    }

    pub(crate) fn backend(err: impl std::fmt::Display) -> Self {
        TokenizerError::Backend(err.to_string())
    }
}
