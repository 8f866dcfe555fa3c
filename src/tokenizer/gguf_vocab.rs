//! The vocabulary metadata of a GGUF file, extracted into a plain struct and validated.
//!
//! Everything read from the file is treated as hostile: sizes are bounded, arrays must agree
//! in length, and special-token ids must be inside the vocabulary. Building the tokenizer
//! itself (see `from_vocab`) works from this struct only, so it can be tested without files.

use super::error::TokenizerError;
use crate::format::gguf::GgufFile;

/// Upper bound on vocabulary and merge-list sizes; real vocabularies stay below 300k.
pub const MAX_TOKENS: usize = 1 << 22;
/// Upper bound on the length of one token or merge entry, in bytes.
pub const MAX_PIECE_BYTES: usize = 1 << 16;
/// Upper bound on the chat template's length, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// `tokenizer.ggml.token_type` values (llama.cpp's numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    /// Unknown codes (0 "undefined" included) are read as normal tokens, as llama.cpp does
    /// for text lookup.
    pub fn from_code(code: i32) -> TokenType {
        match code {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Normal,
        }
    }
}

/// Tokenizer metadata of one model, as stored under `tokenizer.*`.
#[derive(Clone, Debug, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name (byte-level BPE only).
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// Same length as `tokens` when present.
    pub scores: Option<Vec<f32>>,
    /// Same length as `tokens` when present; all `Normal` when absent.
    pub token_types: Vec<TokenType>,
    /// "left right" pairs in rank order.
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub eom_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

impl GgufVocab {
    /// Reads and validates the `tokenizer.*` keys of `g`.
    pub fn from_gguf(g: &GgufFile) -> Result<GgufVocab, TokenizerError> {
        let model = g
            .get_str("tokenizer.ggml.model")
            .ok_or_else(|| TokenizerError::meta("tokenizer.ggml.model missing or not a string"))?
            .to_string();
        let tokens = string_array(g, "tokenizer.ggml.tokens")?
            .ok_or_else(|| TokenizerError::meta("tokenizer.ggml.tokens missing"))?;
        let scores = match g.get("tokenizer.ggml.scores") {
            None => None,
            Some(_) => Some(g.f32_array("tokenizer.ggml.scores").ok_or_else(|| {
                TokenizerError::meta("tokenizer.ggml.scores is not a float32 array")
            })?),
        };
        let token_types = match g.get("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(_) => g
                .i32_array("tokenizer.ggml.token_type")
                .ok_or_else(|| {
                    TokenizerError::meta("tokenizer.ggml.token_type is not an int32 array")
                })?
                .into_iter()
                .map(TokenType::from_code)
                .collect(),
        };
        let merges = string_array(g, "tokenizer.ggml.merges")?.unwrap_or_default();
        let chat_template = match g.get("tokenizer.chat_template") {
            None => None,
            Some(_) => Some(
                g.get_str("tokenizer.chat_template")
                    .ok_or_else(|| TokenizerError::meta("tokenizer.chat_template is not a string"))?
                    .to_string(),
            ),
        };
        let mut vocab = GgufVocab {
            model,
            pre: g.get_str("tokenizer.ggml.pre").map(str::to_string),
            tokens,
            scores,
            token_types,
            merges,
            bos_id: None,
            eos_id: None,
            eot_id: None,
            eom_id: None,
            pad_id: None,
            unk_id: None,
            add_bos: g.get_bool("tokenizer.ggml.add_bos_token"),
            add_eos: g.get_bool("tokenizer.ggml.add_eos_token"),
            add_space_prefix: g.get_bool("tokenizer.ggml.add_space_prefix"),
            chat_template,
        };
        let n = vocab.tokens.len();
        vocab.bos_id = token_id(g, "tokenizer.ggml.bos_token_id", n);
        vocab.eos_id = token_id(g, "tokenizer.ggml.eos_token_id", n);
        vocab.eot_id = token_id(g, "tokenizer.ggml.eot_token_id", n);
        vocab.eom_id = token_id(g, "tokenizer.ggml.eom_token_id", n);
        vocab.pad_id = token_id(g, "tokenizer.ggml.padding_token_id", n);
        vocab.unk_id = token_id(g, "tokenizer.ggml.unknown_token_id", n);
        vocab.validate()?;
        Ok(vocab)
    }

    /// Checks sizes, lengths and id ranges; called by `from_gguf` and by the tokenizer
    /// builder (so a hand-made struct is checked too).
    pub fn validate(&self) -> Result<(), TokenizerError> {
        let n = self.tokens.len();
        if n == 0 {
            return Err(TokenizerError::meta("tokenizer.ggml.tokens is empty"));
        }
        if n > MAX_TOKENS {
            return Err(TokenizerError::meta(format!(
                "tokenizer.ggml.tokens has {n} entries (limit {MAX_TOKENS})"
            )));
        }
        if let Some(i) = self.tokens.iter().position(|t| t.len() > MAX_PIECE_BYTES) {
            return Err(TokenizerError::meta(format!(
                "token {i} is {} bytes long (limit {MAX_PIECE_BYTES})",
                self.tokens[i].len()
            )));
        }
        if let Some(scores) = &self.scores
            && scores.len() != n
        {
            return Err(TokenizerError::meta(format!(
                "tokenizer.ggml.scores has {} entries but there are {n} tokens",
                scores.len()
            )));
        }
        if !self.token_types.is_empty() && self.token_types.len() != n {
            return Err(TokenizerError::meta(format!(
                "tokenizer.ggml.token_type has {} entries but there are {n} tokens",
                self.token_types.len()
            )));
        }
        if self.merges.len() > MAX_TOKENS {
            return Err(TokenizerError::meta(format!(
                "tokenizer.ggml.merges has {} entries (limit {MAX_TOKENS})",
                self.merges.len()
            )));
        }
        if let Some(t) = &self.chat_template
            && t.len() > MAX_TEMPLATE_BYTES
        {
            return Err(TokenizerError::meta(format!(
                "tokenizer.chat_template is {} bytes (limit {MAX_TEMPLATE_BYTES})",
                t.len()
            )));
        }
        let ids = [
            ("bos_token_id", self.bos_id),
            ("eos_token_id", self.eos_id),
            ("eot_token_id", self.eot_id),
            ("eom_token_id", self.eom_id),
            ("padding_token_id", self.pad_id),
            ("unknown_token_id", self.unk_id),
        ];
        for (name, id) in ids {
            if let Some(id) = id
                && id as usize >= n
            {
                return Err(TokenizerError::meta(format!(
                    "tokenizer.ggml.{name} {id} is out of range ({n} tokens)"
                )));
            }
        }
        Ok(())
    }

    /// The type of token `id` (normal when the file has no type array).
    pub fn token_type(&self, id: usize) -> TokenType {
        self.token_types
            .get(id)
            .copied()
            .unwrap_or(TokenType::Normal)
    }
}

/// A string array, or `None` when the key is absent; an error when it has another type.
fn string_array(g: &GgufFile, key: &str) -> Result<Option<Vec<String>>, TokenizerError> {
    if g.get(key).is_none() {
        return Ok(None);
    }
    let items = g
        .str_array(key)
        .ok_or_else(|| TokenizerError::meta(format!("{key} is not a string array")))?;
    if items.len() > MAX_TOKENS {
        return Err(TokenizerError::meta(format!(
            "{key} has {} entries (limit {MAX_TOKENS})",
            items.len()
        )));
    }
    Ok(Some(items.into_iter().map(str::to_string).collect()))
}

/// A special-token id. Ids past the vocabulary or of the wrong type are dropped with a
/// warning, as llama.cpp does: several published files carry such stray ids (e.g. a padding
/// id from a larger base vocabulary) and are otherwise fine.
fn token_id(g: &GgufFile, key: &str, n_tokens: usize) -> Option<u32> {
    g.get(key)?;
    let Some(id) = g.get_u64(key) else {
        tracing::warn!("{key} is not an unsigned integer; ignored");
        return None;
    };
    match u32::try_from(id) {
        Ok(id) if (id as usize) < n_tokens => Some(id),
        _ => {
            tracing::warn!("{key} = {id} is out of range ({n_tokens} tokens); ignored");
            None
        }
    }
}
