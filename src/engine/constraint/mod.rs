//! Constrained decoding: a JSON schema, a Lark-style grammar or a regex narrows each step's
//! choice to the tokens that keep the output inside the language.
//!
//! The engine behind it is `llguidance` (an Earley parser over a lazily built lexer, with a
//! token trie of the model's own vocabulary). The pieces:
//! - [`ConstraintVocab`] (`vocab.rs`): built once per model from the tokenizer: every id's
//!   bytes in a token trie (control tokens marked special so no grammar can produce them,
//!   the stop tokens as end-of-sequence), and the parser factory with tachyon's limits.
//! - [`ConstraintSpec`] (`spec.rs`): what a request asked for (`json_object`, a schema, a
//!   grammar, a regex, a tool call), compiled by [`ConstraintVocab::compile`] within bounded
//!   work into a [`Constraint`].
//! - [`Constraint`] (`matcher.rs`): one request's state: the allowed-token bitmask for the
//!   next step (vocabulary/32 `u32` words, bit `i % 32` of word `i / 32` is token `i`),
//!   commit of the sampled token, roll back of the last n (speculation), and the lazy mode
//!   of tool calls (free text until a trigger token opens the constrained part).
//! - `logits.rs`: the mask and OpenAI's `logit_bias` applied to a logits row before the
//!   sampler sees it, so penalties, temperature, top-k and top-p act on the allowed tokens
//!   only and greedy picks the best allowed token (the host path: penalties, logprobs,
//!   `logit_bias`).
//! - [`ConstraintMask`] (`step_mask.rs`): the constraint as a session's step mask, for the
//!   picks a session makes itself (on a GPU, on the device, the mask computed while the
//!   step's forward pass runs).

mod logits;
mod matcher;
mod spec;
mod step_mask;
mod vocab;

pub use logits::{LogitBias, MAX_LOGIT_BIAS, apply_logit_bias, apply_mask, mask_allows};
pub use matcher::Constraint;
pub use spec::{ConstraintSpec, Tag, ToolSchema};
pub use step_mask::ConstraintMask;
pub use vocab::{ConstraintLimits, ConstraintVocab};

/// Why a constraint could not be built or followed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ConstraintError {
    /// The schema, grammar or regex is malformed, unsatisfiable or over the limits.
    #[error("{0}")]
    Compile(String),
    /// The text of the schema or grammar is larger than tachyon accepts.
    #[error("the {what} is {bytes} bytes; the limit is {limit}")]
    TooLarge {
        what: &'static str,
        bytes: usize,
        limit: usize,
    },
    /// The vocabulary cannot be turned into a token trie.
    #[error("the vocabulary cannot be used for constrained decoding: {0}")]
    Vocab(String),
    /// No token of the vocabulary continues the output inside the constraint.
    #[error("no token is allowed by the constraint at this point ({0})")]
    NoAllowedToken(String),
    /// The sampled token was refused by the matcher (an engine bug if it ever shows).
    #[error("the constraint refused token {token}: {reason}")]
    Refused { token: u32, reason: String },
}
